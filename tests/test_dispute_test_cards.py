"""Stripe's dispute test card (issue 15): a charge on 4000000000000259 (the
test payment method `pm_card_createDispute`) succeeds, and shortly after the
simulator's issuer disputes it as fraudulent for its full amount, through
the same `CardNetwork.open_dispute` the simulator's page uses. The engine
records it like any dispute; the merchant answers it as usual.

Simulator level: the dispute falls due after a seeded delay, once per
charge, and not at all for a charge disputed or refunded meanwhile. On a
node, through the stripe SDK: the dispute appears in disputes.list, the
charge shows `disputed`, and it can be answered with evidence and closed;
with the simulator as its own service, a node restart opens no second one.
"""

from __future__ import annotations

import httpx
import pytest
import stripe
import trio

from engine import cards, ids
from engine import intent as machine
from engine.disputes import DISPUTE_REASONS
from simulators.card_network import AuthorizationRequest, CaptureRequest, CardNetwork, NetworkNotice, RefundRequest
from tests.conftest import NodeProcess, create_merchant_keys
from tests.test_chaos import Simulator
from tests.helpers import wait_until
from tests.test_webhooks import ATTEMPT, INTENT, create

# How long the simulator's issuer may take to dispute (its delay is 50 to
# 200 ms; the rest is the node recording the notice).
DISPUTE_WAIT_S = 30


def _today() -> tuple[int, int]:
    return (2026, 5)


def _authorization(reference: str, card_number: str = cards.DISPUTED_LATER, amount: int = 4200, capture: bool = True) -> AuthorizationRequest:
    return AuthorizationRequest(
        reference=reference, card_number=card_number, exp_month=12, exp_year=2034, amount_minor=amount, currency="usd", capture=capture
    )


async def _next_notice(network: CardNetwork) -> NetworkNotice:
    with trio.fail_after(10):
        return await network.next_notice()


async def _no_notice_within(network: CardNetwork, seconds: float) -> None:
    with trio.move_on_after(seconds) as waited:
        notice = await network.next_notice()
        raise AssertionError(f"unexpected notice {notice}")
    assert waited.cancelled_caught


# ------------------------------------------------------------ the card itself


def test_the_test_payment_method_stands_for_the_dispute_card() -> None:
    number = cards.TEST_PAYMENT_METHODS["pm_card_createDispute"]
    assert number == cards.DISPUTED_LATER == "4000000000000259"
    assert cards.luhn_valid(number) and cards.brand_of(number) == "visa"
    # Its charges succeed: the dispute comes afterwards.
    assert cards.outcome_for(number, 12, 2034, 2026, 5) == cards.APPROVED


def _opened_with(reason: str | None) -> machine.PaymentIntent:
    intent = None
    for command in (
        create(),
        machine.RecordApproval(intent_id=INTENT, attempt_id=ATTEMPT, at_s=2),
        machine.RecordDisputeOpened(intent_id=INTENT, dispute_id="dp_1", amount=2000, at_s=5, reason=reason),
    ):
        decision = machine.decide(intent, command)
        assert decision.result is machine.Result.ok, decision
        for event in decision.events:
            intent = machine.evolve(intent, event)
    assert intent is not None
    return intent


def test_the_engine_keeps_a_reason_stripe_knows_and_no_other() -> None:
    assert "fraudulent" in DISPUTE_REASONS and cards.DISPUTED_LATER_REASON in DISPUTE_REASONS
    assert _opened_with("fraudulent").dispute("dp_1").reason == "fraudulent"
    # The network is trusted with money, not with text: an unknown category,
    # or none, is journaled as none (Stripe's "general" when shown).
    assert _opened_with("x" * 10_000).dispute("dp_1").reason is None
    assert _opened_with(None).dispute("dp_1").reason is None


# ------------------------------------------------------------ the simulator


async def test_a_charge_on_the_card_is_disputed_once_for_its_full_amount(autojump_clock) -> None:
    network = CardNetwork(today=_today, dispute_delay_ms=(50, 200))
    answer = await network.authorize(_authorization("att_1"))
    assert answer.approved
    # Scheduled, not yet opened: the charge succeeded first.
    assert network.notices_outstanding() == 1
    started = trio.current_time()
    notice = await _next_notice(network)
    assert 0.05 <= trio.current_time() - started <= 0.2 + 0.01
    assert (notice.kind, notice.parent_reference, notice.amount_minor, notice.reason) == ("dispute_opened", "att_1", 4200, "fraudulent")
    assert notice.reference.startswith("dp_")
    assert network.notices_outstanding() == 0
    # Never twice: the page cannot open another, and the issuer opens none.
    assert network.open_dispute("att_1") is None
    await _no_notice_within(network, 60)
    # A repeat of the charge's call is answered from the record and schedules nothing.
    assert (await network.authorize(_authorization("att_1"))).approved
    assert network.notices_outstanding() == 0


