"""The payment lifecycle after creation, driven with the official `stripe` SDK:
capture, cancel, refunds, lists and the balance."""

from __future__ import annotations

import time

import httpx
import pytest
import stripe

from engine import ledger
from tests.conftest import NodeProcess
from tests.helpers import sdk_error, wait_until

REFUND_FAILS_LATER = "4000000000005126"


def sdk(node: NodeProcess, secret_key: str) -> stripe.StripeClient:
    return stripe.StripeClient(secret_key, base_addresses={"api": node.url}, max_network_retries=0)


@pytest.fixture
def client(node: NodeProcess) -> stripe.StripeClient:
    return sdk(node, node.secret_key)


def authorize(client: stripe.StripeClient, amount: int, currency: str = "usd", payment_method: str = "pm_card_visa"):
    intent = client.v1.payment_intents.create(
        params={"amount": amount, "currency": currency, "payment_method": payment_method, "confirm": True, "capture_method": "manual"}
    )
    assert intent.status == "requires_capture"
    return intent


def test_partial_capture_releases_the_rest(client: stripe.StripeClient) -> None:
    intent = authorize(client, 5000)
    captured = client.v1.payment_intents.capture(intent.id, params={"amount_to_capture": 3200})
    assert captured.status == "succeeded"
    assert (captured.amount_received, captured.amount_capturable) == (3200, 0)
    assert captured.latest_charge is not None
    with pytest.raises(stripe.InvalidRequestError, match=sdk_error("This PaymentIntent's status is succeeded, which does not allow this action.")) as raised:
        client.v1.payment_intents.capture(intent.id)
    assert raised.value.code == "payment_intent_unexpected_state"


def test_capture_more_than_capturable_is_refused(client: stripe.StripeClient) -> None:
    intent = authorize(client, 1000)
    with pytest.raises(stripe.InvalidRequestError, match=sdk_error("The amount to capture must be at least 1 and no more than the amount capturable.")) as raised:
        client.v1.payment_intents.capture(intent.id, params={"amount_to_capture": 1001})
    assert (raised.value.http_status, raised.value.code, raised.value.param) == (400, "amount_too_large", "amount_to_capture")
    assert client.v1.payment_intents.retrieve(intent.id).status == "requires_capture"


def test_cancel_an_authorization(client: stripe.StripeClient) -> None:
    intent = authorize(client, 2500)
    canceled = client.v1.payment_intents.cancel(intent.id, params={"cancellation_reason": "requested_by_customer"})
    assert canceled.status == "canceled"
    assert canceled.cancellation_reason == "requested_by_customer"
    assert canceled.canceled_at is not None and abs(canceled.canceled_at - time.time()) < 60
    assert canceled.amount_capturable == 0
    with pytest.raises(stripe.InvalidRequestError, match=sdk_error("This PaymentIntent's status is canceled, which does not allow this action.")) as raised:
        client.v1.payment_intents.capture(intent.id)
    assert raised.value.code == "payment_intent_unexpected_state"


def test_cancel_is_refused_after_success_and_after_cancel(client: stripe.StripeClient) -> None:
    done = client.v1.payment_intents.create(params={"amount": 900, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
    with pytest.raises(stripe.InvalidRequestError, match=sdk_error("This PaymentIntent's status is succeeded, which does not allow this action.")) as raised:
        client.v1.payment_intents.cancel(done.id)
    assert (raised.value.http_status, raised.value.code) == (400, "payment_intent_unexpected_state")
    fresh = client.v1.payment_intents.create(params={"amount": 900, "currency": "usd"})
    assert client.v1.payment_intents.cancel(fresh.id, params={"cancellation_reason": "abandoned"}).status == "canceled"
    with pytest.raises(stripe.InvalidRequestError, match=sdk_error("This PaymentIntent's status is canceled, which does not allow this action.")):
        client.v1.payment_intents.cancel(fresh.id)
    with pytest.raises(stripe.InvalidRequestError, match=sdk_error("Invalid value for parameter cancellation_reason.")) as raised:
        client.v1.payment_intents.cancel(authorize(client, 700).id, params={"cancellation_reason": "bored"})
    assert raised.value.param == "cancellation_reason"


def test_two_partial_refunds_then_an_over_refund_is_refused(client: stripe.StripeClient) -> None:
    intent = client.v1.payment_intents.create(params={"amount": 10_000, "currency": "eur", "payment_method": "pm_card_visa", "confirm": True})
    first = client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 3000, "reason": "requested_by_customer"})
    second = client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 5000, "metadata": {"ticket": "77"}})
    assert (first.status, second.status) == ("succeeded", "succeeded")
    assert (first.amount, second.amount, second.metadata["ticket"]) == (3000, 5000, "77")
    assert first.payment_intent == intent.id and first.charge == intent.latest_charge
    with pytest.raises(stripe.InvalidRequestError, match=sdk_error("The refund amount must be at least 1 and no more than the amount not yet refunded.")) as raised:
        client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 2001})
    assert (raised.value.code, raised.value.param) == ("amount_too_large", "amount")
    rest = client.v1.refunds.create(params={"payment_intent": intent.id})
    assert rest.amount == 2000
    with pytest.raises(stripe.InvalidRequestError, match=sdk_error("This charge has already been refunded in full.")) as raised:
        client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 1})
    assert raised.value.code == "charge_already_refunded"
    assert client.v1.refunds.retrieve(first.id).to_dict() == first.to_dict()
    listed = client.v1.refunds.list(params={"payment_intent": intent.id})
    assert [refund.id for refund in listed.data] == [rest.id, second.id, first.id]


