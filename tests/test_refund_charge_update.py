"""Changes a merchant makes after the fact (engine/amendments.py): a refund's
metadata, a refund's cancel (Stripe's 400 for a card refund), and a charge's
description, metadata, receipt email and fraud report. As engine tables,
then through httpx and the official SDK on a real node."""

from __future__ import annotations

import httpx
import pytest
import stripe

from engine import charges
from engine.commands import Shipping, ShippingAddress
from engine.intent import ChargeUpdated, CreateRefund, RecordApproval, RefundMetadataUpdated, UpdateCharge, UpdateRefund
from engine.results import Result
from shards.actor import ShardState
from tests.conftest import NodeProcess
from tests.test_actor import create_command, journal_kinds, new_payment_method, running_node, seed_merchant
from tests.test_intent_machine import CREATED_S, INTENT_ID, MERCHANT_ID, OPEN_ATTEMPT_ID, authorized_manually, charged

# ------------------------------------------------------------------ engine


def update_charge(attempt_id=OPEN_ATTEMPT_ID, **changes):
    return UpdateCharge(intent_id=INTENT_ID, merchant_id=MERCHANT_ID, livemode=False, attempt_id=attempt_id, at_s=CREATED_S + 9, **changes)


def update_refund(refund_id="re_1", **changes):
    return UpdateRefund(intent_id=INTENT_ID, merchant_id=MERCHANT_ID, livemode=False, refund_id=refund_id, at_s=CREATED_S + 9, **changes)


def test_a_charge_shows_its_intents_words_until_it_is_updated_then_its_own():
    journey = charged(metadata={"order": "7"}, description="two hats")
    attempt = journey.intent.authorization()
    assert charges.details(journey.intent, attempt).metadata == {"order": "7"}
    decision = journey.do(update_charge(metadata={"shipped": "yes"}, receipt_email="jo@shop.test", fraud_user_report="safe"))
    (event,) = decision.events
    assert isinstance(event, ChargeUpdated) and decision.effects == ()
    shown = charges.details(journey.intent, attempt)
    assert (shown.description, shown.metadata, shown.receipt_email, shown.fraud_user_report) == (
        "two hats",
        {"order": "7", "shipped": "yes"},
        "jo@shop.test",
        "safe",
    )
    # The intent's own words do not change; a later update merges into the charge's.
    assert (journey.intent.metadata, journey.intent.description) == ({"order": "7"}, "two hats")
    journey.do(update_charge(metadata={"order": ""}, description="", receipt_email=""))
    shown = charges.details(journey.intent, attempt)
    assert (shown.description, shown.metadata, shown.receipt_email, shown.fraud_user_report) == (None, {"shipped": "yes"}, None, "safe")
    assert len(journey.intent.charge_details) == 1


def test_a_held_or_failed_charge_may_be_updated_but_not_one_that_is_not_there():
    journey = authorized_manually()
    journey.do(update_charge(description="held"))
    assert charges.details(journey.intent, journey.intent.authorization()).description == "held"
    journey.refuse(update_charge(attempt_id="att_nothing"), Result.charge_missing, "charge")


@pytest.mark.parametrize(
    ("changes", "result", "param"),
    [
        ({"metadata": {"": "x"}}, Result.metadata_invalid, "metadata"),
        ({"metadata": {f"k{n}": "v" for n in range(51)}}, Result.metadata_invalid, "metadata"),
        ({"description": "x" * 1001}, Result.metadata_invalid, "description"),
        ({"receipt_email": "not an email"}, Result.email_invalid, "receipt_email"),
        ({"receipt_email": "a@" + "b" * 800 + ".com"}, Result.email_invalid, "receipt_email"),
        ({"fraud_user_report": "maybe"}, Result.fraud_report_invalid, "fraud_details[user_report]"),
    ],
)
def test_a_charge_update_out_of_shape_is_refused(changes, result, param):
    charged().refuse(update_charge(**changes), result, param)


