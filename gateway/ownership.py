"""What a caller may see: its own intents, payment methods, and the refunds
and disputes of its intents. Anything else is answered as if it did not
exist, so ids of other merchants (or of the other mode) cannot be probed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from quart import Response

from engine import cards
from engine import intent as machine
from gateway import errors
from gateway.calls import ID_CHARS_MAX
from gateway.responses import json_response
from shards.node import Node
from store.rows import ApiKeyRow, PaymentMethodRow

# Test payment methods get this many years of validity from today.
TEST_CARD_YEARS = 3


async def payment_method(node: Node, payment_method_id: str, key: ApiKeyRow) -> PaymentMethodRow:
    """Resolve a payment method the caller may use; test aliases become real
    ones. Raises a 400 naming `payment_method` otherwise."""
    number = cards.TEST_PAYMENT_METHODS.get(payment_method_id)
    if number is not None and not key.livemode:
        return await node.create_payment_method(
            key.merchant_id, False, number, 12, time.gmtime().tm_year + TEST_CARD_YEARS, cards.brand_of(number)
        )
    row = None
    if len(payment_method_id) <= ID_CHARS_MAX:
        row = await node.payment_method(payment_method_id)
    if row is None or row.merchant_id != key.merchant_id or row.livemode != key.livemode:
        raise errors.invalid_request(
            f"No such PaymentMethod: '{payment_method_id[:64]}'", param="payment_method", code="resource_missing"
        )
    return row


def intent(node: Node, intent_id: str, key: ApiKeyRow) -> machine.PaymentIntent:
    """The caller's intent; raises a 404 otherwise."""
    found = node.intent(intent_id) if len(intent_id) <= ID_CHARS_MAX else None
    if found is None or found.merchant_id != key.merchant_id or found.livemode != key.livemode:
        raise errors.not_found("payment_intent", intent_id, "intent")
    return found


def child_object(
    key: ApiKeyRow,
    object_id: str,
    kind: str,
    find: Callable[[str], tuple[machine.PaymentIntent, Any] | None],
    render_child: Callable[..., Any],
) -> Response:
    """The refund or dispute `object_id` (found with its intent by `find`),
    rendered, if the caller owns its intent; raises a 404 otherwise."""
    found = find(object_id) if len(object_id) <= ID_CHARS_MAX else None
    if found is None or found[0].merchant_id != key.merchant_id or found[0].livemode != key.livemode:
        raise errors.not_found(kind, object_id, kind)
    return json_response(render_child(*found))
