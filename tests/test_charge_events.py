"""Stripe's charge.* events (issue 15): which changes raise them (a pure
function, engine/notifications.py), and on a node, that each is delivered
with the charge as data.object, its card details included (brand, last4,
expiry, fingerprint, funding: taken from the payment method when the
attempt is made, so rendering reads no store), validating against Stripe's
description."""

from __future__ import annotations

import json

import httpx
import msgspec

from engine import intent as machine
from engine import notifications
from engine.intent import CaptureMethod
from tests.conftest import NodeProcess
from tests.helpers import wait_until
from tests.stripe_spec import spec
from tests.test_webhooks import ALLOW_PRIVATE, ATTEMPT, CAPTURE, INTENT, OWNER, Capture, add_endpoint, create

CARD = machine.CardSummary(brand="visa", last4="4242", exp_month=12, exp_year=2034, fingerprint="f" * 16)


def raised(*commands: machine.Command) -> list[tuple[str, str]]:
    """The (event type, object id) pairs a sequence of commands raises."""
    intent = None
    pairs: list[tuple[str, str]] = []
    for command in commands:
        decision = machine.decide(intent, command)
        assert decision.result is machine.Result.ok, (command, decision.result)
        for event in decision.events:
            after = machine.evolve(intent, event)
            pairs += notifications.notices(intent, event, after)
            intent = after
    return pairs


def charge_events(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(kind, object_id) for kind, object_id in pairs if kind.startswith("charge.") and not kind.startswith("charge.dispute.")]


def approve(attempt_id: str, at_s: int = 2) -> machine.RecordApproval:
    return machine.RecordApproval(intent_id=INTENT, attempt_id=attempt_id, at_s=at_s)


def test_an_approved_charge_raises_charge_succeeded_about_it() -> None:
    assert charge_events(raised(create(), approve(ATTEMPT))) == [("charge.succeeded", ATTEMPT)]


def test_a_decline_raises_charge_failed_a_declined_capture_nothing() -> None:
    decline = machine.RecordDecline(intent_id=INTENT, attempt_id=ATTEMPT, at_s=2, code="card_declined", decline_code="generic_decline", message="no")
    assert charge_events(raised(create(), decline)) == [("charge.failed", ATTEMPT)]
    capture_declined = machine.RecordDecline(intent_id=INTENT, attempt_id=CAPTURE, at_s=4, code="card_declined", decline_code=None, message="no")
    manual = raised(
        create(CaptureMethod.manual), approve(ATTEMPT),
        machine.CaptureIntent(intent_id=INTENT, **OWNER, attempt_id=CAPTURE, at_s=3), capture_declined,
    )
    assert charge_events(manual) == [("charge.succeeded", ATTEMPT)]


def test_a_capture_raises_charge_captured_about_the_authorization() -> None:
    pairs = raised(
        create(CaptureMethod.manual), approve(ATTEMPT),
        machine.CaptureIntent(intent_id=INTENT, **OWNER, attempt_id=CAPTURE, at_s=3), approve(CAPTURE, 4),
    )
    assert charge_events(pairs) == [("charge.succeeded", ATTEMPT), ("charge.captured", ATTEMPT)]


def test_a_released_hold_is_charge_refunded_and_an_expired_one_charge_expired() -> None:
    void = "att_038g0sq9t2001448xeb5ssygd6wc9"
    canceled = raised(create(CaptureMethod.manual), approve(ATTEMPT), machine.CancelIntent(intent_id=INTENT, **OWNER, attempt_id=void, at_s=3))
    assert charge_events(canceled) == [("charge.succeeded", ATTEMPT), ("charge.refunded", ATTEMPT)]
    expired = raised(create(CaptureMethod.manual), approve(ATTEMPT), machine.ExpireAuthorization(intent_id=INTENT, attempt_id=void, at_s=3))
    assert charge_events(expired) == [("charge.succeeded", ATTEMPT), ("charge.expired", ATTEMPT)]
    # The void's own answer changes nothing the merchant sees.
    assert charge_events(raised(create(CaptureMethod.manual), approve(ATTEMPT), machine.CancelIntent(intent_id=INTENT, **OWNER, attempt_id=void, at_s=3), approve(void, 4)))[-1] == ("charge.refunded", ATTEMPT)


def test_a_merchant_s_update_of_a_charge_raises_charge_updated() -> None:
    update = machine.UpdateCharge(intent_id=INTENT, **OWNER, attempt_id=ATTEMPT, at_s=3, description="Order 7")
    assert charge_events(raised(create(), approve(ATTEMPT), update)) == [("charge.succeeded", ATTEMPT), ("charge.updated", ATTEMPT)]


def test_a_canceled_intent_that_held_nothing_raises_no_charge_event() -> None:
    void = "att_038g0sq9t2001448xeb5ssygd6wc9"
    action = machine.RecordActionRequired(intent_id=INTENT, attempt_id=ATTEMPT, at_s=2, url="https://x.test/3ds")
    assert charge_events(raised(create(), action, machine.CancelIntent(intent_id=INTENT, **OWNER, attempt_id=void, at_s=3))) == []


