"""Faults the card network simulator injects, and their one-line text form.

A FaultSpec says how often each kind of failure happens. The three
probabilities are exclusive outcomes of a single draw per call, which is
why their sum may not exceed 1:

- timeout_before: the call is lost on its way. The network never sees it
  and the caller never gets an answer; nothing happened.
- timeout_after: the network performs the operation, then the answer is
  lost. Money may have moved and the caller cannot tell: the case the
  double-charge protocol (DESIGN.md section 5) exists for.
- error: the network answers with an error; nothing happened, for certain.

`latency_ms` replaces the simulator's latency range. `outage` is a window
[start, end) on the network's own clock, in seconds since it was created,
in which every call is refused. `per_network` maps a brand to a whole
FaultSpec that replaces the top level for that brand's calls; it does not
nest.

The text form is what a command line or an environment variable carries:

    timeout_after=0.02,timeout_before=0.02,error=0.01,latency_ms=5..200,outage=10..15,visa.error=0.5

An item "brand.name=value" sets one field for that brand only; the brand's
other fields are the top level's, whatever the order of the items, because
"visa.error=0.5" reads as "like the rest, but visa errs half the time". A
range may be "none" (no override), which only matters for undoing a
top-level range for one brand. `format` is the inverse of `parse`.
"""

import argparse
import math
import re

import msgspec

__all__ = ["BRANDS", "FaultSpec", "format", "parse"]

PROBABILITY_NAMES = ("timeout_before", "timeout_after", "error")
RANGE_NAMES = ("latency_ms", "outage")
NAMES = PROBABILITY_NAMES + RANGE_NAMES
# The brands cards.brand_of can return; a key outside these would never match.
BRANDS = ("visa", "mastercard", "amex", "unknown")

_WHOLE_NUMBER = re.compile(r"[0-9]+")


class FaultSpec(msgspec.Struct, frozen=True):
    """How often the simulated network fails, and how. See the module docstring.

    Construction raises ValueError for a value `parse` would refuse, so a
    spec built in code is held to the same rules as one read from text.
    """

    timeout_before: float = 0.0
    timeout_after: float = 0.0
    error: float = 0.0
    latency_ms: tuple[int, int] | None = None
    outage: tuple[float, float] | None = None
    per_network: dict[str, "FaultSpec"] = {}

    def __post_init__(self) -> None:
        for name in PROBABILITY_NAMES:
            if not _is_probability(getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)!r}: a probability must be between 0 and 1")
        if _probability_total(self) > 1:
            raise ValueError(_total_message(self))
        if self.latency_ms is not None and not _is_latency_range(self.latency_ms):
            raise ValueError(
                f"latency_ms={self.latency_ms!r}: expected two whole milliseconds, 0 <= min <= max"
            )
        if self.outage is not None and not _is_outage_window(self.outage):
            raise ValueError(f"outage={self.outage!r}: expected seconds START, END with 0 <= START < END")
        for brand, spec in self.per_network.items():
            if brand not in BRANDS:
                raise ValueError(f"per_network: unknown network {brand!r}; expected one of {', '.join(BRANDS)}")
            if not isinstance(spec, FaultSpec):
                raise ValueError(f"per_network[{brand!r}]: expected a FaultSpec")
            if spec.per_network:
                raise ValueError(f"per_network[{brand!r}]: per_network does not nest")


def parse(text: str) -> FaultSpec:
    """Read the text form. An empty (or blank) text is FaultSpec().

    Raises ValueError naming the offending item: unknown name or network,
    malformed or out-of-range value, a name given twice, or probabilities
    summing to more than 1 (named by network, as no single item is at fault).
    """
    if not text.strip():
        return FaultSpec()
    top: dict[str, object] = {}
    by_brand: dict[str, dict[str, object]] = {}
    for item in text.split(","):
        name_text, separator, value_text = item.partition("=")
        name_text, value_text = name_text.strip(), value_text.strip()
        if not name_text and not separator:
            raise ValueError(f"empty item in fault spec {text!r}")
        if not separator:
            raise ValueError(f"{item.strip()!r}: expected name=value")
        brand, dot, name = name_text.rpartition(".")
        if dot:
            if brand not in BRANDS:
                raise ValueError(
                    f"{item.strip()!r}: unknown network {brand!r}; expected one of {', '.join(BRANDS)}"
                )
            fields = by_brand.setdefault(brand, {})
        else:
            fields = top
        if name not in NAMES:
            raise ValueError(f"{item.strip()!r}: unknown fault {name!r}; expected one of {', '.join(NAMES)}")
        if name in fields:
            raise ValueError(f"{item.strip()!r}: {name_text} is given twice")
        fields[name] = _parse_value(item.strip(), name, value_text)
    spec = _build(top, FaultSpec(), where="")
    per_network = {brand: _build(fields, spec, where=f"{brand}: ") for brand, fields in by_brand.items()}
    return msgspec.structs.replace(spec, per_network=per_network)


