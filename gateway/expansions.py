"""`expand[]`: a linked object shown whole in place of its id, as Stripe does.

A path names fields from the object answered (`latest_charge`,
`latest_charge.balance_transaction`; on a list, from its items:
`data.latest_charge`), at most DEPTH_MAX levels. Paths are checked against
the table EXPANDABLE before anything runs, so a confirm with a bad path
changes nothing; a field Stripe does not let expand answers Stripe's 400,
`This property cannot be expanded (...)`. Fields Stripe lets expand that
this server never fills (`invoice`, `review`, ...) are accepted and stay
as they are.

Expansion works on the answer already rendered (JSON values), with what the
node holds now: the intent and its ledger from the partition's actor (read
only), payment methods from the store. Everything linked to an object the
caller owns belongs to the same intent, and is owned too; payment methods
are checked.

Charges are found from their ids alone (engine/ids.py: a charge id is its
attempt's), here too, for the charge routes and refunds by charge.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import msgspec
from quart import Response

from engine import charges, ids
from engine.intent import Attempt, PaymentIntent
from gateway import errors, objects
from gateway.calls import ID_CHARS_MAX, Calls, Replayed
from gateway.responses import raw_response
from shards.idempotency import Claim, Render
from shards.node import Node, NotServed
from store.rows import ApiKeyRow

DEPTH_MAX = 4
# At most this many paths in one request (Stripe's objects have few expandable fields).
PATHS_MAX = 20

# Object type -> expandable field -> the type it expands to; None for a
# field Stripe lets expand that is never filled here (left as it is).
EXPANDABLE: dict[str, dict[str, str | None]] = {
    "payment_intent": {
        "latest_charge": "charge",
        "payment_method": "payment_method",
        "application": None,
        "customer": "customer",
        "invoice": None,
        "on_behalf_of": None,
        "review": None,
    },
    "charge": {
        "balance_transaction": "balance_transaction",
        "payment_intent": "payment_intent",
        "refunds": "refund_list",
        "application": None,
        "application_fee": None,
        "customer": None,
        "failure_balance_transaction": None,
        "invoice": None,
        "on_behalf_of": None,
        "review": None,
        "source_transfer": None,
        "transfer": None,
    },
    "refund": {
        "charge": "charge",
        "payment_intent": "payment_intent",
        "balance_transaction": None,
        "failure_balance_transaction": None,
        "source_transfer_reversal": None,
        "transfer_reversal": None,
    },
    "dispute": {"charge": "charge", "payment_intent": "payment_intent"},
    "payment_method": {"customer": None},
    "customer": {"default_source": None, "test_clock": None},
    "balance_transaction": {"source": None},
    "refund_list": {"data": "refund"},
    "list": {"data": "item"},
}


def cannot_expand(path: str) -> errors.ApiError:
    return errors.invalid_request(f"This property cannot be expanded ({path[:200]}).")


def check(paths: list[str], kind: str, item_kind: str | None = None) -> list[str]:
    """The paths to expand on an answer of type `kind` (a list's items of
    `item_kind`), checked; raises Stripe's 400 for the first it refuses."""
    if len(paths) > PATHS_MAX:
        raise errors.invalid_request(f"You may expand at most {PATHS_MAX} properties.", param="expand")
    for path in paths:
        fields = path.split(".")
        if len(fields) > DEPTH_MAX:
            raise errors.invalid_request(f"You cannot expand more than {DEPTH_MAX} levels of a property.")
        current: str | None = kind
        for depth, field in enumerate(fields):
            if current is None:
                break  # below a field never filled: nothing to expand
            target = EXPANDABLE.get(current, {}).get(field, "")
            if target == "":
                raise cannot_expand(".".join(fields[: depth + 1]))
            current = item_kind if target == "item" else target
    return paths