def test_disputes_raise_funds_withdrawn_updated_closed_and_reinstated() -> None:
    pairs = raised(
        create(), approve(ATTEMPT),
        machine.RecordDisputeOpened(intent_id=INTENT, dispute_id="dp_1", amount=2000, at_s=5),
        machine.UpdateDispute(intent_id=INTENT, **OWNER, dispute_id="dp_1", at_s=6, evidence={"uncategorized_text": "winning_evidence"}),
        machine.RecordDisputeClosed(intent_id=INTENT, dispute_id="dp_1", won=True, at_s=7),
    )
    assert [pair for pair in pairs if pair[0].startswith("charge.dispute.")] == [
        ("charge.dispute.created", "dp_1"),
        ("charge.dispute.funds_withdrawn", "dp_1"),
        ("charge.dispute.updated", "dp_1"),
        ("charge.dispute.closed", "dp_1"),
        ("charge.dispute.funds_reinstated", "dp_1"),
    ]
    assert {kind for kind, _ in pairs} <= set(notifications.EVENT_TYPES)


def test_the_attempt_keeps_the_card_it_was_made_with() -> None:
    command = msgspec.structs.replace(create(), card=CARD)
    intent = None
    for event in machine.decide(None, command).events:
        intent = machine.evolve(intent, event)
    assert intent is not None and intent.attempts[0].card == CARD


# ------------------------------------------------------------ on a node


def test_charge_events_are_delivered_with_the_charge_and_its_card(new_node) -> None:
    node: NodeProcess = new_node(None, None, ALLOW_PRIVATE)
    capture = Capture()
    with httpx.Client(base_url=node.url, auth=(node.secret_key, ""), timeout=30) as http:
        add_endpoint(http, capture.url, ["charge.succeeded", "charge.failed", "charge.captured", "charge.refunded"])
        method = http.post("/v1/payment_methods", data={"type": "card", "card[number]": "4000056655665556", "card[exp_month]": "7", "card[exp_year]": "2031"}).json()
        paid = http.post("/v1/payment_intents", data={"amount": "3000", "currency": "usd", "payment_method": method["id"], "confirm": "true"}).json()
        declined = http.post("/v1/payment_intents", data={"amount": "3000", "currency": "usd", "payment_method": "pm_card_chargeDeclined", "confirm": "true"})
        assert declined.status_code == 402
        held = http.post("/v1/payment_intents", data={"amount": "2000", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true", "capture_method": "manual"}).json()
        # Confirmed apart from its creation: the card is read from the intent's payment method.
        later = http.post("/v1/payment_intents", data={"amount": "1000", "currency": "usd", "payment_method": "pm_card_mastercard"}).json()
        assert http.post(f"/v1/payment_intents/{later['id']}/confirm").status_code == 200
        assert http.post(f"/v1/payment_intents/{held['id']}/capture", data={"amount_to_capture": "1500"}).status_code == 200
        assert http.post("/v1/refunds", data={"payment_intent": paid["id"], "amount": "1000"}).status_code == 200
        wanted = {"charge.succeeded", "charge.failed", "charge.captured", "charge.refunded"}
        wait_until(lambda: len(capture.received) >= 6 and wanted <= {json.loads(body)["type"] for _, body in capture.received}, 30, "the charge events")
        listed = http.get("/v1/events", params={"type": "charge.succeeded"}).json()["data"]
    events = [json.loads(body) for _, body in capture.received]
    for event in events:
        checked = spec().check_object(event)
        assert checked.violations == [], (event["type"], checked.violations)
        assert checked.objects["charge"] >= 1
        charge = event["data"]["object"]
        assert charge["object"] == "charge" and charge["id"].startswith("ch_")
        card = charge["payment_method_details"]["card"]
        assert set(card) >= {"brand", "last4", "exp_month", "exp_year", "fingerprint", "funding"}
        assert "number" not in json.dumps(charge)
    by_charge = {(event["type"], event["data"]["object"]["id"]): event["data"]["object"] for event in events}
    succeeded = by_charge[("charge.succeeded", paid["latest_charge"])]
    assert succeeded["payment_method_details"]["card"]["last4"] == "5556"
    assert (succeeded["payment_method_details"]["card"]["exp_month"], succeeded["payment_method_details"]["card"]["exp_year"]) == (7, 2031)
    assert (succeeded["status"], succeeded["captured"], succeeded["payment_intent"]) == ("succeeded", True, paid["id"])
    failed = next(event["data"]["object"] for event in events if event["type"] == "charge.failed")
    assert (failed["status"], failed["failure_code"], failed["outcome"]["type"]) == ("failed", "card_declined", "issuer_declined")
    captured = by_charge[("charge.captured", held["latest_charge"])]
    assert (captured["captured"], captured["amount_captured"], captured["amount_refunded"]) == (True, 1500, 500)
    assert by_charge[("charge.succeeded", held["latest_charge"])]["captured"] is False
    refunded = by_charge[("charge.refunded", paid["latest_charge"])]
    assert (refunded["amount_refunded"], refunded["refunded"]) == (1000, False)
    confirmed_later = next(event["data"]["object"] for event in events if event["type"] == "charge.succeeded" and event["data"]["object"]["payment_intent"] == later["id"])
    assert confirmed_later["payment_method_details"]["card"]["brand"] == "mastercard"
    # /v1/events shows the same objects as the deliveries.
    assert {event["data"]["object"]["id"] for event in listed} == {paid["latest_charge"], held["latest_charge"], confirmed_later["id"]}