async def test_other_cards_are_not_disputed(autojump_clock) -> None:
    network = CardNetwork(today=_today)
    assert (await network.authorize(_authorization("att_1", card_number="4242424242424242"))).approved
    assert network.notices_outstanding() == 0
    await _no_notice_within(network, 60)


async def test_a_held_charge_is_disputed_once_captured_for_what_was_captured(autojump_clock) -> None:
    network = CardNetwork(today=_today)
    assert (await network.authorize(_authorization("att_1", capture=False))).approved
    # An authorization alone moves no money: nothing to dispute.
    assert network.notices_outstanding() == 0
    await _no_notice_within(network, 5)
    captured = await network.capture(CaptureRequest(reference="cap_1", authorization_reference="att_1", amount_minor=3000, currency="usd"))
    assert captured.approved
    notice = await _next_notice(network)
    assert (notice.kind, notice.parent_reference, notice.amount_minor, notice.reason) == ("dispute_opened", "att_1", 3000, "fraudulent")
    await _no_notice_within(network, 60)


async def test_a_charge_disputed_or_refunded_meanwhile_gets_no_second_dispute(autojump_clock) -> None:
    network = CardNetwork(today=_today)
    assert (await network.authorize(_authorization("att_1"))).approved
    assert (await network.authorize(_authorization("att_2"))).approved
    # The cardholder disputed the first by the page already; the second was refunded in full.
    by_page = network.open_dispute("att_1")
    assert by_page is not None
    refund = await network.refund(RefundRequest(reference="re_1", charge_reference="att_2", amount_minor=4200, currency="usd"))
    assert refund.approved
    first = await _next_notice(network)
    assert (first.reference, first.kind, first.reason) == (by_page, "dispute_opened", None)
    await _no_notice_within(network, 60)
    assert network.notices_outstanding() == 0


async def test_the_delays_are_seeded(autojump_clock) -> None:
    async def due_times(seed: int) -> list[float]:
        network = CardNetwork(seed=seed, today=_today, latency_ms=(0, 0))
        started = trio.current_time()
        for index in range(3):
            await network.authorize(_authorization(f"att_{index}"))
        times = []
        for _ in range(3):
            notice: NetworkNotice = await _next_notice(network)
            times.append((notice.parent_reference, round(trio.current_time() - started, 6)))
        return times

    first = await due_times(7)
    assert first == await due_times(7)
    assert sorted(reference for reference, _ in first) == ["att_0", "att_1", "att_2"]


# ------------------------------------------------------------ on a node, through the SDK


@pytest.fixture
def client(node: NodeProcess, fresh_merchant: dict) -> stripe.StripeClient:
    return stripe.StripeClient(fresh_merchant["secret_key"], base_addresses={"api": node.url}, max_network_retries=0)


@pytest.fixture
def http(node: NodeProcess, fresh_merchant: dict):
    with httpx.Client(base_url=node.url, auth=(fresh_merchant["secret_key"], ""), timeout=30) as client:
        yield client


def _disputes_of(client: stripe.StripeClient, intent_id: str) -> list[stripe.Dispute]:
    return [dispute for dispute in client.v1.disputes.list(params={"limit": 100}).data if dispute.payment_intent == intent_id]


def _pay(client: stripe.StripeClient, payment_method: str, amount: int) -> stripe.PaymentIntent:
    intent = client.v1.payment_intents.create(params={"amount": amount, "currency": "usd", "payment_method": payment_method, "confirm": True})
    assert intent.status == "succeeded"
    return intent