def test_refund_of_an_uncaptured_payment_is_refused(client: stripe.StripeClient) -> None:
    intent = authorize(client, 1200)
    with pytest.raises(stripe.InvalidRequestError, match=sdk_error("This PaymentIntent does not have a successful charge to refund.")) as raised:
        client.v1.refunds.create(params={"payment_intent": intent.id})
    assert raised.value.code == "charge_not_refundable"


def test_a_refund_that_fails_later_returns_the_money(node: NodeProcess, fresh_merchant: dict) -> None:
    client = sdk(node, fresh_merchant["secret_key"])
    method = client.v1.payment_methods.create(
        params={"type": "card", "card": {"number": REFUND_FAILS_LATER, "exp_month": 3, "exp_year": 2039}}
    )
    intent = client.v1.payment_intents.create(params={"amount": 4000, "currency": "usd", "payment_method": method.id, "confirm": True})
    refund = client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 1500})
    assert refund.status == "succeeded"
    failed = wait_until(
        lambda: (found := client.v1.refunds.retrieve(refund.id)).status == "failed" and found, 10, "the late refund failure"
    )
    assert failed.failure_reason == "refund_failed"
    # The full amount is refundable again.
    again = client.v1.refunds.create(params={"payment_intent": intent.id})
    assert again.amount == 4000


def test_jpy_has_no_minor_unit(client: stripe.StripeClient) -> None:
    intent = client.v1.payment_intents.create(params={"amount": 1500, "currency": "JPY", "payment_method": "pm_card_visa", "confirm": True})
    assert (intent.currency, intent.amount_received) == ("jpy", 1500)
    with pytest.raises(stripe.InvalidRequestError, match=sdk_error("Amount must be at least the minimum charge amount for this currency.")) as raised:
        client.v1.payment_intents.create(params={"amount": 49, "currency": "jpy"})
    assert raised.value.code == "amount_too_small"


def test_list_pages_with_starting_after_and_ending_before(node: NodeProcess, fresh_merchant: dict) -> None:
    client = sdk(node, fresh_merchant["secret_key"])
    created = [client.v1.payment_intents.create(params={"amount": 100 + index, "currency": "usd"}).id for index in range(7)]
    newest_first = list(reversed(created))
    first = client.v1.payment_intents.list(params={"limit": 3})
    assert [intent.id for intent in first.data] == newest_first[:3] and first.has_more
    second = client.v1.payment_intents.list(params={"limit": 3, "starting_after": first.data[-1].id})
    assert [intent.id for intent in second.data] == newest_first[3:6] and second.has_more
    third = client.v1.payment_intents.list(params={"limit": 3, "starting_after": second.data[-1].id})
    assert [intent.id for intent in third.data] == newest_first[6:] and not third.has_more
    back = client.v1.payment_intents.list(params={"limit": 2, "ending_before": second.data[0].id})
    assert [intent.id for intent in back.data] == newest_first[1:3] and back.has_more
    walked = [intent.id for intent in client.v1.payment_intents.list(params={"limit": 2}).auto_paging_iter()]
    assert walked == newest_first
    assert client.v1.payment_intents.list(params={"created": {"gt": int(time.time()) + 60}}).data == []
    with pytest.raises(stripe.InvalidRequestError, match=sdk_error("Invalid integer for parameter limit.")) as raised:
        client.v1.payment_intents.list(params={"limit": 101})
    assert raised.value.param == "limit"


def test_decline_then_retry_with_a_good_card(client: stripe.StripeClient) -> None:
    intent = client.v1.payment_intents.create(params={"amount": 3300, "currency": "usd"})
    with pytest.raises(stripe.CardError, match=sdk_error("Your card was declined.")):
        client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_chargeDeclined"})
    retried = client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_visa"})
    assert retried.status == "succeeded" and retried.amount_received == 3300


