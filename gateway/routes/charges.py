"""Routes for charges: list, retrieve, update and capture. A charge is one
of an intent's card attempts (engine/charges.py), found from its id alone
(gateway/expansions.py); capturing it captures its intent's authorization;
an update is journaled on its intent (engine/amendments.py). Search is in
gateway/routes/search.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
from quart import Response

from engine import charges, ids
from engine import intent as machine
from engine.commands import Shipping
from engine.intent import Attempt, PaymentIntent
from gateway import errors, expansions, objects, params
from gateway.calls import Calls
from gateway.lists import cluster_page
from gateway.openapi import api
from gateway.responses import intent_body, json_response, render
from gateway.routing import Routes
from shards.actor import Outcome
from store.rows import ApiKeyRow, PaymentMethodRow

ROUTES = Routes()


def _charge_of(calls: Calls, key: ApiKeyRow, charge_id: str) -> tuple[PaymentIntent, Attempt]:
    found = expansions.find_charge(calls.node, charge_id, key)
    if found is None:
        raise errors.invalid_request(f"No such charge: '{charge_id[:64]}'", param="id", code="resource_missing", status=404)
    return found


@ROUTES.get("/v1/charges")
@api("List charges, newest first", objects.ListObject[objects.ChargeObject], query=params.ListParams)
async def list_charges(calls: Calls, key: ApiKeyRow) -> Response:
    values = calls.query(params.ListParams)
    intents = calls.node.merchant_intents(key.merchant_id, key.livemode)
    if values.payment_intent is not None:
        intents = [intent for intent in intents if intent.id == values.payment_intent]
    pairs = [(intent, attempt) for intent in intents for attempt in charges.charges(intent)]
    return json_response(
        await cluster_page(
            calls.forwarder,
            pairs,
            values,
            url="/v1/charges",
            kind="charge",
            key=lambda pair: (objects.charge_created_s(pair[1]), ids.charge_id(pair[1].id)),
            render=lambda pair: objects.charge(*pair),
            expansion=expansions.Expansion(calls.node, key),
            complete=lambda page: _with_cards(calls, key, page),
        )
    )


async def _with_cards(calls: Calls, key: ApiKeyRow, page: dict[str, Any]) -> None:
    """The card details of each charge on a page, read from the store."""
    for item in page["data"]:
        row = await calls.node.payment_method(item["payment_method"])
        if row is not None and row.merchant_id == key.merchant_id:
            item["payment_method_details"] = msgspec.to_builtins(objects.charge_card_details(row))


@ROUTES.get("/v1/charges/<charge_id>")
@api("Retrieve a charge", objects.ChargeObject, query=params.RetrieveParams)
async def retrieve_charge(calls: Calls, key: ApiKeyRow, charge_id: str) -> Response:
    intent, attempt = _charge_of(calls, key, charge_id)
    paths = expansions.check(calls.query(params.RetrieveParams).expand, "charge")
    body = await expansions.render_charge(calls.node, intent, attempt)
    return json_response(await expansions.Expansion(calls.node, key).apply(body, paths))


def _capturable(intent: PaymentIntent, attempt: Attempt) -> None:
    """Raises Stripe's 400 for a charge there is nothing to capture of."""
    shown = ids.charge_id(attempt.id)
    if attempt.kind is machine.AttemptKind.charge or charges.amount_captured(intent, attempt) > 0:
        raise errors.invalid_request(f"Charge {shown} has already been captured.", code="charge_already_captured")
    if intent.status is machine.Status.canceled:
        raise errors.invalid_request(
            f"Charge {shown} has expired for capture: its authorization was released.", code="charge_expired_for_capture"
        )
    if attempt.status is not machine.AttemptStatus.succeeded:
        raise errors.invalid_request(f"Charge {shown} was not authorized, so there is nothing to capture.", code="charge_not_capturable")


@ROUTES.post("/v1/charges/<charge_id>/capture")
@api("Capture a charge: its PaymentIntent's authorization", objects.ChargeObject, body=params.CaptureCharge)
async def capture_charge(calls: Calls, key: ApiKeyRow, charge_id: str) -> Response:
    node = calls.node
    intent, attempt = _charge_of(calls, key, charge_id)
    body = await calls.read_body()
    values = params.convert(body, params.CaptureCharge)
    paths = expansions.check(values.expand, "charge")
    _capturable(intent, attempt)
    command = machine.CaptureIntent(
        intent_id=intent.id,
        merchant_id=key.merchant_id,
        livemode=key.livemode,
        attempt_id=node.new_id("att", node.partition_of_intent(intent.id)),
        at_s=int(time.time()),
        amount_to_capture=values.amount,
    )
    render_outcome = render_charge_outcome(attempt.id, await node.payment_method(attempt.payment_method_id))
    async with expansions.replays_expanded(node, key, paths), calls.idempotent(key, body, render_outcome) as claim:
        return await expansions.run(calls, key, command, claim, render_outcome, paths)


def render_charge_outcome(attempt_id: str, card: PaymentMethodRow | None) -> Callable[[Outcome], tuple[int, bytes]]:
    """How to render the outcome of a command on the charge of `attempt_id`:
    the charge, or the error the outcome stands for (as the intent's
    routes answer it, `amount` named as a charge's capture names it)."""

    def body_of(outcome: Outcome) -> Any:
        try:
            intent_body(outcome)
        except errors.ApiError as error:
            if error.param == "amount_to_capture":
                error.param = "amount"
            raise
        assert outcome.intent is not None
        attempt = outcome.intent.attempt(attempt_id)
        assert attempt is not None
        return objects.charge(outcome.intent, attempt, card)

    return lambda outcome: render(lambda: body_of(outcome))


@ROUTES.post("/v1/charges/<charge_id>")
@api("Update a charge: its description, metadata, receipt email, fraud report and shipping", objects.ChargeObject, body=params.UpdateCharge)
async def update_charge(calls: Calls, key: ApiKeyRow, charge_id: str) -> Response:
    node = calls.node
    intent, attempt = _charge_of(calls, key, charge_id)
    body = await calls.read_body()
    values = params.convert(body, params.UpdateCharge)
    paths = expansions.check(values.expand, "charge")
    command = machine.UpdateCharge(
        intent_id=intent.id,
        merchant_id=key.merchant_id,
        livemode=key.livemode,
        attempt_id=attempt.id,
        at_s=int(time.time()),
        description=values.description,
        metadata=values.metadata,
        receipt_email=values.receipt_email,
        fraud_user_report=None if values.fraud_details is None else values.fraud_details.user_report,
        shipping=None if values.shipping is None else msgspec.convert(msgspec.to_builtins(values.shipping), Shipping),
    )
    render_outcome = render_charge_outcome(attempt.id, await node.payment_method(attempt.payment_method_id))
    async with expansions.replays_expanded(node, key, paths), calls.idempotent(key, body, render_outcome) as claim:
        return await expansions.run(calls, key, command, claim, render_outcome, paths)
