"""Merchants and their API keys.

A key is shown once, when it is made, and stored only as a hash. Secret keys
(`sk_test_` / `sk_live_`) may do everything; publishable keys (`pk_`) only
what a browser may do.
"""

from __future__ import annotations

import os
import secrets
import time

import msgspec

from engine import ids
from shards.node import hash_key
from shards.vault import Vault
from store.postgres import Store
from store.rows import MerchantTerms

KEY_RANDOM_CHARS = 32  # about 190 bits of base62-like randomness


class MerchantKeys(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str
    secret_key: str
    publishable_key: str
    signing_secret: str | None = None  # only when requests must be signed


def new_secret_key(livemode: bool) -> str:
    return _key("sk_live_" if livemode else "sk_test_")


def new_signing_secret() -> str:
    return "pss_" + secrets.token_urlsafe(32)


async def roll_key(store: Store, merchant_id: str, *, grace_s: int) -> str | None:
    """Issue a new secret key; the old ones keep working for `grace_s`.
    None when there is no such merchant."""

    def make_key(livemode: bool) -> tuple[str, bytes]:
        secret_key = new_secret_key(livemode)
        return secret_key, hash_key(secret_key)

    return await store.merchants.roll_secret_key(merchant_id, grace_s, make_key)


def _key(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(KEY_RANDOM_CHARS)[:KEY_RANDOM_CHARS].replace("-", "x").replace("_", "y")


async def create_merchant(
    store: Store,
    name: str,
    *,
    livemode: bool = False,
    terms: MerchantTerms = MerchantTerms(),
    signing_vault: Vault | None = None,
) -> MerchantKeys:
    """Create a merchant. With `signing_vault`, its requests must be signed:
    a signing secret is made, stored sealed, and shown once in the result."""
    mode = "live" if livemode else "test"
    merchant_id = ids.make_id("acct", 0, time.time_ns() // 1_000_000, os.urandom(ids.RANDOM_BYTES))
    signing_secret = None
    if signing_vault is not None:
        signing_secret = new_signing_secret()
        sealed = signing_vault.seal(signing_secret, merchant_id)
        terms = msgspec.structs.replace(terms, signing_secret_sealed=sealed, require_signed_requests=True)
    keys = MerchantKeys(merchant_id, _key(f"sk_{mode}_"), _key(f"pk_{mode}_"), signing_secret)
    await store.merchants.create(
        merchant_id,
        name,
        [(hash_key(keys.secret_key), "secret", livemode), (hash_key(keys.publishable_key), "publishable", livemode)],
        terms,
    )
    return keys
