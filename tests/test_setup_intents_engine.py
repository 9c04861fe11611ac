"""The SetupIntent state machine (engine/setup_intents.py), as tables of
(before, decision, expected)."""

from __future__ import annotations

import msgspec
import pytest

from engine import setup_intents as machine
from engine.results import Result
from engine.setup_intents import Move, Refusal, SetupIntent, SetupStatus
from shards import checks

S = SetupStatus
BASE = SetupIntent(
    id="seti_1", merchant_id="acct_1", livemode=False, status=S.requires_payment_method, client_secret="seti_1_secret_x", usage="off_session", created_s=1
)
CHALLENGE = "https://sim.test/simulator/3ds/setatt_1"


def at(status: SetupStatus, **changes) -> SetupIntent:
    return msgspec.structs.replace(BASE, status=status, **changes)


def checking(status: SetupStatus = S.processing, reference: str = "setatt_1") -> SetupIntent:
    return at(status, payment_method_id="pm_1", reference=reference, checked_at_s=5)


def test_every_status_has_its_row_and_final_ones_allow_nothing() -> None:
    assert set(machine.TRANSITIONS) == set(SetupStatus)
    assert machine.TRANSITIONS[S.succeeded] == {} and machine.TRANSITIONS[S.canceled] == {}
    # Stripe's list of cancelable statuses, and nothing else.
    assert {status for status, moves in machine.TRANSITIONS.items() if Move.cancel in moves} == {
        S.requires_payment_method,
        S.requires_confirmation,
        S.requires_action,
    }
    assert {status for status, moves in machine.TRANSITIONS.items() if Move.confirm in moves} == {S.requires_payment_method, S.requires_confirmation}


@pytest.mark.parametrize(
    ("before", "payment_method_id", "expected"),
    [
        (at(S.requires_payment_method, payment_method_id=None), "pm_2", S.processing),
        (at(S.requires_confirmation, payment_method_id="pm_1"), None, S.processing),
        (at(S.requires_confirmation, payment_method_id="pm_1"), "pm_2", S.processing),
        (at(S.requires_payment_method, payment_method_id=None), None, Result.payment_method_required),
        (checking(), "pm_2", Result.intent_unexpected_state),
        (checking(S.requires_action), "pm_2", Result.intent_unexpected_state),
        (at(S.succeeded, payment_method_id="pm_1"), None, Result.intent_unexpected_state),
        (at(S.canceled), "pm_2", Result.intent_unexpected_state),
    ],
)
def test_confirm(before: SetupIntent, payment_method_id: str | None, expected: object) -> None:
    decided = machine.decide_confirm(before, payment_method_id=payment_method_id, return_url="https://shop.test/r", reference="setatt_9", at_s=7)
    if isinstance(expected, Result):
        assert decided == Refusal(expected, "payment_method" if expected is Result.payment_method_required else None)
        return
    assert isinstance(decided, SetupIntent)
    assert (decided.status, decided.reference, decided.checked_at_s, decided.return_url) == (expected, "setatt_9", 7, "https://shop.test/r")
    assert decided.payment_method_id == (payment_method_id or before.payment_method_id)


@pytest.mark.parametrize(
    ("before", "approved", "code", "expected_status", "payment_method_id", "error_code"),
    [
        (checking(), True, None, S.succeeded, "pm_1", None),
        (checking(), False, "authentication_required", S.requires_action, "pm_1", None),
        (checking(), False, "card_declined", S.requires_payment_method, None, "card_declined"),
        (checking(S.requires_action), True, None, S.succeeded, "pm_1", None),
        (checking(S.requires_action), False, "setup_intent_authentication_failure", S.requires_payment_method, None, "setup_intent_authentication_failure"),
    ],
)
def test_network_answers(before, approved, code, expected_status, payment_method_id, error_code) -> None:
    decided = machine.decide_answer(
        before, "setatt_1", approved=approved, code=code, decline_code=None, message="m", challenge_url=CHALLENGE
    )
    assert decided is not None
    assert (decided.status, decided.payment_method_id) == (expected_status, payment_method_id)
    assert decided.next_action_url == (CHALLENGE if expected_status is S.requires_action else None)
    assert (decided.last_setup_error and decided.last_setup_error.code) == error_code
    if error_code is not None:
        assert decided.last_setup_error.payment_method_id == "pm_1"


