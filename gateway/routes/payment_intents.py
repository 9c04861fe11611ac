"""Routes for PaymentIntents: create, retrieve, update, confirm, list,
capture, cancel and increment_authorization (search is in
gateway/routes/search.py). Each change is one engine command handed to the
intent's shard."""

from __future__ import annotations

import functools
import hmac
import time
from collections.abc import Callable
from typing import Any

import msgspec
from quart import Response

from engine import intent as machine
from engine.results import Result
from engine.updates import OPEN_FOR_CHANGES
from engine.urls import return_url_allowed
from gateway import errors, expansions, objects, ownership, params
from gateway.calls import Calls
from gateway.lists import cluster_page, created_s
from gateway.openapi import api
from gateway.responses import intent_body, json_response, render, render_intent
from gateway.routes import customers
from gateway.routing import Routes
from shards.actor import Outcome
from store.rows import ApiKeyRow

ROUTES = Routes()


@ROUTES.post("/v1/payment_intents")
@api("Create a PaymentIntent, optionally confirming it", objects.PaymentIntentObject, body=params.CreatePaymentIntent)
async def create_payment_intent(calls: Calls, key: ApiKeyRow) -> Response:
    body = await calls.read_body()
    values = params.convert(body, params.CreatePaymentIntent)
    render_outcome = functools.partial(render_intent, amount=values.amount)
    refusal = machine.check_create_shape(
        values.amount, values.currency.lower(), values.metadata, values.description, values.return_url, key.livemode
    )
    if refusal is not None:
        raise errors.from_result(refusal.result, refusal.param, amount=values.amount)
    if customers.off_session_flag(values.off_session) and not values.confirm:
        raise errors.invalid_request("The parameter off_session can only be used when confirm is set to true.", param="off_session")
    paths = expansions.check(values.expand, "payment_intent")
    partition = calls.partition_for_new(key)
    async with expansions.replays_expanded(calls.node, key, paths), calls.idempotent(key, body, render_outcome) as claim:
        command = await _create_command(calls, key, values, partition)
        response = await expansions.run(calls, key, command, claim, render_outcome, paths)
        await customers.save_payment_method_of(calls.node, command.intent_id)
        return response


@ROUTES.get("/v1/payment_intents/<intent_id>")
@api("Retrieve a PaymentIntent", objects.PaymentIntentObject, query=params.RetrievePaymentIntent)
async def retrieve_payment_intent(calls: Calls, key: ApiKeyRow, intent_id: str) -> Response:
    intent = ownership.intent(calls.node, intent_id, key)
    paths = expansions.check(calls.query(params.RetrievePaymentIntent).expand, "payment_intent")
    # One that succeeded after 3-D Secure saves its payment method now.
    await customers.save_payment_method(calls.node, intent)
    body = msgspec.to_builtins(objects.payment_intent(intent))
    return json_response(await expansions.Expansion(calls.node, key).apply(body, paths))


@ROUTES.post("/v1/payment_intents/<intent_id>")
@api("Update a PaymentIntent: amount, currency and payment method before it is confirmed; description and metadata at any time", objects.PaymentIntentObject, body=params.UpdatePaymentIntent)
async def update_payment_intent(calls: Calls, key: ApiKeyRow, intent_id: str) -> Response:
    node = calls.node
    intent = ownership.intent(node, intent_id, key)
    body = await calls.read_body()
    values = params.convert(body, params.UpdatePaymentIntent)
    paths = expansions.check(values.expand, "payment_intent")
    async with expansions.replays_expanded(node, key, paths), calls.idempotent(key, body, render_intent) as claim:
        customer_id = None if values.customer is None else await customers.intent_customer(node, key, values.customer)
        # Inside the claim, as for a confirm: a test alias becomes a new
        # payment method once, not again on every replay.
        payment_method_id = None
        if values.payment_method is not None:
            payment_method_id = (await ownership.payment_method(node, values.payment_method, key)).id
        checked = payment_method_id or intent.payment_method_id
        # Past a confirm the engine refuses the change first (its status).
        # Whoever's it is: a method saved to a customer pays only for that
        # customer, and a detached one never again (Stripe's rules).
        if checked is not None and intent.status in OPEN_FOR_CHANGES:
            await customers.check_payment_method_for(node, checked, customer_id or intent.customer_id)
        command = machine.UpdateIntent(
            intent_id=intent_id,
            merchant_id=key.merchant_id,
            livemode=key.livemode,
            at_s=int(time.time()),
            amount=values.amount,
            currency=None if values.currency is None else values.currency.lower(),
            description=values.description,
            metadata=values.metadata,
            payment_method_id=payment_method_id,
            customer_id=customer_id,
            setup_future_usage=values.setup_future_usage,
        )
        return await expansions.run(calls, key, command, claim, render_intent, paths)


