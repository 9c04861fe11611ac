"""Incremental authorization (engine/increments.py): a held authorization
raised to a new total before capture. The engine's decisions as tables, the
simulator's own record of increments, and the API through httpx and the
official SDK on a real node."""

from __future__ import annotations

import time

import httpx
import msgspec
import pytest
import stripe

from engine import intent as machine
from engine import notifications
from engine.cards import INCREMENT_DECLINED
from engine.intent import (
    AttemptKind,
    AttemptStatus,
    CaptureIntent,
    CancelIntent,
    IncrementAuthorization,
    IncrementRequested,
    RecordApproval,
    RecordDecline,
    RecordUnknownOutcome,
    Status,
    event_decoder,
    event_encoder,
    evolve,
)
from engine.ledger import TransferKind
from engine.results import Result
from shards import checks
from shards.actor import ShardState
from simulators import faults
from simulators.card_network import AuthorizationRequest, CaptureRequest, CardNetwork, IncrementRequest
from tests.conftest import NodeProcess
from tests.helpers import wait_until, wait_until_async
from tests.test_actor import create_command, new_payment_method, running_node, seed_merchant
from tests.test_intent_machine import (
    AMOUNT,
    CREATED_S,
    INTENT_ID,
    MERCHANT_ID,
    NEW_ATTEMPT_ID,
    OPEN_ATTEMPT_ID,
    authorized_manually,
    charged,
    decline,
)
from workers.reconciliation import reconcile_once

INCREMENTED = AMOUNT + 1_500


def increment(amount=INCREMENTED, attempt_id=NEW_ATTEMPT_ID, **changes):
    return IncrementAuthorization(
        intent_id=INTENT_ID, merchant_id=MERCHANT_ID, livemode=False, attempt_id=attempt_id, at_s=CREATED_S + 3, amount=amount, **changes
    )


def answer(kind, attempt_id=NEW_ATTEMPT_ID):
    if kind is RecordDecline:
        return decline(attempt_id)
    return kind(intent_id=INTENT_ID, attempt_id=attempt_id, at_s=CREATED_S + 4)


def capture(attempt_id="att_cap", amount=None):
    return CaptureIntent(
        intent_id=INTENT_ID, merchant_id=MERCHANT_ID, livemode=False, attempt_id=attempt_id, at_s=CREATED_S + 5, amount_to_capture=amount
    )


# ------------------------------------------------------------------ engine


def test_an_approved_increment_raises_the_amount_the_charge_and_the_hold():
    journey = authorized_manually()
    started = journey.do(increment())
    assert [type(event).__name__ for event in started.events] == ["AttemptStarted"]
    (effect,) = started.effects
    assert (effect.kind, effect.attempt_id, effect.parent_id, effect.amount) == ("increment", NEW_ATTEMPT_ID, OPEN_ATTEMPT_ID, INCREMENTED)
    assert journey.intent.status is Status.processing and journey.intent.open_attempt().kind is AttemptKind.increment
    approved = journey.do(answer(RecordApproval))
    intent = journey.intent
    assert (intent.status, intent.amount, intent.amount_capturable, intent.amount_received) == (Status.requires_capture, INCREMENTED, INCREMENTED, 0)
    assert intent.authorization().amount == INCREMENTED, "the charge shows the new total"
    assert [(t.kind, t.pending_id, t.amount) for t in approved.events[0].transfers] == [
        (TransferKind.void_pending, f"{OPEN_ATTEMPT_ID}:hold", 0),
        (TransferKind.pending, None, INCREMENTED),
    ]
    # The capture takes the new hold; all of it.
    captured = journey.do(capture())
    journey.do(answer(RecordApproval, "att_cap"))
    assert captured.effects[0].amount == INCREMENTED
    assert (journey.intent.status, journey.intent.amount_received) == (Status.succeeded, INCREMENTED)
    assert journey.merchant_posted() > AMOUNT
    assert journey.ledger.verify() == []


def test_increments_chain_and_a_partial_capture_releases_the_rest():
    journey = authorized_manually()
    journey.do(increment(AMOUNT + 100, "att_i1"))
    journey.do(answer(RecordApproval, "att_i1"))
    journey.do(increment(AMOUNT + 900, "att_i2"))
    second = journey.do(answer(RecordApproval, "att_i2"))
    assert second.events[0].transfers[0].pending_id == "att_i1:hold", "the latest hold is the one replaced"
    captured = journey.do(capture(amount=AMOUNT))
    assert captured.effects[0].amount == AMOUNT
    approved = journey.do(answer(RecordApproval, "att_cap"))
    assert approved.events[0].transfers[0].pending_id == "att_i2:hold"
    assert journey.merchant_balance().debits_pending == 0 and journey.merchant_balance().credits_pending == 0
    assert journey.ledger.verify() == []


