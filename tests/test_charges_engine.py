"""engine/charges.py and the charge ids of engine/ids.py: which attempts are
charges, and their amounts, as plain tables over intents built directly."""

from __future__ import annotations

import pytest

from engine import charges, ids
from engine.intent import AttemptKind, AttemptStatus, RefundStatus
from engine.intent import Status as S
from tests.test_intent_machine import (
    AMOUNT,
    CAPTURE_ATTEMPT_ID,
    OPEN_ATTEMPT_ID,
    accept,
    approval,
    automatic,
    cancel,
    capture,
    make_intent,
    manual,
    with_refund,
)


@pytest.mark.parametrize(
    ("status", "capture_method", "expected"),
    [
        (S.requires_payment_method, automatic, []),
        (S.requires_confirmation, automatic, []),
        # In flight: the network has it, its answer is not known yet.
        (S.processing, automatic, [(OPEN_ATTEMPT_ID, AttemptStatus.pending)]),
        # Waiting for the cardholder's 3-D Secure answer: not a charge yet.
        (S.requires_action, automatic, []),
        (S.requires_capture, manual, [(OPEN_ATTEMPT_ID, AttemptStatus.succeeded)]),
        # A capture is not a charge: it changes its authorization's.
        (S.succeeded, manual, [(OPEN_ATTEMPT_ID, AttemptStatus.succeeded)]),
        (S.succeeded, automatic, [(OPEN_ATTEMPT_ID, AttemptStatus.succeeded)]),
        (S.canceled, automatic, [(OPEN_ATTEMPT_ID, AttemptStatus.failed)]),
        (S.canceled, manual, [(OPEN_ATTEMPT_ID, AttemptStatus.succeeded)]),
    ],
)
def test_which_attempts_are_charges(status, capture_method, expected):
    intent = make_intent(status, capture_method)
    assert [(attempt.id, attempt.status) for attempt in charges.charges(intent)] == expected
    latest = charges.latest(intent)
    assert (None if latest is None else latest.id) == (expected[-1][0] if expected else None)


def test_an_attempt_abandoned_at_3d_secure_never_becomes_a_charge():
    _, canceled = accept(make_intent(S.requires_action, automatic), cancel("abandoned"))
    assert canceled.attempt(OPEN_ATTEMPT_ID).status is AttemptStatus.failed
    assert charges.charges(canceled) == [] and charges.charge_attempt(canceled, OPEN_ATTEMPT_ID) is None


@pytest.mark.parametrize(
    ("intent", "captured", "refunded"),
    [
        pytest.param(make_intent(S.requires_capture, manual), 0, 0, id="held"),
        pytest.param(make_intent(S.succeeded, automatic), AMOUNT, 0, id="charged"),
        pytest.param(make_intent(S.succeeded, manual), AMOUNT, 0, id="captured"),
        # Released whole by the cancel: Stripe counts it refunded.
        pytest.param(make_intent(S.canceled, manual), 0, AMOUNT, id="canceled-hold"),
        pytest.param(with_refund(make_intent(S.succeeded, automatic), RefundStatus.succeeded, amount=700), AMOUNT, 700, id="refunded"),
        pytest.param(with_refund(make_intent(S.succeeded, automatic), RefundStatus.failed, amount=700), AMOUNT, 0, id="refund-failed"),
        pytest.param(make_intent(S.canceled, automatic), 0, 0, id="declined"),
    ],
)
def test_a_charge_s_captured_and_refunded_amounts(intent, captured, refunded):
    (charge,) = charges.charges(intent)
    assert (charges.amount_captured(intent, charge), charges.amount_refunded(intent, charge)) == (captured, refunded)


def test_a_partial_capture_releases_the_rest_as_refunded():
    _, capturing = accept(make_intent(S.requires_capture, manual), capture(2000, attempt_id=CAPTURE_ATTEMPT_ID))
    (charge,) = charges.charges(capturing)
    # The capture is in flight: the hold still stands, nothing is released.
    assert (charges.amount_captured(capturing, charge), charges.amount_released(capturing, charge)) == (0, 0)
    _, captured = accept(capturing, approval(CAPTURE_ATTEMPT_ID))
    assert charges.capture_of(captured, charge).id == CAPTURE_ATTEMPT_ID
    assert (charges.amount_captured(captured, charge), charges.amount_refunded(captured, charge)) == (2000, AMOUNT - 2000)


def test_a_charge_id_is_its_attempt_s_with_stripe_s_prefix():
    attempt_id = ids.make_id("att", 7, 1_700_000_000_000, bytes(10))
    charge_id = ids.charge_id(attempt_id)
    assert charge_id == "ch_" + attempt_id.removeprefix("att_")
    assert ids.partition_of(charge_id, "ch") == ids.partition_of(attempt_id, "att") == 7
    assert ids.attempt_id_of_charge(charge_id) == ids.attempt_id_of_charge(attempt_id) == attempt_id
    for text in ("ch_1", "pi_" + charge_id[3:], "ch_" + "u" * 29, "", "ch_"):
        assert ids.attempt_id_of_charge(text) is None, text
    assert not any(attempt.kind is AttemptKind.void for attempt in charges.charges(make_intent(S.canceled, manual)))
