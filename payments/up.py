"""The node process: one trio run holding the gateway, the shard actors and
the simulator, with trio-asyncio bridging to asyncpg and redis.

Shutdown on SIGINT or SIGTERM is in order: stop taking connections and let
requests in flight finish (hypercorn's graceful shutdown), then close the
mailboxes so each actor drains what is queued and journals the answers of
its open network calls, then close the database pool.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import secrets
import socket
from collections.abc import AsyncIterator
import signal
from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio
import trio_asyncio
from cryptography.exceptions import InvalidTag
from hypercorn.config import Config as HypercornConfig

from gateway import checkout, operations, ops_page
from gateway.app import create_app
from gateway.door import REFUSAL_KINDS
from gateway.listener import ConnectionLimits, hypercorn_config, serve_guarded
from gateway.objects import render_event
from shards.merchants import MerchantKeys, create_merchant
from shards.actor import ShardConfig
from shards.cluster import ClusterConfig
from shards.node import Node, NodeConfig, hash_key, run_node
from shards import idempotency
from shards.vault import Vault
from shards.network_client import HttpCardNetwork
from shards.payment_methods import open_card_keys
from simulators import faults
from simulators import routes as simulator_routes
from simulators.card_network import CardNetwork
from store.errors import RedisUnavailable
from store.postgres import Store
from store.redis_link import RedisLink
from workers import audit
from workers.events import EventWorkers
from workers.node_workers import run_node_workers
from workers.webhook_delivery import DispatchConfig, parse_schedule

log = structlog.get_logger("payments.up")

TEST_MERCHANT_FILE = "test_merchant.json"


class UpSettings(msgspec.Struct, frozen=True):
    host: str
    port: int
    data_dir: Path
    # None: the database's count (16 for a new database); another count
    # than the database's is refused (ids already issued encode it).
    partitions: int | None
    database_url: str
    redis_url: str
    seed: int = 0
    network_latency_ms: tuple[int, int] = (1, 5)
    redis_prefix: str = "payments:"
    authorization_expiry_s: int = 7 * 86_400
    settlement_delay_s: int = 2 * 86_400
    simulator_url: str | None = None
    dispute_fee_minor: int = 1500
    faults: str = ""
    archive_every_s: float = 300.0
    retention_days: int | None = 30
    allow_private_webhooks: bool = False
    connections_per_client_max: int = 256
    header_timeout_s: int = 10
    requests_in_flight_max: int = 64
    # The node's id in the cluster sharing the database (None: this
    # machine's name and the port), its lease TTL, and the URL peers forward
    # requests to (None: where it listens).
    node_id: str | None = None
    lease_ttl_s: float = 10.0
    public_url: str | None = None
    # Make (once) and print the local test merchant's keys.
    test_merchant: bool = True
    # The node's PostgreSQL connections (PAYMENTS_DATABASE_CONNECTIONS):
    # nodes sharing one server share its max_connections.
    database_connections: int = 20


class StoredTestMerchant(msgspec.Struct, frozen=True):
    """What the data dir keeps of the local test merchant: its secret key
    only sealed by the vault, so the file alone gives nobody the key."""

    id: str
    publishable_key: str
    secret_key_sealed: str | None = None  # base64 of the vault's seal
    secret_key: str | None = None  # written by older versions, in clear


def _read_test_merchant(path: Path, vault: Vault) -> MerchantKeys | None:
    if not path.exists():
        return None
    stored = msgspec.json.decode(path.read_bytes(), type=StoredTestMerchant)
    secret = stored.secret_key
    if stored.secret_key_sealed is not None:
        try:
            secret = vault.unseal(base64.b64decode(stored.secret_key_sealed), stored.id)
        except InvalidTag:
            log.warning("test_merchant_key_unreadable", reason="sealed under another card key")
            return None
    return None if secret is None else MerchantKeys(stored.id, secret, stored.publishable_key)


def _write_test_merchant(path: Path, vault: Vault, keys: MerchantKeys) -> None:
    sealed = base64.b64encode(vault.seal(keys.secret_key, keys.id)).decode()
    stored = StoredTestMerchant(keys.id, keys.publishable_key, secret_key_sealed=sealed)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(msgspec.json.encode(stored))


async def test_merchant(store: Store, data_dir: Path, vault: Vault) -> MerchantKeys:
    """The local test merchant: made once, its secret key kept sealed (in a
    file of mode 0600) in the data dir. A file from an older version, with
    the key in clear, is rewritten sealed."""
    path = data_dir / TEST_MERCHANT_FILE
    keys = _read_test_merchant(path, vault)
    if keys is not None and await store.merchants.find_api_key(hash_key(keys.secret_key)) is not None:
        _write_test_merchant(path, vault, keys)
        return keys
    keys = await create_merchant(store, "Test merchant")
    _write_test_merchant(path, vault, keys)
    return keys


@contextlib.asynccontextmanager
async def open_network(settings: UpSettings) -> AsyncIterator[Any]:
    """The card networks: the simulator service when PAYMENTS_SIMULATOR_URL
    names one, else the simulator in this process."""
    if settings.simulator_url:
        async with HttpCardNetwork(settings.simulator_url) as network:
            yield network
    else:
        yield CardNetwork(seed=settings.seed, latency_ms=settings.network_latency_ms, faults=faults.parse(settings.faults))


def dispatch_config(*, allow_private: bool = False) -> DispatchConfig:
    """Webhook delivery settings; the retry schedule may come from
    PAYMENTS_WEBHOOK_RETRY_SCHEDULE (checked by the CLI before start)."""
    text = os.environ.get("PAYMENTS_WEBHOOK_RETRY_SCHEDULE")
    timeout_s = float(os.environ.get("PAYMENTS_WEBHOOK_TIMEOUT_S", "10"))
    if text is None:
        return DispatchConfig(timeout_s=timeout_s, allow_private=allow_private)
    return DispatchConfig(schedule_s=parse_schedule(text), timeout_s=timeout_s, allow_private=allow_private)


async def _archive(store: Store, settings: UpSettings, scope: trio.CancelScope) -> None:
    """Export the journal and events to the audit archive now and then
    (PAYMENTS_ARCHIVE_EVERY_S, default 300; 0 turns it off), pruning hot
    tables past PAYMENTS_RETENTION_DAYS (default 30)."""
    with scope:
        if settings.archive_every_s <= 0:
            return
        archive = audit.archive_from_environment(settings.data_dir)
        await audit.run_audit_archive(store, archive, audit.ArchiveBounds(settings.archive_every_s, settings.retention_days))


async def _serve_http(app: Any, config: HypercornConfig, limits: ConnectionLimits, stop: trio.Event, node: Node, *, task_status: Any) -> None:
    try:
        # One labelled counter per kind, looked up once (a refusal is made
        # thousands of times a second past capacity).
        counters = {kind: node.metrics.refused_at_door.labels(kind) for kind in REFUSAL_KINDS}
        await serve_guarded(app, config, limits, shutdown_trigger=stop.wait, refused=lambda kind: counters[kind].inc(), task_status=task_status)
    finally:
        node.stop_accepting()


class PartitionsMismatch(Exception):
    """The partition count asked for is not the database's."""