def test_a_declined_increment_changes_nothing_but_its_attempt():
    journey = authorized_manually()
    before = journey.intent
    journey.do(increment(metadata={"tip": "yes"}, description="with tip"))
    declined = journey.do(answer(RecordDecline))
    intent = journey.intent
    assert declined.events[0].error is None
    assert (intent.status, intent.amount, intent.amount_capturable, intent.metadata, intent.description) == (
        Status.requires_capture,
        before.amount,
        before.amount_capturable,
        before.metadata,
        before.description,
    )
    assert intent.payment_method_id == before.payment_method_id and intent.last_payment_error is None
    assert intent.attempt(NEW_ATTEMPT_ID).status is AttemptStatus.failed
    assert intent.increment_request is None
    # The hold stands: it is captured in full.
    journey.do(capture())
    journey.do(answer(RecordApproval, "att_cap"))
    assert journey.intent.amount_received == AMOUNT


def test_description_and_metadata_apply_only_when_approved():
    journey = authorized_manually(metadata={"order": "7", "gone": "x"})
    started = journey.do(increment(metadata={"tip": "yes", "gone": ""}, description="with tip"))
    assert isinstance(started.events[1], IncrementRequested)
    assert journey.intent.metadata == {"order": "7", "gone": "x"}, "not before the network answers"
    journey.do(answer(RecordApproval))
    assert (journey.intent.metadata, journey.intent.description) == ({"order": "7", "tip": "yes"}, "with tip")


def test_while_an_increment_is_out_nothing_else_moves_the_hold():
    journey = authorized_manually()
    journey.do(increment())
    cancel = CancelIntent(intent_id=INTENT_ID, merchant_id=MERCHANT_ID, livemode=False, attempt_id="att_x", at_s=CREATED_S + 4)
    for command in (capture(), cancel, increment(INCREMENTED + 1, "att_other")):
        journey.refuse(command, Result.intent_unexpected_state)
    journey.do(answer(RecordUnknownOutcome))
    assert journey.intent.status is Status.processing, "unknown until reconciliation asks"
    journey.do(answer(RecordApproval))
    assert journey.intent.status is Status.requires_capture and journey.intent.amount == INCREMENTED


@pytest.mark.parametrize(
    ("amount", "result"),
    [
        (AMOUNT, Result.increment_amount_invalid),
        (AMOUNT - 1, Result.increment_amount_invalid),
        (0, Result.amount_out_of_range),
        (100_000_000, Result.amount_out_of_range),
    ],
)
def test_the_new_total_must_exceed_what_is_held(amount, result):
    journey = authorized_manually()
    journey.refuse(increment(amount), result, "amount")


def test_only_a_held_authorization_is_incremented_and_at_most_ten_times():
    charged().refuse(increment(), Result.intent_unexpected_state)
    journey = authorized_manually()
    journey.refuse(increment(metadata={"": "empty key"}), Result.metadata_invalid, "metadata")
    journey.refuse(
        IncrementAuthorization(intent_id=INTENT_ID, merchant_id="acct_other", livemode=False, attempt_id="a", at_s=1, amount=INCREMENTED),
        Result.intent_missing,
        "intent",
    )
    for n in range(10):
        journey.do(increment(AMOUNT + n + 1, f"att_i{n}"))
        journey.do(answer(RecordDecline if n % 2 else RecordApproval, f"att_i{n}"))
    journey.refuse(increment(AMOUNT + 100, "att_i10"), Result.increments_too_many, "amount")


def test_increment_events_decode_and_replay_to_the_same_intent():
    journey = authorized_manually()
    journey.do(increment(metadata={"tip": "yes"}))
    journey.do(answer(RecordApproval))
    replayed = None
    for event in journey.journal:
        replayed = evolve(replayed, event_decoder.decode(event_encoder.encode(event)))
    assert replayed == journey.intent


def test_an_increment_raises_amount_capturable_updated_only_when_approved():
    journey = authorized_manually()
    before = journey.intent
    started = journey.do(increment())
    assert notifications.notices(before, started.events[0], journey.intent) == []
    in_flight = journey.intent
    approved = journey.do(answer(RecordApproval))
    assert notifications.notices(in_flight, approved.events[0], journey.intent) == [("payment_intent.amount_capturable_updated", INTENT_ID)]
    journey.do(increment(INCREMENTED + 1, "att_i2"))
    in_flight = journey.intent
    declined = journey.do(answer(RecordDecline, "att_i2"))
    assert notifications.notices(in_flight, declined.events[0], journey.intent) == []