@ROUTES.post("/v1/payment_intents/<intent_id>/confirm")
@api("Confirm a PaymentIntent", objects.PaymentIntentObject, body=params.ConfirmPaymentIntent, publishable=True)
async def confirm_payment_intent(calls: Calls, key: ApiKeyRow, intent_id: str) -> Response:
    node = calls.node
    intent = ownership.intent(node, intent_id, key)
    body = await calls.read_body()
    values = params.convert(body, params.ConfirmPaymentIntent)
    if values.return_url is not None and not return_url_allowed(values.return_url, key.livemode):
        raise errors.from_result(Result.return_url_invalid, "return_url")
    if key.kind == "publishable" and not (
        values.client_secret is not None and hmac.compare_digest(values.client_secret.encode(), intent.client_secret.encode())
    ):
        # A browser holding only the publishable key must also hold the
        # intent's client secret; without it the intent is not its to see.
        raise errors.not_found("payment_intent", intent_id, "intent")
    paths = expansions.check(values.expand, "payment_intent")
    async with expansions.replays_expanded(node, key, paths), calls.idempotent(key, body, render_intent) as claim:
        payment_method_id = None
        method = None
        if values.payment_method is not None:
            method = await ownership.payment_method(node, values.payment_method, key)
            payment_method_id = method.id
        elif intent.payment_method_id is not None:
            # The charge shows its card from the attempt (objects.card_summary).
            method = await node.payment_method(intent.payment_method_id)
        off_session = customers.off_session_flag(values.off_session)
        checked = payment_method_id or intent.payment_method_id
        if checked is not None:
            await customers.check_confirmed_method(node, intent, checked)
        command = machine.ConfirmIntent(
            intent_id=intent_id,
            merchant_id=key.merchant_id,
            livemode=key.livemode,
            attempt_id=node.new_id("att", node.partition_of_intent(intent_id)),
            at_s=int(time.time()),
            payment_method_id=payment_method_id,
            return_url=values.return_url,
            card=objects.card_summary(method),
            off_session=off_session,
            setup_future_usage=values.setup_future_usage,
        )
        response = await expansions.run(calls, key, command, claim, render_intent, paths)
        await customers.save_payment_method_of(node, intent_id)
        return response


@ROUTES.get("/v1/payment_intents")
@api("List PaymentIntents, newest first", objects.ListObject[objects.PaymentIntentObject], query=params.ListParams)
async def list_payment_intents(calls: Calls, key: ApiKeyRow) -> Response:
    values = calls.query(params.ListParams)
    intents = calls.node.merchant_intents(key.merchant_id, key.livemode)
    return json_response(
        await cluster_page(
            calls.forwarder, intents, values, url="/v1/payment_intents", kind="payment_intent", key=lambda i: (i.created_s, i.id),
            render=objects.payment_intent, expansion=expansions.Expansion(calls.node, key),
        )
    )


@ROUTES.post("/v1/payment_intents/<intent_id>/capture")
@api("Capture an authorized PaymentIntent", objects.PaymentIntentObject, body=params.CaptureParams)
async def capture_payment_intent(calls: Calls, key: ApiKeyRow, intent_id: str) -> Response:
    return await _intent_command(calls, key, intent_id, params.CaptureParams, _capture)


@ROUTES.post("/v1/payment_intents/<intent_id>/cancel")
@api("Cancel a PaymentIntent", objects.PaymentIntentObject, body=params.CancelParams)
async def cancel_payment_intent(calls: Calls, key: ApiKeyRow, intent_id: str) -> Response:
    return await _intent_command(calls, key, intent_id, params.CancelParams, _cancel)


def _capture(values: params.CaptureParams, common: dict[str, Any]) -> machine.Command:
    return machine.CaptureIntent(**common, amount_to_capture=values.amount_to_capture)


def _cancel(values: params.CancelParams, common: dict[str, Any]) -> machine.Command:
    return machine.CancelIntent(**common, cancellation_reason=values.cancellation_reason)


