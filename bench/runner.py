"""One bench run from start to end: a fresh database, the load (engine or
http mode), the invariant checks, the baselines, the report; the database is
dropped at the end whatever happened.

Expected failures (the database, Redis or a node cannot be used) are one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import socket
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio
import trio_asyncio
from rich.console import Console
from rich.live import Live
from rich.text import Text

from bench import baselines as baseline_runs
from bench import database, engine_mode, http_mode, report
from bench.histograms import Merged
from bench.load import LoadSettings
from bench.machine import MachineSample, machine_info
from gateway.logs import configure_logging
from shards import checks
from shards.merchants import create_merchant
from shards.operations import load_states
from store.errors import StoreError
from store.postgres import Store
from store.rows import MerchantTerms

# The highest rate limit the schema allows: the limiter still runs on every
# request (one Redis round trip), it just never refuses.
RATE_LIMIT_PER_S = 100_000
RATE_LIMIT_BURST = 1_000_000
PROGRESS_PRINT_EVERY_S = 5.0
RATE_WINDOW_S = 1.0


class Display:
    """The live progress line (rich) on a terminal; a plain line every few
    seconds otherwise."""

    def __init__(self, console: Console, mode: str, rate: float, duration_s: float, quiet: bool) -> None:
        self.console = console
        self.mode = mode
        self.rate = rate
        self.duration_s = duration_s
        self.quiet = quiet
        self.live: Live | None = None
        # (elapsed, arrived, completed) of recent updates: rates are taken
        # over the last second or so, not between two updates.
        self._history: collections.deque[tuple[float, int, int]] = collections.deque([(0.0, 0, 0)])
        self._last_printed = 0.0

    def __enter__(self) -> Display:
        if not self.quiet and self.console.is_terminal:
            self.live = Live(console=self.console, auto_refresh=False, transient=False)
            self.live.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def update(self, elapsed_s: float, totals: dict[str, Any]) -> None:
        history = self._history
        history.append((elapsed_s, totals["arrived"], totals["completed"]))
        while len(history) > 2 and elapsed_s - history[1][0] >= RATE_WINDOW_S:
            history.popleft()
        first_at, first_arrived, first_completed = history[0]
        span = max(1e-6, elapsed_s - first_at)
        offered = (totals["arrived"] - first_arrived) / span
        achieved = (totals["completed"] - first_completed) / span
        phase = "load" if elapsed_s <= self.duration_s else "drain"
        line = (
            f"{self.mode} {phase} {min(elapsed_s, 9e9):6.1f}/{self.duration_s:g} s  offered {offered:8,.0f}/s"
            f"  achieved {achieved:8,.0f}/s  in flight {totals['in_flight']:6,}  done {totals['completed']:9,}"
            f"  shed {totals['shed']:6,}  timed out {totals['timed_out']:6,}  failed {totals['failed']:6,}  p99 {totals['window_p99_ms']:8.1f} ms"
        )
        if self.live is not None:
            self.live.update(Text(line), refresh=True)
        elif not self.quiet and elapsed_s - self._last_printed >= PROGRESS_PRINT_EVERY_S:
            self._last_printed = elapsed_s
            self.console.print(line, highlight=False)


def _answers(url: str, port_default: int) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or port_default), timeout=2).close()
    except OSError:
        return False
    return True


async def _prepare(url: str, partitions: int) -> Any:
    """Schema and the merchant the load runs as."""

    async with trio_asyncio.open_loop():
        store = await Store.open(url, connections_max=2)
        try:
            await store.migrate(partitions)
            terms = MerchantTerms(rate_limit_per_s=RATE_LIMIT_PER_S, rate_limit_burst=RATE_LIMIT_BURST)
            return await create_merchant(store, "Bench merchant", terms=terms)
        finally:
            await store.close()


async def _check(url: str, operations: list[dict[str, Any]] | None, acknowledged: dict[str, checks.Acknowledged]) -> dict[str, Any]:
    """I1 to I6 over the whole database, replayed as a node recovers it (and
    against the simulator's record when the caller has it, and what the
    callers of finished payments were told)."""

    async with trio_asyncio.open_loop():
        store = await Store.open(url, connections_max=2)
        try:
            states = await load_states(store)
            idempotency = await store.idempotency.records()
        finally:
            await store.close()
    checked = checks.check(states, idempotency, operations, acknowledged)
    return {
        "ok": checked.ok,
        "checked": checked.checked,
        "violations": [{"invariant": v.invariant, "subject": v.subject, "detail": v.detail} for v in checked.violations[:100]],
        "violations_total": len(checked.violations),
        "network_checked": checked.network_checked,
        "table": checked.table(),
        "final_statuses": dict(Counter(str(intent.status) for state in states for intent in state.intents.values())),
    }


def say(console: Console, text: str) -> None:
    """One line as it is: no markup, no highlighting, no wrapping."""
    console.print(text, highlight=False, markup=False, soft_wrap=True)


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        leaves += _leaves(error) if isinstance(error, BaseExceptionGroup) else [error]
    return leaves


def run(arguments: argparse.Namespace, command: str) -> int:

    configure_logging(arguments.log_level)
    console = Console(stderr=True)
    admin = database.admin_url()
    if arguments.mode == "http":
        redis_url = os.environ.get("PAYMENTS_REDIS_URL") or http_mode.DEFAULT_REDIS_URL
        if not _answers(redis_url, 6379):
            say(console, f"error: http mode needs Redis, and nothing answers at {database.where(redis_url, 6379)}")
            return 2
    try:
        name, url = database.create_database(admin)
    except database.DatabaseError as error:
        say(console, f"error: {error}")
        return 2
    say(console, f"bench: database {name} on {database.where(admin)}")
    status = 2
    try:
        status = _run(arguments, command, url, console)
    except* (database.DatabaseError, engine_mode.WorkerFailed, http_mode.NodeFailed, StoreError) as group:
        # Expected trouble with the database, Redis or a node: one line each.
        for error in _leaves(group):
            say(console, f"error: {error}")
        status = 2
    except* KeyboardInterrupt:
        say(console, "bench: interrupted")
        status = 130
    finally:
        if arguments.keep_database:
            say(console, f"bench: kept database {name}")
        else:
            try:
                database.drop_database(admin, name)
            except database.DatabaseError as error:
                say(console, f"warning: could not drop {name}: {error}")
    return status


@dataclasses.dataclass
class _LoadOutcome:
    """What driving the load left behind, whichever the mode."""

    after: MachineSample
    processes: list[dict[str, Any]]
    # Engine mode: each worker's check against its in-process network.
    worker_checks: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    engine_counters: dict[str, Any] | None = None
    # Http mode: the simulator's record of the operations, for the checks.
    operations: list[dict[str, Any]] | None = None
    # Http mode with several nodes: their processes' figures summed.
    nodes_total: dict[str, Any] | None = None
    # What the caller of each finished payment was told last (I4).
    acknowledged: dict[str, checks.Acknowledged] = dataclasses.field(default_factory=dict)


def _run(arguments: argparse.Namespace, command: str, url: str, console: Console) -> int:
    machine = machine_info()
    settings = _settings(arguments)
    load = LoadSettings(rate_per_s=arguments.rate, duration_s=arguments.duration, mix=arguments.mix, seed=arguments.seed, drain_s=arguments.drain)
    merchant = trio.run(_prepare, url, arguments.partitions)
    merged = Merged()
    display = Display(console, arguments.mode, arguments.rate, arguments.duration, arguments.quiet)
    before = MachineSample()
    if arguments.mode == "engine":
        outcome = _drive_engine(arguments, url, merchant, load, merged, display)
    else:
        outcome = _drive_http(arguments, url, merchant, load, merged, display)
    cost = _cost(before, outcome.after, outcome.processes)
    journal = database.journal_figures(url)
    say(console, "bench: checking invariants I1 to I6 over the whole database")
    invariants = _invariants(url, outcome.operations, outcome.worker_checks, outcome.acknowledged)
    measured_baselines = _baselines(arguments, url, console)
    built = report.build(
        settings=settings,
        command=command,
        machine={**machine, "load_average_at_end": [round(value, 2) for value in os.getloadavg()], "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        merged=merged,
        processes=outcome.processes,
        nodes_total=outcome.nodes_total,
        engine_counters=outcome.engine_counters,
        journal=journal,
        cost=cost,
        invariants=invariants,
        baselines=measured_baselines,
    )
    report.print_summary(built, console)
    if not built["invariants_ok"]:
        _print_violations(console, invariants, outcome.worker_checks)
    if arguments.report is not None:
        paths = report.write(built, arguments.report)
        say(console, "bench: report in " + ", ".join(str(path) for path in paths))
    return 0 if built["invariants_ok"] else 1


def _settings(arguments: argparse.Namespace) -> dict[str, Any]:
    """The run's settings as the report shows them."""
    return {
        "mode": arguments.mode,
        "rate_per_s": arguments.rate,
        "duration_s": arguments.duration,
        "partitions": arguments.partitions,
        # The node processes: engine mode's workers, or http mode's nodes.
        "processes": arguments.processes if arguments.mode == "engine" else arguments.nodes,
        "nodes": arguments.nodes if arguments.mode == "http" else None,
        "faults": arguments.faults,
        "mix": arguments.mix,
        "seed": arguments.seed,
        "network_latency_ms": list(arguments.network_latency_ms),
        "connections": arguments.connections if arguments.mode == "http" else None,
        "drain_s": arguments.drain,
        "log_level": arguments.log_level,
    }