def find_charge(node: Node, charge_id: str, key: ApiKeyRow) -> tuple[PaymentIntent, Attempt] | None:
    """The caller's charge `charge_id` with its intent; None when there is
    none. Raises NotServed when another node serves its partition."""
    attempt_id = ids.attempt_id_of_charge(charge_id) if len(charge_id) <= ID_CHARS_MAX else None
    partition = None if attempt_id is None else ids.partition_of(attempt_id, "att")
    if attempt_id is None or partition is None:
        return None
    shard = node.shards.get(partition)
    if shard is None:
        raise NotServed(partition)
    intent_id = shard.state.references.get(attempt_id)
    intent = None if intent_id is None else shard.state.intents.get(intent_id)
    if intent is None or intent.merchant_id != key.merchant_id or intent.livemode != key.livemode:
        return None
    attempt = charges.charge_attempt(intent, attempt_id)
    return None if attempt is None else (intent, attempt)


async def render_charge(node: Node, intent: PaymentIntent, attempt: Attempt) -> dict[str, Any]:
    """A charge as JSON values, with its card's details from the store."""
    card = await node.payment_method(attempt.payment_method_id)
    return msgspec.to_builtins(objects.charge(intent, attempt, card))


Resolver = Callable[["Expansion", dict[str, Any], str], Coroutine[Any, Any, Any]]


class Expansion:
    """The expansion of one answer for one caller."""

    def __init__(self, node: Node, key: ApiKeyRow) -> None:
        self.node = node
        self.key = key

    async def apply(self, body: Any, paths: list[str]) -> Any:
        """`body` (JSON values) with every path in `paths` expanded."""
        for path in paths:
            await self._expand(body, path.split("."))
        return body

    async def _expand(self, value: Any, fields: list[str]) -> None:
        if not fields or not isinstance(value, dict):
            return
        field, rest = fields[0], fields[1:]
        kind = value.get("object")
        if field == "data" and kind == "list":
            for item in value.get("data", ()):
                await self._expand(item, rest)
            return
        if field not in value and (kind, field) in _INCLUDED:
            # Left out unless asked for (a charge's refunds, since 2022-11-15).
            value[field] = await _INCLUDED[(str(kind), field)](self, value, "")
        linked = value.get(field)
        if isinstance(linked, str):
            resolve = _RESOLVERS.get((str(kind), field))
            found = None if resolve is None else await resolve(self, value, linked)
            if found is not None:
                value[field] = linked = found
        await self._expand(linked, rest)

    def intent(self, intent_id: str) -> PaymentIntent | None:
        found = self.node.intent(intent_id) if len(intent_id) <= ID_CHARS_MAX else None
        if found is None or found.merchant_id != self.key.merchant_id or found.livemode != self.key.livemode:
            return None
        return found

    async def charge(self, parent: dict[str, Any], charge_id: str) -> dict[str, Any] | None:
        found = find_charge(self.node, charge_id, self.key)
        return None if found is None else await render_charge(self.node, *found)

    async def payment_method(self, parent: dict[str, Any], payment_method_id: str) -> dict[str, Any] | None:
        row = await self.node.payment_method(payment_method_id) if len(payment_method_id) <= ID_CHARS_MAX else None
        if row is None or row.merchant_id != self.key.merchant_id or row.livemode != self.key.livemode:
            return None
        # The customer it is saved to, if any (none once detached).
        attached = await self.node.store.customers.attachment(row.id)
        customer_id = None if attached is None or attached.detached_s is not None else attached.customer_id
        return msgspec.to_builtins(objects.payment_method(row, customer_id))

    async def customer(self, parent: dict[str, Any], customer_id: str) -> dict[str, Any] | None:
        """The caller's customer, or Stripe's deleted customer once deleted."""
        row = await self.node.store.customers.get_customer(customer_id) if len(customer_id) <= ID_CHARS_MAX else None
        if row is None or row.merchant_id != self.key.merchant_id or row.livemode != self.key.livemode:
            return None
        if row.deleted:
            return msgspec.to_builtins(objects.DeletedObject(id=row.id, deleted=True, object="customer"))
        return msgspec.to_builtins(objects.customer(row))

    async def payment_intent(self, parent: dict[str, Any], intent_id: str) -> dict[str, Any] | None:
        intent = self.intent(intent_id)
        return None if intent is None else msgspec.to_builtins(objects.payment_intent(intent))

    async def balance_transaction(self, parent: dict[str, Any], transaction_id: str) -> dict[str, Any] | None:
        """A charge's balance transaction, from the ledger of its partition."""
        found = find_charge(self.node, str(parent.get("id")), self.key)
        if found is None:
            return None
        intent, attempt = found
        transfer_id = objects.charge_transfer_id(intent, attempt)
        shard = self.node.shards.get(self.node.partition_of_intent(intent.id))
        entry = None if transfer_id is None or shard is None else shard.state.ledger.entry(transfer_id)
        if entry is None:
            return None
        return msgspec.to_builtins(objects.balance_entry(entry, intent.merchant_id, int(time.time()), intent))

    async def refunds(self, parent: dict[str, Any], _: str) -> dict[str, Any] | None:
        """A charge's refunds, newest first, as the list Stripe includes."""
        charge_id = str(parent.get("id"))
        found = find_charge(self.node, charge_id, self.key)
        shown: list[Any] = []
        if found is not None and charges.is_successful(*found):
            intent = found[0]
            ordered = sorted(intent.refunds, key=lambda refund: (refund.created_s, refund.id), reverse=True)
            shown = [msgspec.to_builtins(objects.refund(intent, refund)) for refund in ordered]
        return {"object": "list", "data": shown, "has_more": False, "url": f"/v1/charges/{charge_id}/refunds"}


