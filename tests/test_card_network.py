import random

import msgspec
import pytest
import trio
import trio.testing

from engine import cards
from simulators import faults
from simulators.card_network import (
    AuthorizationRequest,
    CaptureRequest,
    CardNetwork,
    FaultSpec,
    NetworkAnswer,
    NetworkNotice,
    NetworkRefused,
    Operation,
    RefundRequest,
    VoidRequest,
)


def _today():
    return (2026, 5)


def _request(reference="att_1", card_number="4242424242424242", amount_minor=1999, **overrides):
    fields = dict(
        reference=reference,
        card_number=card_number,
        exp_month=12,
        exp_year=2034,
        amount_minor=amount_minor,
        currency="usd",
        capture=True,
    )
    fields.update(overrides)
    return AuthorizationRequest(**fields)


async def test_approves_a_good_card():
    network = CardNetwork(today=_today)
    answer = await network.authorize(_request())
    assert answer == NetworkAnswer("att_1", True, None, None, "visa")
    assert network.operations() == [
        Operation(
            reference="att_1",
            network="visa",
            last4="4242",
            amount_minor=1999,
            currency="usd",
            capture=True,
            approved=True,
            code=None,
            decline_code=None,
            sequence=0,
        )
    ]
    assert network.lookup("att_1") == network.operations()[0]
    assert network.lookup("att_unknown") is None
    assert network.calls_total() == 1


async def test_declines_each_test_card():
    cases = [
        ("4000000000000002", "card_declined", "generic_decline"),
        ("4000000000009995", "card_declined", "insufficient_funds"),
        ("4000000000000069", "expired_card", "expired_card"),
        ("4000000000000127", "incorrect_cvc", "incorrect_cvc"),
        ("4000000000000119", "processing_error", "processing_error"),
        ("4242424242424241", "incorrect_number", "incorrect_number"),
    ]
    network = CardNetwork(today=_today)
    for index, (number, code, decline_code) in enumerate(cases):
        answer = await network.authorize(_request(f"att_{index}", number))
        assert answer == NetworkAnswer(f"att_{index}", False, code, decline_code, "visa")
    assert [operation.sequence for operation in network.operations()] == list(range(len(cases)))
    assert [operation.approved for operation in network.operations()] == [False] * len(cases)


async def test_expired_card_is_declined_against_injected_today():
    network = CardNetwork(today=lambda: (2035, 1))
    answer = await network.authorize(_request(exp_year=2034, exp_month=12))
    assert (answer.approved, answer.code, answer.decline_code) == (
        False,
        "expired_card",
        "expired_card",
    )


async def test_repeated_reference_returns_first_answer_and_records_once():
    network = CardNetwork(today=_today)
    first = await network.authorize(_request(amount_minor=1999))
    # Same reference, different amount and a card that would be declined:
    # the network must neither charge again nor change its answer.
    second = await network.authorize(_request(amount_minor=5000, card_number="4000000000000002"))
    assert second == first
    assert second.approved
    assert len(network.operations()) == 1
    assert network.lookup("att_1").amount_minor == 1999
    assert network.calls_total() == 2


async def test_concurrent_calls_with_one_reference_charge_once():
    network = CardNetwork(today=_today)
    answers = []

    async def call(amount_minor, card_number):
        request = _request(amount_minor=amount_minor, card_number=card_number)
        answers.append(await network.authorize(request))

    # Alternate an approved and a declined card: if each call decided on its
    # own, the answers would disagree.
    async with trio.open_nursery() as nursery:
        for index in range(20):
            card_number = "4242424242424242" if index % 2 == 0 else "4000000000000002"
            nursery.start_soon(call, 100 + index, card_number)

    assert len(answers) == 20
    assert all(answer == answers[0] for answer in answers)
    assert len(network.operations()) == 1
    operation = network.lookup("att_1")
    assert operation.sequence == 0
    assert (operation.approved, operation.code) == (answers[0].approved, answers[0].code)
    assert network.calls_total() == 20


async def test_cancelled_caller_is_still_charged_once():
    network = CardNetwork(latency_ms=(5, 5), today=_today)
    with trio.move_on_after(0.001):
        await network.authorize(_request())
    assert len(network.operations()) == 1
    retry = await network.authorize(_request(amount_minor=1))
    assert retry.approved
    assert len(network.operations()) == 1


async def _latencies(seed, count=8):
    network = CardNetwork(seed=seed, latency_ms=(1, 5), today=_today)
    latencies = []
    for index in range(count):
        started = trio.current_time()
        await network.authorize(_request(f"att_{index}"))
        latencies.append(round(trio.current_time() - started, 6))
    return latencies


async def test_seeded_latency_is_reproducible(autojump_clock):
    first = await _latencies(seed=7)
    again = await _latencies(seed=7)
    other = await _latencies(seed=8)
    assert first == again
    assert first != other
    assert all(0.001 <= latency <= 0.005 for latency in first + other)
    assert len(set(first)) > 1  # actually drawn, not a constant


# -- capture, void, refund -----------------------------------------------------


def _declined(reference, code, network="visa"):
    return NetworkAnswer(reference, False, code, code, network)


def _approved(reference, network="visa"):
    return NetworkAnswer(reference, True, None, None, network)


