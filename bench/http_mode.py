"""HTTP mode: a real node (`payments up`) as a child process, driven over
loopback through keep-alive connections with the bench's minimal client.

The node gets the run's database and a Redis key prefix of its own; the
merchant whose key the bench uses has the highest rate limit the schema
allows, so the limiter is exercised (one Redis call per request) without
refusing anything. Payment methods are made once, before the clock starts.

3-D Secure: the bench passes the challenge on the simulator's page, as a
cardholder would (POST /simulator/3ds/{attempt}), then polls the intent
until it is `succeeded`; that last part is the `challenge` operation.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import trio

from bench.arrivals import Arrival
from bench.histograms import Recorder
from bench.http_client import HttpFailed, Pool, Templates
from bench.machine import own_usage, process_usage
from bench.engine_mode import PROGRESS_EVERY_S
from bench.load import CARD_OF_SCENARIO, CARDS, CHALLENGE_POLL_S, CHALLENGE_WAIT_S, LoadSettings, PaymentFailed, expect_status, generate

NODE_START_TIMEOUT_S = 60
NODE_STOP_TIMEOUT_S = 30
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


class NodeProcess:
    """`payments up` on a free loopback port, with its log in `log_path`."""

    def __init__(self, database_url: str, data_dir: Path, arguments: list[str], log_path: Path) -> None:
        self.database_url = database_url
        self.data_dir = data_dir
        self.arguments = arguments
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.redis_url = os.environ.get("PAYMENTS_REDIS_URL") or DEFAULT_REDIS_URL
        # The node's keys (rate-limit buckets, event streams) live under a
        # prefix of this run's own, removed again by `forget_redis_keys`.
        self.redis_prefix = f"payments-bench:{secrets.token_hex(6)}:"

    def start(self) -> NodeProcess:
        environ = dict(
            os.environ,
            PAYMENTS_DATABASE_URL=self.database_url,
            PAYMENTS_REDIS_URL=self.redis_url,
            PAYMENTS_REDIS_PREFIX=self.redis_prefix,
        )
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "payments.cli", "up", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(self.data_dir), *self.arguments],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=environ,
                text=True,
            )
        assert self.process.stdout is not None
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            if match := re.match(r"payments up: listening on (\S+)", line):
                self.url = match.group(1)
                return self
        self.kill()
        raise NodeFailed(f"the node did not start; {self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def check_alive(self) -> None:
        """Raise NodeFailed, with the end of its log, if the node has exited."""
        if self.process is not None and self.process.poll() is not None:
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
        """SIGTERM, then wait for its clean shutdown (kill past the bound)."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(NODE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

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


def _failed(operation: str, status: int, body: bytes) -> PaymentFailed:
    code = ""
    if status >= 400:
        try:
            code = _error.decode(body).error.code or ""
        except msgspec.DecodeError:
            code = ""
    return PaymentFailed(f"{operation}_http_{status}" + (f"_{code}" if code else ""))


