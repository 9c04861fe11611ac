"""What the store reads and writes, as frozen msgspec Structs: one per row
shape, shared by the PostgreSQL store and the memory store."""

from __future__ import annotations

import msgspec

from engine.ledger import Transfer

# ------------------------------------------------------------------ journal


class JournalRow(msgspec.Struct, frozen=True):
    seq: int
    entity_id: str
    kind: str
    body: bytes
    # Ledger transfers the event makes; written to `postings` in the same
    # transaction so SQL can check the books without decoding events.
    transfers: tuple[Transfer, ...] = ()
    # The request that caused the row (Request-Id), for tracing; not read back.
    request_id: str | None = None


class IdempotencyRow(msgspec.Struct, frozen=True):
    """The first response to a request made with an idempotency key, or the
    mark that it started (status_code None) while its answer is awaited."""

    merchant_id: str
    key: str
    fingerprint: bytes
    status_code: int | None
    body: bytes | None
    object_id: str | None
    expires_at_s: int


class EventRow(msgspec.Struct, frozen=True):
    """A Stripe-shaped event as stored: the intent snapshot is rendered into
    `data.object` by the gateway, on read and on delivery."""

    id: str
    partition: int
    seq: int
    idx: int
    merchant_id: str
    livemode: bool
    type: str
    intent_id: str
    object_id: str
    created_s: int
    intent: bytes
    # The API request that caused the change (Stripe's `request.id`); None
    # for changes nobody asked for (an expiry, a network's later notice).
    request_id: str | None = None


class EventQuery(msgspec.Struct, frozen=True):
    merchant_id: str
    livemode: bool
    since_s: int
    limit: int
    types: tuple[str, ...] = ()  # SQL LIKE patterns
    after: tuple[int, str] | None = None  # (created_s, id) of the last row seen
    before: tuple[int, str] | None = None
    until_s: int | None = None
    # True: only events delivered to every endpoint; False: only those still
    # pending or given up on somewhere (the dead-letter list is among them).
    delivery_success: bool | None = None


# ------------------------------------------- merchants, keys, payment methods


class MerchantTerms(msgspec.Struct, frozen=True):
    """What an operator sets for a merchant when creating it."""

    fee_basis_points: int = 290
    fee_fixed_minor: int = 30
    rate_limit_per_s: int = 100
    rate_limit_burst: int = 200
    signing_secret_sealed: bytes | None = None
    require_signed_requests: bool = False


class ApiKeyRow(MerchantTerms, frozen=True, kw_only=True):
    """A working key, with the terms of the merchant it belongs to."""

    merchant_id: str
    kind: str
    livemode: bool
    expires_at_s: int | None = None


class PaymentMethodRow(msgspec.Struct, frozen=True):
    id: str
    merchant_id: str
    livemode: bool
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    fingerprint: str
    sealed_number: bytes
    created_s: int


# ---------------------------------------------------------------- customers


class CustomerRow(msgspec.Struct, frozen=True):
    """A merchant's customer (store/customers.py). No card data: saved cards
    are payment methods, linked by AttachmentRow."""

    id: str
    merchant_id: str
    livemode: bool
    email: str | None
    name: str | None
    description: str | None
    phone: str | None
    metadata: dict[str, str]
    # invoice_settings.default_payment_method: one of its attached methods.
    default_payment_method: str | None
    created_s: int
    deleted: bool = False


class AttachmentRow(msgspec.Struct, frozen=True):
    """A payment method saved to a customer; `detached_s` once taken off
    (after which the method is never attached or used again)."""

    payment_method_id: str
    customer_id: str
    merchant_id: str
    livemode: bool
    attached_s: int
    detached_s: int | None = None


# ----------------------------------------------------------------- webhooks


class WebhookEndpointRow(msgspec.Struct, frozen=True):
    id: str
    merchant_id: str
    livemode: bool
    url: str
    enabled_events: tuple[str, ...]
    description: str | None
    metadata: dict[str, str]
    status: str
    secret_sealed: bytes
    created_s: int


class DeliveryRow(msgspec.Struct, frozen=True):
    """One event on its way to one endpoint."""

    endpoint_id: str
    event_id: str
    partition: int
    seq: int
    idx: int
    intent_id: str
    status: str  # pending, delivered, dead
    attempts: int
    next_attempt_ms: int
    updated_s: int


class DeliveryAttemptRow(msgspec.Struct, frozen=True):
    endpoint_id: str
    event_id: str
    attempt: int
    at_ms: int
    status_code: int | None
    latency_ms: int
    error: str | None


# ------------------------------------------------------------ audit archive


class JournalRecord(msgspec.Struct, frozen=True):
    """A journal row as the audit archive keeps it: the body as PostgreSQL
    prints the jsonb, the time as microseconds since the epoch."""

    partition: int
    seq: int
    entity_id: str
    kind: str
    body: str
    recorded_at_us: int


class AuditEntryRow(msgspec.Struct, frozen=True):
    """One manifest entry for the database mirror; `entry` is its exact line."""

    sequence: int
    partition: int
    first_seq: int
    last_seq: int
    sha256: str
    prev_hash: str
    hash: str
    entry: str


class AuditState(msgspec.Struct, frozen=True):
    partitions: int
    positions: dict[int, int]      # partition -> last archived journal seq
    head_sequence: int             # 0 before the first export
    head_entry: str | None