async def _authorized(network, reference="att_1", amount_minor=1000, capture=False, **overrides):
    return await network.authorize(
        _request(reference, amount_minor=amount_minor, capture=capture, **overrides)
    )


def _capture(reference="cap_1", authorization_reference="att_1", amount_minor=1000, currency="usd"):
    return CaptureRequest(reference, authorization_reference, amount_minor, currency)


def _void(reference="void_1", authorization_reference="att_1"):
    return VoidRequest(reference, authorization_reference)


def _refund(reference="re_1", charge_reference="att_1", amount_minor=1000, currency="usd"):
    return RefundRequest(reference, charge_reference, amount_minor, currency)


async def test_capture_of_an_authorization_is_recorded_against_it():
    network = CardNetwork(today=_today)
    assert (await _authorized(network, amount_minor=1000)).approved
    answer = await network.capture(_capture(amount_minor=600))
    assert answer == _approved("cap_1")
    assert network.lookup("cap_1") == Operation(
        reference="cap_1",
        network="visa",
        last4="4242",
        amount_minor=600,
        currency="usd",
        capture=False,
        approved=True,
        code=None,
        decline_code=None,
        sequence=1,
        kind="capture",
        parent_reference="att_1",
    )
    assert network.lookup("att_1").kind == "authorize"
    assert network.lookup("att_1").parent_reference is None


@pytest.mark.parametrize("amount_minor", [1, 999, 1000])
async def test_capture_accepts_any_amount_from_one_to_the_authorized(amount_minor):
    network = CardNetwork(today=_today)
    await _authorized(network, amount_minor=1000)
    assert (await network.capture(_capture(amount_minor=amount_minor))).approved


async def test_capture_declines():
    network = CardNetwork(today=_today)
    await _authorized(network, "att_open", amount_minor=1000)
    await _authorized(network, "att_declined", card_number="4000000000000002")
    await _authorized(network, "att_captured_at_once", capture=True)
    await _authorized(network, "att_captured_later")
    assert (await network.capture(_capture("cap_first", "att_captured_later"))).approved
    await _authorized(network, "att_voided")
    assert (await network.void(_void("void_1", "att_voided"))).approved

    cases = [
        (_capture("cap_a", "att_unknown"), "resource_missing", "unknown"),
        (_capture("cap_b", "att_declined"), "resource_missing", "unknown"),
        (_capture("cap_c", "att_captured_at_once"), "charge_already_captured", "visa"),
        (_capture("cap_d", "att_captured_later"), "charge_already_captured", "visa"),
        (_capture("cap_e", "att_voided"), "charge_expired_for_capture", "visa"),
        (_capture("cap_f", "att_open", amount_minor=1001), "amount_too_large", "visa"),
        (_capture("cap_g", "att_open", amount_minor=0), "amount_too_small", "visa"),
        (_capture("cap_h", "att_open", amount_minor=-5), "amount_too_small", "visa"),
        (_capture("cap_i", "att_open", currency="eur"), "currency_mismatch", "visa"),
    ]
    for request, code, brand in cases:
        answer = await network.capture(request)
        assert answer == _declined(request.reference, code, brand), request.reference
        operation = network.lookup(request.reference)
        assert (operation.kind, operation.approved, operation.code) == ("capture", False, code)
    # None of the declines touched the open authorization.
    assert (await network.capture(_capture("cap_ok", "att_open", amount_minor=1000))).approved


async def test_capture_after_void_is_declined():
    network = CardNetwork(today=_today)
    await _authorized(network)
    assert await network.void(_void()) == _approved("void_1")
    answer = await network.capture(_capture())
    assert answer == _declined("cap_1", "charge_expired_for_capture")
    assert network.settlement_report() == []


async def test_void_after_capture_is_declined():
    network = CardNetwork(today=_today)
    await _authorized(network)
    assert (await network.capture(_capture())).approved
    assert await network.void(_void()) == _declined("void_1", "charge_already_captured")
    assert [operation.reference for operation in network.settlement_report()] == ["cap_1"]


async def test_void_declines():
    network = CardNetwork(today=_today)
    await _authorized(network, "att_open")
    await _authorized(network, "att_declined", card_number="4000000000000002")
    await _authorized(network, "att_captured_at_once", capture=True)
    assert await network.void(_void("void_first", "att_open")) == _approved("void_first")
    cases = [
        (_void("void_a", "att_unknown"), "resource_missing", "unknown"),
        (_void("void_b", "att_declined"), "resource_missing", "unknown"),
        (_void("void_c", "att_captured_at_once"), "charge_already_captured", "visa"),
        (_void("void_d", "att_open"), "authorization_already_voided", "visa"),
    ]
    for request, code, brand in cases:
        assert await network.void(request) == _declined(request.reference, code, brand)
    void = network.lookup("void_first")
    assert (void.kind, void.parent_reference, void.amount_minor, void.currency) == (
        "void",
        "att_open",
        0,
        "usd",
    )


async def test_refund_of_a_charge_captured_at_once():
    network = CardNetwork(today=_today)
    await _authorized(network, amount_minor=1000, capture=True)
    assert await network.refund(_refund(amount_minor=400)) == _approved("re_1")
    refund = network.lookup("re_1")
    assert (refund.kind, refund.parent_reference, refund.amount_minor, refund.failed_later) == (
        "refund",
        "att_1",
        400,
        False,
    )