@pytest.mark.parametrize(
    "before",
    [
        checking(reference="setatt_old"),  # an answer about an older check
        checking(S.canceled),  # canceled while the challenge waited
        checking(S.succeeded),  # answered already
    ],
)
def test_answers_that_change_nothing(before: SetupIntent) -> None:
    assert machine.decide_answer(before, "setatt_1", approved=True, code=None, decline_code=None, message="m") is None
    assert machine.decide_not_sent(before, "setatt_1") is None


def test_a_waiting_challenge_is_not_asked_again_and_a_check_never_sent_can_be_confirmed_again() -> None:
    waiting = checking(S.requires_action)
    assert machine.decide_answer(waiting, "setatt_1", approved=False, code="authentication_required", decline_code=None, message="m", challenge_url=CHALLENGE) is None
    resent = machine.decide_not_sent(checking(), "setatt_1")
    assert resent is not None and (resent.status, resent.payment_method_id) == (S.requires_confirmation, "pm_1")


@pytest.mark.parametrize(
    ("before", "reason", "expected"),
    [
        (at(S.requires_payment_method), "abandoned", S.canceled),
        (at(S.requires_confirmation, payment_method_id="pm_1"), None, S.canceled),
        (checking(S.requires_action), "requested_by_customer", S.canceled),
        (checking(), None, Result.intent_unexpected_state),
        (at(S.succeeded), None, Result.intent_unexpected_state),
        (at(S.canceled), None, Result.intent_unexpected_state),
        (at(S.requires_payment_method), "fraudulent", Result.cancellation_reason_invalid),
    ],
)
def test_cancel(before: SetupIntent, reason: str | None, expected: object) -> None:
    decided = machine.decide_cancel(before, reason)
    if isinstance(expected, Result):
        assert isinstance(decided, Refusal) and decided.result is expected
        return
    assert isinstance(decided, SetupIntent)
    assert (decided.status, decided.cancellation_reason, decided.next_action_url) == (expected, reason, None)


def test_update() -> None:
    before = at(S.requires_payment_method, description="d", metadata={"a": "1", "b": "2"})
    updated = machine.decide_update(before, payment_method_id="pm_1", customer_id="cus_1", description="", metadata={"b": "", "c": "3"})
    assert isinstance(updated, SetupIntent)
    assert (updated.status, updated.payment_method_id, updated.customer_id) == (S.requires_confirmation, "pm_1", "cus_1")
    assert (updated.description, updated.metadata) == (None, {"a": "1", "c": "3"})
    for status in (S.processing, S.requires_action, S.succeeded, S.canceled):
        refused = machine.decide_update(checking(status), payment_method_id="pm_2", customer_id=None, description=None, metadata={})
        assert refused == Refusal(Result.intent_unexpected_state), status
        relabelled = machine.decide_update(checking(status), payment_method_id=None, customer_id=None, description="x", metadata={"k": "v"})
        assert isinstance(relabelled, SetupIntent) and relabelled.status is status and relabelled.metadata == {"k": "v"}
    too_many = machine.decide_update(before, payment_method_id=None, customer_id=None, description=None, metadata={f"k{n}": "v" for n in range(50)})
    assert too_many == Refusal(Result.metadata_invalid, "metadata")


def test_payments_check_leaves_card_checks_out_of_the_intents_network_record() -> None:
    check = {"reference": "setatt_1", "kind": "authorize", "approved": True, "amount_minor": 0}
    unknown = {"reference": "att_1", "kind": "authorize", "approved": True, "amount_minor": 100}
    report = checks.check([], [], [check, unknown])
    assert [violation.subject for violation in report.violations] == ["att_1"]