class HttpDriver:
    def __init__(self, pool: Pool, templates: Templates, payment_methods: dict[str, str]) -> None:
        self.pool = pool
        self.templates = templates
        self.payment_methods = payment_methods
        # Intents that a fault left `processing`, to wait for at the end.
        self.unsettled: list[str] = []

    async def _request(self, request: bytes, recorder: Recorder, operation: str) -> tuple[int, bytes]:
        recorder.requests += 1
        try:
            return await self.pool.request(request)
        except HttpFailed as failure:
            raise PaymentFailed(f"{operation}_{failure.kind}") from None

    async def _intent_step(self, request: bytes, recorder: Recorder, operation: str) -> IntentView:
        status, body = await self._request(request, recorder, operation)
        if status != 200:
            raise _failed(operation, status, body)
        return _intent.decode(body)

    async def pay(self, arrival: Arrival, due: float, recorder: Recorder) -> None:
        templates = self.templates
        scenario = arrival.scenario
        body = f"amount={arrival.amount_minor}&currency=usd&payment_method={self.payment_methods[CARD_OF_SCENARIO[scenario]]}"
        if scenario == "manual":
            body += "&capture_method=manual"
        intent = await self._intent_step(templates.post("/v1/payment_intents", body.encode()), recorder, "create")
        now = trio.current_time()
        recorder.operation("create", now - due)
        expect_status("create", intent.status, "requires_confirmation")
        intent_path = f"/v1/payment_intents/{intent.id}"

        started = now
        status, response = await self._request(templates.post(intent_path + "/confirm"), recorder, "confirm")
        now = trio.current_time()
        if scenario == "decline":
            if status != 402:
                raise _failed("confirm", status, response)
            declined = _error.decode(response).error.payment_intent
            recorder.operation("confirm", now - started)
            expect_status("confirm", declined.status if declined is not None else "none", "requires_payment_method")
            recorder.finished(scenario, due, now)
            return
        if status != 200:
            raise _failed("confirm", status, response)
        intent = _intent.decode(response)
        recorder.operation("confirm", now - started)
        if intent.status == "processing":
            self.unsettled.append(intent.id)
        if scenario == "manual":
            expect_status("confirm", intent.status, "requires_capture")
            started = now
            intent = await self._intent_step(templates.post(intent_path + "/capture"), recorder, "capture")
            now = trio.current_time()
            recorder.operation("capture", now - started)
            expect_status("capture", intent.status, "succeeded")
        elif scenario == "3ds":
            expect_status("confirm", intent.status, "requires_action")
            if intent.next_action is None or intent.next_action.redirect_to_url is None:
                raise PaymentFailed("confirm_no_next_action")
            started = now
            challenge = urlsplit(intent.next_action.redirect_to_url.url).path
            status, response = await self._request(templates.post(challenge, b"result=pass"), recorder, "challenge")
            if status != 200:
                raise PaymentFailed(f"challenge_http_{status}")
            with trio.move_on_after(CHALLENGE_WAIT_S):
                while intent.status != "succeeded":
                    await trio.sleep(CHALLENGE_POLL_S)
                    intent = await self._intent_step(templates.get(intent_path), recorder, "challenge")
            now = trio.current_time()
            expect_status("challenge", intent.status, "succeeded")
            recorder.operation("challenge", now - started)
        else:
            expect_status("confirm", intent.status, "succeeded")
            if scenario == "refund":
                started = now
                refund_body = f"payment_intent={intent.id}&amount={arrival.amount_minor // 2}".encode()
                status, response = await self._request(templates.post("/v1/refunds", refund_body), recorder, "refund")
                now = trio.current_time()
                if status != 200:
                    raise _failed("refund", status, response)
                recorder.operation("refund", now - started)
                expect_status("refund", _refund.decode(response).status, "succeeded")
        recorder.finished(scenario, due, now)

    async def settle(self) -> int:
        """Wait (bounded) until the intents faults left `processing` move on;
        returns how many did not."""
        left = list(self.unsettled)
        with trio.move_on_after(SETTLE_S_MAX):
            while left:
                still = []
                for intent_id in left:
                    status, body = await self.pool.request(self.templates.get(f"/v1/payment_intents/{intent_id}"))
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


def fetch_operations(url: str, secret_key: str) -> list[dict[str, Any]]:
    """The simulator's record of the merchant's operations (the node serves it)."""
    import httpx

    try:
        response = httpx.get(f"{url}/simulator/operations", headers={"Authorization": f"Bearer {secret_key}"}, timeout=300)
        response.raise_for_status()
    except httpx.HTTPError as error:
        raise NodeFailed(f"could not read the simulator's record from the node: {type(error).__name__}: {error}") from None
    return [{key: value for key, value in row.items() if key != "payment_intent"} for row in response.json()["data"]]


async def drive(
    url: str, secret_key: str, connections: int, load: LoadSettings, on_progress: Any, node_pid: int
) -> dict[str, Any]:
    """Run the load against a node; returns what was measured."""

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    pool = Pool(host, port, connections)
    templates = Templates(host, port, secret_key)
    try:
        methods = await create_payment_methods(pool, templates)
        driver = HttpDriver(pool, templates, methods)
        start = trio.current_time() + 0.2
        start_wall = time.time() + 0.2
        recorder = Recorder(start)
        await trio.sleep_until(start)
        cpu_before, _ = own_usage()
        node_cpu_before, _ = process_usage(node_pid)
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
        node_cpu_after, node_peak_mb = process_usage(node_pid)
        unsettled = await driver.settle()
        return {
            "wall_s": wall_s,
            "cpu_s": cpu_after - cpu_before,
            "peak_rss_mb": peak_mb,
            "node_cpu_s": node_cpu_after - node_cpu_before,
            "node_peak_rss_mb": node_peak_mb,
            "unknown_left": unsettled,
            "recorder": recorder.export(),
        }
    finally:
        pool.close()