def _drive_engine(
    arguments: argparse.Namespace, url: str, merchant: Any, load: LoadSettings, merged: Merged, display: Display
) -> _LoadOutcome:
    """Engine mode: worker processes, each a node with its in-process network
    and its share of the load; their recorders go into `merged`."""
    with display:
        results = engine_mode.run(
            database_url=url,
            partitions=arguments.partitions,
            processes=arguments.processes,
            merchant_id=merchant.id,
            card_key=os.urandom(32),
            network_latency_ms=arguments.network_latency_ms,
            faults=arguments.faults,
            load=load,
            log_level=arguments.log_level,
            on_progress=display.update,
        )
    after = MachineSample()
    worker_checks: list[dict[str, Any]] = []
    processes = []
    acknowledged: dict[str, checks.Acknowledged] = {}
    for index, result in enumerate(results):
        merged.add(result["recorder"])
        worker_checks.append(result["network_check"])
        acknowledged.update(result["acknowledged"])
        processes.append(
            {
                "name": f"worker {index} (node + load, partitions {','.join(map(str, result['partitions']))})",
                "cpu_s": round(result["cpu_s"], 2),
                "cpu_fraction": round(result["cpu_s"] / result["wall_s"], 3) if result["wall_s"] else 0.0,
                "peak_rss_mb": round(result["peak_rss_mb"], 1),
                "unknown_outcomes_left": result["unknown_left"],
                "gc": result["gc"],
            }
        )
    return _LoadOutcome(
        after=after, processes=processes, worker_checks=worker_checks, engine_counters=_engine_counters(results, merged), acknowledged=acknowledged
    )