async def test_refund_is_bounded_by_the_captured_not_the_authorized_amount():
    network = CardNetwork(today=_today)
    await _authorized(network, amount_minor=1000)
    assert (await network.capture(_capture(amount_minor=600))).approved
    assert await network.refund(_refund("re_1", amount_minor=601)) == _declined(
        "re_1", "amount_too_large"
    )
    assert (await network.refund(_refund("re_2", amount_minor=600))).approved


async def test_over_refund_across_several_refunds_is_declined():
    network = CardNetwork(today=_today)
    await _authorized(network, amount_minor=1000, capture=True)
    assert (await network.refund(_refund("re_1", amount_minor=700))).approved
    assert await network.refund(_refund("re_2", amount_minor=301)) == _declined(
        "re_2", "amount_too_large"
    )
    assert (await network.refund(_refund("re_3", amount_minor=300))).approved
    assert await network.refund(_refund("re_4", amount_minor=1)) == _declined(
        "re_4", "amount_too_large"
    )
    refunded = [op.amount_minor for op in network.settlement_report() if op.kind == "refund"]
    assert refunded == [700, 300]


async def test_refund_declines():
    network = CardNetwork(today=_today)
    await _authorized(network, "att_captured", capture=True)
    await _authorized(network, "att_uncaptured")
    await _authorized(network, "att_voided")
    await network.void(_void("void_1", "att_voided"))
    await _authorized(network, "att_declined", card_number="4000000000000002", capture=True)
    assert (await network.capture(_capture("cap_1", "att_uncaptured", amount_minor=1000))).approved
    cases = [
        (_refund("re_a", "att_unknown"), "resource_missing", "unknown"),
        (_refund("re_b", "att_declined"), "resource_missing", "unknown"),
        # The engine names a charge by its authorization, never by a capture.
        (_refund("re_c", "cap_1"), "resource_missing", "unknown"),
        (_refund("re_d", "att_voided"), "charge_not_captured", "visa"),
        (_refund("re_e", "att_captured", currency="eur"), "currency_mismatch", "visa"),
        (_refund("re_f", "att_captured", amount_minor=0), "amount_too_small", "visa"),
        (_refund("re_g", "att_captured", amount_minor=1001), "amount_too_large", "visa"),
    ]
    for request, code, brand in cases:
        assert await network.refund(request) == _declined(request.reference, code, brand)
    await _authorized(network, "att_open")
    assert await network.refund(_refund("re_h", "att_open")) == _declined(
        "re_h", "charge_not_captured"
    )


async def test_amount_must_be_integer_minor_units():
    network = CardNetwork(today=_today)
    await _authorized(network, capture=True)
    with pytest.raises(AssertionError, match=r"^amount_minor must be an int$"):
        await network.refund(_refund(amount_minor=10.0))
    assert network.lookup("re_1") is None


# -- idempotency of every kind --------------------------------------------------


async def test_repeated_reference_returns_first_answer_for_every_kind():
    network = CardNetwork(today=_today)
    await _authorized(network, "att_1", amount_minor=1000)
    await _authorized(network, "att_2", amount_minor=1000)
    first_capture = await network.capture(_capture("cap_1", "att_1", amount_minor=500))
    # Would be declined as too large if decided afresh.
    assert await network.capture(_capture("cap_1", "att_1", amount_minor=5000)) == first_capture
    first_refund = await network.refund(_refund("re_1", "att_1", amount_minor=500))
    # Would be declined as too large if decided afresh.
    assert await network.refund(_refund("re_1", "att_1", amount_minor=1)) == first_refund
    first_void = await network.void(_void("void_1", "att_2"))
    assert await network.void(_void("void_1", "att_2")) == first_void
    # A first answer that was a decline is kept too, even once it would pass.
    declined = await network.capture(_capture("cap_x", "att_3"))
    await _authorized(network, "att_3")
    assert await network.capture(_capture("cap_x", "att_3")) == declined
    assert not declined.approved

    assert [answer.approved for answer in (first_capture, first_refund, first_void)] == [True] * 3
    assert [operation.reference for operation in network.operations()] == [
        "att_1",
        "att_2",
        "cap_1",
        "re_1",
        "void_1",
        "cap_x",
        "att_3",
    ]
    assert network.lookup("cap_1").amount_minor == 500
    assert network.lookup("re_1").amount_minor == 500
    assert network.calls_total() == 11


async def test_reference_of_another_kind_is_refused_and_records_nothing():
    network = CardNetwork(today=_today)
    await _authorized(network, "att_1", capture=False)
    answer = await network.capture(_capture("att_1", "att_1"))
    assert answer == _declined("att_1", "reference_in_use", "unknown")
    assert await network.refund(_refund("att_1", "att_1")) == answer
    assert await network.void(_void("att_1", "att_1")) == answer
    assert (await network.authorize(_request("att_1"))).approved
    assert network.operations() == [network.lookup("att_1")]
    assert network.lookup("att_1").kind == "authorize"
    # The authorization is still open: nothing above captured or voided it.
    assert (await network.capture(_capture("cap_1", "att_1"))).approved


