"""Merchants, their API keys (stored only as hashes) and their payment
methods (card numbers stored only sealed)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import asyncpg
import msgspec

from store.database import Database
from store.idempotency import IDEMPOTENCY_UPSERT
from store.rows import ApiKeyRow, IdempotencyRow, MerchantTerms, PaymentMethodRow
from store.vault_keys import KeyVersionRetired

# Makes a new secret key for a merchant in the given mode: (key, its hash).
MakeKey = Callable[[bool], tuple[str, bytes]]


async def _create(
    connection: asyncpg.Connection, merchant_id: str, name: str, keys: Sequence[tuple[bytes, str, bool]], terms: MerchantTerms
) -> None:
    await connection.execute(
        "INSERT INTO merchants (id, name, fee_basis_points, fee_fixed_minor, rate_limit_per_s,"
        " rate_limit_burst, signing_secret_sealed, require_signed_requests)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        merchant_id,
        name,
        *msgspec.structs.astuple(terms),
    )
    await connection.executemany(
        "INSERT INTO api_keys (key_hash, merchant_id, kind, livemode) VALUES ($1, $2, $3, $4)",
        [(key_hash, merchant_id, kind, livemode) for key_hash, kind, livemode in keys],
    )


async def _roll_secret_key(connection: asyncpg.Connection, merchant_id: str, grace_s: int, make_key: MakeKey) -> str | None:
    # Lock the merchant so two rolls at once cannot both keep
    # their key alive past the other's grace period.
    merchant = await connection.fetchrow(
        "SELECT m.id, (SELECT bool_or(k.livemode) FROM api_keys k WHERE k.merchant_id = m.id) AS livemode"
        " FROM merchants m WHERE m.id = $1 FOR UPDATE",
        merchant_id,
    )
    if merchant is None:
        return None
    secret_key, key_hash = make_key(merchant["livemode"])
    await connection.execute(
        "UPDATE api_keys SET expires_at = LEAST(coalesce(expires_at, 'infinity'), now() + make_interval(secs => $2))"
        " WHERE merchant_id = $1 AND kind = 'secret'",
        merchant_id,
        grace_s,
    )
    await connection.execute(
        "INSERT INTO api_keys (key_hash, merchant_id, kind, livemode) VALUES ($1, $2, 'secret', $3)",
        key_hash,
        merchant_id,
        merchant["livemode"],
    )
    return secret_key


async def _find_api_key(connection: asyncpg.Connection, key_hash: bytes) -> ApiKeyRow | None:
    row = await connection.fetchrow(
        "SELECT k.merchant_id, k.kind, k.livemode, m.fee_basis_points, m.fee_fixed_minor,"
        " m.rate_limit_per_s, m.rate_limit_burst, m.signing_secret_sealed, m.require_signed_requests,"
        " extract(epoch FROM k.expires_at)::bigint AS expires_at_s"
        " FROM api_keys k JOIN merchants m ON m.id = k.merchant_id"
        " WHERE k.key_hash = $1 AND (k.expires_at IS NULL OR k.expires_at > now())",
        key_hash,
    )
    return None if row is None else ApiKeyRow(**dict(row))


async def _insert_payment_method(connection: asyncpg.Connection, row: PaymentMethodRow, idempotency: IdempotencyRow | None) -> None:
    if idempotency is not None:
        await connection.execute(IDEMPOTENCY_UPSERT, *msgspec.structs.astuple(idempotency))
    try:
        await connection.execute(
            "INSERT INTO payment_methods (id, merchant_id, livemode, brand, last4, exp_month,"
            " exp_year, fingerprint, sealed_number, created_s)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            *msgspec.structs.astuple(row),
        )
    except asyncpg.ForeignKeyViolationError as error:
        # Sealed under a key version retired meanwhile: the caller seals
        # again under the active one (shards.payment_methods).
        if error.constraint_name == "payment_methods_key_version_fkey":
            # PostgreSQL's detail names the row's key: (key_version, key_usable)=(1, t).
            version = re.search(r"\)=\((\d+),", error.detail or "")
            raise KeyVersionRetired(f"card key version {version.group(1) if version else '?'} is retired") from error
        raise


async def _get_payment_method(connection: asyncpg.Connection, payment_method_id: str) -> PaymentMethodRow | None:
    row = await connection.fetchrow(
        "SELECT id, merchant_id, livemode, brand, last4, exp_month, exp_year, fingerprint,"
        " sealed_number, created_s FROM payment_methods WHERE id = $1",
        payment_method_id,
    )
    return None if row is None else PaymentMethodRow(**dict(row))


class Merchants:
    """Merchants, API keys and payment methods. Each method is one bridged
    call and raises StoreUnavailable when the database is away."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def create(
        self, merchant_id: str, name: str, keys: Sequence[tuple[bytes, str, bool]], terms: MerchantTerms = MerchantTerms()
    ) -> None:
        """Insert a merchant and its keys, given as (key_hash, kind, livemode), together."""
        await self._database.call(_create, merchant_id, name, keys, terms, transaction=True)

    async def roll_secret_key(self, merchant_id: str, grace_s: int, make_key: MakeKey) -> str | None:
        """Add a new secret key, made by `make_key(livemode)` as (key, hash);
        the merchant's other secret keys stop working after `grace_s` (sooner
        if they were already due to). None when there is no such merchant."""
        return await self._database.call(_roll_secret_key, merchant_id, grace_s, make_key, transaction=True)

    async def find_api_key(self, key_hash: bytes) -> ApiKeyRow | None:
        """The key with this hash and its merchant's terms, while it works."""
        return await self._database.call(_find_api_key, key_hash)

    async def insert_payment_method(self, row: PaymentMethodRow, idempotency: IdempotencyRow | None = None) -> None:
        """Store a payment method and, in the same transaction, the
        idempotency record of the request that made it."""
        await self._database.call(_insert_payment_method, row, idempotency, transaction=True)

    async def get_payment_method(self, payment_method_id: str) -> PaymentMethodRow | None:
        """A payment method by id, or None."""
        return await self._database.call(_get_payment_method, payment_method_id)
