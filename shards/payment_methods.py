"""Payment methods: a card number sealed by the vault as it comes in, the
row journaled, and kept in a bounded cache for the network calls that read
it back and open the number (`opened`, called only by shards/effects.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
import structlog

from engine import ids
from shards.cache import BoundedCache
from shards.idempotency import Claim
from shards.vault import CardKeyRetired, CardKeys, Vault
from store.errors import StoreUnavailable
from store.postgres import Store
from store.rows import PaymentMethodRow
from store.vault_keys import KeyVersionRetired, VaultKeys, key_version_of

log = structlog.get_logger("shards.payment_methods")


def key_versions(store: Store) -> VaultKeys:
    """The store's card key versions: its own domain when it has one (the
    memory store), else one over its database."""
    found = getattr(store, "vault_keys", None)
    return found if found is not None else VaultKeys(store.database)


async def open_card_keys(store: Store, vault: Vault) -> None:
    """Prove `vault`'s master key opens the database's card key versions,
    and make a first active version if there is none: for a node's start,
    before it serves anything. Raises VaultKeyError (a wrong key; the
    message names the version, never a key) or StoreUnavailable."""
    await CardKeys(key_versions(store), vault).open()


class PaymentMethods:
    def __init__(self, store: Store, vault: Vault, new_id: Callable[[str], str], *, entries_max: int) -> None:
        self.store = store
        self.vault = vault
        self.keys = CardKeys(key_versions(store), vault)
        self._new_id = new_id
        self._rows = BoundedCache(entries_max)

    async def create(
        self,
        merchant_id: str,
        livemode: bool,
        number: str,
        exp_month: int,
        exp_year: int,
        brand: str,
        claim: Claim | None = None,
    ) -> PaymentMethodRow:
        """Seal the number under the active key version and store the row
        (with the claim's idempotency record, in one write). Raises
        StoreUnavailable when it is not stored."""
        payment_method_id = self._new_id("pm")
        row = PaymentMethodRow(
            id=payment_method_id,
            merchant_id=merchant_id,
            livemode=livemode,
            brand=brand,
            last4=number[-4:],
            exp_month=exp_month,
            exp_year=exp_year,
            fingerprint=self.vault.fingerprint(number),
            sealed_number=await self.keys.seal(number, payment_method_id),
            created_s=int(time.time()),
        )
        idempotency = None if claim is None else claim.completed(row, row.id)
        try:
            await self.store.merchants.insert_payment_method(row, idempotency)
        except KeyVersionRetired:
            # Sealed with a version read so long ago that it was retired
            # meanwhile (nothing was written): seal it again, once.
            await self.keys.refresh()
            row = msgspec.structs.replace(row, sealed_number=await self.keys.seal(number, payment_method_id))
            await self.store.merchants.insert_payment_method(row, idempotency)
        self._rows.put(row.id, row)
        return row

    async def get(self, payment_method_id: str) -> PaymentMethodRow | None:
        """The row, None for an id that is not one. Raises StoreUnavailable
        when it is not cached and the database cannot be read."""
        row = self._rows.get(payment_method_id)
        if row is None:
            if ids.parse_id(payment_method_id, "pm") is None:
                return None
            row = await self.store.merchants.get_payment_method(payment_method_id)
            if row is not None:
                self._rows.put(row.id, row)
        return row

    async def opened(self, method: PaymentMethodRow) -> tuple[PaymentMethodRow, str]:
        """The row as stored and its card number opened, for the network
        call that carries it. A cached row sealed under another version than
        the active one is read again first (the re-wrap job may have moved
        it, and its version be retired). Raises StoreUnavailable when the
        database is needed and cannot be read."""
        if key_version_of(method.sealed_number) != await self.keys.current_version():
            method = await self._latest(method)
        try:
            return method, await self.keys.unseal(method.sealed_number, method.id)
        except CardKeyRetired:
            # Cached before its version was retired: the stored row is newer.
            stored = await self.store.merchants.get_payment_method(method.id)
            assert stored is not None, method.id
            self._rows.put(stored.id, stored)
            return stored, await self.keys.unseal(stored.sealed_number, stored.id)

    async def _latest(self, method: PaymentMethodRow) -> PaymentMethodRow:
        """The row as stored now (cached again), or `method` itself when the
        database cannot say."""
        try:
            row = await self.store.merchants.get_payment_method(method.id)
        except StoreUnavailable as error:
            log.warning("payment_method_not_read_again", payment_method_id=method.id, error=str(error))
            return method
        if row is None:
            return method
        self._rows.put(row.id, row)
        return row