async def _overlap(call, requests):
    answers = []

    async def one(request):
        answers.append(await call(request))

    async with trio.open_nursery() as nursery:
        for request in requests:
            nursery.start_soon(one, request)
    return answers


async def test_overlapping_captures_with_one_reference_capture_once():
    network = CardNetwork(today=_today)
    await _authorized(network, amount_minor=1000)
    # Alternate an amount that fits and one that does not: separate
    # decisions would disagree.
    requests = [_capture(amount_minor=500 if i % 2 == 0 else 5000) for i in range(20)]
    answers = await _overlap(network.capture, requests)
    assert len(answers) == 20
    assert all(answer == answers[0] for answer in answers)
    assert [op.kind for op in network.operations()] == ["authorize", "capture"]
    assert network.calls_total() == 21


async def test_overlapping_voids_with_one_reference_void_once():
    network = CardNetwork(today=_today)
    await _authorized(network)
    # Decided one by one, every void after the first would meet a voided
    # authorization and be declined.
    answers = await _overlap(network.void, [_void() for _ in range(20)])
    assert answers == [_approved("void_1")] * 20
    assert [op.kind for op in network.operations()] == ["authorize", "void"]
    assert network.calls_total() == 21


async def test_overlapping_refunds_with_one_reference_refund_once():
    network = CardNetwork(today=_today)
    await _authorized(network, amount_minor=1000, capture=True)
    answers = await _overlap(network.refund, [_refund(amount_minor=100) for _ in range(20)])
    assert answers == [_approved("re_1")] * 20
    assert [op.kind for op in network.operations()] == ["authorize", "refund"]
    # The rest of the charge is still refundable: only 100 went out.
    assert (await network.refund(_refund("re_2", amount_minor=900))).approved
    assert network.calls_total() == 22


async def test_cancelled_capture_caller_is_still_captured_once(autojump_clock):
    network = CardNetwork(latency_ms=(5, 5), today=_today)
    await _authorized(network)
    started = trio.current_time()
    with trio.move_on_after(0.001):
        await network.capture(_capture())
    assert network.lookup("cap_1").approved
    assert (await network.capture(_capture(amount_minor=1))).approved
    assert len(network.operations()) == 2
    # Every kind sleeps the seeded latency: 1 ms cancelled, then 5 ms.
    assert trio.current_time() - started == pytest.approx(0.006)


async def test_every_kind_sleeps_the_seeded_latency(autojump_clock):
    async def latencies(seed):
        network = CardNetwork(seed=seed, latency_ms=(1, 5), today=_today)
        calls = [
            (network.authorize, _request("att_1", capture=False, amount_minor=1000)),
            (network.authorize, _request("att_2", capture=False)),
            (network.capture, _capture("cap_1", "att_1", amount_minor=1000)),
            (network.refund, _refund("re_1", "att_1", amount_minor=10)),
            (network.void, _void("void_1", "att_2")),
            (network.refund, _refund("re_1", "att_1", amount_minor=10)),
        ]
        result = []
        for call, request in calls:
            started = trio.current_time()
            assert (await call(request)).approved
            result.append(round(trio.current_time() - started, 6))
        return result

    first = await latencies(7)
    assert first == await latencies(7)
    assert first != await latencies(8)
    assert all(0.001 <= latency <= 0.005 for latency in first)
    assert len(set(first)) > 1


# -- settlement report ----------------------------------------------------------


async def test_settlement_report_lists_approved_money_movements_only():
    network = CardNetwork(today=_today)
    await _authorized(network, "att_at_once", capture=True, amount_minor=1000)
    await _authorized(network, "att_later", capture=False, amount_minor=800)
    await _authorized(network, "att_declined", card_number="4000000000000002", capture=True)
    await _authorized(network, "att_voided", capture=False)
    await network.capture(_capture("cap_too_large", "att_later", amount_minor=900))
    await network.capture(_capture("cap_1", "att_later", amount_minor=700))
    await network.void(_void("void_1", "att_voided"))
    await network.refund(_refund("re_1", "att_at_once", amount_minor=250))
    await network.refund(_refund("re_too_large", "att_later", amount_minor=701))
    report = network.settlement_report()
    assert [(op.reference, op.kind, op.amount_minor) for op in report] == [
        ("att_at_once", "authorize", 1000),
        ("cap_1", "capture", 700),
        ("re_1", "refund", 250),
    ]
    assert all(op.approved for op in report)
    assert len(network.operations()) == 9


# -- refunds that fail later ----------------------------------------------------


async def test_refund_fails_later_card_is_an_ordinary_approval():
    network = CardNetwork(today=_today)
    answer = await network.authorize(_request(card_number=cards.REFUND_FAILS_LATER))
    assert answer == _approved("att_1")
    assert network.lookup("att_1").last4 == "5126"


