"""Engine mode: the shard actors and the card-network simulator in-process,
driven through `Node.submit` with no HTTP in between.

The run is split over K worker processes (one trio loop each, so K cores),
each a node serving a fixed, disjoint set of partitions of one shared
database, with its own simulator and its own share of the arrivals (the sum
of K Poisson processes at rate/K is a Poisson process at the full rate).
The parent starts them, gives them one start time, shows their progress and
collects what each measured.

When a worker's load is over it stops its node (the actors drain their
mailboxes and journal the answers of calls in flight) and checks the
invariants of its partitions against its simulator's record (I1 to I3 and
I5 need the network's side); the parent then checks the whole database.

3-D Secure: the worker passes the challenge through the simulator
(`complete_challenge`), as a cardholder would on the challenge page, and the
payment ends when its intent is `succeeded` (the network's notice, relayed to
the actor and journaled). That last wait is the `challenge` operation.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import multiprocessing.connection
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec
import trio
import trio_asyncio

from bench.arrivals import Arrival
from bench.histograms import Outcome, Recorder, Steps
from bench.machine import own_usage
from bench.load import CARD_OF_SCENARIO, CARDS, CHALLENGE_POLL_S, LoadSettings, PaymentFailed, challenge_wait, expect_status, generate
from engine import cards
from engine import intent as machine
from engine.results import Result
from gateway.logs import configure_logging
from shards import checks
from shards.node import NodeConfig, Overloaded, run_node
from shards.vault import Vault
from simulators import faults
from simulators.card_network import CardNetwork
from store.errors import StoreError, StoreUnavailable
from store.postgres import Store
from workers import reconciliation
from workers.node_workers import run_node_workers

PROGRESS_EVERY_S = 0.5
READY_TIMEOUT_S = 120.0
SETTLE_S_MAX = 30.0


class WorkerConfig(msgspec.Struct, frozen=True):
    index: int
    processes: int
    database_url: str
    partitions: int
    owned_partitions: tuple[int, ...]
    merchant_id: str
    card_key: bytes
    network_latency_ms: tuple[int, int]
    faults: str
    load: LoadSettings
    log_level: str = "warning"


class WorkerFailed(Exception):
    """A worker process could not start or run its share."""


def split_partitions(partitions: int, processes: int) -> list[tuple[int, ...]]:
    """Partition p goes to process p mod K: a static, disjoint split."""
    return [tuple(range(index, partitions, processes)) for index in range(processes)]


class EngineDriver:
    """Runs payments by submitting engine commands to the node."""

    def __init__(self, node: Any, network: Any, merchant_id: str, payment_methods: dict[str, str]) -> None:
        self.node = node
        self.network = network
        self.merchant_id = merchant_id
        self.payment_methods = payment_methods
        # New intents go round this node's partitions. Picking the partition
        # here spares parsing it back out of each new id.
        self._partitions = itertools.cycle(node.config.served_partitions())
        self._next_partition = next(self._partitions)
        # What the caller of each finished payment was told last, checked
        # against the journal at the end (I4).
        self.acknowledged: dict[str, checks.Acknowledged] = {}

    def refuses_now(self) -> bool:
        """The gateway's check before any work (Node.saturated) on the
        partition the next payment goes to; a refused one moves the turn on."""
        if self.node.saturated(self._next_partition):
            self._next_partition = next(self._partitions)
            return True
        return False

    async def _submit(self, command: machine.Command, steps: Steps, operation: str) -> Any:
        """The command's outcome; raises PaymentFailed, shed when the node
        refused it for overload (`operation` says at which step)."""
        steps.sent()
        try:
            outcome = await self.node.submit(command)
        except Overloaded:
            raise PaymentFailed("overloaded", Outcome.shed, operation) from None
        except StoreUnavailable:
            raise PaymentFailed("store_unavailable", operation=operation) from None
        if outcome.result is not Result.ok:
            raise PaymentFailed(f"refused_{outcome.result}", operation=operation)
        return outcome

    async def pay(self, arrival: Arrival, due: float, recorder: Recorder) -> None:
        node = self.node
        scenario = arrival.scenario
        steps = Steps(recorder)
        partition, self._next_partition = self._next_partition, next(self._partitions)
        intent_id = node.new_id("pi", partition)
        common = {"intent_id": intent_id, "merchant_id": self.merchant_id, "livemode": False}
        create = machine.CreateIntent(
            **common,
            amount=arrival.amount_minor,
            currency="usd",
            capture_method=machine.CaptureMethod.manual if scenario == "manual" else machine.CaptureMethod.automatic,
            client_secret=node.client_secret(intent_id),
            at_s=int(time.time()),
            attempt_id=node.new_id("att", partition),
            payment_method_id=self.payment_methods[CARD_OF_SCENARIO[scenario]],
            settlement_delay_s=node.config.settlement_delay_s,
            dispute_fee_minor=node.config.dispute_fee_minor,
        )
        outcome = await self._submit(create, steps, "create")
        now = trio.current_time()
        recorder.operation("create", now - due)
        expect_status("create", outcome.intent.status, "requires_confirmation")

        attempt_id = node.new_id("att", partition)
        refund_id = None
        started = now
        outcome = await self._submit(machine.ConfirmIntent(**common, attempt_id=attempt_id, at_s=int(time.time())), steps, "confirm")
        now = trio.current_time()
        recorder.operation("confirm", now - started)
        status = str(outcome.intent.status)
        if scenario == "decline":
            expect_status("confirm", status, "requires_payment_method")
        elif scenario == "manual":
            expect_status("confirm", status, "requires_capture")
            started = now
            capture = machine.CaptureIntent(**common, attempt_id=node.new_id("att", partition), at_s=int(time.time()))
            outcome = await self._submit(capture, steps, "capture")
            now = trio.current_time()
            recorder.operation("capture", now - started)
            expect_status("capture", outcome.intent.status, "succeeded")
        elif scenario == "3ds":
            expect_status("confirm", status, "requires_action")
            started = now
            if not self.network.complete_challenge(attempt_id, True):
                raise PaymentFailed("challenge_not_pending", operation="challenge")
            with challenge_wait():
                while node.intent(intent_id).status is not machine.Status.succeeded:
                    await trio.sleep(CHALLENGE_POLL_S)
            now = trio.current_time()
            expect_status("challenge", node.intent(intent_id).status, "succeeded")
            recorder.operation("challenge", now - started)
        else:
            expect_status("confirm", status, "succeeded")
            if scenario == "refund":
                started = now
                refund_id = node.new_id("re", partition)
                refund = machine.CreateRefund(**common, refund_id=refund_id, at_s=int(time.time()), amount=arrival.amount_minor // 2)
                outcome = await self._submit(refund, steps, "refund")
                now = trio.current_time()
                recorder.operation("refund", now - started)
                expect_status("refund", outcome.intent.refund(refund_id).status, "succeeded")
        # After 3-D Secure the payment ends as the node shows it (what the
        # cardholder's return to the merchant reads), else as the last reply said.
        final = node.intent(intent_id) if scenario == "3ds" else outcome.intent
        self.acknowledged[intent_id] = checks.Acknowledged(str(final.status), refund_id)
        recorder.finished(scenario, due, now, steps)


async def _settle(node: Any) -> int:
    """Ask the network about every unknown outcome until none is left
    (faults leave some), bounded in time. Returns how many are left."""
    with trio.move_on_after(SETTLE_S_MAX):
        while any(shard.state.unknown for shard in node.shards.values()):
            await reconciliation.reconcile_once(node)
            await trio.sleep(0.2)
    return sum(len(shard.state.unknown) for shard in node.shards.values())


async def _worker(connection: Any, config: WorkerConfig) -> dict[str, Any]:

    async with trio_asyncio.open_loop():
        store = await Store.open(config.database_url, connections_max=min(20, len(config.owned_partitions) + 4))
        try:
            network = CardNetwork(
                seed=config.load.seed * 1000 + config.index,
                latency_ms=config.network_latency_ms,
                faults=faults.parse(config.faults),
                # Latencies rounded up to whole milliseconds, so that calls
                # due together share one timer: the simulator runs in the
                # worker, and its cost should not be charged to the engine.
                latency_ticks=True,
            )
            node_config = NodeConfig(partitions=config.partitions, owned_partitions=config.owned_partitions)
            measured: dict[str, Any] = {}
            async with trio.open_nursery() as nursery:
                node = await nursery.start(run_node, store, Vault(config.card_key), network, node_config)
                # The node stops routing to its actors when they stop; their
                # final states are checked after that.
                actors = list(node.shards.values())
                await nursery.start(run_node_workers, node)
                try:
                    exp_year = time.gmtime().tm_year + 3
                    methods = {}
                    for name, number in CARDS.items():
                        row = await node.create_payment_method(config.merchant_id, False, number, 12, exp_year, cards.brand_of(number))
                        methods[name] = row.id
                    connection.send(("ready", config.index))
                    message = await trio.to_thread.run_sync(connection.recv)
                    assert message[0] == "go", message
                    start = trio.current_time() + (message[1] - time.time())
                    recorder = Recorder(start)
                    driver = EngineDriver(node, network, config.merchant_id, methods)
                    await trio.sleep_until(start)
                    gc_watch = GcWatch()
                    gc.callbacks.append(gc_watch)
                    cpu_before, _ = own_usage()
                    commits_before = sum(shard.commits_total for shard in node.shards.values())
                    commands_before = sum(shard.commands_total for shard in node.shards.values())
                    async with trio.open_nursery() as reporting:

                        async def report_progress() -> None:
                            while True:
                                await trio.sleep(PROGRESS_EVERY_S)
                                connection.send(("progress", config.index, recorder.progress()))

                        reporting.start_soon(report_progress)
                        await generate(driver, config.load, recorder, share=config.index, shares=config.processes)
                        reporting.cancel_scope.cancel()
                    wall_s = trio.current_time() - start
                    cpu_after, _ = own_usage()
                    gc.callbacks.remove(gc_watch)
                    measured = {
                        "wall_s": wall_s,
                        "cpu_s": cpu_after - cpu_before,
                        "commits": sum(shard.commits_total for shard in node.shards.values()) - commits_before,
                        "commands": sum(shard.commands_total for shard in node.shards.values()) - commands_before,
                        "gc": gc_watch.summary(),
                        "unknown_left": await _settle(node),
                        "recorder": recorder.export(),
                        "acknowledged": driver.acknowledged,
                    }
                finally:
                    node.stop_accepting()
            states = [shard.state for shard in actors]
            operations = [msgspec.structs.asdict(operation) for operation in network.operations()]
            report = checks.check(states, (), operations)
            measured["network_check"] = {
                "ok": report.ok,
                "checked": report.checked,
                "violations": [msgspec.structs.asdict(v) for v in report.violations[:50]],
                "violations_total": len(report.violations),
                "network_operations": len(operations),
            }
            measured["final_statuses"] = dict(Counter(str(intent.status) for state in states for intent in state.intents.values()))
            measured["peak_rss_mb"] = own_usage()[1]
            measured["partitions"] = list(config.owned_partitions)
            return measured
        finally:
            await store.close()


def worker_main(connection: Any, encoded: bytes) -> None:
    """Entry point of a worker process (spawned)."""

    config = msgspec.json.decode(encoded, type=WorkerConfig)
    configure_logging(config.log_level)
    try:
        result = trio.run(_worker, connection, config)
    except KeyboardInterrupt:
        return
    except BaseException as error:  # reported to the parent, which prints one line

        leaves = _leaves(error)
        detail = "; ".join(" ".join(f"{type(leaf).__name__}: {leaf}".split()) for leaf in leaves)[:1000]
        # Trouble with the database is expected now and then: no traceback for it.
        trace = "" if all(isinstance(leaf, StoreError) for leaf in leaves) else traceback.format_exc()[-4000:]
        connection.send(("error", config.index, detail, trace))
        return
    connection.send(("result", config.index, result))


class GcWatch:
    """Time spent in Python's cyclic garbage collector, per generation, with
    the longest single pause: a heap of live intents makes full collections
    slower as a run goes on."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.total_s = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self.pause_max_s = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        elif self.started is not None:
            pause = time.perf_counter() - self.started
            generation = info.get("generation", 2)
            self.total_s[generation] += pause
            self.count[generation] += 1
            self.pause_max_s = max(self.pause_max_s, pause)
            self.started = None

    def summary(self) -> dict[str, Any]:
        return {
            "collections": self.count,
            "seconds": [round(value, 3) for value in self.total_s],
            "pause_max_ms": round(self.pause_max_s * 1000, 2),
        }


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


