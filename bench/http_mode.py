"""HTTP mode: a real node (`payments up`) as a child process, driven over
loopback through keep-alive connections with the bench's minimal client.

With `--nodes N` it is `payments up --nodes N`: a supervisor, N node
processes sharing the partitions and one card-network simulator service.
The connections are spread over the nodes, one pool each, and each payment
goes to the next node in turn (a client bound to one node for the whole
payment); a node forwards the requests for partitions it does not own, so
about (N - 1) / N of them cross between nodes. The load starts once every
partition has an owner and the shares are even: until then a partition
may be on the move, and a request for it answers 503.

The node gets the run's database and a Redis key prefix of its own; the
merchant whose key the bench uses has the highest rate limit the schema
allows, so the limiter is exercised (one Redis call per request) without
refusing anything. Payment methods are made once, before the clock starts.

3-D Secure: the bench passes the challenge on the simulator's page, as a
cardholder would (POST /simulator/3ds/{attempt}), then polls the intent
until it is `succeeded`; that last part is the `challenge` operation. The
nodes of `up --nodes N` do not serve the simulator's pages (only a node
with the simulator in its own process does), so there the cardholder
answers on the simulator service instead (POST /v1/challenges/{attempt}).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any, NamedTuple
from urllib.parse import urlsplit

import msgspec
import trio
import trio_asyncio

from bench.arrivals import Arrival
from bench.histograms import Outcome, Recorder, Steps
from bench.http_client import TIMED_OUT, HttpFailed, Pool, Templates
from bench.machine import child_processes, own_usage, process_usage
from bench.engine_mode import PROGRESS_EVERY_S
from bench.load import CARD_OF_SCENARIO, CARDS, CHALLENGE_POLL_S, LoadSettings, PaymentFailed, challenge_wait, expect_status, generate
from shards import checks
from store.leases import ClusterView
from store.postgres import Store

NODE_START_TIMEOUT_S = 60
NODE_STOP_TIMEOUT_S = 30
# `up --nodes N` gives its nodes up to 60 s to hand off and stop before it
# kills them; this bound is past that.
CLUSTER_STOP_TIMEOUT_S = 90
SPREAD_POLL_S = 0.25
# A URL in `up`'s banner (loopback, as the bench asks; never an IPv6 literal).
BANNER_URL = r"https?://[^\s,\[]+"
# Keep-alive connections to the simulator service, for 3-D Secure
# challenges only (one short request per 3-D Secure payment).
SIMULATOR_CONNECTIONS_MAX = 16
SETTLE_S_MAX = 30.0
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class NodeFailed(Exception):
    """The node process did not start or misbehaved; one line for a person."""


class RedirectToUrl(msgspec.Struct):
    url: str


class NextAction(msgspec.Struct):
    redirect_to_url: RedirectToUrl | None = None


class IntentView(msgspec.Struct):
    id: str
    status: str
    next_action: NextAction | None = None


class RefundView(msgspec.Struct):
    id: str
    status: str


class ErrorDetail(msgspec.Struct):
    type: str = ""
    code: str | None = None
    payment_intent: IntentView | None = None


class ErrorView(msgspec.Struct):
    error: ErrorDetail


class PaymentMethodView(msgspec.Struct):
    id: str


_intent = msgspec.json.Decoder(IntentView)
_refund = msgspec.json.Decoder(RefundView)
_error = msgspec.json.Decoder(ErrorView)


class Watched(NamedTuple):
    """A process whose CPU time and memory the run accounts."""

    name: str
    pid: int
    node: bool


class NodeProcess:
    """`payments up` on a free loopback port, with its log in `log_path`;
    with `nodes` > 1, `payments up --nodes N` (its nodes on free ports)."""

    def __init__(self, database_url: str, data_dir: Path, arguments: list[str], log_path: Path, nodes: int = 1) -> None:
        self.database_url = database_url
        self.data_dir = data_dir
        self.arguments = arguments
        self.log_path = log_path
        self.nodes = nodes
        self.process: subprocess.Popen | None = None
        self.urls: list[str] = []
        # The simulator service of `up --nodes N`; None when the node runs
        # the simulator in its own process.
        self.simulator_url: str | None = None
        # Under `--nodes`, the children's output `up` relays, copied into the log.
        self._relayed: IO[str] | None = None
        self._relay: threading.Thread | None = None
        # The nodes' keys (rate-limit buckets, event streams) live under a
        # prefix of this run's own, removed again by `forget_redis_keys`;
        # `up --nodes N` hands its environment down to the nodes.
        self.redis_url = os.environ.get("PAYMENTS_REDIS_URL") or DEFAULT_REDIS_URL
        self.redis_prefix = f"payments-bench:{secrets.token_hex(6)}:"

    def start(self) -> NodeProcess:
        environ = dict(
            os.environ,
            PAYMENTS_DATABASE_URL=self.database_url,
            PAYMENTS_REDIS_URL=self.redis_url,
            PAYMENTS_REDIS_PREFIX=self.redis_prefix,
        )
        nodes = ["--nodes", str(self.nodes)] if self.nodes > 1 else []
        command = [sys.executable, "-m", "payments.cli", "up", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(self.data_dir), *nodes]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*command, *self.arguments], stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=environ, text=True
            )
        stdout = self.process.stdout
        assert stdout is not None
        self._relayed = open(self.log_path, "a")
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = stdout.readline()
            if not line:
                break
            if self._read_banner(line):
                self._relay = threading.Thread(target=self._relay_output, args=(stdout,), daemon=True)
                self._relay.start()
                try:
                    if self.nodes > 1:
                        self._wait_spread(deadline)
                except BaseException:
                    self.stop()
                    raise
                return self
        self.kill()
        self._finish_relay()
        raise NodeFailed(f"the node did not start; {self.log_tail()}")

    def _read_banner(self, line: str) -> bool:
        """Take what a line of `up`'s output says; True once it has said
        where everything listens."""
        if self.nodes == 1:
            if match := re.match(r"payments up: listening on (\S+)", line):
                self.urls = [match.group(1)]
            return bool(self.urls)
        # `up` prints these lines while its threads relay the children's
        # output, and print() writes a line's end apart from its text: a
        # child's line may follow the URLs before the end of the line.
        if re.match(r"payments up: \d+ nodes sharing \d+ partitions: ", line):
            self.urls = re.findall(BANNER_URL, line)[: self.nodes]
        elif re.match(r"simulator:\s", line):
            self.simulator_url = next(iter(re.findall(BANNER_URL, line)), None)
        else:
            self._log_relayed(line)
        return len(self.urls) == self.nodes and self.simulator_url is not None

    def _relay_output(self, stdout: IO[str]) -> None:
        """Read the rest of `up`'s output: under `--nodes` it relays every
        child's log lines there, and a full pipe would stall the nodes."""
        for line in stdout:
            self._log_relayed(line)

    def _log_relayed(self, line: str) -> None:
        # Only the children's lines (`[node-0] ...`): `up`'s own say where
        # it listens and show the test merchant's keys.
        if line.startswith("[") and self._relayed is not None:
            self._relayed.write(line)

    def _finish_relay(self) -> None:
        """After `up` exited: the rest of its output into the log."""
        if self._relay is not None:
            self._relay.join(5)
        if self._relayed is not None and (self._relay is None or not self._relay.is_alive()):
            self._relayed.close()

    def _wait_spread(self, deadline: float) -> None:
        """Until the nodes share the partitions evenly; raises NodeFailed
        past the deadline."""
        if not trio.run(wait_partitions_spread, self.database_url, self.nodes, max(1.0, deadline - time.monotonic())):
            self.stop()
            raise NodeFailed(f"the {self.nodes} nodes did not share out the partitions within {NODE_START_TIMEOUT_S} s; {self.log_tail()}")

    @property
    def url(self) -> str:
        """The (first) node's URL."""
        return self.urls[0] if self.urls else ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def watched(self) -> list[Watched]:
        """The processes the run accounts: the node; under `--nodes`, each
        node, the simulator service and `up` itself (it relays their output).
        Raises NodeFailed when a node cannot be found."""
        if self.nodes == 1:
            return [Watched("node (gateway + actors)", self.pid, node=True)]
        nodes: dict[int, Watched] = {}
        others = []
        for pid, command in sorted(child_processes(self.pid).items()):
            if "--node-id" in command:
                node_id = command[command.index("--node-id") + 1]
                nodes[int(node_id.rpartition("-")[2])] = Watched(f"{node_id} (gateway + actors)", pid, node=True)
            elif "sim" in command:
                others.append(Watched("card-network simulator service", pid, node=False))
        if len(nodes) != self.nodes:
            raise NodeFailed(f"found {len(nodes)} of the {self.nodes} node processes under `payments up` (process {self.pid})")
        others.append(Watched("payments up --nodes (relays the output)", self.pid, node=False))
        return [nodes[index] for index in sorted(nodes)] + others

    def check_alive(self) -> None:
        """Raise NodeFailed, with the end of its log, if the node has exited."""
        if self.process is not None and self.process.poll() is not None:
            self._finish_relay()
            raise NodeFailed(f"the node exited with status {self.process.returncode} during the run; {self.log_tail()}")

    def log_tail(self) -> str:
        """The last line of the node's log that is not part of a traceback frame."""
        try:
            lines = [line.strip(" |+") for line in self.log_path.read_text(errors="replace").splitlines()]
        except OSError:
            return "its log cannot be read"
        lines = [line for line in lines if line and not line.startswith(("File ", "^", "-"))]
        return f"its log ends with: {lines[-1][:300] if lines else '(nothing)'} (log: {self.log_path})"

    def stop(self) -> int | None:
        """SIGTERM, then wait for its clean shutdown (kill past the bound;
        the nodes of `up --nodes N` die with it)."""
        if self.process is None:
            return None
        try:
            if self.process.poll() is not None:
                return self.process.returncode
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(NODE_STOP_TIMEOUT_S if self.nodes == 1 else CLUSTER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        finally:
            self._finish_relay()

    def forget_redis_keys(self, keys_max: int = 1_000_000) -> int:
        """Delete the run's keys from Redis (after the node stopped); bounded.
        Returns how many went; 0 when Redis cannot be reached."""
        import redis

        deleted = 0
        try:
            client = redis.Redis.from_url(self.redis_url, socket_timeout=10)
            try:
                batch = []
                for key in client.scan_iter(match=f"{self.redis_prefix}*", count=1000):
                    batch.append(key)
                    if len(batch) == 1000:
                        deleted += client.delete(*batch)
                        batch = []
                    if deleted + len(batch) >= keys_max:
                        break
                if batch:
                    deleted += client.delete(*batch)
            finally:
                client.close()
        except redis.RedisError:
            return deleted
        return deleted

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def spread_evenly(view: ClusterView, nodes: int) -> bool:
    """Whether `nodes` members hold every partition between them, their
    shares at most one apart: where rebalancing stops moving partitions."""
    shares = Counter({member.node_id: 0 for member in view.members if not member.leaving})
    if len(shares) < nodes:
        return False
    for lease in view.leases:
        if lease.owner not in shares or lease.expires_in_s <= 0:
            return False
        shares[lease.owner] += 1
    return max(shares.values()) - min(shares.values()) <= 1


async def wait_partitions_spread(database_url: str, nodes: int, timeout_s: float) -> bool:
    """Wait (bounded) until the partitions are spread evenly over the nodes
    and every node has heard so: a node that joins takes its share over a
    few heartbeats, a node forwards by the view its last heartbeat read, and
    meanwhile a request for a partition on the move answers 503. False past
    the bound."""
    async with trio_asyncio.open_loop():
        store = await Store.open(database_url, connections_max=1)
        try:
            with trio.move_on_after(timeout_s):
                spread_at = None
                while True:
                    view = await store.leases.view()
                    now = trio.current_time()
                    if not spread_evenly(view, nodes):
                        spread_at = None
                    elif spread_at is None:
                        spread_at = now
                    elif all(member.silent_s < now - spread_at for member in view.members):
                        return True
                    await trio.sleep(SPREAD_POLL_S)
        finally:
            await store.close()
    return False


# Answers that refuse a request for overload, as a client sees them: a 503
# says the node (or the partition) is at capacity, a 429 that the merchant
# asks too fast. Both say "retry shortly". A 503 for the database being away
# reads the same (the gateway tells them apart only in its message), so it
# counts as shed too: to the client it is the same refusal.
SHED_ANSWERS = {(503, "service_unavailable"): Outcome.shed, (429, "rate_limit"): Outcome.rate_limited}


def _failed(operation: str, status: int, body: bytes) -> PaymentFailed:
    code = ""
    if status >= 400:
        try:
            code = _error.decode(body).error.code or ""
        except msgspec.DecodeError:
            code = ""
    outcome = SHED_ANSWERS.get((status, code), Outcome.failed)
    return PaymentFailed(f"{operation}_http_{status}" + (f"_{code}" if code else ""), outcome, operation)


class Route(NamedTuple):
    """Keep-alive connections to one server, and its request templates."""

    pool: Pool
    templates: Templates


def open_route(url: str, connections: int, secret_key: str | None = None) -> Route:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    return Route(Pool(host, port, connections), Templates(host, port, secret_key))


def spread(connections: int, nodes: int) -> list[int]:
    """`connections` shared out over `nodes` as evenly as whole numbers allow."""
    assert connections >= nodes >= 1
    return [connections // nodes + (index < connections % nodes) for index in range(nodes)]


class HttpDriver:
    """Pays through the nodes' routes, each payment on the next node in
    turn; with `simulator`, 3-D Secure challenges are answered there."""

    def __init__(self, routes: list[Route], payment_methods: dict[str, str], simulator: Route | None = None) -> None:
        self.routes = routes
        self.payment_methods = payment_methods
        self.simulator = simulator
        self._turn = 0
        # Intents that a fault left `processing`, to wait for at the end.
        self.unsettled: list[str] = []
        # What the caller of each finished payment was told last, checked
        # against the journal at the end (I4).
        self.acknowledged: dict[str, checks.Acknowledged] = {}

    async def _request(self, pool: Pool, request: bytes, steps: Steps, operation: str) -> tuple[int, bytes]:
        steps.sent()
        try:
            return await pool.request(request)
        except HttpFailed as failure:
            outcome = Outcome.timed_out if failure.kind == TIMED_OUT else Outcome.failed
            raise PaymentFailed(f"{operation}_{failure.kind}", outcome, operation) from None

    async def _intent_step(self, pool: Pool, request: bytes, steps: Steps, operation: str) -> IntentView:
        status, body = await self._request(pool, request, steps, operation)
        if status != 200:
            raise _failed(operation, status, body)
        return _intent.decode(body)

    def _challenge(self, route: Route, url: str) -> tuple[Pool, bytes]:
        """Where and how the cardholder passes the challenge at `url`."""
        path = urlsplit(url).path
        if self.simulator is None:
            return route.pool, route.templates.post(path, b"result=pass")
        reference = path.rpartition("/")[2]
        return self.simulator.pool, self.simulator.templates.post(f"/v1/challenges/{reference}", b'{"passed":true}', b"application/json")

    def refuses_now(self) -> bool:
        """Never: over HTTP a refusal is the node's answer, and is measured."""
        return False

    async def pay(self, arrival: Arrival, due: float, recorder: Recorder) -> None:
        route = self.routes[self._turn % len(self.routes)]
        self._turn += 1
        pool, templates = route
        scenario = arrival.scenario
        steps = Steps(recorder)
        body = f"amount={arrival.amount_minor}&currency=usd&payment_method={self.payment_methods[CARD_OF_SCENARIO[scenario]]}"
        if scenario == "manual":
            body += "&capture_method=manual"
        intent = await self._intent_step(pool, templates.post("/v1/payment_intents", body.encode()), steps, "create")
        now = trio.current_time()
        recorder.operation("create", now - due)
        expect_status("create", intent.status, "requires_confirmation")
        intent_path = f"/v1/payment_intents/{intent.id}"

        started = now
        status, response = await self._request(pool, templates.post(intent_path + "/confirm"), steps, "confirm")
        now = trio.current_time()
        if scenario == "decline":
            if status != 402:
                raise _failed("confirm", status, response)
            declined = _error.decode(response).error.payment_intent
            recorder.operation("confirm", now - started)
            expect_status("confirm", declined.status if declined is not None else "none", "requires_payment_method")
            self.acknowledged[intent.id] = checks.Acknowledged("requires_payment_method")
            recorder.finished(scenario, due, now, steps)
            return
        if status != 200:
            raise _failed("confirm", status, response)
        intent = _intent.decode(response)
        refund_id = None
        recorder.operation("confirm", now - started)
        if intent.status == "processing":
            self.unsettled.append(intent.id)
        if scenario == "manual":
            expect_status("confirm", intent.status, "requires_capture")
            started = now
            intent = await self._intent_step(pool, templates.post(intent_path + "/capture"), steps, "capture")
            now = trio.current_time()
            recorder.operation("capture", now - started)
            expect_status("capture", intent.status, "succeeded")
        elif scenario == "3ds":
            expect_status("confirm", intent.status, "requires_action")
            if intent.next_action is None or intent.next_action.redirect_to_url is None:
                raise PaymentFailed("confirm_no_next_action", operation="confirm")
            started = now
            challenge_pool, challenge = self._challenge(route, intent.next_action.redirect_to_url.url)
            status, response = await self._request(challenge_pool, challenge, steps, "challenge")
            if status != 200:
                raise _failed("challenge", status, response)
            with challenge_wait():
                while intent.status != "succeeded":
                    await trio.sleep(CHALLENGE_POLL_S)
                    intent = await self._intent_step(pool, templates.get(intent_path), steps, "challenge")
            now = trio.current_time()
            expect_status("challenge", intent.status, "succeeded")
            recorder.operation("challenge", now - started)
        else:
            expect_status("confirm", intent.status, "succeeded")
            if scenario == "refund":
                started = now
                refund_body = f"payment_intent={intent.id}&amount={arrival.amount_minor // 2}".encode()
                status, response = await self._request(pool, templates.post("/v1/refunds", refund_body), steps, "refund")
                now = trio.current_time()
                if status != 200:
                    raise _failed("refund", status, response)
                recorder.operation("refund", now - started)
                refund = _refund.decode(response)
                expect_status("refund", refund.status, "succeeded")
                refund_id = refund.id
        self.acknowledged[intent.id] = checks.Acknowledged(intent.status, refund_id)
        recorder.finished(scenario, due, now, steps)

    async def settle(self) -> int:
        """Wait (bounded) until the intents faults left `processing` move on;
        returns how many did not."""
        left = list(self.unsettled)
        pool, templates = self.routes[0]
        with trio.move_on_after(SETTLE_S_MAX):
            while left:
                still = []
                for intent_id in left:
                    status, body = await pool.request(templates.get(f"/v1/payment_intents/{intent_id}"))
                    if status != 200 or _intent.decode(body).status == "processing":
                        still.append(intent_id)
                left = still
                if left:
                    await trio.sleep(0.2)
        return len(left)


async def create_payment_methods(pool: Pool, templates: Templates) -> dict[str, str]:
    methods = {}
    year = time.gmtime().tm_year + 3
    for name, number in CARDS.items():
        body = f"type=card&card[number]={number}&card[exp_month]=12&card[exp_year]={year}&card[cvc]=123".encode()
        status, response = await pool.request(templates.post("/v1/payment_methods", body))
        if status != 200:
            raise NodeFailed(f"creating a payment method answered {status}: {response[:200]!r}")
        methods[name] = msgspec.json.decode(response, type=PaymentMethodView).id
    return methods


def fetch_operations(url: str, secret_key: str, simulator_url: str | None = None) -> list[dict[str, Any]]:
    """The simulator's record of the operations: the merchant's, from the
    node that runs the simulator in its own process; or every operation,
    from the simulator service of `up --nodes N` (it served this run's
    database alone)."""
    import httpx

    if simulator_url is None:
        where, address, headers = "the node", f"{url}/simulator/operations", {"Authorization": f"Bearer {secret_key}"}
    else:
        where, address, headers = "the simulator service", f"{simulator_url}/v1/operations", {}
    try:
        response = httpx.get(address, headers=headers, timeout=300)
        response.raise_for_status()
    except httpx.HTTPError as error:
        raise NodeFailed(f"could not read the simulator's record from {where}: {type(error).__name__}: {error}") from None
    rows = response.json() if simulator_url is not None else response.json()["data"]
    return [{key: value for key, value in row.items() if key != "payment_intent"} for row in rows]


async def drive(
    urls: list[str], secret_key: str, connections: int, load: LoadSettings, on_progress: Any, watched: list[Watched],
    simulator_url: str | None = None,
) -> dict[str, Any]:
    """Run the load against the nodes, the connections spread over them;
    returns what was measured, with the CPU time and peak memory of each
    `watched` process over the load."""

    routes = [open_route(url, share, secret_key) for url, share in zip(urls, spread(connections, len(urls)))]
    simulator = None if simulator_url is None else open_route(simulator_url, min(connections, SIMULATOR_CONNECTIONS_MAX))
    try:
        methods = await create_payment_methods(*routes[0])
        driver = HttpDriver(routes, methods, simulator)
        start = trio.current_time() + 0.2
        start_wall = time.time() + 0.2
        recorder = Recorder(start)
        await trio.sleep_until(start)
        cpu_before, _ = own_usage()
        cpu_before_of = {process.pid: process_usage(process.pid)[0] for process in watched}
        async with trio.open_nursery() as reporting:

            async def report_progress() -> None:
                while True:
                    await trio.sleep(PROGRESS_EVERY_S)
                    on_progress(time.time() - start_wall, recorder.progress())

            reporting.start_soon(report_progress)
            await generate(driver, load, recorder)
            reporting.cancel_scope.cancel()
        wall_s = trio.current_time() - start
        cpu_after, peak_mb = own_usage()
        usage = []
        for process in watched:
            process_cpu_after, process_peak_mb = process_usage(process.pid)
            usage.append({"name": process.name, "node": process.node, "cpu_s": process_cpu_after - cpu_before_of[process.pid], "peak_rss_mb": process_peak_mb})
        unsettled = await driver.settle()
        return {
            "wall_s": wall_s,
            "cpu_s": cpu_after - cpu_before,
            "peak_rss_mb": peak_mb,
            "usage": usage,
            "unknown_left": unsettled,
            "recorder": recorder.export(),
            "acknowledged": driver.acknowledged,
        }
    finally:
        for route in routes + ([simulator] if simulator is not None else []):
            route.pool.close()
