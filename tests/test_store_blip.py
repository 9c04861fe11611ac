"""A database blip while an attempt's payment method is read: the network
is never called, so nothing may be recorded as declined."""

from __future__ import annotations

import pytest

from engine.intent import AttemptStatus, RecordNotSent, RecordUnknownOutcome, Status, decide, evolve
from shards import effects
from simulators.card_network import CardNetwork
from store.errors import StoreUnavailable
from tests.test_request_ids import in_process_node
from tests.test_intent_machine import NEW_ATTEMPT_ID, S, accept, confirm, make_intent


class UnreadableMethods:
    """The payment methods while PostgreSQL does not answer."""

    def __init__(self) -> None:
        self.reads = 0

    async def get(self, payment_method_id: str) -> None:
        self.reads += 1
        raise StoreUnavailable("connection refused")


async def test_a_database_blip_while_reading_the_payment_method_is_a_503_not_a_decline(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(effects, "PAYMENT_METHOD_RETRY_DELAYS_S", (0.0, 0.0, None))
    network = CardNetwork(seed=1)
    async with in_process_node(database_url, "Blip shop", network) as (node, client, headers):
        method = await (await client.post(
            "/v1/payment_methods",
            form={"type": "card", "card[number]": "4242424242424242", "card[exp_month]": "4", "card[exp_year]": "2040"},
            headers=headers,
        )).get_json()
        intent = await (await client.post(
            "/v1/payment_intents", form={"amount": "2000", "currency": "usd", "payment_method": method["id"]}, headers=headers
        )).get_json()
        confirm = f"/v1/payment_intents/{intent['id']}/confirm"
        keyed = {**headers, "Idempotency-Key": "confirm-once"}
        readable = node.effects.payment_methods
        unreadable = UnreadableMethods()
        node.effects.payment_methods = unreadable
        refused = await client.post(confirm, form={}, headers=keyed)
        after_blip = await (await client.get(f"/v1/payment_intents/{intent['id']}", headers=headers)).get_json()
        node.effects.payment_methods = readable
        # The same call with the same key runs again once the database is back.
        retried = await client.post(confirm, form={}, headers=keyed)
        replayed = await client.post(confirm, form={}, headers=keyed)
    assert unreadable.reads == 3
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert (await refused.get_json())["error"]["code"] == "service_unavailable"
    # Not a decline: the method stays on the intent, no payment error, no network operation.
    assert after_blip["status"] == "requires_confirmation"
    assert after_blip["payment_method"] == method["id"]
    assert after_blip["last_payment_error"] is None
    assert retried.status_code == 200 and (await retried.get_json())["status"] == "succeeded"
    assert replayed.status_code == 200 and replayed.headers.get("Idempotent-Replayed") == "true"
    charged = [operation for operation in network.operations() if operation.kind in ("authorize", "charge")]
    assert len(charged) == 1 and charged[0].approved


def test_an_attempt_not_sent_goes_back_to_requires_confirmation_and_keeps_its_method() -> None:
    before = make_intent(S.requires_confirmation)
    _, intent = accept(before, confirm())
    decision = decide(intent, RecordNotSent(intent_id=intent.id, attempt_id=NEW_ATTEMPT_ID, at_s=1))
    assert decision.effects == () and len(decision.events) == 1
    after = evolve(intent, decision.events[0])
    assert after.status is Status.requires_confirmation
    assert after.payment_method_id == before.payment_method_id
    assert after.last_payment_error is None
    assert after.attempt(NEW_ATTEMPT_ID).status is AttemptStatus.not_sent
    # A closed attempt takes no second answer.
    assert decide(after, RecordNotSent(intent_id=intent.id, attempt_id=NEW_ATTEMPT_ID, at_s=2)).events == ()


def test_an_unknown_attempt_is_never_closed_as_not_sent() -> None:
    """Once its outcome is unknown an attempt may have reached the network:
    only reconciliation may close it."""
    _, intent = accept(make_intent(S.requires_confirmation), confirm())
    unknown = evolve(intent, decide(intent, RecordUnknownOutcome(intent_id=intent.id, attempt_id=NEW_ATTEMPT_ID, at_s=1)).events[0])
    assert unknown.attempt(NEW_ATTEMPT_ID).status is AttemptStatus.unknown
    assert decide(unknown, RecordNotSent(intent_id=intent.id, attempt_id=NEW_ATTEMPT_ID, at_s=2)).events == ()
