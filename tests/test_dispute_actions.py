"""The merchant's side of a dispute (issue 15): POST /v1/disputes/{id}
(evidence staged or submitted, metadata) and POST /v1/disputes/{id}/close
(the merchant accepts the loss), decided in the engine
(engine/disputes.py), journaled through the actor, served to the stripe
SDK; and the simulator's issuer, which learns what the merchant did."""

from __future__ import annotations

import httpx
import pytest
import stripe

from engine import disputes, ids
from engine import intent as machine
from engine.intent import DisputeStatus, Result
from tests.conftest import NodeProcess, create_merchant_keys
from tests.helpers import sdk_error, wait_until, wait_until_async
from tests.test_cluster import PAY, cluster, served, two_nodes
from tests.test_webhooks import ATTEMPT, INTENT, OWNER, create

DISPUTE = "dp_1"
OPENED_AT_S = 5


def disputed_intent() -> machine.PaymentIntent:
    intent = None
    for command in (
        create(),
        machine.RecordApproval(intent_id=INTENT, attempt_id=ATTEMPT, at_s=2),
        machine.RecordDisputeOpened(intent_id=INTENT, dispute_id=DISPUTE, amount=2000, at_s=OPENED_AT_S),
    ):
        for event in machine.decide(intent, command).events:
            intent = machine.evolve(intent, event)
    assert intent is not None
    return intent


def apply(intent: machine.PaymentIntent, command: machine.Command) -> tuple[Result, machine.PaymentIntent]:
    decision = machine.decide(intent, command)
    for event in decision.events:
        intent = machine.evolve(intent, event)
    return decision.result, intent


def update(at_s: int = 6, **fields: object) -> machine.UpdateDispute:
    return machine.UpdateDispute(intent_id=INTENT, **OWNER, dispute_id=DISPUTE, at_s=at_s, **fields)  # type: ignore[arg-type]


def close(dispute_id: str = DISPUTE) -> machine.CloseDispute:
    return machine.CloseDispute(intent_id=INTENT, **OWNER, dispute_id=dispute_id, at_s=7)


# ------------------------------------------------------------ the engine


def test_staged_evidence_waits_and_submitted_evidence_is_under_review() -> None:
    intent = disputed_intent()
    assert intent.disputes[0].due_by_s == OPENED_AT_S + disputes.RESPONSE_WINDOW_S
    result, intent = apply(intent, update(evidence={"customer_name": "Ada", "product_description": "A book"}, submit=False))
    staged = intent.disputes[0]
    assert (result, staged.status, staged.submission_count, staged.evidence) == (
        Result.ok, DisputeStatus.needs_response, 0, {"customer_name": "Ada", "product_description": "A book"},
    )
    # Merged: a field sent empty is removed, the others stay.
    result, intent = apply(intent, update(evidence={"customer_name": "", "uncategorized_text": "winning_evidence"}, metadata={"case": "7"}))
    submitted = intent.disputes[0]
    assert (result, submitted.status, submitted.submission_count, submitted.past_due) == (Result.ok, DisputeStatus.under_review, 1, False)
    assert submitted.evidence == {"product_description": "A book", "uncategorized_text": "winning_evidence"}
    assert submitted.metadata == {"case": "7"}
    # Submitted once: no more evidence, but metadata may still change.
    assert apply(intent, update(evidence={"customer_name": "Ada"}, submit=False))[0] is Result.dispute_not_open
    result, intent = apply(intent, update(metadata={"case": ""}, submit=False))
    assert (result, intent.disputes[0].metadata, intent.disputes[0].status) == (Result.ok, {}, DisputeStatus.under_review)
    # An open dispute still holds the charge: no refund while it is reviewed.
    refund = machine.CreateRefund(intent_id=INTENT, **OWNER, refund_id="re_1", at_s=8)
    assert machine.decide(intent, refund).result is Result.intent_disputed
    # The issuer decides it from under review.
    result, intent = apply(intent, machine.RecordDisputeClosed(intent_id=INTENT, dispute_id=DISPUTE, won=True, at_s=9))
    assert (result, intent.disputes[0].status) == (Result.ok, DisputeStatus.won)


def test_a_late_submission_is_past_due() -> None:
    late = OPENED_AT_S + disputes.RESPONSE_WINDOW_S + 1
    result, intent = apply(disputed_intent(), update(at_s=late, evidence={"uncategorized_text": "sorry, late"}))
    assert (result, intent.disputes[0].past_due, intent.disputes[0].submission_count) == (Result.ok, True, 1)