async def _prepare(store: Store, redis: RedisLink, settings: UpSettings) -> int:
    """Migrate and check the database; returns its partition count. Raises
    PartitionsMismatch."""
    partitions = await store.migrate(settings.partitions or 16)
    if settings.partitions is not None and partitions != settings.partitions:
        raise PartitionsMismatch(
            f"the database has {partitions} partitions and this node was started with --partitions {settings.partitions};"
            " the count is fixed when the database is created (ids encode it): start with --partitions"
            f" {partitions} or leave it out"
        )
    try:
        await redis.ping()
    except RedisUnavailable as error:
        # Payments go on without Redis: rate limits fail open, signed
        # requests are refused, events wait in the outbox.
        log.warning("redis_unavailable_at_start", error=str(error))
    return partitions


NODE_ID_FILE = "node_id"


def node_id_default(data_dir: Path) -> str:
    """The node id kept in the data dir, made once (this machine's name and
    a random suffix): a node restarted on the same data dir comes back
    under its id, and takes its partitions back at once when its earlier
    process is gone (shards/cluster.py)."""
    path = data_dir / NODE_ID_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{socket.gethostname()}-{secrets.token_hex(3)}\n")
    return path.read_text().strip()


async def run_up(settings: UpSettings) -> None:
    async with trio_asyncio.open_loop():
        store = await Store.open(settings.database_url, connections_max=settings.database_connections)
        redis = await RedisLink.open(settings.redis_url, prefix=settings.redis_prefix)
        try:
            partitions = await _prepare(store, redis, settings)
            vault = Vault.from_config(settings.data_dir)
            # A wrong master key stops the node here, before it takes any partition.
            await open_card_keys(store, vault)
            keys = await test_merchant(store, settings.data_dir, vault) if settings.test_merchant else None
            await idempotency.rekey_legacy_fingerprints(store, vault)
            async with open_network(settings) as network:
                await _serve(settings, store, redis, vault, network, partitions, keys)
        finally:
            await store.close()
            await redis.close()