async def test_refund_on_refund_fails_later_card_fails_with_a_notice_when_due(autojump_clock):
    network = CardNetwork(today=_today, refund_failure_delay_ms=(20, 50))
    await _authorized(network, card_number=cards.REFUND_FAILS_LATER, capture=True, amount_minor=1000)
    started = trio.current_time()
    assert await network.refund(_refund("re_1", amount_minor=1000)) == _approved("re_1")
    assert network.lookup("re_1").failed_later is False
    # Approved and not yet failed: the whole charge is refunded for now.
    assert await network.refund(_refund("re_2", amount_minor=1)) == _declined(
        "re_2", "amount_too_large"
    )

    with trio.move_on_at(started + 0.020 - 0.000001):
        await network.next_notice()
        pytest.fail("a notice came out before its earliest due time")
    notice = await network.next_notice()
    failed_at = trio.current_time() - started
    assert notice == NetworkNotice(reference="re_1", kind="refund_failed", code="refund_failed")
    assert 0.020 <= failed_at <= 0.050

    refund = network.lookup("re_1")
    assert (refund.approved, refund.failed_later, refund.sequence) == (True, True, 1)
    assert [(op.reference, op.failed_later) for op in network.settlement_report()] == [
        ("att_1", False),
        ("re_1", True),
    ]
    # Repeating the failed refund's reference does not refund again.
    assert await network.refund(_refund("re_1", amount_minor=1000)) == _approved("re_1")
    assert network.lookup("re_1").failed_later is True
    # Once failed, its amount is refundable again.
    assert (await network.refund(_refund("re_3", amount_minor=1000))).approved
    assert await network.refund(_refund("re_4", amount_minor=1)) == _declined(
        "re_4", "amount_too_large"
    )


async def test_failure_takes_effect_when_due_even_before_the_notice_is_read(autojump_clock):
    network = CardNetwork(today=_today, refund_failure_delay_ms=(30, 30))
    await _authorized(network, card_number=cards.REFUND_FAILS_LATER, capture=True, amount_minor=1000)
    assert (await network.refund(_refund("re_1", amount_minor=1000))).approved
    await trio.sleep(0.030)
    assert network.lookup("re_1").failed_later
    assert (await network.refund(_refund("re_2", amount_minor=1000))).approved
    # The notice is still there for whoever reads it, once.
    assert (await network.next_notice()).reference == "re_1"
    second = await network.next_notice()
    assert second.reference == "re_2"


async def test_notices_come_out_in_due_order_at_their_due_times(autojump_clock):
    network = CardNetwork(seed=4, today=_today, refund_failure_delay_ms=(20, 50))
    await _authorized(network, card_number=cards.REFUND_FAILS_LATER, capture=True, amount_minor=1000)
    references = [f"re_{index}" for index in range(8)]
    received = []
    approved_at = {}

    async def read_notices():
        # A reader that is never woken would hang the test rather than fail it.
        with trio.fail_after(1):
            for _ in references:
                notice = await network.next_notice()
                received.append((trio.current_time(), notice))

    # The reader starts first, so it is already waiting when each refund is
    # scheduled, and must be woken for one that falls due sooner.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_notices)
        await trio.testing.wait_all_tasks_blocked()
        for reference in references:
            approved_at[reference] = trio.current_time()
            assert (await network.refund(_refund(reference, amount_minor=100))).approved

    times = [at for at, _ in received]
    order = [notice.reference for _, notice in received]
    assert times == sorted(times)
    assert sorted(order) == references
    assert order != references  # later refunds overtook earlier ones
    assert all(notice.kind == "refund_failed" for _, notice in received)
    for at, notice in received:
        assert 0.020 <= at - approved_at[notice.reference] <= 0.050
    assert all(network.lookup(reference).failed_later for reference in references)
    with trio.move_on_after(1):
        await network.next_notice()
        pytest.fail("a notice came out twice")


async def test_cancelled_notice_reader_loses_nothing(autojump_clock):
    network = CardNetwork(today=_today, refund_failure_delay_ms=(20, 20))
    await _authorized(network, card_number=cards.REFUND_FAILS_LATER, capture=True)
    assert (await network.refund(_refund(amount_minor=10))).approved
    with trio.move_on_after(0.010):
        await network.next_notice()
    await trio.sleep(0.050)
    with trio.CancelScope() as scope:
        scope.cancel()
        await network.next_notice()
    assert scope.cancelled_caught
    assert (await network.next_notice()).reference == "re_1"


async def test_only_approved_refunds_on_that_card_fail_later(autojump_clock):
    network = CardNetwork(today=_today)
    await _authorized(network, "att_ordinary", capture=True, amount_minor=1000)
    await _authorized(
        network, "att_fails", card_number=cards.REFUND_FAILS_LATER, capture=True, amount_minor=1000
    )
    assert (await network.refund(_refund("re_ordinary", "att_ordinary"))).approved
    assert not (await network.refund(_refund("re_too_large", "att_fails", amount_minor=1001))).approved
    with trio.move_on_after(1):
        await network.next_notice()
        pytest.fail("a notice for a refund that cannot fail later")
    assert not network.lookup("re_ordinary").failed_later
    assert not network.lookup("re_too_large").failed_later


# -- card numbers ------------------------------------------------------------------