# --------------------------------------------------------------- simulator


def authorization(reference: str, card: str = "4242424242424242", amount: int = 1000) -> AuthorizationRequest:
    return AuthorizationRequest(reference, card, 12, 2099, amount, "usd", capture=False)


async def test_the_network_raises_an_authorization_once_per_reference_and_captures_up_to_it():
    network = CardNetwork(seed=3, latency_ms=(0, 0))
    assert (await network.authorize(authorization("att_a"))).approved
    raised = await network.increment(IncrementRequest("att_i", "att_a", 1500, "usd"))
    again = await network.increment(IncrementRequest("att_i", "att_a", 1500, "usd"))
    assert raised.approved and again == raised
    smaller = await network.increment(IncrementRequest("att_j", "att_a", 1500, "usd"))
    assert (smaller.approved, smaller.code) == (False, "amount_too_small")
    assert [(op.kind, op.amount_minor, op.parent_reference) for op in network.operations()][1:] == [
        ("increment", 1500, "att_a"),
        ("increment", 1500, "att_a"),
    ]
    too_much = await network.capture(CaptureRequest("att_c0", "att_a", 1501, "usd"))
    assert (too_much.approved, too_much.code) == (False, "amount_too_large")
    assert (await network.capture(CaptureRequest("att_c1", "att_a", 1500, "usd"))).approved
    late = await network.increment(IncrementRequest("att_k", "att_a", 2000, "usd"))
    assert (late.approved, late.code) == (False, "charge_already_captured")
    assert (await network.inquire("att_i")).approved


async def test_the_network_declines_increments_of_its_increment_declined_card():
    network = CardNetwork(seed=3, latency_ms=(0, 0))
    assert (await network.authorize(authorization("att_a", INCREMENT_DECLINED))).approved
    declined = await network.increment(IncrementRequest("att_i", "att_a", 1500, "usd"))
    assert (declined.approved, declined.code) == (False, "card_declined")
    assert (await network.capture(CaptureRequest("att_c", "att_a", 1000, "usd"))).approved
    missing = await network.increment(IncrementRequest("att_m", "att_nothing", 1500, "usd"))
    assert (missing.approved, missing.code) == (False, "resource_missing")


# --------------------------------------------------------------------- API


def client_of(node: NodeProcess, keys: dict) -> stripe.StripeClient:
    return stripe.StripeClient(keys["secret_key"], base_addresses={"api": node.url}, max_network_retries=0)


@pytest.fixture
def http(node: NodeProcess, fresh_merchant: dict):
    with httpx.Client(base_url=node.url, auth=(fresh_merchant["secret_key"], ""), timeout=30) as client:
        yield client


HOLD = {"amount": "5000", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true", "capture_method": "manual"}


def test_the_sdk_increments_a_hold_and_captures_the_new_total(node: NodeProcess, fresh_merchant: dict) -> None:
    client = client_of(node, fresh_merchant)
    held = client.v1.payment_intents.create(
        params={"amount": 5000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True, "capture_method": "manual"}
    )
    raised = client.v1.payment_intents.increment_authorization(
        held.id, params={"amount": 7500, "metadata": {"tip": "2500"}, "expand": ["latest_charge"]}
    )
    assert (raised.status, raised.amount, raised.amount_capturable, raised.metadata.to_dict()) == ("requires_capture", 7500, 7500, {"tip": "2500"})
    assert raised.latest_charge.id == held.latest_charge and raised.latest_charge.amount == 7500
    captured = client.v1.payment_intents.capture(held.id)
    assert (captured.status, captured.amount_received) == ("succeeded", 7500)
    charge = client.v1.charges.retrieve(held.latest_charge)
    assert (charge.amount, charge.amount_captured, charge.amount_refunded, charge.captured) == (7500, 7500, 0, True)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.payment_intents.increment_authorization(held.id, params={"amount": 9000})
    assert refused.value.code == "payment_intent_unexpected_state" and "succeeded" in str(refused.value)


def test_a_declined_increment_is_card_declined_and_the_hold_stays(http: httpx.Client) -> None:
    card = http.post(
        "/v1/payment_methods", data={"type": "card", "card[number]": INCREMENT_DECLINED, "card[exp_month]": "12", "card[exp_year]": "2034"}
    ).json()
    held = http.post("/v1/payment_intents", data={**HOLD, "payment_method": card["id"]}).json()
    assert held["status"] == "requires_capture"
    answer = http.post(f"/v1/payment_intents/{held['id']}/increment_authorization", data={"amount": "6000", "description": "more"})
    assert answer.status_code == 402, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["code"]) == ("card_error", "card_declined")
    assert (error["payment_intent"]["status"], error["payment_intent"]["amount"], error["payment_intent"]["description"]) == (
        "requires_capture",
        5000,
        None,
    )
    intent = http.get(f"/v1/payment_intents/{held['id']}").json()
    assert (intent["status"], intent["amount"], intent["amount_capturable"], intent["last_payment_error"]) == ("requires_capture", 5000, 5000, None)
    assert http.get(f"/v1/charges/{held['latest_charge']}").json()["amount"] == 5000
    captured = http.post(f"/v1/payment_intents/{held['id']}/capture").json()
    assert (captured["status"], captured["amount_received"]) == ("succeeded", 5000)


