"""Routes for customers: create, retrieve, update, delete and list them, and
list the payment methods saved to one. Also what PaymentIntents ask of
customers: that one named exists, that a payment method may be used with
it, and saving the payment method of an intent made with
`setup_future_usage` once it succeeds.

Customers are rows of their own in PostgreSQL (store/customers.py), kept
apart from the card vault: a saved card is a payment method, linked to its
customer by an attachment. Another merchant's customer, or one of the other
mode, is answered as missing.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import structlog
from quart import Response

from engine import ids
from engine import intent as machine
from engine.intent import check_metadata
from gateway import errors, objects, ownership, params
from gateway.calls import ID_CHARS_MAX, Calls
from gateway.lists import created_s
from gateway.openapi import api
from gateway.responses import json_response, raw_response, render
from gateway.routing import Routes
from shards.cache import BoundedCache
from shards.node import Node, NotServed
from store.customers import CustomerChange, CustomerQuery, Refusal, changed
from store.errors import StoreUnavailable
from store.rows import ApiKeyRow, AttachmentRow, CustomerRow, PaymentMethodRow

log = structlog.get_logger("gateway")

ROUTES = Routes()

# What expand[] may name on a customer; the others Stripe has are never
# filled here (null), so expanding them leaves them as they are.
EXPANDABLE = ("invoice_settings.default_payment_method",)
NEVER_FILLED = ("default_source", "test_clock", "invoice_settings.default_payment_method.customer")
# Intents whose payment method was saved by this process (or found saved
# already): a retrieve of one does not write again.
SAVED_INTENTS_MAX = 100_000
_saved_intents = BoundedCache(SAVED_INTENTS_MAX)
# Intents created here whose payment method was then attached to no
# customer, with the method and when it was looked up: a confirm of one
# soon after, with the same method, takes that answer instead of reading
# it again (one PostgreSQL round trip, the commonest on a payment's path).
# What it can miss is a method attached to a customer in between; a
# detached one was attached before, so never remembered here.
UNATTACHED_AT_CREATE_MAX = 100_000
UNATTACHED_TRUSTED_S = 60.0
_unattached_at_create = BoundedCache(UNATTACHED_AT_CREATE_MAX)


@ROUTES.post("/v1/customers")
@api("Create a customer, optionally saving a payment method to it", objects.CustomerObject, body=params.CreateCustomer)
async def create_customer(calls: Calls, key: ApiKeyRow) -> Response:
    node = calls.node
    body = await calls.read_body()
    values = params.convert(body, params.CreateCustomer)
    metadata = _metadata({} if values.metadata == "" else values.metadata)
    default = None if values.invoice_settings is None else values.invoice_settings.default_payment_method
    paths = _check_expand(values.expand)
    async with calls.idempotent(key, body, _render_customer) as claim:
        method = None
        if values.payment_method is not None:
            method = await ownership.payment_method(node, values.payment_method, key)
            refusal = _refusal_to_attach(await node.store.customers.attachment(method.id))
            if refusal is not None:
                raise attach_refused(refusal, "payment_method")
        if default and (method is None or default != method.id):
            raise _default_not_attached(default)
        customer_id = node.new_id("cus", 0)
        row = CustomerRow(
            id=customer_id,
            merchant_id=key.merchant_id,
            livemode=key.livemode,
            email=values.email or None,
            name=values.name or None,
            description=values.description or None,
            phone=values.phone or None,
            metadata=metadata,
            default_payment_method=default or None,
            # Created at its id's second, so its place in a list is its id's.
            created_s=created_s(customer_id, "cus"),
        )
        if method is None:
            await node.store.customers.insert_customer(row, None if claim is None else claim.completed(row, row.id))
        else:
            # Made first, then the method saved to it with the request's record.
            await node.store.customers.insert_customer(row)
            refusal, _ = await node.store.customers.attach_payment_method(
                key.merchant_id, key.livemode, method.id, row.id, row.created_s, None if claim is None else (lambda _: claim.completed(row, row.id))
            )
            if refusal is not None:
                # Saved to another customer since it was checked: this one goes.
                await node.store.customers.delete_customer(key.merchant_id, key.livemode, row.id, row.created_s)
                raise attach_refused(refusal, "payment_method")
        log.info("customer_created", customer_id=row.id)
        return await _answer(node, key, row, paths)


@ROUTES.get("/v1/customers/<customer_id>")
@api("Retrieve a customer (a deleted one answers as deleted)", objects.CustomerObject, query=params.RetrieveParams)
async def retrieve_customer(calls: Calls, key: ApiKeyRow, customer_id: str) -> Response:
    paths = _check_expand(calls.query(params.RetrieveParams).expand)
    row = await _owned(calls.node, customer_id, key, deleted_too=True)
    if row.deleted:
        return json_response(objects.DeletedObject(id=row.id, deleted=True, object="customer"))
    return json_response(await _expanded(calls.node, key, objects.customer(row), paths))


@ROUTES.post("/v1/customers/<customer_id>")
@api("Update a customer", objects.CustomerObject, body=params.UpdateCustomer)
async def update_customer(calls: Calls, key: ApiKeyRow, customer_id: str) -> Response:
    node = calls.node
    current = await _owned(node, customer_id, key)
    body = await calls.read_body()
    values = params.convert(body, params.UpdateCustomer)
    paths = _check_expand(values.expand)
    metadata = {} if values.metadata == "" else values.metadata
    change = CustomerChange(
        email=values.email,
        name=values.name,
        description=values.description,
        phone=values.phone,
        metadata=metadata,
        clear_metadata=values.metadata == "",
        default_payment_method=None if values.invoice_settings is None else values.invoice_settings.default_payment_method,
    )
    # Bounded as Stripe bounds it: the keys the customer keeps count too.
    _metadata(changed(current, change).metadata)
    async with calls.idempotent(key, body, _render_customer) as claim:
        refusal, row = await node.store.customers.update_customer(
            key.merchant_id, key.livemode, customer_id, change, None if claim is None else (lambda new: claim.completed(new, new.id))
        )
        if refusal is Refusal.default_not_attached:
            raise _default_not_attached(change.default_payment_method or "")
        if row is None:
            raise errors.not_found("customer", customer_id, "id")
        return await _answer(node, key, row, paths)


@ROUTES.delete("/v1/customers/<customer_id>")
@api("Delete a customer; its payment methods are detached", objects.DeletedObject)
async def delete_customer(calls: Calls, key: ApiKeyRow, customer_id: str) -> Response:
    node = calls.node
    await _owned(node, customer_id, key)
    row = await node.store.customers.delete_customer(key.merchant_id, key.livemode, customer_id, int(time.time()))
    if row is None:
        raise errors.not_found("customer", customer_id, "id")
    log.info("customer_deleted", customer_id=row.id)
    return json_response(objects.DeletedObject(id=row.id, deleted=True, object="customer"))


@ROUTES.get("/v1/customers")
@api("List customers, newest first", objects.ListObject[objects.CustomerObject], query=params.CustomerListParams)
async def list_customers(calls: Calls, key: ApiKeyRow) -> Response:
    node = calls.node
    values = calls.query(params.CustomerListParams)
    paths = _check_expand([_item_path(path) for path in values.expand])
    created_from_s, created_until_s = _created_bounds(values.created)
    after = before = None
    if values.starting_after is not None and values.ending_before is not None:
        raise errors.invalid_request("Pass starting_after or ending_before, not both.", param="ending_before")
    if values.starting_after is not None:
        after = await _cursor(node, key, values.starting_after, "starting_after")
    if values.ending_before is not None:
        before = await _cursor(node, key, values.ending_before, "ending_before")
    query = CustomerQuery(
        key.merchant_id, key.livemode, values.limit, values.email, created_from_s, created_until_s, after, before
    )
    rows, has_more = await node.store.customers.list_customers(query)
    data = [await _expanded(node, key, objects.customer(row), paths) for row in rows]
    return json_response({"object": "list", "url": "/v1/customers", "has_more": has_more, "data": data})


@ROUTES.get("/v1/customers/<customer_id>/payment_methods")
@api("List a customer's saved payment methods, newest first", objects.ListObject[objects.PaymentMethodObject], query=params.PaymentMethodListParams)
async def list_customer_payment_methods(calls: Calls, key: ApiKeyRow, customer_id: str) -> Response:
    values = calls.query(params.PaymentMethodListParams)
    if values.customer is not None:
        raise errors.invalid_request("Received unknown parameter: customer", param="customer", code="parameter_unknown")
    return json_response(await payment_method_page(calls.node, key, customer_id, values, f"/v1/customers/{customer_id[:ID_CHARS_MAX]}/payment_methods"))


@ROUTES.get("/v1/customers/<customer_id>/payment_methods/<payment_method_id>")
@api("Retrieve a payment method saved to a customer", objects.PaymentMethodObject, query=params.RetrieveParams)
async def retrieve_customer_payment_method(calls: Calls, key: ApiKeyRow, customer_id: str, payment_method_id: str) -> Response:
    node = calls.node
    for path in calls.query(params.RetrieveParams).expand:
        if path != "customer":
            raise errors.invalid_request(f"This property cannot be expanded ({path[:200]}).")
    customer = await _owned(node, customer_id, key)
    row = await node.payment_method(payment_method_id) if len(payment_method_id) <= ID_CHARS_MAX else None
    attached = None if row is None else await node.store.customers.attachment(row.id)
    if row is None or attached_customer(attached) != customer.id:
        raise errors.not_found("payment_method", payment_method_id, "payment_method")
    return json_response(objects.payment_method(row, customer.id))


async def payment_method_page(
    node: Node, key: ApiKeyRow, customer_id: str, values: params.PaymentMethodListParams, url: str
) -> dict[str, Any]:
    """A page of the customer's saved payment methods (the list of
    GET /v1/payment_methods?customer= too); raises a 404 for a customer that
    is not the caller's."""
    if values.expand and not all(path in ("data.customer", "customer") for path in values.expand):
        raise errors.invalid_request(f"This property cannot be expanded ({values.expand[0][:200]}).")
    customer = await _owned(node, customer_id, key)
    if values.starting_after is not None and values.ending_before is not None:
        raise errors.invalid_request("Pass starting_after or ending_before, not both.", param="ending_before")
    after = None if values.starting_after is None else await _method_cursor(node, key, customer.id, values.starting_after, "starting_after")
    before = None if values.ending_before is None else await _method_cursor(node, key, customer.id, values.ending_before, "ending_before")
    query = CustomerQuery(key.merchant_id, key.livemode, values.limit, after=after, before=before)
    rows, has_more = await node.store.customers.customer_payment_methods(customer.id, query)
    data = [msgspec.to_builtins(objects.payment_method(row, customer.id)) for row in rows]
    return {"object": "list", "url": url, "has_more": has_more, "data": data}