def test_closing_loses_the_dispute_moves_no_money_and_is_final() -> None:
    decision = machine.decide(disputed_intent(), close())
    assert decision.result is Result.ok
    (event,) = decision.events
    assert isinstance(event, machine.DisputeClosed) and event.status is DisputeStatus.lost and event.transfers == ()
    _, intent = apply(disputed_intent(), close())
    assert intent.disputes[0].status is DisputeStatus.lost
    assert machine.decide(intent, close()).result is Result.dispute_not_open
    assert machine.decide(intent, update(evidence={"uncategorized_text": "x"})).result is Result.dispute_not_open
    assert machine.decide(intent, machine.RecordDisputeClosed(intent_id=INTENT, dispute_id=DISPUTE, won=True, at_s=9)).result is Result.attempt_not_pending
    # Metadata of a closed dispute may still change.
    assert machine.decide(intent, update(metadata={"filed": "yes"}, submit=False)).result is Result.ok


@pytest.mark.parametrize(
    ("command", "refusal"),
    [
        (update(evidence={"receipt": "file_1"}), Result.evidence_invalid),
        (update(evidence={"customer_name": "x" * 5001}), Result.evidence_invalid),
        (update(evidence={"uncategorized_text": "a\x00b"}), Result.evidence_invalid),
        (update(metadata={"k" * 41: "v"}), Result.metadata_invalid),
        (machine.UpdateDispute(intent_id=INTENT, **OWNER, dispute_id="dp_other", at_s=6), Result.dispute_missing),
        (close("dp_other"), Result.dispute_missing),
    ],
)
def test_refusals(command: machine.Command, refusal: Result) -> None:
    assert machine.decide(disputed_intent(), command).result is refusal


def test_all_evidence_together_is_bounded() -> None:
    intent = disputed_intent()
    fields = [field for field, chars_max in disputes.EVIDENCE_TEXT_FIELDS.items() if chars_max == 20_000]
    result, intent = apply(intent, update(evidence={field: "x" * 20_000 for field in fields[:7]}, submit=False))
    assert result is Result.ok
    assert machine.decide(intent, update(evidence={fields[7]: "x" * 20_000})).result is Result.evidence_invalid


def test_another_merchant_cannot_touch_the_dispute() -> None:
    stranger = machine.CloseDispute(intent_id=INTENT, merchant_id="acct_someone_else", livemode=False, dispute_id=DISPUTE, at_s=7)
    assert machine.decide(disputed_intent(), stranger).result is Result.intent_missing


# ------------------------------------------------------------ on a node


def _http(node: NodeProcess, merchant: dict) -> httpx.Client:
    return httpx.Client(base_url=node.url, auth=(merchant["secret_key"], ""), timeout=30)


