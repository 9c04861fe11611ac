import math
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from simulators import faults
from simulators.faults import FaultSpec


def test_parse_reads_every_field_and_per_network_overrides():
    spec = faults.parse(
        "timeout_after=0.02,timeout_before=0.03,error=0.01,latency_ms=5..200,outage=10..15,visa.error=0.5"
    )
    top = FaultSpec(
        timeout_before=0.03,
        timeout_after=0.02,
        error=0.01,
        latency_ms=(5, 200),
        outage=(10.0, 15.0),
    )
    # A brand inherits every field it does not set from the top level.
    assert spec == FaultSpec(
        timeout_before=0.03,
        timeout_after=0.02,
        error=0.01,
        latency_ms=(5, 200),
        outage=(10.0, 15.0),
        per_network={"visa": FaultSpec(timeout_before=0.03, timeout_after=0.02, error=0.5, latency_ms=(5, 200), outage=(10.0, 15.0))},
    )
    assert spec.per_network["visa"] != top


def test_a_brand_inherits_the_top_level_whatever_the_order_of_items():
    assert faults.parse("amex.error=0.5,timeout_after=0.25") == faults.parse("timeout_after=0.25,amex.error=0.5")
    assert faults.parse("amex.error=0.5,timeout_after=0.25").per_network["amex"].timeout_after == 0.25


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text_is_no_faults(text):
    assert faults.parse(text) == FaultSpec()
    assert faults.format(FaultSpec()) == ""


def test_parse_tolerates_spaces_around_items_and_values():
    assert faults.parse(" error = 0.5 , latency_ms = 1..2 ") == FaultSpec(error=0.5, latency_ms=(1, 2))


def test_none_undoes_a_top_level_range_for_one_brand():
    spec = faults.parse("latency_ms=50..60,outage=1..2,mastercard.latency_ms=none,mastercard.outage=none")
    assert spec.per_network["mastercard"] == FaultSpec()
    assert faults.format(spec) == (
        "latency_ms=50..60,outage=1.0..2.0,mastercard.latency_ms=none,mastercard.outage=none"
    )


def test_probabilities_may_sum_to_exactly_one_despite_float_rounding():
    # timeout_before + timeout_after + error is 1.0000000000000002 in naive
    # float arithmetic here, though a person means exactly 1.
    assert 0.34 + 0.56 + 0.1 > 1
    spec = faults.parse("timeout_before=0.34,timeout_after=0.56,error=0.1")
    assert (spec.timeout_before, spec.timeout_after, spec.error) == (0.34, 0.56, 0.1)
    assert FaultSpec(timeout_before=0.34, timeout_after=0.56, error=0.1) == spec