def format(spec: FaultSpec) -> str:
    """The text form of `spec`, such that parse(format(spec)) == spec.

    Fields at their defaults are left out; a brand lists only what differs
    from the top level, or its error rate if nothing does, so that it is
    still present.
    """
    base = msgspec.structs.replace(spec, per_network={})
    items = _items(base, FaultSpec(), prefix="")
    for brand in BRANDS:
        if brand not in spec.per_network:
            continue
        brand_spec = spec.per_network[brand]
        brand_items = _items(brand_spec, base, prefix=f"{brand}.")
        items += brand_items or [f"{brand}.error={_number_text(brand_spec.error)}"]
    return ",".join(items)


# -- helpers ---------------------------------------------------------------------


def _is_number(value: object) -> bool:
    # bool is an int to Python but never a sensible probability or time.
    return type(value) in (int, float) and math.isfinite(value)


def _is_probability(value: object) -> bool:
    return _is_number(value) and 0 <= value <= 1


def _is_latency_range(value: object) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and all(type(bound) is int for bound in value)
        and 0 <= value[0] <= value[1]
    )


def _is_outage_window(value: object) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and all(_is_number(bound) for bound in value)
        and 0 <= value[0] < value[1]
    )


def _probability_total(spec: FaultSpec) -> float:
    # fsum, so that "0.1 + 0.2 + 0.7" is 1 as a person means it, not 1.0000000000000002.
    return math.fsum(getattr(spec, name) for name in PROBABILITY_NAMES)


def _total_message(spec: FaultSpec) -> str:
    terms = ", ".join(f"{name}={getattr(spec, name)!r}" for name in PROBABILITY_NAMES)
    return f"timeout_before + timeout_after + error must not exceed 1, got {_probability_total(spec)!r} ({terms})"


def _parse_value(item: str, name: str, value_text: str) -> object:
    if name in PROBABILITY_NAMES:
        value = _float_or_none(value_text)
        if value is None or not _is_probability(value):
            raise ValueError(f"{item!r}: a probability must be a number between 0 and 1")
        return value
    if value_text == "none":
        return None
    low_text, separator, high_text = value_text.partition("..")
    if name == "latency_ms":
        if (
            separator
            and _WHOLE_NUMBER.fullmatch(low_text)
            and _WHOLE_NUMBER.fullmatch(high_text)
            and int(low_text) <= int(high_text)
        ):
            return (int(low_text), int(high_text))
        raise ValueError(f"{item!r}: expected latency_ms=MIN..MAX in whole milliseconds, MIN <= MAX")
    assert name == "outage", name
    window = (_float_or_none(low_text), _float_or_none(high_text))
    if separator and _is_outage_window(window):
        return window
    raise ValueError(f"{item!r}: expected outage=START..END in seconds, 0 <= START < END")


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _build(fields: dict[str, object], base: FaultSpec, *, where: str) -> FaultSpec:
    # Every item was checked on its own while parsing, so only the total of
    # the probabilities can fail here; the prefix names the network it concerns.
    try:
        return FaultSpec(**({name: getattr(base, name) for name in NAMES} | fields))
    except ValueError as error:
        raise ValueError(f"{where}{error}") from None


def _items(spec: FaultSpec, base: FaultSpec, *, prefix: str) -> list[str]:
    items = []
    for name in NAMES:
        value = getattr(spec, name)
        if value != getattr(base, name):
            items.append(f"{prefix}{name}={_value_text(name, value)}")
    return items


def _value_text(name: str, value: object) -> str:
    if name in PROBABILITY_NAMES:
        return _number_text(value)
    if value is None:
        return "none"
    low, high = value
    if name == "latency_ms":
        return f"{low}..{high}"
    return f"{_number_text(low)}..{_number_text(high)}"


def _number_text(value: float) -> str:
    # repr of a float is the shortest text that float() reads back exactly.
    return repr(float(value))


# Command-line argument types (argparse), for every command that takes faults
# or a latency range.


def latency_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("..")
    try:
        pair = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError("expected MIN..MAX in milliseconds, e.g. 1..5") from None
    if not 0 <= pair[0] <= pair[1] <= 60_000:
        raise argparse.ArgumentTypeError("expected 0 <= MIN <= MAX <= 60000")
    return pair


def fault_spec(text: str) -> str:
    try:
        parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text