# ------------------------------------------- what PaymentIntents ask of customers


async def intent_customer(node: Node, key: ApiKeyRow, customer_id: str) -> str:
    """The id of the caller's customer named by an intent's `customer`;
    raises Stripe's 400 naming `customer` otherwise."""
    if len(customer_id) > ID_CHARS_MAX or ids.parse_id(customer_id, "cus") is None:
        row = None
    else:
        row = await node.store.customers.find_customer(key.merchant_id, key.livemode, customer_id)
    if row is None:
        raise errors.invalid_request(f"No such customer: '{customer_id[:64]}'", param="customer", code="resource_missing")
    return row.id


async def check_payment_method_for(node: Node, payment_method_id: str, customer_id: str | None) -> bool:
    """Stripe's rules for paying with a payment method on an intent of
    `customer_id`: one saved to another customer may not be used, nor one
    detached. Raises the 400 naming `payment_method`; returns whether the
    method is attached to no customer."""
    attached = await node.store.customers.attachment(payment_method_id)
    if attached is None:
        return True
    if attached.detached_s is not None:
        raise errors.invalid_request(
            "The provided PaymentMethod was previously used with a PaymentIntent without Customer attachment, shared with a"
            " connected account without Customer attachment, or was detached from a Customer. It may not be used again. To use"
            " a PaymentMethod multiple times, you must attach it to a Customer first.",
            param="payment_method",
        )
    if attached.customer_id != customer_id:
        if customer_id is None:
            message = "The provided PaymentMethod belongs to a Customer, but you did not provide the customer parameter. Please provide the Customer ID as well."
        else:
            message = f"The provided PaymentMethod belongs to a Customer other than '{customer_id}', the one of this PaymentIntent."
        raise errors.invalid_request(message, param="payment_method")
    return False


