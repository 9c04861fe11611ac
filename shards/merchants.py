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
from shards.store import Store

KEY_RANDOM_CHARS = 32  # about 190 bits of base62-like randomness


class MerchantKeys(msgspec.Struct, frozen=True):
    id: str
    secret_key: str
    publishable_key: str


def _key(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(KEY_RANDOM_CHARS)[:KEY_RANDOM_CHARS].replace("-", "x").replace("_", "y")


async def create_merchant(
    store: Store, name: str, *, livemode: bool = False, fee_basis_points: int = 290, fee_fixed_minor: int = 30
) -> MerchantKeys:
    mode = "live" if livemode else "test"
    merchant_id = ids.make_id("acct", 0, time.time_ns() // 1_000_000, os.urandom(ids.RANDOM_BYTES))
    keys = MerchantKeys(merchant_id, _key(f"sk_{mode}_"), _key(f"pk_{mode}_"))
    await store.create_merchant(
        merchant_id,
        name,
        [(hash_key(keys.secret_key), "secret", livemode), (hash_key(keys.publishable_key), "publishable", livemode)],
        fee_basis_points=fee_basis_points,
        fee_fixed_minor=fee_fixed_minor,
    )
    return keys
