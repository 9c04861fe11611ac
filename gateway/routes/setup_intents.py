"""Routes for SetupIntents: create (optionally confirming), retrieve,
update, confirm, cancel and list. A SetupIntent is a row of its own
(store/setup_intents.py), changed by shards/setup_intents.py; a confirm
checks the card with the network and, with a customer, saves it there.

Idempotency-Key works as for any POST: the first answer is stored with the
change it answers and replayed. A confirm whose check got no answer leaves
its key's record open: a retry answers with the SetupIntent as it is then,
after asking the network about the check.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from quart import Response, request

from engine import ids
from engine import setup_intents as machine
from engine.results import Result
from engine.setup_intents import Refusal, SetupIntent
from engine.urls import return_url_allowed
from gateway import errors, expansions, ownership, params, setup_objects
from gateway.calls import ID_CHARS_MAX, Calls, Replayed
from gateway.errors import ApiError
from gateway.lists import created_s
from gateway.objects import ListObject
from gateway.openapi import api
from gateway.responses import json_response, raw_response
from gateway.routing import Routes
from shards.idempotency import Claim
from shards.setup_intents import CannotSave, ChangedTooOften, SetupIntents, SetupOutcome
from store.rows import ApiKeyRow
from store.setup_intents import IdempotencyKeyTaken, SetupQuery

ROUTES = Routes()

# What expand[] may name on a SetupIntent (or, on a list, under `data.`):
# the payment method is shown whole; the others Stripe lets expand are
# accepted and left as ids (nothing here fills them).
EXPANDABLE = {"payment_method": True, "customer": True, "application": False, "latest_attempt": False,
              "mandate": False, "on_behalf_of": False, "single_use_mandate": False}
EXPAND_PATHS_MAX = 20

SetupView = setup_objects.SetupIntentObject


@ROUTES.post("/v1/setup_intents")
@api("Create a SetupIntent, optionally confirming it", SetupView, body=params.CreateSetupIntent)
async def create_setup_intent(calls: Calls, key: ApiKeyRow) -> Response:
    node = calls.node
    body = await calls.read_body()
    values = params.convert(body, params.CreateSetupIntent)
    _check_shape(values.metadata, values.description)
    if values.return_url is not None and not return_url_allowed(values.return_url, key.livemode):
        raise errors.from_result(Result.return_url_invalid, "return_url")
    expand = _checked_expand(values.expand)
    service = SetupIntents(node)
    async with _expanded_replays(calls, key, expand), _idempotent(calls, key, body, service) as claim:
        customer_id = None if values.customer is None else await _customer(calls, key, values.customer)
        payment_method_id = None
        if values.payment_method is not None:
            payment_method_id = (await ownership.payment_method(node, values.payment_method, key)).id
        # SetupIntents belong to no partition (no actor holds them): 0 in every id.
        setup_id = node.new_id("seti", 0)
        setup = SetupIntent(
            id=setup_id,
            merchant_id=key.merchant_id,
            livemode=key.livemode,
            status=machine.SetupStatus.requires_confirmation if payment_method_id else machine.SetupStatus.requires_payment_method,
            client_secret=node.client_secret(setup_id),
            usage=values.usage,
            created_s=created_s(setup_id, "seti"),
            customer_id=customer_id,
            payment_method_id=payment_method_id,
            description=values.description or None,
            metadata={name: value for name, value in values.metadata.items() if value != ""},
            return_url=values.return_url,
        )
        outcome = await _run(service.create(setup, claim, confirm=values.confirm, return_url=values.return_url), None, setup_id)
        return await _answer(calls, key, outcome, expand)


@ROUTES.get("/v1/setup_intents/<setup_intent_id>")
@api("Retrieve a SetupIntent", SetupView, query=params.RetrieveSetupIntent, publishable=True)
async def retrieve_setup_intent(calls: Calls, key: ApiKeyRow, setup_intent_id: str) -> Response:
    values = calls.query(params.RetrieveSetupIntent)
    service = SetupIntents(calls.node)
    setup = await _owned(service, setup_intent_id, key, values.client_secret)
    expand = _checked_expand(values.expand)
    setup = await service.resolve(setup)
    return json_response(await _expand(calls, key, msgspec.to_builtins(setup_objects.setup_intent(setup)), expand))


@ROUTES.post("/v1/setup_intents/<setup_intent_id>")
@api("Update a SetupIntent: customer and payment method before it is confirmed; description and metadata until it is final", SetupView, body=params.UpdateSetupIntent)
async def update_setup_intent(calls: Calls, key: ApiKeyRow, setup_intent_id: str) -> Response:
    node = calls.node
    service = SetupIntents(node)
    await _owned(service, setup_intent_id, key)
    body = await calls.read_body()
    values = params.convert(body, params.UpdateSetupIntent)
    _check_shape(values.metadata, values.description)
    expand = _checked_expand(values.expand)
    async with _expanded_replays(calls, key, expand), _idempotent(calls, key, body, service) as claim:
        customer_id = None if values.customer is None else await _customer(calls, key, values.customer)
        payment_method_id = None
        if values.payment_method is not None:
            payment_method_id = (await ownership.payment_method(node, values.payment_method, key)).id

        def decide(setup: SetupIntent) -> SetupIntent | Refusal:
            return machine.decide_update(
                setup, payment_method_id=payment_method_id, customer_id=customer_id, description=values.description, metadata=values.metadata
            )

        outcome = await _run(service.change(setup_intent_id, decide, claim), service, setup_intent_id)
        return await _answer(calls, key, outcome, expand)


@ROUTES.post("/v1/setup_intents/<setup_intent_id>/confirm")
@api("Confirm a SetupIntent: check the card, and save it to the customer", SetupView, body=params.ConfirmSetupIntent, publishable=True)
async def confirm_setup_intent(calls: Calls, key: ApiKeyRow, setup_intent_id: str) -> Response:
    node = calls.node
    service = SetupIntents(node)
    body = await calls.read_body()
    values = params.convert(body, params.ConfirmSetupIntent)
    await _owned(service, setup_intent_id, key, values.client_secret)
    if values.return_url is not None and not return_url_allowed(values.return_url, key.livemode):
        raise errors.from_result(Result.return_url_invalid, "return_url")
    expand = _checked_expand(values.expand)
    async with _expanded_replays(calls, key, expand), _idempotent(calls, key, body, service) as claim:
        payment_method_id = None
        if values.payment_method is not None:
            payment_method_id = (await ownership.payment_method(node, values.payment_method, key)).id
        confirming = service.confirm(setup_intent_id, payment_method_id=payment_method_id, return_url=values.return_url, claim=claim)
        outcome = await _run(confirming, service, setup_intent_id)
        return await _answer(calls, key, outcome, expand)


@ROUTES.post("/v1/setup_intents/<setup_intent_id>/cancel")
@api("Cancel a SetupIntent (from requires_payment_method, requires_confirmation or requires_action)", SetupView, body=params.CancelSetupIntent)
async def cancel_setup_intent(calls: Calls, key: ApiKeyRow, setup_intent_id: str) -> Response:
    service = SetupIntents(calls.node)
    setup = await _owned(service, setup_intent_id, key)
    body = await calls.read_body()
    values = params.convert(body, params.CancelSetupIntent)
    expand = _checked_expand(values.expand)
    # A challenge answered meanwhile decides first: a succeeded SetupIntent is not canceled.
    await service.resolve(setup)
    async with _expanded_replays(calls, key, expand), _idempotent(calls, key, body, service) as claim:

        def decide(found: SetupIntent) -> SetupIntent | Refusal:
            return machine.decide_cancel(found, values.cancellation_reason)

        outcome = await _run(service.change(setup_intent_id, decide, claim), service, setup_intent_id)
        return await _answer(calls, key, outcome, expand)


@ROUTES.get("/v1/setup_intents")
@api("List SetupIntents, newest first", ListObject[SetupView], query=params.ListSetupIntents)
async def list_setup_intents(calls: Calls, key: ApiKeyRow) -> Response:
    values = calls.query(params.ListSetupIntents)
    if values.starting_after is not None and values.ending_before is not None:
        raise errors.invalid_request("Pass starting_after or ending_before, not both.", param="ending_before")
    expand = _checked_expand([path.removeprefix("data.") for path in values.expand if path.startswith("data.")])
    if any(not path.startswith("data.") for path in values.expand):
        bad = next(path for path in values.expand if not path.startswith("data."))
        raise errors.invalid_request(f"This property cannot be expanded ({bad[:100]}).", param="expand")
    service = SetupIntents(calls.node)
    created_from, created_until = _created_bounds(values.created)
    query = SetupQuery(
        merchant_id=key.merchant_id,
        livemode=key.livemode,
        limit=values.limit,
        customer_id=values.customer,
        payment_method_id=values.payment_method,
        created_from_s=created_from,
        created_until_s=created_until,
        after=await _cursor(service, key, values.starting_after, "starting_after"),
        before=await _cursor(service, key, values.ending_before, "ending_before"),
    )
    found, has_more = await service.store.list(query)
    data = [await _expand(calls, key, msgspec.to_builtins(setup_objects.setup_intent(setup)), expand) for setup in found]
    return json_response({"object": "list", "url": "/v1/setup_intents", "has_more": has_more, "data": data})


# --------------------------------------------------------------- helpers


def _check_shape(metadata: dict[str, str], description: str | None) -> None:
    refusal = machine.check_shape(metadata, description)
    if refusal is not None:
        raise errors.from_result(refusal.result, refusal.param)


async def _owned(service: SetupIntents, setup_intent_id: str, key: ApiKeyRow, client_secret: str | None = None) -> SetupIntent:
    """The caller's SetupIntent; raises a 404 otherwise. A publishable key
    must also present its client secret."""
    found = await service.get(setup_intent_id) if _well_formed(setup_intent_id) else None
    if found is None or found.merchant_id != key.merchant_id or found.livemode != key.livemode:
        raise errors.not_found("setup_intent", setup_intent_id, "intent")
    if key.kind == "publishable" and not (
        client_secret is not None and hmac.compare_digest(client_secret.encode(), found.client_secret.encode())
    ):
        raise errors.not_found("setup_intent", setup_intent_id, "intent")
    return found


def _well_formed(setup_intent_id: str) -> bool:
    # Only an id we could have made reaches the database (one with a NUL
    # in it would make PostgreSQL raise).
    return len(setup_intent_id) <= ID_CHARS_MAX and ids.parse_id(setup_intent_id, "seti") is not None


async def _customer(calls: Calls, key: ApiKeyRow, customer_id: str) -> str:
    found = None
    if len(customer_id) <= ID_CHARS_MAX:
        found = await calls.node.store.customers.find_customer(key.merchant_id, key.livemode, customer_id)
    if found is None:
        raise errors.invalid_request(f"No such customer: '{customer_id[:64]}'", param="customer", code="resource_missing")
    return found.id


async def _run(work: Any, service: SetupIntents | None, setup_intent_id: str) -> SetupOutcome:
    """The outcome of a change; raises the Stripe error a refusal stands for."""
    try:
        outcome = await work
    except CannotSave as error:
        raise errors.invalid_request(error.message, param=error.param, code="resource_missing" if error.param == "customer" else None) from None
    except IdempotencyKeyTaken:
        raise _in_use() from None
    except ChangedTooOften:
        raise ApiError(
            409,
            "invalid_request_error",
            "This object cannot be accessed right now because another API request is currently accessing it. Retry shortly.",
            code="lock_timeout",
        ) from None
    if isinstance(outcome, Refusal):
        setup = None if service is None else await service.get(setup_intent_id)
        raise setup_objects.refusal_error(outcome, setup, setup_intent_id)
    return outcome


def _in_use() -> ApiError:
    return ApiError(
        409,
        "idempotency_error",
        "There is currently another in-progress request using this idempotency key. Retry shortly.",
        code="idempotency_key_in_use",
    )


async def _answer(calls: Calls, key: ApiKeyRow, outcome: SetupOutcome, expand: list[str]) -> Response:
    status, body = setup_objects.render_outcome(outcome)
    return raw_response(*await _expanded_answer(calls, key, status, body, expand))


async def _expanded_answer(calls: Calls, key: ApiKeyRow, status: int, body: bytes, expand: list[str]) -> tuple[int, bytes]:
    if status != 200 or not expand:
        return status, body
    return status, msgspec.json.encode(await _expand(calls, key, msgspec.json.decode(body), expand))


@contextlib.asynccontextmanager
async def _expanded_replays(calls: Calls, key: ApiKeyRow, expand: list[str]) -> AsyncIterator[None]:
    """A replayed answer comes out expanded as the live one is."""
    try:
        yield
    except Replayed as replay:
        raise Replayed(*await _expanded_answer(calls, key, replay.status, replay.body, expand)) from None


def _checked_expand(paths: list[str]) -> list[str]:
    """The expand[] paths that change the answer; raises Stripe's 400 for
    a path that cannot be expanded."""
    if len(paths) > EXPAND_PATHS_MAX:
        raise errors.invalid_request(f"You can expand at most {EXPAND_PATHS_MAX} properties.", param="expand")
    shown = []
    for path in paths:
        head, _, rest = path.partition(".")
        if head not in EXPANDABLE or (rest and not (head == "payment_method" and rest == "customer")):
            raise errors.invalid_request(f"This property cannot be expanded ({path[:100]}).", param="expand")
        if EXPANDABLE[head] and head not in shown:
            shown.append(head)
    return shown


async def _expand(calls: Calls, key: ApiKeyRow, body: dict[str, Any], expand: list[str]) -> dict[str, Any]:
    # As a PaymentIntent's: the payment method with the customer it is saved
    # to, the customer (Stripe's deleted customer once deleted).
    expansion = expansions.Expansion(calls.node, key)
    for name, shown in (("payment_method", expansion.payment_method), ("customer", expansion.customer)):
        if name in expand and isinstance(body.get(name), str):
            found = await shown(body, body[name])
            if found is not None:
                body[name] = found
    return body


def _created_bounds(created: int | params.CreatedFilter | None) -> tuple[int | None, int | None]:
    """(from, until), both inclusive, of a `created` filter."""
    if created is None:
        return None, None
    if isinstance(created, int):
        return created, created
    lower = [bound for bound in (created.gte, None if created.gt is None else created.gt + 1) if bound is not None]
    upper = [bound for bound in (created.lte, None if created.lt is None else created.lt - 1) if bound is not None]
    return (max(lower) if lower else None), (min(upper) if upper else None)


async def _cursor(service: SetupIntents, key: ApiKeyRow, cursor: str | None, param: str) -> tuple[int, str] | None:
    if cursor is None:
        return None
    found = await service.get(cursor) if _well_formed(cursor) else None
    if found is None or found.merchant_id != key.merchant_id or found.livemode != key.livemode:
        raise errors.invalid_request(f"No such setup_intent: '{cursor[:64]}'", param=param, code="resource_missing")
    return found.created_s, found.id


@contextlib.asynccontextmanager
async def _idempotent(calls: Calls, key: ApiKeyRow, values: dict[str, Any], service: SetupIntents) -> AsyncIterator[Claim | None]:
    """Claim the request's Idempotency-Key for the block, or replay the
    answer stored under it (raises Replayed), or refuse it. A record left
    open (its check got no answer, or its node stopped) is answered with
    the SetupIntent as it is now, after asking the network about it."""
    header = calls.idempotency_key()
    if header is None:
        yield None
        return
    records = calls.node.idempotency
    if not records.begin_nowait(key.merchant_id, header):
        raise _in_use()
    try:
        now_s = int(time.time())
        found = await records.find(key.merchant_id, header, now_s)
        fingerprint = records.fingerprint(request.method, request.path, values)
        if found is not None:
            if not records.matches(found.fingerprint, request.method, request.path, values, fingerprint):
                raise errors.idempotency_key_reused()
            if found.status_code is not None and found.body is not None:
                raise Replayed(found.status_code, found.body)
            setup = None if found.object_id is None else await service.get(found.object_id)
            if setup is None:
                raise errors.unavailable("The first request with this idempotency key did not finish. Retry shortly.")
            raise Replayed(*setup_objects.render_outcome(SetupOutcome(await service.resolve(setup))))
        yield Claim(key.merchant_id, header, fingerprint, setup_objects.render_outcome, now_s + records.ttl_s)
    finally:
        records.end(key.merchant_id, header)
