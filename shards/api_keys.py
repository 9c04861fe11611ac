"""The auth cache: API keys by their hash, kept for a short while so that
a request costs no database read, and short enough that a key rolled on
another node stops working here soon after its grace period ends."""

from __future__ import annotations

import hashlib
import time

from shards.cache import BoundedCache
from shards.vault import Vault
from store.postgres import Store
from store.rows import ApiKeyRow


def hash_key(secret: str) -> bytes:
    """API keys carry 190+ random bits, so one SHA-256 is enough to store them."""
    return hashlib.sha256(secret.encode()).digest()


class ApiKeyCache:
    def __init__(self, store: Store, vault: Vault, *, entries_max: int, ttl_s: float) -> None:
        self.store = store
        self.vault = vault
        self.ttl_s = ttl_s
        self._rows = BoundedCache(entries_max)

    async def authenticate(self, secret: str) -> ApiKeyRow | None:
        """The key's row, if the key works now. Raises StoreUnavailable when
        the row is not cached and the database cannot be read."""
        key_hash = hash_key(secret)
        now_s = time.time()
        cached = self._rows.get(key_hash)
        if cached is not None and cached[1] > now_s:
            row = cached[0]
        else:
            row = await self.store.merchants.find_api_key(key_hash)
            if row is not None:
                self._rows.put(key_hash, (row, now_s + self.ttl_s))
        if row is not None and row.expires_at_s is not None and row.expires_at_s <= now_s:
            return None
        return row

    def signing_secret(self, key: ApiKeyRow) -> str | None:
        """The key's request-signing secret in clear, None when it has none."""
        if key.signing_secret_sealed is None:
            return None
        return self.vault.unseal(key.signing_secret_sealed, key.merchant_id)