def remember_unattached(intent_id: str, payment_method_id: str) -> None:
    """The intent was just created with a method attached to no customer."""
    _unattached_at_create.put(intent_id, (payment_method_id, time.monotonic()))


async def check_confirmed_method(node: Node, intent: machine.PaymentIntent, payment_method_id: str) -> None:
    """`check_payment_method_for` at a confirm, unless the intent was
    created here lately with this very method, then attached to no one."""
    remembered = _unattached_at_create.pop(intent.id, None)
    if remembered is not None and remembered[0] == payment_method_id and time.monotonic() - remembered[1] < UNATTACHED_TRUSTED_S:
        return
    await check_payment_method_for(node, payment_method_id, intent.customer_id)


def off_session_flag(value: bool | str | None) -> bool:
    """Stripe's `off_session`: true, "one_off" or "recurring" all mean the
    customer is not there."""
    return value is not None and value is not False


async def save_payment_method_of(node: Node, intent_id: str) -> None:
    """`save_payment_method` for the intent a command just answered, as
    this node holds it now (nothing when its partition moved meanwhile:
    its next answer saves the method)."""
    try:
        intent = node.intent(intent_id)
    except NotServed:
        return
    await save_payment_method(node, intent)


async def save_payment_method(node: Node, intent: machine.PaymentIntent | None) -> None:
    """Save an intent's payment method to its customer once the intent has
    succeeded (or holds its authorization) with `setup_future_usage`, as
    Stripe does. Called where an intent is answered (create, confirm,
    retrieve): an intent that succeeds later (after 3-D Secure) saves its
    method when it is next answered. A method detached meanwhile, or saved
    to another customer, stays as it is (logged)."""
    if (
        intent is None
        or intent.customer_id is None
        or intent.setup_future_usage is None
        or intent.status not in (machine.Status.succeeded, machine.Status.requires_capture)
        or intent.id in _saved_intents
    ):
        return
    authorization = intent.authorization()
    if authorization is None:
        return
    try:
        refusal, _ = await node.store.customers.attach_payment_method(
            intent.merchant_id, intent.livemode, authorization.payment_method_id, intent.customer_id, authorization.created_s
        )
    except StoreUnavailable as error:
        # The payment stands; its next answer saves the method.
        log.warning("payment_method_not_saved", intent_id=intent.id, error=str(error))
        return
    if refusal is not None:
        log.warning("payment_method_not_saved", intent_id=intent.id, payment_method_id=authorization.payment_method_id, reason=str(refusal))
    _saved_intents.put(intent.id, True)