def test_a_bad_increment_is_refused_before_the_network(http: httpx.Client, node: NodeProcess, fresh_merchant: dict) -> None:
    held = http.post("/v1/payment_intents", data=HOLD).json()
    url = f"/v1/payment_intents/{held['id']}/increment_authorization"
    for data, param, code in [
        ({"amount": "5000"}, "amount", "amount_too_small"),
        ({"amount": "4000"}, "amount", "amount_too_small"),
        ({"amount": "100000000"}, "amount", "amount_too_large"),
        ({}, "amount", "parameter_missing"),
        ({"amount": "1.5"}, "amount", "parameter_invalid_integer"),
        ({"amount": "6000", "application_fee_amount": "10"}, "application_fee_amount", "parameter_unknown"),
    ]:
        answer = http.post(url, data=data)
        assert answer.status_code == 400, (data, answer.text)
        assert (answer.json()["error"]["param"], answer.json()["error"].get("code")) == (param, code), data
    assert http.get(f"/v1/payment_intents/{held['id']}").json()["amount"] == 5000
    missing = http.post("/v1/payment_intents/pi_nothing/increment_authorization", data={"amount": "6000"})
    assert missing.status_code == 404
    publishable = httpx.post(node.url + url, data={"amount": "6000"}, auth=(fresh_merchant["publishable_key"], ""), timeout=30)
    assert publishable.status_code == 401
    automatic = http.post("/v1/payment_intents", data={**HOLD, "capture_method": "automatic"}).json()
    not_held = http.post(f"/v1/payment_intents/{automatic['id']}/increment_authorization", data={"amount": "6000"})
    assert not_held.status_code == 400 and not_held.json()["error"]["code"] == "payment_intent_unexpected_state"


def test_an_increment_is_idempotent(http: httpx.Client) -> None:
    held = http.post("/v1/payment_intents", data=HOLD).json()
    url = f"/v1/payment_intents/{held['id']}/increment_authorization"
    first = http.post(url, data={"amount": "6500"}, headers={"Idempotency-Key": "raise-1"})
    again = http.post(url, data={"amount": "6500"}, headers={"Idempotency-Key": "raise-1"})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() and again.headers.get("Idempotent-Replayed") == "true"
    other = http.post(url, data={"amount": "7000"}, headers={"Idempotency-Key": "raise-1"})
    assert other.status_code == 400 and other.json()["error"]["type"] == "idempotency_error"
    assert http.get(f"/v1/payment_intents/{held['id']}").json()["amount"] == 6500


def test_an_approved_increment_is_an_amount_capturable_updated_event(http: httpx.Client) -> None:
    held = http.post("/v1/payment_intents", data=HOLD).json()
    http.post(f"/v1/payment_intents/{held['id']}/increment_authorization", data={"amount": "6000"}).raise_for_status()

    def events_of_intent() -> list[dict]:
        listed = http.get("/v1/events", params={"limit": 100}).json()["data"]
        return [event for event in listed if event["data"]["object"].get("id") == held["id"]]

    def updates() -> list[dict]:
        found = [event for event in events_of_intent() if event["type"] == "payment_intent.amount_capturable_updated"]
        return found if len(found) == 2 else []

    assert sorted(event["data"]["object"]["amount_capturable"] for event in wait_until(updates, 30, "two events")) == [5000, 6000]
    # The confirm's, and none for the increment in flight.
    assert [event["type"] for event in events_of_intent()].count("payment_intent.processing") == 1