ProgressCallback = Callable[[float, dict[str, Any]], None]


def run(
    *,
    database_url: str,
    partitions: int,
    processes: int,
    merchant_id: str,
    card_key: bytes,
    network_latency_ms: tuple[int, int],
    faults: str,
    load: LoadSettings,
    log_level: str,
    on_progress: ProgressCallback,
) -> list[dict[str, Any]]:
    """Run the load on K worker processes; returns what each measured.
    Raises WorkerFailed when one cannot start or fails."""
    context = multiprocessing.get_context("spawn")
    workers = []
    connections = []
    for index, owned in enumerate(split_partitions(partitions, processes)):
        config = WorkerConfig(
            index=index,
            processes=processes,
            database_url=database_url,
            partitions=partitions,
            owned_partitions=owned,
            merchant_id=merchant_id,
            card_key=card_key,
            network_latency_ms=network_latency_ms,
            faults=faults,
            load=load,
            log_level=log_level,
        )
        parent_end, child_end = context.Pipe()
        process = context.Process(target=worker_main, args=(child_end, msgspec.json.encode(config)), name=f"bench-worker-{index}", daemon=True)
        process.start()
        child_end.close()
        workers.append(process)
        connections.append(parent_end)
    try:
        return _supervise(workers, connections, load, on_progress)
    except WorkerFailed as failure:
        time.sleep(0.5)
        codes = [process.exitcode for process in workers]
        raise WorkerFailed(f"{failure} (worker exit codes {codes})") from None
    finally:
        for process in workers:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


