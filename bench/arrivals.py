"""Open-loop arrivals: when each payment is due, and what kind it is.

Arrivals form a Poisson process at the offered rate: the gaps between them
are exponential, drawn from a seeded stream, so a run replays the same
schedule for the same seed. The schedule never looks at how the system is
doing. A payment's latency counts from its scheduled arrival, not from when
the generator got round to sending it, so a slow system cannot hide its
latency by slowing the load down (no coordinated omission).
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator

import msgspec

# The scenarios a payment can follow, in the order the mix lists them.
SCENARIOS = ("auto", "manual", "refund", "decline", "3ds")
DEFAULT_MIX = "auto=60,manual=20,refund=10,decline=5,3ds=5"
# Amounts are drawn in this range (minor units of USD), above Stripe's minimum.
AMOUNT_MINOR_RANGE = (500, 20_000)


class Mix(msgspec.Struct, frozen=True):
    """Relative weights of the scenarios."""

    weights: dict[str, int]

    def cumulative(self) -> tuple[list[str], list[int]]:
        names = [name for name in SCENARIOS if self.weights.get(name, 0) > 0]
        return names, list(itertools.accumulate(self.weights[name] for name in names))

    def text(self) -> str:
        return ",".join(f"{name}={self.weights[name]}" for name in SCENARIOS if name in self.weights)


def parse_mix(text: str) -> Mix:
    """Parse `auto=60,manual=20,...`. Raises ValueError with a message for a
    person: unknown names, weights that are not whole numbers 0..1000000,
    repeats, or weights that are all zero."""
    weights: dict[str, int] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, equals, value = item.partition("=")
        name = name.strip()
        if not equals:
            raise ValueError(f"{item!r}: expected NAME=WEIGHT, e.g. {DEFAULT_MIX}")
        if name not in SCENARIOS:
            raise ValueError(f"{name!r} is not a scenario; expected one of {', '.join(SCENARIOS)}")
        if name in weights:
            raise ValueError(f"{name!r} is given twice")
        value = value.strip()
        if not value.isdigit() or int(value) > 1_000_000:
            raise ValueError(f"{name}={value!r}: a weight is a whole number from 0 to 1000000")
        weights[name] = int(value)
    if sum(weights.values()) == 0:
        raise ValueError("the mix needs at least one scenario with a weight above 0")
    return Mix(weights)


class Arrival(msgspec.Struct, frozen=True, array_like=True):
    at: float  # seconds after the start of the run
    scenario: str
    amount_minor: int


def schedule(rate_per_s: float, duration_s: float, mix: Mix, seed: int) -> Iterator[Arrival]:
    """Poisson arrivals in [0, duration_s), each with its scenario and amount."""
    assert rate_per_s > 0 and duration_s > 0
    rng = random.Random(f"bench-arrivals:{seed}")
    names, cumulative = mix.cumulative()
    total = cumulative[-1]
    at = rng.expovariate(rate_per_s)
    while at < duration_s:
        scenario = names[bisect.bisect_right(cumulative, rng.randrange(total))]
        yield Arrival(at, scenario, rng.randint(*AMOUNT_MINOR_RANGE))
        at += rng.expovariate(rate_per_s)
