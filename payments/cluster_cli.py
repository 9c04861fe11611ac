"""The cluster's commands: `payments node` (one node joining the cluster that
shares a database), `payments cluster status`, and `payments up --nodes N`
(the embedded servers, one card-network simulator service and N node
processes on this machine, all stopped together).

The processes `up --nodes N` starts die with it, however it dies (Linux's
parent-death signal, as for the embedded servers); Ctrl-C or SIGTERM asks
each node to hand its partitions off and stop, then waits for them.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import msgspec
import trio
import trio_asyncio

from payments import embedded
from payments.arguments import bounded_float, bounded_int, database_url, embedded_default, listener_options, redis_url
from payments.up import test_merchant
from shards.vault import Vault
from store.leases import ClusterView
from store.postgres import Store

# How long `up --nodes N` waits for a child to say where it listens, and
# for all of them to stop after Ctrl-C before killing what is left.
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0
SPREAD_TIMEOUT_S = 60.0
LISTENING = "listening on "
# PostgreSQL connections the nodes of `up --nodes N` share, and each's least.
CONNECTIONS_TOTAL = 20
CONNECTIONS_PER_NODE_MIN = 6


def cluster_options(command: argparse.ArgumentParser) -> None:
    """The options `up` and `node` share for their place in a cluster."""
    command.add_argument(
        "--node-id", default=None, metavar="ID",
        help="this node's id in the cluster (default: kept in the data dir; a live node's id is refused)",
    )
    command.add_argument(
        "--lease-ttl-s", type=bounded_float(1, 300), default=10.0, metavar="SECONDS",
        help="how long a partition lease lasts unrenewed; a dead node's partitions move after it (default 10)",
    )
    command.add_argument(
        "--public-url", default=None, metavar="URL",
        help="where other nodes reach this one to forward requests (default: the address it listens on)",
    )


def register(commands: Any, data_dir_option: Callable[[argparse.ArgumentParser], None]) -> None:
    node = commands.add_parser(
        "node",
        help="run one node against PAYMENTS_DATABASE_URL, PAYMENTS_REDIS_URL and PAYMENTS_SIMULATOR_URL, joining their cluster",
        description="Run one node: it joins the cluster of nodes sharing the database, takes its share of the partitions,"
        " forwards requests for other nodes' partitions, and hands its partitions off on SIGTERM.",
    )
    node.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    node.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks a free one (default 8080)")
    node.add_argument(
        "--partitions", type=bounded_int(1, 1024), default=None,
        help="partitions of a new database (default 16); another count than an existing database's is refused",
    )
    cluster_options(node)
    listener_options(node)
    node.add_argument(
        "--allow-private-webhooks", action="store_true",
        help="let webhook endpoints point at loopback, private, link-local and other internal addresses (local development only)",
    )
    node.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    data_dir_option(node)

    cluster = commands.add_parser("cluster", help="the nodes sharing this database and their partitions")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True, metavar="SUBCOMMAND")
    status = cluster_commands.add_parser("status", help="nodes, their partitions, epochs, lease expiry, mailbox depth, last heartbeat")
    status.add_argument("--json", action="store_true", help="print the whole view as one JSON object")
    data_dir_option(status)


def missing_servers() -> list[str]:
    """The settings `payments node` needs and does not have."""
    return [name for name in ("PAYMENTS_DATABASE_URL", "PAYMENTS_REDIS_URL") if not os.environ.get(name)]


async def _view(data_dir: Path) -> ClusterView:
    async with trio_asyncio.open_loop():
        store = await Store.open(database_url(data_dir), connections_max=1)
        try:
            return await store.leases.view()
        finally:
            await store.close()


def status_table(view: ClusterView) -> str:
    """The view as an operator reads it."""
    lines = ["NODE                      STATE     PARTITIONS  MAILBOX  HEARTBEAT  URL"]
    owned: dict[str | None, list[int]] = {}
    for lease in view.leases:
        owner = lease.owner if lease.expires_in_s > 0 else None
        owned.setdefault(owner, []).append(lease.partition)
    for member in view.members:
        state = "leaving" if member.leaving else ("live" if member.silent_s < 30 else "silent")
        partitions = owned.get(member.node_id, [])
        lines.append(
            f"{member.node_id[:25]:<25} {state:<9} {len(partitions):>10}  {member.mailbox_depth:>7}  {member.silent_s:>7.1f} s  {member.url or '-'}"
        )
    lines.append("")
    lines.append("PARTITION  OWNER                      EPOCH  EXPIRES IN")
    for lease in view.leases:
        expires = f"{lease.expires_in_s:.1f} s" if lease.expires_in_s > 0 else "expired"
        lines.append(f"{lease.partition:>9}  {(lease.owner or '-')[:25]:<25} {lease.epoch:>6}  {expires if lease.owner else '-'}")
    unowned = owned.get(None, [])
    lines.append("")
    lines.append(f"{len(view.members)} nodes, {len(view.leases)} partitions, {len(unowned)} without a live owner")
    return "\n".join(lines)


def command_cluster_status(arguments: argparse.Namespace) -> int:
    view = trio.run(_view, arguments.data_dir)
    if arguments.json:
        print(msgspec.json.encode(view).decode())
    else:
        print(status_table(view))
    return 0


# --------------------------------------------------------- up --nodes N


# Lines from the children and our own come out whole, never interleaved.
_OUTPUT = threading.Lock()


def say(text: str, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    with _OUTPUT:
        out.write(text if text.endswith("\n") else text + "\n")
        out.flush()


class Child:
    """A process `up --nodes N` started, its output relayed line by line
    with its name in front."""

    def __init__(self, name: str, command: list[str], environ: dict[str, str]) -> None:
        self.name = name
        parent = os.getpid()
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environ,
            preexec_fn=lambda: embedded.die_with_parent(parent),
        )
        self.url: str | None = None
        self._listening = threading.Event()
        self._relay = threading.Thread(target=self._pump, args=(sys.stdout,), daemon=True)
        self._relay.start()

    def _pump(self, out: TextIO) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if self.url is None and LISTENING in line:
                self.url = line.split(LISTENING, 1)[1].split()[0]
                self._listening.set()
            say(f"[{self.name}] {line}", out)
        self._listening.set()

    def wait_listening(self, timeout_s: float) -> str:
        """The URL it listens on; raises RuntimeError when it exits or
        says nothing in time."""
        if not self._listening.wait(timeout_s) or self.url is None:
            raise RuntimeError(f"{self.name} did not start (exit status {self.process.poll()})")
        return self.url

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)


def _node_command(arguments: argparse.Namespace, index: int, *, allow_private_webhooks: bool) -> list[str]:
    port = arguments.port + index if arguments.port else 0
    command = [
        sys.executable, "-m", "payments.cli", "node", "--host", arguments.host, "--port", str(port),
        "--node-id", f"node-{index}", "--lease-ttl-s", str(arguments.lease_ttl_s), "--data-dir", str(arguments.data_dir),
        "--log-level", arguments.log_level, "--connections-per-client-max", str(arguments.connections_per_client_max),
        "--header-timeout-s", str(arguments.header_timeout_s), "--requests-in-flight-max", str(arguments.requests_in_flight_max),
    ]
    return command + (["--allow-private-webhooks"] if allow_private_webhooks else [])


def _simulator_command(arguments: argparse.Namespace) -> list[str]:
    low, high = arguments.network_latency_ms
    command = [sys.executable, "-m", "payments.cli", "sim", "--port", "0", "--seed", str(arguments.seed), "--latency-ms", f"{low}..{high}"]
    return command + (["--faults", arguments.faults] if arguments.faults else [])


async def _prepare(database: str, data_dir: Path, partitions: int | None) -> tuple[int, Any]:
    async with trio_asyncio.open_loop():
        store = await Store.open(database, connections_max=1)
        try:
            count = await store.migrate(partitions or 16)
            return count, await test_merchant(store, data_dir, Vault.from_config(data_dir))
        finally:
            await store.close()


async def _wait_for_spread(database: str, nodes: int, timeout_s: float) -> bool:
    """Until every partition has a live owner that said where it listens
    and each node holds its share (the first requests are not refused)."""
    async with trio_asyncio.open_loop():
        store = await Store.open(database, connections_max=1)
        try:
            with trio.move_on_after(timeout_s):
                while not spread(await store.leases.view(), nodes):
                    await trio.sleep(0.25)
                return True
            return False
        finally:
            await store.close()


def spread(view: ClusterView, nodes: int) -> bool:
    """Whether `nodes` live nodes with URLs hold every partition evenly."""
    urls = {member.node_id: member.url for member in view.members if not member.leaving}
    held: dict[str, int] = {}
    for lease in view.leases:
        if lease.owner is None or lease.expires_in_s <= 0 or not urls.get(lease.owner):
            return False
        held[lease.owner] = held.get(lease.owner, 0) + 1
    return len(held) == nodes and max(held.values()) - min(held.values()) <= 1


def _wait_for_signal_or_exit(children: list[Child]) -> None:
    stop = threading.Event()
    previous = {number: signal.signal(number, lambda *_: stop.set()) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.is_set() and all(child.process.poll() is None for child in children):
            stop.wait(0.5)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _stop_all(children: list[Child]) -> int:
    """SIGTERM the nodes first (they hand off and stop), then the rest;
    kill what is still running after STOP_TIMEOUT_S. The worst exit status."""
    for child in children:
        if child.name.startswith("node"):
            child.stop()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        if child.name.startswith("node"):
            _wait(child, deadline)
    for child in children:
        child.stop()
        _wait(child, deadline)
    return max((abs(child.process.returncode or 0) for child in children), default=0)


def _wait(child: Child, deadline: float) -> None:
    try:
        child.process.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        child.process.kill()
        child.process.wait()


def run_cluster(arguments: argparse.Namespace, nodes: int) -> int:
    """`payments up --nodes N`: returns the exit status."""
    data_dir: Path = arguments.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    # On the embedded servers (a developer's machine), as `up` alone does.
    allow_private = arguments.allow_private_webhooks or embedded_default()
    with redis_url(data_dir) as redis:
        database = database_url(data_dir)
        partitions, keys = trio.run(_prepare, database, data_dir, arguments.partitions)
        environ = {**os.environ, "PAYMENTS_DATABASE_URL": database, "PAYMENTS_REDIS_URL": redis}
        # The nodes share one server's connections: 20 among them unless set.
        environ.setdefault("PAYMENTS_DATABASE_CONNECTIONS", str(max(CONNECTIONS_PER_NODE_MIN, CONNECTIONS_TOTAL // nodes)))
        children: list[Child] = []
        try:
            simulator_url = os.environ.get("PAYMENTS_SIMULATOR_URL")
            if not simulator_url:
                simulator = Child("sim", _simulator_command(arguments), environ)
                children.append(simulator)
                simulator_url = simulator.wait_listening(START_TIMEOUT_S)
            environ["PAYMENTS_SIMULATOR_URL"] = simulator_url
            for index in range(nodes):
                children.append(Child(f"node-{index}", _node_command(arguments, index, allow_private_webhooks=allow_private), environ))
            urls = [child.wait_listening(START_TIMEOUT_S) for child in children if child.name.startswith("node")]
        except RuntimeError as error:
            say(f"error: {error}", sys.stderr)
            _stop_all(children)
            return 2
        if not trio.run(_wait_for_spread, database, nodes, SPREAD_TIMEOUT_S):
            say(f"warning: the partitions were not spread over the {nodes} nodes within {SPREAD_TIMEOUT_S:g} s; see `payments cluster status`")
        say(
            f"payments up: {nodes} nodes sharing {partitions} partitions: {', '.join(urls)}\n"
            f"simulator:     {simulator_url}\n"
            f"test merchant: {keys.id}\nsecret key:    {keys.secret_key}\npublishable:   {keys.publishable_key}\n"
            "Any node takes any request. Ctrl-C hands the partitions off and stops every process."
        )
        _wait_for_signal_or_exit(children)
        return _stop_all(children)
