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

A stored fingerprint must not let anyone holding a copy of the database test
guesses of what was sent: the parameters of `POST /v1/payment_methods` are a
card number and a CVC, and the same row's body shows the last four digits
and the expiry. So a fingerprint is an HMAC under a key derived from the
vault's master key, over the parameters with every card number replaced by
the vault's (keyed) card fingerprint and every CVC dropped: a retry with
another CVC is the same request. Its first byte says which form it is in:

  FINGERPRINT_KEYED   HMAC(key, the request with card secrets replaced)
  FINGERPRINT_LEGACY  HMAC(key, SHA-256 of the raw request), for a record
                      written before keying; the SHA-256 is recomputed in
                      memory from a retry and never stored again.

Records older than that hold the bare 32-byte SHA-256; a node rewrites them
at start (`rekey_legacy_fingerprints`) and still recognises one it has not
reached yet.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import msgspec
import structlog

from shards.vault import Vault
from store.postgres import Store
from store.rows import IdempotencyRow

log = structlog.get_logger("shards.idempotency")

KEY_CHARS_MAX = 255
TTL_S_DEFAULT = 24 * 3600

# Renders what a caller is told, as (HTTP status, JSON body): the same
# function renders the live response and the stored one, so they agree.
Render = Callable[[Any], tuple[int, bytes]]

# The first byte of a stored fingerprint (see the module docstring).
FINGERPRINT_KEYED = 1
FINGERPRINT_LEGACY = 2
# What the code before keyed fingerprints stored: a bare SHA-256.
LEGACY_DIGEST_BYTES = 32
# Records read and rewritten per round trip when rekeying legacy ones.
REKEY_BATCH_ROWS_MAX = 1000

_canonical = msgspec.json.Encoder(order="sorted")

# Maps a card number (digits only) to the vault's keyed card fingerprint.
CardFingerprint = Callable[[str], str]


def without_card_secrets(params: Any, card_fingerprint: CardFingerprint, *, in_card: bool = False) -> Any:
    """A copy of `params` in which the `number` of every `card` object, at any
    depth, is replaced by `card_fingerprint` of it (spaces removed) and every
    `cvc` is gone. Nothing else changes; `params` itself is not modified."""
    if isinstance(params, dict):
        kept: dict[Any, Any] = {}
        for name, value in params.items():
            if name == "cvc":
                continue
            if in_card and name == "number":
                text = value if isinstance(value, str) else _canonical.encode(value).decode()
                kept[name] = card_fingerprint(text.replace(" ", ""))
            else:
                kept[name] = without_card_secrets(value, card_fingerprint, in_card=name == "card")
        return kept
    if isinstance(params, list):
        return [without_card_secrets(value, card_fingerprint) for value in params]
    return params


def fingerprint_input(method: str, path: str, params: dict[str, Any], card_fingerprint: CardFingerprint) -> bytes:
    """The bytes a keyed fingerprint is an HMAC of: endpoint and parameters,
    with card numbers as their card fingerprints and no CVC."""
    return method.encode() + b" " + path.encode() + b" " + _canonical.encode(without_card_secrets(params, card_fingerprint))


def fingerprint(key: bytes, method: str, path: str, params: dict[str, Any], card_fingerprint: CardFingerprint) -> bytes:
    """What makes two requests "the same": endpoint and parameters, the CVC
    aside. The same inputs always give the same bytes; without `key` they
    cannot be recomputed from guesses."""
    digest = hmac.new(key, fingerprint_input(method, path, params, card_fingerprint), hashlib.sha256).digest()
    return bytes([FINGERPRINT_KEYED]) + digest


def legacy_digest(method: str, path: str, params: dict[str, Any]) -> bytes:
    """The fingerprint as the code before keying stored it (raw parameters,
    card number and CVC included). Only ever compared in memory."""
    return hashlib.sha256(method.encode() + b" " + path.encode() + b" " + _canonical.encode(params)).digest()


def rekeyed_legacy(key: bytes, digest: bytes) -> bytes:
    """What a stored legacy digest is rewritten to."""
    assert len(digest) == LEGACY_DIGEST_BYTES
    return bytes([FINGERPRINT_LEGACY]) + hmac.new(key, digest, hashlib.sha256).digest()


def matches(
    stored: bytes,
    key: bytes,
    method: str,
    path: str,
    params: dict[str, Any],
    card_fingerprint: CardFingerprint,
    keyed: bytes | None = None,
) -> bool:
    """Whether a request is the one whose fingerprint was stored, whichever
    form it was stored in. An unknown form matches nothing. `keyed` is the
    request's keyed fingerprint when the caller has it already."""
    if len(stored) == LEGACY_DIGEST_BYTES:
        # Not rewritten yet (an older node wrote it after this one started).
        return hmac.compare_digest(stored, legacy_digest(method, path, params))
    if stored[:1] == bytes([FINGERPRINT_KEYED]):
        return hmac.compare_digest(stored, keyed if keyed is not None else fingerprint(key, method, path, params, card_fingerprint))
    if stored[:1] == bytes([FINGERPRINT_LEGACY]):
        return hmac.compare_digest(stored, rekeyed_legacy(key, legacy_digest(method, path, params)))
    return False


async def rekey_legacy_fingerprints(store: Store, vault: Vault, *, batch_rows_max: int = REKEY_BATCH_ROWS_MAX) -> int:
    """Rewrite every record that still holds a bare SHA-256 fingerprint into
    its keyed legacy form, walking the table in key order `batch_rows_max`
    records per round trip. Returns how many were rewritten. Safe to run on
    several nodes at once and again after an interruption: a record is only
    replaced while it still holds the digest that was read. Raises
    StoreUnavailable if the database goes away; what was rewritten stays."""
    key = vault.idempotency_key
    after = ("", "")
    rewritten = 0
    while True:
        page = await store.idempotency.fingerprints_after(after, batch_rows_max)
        legacy = [
            (merchant_id, name, stored, rekeyed_legacy(key, stored))
            for merchant_id, name, stored in page
            if len(stored) == LEGACY_DIGEST_BYTES
        ]
        if legacy:
            rewritten += await store.idempotency.replace_fingerprints(legacy)
        if len(page) < batch_rows_max:
            break
        after = (page[-1][0], page[-1][1])
    if rewritten:
        log.info("idempotency_fingerprints_rekeyed", count=rewritten)
    return rewritten


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
    def __init__(self, store: Store, vault: Vault, *, ttl_s: int = TTL_S_DEFAULT) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._key = vault.idempotency_key
        self._card_fingerprint = vault.fingerprint
        self._running: set[tuple[str, str]] = set()

    def fingerprint(self, method: str, path: str, params: dict[str, Any]) -> bytes:
        """The keyed fingerprint to store for a request."""
        return fingerprint(self._key, method, path, params, self._card_fingerprint)

    def matches(self, stored: bytes, method: str, path: str, params: dict[str, Any], keyed: bytes | None = None) -> bool:
        """Whether a request is the same as the one a stored record is for
        (`keyed`: its fingerprint, if already computed)."""
        return matches(stored, self._key, method, path, params, self._card_fingerprint, keyed)

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
        return await self.store.idempotency.find(merchant_id, key, now_s)