def test_pm_card_create_dispute_is_disputed_answered_and_won(client: stripe.StripeClient, http: httpx.Client) -> None:
    ordinary = _pay(client, "pm_card_visa", 1000)
    intent = _pay(client, "pm_card_createDispute", 4200)
    # The charge succeeded as any other.
    charge = client.v1.charges.retrieve(intent.latest_charge)
    assert (charge.status, charge.amount_captured, charge.payment_method_details.card.last4) == ("succeeded", 4200, "0259")
    found = wait_until(lambda: _disputes_of(client, intent.id), DISPUTE_WAIT_S, "the issuer's dispute in disputes.list")
    assert len(found) == 1
    dispute = found[0]
    assert dispute.id.startswith("dp_")
    assert (dispute.amount, dispute.currency, dispute.charge, dispute.reason, dispute.status) == (4200, "usd", charge.id, "fraudulent", "needs_response")
    # Journaled with its ledger movement: the amount left the balance.
    assert [(entry.amount, entry.type) for entry in dispute.balance_transactions][0] == (-4200, "adjustment")
    assert client.v1.charges.retrieve(charge.id).disputed is True
    events = wait_until(
        lambda: [e for e in http.get("/v1/events", params={"type": "charge.dispute.created"}).json()["data"] if e["data"]["object"]["id"] == dispute.id],
        10,
        "charge.dispute.created",
    )
    assert events[0]["data"]["object"]["reason"] == "fraudulent"
    # One dispute only, and the page opens none more.
    again = http.post("/simulator/disputes", data={"payment_intent": intent.id})
    assert again.status_code == 400 and again.json()["error"]["code"] == "charge_not_disputable"
    # The ordinary payment, made before, was never disputed.
    assert _disputes_of(client, ordinary.id) == [] and client.v1.charges.retrieve(ordinary.latest_charge).disputed is False
    # The merchant answers with evidence; the issuer reads it and decides.
    answered = client.v1.disputes.update(dispute.id, params={"evidence": {"uncategorized_text": "winning_evidence", "customer_name": "Ada"}})
    assert (answered.status, answered.evidence.customer_name, answered.evidence_details.submission_count) == ("under_review", "Ada", 1)
    decided = http.post(f"/simulator/disputes/{dispute.id}/close")
    assert decided.status_code == 200 and decided.json()["outcome"] == "won", decided.text
    won = wait_until(lambda: (d := client.v1.disputes.retrieve(dispute.id)).status == "won" and d, 10, "the dispute won")
    assert won.reason == "fraudulent"
    assert len(_disputes_of(client, intent.id)) == 1


def test_pm_card_create_dispute_can_be_accepted_by_the_merchant(client: stripe.StripeClient) -> None:
    intent = _pay(client, "pm_card_createDispute", 1500)
    dispute = wait_until(lambda: _disputes_of(client, intent.id), DISPUTE_WAIT_S, "the issuer's dispute")[0]
    closed = client.v1.disputes.close(dispute.id)
    assert (closed.status, closed.amount, closed.reason, closed.is_charge_refundable) == ("lost", 1500, "fraudulent", False)
    assert client.v1.charges.retrieve(intent.latest_charge).disputed is True


def test_the_dispute_is_not_opened_again_across_a_node_restart(new_node, database_url: str, tmp_path) -> None:
    """With the simulator as its own service, its record outlives the node:
    after a restart the dispute is still the one, and the network opens no
    second for the charge."""
    simulator = Simulator(seed=5)
    try:
        simulator.set_faults("")
        environ = {"PAYMENTS_SIMULATOR_URL": simulator.url}
        node = new_node(database_url, tmp_path, environ=environ)
        merchant = create_merchant_keys(node, "Disputed shop")
        with httpx.Client(base_url=node.url, auth=(merchant["secret_key"], ""), timeout=30) as http:
            paid = http.post("/v1/payment_intents", data={"amount": "2500", "currency": "usd", "payment_method": "pm_card_createDispute", "confirm": "true"})
            assert paid.status_code == 200 and paid.json()["status"] == "succeeded", paid.text
            intent = paid.json()
            first = wait_until(lambda: http.get("/v1/disputes").json()["data"], DISPUTE_WAIT_S, "the issuer's dispute")
        assert [(d["payment_intent"], d["amount"], d["reason"], d["status"]) for d in first] == [(intent["id"], 2500, "fraudulent", "needs_response")]
        assert node.stop() == 0
        node = new_node(database_url, tmp_path, environ=environ)
        charge_reference = ids.attempt_id_of_charge(intent["latest_charge"])
        again = httpx.post(simulator.url + "/v1/disputes", json={"charge_reference": charge_reference}, timeout=10)
        assert again.status_code == 404, again.text
        with httpx.Client(base_url=node.url, auth=(merchant["secret_key"], ""), timeout=30) as http:
            assert http.get(f"/v1/charges/{intent['latest_charge']}").json()["disputed"] is True
            assert [d["id"] for d in http.get("/v1/disputes").json()["data"]] == [first[0]["id"]]
    finally:
        simulator.stop()