def test_balance_after_a_mix_equals_the_hand_computed_figure(node: NodeProcess, fresh_merchant: dict) -> None:
    client = sdk(node, fresh_merchant["secret_key"])
    # charged 10,000 then refunded 2,500; authorized 4,000 and captured 3,000;
    # authorized 2,000 then canceled; declined 1,000; charged 777 JPY.
    charged = client.v1.payment_intents.create(params={"amount": 10_000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
    client.v1.refunds.create(params={"payment_intent": charged.id, "amount": 2500})
    held = authorize(client, 4000)
    client.v1.payment_intents.capture(held.id, params={"amount_to_capture": 3000})
    client.v1.payment_intents.cancel(authorize(client, 2000).id)
    with pytest.raises(stripe.CardError, match=sdk_error("Your card was declined.")):
        client.v1.payment_intents.create(params={"amount": 1000, "currency": "usd", "payment_method": "pm_card_chargeDeclined", "confirm": True})
    client.v1.payment_intents.create(params={"amount": 777, "currency": "jpy", "payment_method": "pm_card_visa", "confirm": True})

    usd = 10_000 - ledger.fee_minor(10_000) - 2500 + 3000 - ledger.fee_minor(3000)
    jpy = 777 - ledger.fee_minor(777)
    assert usd == 10_000 - 320 - 2500 + 3000 - 117
    balance = client.v1.balance.retrieve()
    # Funds settle two days after the charge, so everything is still pending.
    assert {entry.currency: entry.amount for entry in balance.pending} == {"usd": usd, "jpy": jpy}
    assert {entry.currency: entry.amount for entry in balance.available} == {"usd": 0, "jpy": 0}
    transactions = list(client.v1.balance_transactions.list(params={"limit": 100}).auto_paging_iter())
    # Fees are inside the charges' transactions (Stripe's fee and net).
    assert sum(t.net for t in transactions if t.currency == "usd") == usd
    assert sorted(t.type for t in transactions if t.currency == "usd") == ["charge", "charge", "refund"]
    assert sorted(t.fee for t in transactions if t.currency == "usd") == [0, ledger.fee_minor(3000), ledger.fee_minor(10_000)]


def wait_for_status(client: stripe.StripeClient, intent_id: str, status: str):
    return wait_until(
        lambda: (intent := client.v1.payment_intents.retrieve(intent_id)).status == status and intent,
        10,
        lambda: f"{intent_id} to be {status}; it is {client.v1.payment_intents.retrieve(intent_id).status}",
        interval_s=0.02,
    )


@pytest.mark.parametrize("payment_method", ["pm_card_threeDSecure2Required", "4000002500003155"])
def test_three_d_secure_flow_to_succeeded(client: stripe.StripeClient, payment_method: str) -> None:
    if payment_method.isdigit():
        payment_method = client.v1.payment_methods.create(
            params={"type": "card", "card": {"number": payment_method, "exp_month": 6, "exp_year": 2036}}
        ).id
    intent = client.v1.payment_intents.create(
        params={"amount": 6400, "currency": "usd", "payment_method": payment_method, "confirm": True, "return_url": "https://shop.test/done"}
    )
    assert intent.status == "requires_action"
    assert intent.next_action is not None and intent.next_action.type == "redirect_to_url"
    url = intent.next_action.redirect_to_url.url
    assert intent.next_action.redirect_to_url.return_url == "https://shop.test/done"
    page = httpx.get(url)
    assert page.status_code == 200 and "Complete authentication" in page.text
    answered = httpx.post(url, data={"result": "pass"})
    assert answered.status_code == 303
    assert answered.headers["location"] == f"https://shop.test/done?payment_intent={intent.id}"
    done = wait_for_status(client, intent.id, "succeeded")
    assert done.amount_received == 6400 and done.next_action is None
    assert httpx.post(url, data={"result": "pass"}).status_code == 404  # answered once


def test_three_d_secure_failed_challenge_needs_a_new_payment_method(client: stripe.StripeClient) -> None:
    intent = client.v1.payment_intents.create(
        params={"amount": 800, "currency": "usd", "payment_method": "pm_card_threeDSecure2Required", "confirm": True, "capture_method": "manual"}
    )
    assert intent.status == "requires_action"
    assert httpx.post(intent.next_action.redirect_to_url.url, data={"result": "fail"}).status_code == 200
    failed = wait_for_status(client, intent.id, "requires_payment_method")
    assert failed.last_payment_error.code == "payment_intent_authentication_failure"
    retried = client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_visa"})
    assert retried.status == "requires_capture"


def test_cancel_while_waiting_for_three_d_secure(client: stripe.StripeClient) -> None:
    intent = client.v1.payment_intents.create(
        params={"amount": 900, "currency": "usd", "payment_method": "pm_card_threeDSecure2Required", "confirm": True}
    )
    canceled = client.v1.payment_intents.cancel(intent.id, params={"cancellation_reason": "abandoned"})
    assert canceled.status == "canceled" and canceled.next_action is None
    # The challenge is gone: a late answer authorizes nothing.
    url = intent.next_action.redirect_to_url.url
    wait_until(lambda: httpx.post(url, data={"result": "pass"}).status_code == 404, 5, "the challenge page to be gone", interval_s=0.02)
    assert client.v1.payment_intents.retrieve(intent.id).status == "canceled"


def test_dispute_lost_and_won_move_the_funds_and_the_fee(node: NodeProcess, fresh_merchant: dict) -> None:
    client = sdk(node, fresh_merchant["secret_key"])
    admin = httpx.Client(base_url=node.url, auth=(fresh_merchant["secret_key"], ""))
    disputed = []
    for amount in (5000, 7000):
        intent = client.v1.payment_intents.create(params={"amount": amount, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
        opened = admin.post("/simulator/disputes", data={"payment_intent": intent.id})
        assert opened.status_code == 200, opened.text
        disputed.append(opened.json()["id"])
    wait_until(lambda: len(client.v1.disputes.list().data) >= 2, 10, "both disputes to be listed", interval_s=0.02)
    for dispute_id in disputed:
        dispute = client.v1.disputes.retrieve(dispute_id)
        assert dispute.status == "needs_response"
    assert admin.post(f"/simulator/disputes/{disputed[0]}/close", data={"outcome": "lost"}).status_code == 200
    assert admin.post(f"/simulator/disputes/{disputed[1]}/close", data={"outcome": "won"}).status_code == 200
    assert admin.post(f"/simulator/disputes/{disputed[1]}/close", data={"outcome": "won"}).status_code == 400
    wait_until(lambda: {client.v1.disputes.retrieve(d).status for d in disputed} == {"lost", "won"}, 10, "both disputes to close", interval_s=0.02)
    assert client.v1.disputes.retrieve(disputed[0]).status == "lost"
    # Lost: 5000 gone plus the fee. Won: 7000 back, the fee is not.
    expected = 5000 - ledger.fee_minor(5000) - 5000 - 1500 + 7000 - ledger.fee_minor(7000) - 1500
    balance = client.v1.balance.retrieve()
    assert {entry.currency: entry.amount for entry in balance.pending} == {"usd": expected}


def test_fees_follow_the_merchants_own_terms(node: NodeProcess) -> None:
    from tests.conftest import create_merchant_keys

    keys = create_merchant_keys(node, "Low fee shop", "--fee-basis-points", "100", "--fee-fixed-minor", "0")
    client = sdk(node, keys["secret_key"])
    client.v1.payment_intents.create(params={"amount": 10_050, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
    balance = client.v1.balance.retrieve()
    # 1% of 10,050 is 100.5, rounded half up to 101.
    assert {entry.currency: entry.amount for entry in balance.pending} == {"usd": 10_050 - 101}


def test_expiry_and_settlement_follow_the_nodes_settings(new_node) -> None:
    node = new_node(None, None, "--authorization-expiry-s", "1", "--settlement-delay-s", "0", "--dispute-fee-minor", "700")
    client = sdk(node, node.secret_key)
    charged = client.v1.payment_intents.create(params={"amount": 2000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
    held = authorize(client, 3000)
    balance = client.v1.balance.retrieve()
    assert {entry.currency: entry.amount for entry in balance.available} == {"usd": 2000 - ledger.fee_minor(2000)}
    expired = wait_for_status(client, held.id, "canceled")
    assert expired.cancellation_reason == "automatic"
    assert client.v1.payment_intents.retrieve(charged.id).status == "succeeded"
    opened = httpx.post(node.url + "/simulator/disputes", data={"payment_intent": charged.id}, auth=(node.secret_key, ""))
    assert opened.status_code == 200
    wait_until(lambda: client.v1.disputes.list().data, 10, "the dispute to be listed", interval_s=0.02)
    balance = client.v1.balance.retrieve()
    # The disputed 2,000 and this node's dispute fee of 700 left at once.
    assert {entry.currency: entry.amount for entry in balance.available} == {"usd": 2000 - ledger.fee_minor(2000) - 2000 - 700}
