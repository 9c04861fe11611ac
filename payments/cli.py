"""The `payments` command."""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import trio
import trio_asyncio

from bench.cli import register as register_bench
from engine import ids
from gateway.logs import configure_logging
from payments import audit_cli, cluster_cli, trace_cli, vault_cli
from payments.arguments import DEFAULT_DATA_DIR, bounded_int, database_url, embedded_default, listener_options, redis_url
from payments.up import PartitionsMismatch, UpSettings, run_up
from shards.cluster import NodeIdTaken
from shards import operations
from shards.merchants import create_merchant, roll_key
from shards.vault import Vault, VaultKeyError
from simulators import faults, receiver_cli
from simulators.faults import fault_spec, latency_range
from simulators.service import run_sim
from store.errors import RedisLinkError, StoreError
from store.postgres import Store
from store.rows import MerchantTerms
from workers import reconciliation
from workers.webhook_delivery import ScheduleError, parse_schedule


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="payments",
        description="An actor-style payment engine with a Stripe-compatible API.",
        epilog="Without PAYMENTS_DATABASE_URL / PAYMENTS_REDIS_URL, an embedded PostgreSQL"
        " and Valkey are started under the data directory. PAYMENTS_REDIS_PREFIX (default"
        " 'payments:') namespaces this installation's keys in a shared Redis.",
    )
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def data_dir_option(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="where embedded servers, keys and the card key live (default ./.payments)"
        )

    up = commands.add_parser("up", help="run a node: gateway, shard actors and card-network simulator")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks a free one (default 8080)")
    data_dir_option(up)
    up.add_argument(
        "--partitions", type=bounded_int(1, 1024), default=None,
        help="partitions of a new database (default 16); fixed when the database is created, another count is refused",
    )
    up.add_argument(
        "--nodes", type=bounded_int(1, 64), default=1, metavar="N",
        help="node processes sharing the partitions, node i on port P+i, with one simulator service (default 1: one process)",
    )
    cluster_cli.cluster_options(up)
    up.add_argument("--seed", type=int, default=0, help="seed of the simulator's randomness (default 0)")
    up.add_argument("--network-latency-ms", type=latency_range, default=(1, 5), metavar="MIN..MAX", help="simulated card-network latency (default 1..5)")
    up.add_argument(
        "--authorization-expiry-s", type=bounded_int(1, 30 * 86_400), default=7 * 86_400, metavar="SECONDS",
        help="cancel uncaptured authorizations after this long (default 604800, 7 days)",
    )
    up.add_argument(
        "--settlement-delay-s", type=bounded_int(0, 30 * 86_400), default=2 * 86_400, metavar="SECONDS",
        help="how long captured funds stay pending before they are available (default 172800, 2 days)",
    )
    up.add_argument(
        "--dispute-fee-minor", type=bounded_int(0, 1_000_000), default=1500, metavar="MINOR",
        help="fee taken from the merchant for each dispute, in minor units (default 1500)",
    )
    up.add_argument(
        "--faults", type=fault_spec, default="", metavar="SPEC",
        help="faults for the in-process simulator, e.g. timeout_after=0.02,error=0.01,latency_ms=5..200"
        " (ignored with PAYMENTS_SIMULATOR_URL)",
    )
    up.add_argument(
        "--allow-private-webhooks", action="store_true",
        help="let webhook endpoints point at loopback, private, link-local and other internal addresses"
        " (local development only; on by itself with the embedded servers)",
    )
    listener_options(up)
    up.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    sim = commands.add_parser("sim", help="run the card-network simulator as an HTTP service")
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sim.add_argument("--port", type=int, default=8090, help="port to listen on; 0 picks a free one (default 8090)")
    sim.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    sim.add_argument("--latency-ms", type=latency_range, default=(1, 5), metavar="MIN..MAX", help="latency (default 1..5)")
    sim.add_argument(
        "--faults", type=fault_spec, default="", metavar="SPEC",
        help="timeout_before, timeout_after, error (probabilities), latency_ms=MIN..MAX, outage=FROM..TO (seconds),"
        " each optionally per brand (visa.error=0.5); changeable later through POST /admin/faults",
    )

    for name, text in (
        ("check", "check invariants I1 to I6 over the database (and the simulator's record); exit 1 on any violation"),
        ("reconcile", "resolve unknown network outcomes once and compare with the simulator's settlement report"),
    ):
        command = commands.add_parser(name, help=text)
        data_dir_option(command)
        command.add_argument(
            "--simulator-url", default=os.environ.get("PAYMENTS_SIMULATOR_URL"),
            help="the simulator service (default $PAYMENTS_SIMULATOR_URL)",
        )

    migrate = commands.add_parser("migrate", help="create or check the database schema")
    data_dir_option(migrate)
    migrate.add_argument("--partitions", type=bounded_int(1, 1024), default=16, help="partitions for a new database (default 16)")

    merchant = commands.add_parser("merchant", help="manage merchants")
    merchant_commands = merchant.add_subparsers(dest="merchant_command", required=True, metavar="SUBCOMMAND")
    create = merchant_commands.add_parser("create", help="create a merchant and print its keys (shown once)")
    create.add_argument("--name", required=True, help="the merchant's name (1 to 200 characters)")
    create.add_argument("--live", action="store_true", help="make live-mode keys instead of test-mode keys")
    create.add_argument("--json", action="store_true", help='print {"id", "secret_key", "publishable_key"} as JSON')
    create.add_argument("--fee-basis-points", type=bounded_int(0, 10_000), default=290, help="percentage fee in basis points (default 290 = 2.9%%)")
    create.add_argument("--fee-fixed-minor", type=bounded_int(0, 100_000), default=30, help="fixed fee per charge in minor units (default 30)")
    create.add_argument("--rate-limit-per-s", type=bounded_int(1, 100_000), default=100, help="requests per second per key (default 100)")
    create.add_argument("--rate-limit-burst", type=bounded_int(1, 1_000_000), default=200, help="burst size of the rate limit (default 200)")
    create.add_argument(
        "--require-signed-requests", action="store_true",
        help="refuse requests without a valid Payments-Signature; prints the signing secret once",
    )

    _events_commands(commands, data_dir_option)
    cluster_cli.register(commands, data_dir_option)
    vault_cli.register(commands, data_dir_option)
    receiver_cli.register(commands)
    audit_cli.register(commands)
    trace_cli.register(commands)
    register_bench(commands)

    roll = merchant_commands.add_parser("roll-key", help="issue a new secret key; the old ones keep working for a grace period")
    roll.add_argument("--merchant", required=True, help="the merchant's id (acct_...)")
    roll.add_argument("--grace-s", type=bounded_int(0, 30 * 86_400), default=86_400, help="how long old secret keys keep working (default 86400)")
    roll.add_argument("--json", action="store_true", help='print {"id", "secret_key"} as JSON')
    data_dir_option(roll)
    data_dir_option(create)
    return main