def _engine_counters(results: list[dict[str, Any]], merged: Merged) -> dict[str, Any]:
    """Commits and commands over all workers, and what they come to per second and per payment."""
    commits = sum(result["commits"] for result in results)
    commands = sum(result["commands"] for result in results)
    wall_s = max(result["wall_s"] for result in results)
    payments = max(1, merged.arrived)
    return {
        "commits": commits,
        "commands": commands,
        "commits_per_s": round(commits / wall_s, 1),
        "commands_per_s": round(commands / wall_s, 1),
        "mean_batch_commands": round(commands / commits, 2) if commits else 0.0,
        "commands_per_payment": round(commands / payments, 3),
    }


def _drive_http(
    arguments: argparse.Namespace, url: str, merchant: Any, load: LoadSettings, merged: Merged, display: Display
) -> _LoadOutcome:
    """Http mode: one node process (or `up --nodes N`), loaded over HTTP
    from this one; the recorder goes into `merged`. The nodes are stopped
    whatever happens."""
    with tempfile.TemporaryDirectory(prefix="payments-bench-") as scratch:
        log_dir = arguments.report if arguments.report is not None else Path(scratch)
        log_dir.mkdir(parents=True, exist_ok=True)
        node = http_mode.NodeProcess(url, Path(scratch), _node_arguments(arguments), log_dir / "node.log", arguments.nodes).start()
        try:
            watched = node.watched()
            with display:
                result = trio.run(
                    http_mode.drive, node.urls, merchant.secret_key, arguments.connections, load, display.update, watched, node.simulator_url
                )
            after = MachineSample()
            node.check_alive()
            operations = http_mode.fetch_operations(node.url, merchant.secret_key, node.simulator_url)
        finally:
            node.stop()
            node.forget_redis_keys()
    merged.add(result["recorder"])
    wall_s = result["wall_s"]
    processes = [_process_figures(usage["name"], usage["cpu_s"], usage["peak_rss_mb"], wall_s) for usage in result["usage"]]
    nodes_total = None
    if arguments.nodes == 1:
        processes[0]["unknown_outcomes_left"] = result["unknown_left"]
    else:
        nodes = [usage for usage in result["usage"] if usage["node"]]
        # The sum of the peaks: an upper bound of the memory held at once.
        nodes_total = _process_figures("nodes in total", sum(usage["cpu_s"] for usage in nodes), sum(usage["peak_rss_mb"] for usage in nodes), wall_s)
        nodes_total |= {"nodes": len(nodes), "unknown_outcomes_left": result["unknown_left"]}
    processes.append(_process_figures("load generator", result["cpu_s"], result["peak_rss_mb"], wall_s))
    return _LoadOutcome(after=after, processes=processes, operations=operations, nodes_total=nodes_total, acknowledged=result["acknowledged"])


