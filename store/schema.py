"""The schema: every table the store uses, and `migrate`, which creates
them and fixes the database's settings on first use."""

from __future__ import annotations

import secrets

import asyncpg

from store.errors import SchemaMismatch
from store.setup_intents import SETUP_INTENTS_SCHEMA_SQL
from store.vault_keys import KEY_VERSION_SQL, LEGACY_VERSION

SCHEMA_VERSION = 1

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS settings (
    key text PRIMARY KEY,
    value text NOT NULL
);
-- Who owns each partition: a lease with a fencing epoch (store/leases.py).
-- A journal append names the epoch it writes under and is refused once
-- the lease has moved on. Times are the database's clock, never a node's.
CREATE TABLE IF NOT EXISTS partition_leases (
    partition smallint PRIMARY KEY,
    owner text,
    epoch bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT 'epoch'
);
-- Workers that run once per cluster, on whichever node holds their lease.
CREATE TABLE IF NOT EXISTS worker_leases (
    name text PRIMARY KEY,
    owner text NOT NULL,
    expires_at timestamptz NOT NULL
);
-- The nodes of the cluster that shares this database: where each listens
-- (requests for partitions it owns are forwarded there) and when it last
-- said it was alive.
CREATE TABLE IF NOT EXISTS cluster_nodes (
    node_id text PRIMARY KEY,
    url text,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    leaving boolean NOT NULL DEFAULT false,
    mailbox_depth integer NOT NULL DEFAULT 0,
    -- The machine and process it runs as: a node restarting under its id
    -- on the same machine can tell that the previous process is gone.
    host text NOT NULL DEFAULT '',
    pid integer NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS merchants (
    id text PRIMARY KEY,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Fee terms per merchant: a percentage in basis points plus a fixed part.
ALTER TABLE merchants ADD COLUMN IF NOT EXISTS fee_basis_points integer NOT NULL DEFAULT 290
    CHECK (fee_basis_points BETWEEN 0 AND 10000);
ALTER TABLE merchants ADD COLUMN IF NOT EXISTS fee_fixed_minor integer NOT NULL DEFAULT 30
    CHECK (fee_fixed_minor BETWEEN 0 AND 100000);
-- Rate limits (a token bucket per key) and request signing, per merchant.
ALTER TABLE merchants ADD COLUMN IF NOT EXISTS rate_limit_per_s integer NOT NULL DEFAULT 100
    CHECK (rate_limit_per_s BETWEEN 1 AND 100000);
ALTER TABLE merchants ADD COLUMN IF NOT EXISTS rate_limit_burst integer NOT NULL DEFAULT 200
    CHECK (rate_limit_burst BETWEEN 1 AND 1000000);
ALTER TABLE merchants ADD COLUMN IF NOT EXISTS signing_secret_sealed bytea;
ALTER TABLE merchants ADD COLUMN IF NOT EXISTS require_signed_requests boolean NOT NULL DEFAULT false;
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash bytea PRIMARY KEY,
    merchant_id text NOT NULL REFERENCES merchants (id),
    kind text NOT NULL CHECK (kind IN ('secret', 'publishable')),
    livemode boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);
CREATE TABLE IF NOT EXISTS payment_methods (
    id text PRIMARY KEY,
    merchant_id text NOT NULL REFERENCES merchants (id),
    livemode boolean NOT NULL,
    brand text NOT NULL,
    last4 char(4) NOT NULL,
    exp_month smallint NOT NULL,
    exp_year smallint NOT NULL,
    fingerprint text NOT NULL,
    sealed_number bytea NOT NULL,
    created_s bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    partition smallint NOT NULL,
    seq bigint NOT NULL,
    entity_id text NOT NULL,
    kind text NOT NULL,
    body jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, seq)
);
CREATE INDEX IF NOT EXISTS journal_entity ON journal (entity_id);
-- The request behind a row (`payments trace req_...`); NULL for rows no
-- request caused (expiries, reconciliation) and for rows written before.
ALTER TABLE journal ADD COLUMN IF NOT EXISTS request_id text;
CREATE INDEX IF NOT EXISTS journal_request ON journal (request_id) WHERE request_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS idempotency_keys (
    merchant_id text NOT NULL,
    key text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint bytea NOT NULL,
    status_code smallint,          -- NULL while the first request is still running
    body bytea,
    object_id text,                -- what the request acts on, for a record left running by a crash
    expires_at_s bigint NOT NULL,
    PRIMARY KEY (merchant_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON idempotency_keys (expires_at_s);
CREATE TABLE IF NOT EXISTS postings (
    id text PRIMARY KEY,
    partition smallint NOT NULL,
    journal_seq bigint NOT NULL,
    intent_id text NOT NULL,
    debit_account_id text NOT NULL,
    credit_account_id text NOT NULL,
    amount bigint NOT NULL CHECK (amount >= 0),
    currency text NOT NULL,
    kind text NOT NULL,
    code text NOT NULL,
    pending_id text,
    created_s bigint NOT NULL,
    available_on_s bigint
);
-- Stripe-shaped events, written in the same transaction as the journal rows
-- they come from. Those past a partition's outbox cursor are the outbox: the
-- relay publishes them to the partition's stream, then moves the cursor.
CREATE TABLE IF NOT EXISTS events (
    id text PRIMARY KEY,
    partition smallint NOT NULL,
    seq bigint NOT NULL,           -- the journal row that led to it
    idx smallint NOT NULL,         -- its place among that row's events
    merchant_id text NOT NULL,
    livemode boolean NOT NULL,
    type text NOT NULL,
    intent_id text NOT NULL,
    object_id text NOT NULL,       -- what data.object shows: the intent, a refund, a dispute
    created_s bigint NOT NULL,
    intent bytea NOT NULL,         -- the intent as this event left it (msgspec JSON)
    UNIQUE (partition, seq, idx)
);
ALTER TABLE events ADD COLUMN IF NOT EXISTS request_id text;
CREATE INDEX IF NOT EXISTS events_merchant ON events (merchant_id, livemode, created_s DESC, id DESC);
CREATE INDEX IF NOT EXISTS events_created ON events (created_s);
CREATE TABLE IF NOT EXISTS outbox_cursor (
    partition smallint PRIMARY KEY,
    seq bigint NOT NULL,
    idx smallint NOT NULL
);
-- How far the webhook ingest has queued each partition's events. The relay
-- starts again from here after a restart or a Redis failure, so entries a
-- Redis restart lost are published again (the ingest ignores repeats).
CREATE TABLE IF NOT EXISTS stream_queued (
    partition smallint PRIMARY KEY,
    seq bigint NOT NULL,
    idx smallint NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id text PRIMARY KEY,
    merchant_id text NOT NULL REFERENCES merchants (id),
    livemode boolean NOT NULL,
    url text NOT NULL,
    enabled_events text[] NOT NULL,
    description text,
    metadata jsonb NOT NULL DEFAULT '{}',
    status text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    secret_sealed bytea NOT NULL,
    created_s bigint NOT NULL,
    deleted boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_merchant ON webhook_endpoints (merchant_id, livemode, created_s DESC);
-- One row per (endpoint, event): pending until delivered or given up on (dead).
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    endpoint_id text NOT NULL,
    event_id text NOT NULL,
    partition smallint NOT NULL,
    seq bigint NOT NULL,
    idx smallint NOT NULL,
    intent_id text NOT NULL,
    status text NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_ms bigint NOT NULL,
    updated_s bigint NOT NULL,
    PRIMARY KEY (endpoint_id, event_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_pending ON webhook_deliveries (endpoint_id, partition, seq, idx)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_event ON webhook_deliveries (event_id);
-- The dead-letter list and its count (the /ops page, the metrics).
CREATE INDEX IF NOT EXISTS webhook_deliveries_dead ON webhook_deliveries (updated_s DESC) WHERE status = 'dead';
-- Every try, kept for the merchant and the operator.
CREATE TABLE IF NOT EXISTS webhook_attempts (
    endpoint_id text NOT NULL,
    event_id text NOT NULL,
    attempt integer NOT NULL,
    at_ms bigint NOT NULL,
    status_code integer,
    latency_ms integer NOT NULL,
    error text,
    PRIMARY KEY (endpoint_id, event_id, attempt)
);
-- Customers (store/customers.py): who pays, never a card. A deleted one
-- keeps its row (its id is never reused) and answers as missing.
CREATE TABLE IF NOT EXISTS customers (
    id text PRIMARY KEY,
    merchant_id text NOT NULL REFERENCES merchants (id),
    livemode boolean NOT NULL,
    email text,
    name text,
    description text,
    phone text,
    metadata jsonb NOT NULL DEFAULT '{}',
    default_payment_method text,
    created_s bigint NOT NULL,
    deleted boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS customers_merchant ON customers (merchant_id, livemode, created_s DESC, id DESC) WHERE NOT deleted;
CREATE INDEX IF NOT EXISTS customers_email ON customers (merchant_id, livemode, email) WHERE NOT deleted;
-- Payment methods saved to customers (attach). One row per method, ever:
-- a detached method keeps its row with detached_s, and may not be
-- attached again, as Stripe has it.
CREATE TABLE IF NOT EXISTS customer_payment_methods (
    payment_method_id text PRIMARY KEY REFERENCES payment_methods (id),
    customer_id text NOT NULL REFERENCES customers (id),
    merchant_id text NOT NULL,
    livemode boolean NOT NULL,
    attached_s bigint NOT NULL,
    detached_s bigint
);
CREATE INDEX IF NOT EXISTS customer_payment_methods_customer ON customer_payment_methods (customer_id) WHERE detached_s IS NULL;
"""

# Tables of the audit archive (workers/audit/), created with the rest.
AUDIT_SCHEMA_SQL = """
-- Every entry of the archive's manifest, as the exact line the archive holds,
-- so that rewriting both a segment and the manifest is still caught.
CREATE TABLE IF NOT EXISTS audit_manifest (
    sequence bigint PRIMARY KEY CHECK (sequence >= 1),
    partition smallint NOT NULL,
    first_seq bigint NOT NULL CHECK (first_seq >= 1),
    last_seq bigint NOT NULL CHECK (last_seq >= first_seq),
    sha256 text NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL UNIQUE,
    entry text NOT NULL,
    mirrored_at timestamptz NOT NULL DEFAULT now()
);
-- How far each partition's journal is archived. Moved in the transaction
-- that mirrors the entry, which is written only once the segment and the
-- manifest line are durable in the archive.
CREATE TABLE IF NOT EXISTS audit_positions (
    partition smallint PRIMARY KEY,
    seq bigint NOT NULL,
    sequence bigint NOT NULL       -- the manifest entry that took it there
);
-- One exporter at a time, whichever node it runs on.
CREATE TABLE IF NOT EXISTS audit_lease (
    name text PRIMARY KEY,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);
"""

# Card key versions (store/vault_keys.py, shards/vault.py). Each card's
# version is generated from its sealed number; with `key_usable` (always
# true) it is a foreign key to a version that is not retired, so a version
# a card still uses cannot be retired, and a card cannot be written under a
# retired one. Existing cards are version 0, sealed before versions existed.
VAULT_SCHEMA_SQL = f"""
CREATE TABLE IF NOT EXISTS vault_key_versions (
    version integer PRIMARY KEY CHECK (version >= 0),
    state text NOT NULL CHECK (state IN ('active', 'retiring', 'retired')),
    usable boolean NOT NULL DEFAULT true,
    wrapped_key bytea,              -- the version's key wrapped by the master key
    created_at timestamptz NOT NULL DEFAULT now(),
    retiring_at timestamptz,
    retired_at timestamptz,
    UNIQUE (version, usable),
    CHECK (usable = (state <> 'retired')),
    CHECK ((state = 'active') = (retiring_at IS NULL)),
    CHECK ((state = 'retired') = (retired_at IS NOT NULL)),
    -- Version {LEGACY_VERSION} is derived from the master key, never stored.
    CHECK (CASE WHEN version = {LEGACY_VERSION} THEN wrapped_key IS NULL ELSE (wrapped_key IS NULL) = (state = 'retired') END)
);
CREATE UNIQUE INDEX IF NOT EXISTS vault_key_versions_one_active ON vault_key_versions ((true)) WHERE state = 'active';
INSERT INTO vault_key_versions (version, state, retiring_at) VALUES ({LEGACY_VERSION}, 'retiring', now())
    ON CONFLICT (version) DO NOTHING;
-- Only when missing: ALTER TABLE locks the table even when it changes nothing,
-- and every node's start runs this.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'payment_methods_key_version_fkey') THEN
        ALTER TABLE payment_methods ADD COLUMN IF NOT EXISTS key_version integer GENERATED ALWAYS AS ({KEY_VERSION_SQL}) STORED;
        ALTER TABLE payment_methods ADD COLUMN IF NOT EXISTS key_usable boolean NOT NULL DEFAULT true CHECK (key_usable);
        CREATE INDEX IF NOT EXISTS payment_methods_key_version ON payment_methods (key_version, id);
        ALTER TABLE payment_methods ADD CONSTRAINT payment_methods_key_version_fkey
            FOREIGN KEY (key_version, key_usable) REFERENCES vault_key_versions (version, usable);
    END IF;
END $$;
"""


async def migrate(connection: asyncpg.Connection, partitions: int) -> dict[str, str]:
    """(In a transaction) Create what is missing, record the schema version
    and `partitions` unless the database already has them; returns the
    database's settings."""
    # One migration at a time, whichever node runs it.
    await connection.execute("SELECT pg_advisory_xact_lock(727274)")
    await connection.execute(SCHEMA_SQL + AUDIT_SCHEMA_SQL + VAULT_SCHEMA_SQL + SETUP_INTENTS_SCHEMA_SQL)
    await connection.execute(
        "INSERT INTO settings (key, value) VALUES ('schema_version', $1),"
        " ('partitions', $2) ON CONFLICT (key) DO NOTHING",
        str(SCHEMA_VERSION),
        str(partitions),
    )
    # The secret nodes sign forwarded requests with (shards/cluster.py).
    await connection.execute(
        "INSERT INTO settings (key, value) VALUES ('cluster_secret', $1) ON CONFLICT (key) DO NOTHING", secrets.token_hex(32)
    )
    count = int(await connection.fetchval("SELECT value FROM settings WHERE key = 'partitions'"))
    await connection.execute(
        "INSERT INTO partition_leases (partition) SELECT generate_series(0, $1 - 1) ON CONFLICT (partition) DO NOTHING", count
    )
    rows = await connection.fetch("SELECT key, value FROM settings")
    return {row["key"]: row["value"] for row in rows}


def partition_count(settings: dict[str, str]) -> int:
    """The partition count the database was created with, which wins over
    the one asked for (ids already issued encode it). Raises SchemaMismatch
    when the database's schema version is not this code's."""
    if int(settings["schema_version"]) != SCHEMA_VERSION:
        raise SchemaMismatch(f"database schema version {settings['schema_version']}, code {SCHEMA_VERSION}")
    return int(settings["partitions"])
