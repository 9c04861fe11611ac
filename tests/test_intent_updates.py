"""Updating an intent (engine/updates.py): what may change, when, and how
metadata merges, against the pure core."""

from __future__ import annotations

import msgspec
import pytest

from engine import intent as machine
from engine.intent import CaptureMethod, Result, Status

MERCHANT = "acct_update"
COMMON = {"intent_id": "pi_u", "merchant_id": MERCHANT, "livemode": False}
CREATE = machine.CreateIntent(
    **COMMON, amount=2000, currency="usd", capture_method=CaptureMethod.automatic, client_secret="pi_u_secret_x",
    at_s=100, attempt_id="att_1", description="order 7", metadata={"order": "7", "gift": "no"},
)


def run(intent: machine.PaymentIntent | None, command: machine.Command) -> machine.PaymentIntent:
    decision = machine.decide(intent, command)
    assert decision.result is Result.ok, decision
    for event in decision.events:
        # Every event goes through the journal's encoding, as on replay.
        intent = machine.evolve(intent, machine.event_decoder.decode(machine.event_encoder.encode(event)))
    assert intent is not None
    return intent


def update(**changes) -> machine.UpdateIntent:
    return machine.UpdateIntent(**COMMON, at_s=200, **changes)


def test_before_a_confirm_everything_it_asks_for_may_change() -> None:
    created = run(None, CREATE)
    assert created.status is Status.requires_payment_method
    updated = run(created, update(amount=3500, currency="eur", payment_method_id="pm_1", description="order 8"))
    assert (updated.amount, updated.currency, updated.payment_method_id, updated.description) == (3500, "eur", "pm_1", "order 8")
    # A payment method makes it ready to confirm, as Stripe does.
    assert updated.status is Status.requires_confirmation
    confirmed = run(updated, machine.ConfirmIntent(**COMMON, attempt_id="att_2", at_s=300))
    assert confirmed.attempts[-1].amount == 3500 and confirmed.status is Status.processing


def test_metadata_merges_and_an_empty_value_removes_its_key() -> None:
    created = run(None, CREATE)
    updated = run(created, update(metadata={"gift": "", "channel": "web"}, description=""))
    assert updated.metadata == {"order": "7", "channel": "web"}
    assert updated.description is None
    assert run(updated, update()).metadata == updated.metadata  # nothing asked, nothing changed


@pytest.mark.parametrize(("changes", "param"), [({"amount": 5000}, "amount"), ({"currency": "eur"}, "currency"), ({"payment_method_id": "pm_2"}, "payment_method")])
def test_after_a_confirm_money_is_fixed_and_labels_are_not(changes: dict, param: str) -> None:
    paid = run(None, msgspec.structs.replace(CREATE, payment_method_id="pm_1", confirm=True))
    assert paid.status is Status.processing
    refused = machine.decide(paid, update(**changes))
    assert (refused.result, refused.param, refused.events) == (Result.intent_unexpected_state, param, ())
    relabelled = run(paid, update(metadata={"order": "9"}, description="order 9"))
    assert relabelled.status is Status.processing and relabelled.metadata["order"] == "9" and relabelled.description == "order 9"
    assert relabelled.attempts == paid.attempts and relabelled.amount == paid.amount


@pytest.mark.parametrize(
    ("changes", "result", "param"),
    [
        ({"amount": 10}, Result.amount_too_small, "amount"),
        ({"amount": 10**13}, Result.amount_out_of_range, "amount"),
        ({"currency": "xyz"}, Result.currency_unknown, "currency"),
        ({"metadata": {f"k{n}": "v" for n in range(51)}}, Result.metadata_invalid, "metadata"),
        ({"description": "x" * 5000}, Result.metadata_invalid, "description"),
    ],
)
def test_a_malformed_update_changes_nothing(changes: dict, result: Result, param: str) -> None:
    refused = machine.decide(run(None, CREATE), update(**changes))
    assert (refused.result, refused.param, refused.events) == (result, param, ())


def test_another_merchants_intent_is_not_there() -> None:
    refused = machine.decide(run(None, CREATE), machine.UpdateIntent(intent_id="pi_u", merchant_id="acct_other", livemode=False, at_s=1, amount=3000))
    assert refused.result is Result.intent_missing