def test_a_charges_shipping_is_replaced_whole_and_kept_across_other_updates():
    journey = charged()
    attempt = journey.intent.authorization()
    first = Shipping(name="Jo", address=ShippingAddress(line1="1 Main St", city="Springfield", country="US"), carrier="UPS")
    journey.do(update_charge(shipping=first))
    journey.do(update_charge(description="gift"))
    assert charges.details(journey.intent, attempt).shipping == first
    second = Shipping(name="Sam", address=ShippingAddress(postal_code="12345"), tracking_number="1Z999")
    journey.do(update_charge(shipping=second))
    assert charges.details(journey.intent, attempt).shipping == second
    journey.refuse(update_charge(shipping=Shipping(name="")), Result.shipping_invalid, "shipping")
    journey.refuse(update_charge(shipping=Shipping(name="Jo", carrier="x" * 5001)), Result.shipping_invalid, "shipping")


def test_merged_charge_metadata_past_fifty_keys_is_refused():
    journey = charged(metadata={f"k{n}": "v" for n in range(50)})
    journey.refuse(update_charge(metadata={"one_more": "v"}), Result.metadata_invalid, "metadata")


def test_a_refunds_metadata_merges_in_any_status():
    journey = charged()
    journey.do(CreateRefund(intent_id=INTENT_ID, merchant_id=MERCHANT_ID, livemode=False, refund_id="re_1", at_s=CREATED_S + 4, metadata={"a": "1"}))
    decision = journey.do(update_refund(metadata={"b": "2"}))
    assert isinstance(decision.events[0], RefundMetadataUpdated) and decision.effects == ()
    assert journey.intent.refund("re_1").metadata == {"a": "1", "b": "2"}
    journey.do(RecordApproval(intent_id=INTENT_ID, attempt_id="re_1", at_s=CREATED_S + 5))
    journey.do(update_refund(metadata={"a": ""}))
    refund = journey.intent.refund("re_1")
    assert (refund.metadata, str(refund.status)) == ({"b": "2"}, "succeeded")
    journey.refuse(update_refund(refund_id="re_nothing"), Result.refund_missing, "refund")
    journey.refuse(update_refund(metadata={"x" * 41: "v"}), Result.metadata_invalid, "metadata")


# --------------------------------------------------------------------- API