async def _create_command(calls: Calls, key: ApiKeyRow, values: params.CreatePaymentIntent, partition: int) -> machine.CreateIntent:
    """The command that creates the intent `values` describe, with new ids
    in `partition`; raises a 400 when its payment method is not the
    caller's."""
    node = calls.node
    payment_method_id = None
    method = None
    if values.payment_method is not None:
        method = await ownership.payment_method(node, values.payment_method, key)
        payment_method_id = method.id
    customer_id = None if values.customer is None else await customers.intent_customer(node, key, values.customer)
    off_session = customers.off_session_flag(values.off_session)
    unattached = payment_method_id is not None and await customers.check_payment_method_for(node, payment_method_id, customer_id)
    intent_id = node.new_id("pi", partition)
    if unattached:
        customers.remember_unattached(intent_id, payment_method_id)
    return machine.CreateIntent(
        intent_id=intent_id,
        merchant_id=key.merchant_id,
        livemode=key.livemode,
        amount=values.amount,
        currency=values.currency.lower(),
        capture_method=machine.CaptureMethod(values.capture_method),
        client_secret=node.client_secret(intent_id),
        # Created at its id's second: a list cursor naming it is placed from the id alone (gateway/lists.py).
        at_s=created_s(intent_id, "pi"),
        attempt_id=node.new_id("att", partition),
        payment_method_id=payment_method_id,
        confirm=values.confirm,
        description=values.description,
        metadata=values.metadata,
        return_url=values.return_url,
        fee_basis_points=key.fee_basis_points,
        fee_fixed_minor=key.fee_fixed_minor,
        settlement_delay_s=node.config.settlement_delay_s,
        dispute_fee_minor=node.config.dispute_fee_minor,
        card=objects.card_summary(method),
        customer_id=customer_id,
        setup_future_usage=values.setup_future_usage,
        off_session=off_session,
    )


async def _intent_command(
    calls: Calls, key: ApiKeyRow, intent_id: str, schema: type, build: Callable[[Any, dict[str, Any]], machine.Command]
) -> Response:
    """Run a command on one of the caller's intents that opens an attempt."""
    node = calls.node
    ownership.intent(node, intent_id, key)
    body = await calls.read_body()
    values = params.convert(body, schema)
    common = {
        "intent_id": intent_id,
        "merchant_id": key.merchant_id,
        "livemode": key.livemode,
        "attempt_id": node.new_id("att", node.partition_of_intent(intent_id)),
        "at_s": int(time.time()),
    }
    command = build(values, common)
    paths = expansions.check(values.expand, "payment_intent")
    async with expansions.replays_expanded(node, key, paths), calls.idempotent(key, body, render_intent) as claim:
        return await expansions.run(calls, key, command, claim, render_intent, paths)


@ROUTES.post("/v1/payment_intents/<intent_id>/increment_authorization")
@api(
    "Raise a held authorization to a larger total before capture; a decline is card_declined and leaves the intent as it was",
    objects.PaymentIntentObject,
    body=params.IncrementAuthorizationParams,
)
async def increment_authorization(calls: Calls, key: ApiKeyRow, intent_id: str) -> Response:
    node = calls.node
    ownership.intent(node, intent_id, key)
    body = await calls.read_body()
    values = params.convert(body, params.IncrementAuthorizationParams)
    paths = expansions.check(values.expand, "payment_intent")
    command = machine.IncrementAuthorization(
        intent_id=intent_id,
        merchant_id=key.merchant_id,
        livemode=key.livemode,
        attempt_id=node.new_id("att", node.partition_of_intent(intent_id)),
        at_s=int(time.time()),
        amount=values.amount,
        description=values.description,
        metadata=values.metadata,
    )
    render_outcome = functools.partial(render_increment, amount=values.amount)
    async with expansions.replays_expanded(node, key, paths), calls.idempotent(key, body, render_outcome) as claim:
        return await expansions.run(calls, key, command, claim, render_outcome, paths)


def render_increment(outcome: Outcome, amount: object = None) -> tuple[int, bytes]:
    """The intent an increment's outcome shows, or its error: a declined
    increment is Stripe's card_declined, with the intent as it still is."""

    def body() -> Any:
        intent = outcome.intent
        attempt = None if intent is None or outcome.attempt_id is None else intent.attempt(outcome.attempt_id)
        if intent is not None and attempt is not None and attempt.status is machine.AttemptStatus.failed:
            error = errors.card_error(
                "card_declined", "The card network declined the incremental authorization; the PaymentIntent keeps the amount it held."
            )
            error.extra["payment_intent"] = objects.payment_intent(intent)
            raise error
        return intent_body(outcome, amount)

    return render(body)