def test_format_lists_what_is_set_in_a_fixed_order():
    spec = FaultSpec(
        error=0.5,
        timeout_after=0.25,
        outage=(1, 2.5),
        per_network={
            "visa": FaultSpec(error=0.5, timeout_after=0.25, outage=(1, 2.5), latency_ms=(1, 9)),
            # Identical to the top level: still listed, or it would be lost.
            "amex": FaultSpec(error=0.5, timeout_after=0.25, outage=(1, 2.5)),
        },
    )
    assert faults.format(spec) == (
        "timeout_after=0.25,error=0.5,outage=1.0..2.5,visa.latency_ms=1..9,amex.error=0.5"
    )
    assert faults.parse(faults.format(spec)) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("jitter=0.1", "'jitter=0.1': unknown fault 'jitter'; expected one of timeout_before, timeout_after, error, latency_ms, outage"),
        ("visa.jitter=0.1", "'visa.jitter=0.1': unknown fault 'jitter'; expected one of timeout_before, timeout_after, error, latency_ms, outage"),
        ("discover.error=0.1", "'discover.error=0.1': unknown network 'discover'; expected one of visa, mastercard, amex, unknown"),
        ("error", "'error': expected name=value"),
        ("error=0.1,,timeout_after=0.1", "empty item in fault spec 'error=0.1,,timeout_after=0.1'"),
        ("error=0.1,", "empty item in fault spec 'error=0.1,'"),
        ("error=1.5", "'error=1.5': a probability must be a number between 0 and 1"),
        ("timeout_before=-0.1", "'timeout_before=-0.1': a probability must be a number between 0 and 1"),
        ("timeout_after=often", "'timeout_after=often': a probability must be a number between 0 and 1"),
        ("error=nan", "'error=nan': a probability must be a number between 0 and 1"),
        ("error=0.1,error=0.2", "'error=0.2': error is given twice"),
        ("visa.error=0.1,visa.error=0.2", "'visa.error=0.2': visa.error is given twice"),
        (
            "error=0.5,timeout_before=0.3,timeout_after=0.3",
            "timeout_before + timeout_after + error must not exceed 1, got 1.1 (timeout_before=0.3, timeout_after=0.3, error=0.5)",
        ),
        (
            # Each item is fine; visa's inherited total is not.
            "timeout_before=0.5,visa.error=0.6",
            "visa: timeout_before + timeout_after + error must not exceed 1, got 1.1 (timeout_before=0.5, timeout_after=0.0, error=0.6)",
        ),
        ("latency_ms=200..5", "'latency_ms=200..5': expected latency_ms=MIN..MAX in whole milliseconds, MIN <= MAX"),
        ("latency_ms=5", "'latency_ms=5': expected latency_ms=MIN..MAX in whole milliseconds, MIN <= MAX"),
        ("latency_ms=1.5..2", "'latency_ms=1.5..2': expected latency_ms=MIN..MAX in whole milliseconds, MIN <= MAX"),
        ("latency_ms=-1..2", "'latency_ms=-1..2': expected latency_ms=MIN..MAX in whole milliseconds, MIN <= MAX"),
        ("outage=15..10", "'outage=15..10': expected outage=START..END in seconds, 0 <= START < END"),
        ("outage=10..10", "'outage=10..10': expected outage=START..END in seconds, 0 <= START < END"),
        ("outage=-1..10", "'outage=-1..10': expected outage=START..END in seconds, 0 <= START < END"),
        ("outage=1..inf", "'outage=1..inf': expected outage=START..END in seconds, 0 <= START < END"),
        ("amex.outage=soon", "'amex.outage=soon': expected outage=START..END in seconds, 0 <= START < END"),
    ],
)
def test_parse_names_what_is_malformed(text, message):
    with pytest.raises(ValueError, match=rf"^{re.escape(message)}$"):
        faults.parse(text)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(error=2.0), "error=2.0: a probability must be between 0 and 1"),
        (dict(error=True), "error=True: a probability must be between 0 and 1"),
        (dict(timeout_after=math.inf), "timeout_after=inf: a probability must be between 0 and 1"),
        (
            dict(error=0.6, timeout_after=0.6),
            "timeout_before + timeout_after + error must not exceed 1, got 1.2 (timeout_before=0.0, timeout_after=0.6, error=0.6)",
        ),
        (dict(latency_ms=(5.0, 6)), "latency_ms=(5.0, 6): expected two whole milliseconds, 0 <= min <= max"),
        (dict(outage=(3, 1)), "outage=(3, 1): expected seconds START, END with 0 <= START < END"),
        (dict(per_network={"diners": FaultSpec()}), "per_network: unknown network 'diners'; expected one of visa, mastercard, amex, unknown"),
        (
            dict(per_network={"visa": FaultSpec(per_network={"amex": FaultSpec()})}),
            "per_network['visa']: per_network does not nest",
        ),
    ],
)
def test_a_spec_built_in_code_is_held_to_the_same_rules(fields, message):
    with pytest.raises(ValueError, match=rf"^{re.escape(message)}$"):
        FaultSpec(**fields)


# -- round trip ----------------------------------------------------------------------

_probability = st.one_of(st.just(0.0), st.just(1.0), st.floats(min_value=0.0, max_value=1.0))


@st.composite
def _flat_specs(draw):
    timeout_before, timeout_after, error = draw(_probability), draw(_probability), draw(_probability)
    assume(math.fsum((timeout_before, timeout_after, error)) <= 1)
    latency_ms = draw(
        st.none() | st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)).map(lambda pair: tuple(sorted(pair)))
    )
    outage = draw(
        st.none()
        | st.tuples(
            st.floats(min_value=0.0, max_value=1e6), st.floats(min_value=0.0, max_value=1e6)
        ).filter(lambda pair: pair[0] < pair[1])
    )
    return FaultSpec(
        timeout_before=timeout_before,
        timeout_after=timeout_after,
        error=error,
        latency_ms=latency_ms,
        outage=outage,
    )


@st.composite
def _specs(draw):
    top = draw(_flat_specs())
    per_network = draw(st.dictionaries(st.sampled_from(faults.BRANDS), st.one_of(_flat_specs(), st.just(top))))
    return FaultSpec(
        timeout_before=top.timeout_before,
        timeout_after=top.timeout_after,
        error=top.error,
        latency_ms=top.latency_ms,
        outage=top.outage,
        per_network=per_network,
    )


@given(_specs())
def test_format_then_parse_is_the_identity(spec):
    text = faults.format(spec)
    assert faults.parse(text) == spec
    assert faults.format(faults.parse(text)) == text