PAY = {"amount": "5000", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true", "metadata[order]": "7"}


def client_of(node: NodeProcess, keys: dict) -> stripe.StripeClient:
    return stripe.StripeClient(keys["secret_key"], base_addresses={"api": node.url}, max_network_retries=0)


@pytest.fixture
def http(node: NodeProcess, fresh_merchant: dict):
    with httpx.Client(base_url=node.url, auth=(fresh_merchant["secret_key"], ""), timeout=30) as client:
        yield client


def test_the_sdk_modifies_a_refund_and_hears_its_cancel_refused(node: NodeProcess, fresh_merchant: dict) -> None:
    client = client_of(node, fresh_merchant)
    paid = client.v1.payment_intents.create(params={"amount": 5000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
    refund = client.v1.refunds.create(params={"payment_intent": paid.id, "amount": 1000, "metadata": {"ticket": "T-1"}})
    updated = client.v1.refunds.update(refund.id, params={"metadata": {"agent": "sam"}})
    assert (updated.id, updated.amount, updated.status) == (refund.id, 1000, refund.status)
    assert updated.metadata.to_dict() == {"ticket": "T-1", "agent": "sam"}
    assert client.v1.refunds.retrieve(refund.id).metadata.to_dict() == {"ticket": "T-1", "agent": "sam"}
    cleared = client.v1.refunds.update(refund.id, params={"metadata": {"ticket": ""}})
    assert cleared.metadata.to_dict() == {"agent": "sam"}
    # Through the older module-level API too.
    stripe.api_key, stripe.api_base = fresh_merchant["secret_key"], node.url
    try:
        modified = stripe.Refund.modify(refund.id, metadata={"via": "modify"})
        assert modified.metadata.to_dict() == {"agent": "sam", "via": "modify"}
        with pytest.raises(stripe.InvalidRequestError, match=r"Only a refund with status requires_action can be canceled") as refused:
            stripe.Refund.cancel(refund.id)
        assert refused.value.http_status == 400 and refused.value.param == "refund"
    finally:
        stripe.api_key, stripe.api_base = None, "https://api.stripe.com"
    with pytest.raises(stripe.InvalidRequestError, match=rf"refund {refund.id} has status succeeded"):
        client.v1.refunds.cancel(refund.id)
    assert client.v1.refunds.retrieve(refund.id).status == "succeeded"


def test_refund_update_and_cancel_answer_only_the_owner(http: httpx.Client, node: NodeProcess, merchant_keys: dict) -> None:
    paid = http.post("/v1/payment_intents", data=PAY).json()
    refund = http.post("/v1/refunds", data={"payment_intent": paid["id"]}).json()
    other = httpx.Client(base_url=node.url, auth=(merchant_keys["secret_key"], ""), timeout=30)
    for path in (f"/v1/refunds/{refund['id']}", f"/v1/refunds/{refund['id']}/cancel", "/v1/refunds/re_nothing", "/v1/refunds/re_nothing/cancel"):
        answer = other.post(path, data={"metadata[x]": "y"} if not path.endswith("cancel") else {})
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "resource_missing", (path, answer.text)
    bad = http.post(f"/v1/refunds/{refund['id']}", data={"amount": "10"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "amount"
    too_long = http.post(f"/v1/refunds/{refund['id']}", data={"metadata[" + "k" * 41 + "]": "v"})
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "metadata"
    keyed = {"Idempotency-Key": "refund-update-1"}
    first = http.post(f"/v1/refunds/{refund['id']}", data={"metadata[a]": "1", "expand[]": "charge"}, headers=keyed)
    again = http.post(f"/v1/refunds/{refund['id']}", data={"metadata[a]": "1", "expand[]": "charge"}, headers=keyed)
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert first.json()["charge"]["id"] == paid["latest_charge"] and again.headers.get("Idempotent-Replayed") == "true"


def test_the_sdk_modifies_a_charge_which_then_shows_its_own_words(node: NodeProcess, fresh_merchant: dict) -> None:
    client = client_of(node, fresh_merchant)
    paid = client.v1.payment_intents.create(
        params={"amount": 5000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True, "metadata": {"order": "7"}, "description": "hats"}
    )
    charge = client.v1.charges.retrieve(paid.latest_charge)
    assert (charge.description, charge.metadata.to_dict(), charge.receipt_email, charge.fraud_details.to_dict()) == ("hats", {"order": "7"}, None, {})
    updated = client.v1.charges.update(
        charge.id,
        params={"description": "hats, gift wrapped", "metadata": {"wrap": "yes"}, "receipt_email": "jo@shop.test", "fraud_details": {"user_report": "safe"}},
    )
    assert (updated.id, updated.amount, updated.status) == (charge.id, 5000, "succeeded")
    assert (updated.description, updated.metadata.to_dict(), updated.receipt_email, updated.fraud_details.to_dict()) == (
        "hats, gift wrapped",
        {"order": "7", "wrap": "yes"},
        "jo@shop.test",
        {"user_report": "safe"},
    )
    again = client.v1.charges.retrieve(charge.id, params={"expand": ["payment_intent"]})
    assert again.metadata.to_dict() == {"order": "7", "wrap": "yes"}
    # The intent keeps its own.
    assert (again.payment_intent.metadata.to_dict(), again.payment_intent.description) == ({"order": "7"}, "hats")
    listed = client.v1.charges.list(params={"payment_intent": paid.id})
    assert listed.data[0].description == "hats, gift wrapped"
    shipped = client.v1.charges.update(
        charge.id, params={"shipping": {"name": "Jo", "address": {"line1": "1 Main St", "country": "US"}, "tracking_number": "1Z999"}}
    )
    assert shipped.shipping.to_dict() == {
        "name": "Jo",
        "address": {"city": None, "country": "US", "line1": "1 Main St", "line2": None, "postal_code": None, "state": None},
        "carrier": None,
        "phone": None,
        "tracking_number": "1Z999",
    }
    assert client.v1.charges.retrieve(charge.id).shipping.name == "Jo"
    found = client.v1.charges.search(params={"query": f'metadata["wrap"]:"yes" payment_intent:"{paid.id}"'})
    assert [item.id for item in found.data] == [charge.id]
    stripe.api_key, stripe.api_base = fresh_merchant["secret_key"], node.url
    try:
        modified = stripe.Charge.modify(charge.id, metadata={"wrap": ""}, description="")
        assert (modified.metadata.to_dict(), modified.description) == ({"order": "7"}, None)
    finally:
        stripe.api_key, stripe.api_base = None, "https://api.stripe.com"


def test_a_charge_update_is_refused_when_out_of_shape_or_not_the_callers(http: httpx.Client, node: NodeProcess, merchant_keys: dict) -> None:
    paid = http.post("/v1/payment_intents", data=PAY).json()
    url = f"/v1/charges/{paid['latest_charge']}"
    for data, param, code in [
        ({"receipt_email": "nobody"}, "receipt_email", "email_invalid"),
        ({"fraud_details[user_report]": "maybe"}, "fraud_details[user_report]", "parameter_invalid"),
        ({"description": "x" * 1001}, "description", "parameter_invalid"),
        ({"amount": "10"}, "amount", "parameter_unknown"),
        ({"shipping[name]": "Jo"}, "shipping[address]", "parameter_missing"),
        ({"shipping[address][line1]": "1 Main St"}, "shipping[name]", "parameter_missing"),
        ({"shipping[name]": "", "shipping[address][line1]": "x"}, "shipping", "parameter_invalid"),
        ({"shipping[name]": "Jo", "shipping[address][planet]": "Mars"}, "shipping[address][planet]", "parameter_unknown"),
        ({"customer": "cus_1"}, "customer", "parameter_unknown"),
    ]:
        answer = http.post(url, data=data)
        assert answer.status_code == 400, (data, answer.text)
        assert (answer.json()["error"]["param"], answer.json()["error"].get("code")) == (param, code), (data, answer.text)
    other = httpx.post(node.url + url, data={"description": "mine"}, auth=(merchant_keys["secret_key"], ""), timeout=30)
    assert other.status_code == 404 and other.json()["error"]["code"] == "resource_missing"
    missing = http.post("/v1/charges/ch_nothing", data={"description": "x"})
    assert missing.status_code == 404
    assert http.get(url).json()["description"] is None


def test_a_failed_charge_can_be_relabelled_and_keeps_its_failure(http: httpx.Client) -> None:
    declined = http.post("/v1/payment_intents", data={**PAY, "payment_method": "pm_card_chargeDeclined"})
    charge_id = declined.json()["error"]["charge"]
    answer = http.post(f"/v1/charges/{charge_id}", data={"metadata[reviewed]": "yes"})
    assert answer.status_code == 200, answer.text
    charge = answer.json()
    assert (charge["status"], charge["failure_code"], charge["metadata"]) == ("failed", "card_declined", {"order": "7", "reviewed": "yes"})


# ------------------------------------------------------------------ actors


async def test_updates_are_journaled_and_replay_to_what_was_answered(store) -> None:
    """Through a shard actor (with its debug log of every transition): a
    charge's and a refund's update are journal rows of their own, and a
    replay of the journal shows what the answers showed."""
    await seed_merchant(store)
    async with running_node(store) as node:
        method = await new_payment_method(node)
        paid = await node.submit(create_command(node, payment_method_id=method, confirm=True, metadata={"order": "7"}))
        intent_id, attempt_id = paid.intent.id, paid.intent.authorization().id
        common = {"intent_id": intent_id, "merchant_id": "acct_test", "livemode": False, "at_s": CREATED_S}
        refund_id = node.new_id("re", node.partition_of_intent(intent_id))
        await node.submit(CreateRefund(**common, refund_id=refund_id, amount=100))
        updated = await node.submit(UpdateCharge(**common, attempt_id=attempt_id, metadata={"wrap": "yes"}, receipt_email="jo@shop.test"))
        assert updated.result is Result.ok
        relabelled = await node.submit(UpdateRefund(**common, refund_id=refund_id, metadata={"agent": "sam"}))
        assert relabelled.intent.refund(refund_id).metadata == {"agent": "sam"}
        missing = await node.submit(UpdateRefund(**common, refund_id="re_nothing"))
        assert missing.result is Result.refund_missing
        node.stop_accepting()
    kinds = await journal_kinds(store, node, intent_id)
    assert kinds[-2:] == ["ChargeUpdated", "RefundMetadataUpdated"]
    state = ShardState(node.partition_of_intent(intent_id))
    state.replay(await store.journal.load(state.partition))
    replayed = state.intents[intent_id]
    shown = charges.details(replayed, replayed.authorization())
    assert (shown.metadata, shown.receipt_email, replayed.metadata) == ({"order": "7", "wrap": "yes"}, "jo@shop.test", {"order": "7"})
    assert replayed.refund(refund_id).metadata == {"agent": "sam"}
