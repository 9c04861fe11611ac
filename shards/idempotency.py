"""Idempotency keys, with Stripe's semantics.

A POST with an `Idempotency-Key` claims the key for its merchant. Once the
request reaches execution, its first response is stored in the same
transaction as the journal rows of its command (or, when the response waits
for a card network's answer, a "started" mark is stored with the command and
the response with the answer). Later requests with the key get that response
again; with other parameters they are refused; while the first one still
runs, they get a 409. A request refused before execution stores nothing.

PostgreSQL is the truth; memory only holds the keys whose first request is
running in this process, so a concurrent duplicate is caught before any
await. Redis is not used for this yet: every request with a key costs one
indexed lookup.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import msgspec

from shards.store import IdempotencyRow, Store

KEY_CHARS_MAX = 255
TTL_S_DEFAULT = 24 * 3600

# Renders what a caller is told, as (HTTP status, JSON body): the same
# function renders the live response and the stored one, so they agree.
Render = Callable[[Any], tuple[int, bytes]]

_canonical = msgspec.json.Encoder(order="sorted")


def fingerprint(method: str, path: str, params: dict[str, Any]) -> bytes:
    """What makes two requests "the same": endpoint and parameters."""
    return hashlib.sha256(method.encode() + b" " + path.encode() + b" " + _canonical.encode(params)).digest()


class Claim(msgspec.Struct, frozen=True):
    merchant_id: str
    key: str
    fingerprint: bytes
    render: Render
    expires_at_s: int

    def started(self, object_id: str | None) -> IdempotencyRow:
        return IdempotencyRow(self.merchant_id, self.key, self.fingerprint, None, None, object_id, self.expires_at_s)

    def completed(self, outcome: Any, object_id: str | None = None) -> IdempotencyRow:
        status, body = self.render(outcome)
        return IdempotencyRow(self.merchant_id, self.key, self.fingerprint, status, body, object_id, self.expires_at_s)


class IdempotencyRecords:
    def __init__(self, store: Store, *, ttl_s: int = TTL_S_DEFAULT) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._running: set[tuple[str, str]] = set()

    def begin_nowait(self, merchant_id: str, key: str) -> bool:
        """Mark the key as running here; False if it already is."""
        claimed = (merchant_id, key)
        if claimed in self._running:
            return False
        self._running.add(claimed)
        return True

    def end(self, merchant_id: str, key: str) -> None:
        self._running.discard((merchant_id, key))

    async def find(self, merchant_id: str, key: str, now_s: int) -> IdempotencyRow | None:
        return await self.store.find_idempotency(merchant_id, key, now_s)
