"""The simulator's pages on a node that runs the card-network simulator in
its own process (`payments up` without PAYMENTS_SIMULATOR_URL, and tests).

They stand in for what a cardholder and an issuer would do, so flows that
need them can run end to end in test mode:

- the 3-D Secure challenge page, at the `next_action.redirect_to_url.url` of
  an intent waiting in `requires_action`. No API key: the unguessable
  attempt id in the path is the secret, as it is for a real issuer's page.
  Passing or failing it makes the network send its final answer, and the
  intent moves on by itself;
- `POST /simulator/disputes` and `/simulator/disputes/{id}/close`: the
  cardholder opens a dispute on a captured payment, the issuer decides it.
  The issuer reads the merchant's side from the engine: a dispute the
  merchant accepted (closed) is lost already and cannot be decided again,
  and without an `outcome` the issuer follows the submitted evidence as
  Stripe's test mode does (`uncategorized_text` "winning_evidence" wins,
  "losing_evidence" or no submitted evidence loses);
- `GET /simulator/operations`: the network's own record of the caller's
  operations, for checking that nothing was charged twice.

The composition root mounts them only beside the in-process simulator; a
node talking to real networks (or to the simulator service) never has them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import msgspec
from quart import Response, redirect
from quart_trio import QuartTrio

from engine.intent import OPEN_DISPUTE, Dispute, DisputeStatus
from engine.urls import return_url_allowed
from gateway import errors, params
from gateway.app import ID_CHARS_MAX, Mount, json_response
from shards.node import Node
from shards.setup_intents import SetupIntents
from shards.setup_intents import return_to as setup_return_to
from simulators.card_network import CardNetwork
from simulators import challenge

def mount(network: CardNetwork) -> Mount:
    """The routes above, over the simulator `network` the node runs."""

    def register(app: QuartTrio, node: Node, authenticate: Any, read_body: Any) -> None:
        _register_challenge(app, node, network)
        _register_disputes(app, node, network, authenticate, read_body)

    return register


def _register_challenge(app: QuartTrio, node: Node, network: CardNetwork) -> None:
    @app.get("/simulator/3ds/<reference>")
    async def show_challenge(reference: str) -> Response:
        return challenge.show(network, reference)

    @app.post("/simulator/3ds/<reference>")
    async def answer_challenge(reference: str) -> Response:
        refused, passed = await challenge.answer(network, reference)
        if refused is not None:
            return refused
        if reference.startswith("setatt_"):
            # A SetupIntent's card check: it moves on now, and the cardholder goes back.
            setup = await SetupIntents(node).resolve_reference(reference)
            back = None if setup is None else setup_return_to(setup)
            return redirect(back, 303) if back is not None else challenge.finished(passed)
        intent_id = node.intent_of_reference(reference)
        intent = None if intent_id is None else node.intent(intent_id)
        # Checked again here: an intent journaled before return URLs were
        # checked may hold one that must not become a redirect.
        if intent is not None and intent.return_url and return_url_allowed(intent.return_url, intent.livemode):
            separator = "&" if "?" in intent.return_url else "?"
            return redirect(intent.return_url + separator + urlencode({"payment_intent": intent.id}), 303)
        return challenge.finished(passed)


def _register_disputes(app: QuartTrio, node: Node, network: CardNetwork, authenticate: Any, read_body: Any) -> None:
    def test_mode_only(key: Any) -> None:
        if key.livemode:
            raise errors.invalid_request("The simulator's pages work in test mode only.")

    @app.post("/simulator/disputes")
    async def simulate_dispute() -> Response:
        key = await authenticate()
        test_mode_only(key)
        values = params.convert(await read_body(), params.SimulateDispute)
        intent = node.intent(values.payment_intent) if len(values.payment_intent) <= ID_CHARS_MAX else None
        if intent is None or intent.merchant_id != key.merchant_id or intent.livemode:
            raise errors.not_found("payment_intent", values.payment_intent, "intent")
        authorization = intent.authorization()
        reference = None if authorization is None else network.open_dispute(authorization.id)
        if reference is None:
            raise errors.invalid_request(
                "This PaymentIntent has no captured, undisputed charge to dispute.", param="payment_intent", code="charge_not_disputable"
            )
        return json_response({"object": "simulated_dispute", "id": reference, "payment_intent": intent.id})

    @app.post("/simulator/disputes/<dispute_id>/close")
    async def simulate_dispute_decision(dispute_id: str) -> Response:
        key = await authenticate()
        test_mode_only(key)
        values = params.convert(await read_body(), params.CloseDispute)
        found = node.dispute(dispute_id) if len(dispute_id) <= ID_CHARS_MAX else None
        if found is None or found[0].merchant_id != key.merchant_id:
            raise errors.not_found("dispute", dispute_id, "dispute")
        dispute = found[1]
        if dispute.status not in OPEN_DISPUTE:
            # The merchant accepted it (or it was decided): the network's
            # record learns so, and nothing is decided twice.
            network.dispute_accepted(dispute_id)
            raise errors.invalid_request("This dispute is already closed.", code="dispute_already_closed")
        outcome = values.outcome or _issuer_decision(dispute)
        if not network.close_dispute(dispute_id, outcome == "won"):
            raise errors.invalid_request("This dispute is already closed.", code="dispute_already_closed")
        return json_response({"object": "simulated_dispute", "id": dispute_id, "outcome": outcome})

    @app.get("/simulator/operations")
    async def simulated_operations() -> Response:
        key = await authenticate()
        test_mode_only(key)
        mine = []
        for operation in network.operations():
            named = operation.parent_reference or operation.reference
            intent_id = node.intent_of_reference(named)
            intent = None if intent_id is None else node.intent(intent_id)
            if intent is not None and intent.merchant_id == key.merchant_id:
                mine.append({"payment_intent": intent.id, **msgspec.structs.asdict(operation)})
        return json_response({"object": "list", "data": mine})


# Stripe's test-mode words in a dispute's evidence that decide it.
WINNING_EVIDENCE = "winning_evidence"
LOSING_EVIDENCE = "losing_evidence"


def _issuer_decision(dispute: Dispute) -> str:
    """How the issuer decides a dispute by the merchant's answer: evidence
    submitted with Stripe's test word for winning wins; anything else (the
    word for losing, other evidence, nothing submitted) loses."""
    submitted = dispute.status is DisputeStatus.under_review
    text = dispute.evidence.get("uncategorized_text", "")
    return "won" if submitted and WINNING_EVIDENCE in text and LOSING_EVIDENCE not in text else "lost"