async def test_no_operation_repr_or_state_holds_a_card_number(autojump_clock):
    network = CardNetwork(today=_today)
    numbers = ["4242424242424242", cards.REFUND_FAILS_LATER, "4000000000000002", "378282246310005"]
    for index, number in enumerate(numbers):
        reference = f"att_{index}"
        await network.authorize(_request(reference, card_number=number, capture=False))
        await network.capture(_capture(f"cap_{index}", reference, amount_minor=1000))
        await network.refund(_refund(f"re_{index}", reference, amount_minor=10))
        await network.void(_void(f"void_{index}", reference))
    await trio.sleep(0.1)  # the refund on REFUND_FAILS_LATER has failed by now
    assert network.lookup("re_1").failed_later
    texts = [repr(network.operations()), repr(network.settlement_report())]
    texts += [str(operation) for operation in network.operations()]
    texts.append(msgspec.json.encode(network.operations()).decode())
    # Nor anywhere in what the network keeps, notices and charges included.
    texts.append(repr(vars(network)))
    for number in numbers:
        for text in texts:
            assert number not in text
            assert number[:12] not in text
    assert [op.last4 for op in network.operations() if op.kind == "authorize"] == [
        number[-4:] for number in numbers
    ]


# -- faults ------------------------------------------------------------------------

NO_FAULTS = {"timeout_before": 0, "timeout_after": 0, "error": 0, "outage": 0}


def _counts(**counts):
    return NO_FAULTS | counts


async def test_error_fault_refuses_and_records_nothing():
    network = CardNetwork(today=_today, faults=FaultSpec(error=1.0))
    with pytest.raises(NetworkRefused, match=r"^network error: authorize att_1 was not performed$"):
        await network.authorize(_request())
    assert network.operations() == []
    assert network.fault_counts() == _counts(error=1)
    assert network.calls_total() == 1
    # Nothing happened, so the reference is still free.
    network.set_faults(None)
    assert (await network.authorize(_request())).approved
    assert len(network.operations()) == 1


async def test_timeout_before_hangs_and_records_nothing(autojump_clock):
    network = CardNetwork(today=_today, faults=FaultSpec(timeout_before=1.0))
    started = trio.current_time()
    with trio.move_on_after(3600) as scope:
        await network.authorize(_request())
    # Only the caller's own timeout ended it.
    assert scope.cancelled_caught
    assert trio.current_time() - started == pytest.approx(3600)
    assert network.operations() == []
    assert network.settlement_report() == []
    assert network.fault_counts() == _counts(timeout_before=1)


async def test_timeout_after_moves_the_money_then_hangs(autojump_clock):
    network = CardNetwork(today=_today, faults=FaultSpec(timeout_after=1.0))
    with trio.move_on_after(3600) as scope:
        await network.authorize(_request(amount_minor=1999, capture=True))
    assert scope.cancelled_caught
    assert [(op.reference, op.amount_minor) for op in network.settlement_report()] == [("att_1", 1999)]
    assert network.fault_counts() == _counts(timeout_after=1)
    # The retry the engine might make gets the first answer and charges nothing more.
    network.set_faults(None)
    assert await network.authorize(_request(amount_minor=1)) == _approved("att_1")
    assert len(network.operations()) == 1


async def test_timeout_after_applies_to_every_kind(autojump_clock):
    network = CardNetwork(today=_today)
    await _authorized(network, "att_1", amount_minor=1000)
    await _authorized(network, "att_2")
    network.set_faults(FaultSpec(timeout_after=1.0))
    calls = [
        (network.capture, _capture("cap_1", "att_1", amount_minor=1000)),
        (network.refund, _refund("re_1", "att_1", amount_minor=400)),
        (network.void, _void("void_1", "att_2")),
    ]
    for call, request in calls:
        with trio.move_on_after(1) as scope:
            await call(request)
        assert scope.cancelled_caught, request.reference
    assert [(op.kind, op.approved) for op in network.operations()[2:]] == [
        ("capture", True),
        ("refund", True),
        ("void", True),
    ]
    assert network.fault_counts() == _counts(timeout_after=3)


async def test_a_repeated_reference_still_goes_through_faults(autojump_clock):
    network = CardNetwork(today=_today)
    first = await network.authorize(_request(capture=True))
    # A refusal means "not performed", never true of a reference already
    # acted on: that one is answered as the first time.
    network.set_faults(FaultSpec(error=1.0))
    assert await network.authorize(_request(capture=True)) == first
    network.set_faults(FaultSpec(timeout_before=1.0))
    with trio.move_on_after(1) as scope:
        await network.authorize(_request(capture=True))
    assert scope.cancelled_caught
    network.set_faults(None)
    assert await network.authorize(_request(capture=True)) == first
    assert len(network.operations()) == 1
    assert network.fault_counts() == _counts(timeout_before=1)


async def test_outage_window_refuses_every_call_by_the_trio_clock(autojump_clock):
    network = CardNetwork(today=_today, latency_ms=(5, 5), faults=FaultSpec(outage=(10, 15)))
    created = trio.current_time()
    assert (await network.authorize(_request("att_before"))).approved
    await trio.sleep_until(created + 10)
    with pytest.raises(NetworkRefused, match=r"^network outage: authorize att_start was not performed$"):
        await network.authorize(_request("att_start"))
    # An outage refuses at once rather than after the latency.
    assert trio.current_time() == created + 10
    await trio.sleep_until(created + 14.999)
    with pytest.raises(NetworkRefused, match=r"^network outage: capture cap_1 was not performed$"):
        await network.capture(_capture("cap_1", "att_before"))
    await trio.sleep_until(created + 15)
    assert (await network.authorize(_request("att_after"))).approved
    assert [op.reference for op in network.operations()] == ["att_before", "att_after"]
    assert network.fault_counts() == _counts(outage=2)