def test_a_charge_payload_of_an_incremented_intent_renders(http: httpx.Client) -> None:
    held = http.post("/v1/payment_intents", data=HOLD).json()
    raised = http.post(f"/v1/payment_intents/{held['id']}/increment_authorization", data={"amount": "5001"}).json()
    charge = http.get(f"/v1/charges/{held['latest_charge']}").json()
    assert (raised["amount"], charge["amount"], charge["amount_captured"], charge["captured"]) == (5001, 5001, 0, False)
    canceled = http.post(f"/v1/payment_intents/{held['id']}/cancel").json()
    assert canceled["status"] == "canceled"
    # The released hold is the whole incremented amount, refunded as Stripe counts it.
    charge = http.get(f"/v1/charges/{held['latest_charge']}").json()
    assert (charge["amount_refunded"], charge["refunded"]) == (5001, True)


# ------------------------------------------------------------------ actors


async def test_an_increment_whose_answer_is_lost_is_reconciled_and_every_invariant_holds(store) -> None:
    """The network raises the hold but its answer is lost: the increment is
    unknown and the intent stays processing until reconciliation asks by
    reference; then it holds the new total, and `payments check` (I1 to I6,
    the network's record included) finds nothing."""
    await seed_merchant(store)
    network = CardNetwork(seed=7, latency_ms=(1, 2))
    async with running_node(store, network, network_timeout_s=0.3) as node:
        method = await new_payment_method(node)
        held = await node.submit(create_command(node, payment_method_id=method, confirm=True, capture_method=machine.CaptureMethod.manual))
        intent_id = held.intent.id
        assert held.intent.status is Status.requires_capture
        network.set_faults(faults.parse("timeout_after=1"))
        raise_to = IncrementAuthorization(
            intent_id=intent_id,
            merchant_id="acct_test",
            livemode=False,
            attempt_id=node.new_id("att", node.partition_of_intent(intent_id)),
            at_s=int(time.time()),
            amount=1700,
            metadata={"tip": "700"},
        )
        lost = await node.submit(raise_to)
        assert lost.intent.status is Status.processing and lost.intent.attempt(raise_to.attempt_id).status is AttemptStatus.unknown
        assert lost.intent.metadata == {}
        network.set_faults(faults.FaultSpec())
        summary = await reconcile_once(node)
        assert summary.resolved == 1
        await wait_until_async(lambda: node.intent(intent_id).status is Status.requires_capture, 10, "the increment reconciled")
        intent = node.intent(intent_id)
        assert (intent.amount, intent.amount_capturable, intent.metadata) == (1700, 1700, {"tip": "700"})
        captured = await node.submit(
            machine.CaptureIntent(
                intent_id=intent_id,
                merchant_id="acct_test",
                livemode=False,
                attempt_id=node.new_id("att", node.partition_of_intent(intent_id)),
                at_s=int(time.time()),
            )
        )
        assert (captured.intent.status, captured.intent.amount_received) == (Status.succeeded, 1700)
        node.stop_accepting()
    states = []
    for partition in range(4):
        state = ShardState(partition)
        state.replay(await store.journal.load(partition))
        states.append(state)
    replayed = next(state.intents[intent_id] for state in states if intent_id in state.intents)
    assert (replayed.status, replayed.amount_received) == (Status.succeeded, 1700)
    operations = [msgspec.structs.asdict(operation) for operation in network.operations()]
    assert [operation["kind"] for operation in operations] == ["authorize", "increment", "capture"]
    report = checks.check(states, await store.idempotency.records(), operations)
    assert report.ok, report.table()


def test_the_module_level_sdk_increments(node: NodeProcess, fresh_merchant: dict) -> None:
    stripe.api_key, stripe.api_base = fresh_merchant["secret_key"], node.url
    try:
        held = stripe.PaymentIntent.create(amount=2000, currency="eur", payment_method="pm_card_mastercard", confirm=True, capture_method="manual")
        raised = stripe.PaymentIntent.increment_authorization(held.id, amount=2600, description="room service")
        assert (raised.amount, raised.amount_capturable, raised.description) == (2600, 2600, "room service")
        again = held.increment_authorization(amount=3000)
        assert (again.amount, again.status) == (3000, "requires_capture")
        with pytest.raises(stripe.InvalidRequestError, match=r"must be greater than the amount authorized now") as refused:
            stripe.PaymentIntent.increment_authorization(held.id, amount=3000)
        assert refused.value.param == "amount"
    finally:
        stripe.api_key, stripe.api_base = None, "https://api.stripe.com"