def _dispute(http: httpx.Client, amount: int = 5000) -> dict:
    paid = http.post("/v1/payment_intents", data={"amount": str(amount), "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}).json()
    opened = http.post("/simulator/disputes", data={"payment_intent": paid["id"]})
    assert opened.status_code == 200, opened.text
    return wait_until(lambda: (answer := http.get(f"/v1/disputes/{opened.json()['id']}")).status_code == 200 and answer.json(), 10, "the dispute")


def test_evidence_through_the_api(node: NodeProcess, fresh_merchant: dict) -> None:
    with _http(node, fresh_merchant) as http:
        dispute = _dispute(http)
        details = dispute["evidence_details"]
        assert (dispute["status"], details["has_evidence"], details["submission_count"], details["past_due"]) == ("needs_response", False, 0, False)
        assert details["due_by"] == dispute["created"] + disputes.RESPONSE_WINDOW_S
        staged = http.post(f"/v1/disputes/{dispute['id']}", data={"evidence[customer_name]": "Ada Lovelace", "submit": "false", "metadata[case]": "42"})
        assert staged.status_code == 200, staged.text
        staged = staged.json()
        assert (staged["status"], staged["evidence"]["customer_name"], staged["evidence"]["receipt"], staged["metadata"]) == (
            "needs_response", "Ada Lovelace", None, {"case": "42"},
        )
        assert (staged["evidence_details"]["has_evidence"], staged["evidence_details"]["submission_count"]) == (True, 0)
        # Metadata alone submits nothing.
        assert http.post(f"/v1/disputes/{dispute['id']}", data={"metadata[by]": "me"}).json()["status"] == "needs_response"
        submitted = http.post(f"/v1/disputes/{dispute['id']}", data={"evidence[uncategorized_text]": "winning_evidence"}, headers={"Idempotency-Key": "submit-1"})
        assert submitted.status_code == 200, submitted.text
        body = submitted.json()
        assert (body["status"], body["evidence_details"]["submission_count"], body["metadata"]) == ("under_review", 1, {"case": "42", "by": "me"})
        assert body["evidence"]["customer_name"] == "Ada Lovelace"
        # A retry is answered from the record, not submitted again.
        again = http.post(f"/v1/disputes/{dispute['id']}", data={"evidence[uncategorized_text]": "winning_evidence"}, headers={"Idempotency-Key": "submit-1"})
        assert again.json() == body
        refused = http.post(f"/v1/disputes/{dispute['id']}", data={"evidence[customer_name]": "Someone else"})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "dispute_not_open"
        assert http.post(f"/v1/disputes/{dispute['id']}/close").json()["error"]["code"] == "dispute_not_open"
        assert http.get(f"/v1/disputes/{dispute['id']}").json() == body
        # The issuer reads the submitted evidence: Stripe's winning word wins.
        decided = http.post(f"/simulator/disputes/{dispute['id']}/close")
        assert decided.status_code == 200 and decided.json()["outcome"] == "won"
        won = wait_until(lambda: (answer := http.get(f"/v1/disputes/{dispute['id']}").json())["status"] == "won" and answer, 10, "the win")
        assert won["evidence_details"]["submission_count"] == 1
        # Won: the amount comes back in a transaction of its own, the fee does not.
        (withdrawal,) = won["balance_transactions"]
        assert (withdrawal["amount"], withdrawal["fee"], withdrawal["net"]) == (-5000, 1500, -6500)
        listed = http.get("/v1/balance_transactions", params={"limit": 100}).json()["data"]
        (reversal,) = [item for item in listed if item["reporting_category"] == "dispute_reversal"]
        assert (reversal["amount"], reversal["fee"], reversal["net"], reversal["source"], reversal["type"]) == (5000, 0, 5000, dispute["id"], "adjustment")
        assert withdrawal in listed
        types = wait_until(
            lambda: {e["type"] for e in http.get("/v1/events", params={"limit": 100}).json()["data"] if e["data"]["object"]["id"] == dispute["id"]}
            >= {"charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed", "charge.dispute.funds_reinstated"}, 10, "the dispute's events",
        )
        assert types


def test_closing_through_the_api_and_the_issuer_learns_it(node: NodeProcess, fresh_merchant: dict) -> None:
    with _http(node, fresh_merchant) as http:
        dispute = _dispute(http, 3000)
        closed = http.post(f"/v1/disputes/{dispute['id']}/close")
        assert closed.status_code == 200, closed.text
        assert (closed.json()["status"], closed.json()["is_charge_refundable"]) == ("lost", False)
        # The money left when it opened; closing moved none.
        assert closed.json()["balance_transactions"] == dispute["balance_transactions"]
        assert http.post(f"/v1/disputes/{dispute['id']}/close").json()["error"]["code"] == "dispute_not_open"
        issuer = http.post(f"/simulator/disputes/{dispute['id']}/close", data={"outcome": "won"})
        assert issuer.status_code == 400 and issuer.json()["error"]["code"] == "dispute_already_closed"
        assert http.get(f"/v1/disputes/{dispute['id']}").json()["status"] == "lost"
        event = wait_until(lambda: http.get("/v1/events", params={"type": "charge.dispute.closed"}).json()["data"], 10, "charge.dispute.closed")[0]
        assert (event["data"]["object"]["id"], event["data"]["object"]["status"]) == (dispute["id"], "lost")


def test_an_unanswered_dispute_the_issuer_decides_is_lost(node: NodeProcess, fresh_merchant: dict) -> None:
    with _http(node, fresh_merchant) as http:
        dispute = _dispute(http, 2000)
        assert http.post(f"/simulator/disputes/{dispute['id']}/close").json()["outcome"] == "lost"
        wait_until(lambda: http.get(f"/v1/disputes/{dispute['id']}").json()["status"] == "lost", 10, "the loss")


@pytest.mark.parametrize(
    ("data", "param", "code"),
    [
        ({"evidence[receipt]": "file_1"}, "evidence[receipt]", "parameter_unknown"),
        ({"evidence[customer_name]": "x" * 5001}, "evidence[customer_name]", "parameter_invalid"),
        ({"submit": "maybe"}, "submit", None),
        ({"surprise": "1"}, "surprise", "parameter_unknown"),
        ({"expand[]": "nothing"}, None, None),
    ],
)
def test_bad_updates_are_clear_400s(node: NodeProcess, merchant_keys: dict, data: dict, param: str | None, code: str | None) -> None:
    with _http(node, merchant_keys) as http:
        dispute = _dispute(http, 1000)
        answer = http.post(f"/v1/disputes/{dispute['id']}", data=data)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code


def test_unknown_and_other_merchants_disputes_are_404(node: NodeProcess, fresh_merchant: dict) -> None:
    with _http(node, fresh_merchant) as http:
        dispute = _dispute(http, 1000)
    other = create_merchant_keys(node, "Nosy shop")
    with _http(node, other) as nosy:
        for path in (f"/v1/disputes/{dispute['id']}", f"/v1/disputes/{dispute['id']}/close", "/v1/disputes/dp_nothing", "/v1/disputes/dp_nothing/close"):
            answer = nosy.post(path, data={"metadata[x]": "y"} if not path.endswith("close") else {})
            assert answer.status_code == 404, (path, answer.text)
            assert answer.json()["error"]["code"] == "resource_missing"


def test_the_stripe_sdk_modifies_and_closes_disputes(node: NodeProcess, fresh_merchant: dict) -> None:
    client = stripe.StripeClient(fresh_merchant["secret_key"], base_addresses={"api": node.url})
    with _http(node, fresh_merchant) as http:
        first, second = _dispute(http, 4000), _dispute(http, 4500)
    modified = client.v1.disputes.update(
        first["id"], params={"evidence": {"product_description": "A blue teapot", "shipping_tracking_number": "1Z999"}, "metadata": {"order": "A-1"}}
    )
    assert isinstance(modified, stripe.Dispute)
    assert (modified.status, modified.evidence.product_description, modified.evidence_details.submission_count) == ("under_review", "A blue teapot", 1)
    assert modified.metadata.to_dict() == {"order": "A-1"}
    closed = client.v1.disputes.close(second["id"])
    assert (closed.status, closed.id) == ("lost", second["id"])
    with pytest.raises(stripe.InvalidRequestError, match=sdk_error("No such dispute: 'dp_missing'")):
        client.v1.disputes.close("dp_missing")
    listed = {item.id: item.status for item in client.v1.disputes.list(params={"limit": 100}).data}
    assert listed == {first["id"]: "under_review", second["id"]: "lost"}


async def test_a_dispute_another_node_holds_is_updated_and_closed_through_any_node(database_url: str) -> None:
    async with cluster(database_url) as (start, headers, _, network):
        a, b = await two_nodes(start)
        async with httpx.AsyncClient(headers=headers, timeout=30) as http:
            opened = []
            for _ in range(2):
                intent = (await http.post(f"{a.url}/v1/payment_intents", data=PAY)).json()
                owner, other = (a, b) if a.node.partition_of_intent(intent["id"]) in served(a) else (b, a)
                dispute_id = network.open_dispute(ids.attempt_id_of_charge(intent["latest_charge"]))
                assert dispute_id is not None
                await wait_until_async(lambda: owner.node.dispute(dispute_id) is not None, 15, "the owner recording the dispute")
                opened.append((dispute_id, other))
            (first, first_other), (second, second_other) = opened
            updated = await http.post(f"{first_other.url}/v1/disputes/{first}", data={"evidence[uncategorized_text]": "receipt attached", "metadata[k]": "v"})
            assert updated.status_code == 200, updated.text
            assert (updated.json()["status"], updated.json()["metadata"]) == ("under_review", {"k": "v"})
            closed = await http.post(f"{second_other.url}/v1/disputes/{second}/close")
            assert closed.status_code == 200 and closed.json()["status"] == "lost", closed.text
            for node in (a, b):
                assert (await http.post(f"{node.url}/v1/disputes/dp_unknown/close")).status_code == 404
                assert (await http.post(f"{node.url}/v1/disputes/dp_unknown", data={"metadata[k]": "v"})).status_code == 404


def test_the_legacy_stripe_resources_modify_and_close_disputes(node: NodeProcess, fresh_merchant: dict) -> None:
    """stripe.Dispute.modify and .close, as older integrations call them."""
    with _http(node, fresh_merchant) as http:
        first, second = _dispute(http, 2500), _dispute(http, 2600)
    stripe.api_key, stripe.api_base = fresh_merchant["secret_key"], node.url
    try:
        staged = stripe.Dispute.modify(first["id"], evidence={"customer_email_address": "ada@shop.test"}, submit=False)
        assert (staged.status, staged.evidence.customer_email_address, staged.evidence_details.has_evidence) == ("needs_response", "ada@shop.test", True)
        submitted = stripe.Dispute.modify(first["id"], submit=True)
        assert (submitted.status, submitted.evidence_details.submission_count) == ("under_review", 1)
        closed = stripe.Dispute.retrieve(second["id"]).close()
        assert closed.status == "lost"
    finally:
        stripe.api_key, stripe.api_base = None, "https://api.stripe.com"