def _process_figures(name: str, cpu_s: float, peak_rss_mb: float, wall_s: float) -> dict[str, Any]:
    return {"name": name, "cpu_s": round(cpu_s, 2), "cpu_fraction": round(cpu_s / wall_s, 3), "peak_rss_mb": round(peak_rss_mb, 1)}


def _node_arguments(arguments: argparse.Namespace) -> list[str]:
    """The command line of the node that http mode starts (`NodeProcess`
    adds `--nodes`)."""
    node_arguments = [
        "--partitions", str(arguments.partitions), "--seed", str(arguments.seed), "--log-level", arguments.log_level,
        "--network-latency-ms", f"{arguments.network_latency_ms[0]}..{arguments.network_latency_ms[1]}",
        # Every bench connection comes from loopback: one client to the node's cap.
        "--connections-per-client-max", str(arguments.connections + 16),
    ]
    if arguments.faults:
        node_arguments += ["--faults", arguments.faults]
    return node_arguments


def _cost(before: MachineSample, after: MachineSample, processes: list[dict[str, Any]]) -> dict[str, Any]:
    """What the run cost the machine, from two samples around the load."""
    cost = after.since(before)
    # What neither the bench's processes nor PostgreSQL used: other load on
    # the machine (a test suite, say), which makes the figures noisy.
    cost["other_cpu_s"] = (
        None
        if cost["postgres_cpu_s"] is None
        else round(cost["machine_busy_cpu_s"] - cost["postgres_cpu_s"] - sum(process["cpu_s"] for process in processes), 2)
    )
    return cost


def _invariants(
    url: str, operations: list[dict[str, Any]] | None, worker_checks: list[dict[str, Any]], acknowledged: dict[str, checks.Acknowledged]
) -> dict[str, Any]:
    """The checks over the whole database (with what callers were told),
    joined with the workers' own."""
    invariants = trio.run(_check, url, operations, acknowledged)
    invariants["workers"] = worker_checks
    invariants["ok"] = invariants["ok"] and all(check["ok"] for check in worker_checks)
    invariants["network_checked"] = invariants["network_checked"] or bool(worker_checks)
    violations = invariants["violations_total"] + sum(check["violations_total"] for check in worker_checks)
    invariants["summary"] = f"{violations} violations" + ("" if invariants["network_checked"] else " (network side not checked)")
    return invariants


def _baselines(arguments: argparse.Namespace, url: str, console: Console) -> dict[str, Any]:
    """The baselines to compare the run against; none when they are off."""
    measured_baselines: dict[str, Any] = {}
    if arguments.baseline_seconds > 0:
        say(console, f"bench: baselines, {arguments.baseline_seconds:g} s each")
        measured_baselines["ingest"] = baseline_runs.ingest(url, arguments.baseline_seconds, arguments.partitions)
        measured_baselines["actor"] = baseline_runs.actor(arguments.baseline_seconds)
        measured_baselines["bridge"] = baseline_runs.bridge(url, arguments.baseline_seconds)
        if arguments.mode == "http":
            measured_baselines["http"] = baseline_runs.bare_http(arguments.connections, arguments.baseline_seconds)
    return measured_baselines


def _print_violations(console: Console, invariants: dict[str, Any], worker_checks: list[dict[str, Any]]) -> None:
    console.print(invariants["table"], highlight=False, markup=False)
    for check in worker_checks:
        for violation in check["violations"][:20]:
            say(console, f"  {violation['invariant']} {violation['subject']}: {violation['detail']}")