@pytest.fixture
def network_built_outside_a_run():
    # Sync fixtures run outside trio, as a network built at import would be.
    return CardNetwork(today=_today, faults=FaultSpec(outage=(10, 15)))


async def test_outage_counts_from_the_first_call_when_built_outside_a_run(
    autojump_clock, network_built_outside_a_run
):
    network = network_built_outside_a_run
    await trio.sleep(100)  # would be past the window if counted from time 0
    first_call = trio.current_time()
    assert (await network.authorize(_request("att_1"))).approved
    await trio.sleep_until(first_call + 12)
    with pytest.raises(NetworkRefused, match=r"^network outage: authorize att_2 was not performed$"):
        await network.authorize(_request("att_2"))


async def test_fault_counts_match_what_callers_saw(autojump_clock):
    network = CardNetwork(
        seed=3, today=_today, faults=FaultSpec(error=0.25, timeout_before=0.25, timeout_after=0.25)
    )
    refused = hung = answered = 0
    for index in range(80):
        with trio.move_on_after(1) as scope:
            try:
                await network.authorize(_request(f"att_{index}"))
                answered += 1
            except NetworkRefused:
                refused += 1
        hung += scope.cancelled_caught
    counts = network.fault_counts()
    assert min(counts["error"], counts["timeout_before"], counts["timeout_after"]) > 0
    assert (counts["error"], counts["timeout_before"] + counts["timeout_after"]) == (refused, hung)
    assert refused + hung + answered == 80
    assert len(network.operations()) == answered + counts["timeout_after"]
    assert counts["outage"] == 0
    # A copy: the caller cannot reset the network's counts.
    counts["error"] = 0
    assert network.fault_counts()["error"] == refused


async def _fault_trace(seed, faults, count=40):
    """What each call met ("answered", "refused" or "hung") and how long it took."""
    network = CardNetwork(seed=seed, latency_ms=(1, 5), today=_today, faults=faults)
    trace = []
    for index in range(count):
        started = trio.current_time()
        with trio.move_on_after(1) as scope:
            try:
                await network.authorize(_request(f"att_{index}"))
                outcome = "answered"
            except NetworkRefused:
                outcome = "refused"
        if scope.cancelled_caught:
            outcome = "hung"
        trace.append((outcome, round(trio.current_time() - started, 6)))
    return trace


async def test_seeded_faults_are_reproducible_and_do_not_shift_latencies(autojump_clock):
    spec = FaultSpec(error=0.2, timeout_before=0.2, timeout_after=0.2)
    first = await _fault_trace(7, spec)
    assert first == await _fault_trace(7, spec)
    assert [outcome for outcome, _ in first] != [outcome for outcome, _ in await _fault_trace(8, spec)]
    assert {outcome for outcome, _ in first} == {"answered", "refused", "hung"}
    # Call i sleeps the i-th latency of the seed's own stream, exactly as
    # without faults: fault decisions come from another stream.
    latency_random = random.Random(7)
    latencies = [round(latency_random.randint(1000, 5000) / 1_000_000, 6) for _ in first]
    for (outcome, took), latency in zip(first, latencies, strict=True):
        if outcome == "answered":
            assert took == latency


async def test_per_network_faults_follow_the_card_brand():
    network = CardNetwork(today=_today, faults=FaultSpec(per_network={"amex": FaultSpec(error=1.0)}))
    assert (await network.authorize(_request("att_visa", "4242424242424242", capture=False))).approved
    with pytest.raises(NetworkRefused, match=r"^network error: authorize att_amex was not performed$"):
        await network.authorize(_request("att_amex", "378282246310005"))
    # Captures, voids and refunds go by the brand of the authorization they name.
    network.set_faults(faults.parse("error=1,visa.error=0"))
    assert (await network.capture(_capture("cap_1", "att_visa"))).approved
    assert (await network.refund(_refund("re_1", "att_visa", amount_minor=10))).approved
    with pytest.raises(NetworkRefused, match=r"^network error: void void_1 was not performed$"):
        await network.void(_void("void_1", "att_unknown"))
    with pytest.raises(NetworkRefused, match=r"^network error: authorize att_mastercard was not performed$"):
        await network.authorize(_request("att_mastercard", "5555555555554444"))
    assert [op.reference for op in network.operations()] == ["att_visa", "cap_1", "re_1"]
    assert network.fault_counts() == _counts(error=3)


async def test_latency_override_replaces_the_simulator_range(autojump_clock):
    network = CardNetwork(
        today=_today,
        latency_ms=(1, 1),
        faults=FaultSpec(latency_ms=(40, 40), per_network={"amex": FaultSpec(latency_ms=(70, 70))}),
    )
    took = []
    for reference, number in [("att_1", "4242424242424242"), ("att_2", "378282246310005")]:
        started = trio.current_time()
        await network.authorize(_request(reference, number))
        took.append(round(trio.current_time() - started, 6))
    network.set_faults(None)
    started = trio.current_time()
    await network.authorize(_request("att_3"))
    took.append(round(trio.current_time() - started, 6))
    assert took == [0.040, 0.070, 0.001]


# -- inquiries -----------------------------------------------------------------------


