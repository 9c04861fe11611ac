"""Payment methods: a card number sealed by the vault as it comes in, the
row journaled, and kept in a bounded cache for the network calls that read
it back."""

from __future__ import annotations

import time
from collections.abc import Callable

from engine import ids
from shards.cache import BoundedCache
from shards.idempotency import Claim
from shards.vault import Vault
from store.postgres import Store
from store.rows import PaymentMethodRow


class PaymentMethods:
    def __init__(self, store: Store, vault: Vault, new_id: Callable[[str], str], *, entries_max: int) -> None:
        self.store = store
        self.vault = vault
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
        """Seal the number and store the row (with the claim's idempotency
        record, in one write). Raises StoreUnavailable when it is not stored."""
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
            sealed_number=self.vault.seal(number, payment_method_id),
            created_s=int(time.time()),
        )
        await self.store.merchants.insert_payment_method(row, None if claim is None else claim.completed(row, row.id))
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