def _supervise(workers: list[Any], connections: list[Any], load: LoadSettings, on_progress: ProgressCallback) -> list[dict[str, Any]]:
    ready: set[int] = set()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while len(ready) < len(workers):
        message = _receive(connections, deadline)
        if message is None:
            raise WorkerFailed("the worker processes did not start in time")
        if message[0] == "ready":
            ready.add(message[1])
    start_wall = time.time() + 0.5
    for connection in connections:
        connection.send(("go", start_wall))
    results: dict[int, dict[str, Any]] = {}
    progress: dict[int, dict[str, Any]] = {}
    # Load, drain, settle and the workers' own checks, with room to spare.
    deadline = time.monotonic() + 0.5 + load.duration_s + load.drain_s + SETTLE_S_MAX + 600
    last_shown = 0.0
    # A worker that sent its result exits, and its end of the pipe then
    # reads as closed: listen only to those still running.
    running = list(connections)
    while len(results) < len(workers):
        message = _receive(running, min(deadline, time.monotonic() + 0.25))
        now = time.monotonic()
        if message is None and now >= deadline:
            raise WorkerFailed("the worker processes did not finish in time")
        if message is not None:
            if message[0] == "progress":
                progress[message[1]] = message[2]
            elif message[0] == "result":
                results[message[1]] = message[2]
                running.remove(connections[message[1]])
            elif message[0] == "error":
                if message[3]:
                    print(message[3], file=sys.stderr)
                raise WorkerFailed(f"worker {message[1]} failed: {message[2]}")
        if progress and now - last_shown >= 0.25:
            last_shown = now
            totals: dict[str, Any] = Counter()
            for value in progress.values():
                totals.update({key: v for key, v in value.items() if key != "window_p99_ms"})
            totals["window_p99_ms"] = max(value["window_p99_ms"] for value in progress.values())
            on_progress(time.time() - start_wall, dict(totals))
    return [results[index] for index in sorted(results)]


def _receive(connections: list[Any], deadline: float) -> tuple | None:
    """The next message from any worker, or None at the deadline. A worker
    that died without a word is a failure."""
    timeout = max(0.0, deadline - time.monotonic())
    for connection in multiprocessing.connection.wait(connections, timeout=timeout):
        try:
            return connection.recv()
        except (EOFError, OSError) as error:
            raise WorkerFailed(f"a worker process exited unexpectedly ({type(error).__name__}: {error})") from None
    return None