async def test_inquire_returns_the_answer_on_record_and_records_nothing():
    network = CardNetwork(today=_today)
    approved = await _authorized(network, "att_1", amount_minor=1000)
    declined = await _authorized(network, "att_2", card_number="4000000000000002")
    captured = await network.capture(_capture("cap_1", "att_1"))
    assert await network.inquire("att_1") == approved == _approved("att_1")
    assert await network.inquire("att_2") == declined
    assert not declined.approved
    assert await network.inquire("cap_1") == captured
    assert [op.kind for op in network.operations()] == ["authorize", "authorize", "capture"]
    assert network.calls_total() == 6


async def test_inquire_on_a_pending_challenge_leaves_it_open():
    network = CardNetwork(today=_today)
    number = min(cards.THREE_D_SECURE_REQUIRED)
    answer = await network.authorize(_request(card_number=number))
    assert answer.code == "authentication_required"
    inquired = await network.inquire("att_1")
    assert (inquired.approved, inquired.code) == (False, "authentication_required")
    assert network.challenge_pending("att_1")
    assert network.complete_challenge("att_1", passed=True)
    assert await network.inquire("att_1") == _approved("att_1")


async def test_inquire_on_an_unknown_reference_closes_it():
    network = CardNetwork(today=_today)
    closed = _declined("att_lost", "reference_closed", "unknown")
    assert await network.inquire("att_lost") == closed
    tombstone = network.lookup("att_lost")
    assert (tombstone.kind, tombstone.approved, tombstone.amount_minor, tombstone.sequence) == (
        "tombstone",
        False,
        0,
        0,
    )
    # The late original call, or any other kind with that reference, is
    # declined with the same answer and moves no money.
    assert await network.authorize(_request("att_lost", capture=True)) == closed
    assert await network.capture(_capture("att_lost", "att_lost")) == closed
    assert await network.refund(_refund("att_lost", "att_lost")) == closed
    assert await network.void(_void("att_lost", "att_lost")) == closed
    assert await network.inquire("att_lost") == closed
    assert network.operations() == [tombstone]
    assert network.settlement_report() == []


async def test_call_lost_in_flight_cannot_charge_after_reconciliation(autojump_clock):
    network = CardNetwork(today=_today, faults=FaultSpec(timeout_before=1.0))
    with trio.move_on_after(5) as scope:
        await network.authorize(_request(capture=True))
    assert scope.cancelled_caught
    # Reconciliation concludes nothing happened; the engine may then make a
    # new attempt under a new reference.
    network.set_faults(None)
    assert await network.inquire("att_1") == _declined("att_1", "reference_closed", "unknown")
    assert (await network.authorize(_request("att_2", capture=True))).approved
    # The lost call arrives at last: declined, so the intent is charged once.
    assert await network.authorize(_request(capture=True)) == _declined("att_1", "reference_closed", "unknown")
    assert [op.reference for op in network.settlement_report()] == ["att_2"]
    assert [op.kind for op in network.operations()] == ["tombstone", "authorize"]


async def test_tombstone_of_a_capture_reference_leaves_the_authorization_capturable():
    network = CardNetwork(today=_today)
    await _authorized(network, "att_1", amount_minor=1000)
    await network.inquire("cap_lost")
    assert await network.capture(_capture("cap_lost", "att_1")) == _declined("cap_lost", "reference_closed", "unknown")
    assert (await network.capture(_capture("cap_2", "att_1"))).approved
    assert [op.reference for op in network.settlement_report()] == ["cap_2"]


async def test_inquire_during_an_outage_is_refused_and_closes_nothing(autojump_clock):
    network = CardNetwork(today=_today, faults=FaultSpec(outage=(0, 5)))
    with pytest.raises(NetworkRefused, match=r"^network outage: inquire att_1 was not performed$"):
        await network.inquire("att_1")
    assert network.lookup("att_1") is None
    await trio.sleep(5)
    # Not closed by the refused inquiry, so the call still goes through.
    assert (await network.authorize(_request())).approved
    assert network.fault_counts() == _counts(outage=1)


async def test_inquire_error_fault_is_refused_and_closes_nothing():
    network = CardNetwork(today=_today, faults=FaultSpec(error=1.0))
    with pytest.raises(NetworkRefused, match=r"^network error: inquire att_1 was not performed$"):
        await network.inquire("att_1")
    assert network.lookup("att_1") is None
    assert network.fault_counts() == _counts(error=1)


async def test_inquire_never_times_out_by_fault(autojump_clock):
    network = CardNetwork(seed=1, today=_today, faults=FaultSpec(timeout_before=0.5, timeout_after=0.5))
    with trio.fail_after(1):
        for index in range(20):
            assert (await network.inquire(f"att_{index}")).code == "reference_closed"
    assert network.fault_counts() == NO_FAULTS
    assert len(network.operations()) == 20


async def test_fault_messages_hold_no_card_number():
    network = CardNetwork(today=_today, faults=FaultSpec(error=1.0))
    with pytest.raises(NetworkRefused, match=r"^network error: authorize att_1 was not performed$") as caught:
        await network.authorize(_request(card_number="4242424242424242"))
    assert "4242424242" not in str(caught.value)
    assert "4242424242" not in repr(vars(network))