_RESOLVERS: dict[tuple[str, str], Resolver] = {
    ("payment_intent", "latest_charge"): Expansion.charge,
    ("payment_intent", "payment_method"): Expansion.payment_method,
    ("payment_intent", "customer"): Expansion.customer,
    ("charge", "payment_intent"): Expansion.payment_intent,
    ("charge", "balance_transaction"): Expansion.balance_transaction,
    ("refund", "charge"): Expansion.charge,
    ("refund", "payment_intent"): Expansion.payment_intent,
    ("dispute", "charge"): Expansion.charge,
    ("dispute", "payment_intent"): Expansion.payment_intent,
}


_INCLUDED: dict[tuple[str, str], Resolver] = {("charge", "refunds"): Expansion.refunds}

_json = msgspec.json.Encoder()


async def expanded_answer(node: Node, key: ApiKeyRow, status: int, body: bytes, paths: list[str]) -> tuple[int, bytes]:
    """A rendered answer with `paths` expanded; errors pass unchanged."""
    if status != 200 or not paths:
        return status, body
    return status, _json.encode(await Expansion(node, key).apply(msgspec.json.decode(body), paths))


async def run(calls: Calls, key: ApiKeyRow, command: Any, claim: Claim | None, render_outcome: Render, paths: list[str]) -> Response:
    """`calls.run`, with the answer's `paths` expanded once the command is
    journaled (the idempotency record keeps the answer as rendered)."""
    outcome = await calls.submit(command, claim)
    status, body = outcome.rendered or render_outcome(outcome)
    return raw_response(*await expanded_answer(calls.node, key, status, body, paths))


@contextlib.asynccontextmanager
async def replays_expanded(node: Node, key: ApiKeyRow, paths: list[str]) -> AsyncIterator[None]:
    """A replayed answer (raised as Replayed inside) comes out with `paths`
    expanded as they are now, like the first answer."""
    try:
        yield
    except Replayed as replay:
        if replay.status != 200 or not paths:
            raise
        raise Replayed(*await expanded_answer(node, key, replay.status, replay.body, paths)) from None