async def _serve(
    settings: UpSettings, store: Store, redis: RedisLink, vault: Vault, network: Any, partitions: int, keys: MerchantKeys | None
) -> None:
    """The node, its workers and its HTTP server until SIGINT or SIGTERM."""
    async with trio.open_nursery() as nursery:
        node_config = NodeConfig(
            partitions=partitions,
            shard=ShardConfig(authorization_expiry_s=settings.authorization_expiry_s),
            settlement_delay_s=settings.settlement_delay_s,
            dispute_fee_minor=settings.dispute_fee_minor,
            cluster=ClusterConfig(settings.node_id or node_id_default(settings.data_dir), lease_ttl_s=settings.lease_ttl_s),
        )
        events = EventWorkers(store, redis, vault, render_event, dispatch_config(allow_private=settings.allow_private_webhooks))
        start_node = functools.partial(run_node, redis=redis, events=events, url=settings.public_url)
        node = await nursery.start(start_node, store, vault, network, node_config)
        events.metrics = node.metrics
        worker_errors = await nursery.start(run_node_workers, node, events)
        # The operations page's history: a bounded ring of samples of the
        # node's registry, taken from now on.
        history = ops_page.OpsHistory(node.metrics.registry, worker_errors)
        await nursery.start(ops_page.run_ops_sampler, history, node.wait_stop_requested)
        config = hypercorn_config(settings.host, settings.port)
        stop = trio.Event()
        limits = ConnectionLimits(
            per_client_max=settings.connections_per_client_max,
            header_timeout_s=settings.header_timeout_s,
            requests_in_flight_max=settings.requests_in_flight_max,
        )
        # The simulator's pages go only where the simulator runs in this process.
        mounts = [operations.mount, ops_page.mount(history), checkout.mount(keys)]
        if isinstance(network, CardNetwork):
            mounts.append(simulator_routes.mount(network))
        binds = await nursery.start(_serve_http, create_app(node, mounts=mounts), config, limits, stop, node)
        node.set_public_url(settings.public_url or binds[0])
        announce(binds[0], keys, node_config, allow_private_webhooks=settings.allow_private_webhooks, operator_token=operations.node_operator_token(node))
        archiving = trio.CancelScope()
        nursery.start_soon(_archive, store, settings, archiving)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for received in signals:
                log.info("shutdown_requested", signal=signal.Signals(received).name)
                break
        archiving.cancel()
        stop.set()


def announce(
    url: str, keys: MerchantKeys | None, config: NodeConfig, *, allow_private_webhooks: bool = False, operator_token: str | None = None
) -> None:
    print(f"payments up: listening on {url}", flush=True)
    if config.cluster is not None:
        print(f"node:          {config.cluster.node_id} (partitions leased for {config.cluster.lease_ttl_s:g} s at a time)", flush=True)
    if keys is not None:
        print(f"test merchant: {keys.id}", flush=True)
        print(f"secret key:    {keys.secret_key}", flush=True)
        print(f"publishable:   {keys.publishable_key}", flush=True)
        print(f"demo shop:     {checkout.demo_url(url)}", flush=True)
    if operator_token is not None:
        print(f"operator:      {operator_token} (GET {url}/metrics with Authorization: Bearer)", flush=True)
        # The token in the fragment: a browser keeps it and never sends it.
        print(f"ops page:      {url}/ops#{operator_token}", flush=True)
    if allow_private_webhooks:
        print("webhooks:      endpoints on loopback and private addresses allowed (local development)", flush=True)
    print("Ctrl-C drains the mailboxes, hands the partitions off and stops.", flush=True)