def _events_commands(commands: Any, data_dir_option: Callable[[argparse.ArgumentParser], None]) -> None:
    events = commands.add_parser("events", help="the webhook dead-letter list, and sending events again")
    events_commands = events.add_subparsers(dest="events_command", required=True, metavar="SUBCOMMAND")
    dead = events_commands.add_parser("dead-letters", help="deliveries given up on after the last retry, newest first")
    dead.add_argument("--limit", type=bounded_int(1, 10_000), default=100, help="at most this many (default 100)")
    dead.add_argument("--json", action="store_true", help="one JSON object per line")
    data_dir_option(dead)
    retry = events_commands.add_parser(
        "retry", help="send an event again to the endpoints that gave up on it (a running node picks it up within seconds)"
    )
    retry.add_argument("event_id", help="the event's id (evt_...)")
    data_dir_option(retry)


async def _with_store(data_dir: Path, action):  # type: ignore[no-untyped-def]
    async with trio_asyncio.open_loop():
        store = await Store.open(database_url(data_dir), connections_max=2)
        try:
            return await action(store)
        finally:
            await store.close()


def command_migrate(arguments: argparse.Namespace) -> int:
    async def action(store):  # type: ignore[no-untyped-def]
        return await store.migrate(arguments.partitions)

    partitions = trio.run(_with_store, arguments.data_dir, action)
    print(f"schema ready; {partitions} partitions")
    return 0


def command_merchant_create(arguments: argparse.Namespace) -> int:
    name = arguments.name.strip()
    if not 1 <= len(name) <= 200:
        print("error: --name must be 1 to 200 characters", file=sys.stderr)
        return 2

    terms = MerchantTerms(
        fee_basis_points=arguments.fee_basis_points,
        fee_fixed_minor=arguments.fee_fixed_minor,
        rate_limit_per_s=arguments.rate_limit_per_s,
        rate_limit_burst=arguments.rate_limit_burst,
    )
    vault = Vault.from_config(arguments.data_dir) if arguments.require_signed_requests else None

    async def action(store):  # type: ignore[no-untyped-def]
        await store.migrate(16)
        return await create_merchant(store, name, livemode=arguments.live, terms=terms, signing_vault=vault)

    keys = trio.run(_with_store, arguments.data_dir, action)
    if arguments.json:
        print(msgspec.json.encode(keys).decode())
    else:
        print(f"merchant:        {keys.id}\nsecret key:      {keys.secret_key}\npublishable key: {keys.publishable_key}")
        if keys.signing_secret:
            print(f"signing secret:  {keys.signing_secret}")
    return 0


