"""Routes for refunds: create (a command on the refunded intent), retrieve
and list. A refund lives inside its intent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quart import Response

from engine import intent as machine
from engine.results import Result
from gateway import errors, objects, ownership, params
from gateway.calls import Calls
from gateway.errors import ApiError
from gateway.lists import created_s
from gateway.openapi import api
from gateway.responses import render
from gateway.routing import Routes
from shards.actor import Outcome
from store.rows import ApiKeyRow

ROUTES = Routes()


@ROUTES.post("/v1/refunds")
@api("Refund a PaymentIntent", objects.RefundObject, body=params.CreateRefund)
async def create_refund(calls: Calls, key: ApiKeyRow) -> Response:
    node = calls.node
    body = await calls.read_body()
    values = params.convert(body, params.CreateRefund)
    intent_id = values.payment_intent
    try:
        ownership.intent(node, intent_id, key)
    except ApiError:
        raise errors.invalid_request(f"No such payment_intent: '{intent_id[:64]}'", param="payment_intent", code="resource_missing") from None
    refund_id = node.new_id("re", node.partition_of_intent(intent_id))
    command = machine.CreateRefund(
        intent_id=intent_id,
        merchant_id=key.merchant_id,
        livemode=key.livemode,
        refund_id=refund_id,
        at_s=created_s(refund_id, "re"),
        amount=values.amount,
        reason=values.reason,
        metadata=values.metadata,
    )
    render_outcome = render_refund(refund_id)
    async with calls.idempotent(key, body, render_outcome) as claim:
        return await calls.run(command, claim, render_outcome)


@ROUTES.get("/v1/refunds/<refund_id>")
@api("Retrieve a refund", objects.RefundObject)
async def retrieve_refund(calls: Calls, key: ApiKeyRow, refund_id: str) -> Response:
    return ownership.child_object(key, refund_id, "refund", calls.node.refund, objects.refund)


@ROUTES.get("/v1/refunds")
@api("List refunds, newest first", objects.ListObject[objects.RefundObject], query=params.ListParams)
async def list_refunds(calls: Calls, key: ApiKeyRow) -> Response:
    return await ownership.child_page(calls, key, "refunds", "/v1/refunds", "refund", objects.refund)


def render_refund(refund_id: str) -> Callable[[Outcome], tuple[int, bytes]]:
    """How to render the outcome of creating refund `refund_id`: the refund,
    or the error the outcome stands for."""

    def body_of(outcome: Outcome) -> dict[str, Any]:
        if outcome.result is not Result.ok:
            raise errors.from_result(outcome.result, outcome.param)
        assert outcome.intent is not None
        refund = outcome.intent.refund(refund_id)
        assert refund is not None
        return objects.refund(outcome.intent, refund)

    return lambda outcome: render(lambda: body_of(outcome))