# ------------------------------------------------------------------ helpers


async def _owned(node: Node, customer_id: str, key: ApiKeyRow, *, deleted_too: bool = False) -> CustomerRow:
    """The caller's customer (deleted too, when asked); raises a 404 otherwise."""
    row = None
    if len(customer_id) <= ID_CHARS_MAX and ids.parse_id(customer_id, "cus") is not None:
        row = await node.store.customers.get_customer(customer_id)
    if row is None or row.merchant_id != key.merchant_id or row.livemode != key.livemode or (row.deleted and not deleted_too):
        raise errors.not_found("customer", customer_id, "id")
    return row


async def _cursor(node: Node, key: ApiKeyRow, cursor: str, param: str) -> tuple[int, str]:
    row = None
    if len(cursor) <= ID_CHARS_MAX and ids.parse_id(cursor, "cus") is not None:
        row = await node.store.customers.find_customer(key.merchant_id, key.livemode, cursor)
    if row is None:
        raise errors.invalid_request(f"No such customer: '{cursor[:64]}'", param=param, code="resource_missing")
    return row.created_s, row.id


async def _method_cursor(node: Node, key: ApiKeyRow, customer_id: str, cursor: str, param: str) -> tuple[int, str]:
    row = await node.payment_method(cursor) if len(cursor) <= ID_CHARS_MAX else None
    attached = None if row is None else await node.store.customers.attachment(row.id)
    if row is None or attached is None or attached.customer_id != customer_id or attached.merchant_id != key.merchant_id:
        raise errors.invalid_request(f"No such PaymentMethod: '{cursor[:64]}'", param=param, code="resource_missing")
    return row.created_s, row.id


def _created_bounds(created: int | params.CreatedFilter | None) -> tuple[int | None, int | None]:
    """(from, until), both inclusive, of Stripe's `created` filter."""
    if created is None:
        return None, None
    if isinstance(created, int):
        return created, created
    lows = [value for value in (created.gte, None if created.gt is None else created.gt + 1) if value is not None]
    highs = [value for value in (created.lte, None if created.lt is None else created.lt - 1) if value is not None]
    return (max(lows) if lows else None), (min(highs) if highs else None)