def command_merchant_roll_key(arguments: argparse.Namespace) -> int:
    async def action(store):  # type: ignore[no-untyped-def]
        return await roll_key(store, arguments.merchant, grace_s=arguments.grace_s)

    secret_key = trio.run(_with_store, arguments.data_dir, action)
    if secret_key is None:
        print(f"error: no merchant {arguments.merchant[:64]!r}", file=sys.stderr)
        return 2
    if arguments.json:
        print(msgspec.json.encode({"id": arguments.merchant, "secret_key": secret_key}).decode())
    else:
        print(f"new secret key: {secret_key}\nold secret keys stop working in {arguments.grace_s} s")
    return 0


def command_dead_letters(arguments: argparse.Namespace) -> int:
    async def action(store):  # type: ignore[no-untyped-def]
        return await store.webhooks.dead_deliveries(arguments.limit)

    rows = trio.run(_with_store, arguments.data_dir, action)
    for row in rows:
        if arguments.json:
            print(msgspec.json.encode(row).decode())
        else:
            print(f"{row.event_id}  endpoint {row.endpoint_id}  tries {row.attempts}  given up at {row.updated_s}")
    if not arguments.json:
        print(f"{len(rows)} dead deliveries", file=sys.stderr)
    return 0


def command_events_retry(arguments: argparse.Namespace) -> int:
    if ids.parse_id(arguments.event_id, "evt") is None:
        print("error: expected an event id (evt_...)", file=sys.stderr)
        return 2

    async def action(store):  # type: ignore[no-untyped-def]
        return await store.webhooks.retry_dead(arguments.event_id, time.time_ns() // 1_000_000)

    endpoints = trio.run(_with_store, arguments.data_dir, action)
    if not endpoints:
        print(f"no dead deliveries of {arguments.event_id}", file=sys.stderr)
        return 1
    print(f"{arguments.event_id} goes again to {', '.join(endpoints)}")
    return 0


def settings_error() -> str | None:
    """What is wrong with the settings in the environment, if anything."""
    try:
        parse_schedule(os.environ.get("PAYMENTS_WEBHOOK_RETRY_SCHEDULE", ""))
    except ScheduleError as error:
        return f"PAYMENTS_WEBHOOK_RETRY_SCHEDULE: {error}"
    timeout = os.environ.get("PAYMENTS_WEBHOOK_TIMEOUT_S", "10")
    try:
        if not 0.1 <= float(timeout) <= 300:
            raise ValueError
    except ValueError:
        return "PAYMENTS_WEBHOOK_TIMEOUT_S: expected seconds from 0.1 to 300"
    try:
        if not 0 <= float(os.environ.get("PAYMENTS_ARCHIVE_EVERY_S", "300")) <= 86_400:
            raise ValueError
    except ValueError:
        return "PAYMENTS_ARCHIVE_EVERY_S: expected seconds from 0 (off) to 86400"
    try:
        if not 30 <= int(os.environ.get("PAYMENTS_RETENTION_DAYS", "30")) <= 36_500:
            raise ValueError
    except ValueError:
        return "PAYMENTS_RETENTION_DAYS: expected whole days from 30 to 36500"
    try:
        if not 2 <= int(os.environ.get("PAYMENTS_DATABASE_CONNECTIONS", "20")) <= 500:
            raise ValueError
    except ValueError:
        return "PAYMENTS_DATABASE_CONNECTIONS: expected a whole number from 2 to 500"
    return None


def _up_settings(arguments: argparse.Namespace, redis: str, *, test_merchant: bool) -> UpSettings:
    """What `up` and `node` run with, from their options and the environment."""
    return UpSettings(
        host=arguments.host,
        port=arguments.port,
        data_dir=arguments.data_dir,
        partitions=arguments.partitions,
        database_url=database_url(arguments.data_dir),
        redis_url=redis,
        seed=getattr(arguments, "seed", 0),
        network_latency_ms=getattr(arguments, "network_latency_ms", (1, 5)),
        redis_prefix=os.environ.get("PAYMENTS_REDIS_PREFIX", "payments:"),
        authorization_expiry_s=getattr(arguments, "authorization_expiry_s", 7 * 86_400),
        settlement_delay_s=getattr(arguments, "settlement_delay_s", 2 * 86_400),
        simulator_url=os.environ.get("PAYMENTS_SIMULATOR_URL") or None,
        dispute_fee_minor=getattr(arguments, "dispute_fee_minor", 1500),
        faults=getattr(arguments, "faults", ""),
        archive_every_s=float(os.environ.get("PAYMENTS_ARCHIVE_EVERY_S", "300")),
        retention_days=int(os.environ.get("PAYMENTS_RETENTION_DAYS", "30")),
        # The embedded servers mean a developer's machine: webhooks to a
        # local receiver are what they want, and `up` says it allows them.
        allow_private_webhooks=getattr(arguments, "allow_private_webhooks", False) or embedded_default(),
        connections_per_client_max=arguments.connections_per_client_max,
        header_timeout_s=arguments.header_timeout_s,
        requests_in_flight_max=arguments.requests_in_flight_max,
        node_id=arguments.node_id,
        lease_ttl_s=arguments.lease_ttl_s,
        public_url=arguments.public_url,
        test_merchant=test_merchant,
        database_connections=int(os.environ.get("PAYMENTS_DATABASE_CONNECTIONS", "20")),
    )


def command_up(arguments: argparse.Namespace) -> int:
    problem = settings_error()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if arguments.nodes > 1:
        if arguments.node_id is not None or arguments.public_url is not None:
            print("error: --node-id and --public-url name one node; with --nodes the nodes are node-0 to node-N-1", file=sys.stderr)
            return 2
        return cluster_cli.run_cluster(arguments, arguments.nodes)
    arguments.data_dir.mkdir(parents=True, exist_ok=True)
    with redis_url(arguments.data_dir) as redis:
        return _run_node(_up_settings(arguments, redis, test_merchant=True))


def command_node(arguments: argparse.Namespace) -> int:
    problem = settings_error()
    missing = cluster_cli.missing_servers() + ([] if os.environ.get("PAYMENTS_SIMULATOR_URL") else ["PAYMENTS_SIMULATOR_URL"])
    if problem is None and missing:
        problem = f"payments node needs {', '.join(missing)} (the cluster's servers; `payments up` starts embedded ones)"
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    with redis_url(arguments.data_dir) as redis:
        return _run_node(_up_settings(arguments, redis, test_merchant=False))


def _run_node(settings: UpSettings) -> int:
    status = 0
    try:
        trio.run(run_up, settings)
    except* (PartitionsMismatch, NodeIdTaken) as group:
        for error in leaves(group):
            print(f"error: {error}", file=sys.stderr)
        status = 2
    return status


def leaves(group: BaseExceptionGroup) -> list[BaseException]:
    """The exceptions in a group, however deeply nurseries nested it."""
    found: list[BaseException] = []
    for error in group.exceptions:
        found.extend(leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return found


def command_sim(arguments: argparse.Namespace) -> int:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                functools.partial(run_sim, seed=arguments.seed, faults=faults.parse(arguments.faults), latency_ms=arguments.latency_ms),
                arguments.host,
                arguments.port,
            )
            print(f"payments sim: listening on {url}", flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()

    trio.run(main)
    return 0


def command_check(arguments: argparse.Namespace) -> int:
    report = trio.run(_with_store, arguments.data_dir, functools.partial(operations.check_database, simulator_url=arguments.simulator_url))
    print(report.table())
    return 0 if report.ok else 1


def command_reconcile(arguments: argparse.Namespace) -> int:
    if not arguments.simulator_url:
        print("error: reconcile needs the simulator service: --simulator-url or PAYMENTS_SIMULATOR_URL", file=sys.stderr)
        return 2
    summary = trio.run(
        _with_store, arguments.data_dir, functools.partial(reconciliation.reconcile_database, simulator_url=arguments.simulator_url, data_dir=arguments.data_dir)
    )
    print(summary)
    return 0 if summary.endswith("mismatches: 0") else 1


def main(argv: list[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    configure_logging(getattr(arguments, "log_level", "warning"))

    handlers = {
        "up": command_up,
        "migrate": command_migrate,
        "sim": command_sim,
        "check": command_check,
        "reconcile": command_reconcile,
        "create": command_merchant_create,
        "roll-key": command_merchant_roll_key,
        "dead-letters": command_dead_letters,
        "retry": command_events_retry,
        "node": command_node,
        "status": cluster_cli.command_cluster_status,
    }
    handlers["audit"] = audit_cli.command_audit
    handlers["trace"] = trace_cli.command_trace
    status = 0
    try:
        handler = getattr(arguments, "handler", None)
        if handler is None:
            name = (
                getattr(arguments, "merchant_command", None)
                or getattr(arguments, "events_command", None)
                or getattr(arguments, "cluster_command", None)
                or arguments.command
            )
            handler = handlers[name]
        status = handler(arguments)
    except* (StoreError, RedisLinkError, VaultKeyError, vault_cli.NotMigrated) as group:
        # Infrastructure and configuration trouble is reported in one line,
        # never as a traceback (VaultKeyError never carries key material).
        for error in leaves(group):
            print(f"error: {error}", file=sys.stderr)
        status = 2
    except* KeyboardInterrupt:
        status = 130
    return status

if __name__ == "__main__":
    sys.exit(main())