def _item_path(path: str) -> str:
    """The path on each item of a list of `path` on the list (`data.x`)."""
    if not path.startswith("data."):
        raise errors.invalid_request(f"This property cannot be expanded ({path[:200]}).")
    return path.removeprefix("data.")


def _check_expand(paths: list[str]) -> list[str]:
    """The paths to expand on a customer; raises Stripe's 400 for one it refuses."""
    if len(paths) > 20:
        raise errors.invalid_request("You may expand at most 20 properties.", param="expand")
    for path in paths:
        if path not in EXPANDABLE and path not in NEVER_FILLED:
            raise errors.invalid_request(f"This property cannot be expanded ({path[:200]}).")
    return [path for path in paths if path in EXPANDABLE]


async def _expanded(node: Node, key: ApiKeyRow, customer: objects.CustomerObject, paths: list[str]) -> dict[str, Any]:
    body = msgspec.to_builtins(customer)
    method_id = customer.invoice_settings.default_payment_method
    if paths and isinstance(method_id, str):
        row = await node.payment_method(method_id)
        if row is not None and row.merchant_id == key.merchant_id:
            body["invoice_settings"]["default_payment_method"] = msgspec.to_builtins(objects.payment_method(row, customer.id))
    return body


def _render_customer(row: CustomerRow) -> tuple[int, bytes]:
    """(status, JSON) of a written customer, as its idempotency record
    keeps it: a replay answers this, with nothing expanded."""
    return render(lambda: msgspec.to_builtins(objects.customer(row)))


async def _answer(node: Node, key: ApiKeyRow, row: CustomerRow, paths: list[str]) -> Response:
    if not paths:
        return raw_response(*_render_customer(row))
    return json_response(await _expanded(node, key, objects.customer(row), paths))


def _refusal_to_attach(attachment: AttachmentRow | None) -> Refusal | None:
    """Why a payment method with this attachment cannot be saved to a new customer."""
    if attachment is None:
        return None
    return Refusal.detached if attachment.detached_s is not None else Refusal.attached_elsewhere


def _metadata(values: dict[str, str]) -> dict[str, str]:
    if not check_metadata(values):
        raise _metadata_invalid()
    return values


def _metadata_invalid() -> errors.ApiError:
    return errors.invalid_request(
        "Invalid metadata: at most 50 keys of 40 characters, values of 500.", param="metadata", code="parameter_invalid"
    )


def _default_not_attached(payment_method_id: str) -> errors.ApiError:
    return errors.invalid_request(
        f"The customer does not have a payment method with the ID {payment_method_id[:64]}. The payment method must be attached to the customer.",
        param="invoice_settings[default_payment_method]",
        code="resource_missing",
    )


def attach_refused(refusal: Refusal, param: str, customer_id: str = "") -> errors.ApiError:
    """The 400 Stripe answers an attach or detach it refuses."""
    if refusal is Refusal.customer_missing:
        return errors.invalid_request(f"No such customer: '{customer_id[:64]}'", param="customer", code="resource_missing")
    if refusal is Refusal.attached_elsewhere:
        return errors.invalid_request(
            "The payment method you provided has already been attached to a customer.", param=param, code="payment_method_unexpected_state"
        )
    if refusal is Refusal.detached:
        return errors.invalid_request(
            "This PaymentMethod was previously used without being attached to a Customer or was detached from a Customer, and may not be used again.",
            param=param,
            code="payment_method_unexpected_state",
        )
    assert refusal is Refusal.not_attached, refusal
    return errors.invalid_request(
        "The payment method you provided is not attached to a customer so detachment is impossible.",
        param=param,
        code="payment_method_unexpected_state",
    )


def attached_customer(attachment: AttachmentRow | None) -> str | None:
    """The customer a payment method shows: the one it is saved to, none once detached."""
    return None if attachment is None or attachment.detached_s is not None else attachment.customer_id


async def shown_payment_method(node: Node, row: PaymentMethodRow) -> objects.PaymentMethodObject:
    """A payment method with the customer it is saved to."""
    return objects.payment_method(row, attached_customer(await node.store.customers.attachment(row.id)))
