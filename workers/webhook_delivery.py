"""Webhook delivery: from delivery rows to merchants' endpoints, at least
once.

The dispatcher runs one task per endpoint with pending deliveries. For each
intent it sends only the oldest pending event (stream order), so retries
never reorder one intent's events; different intents go in parallel,
bounded per endpoint. A failure (non-2xx, timeout, refused connection or
destination) is retried after the next delay of the schedule, with jitter;
after the last one the delivery is dead (the dead-letter list) until
someone asks for it again. A slow endpoint only slows itself. Each try goes
through workers/webhook_sender.py (one lookup, checked addresses only).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
import trio

from shards.destinations import GetAddrInfo
from shards.metrics import Metrics
from shards.vault import Vault
from store.errors import StoreUnavailable
from store.postgres import Store
from store.rows import DeliveryAttemptRow, DeliveryRow, EventRow, WebhookEndpointRow
from workers.errors import WorkerErrors
from workers.webhook_endpoints import EndpointCache, now_ms
from workers.webhook_sender import WebhookSender, signature_header

log = structlog.get_logger("workers.webhook_delivery")

# About three days in all, like Stripe's schedule for live mode.
DEFAULT_RETRY_SCHEDULE_S = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14_400.0, 28_800.0, 43_200.0, 86_400.0, 86_400.0, 86_400.0)
RETRY_DELAYS_MAX = 50
RETRY_DELAY_S_MAX = 7 * 86_400.0
JITTER = 0.2  # each delay is stretched or shrunk by up to this share


class ScheduleError(ValueError):
    """A retry schedule that cannot be used; the message says why."""


def parse_schedule(text: str) -> tuple[float, ...]:
    """`PAYMENTS_WEBHOOK_RETRY_SCHEDULE`: delays in seconds between tries,
    comma-separated. An empty text means: one try, no retries."""
    if not text.strip():
        return ()
    delays = []
    for part in text.split(","):
        try:
            delay = float(part)
        except ValueError:
            raise ScheduleError(f"retry schedule: {part.strip()!r} is not a number of seconds") from None
        if not 0 <= delay <= RETRY_DELAY_S_MAX:
            raise ScheduleError(f"retry schedule: each delay must be from 0 to {RETRY_DELAY_S_MAX:.0f} seconds")
        delays.append(delay)
    if len(delays) > RETRY_DELAYS_MAX:
        raise ScheduleError(f"retry schedule: at most {RETRY_DELAYS_MAX} delays")
    return tuple(delays)


def next_delay_s(schedule: tuple[float, ...], tries: int, rng: random.Random) -> float | None:
    """The wait before the next try after `tries` failed ones; None when
    there is none left."""
    if tries > len(schedule):
        return None
    return schedule[tries - 1] * (1 - JITTER + 2 * JITTER * rng.random())


class DispatchConfig(msgspec.Struct, frozen=True):
    schedule_s: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE_S
    timeout_s: float = 10.0
    concurrency_per_endpoint: int = 4
    scan_rows_max: int = 1000
    poll_s: float = 1.0
    # Endpoints waiting for a task of their own; past this a wake-up is
    # dropped (logged) and the periodic scan finds the endpoint instead.
    wakeups_queued_max: int = 10_000
    # Let endpoints point at loopback, private and other internal addresses
    # (`payments up --allow-private-webhooks`, local development only).
    allow_private: bool = False


class Dispatcher:
    """Made before it runs (`run_webhook_delivery`), so that the ingest and
    the API can wake it from the start."""

    def __init__(
        self,
        store: Store,
        vault: Vault,
        endpoints: EndpointCache,
        render: Callable[[EventRow], bytes],
        config: DispatchConfig = DispatchConfig(),
        *,
        rng: random.Random | None = None,
        getaddrinfo: GetAddrInfo | None = None,
        errors: WorkerErrors | None = None,
    ) -> None:
        self.store = store
        self.vault = vault
        self.endpoints = endpoints
        self.render = render
        self.config = config
        self.rng = rng or random.Random()
        self.getaddrinfo = getaddrinfo
        self.errors = errors or WorkerErrors("webhook_delivery")
        self._running: dict[str, trio.Event] = {}  # endpoint id -> its wake-up
        self._start: trio.MemorySendChannel[str]
        self._start, self._to_start = trio.open_memory_channel[str](config.wakeups_queued_max)
        self.attempts_total = 0
        # The node's metrics (shards.metrics), when it keeps them.
        self.metrics: Metrics | None = None

    def wake(self, endpoint_ids: set[str] | list[str]) -> None:
        for endpoint_id in endpoint_ids:
            event = self._running.get(endpoint_id)
            if event is not None:
                event.set()
                continue
            try:
                self._start.send_nowait(endpoint_id)
            except trio.WouldBlock:
                # The periodic scan finds it.
                self.errors.record("webhook_wakeup_dropped", endpoint_id=endpoint_id, queued_max=self.config.wakeups_queued_max)

    async def serve(self, sender: WebhookSender, task_status: Any) -> None:
        self._sender = sender
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._scan_forever)
            task_status.started(self)
            async for endpoint_id in self._to_start:
                if endpoint_id not in self._running:
                    self._running[endpoint_id] = trio.Event()
                    nursery.start_soon(self._serve_endpoint, endpoint_id)

    async def _scan_forever(self) -> None:
        """Find endpoints with pending deliveries nobody serves (after a
        restart, or when a wake-up was dropped)."""
        while True:
            try:
                self.wake(await self.store.webhooks.endpoints_with_pending())
                if self.metrics is not None:
                    for state, count in (await self.store.webhooks.count_waiting()).items():
                        self.metrics.webhook_backlog.labels(state).set(count)
            except StoreUnavailable as error:
                self.errors.record("webhook_scan_failed", error=str(error))
            await trio.sleep(self.config.poll_s * 5)

    async def _serve_endpoint(self, endpoint_id: str) -> None:
        try:
            while True:
                woken = self._running[endpoint_id]
                try:
                    if not await self._serve_once(endpoint_id, woken) and not woken.is_set():
                        return
                # One try's failure to record comes out of the sends' nursery
                # in a group: caught as a group, it no longer ends the node.
                except* StoreUnavailable as failures:
                    self.errors.record("webhook_dispatch_waiting", endpoint_id=endpoint_id, error=str(failures.exceptions[0]))
                    await trio.sleep(self.config.poll_s)
        finally:
            del self._running[endpoint_id]

    async def _serve_once(self, endpoint_id: str, woken: trio.Event) -> bool:
        """Send what is due; False when the endpoint has nothing pending."""
        await self.endpoints.refresh()
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None:
            await self.endpoints.refresh(force=True)
            endpoint = self.endpoints.get(endpoint_id)
            if endpoint is None:
                return False  # deleted: its deliveries are dead already
        pending = await self.store.webhooks.pending_deliveries(endpoint_id, self.config.scan_rows_max)
        if not pending:
            return False
        heads: dict[str, DeliveryRow] = {}
        for delivery in pending:
            heads.setdefault(delivery.intent_id, delivery)
        stamp = now_ms()
        due = [delivery for delivery in heads.values() if delivery.next_attempt_ms <= stamp]
        if endpoint.status != "enabled" or not due:
            wait_s = self.config.poll_s
            if endpoint.status == "enabled":
                wait_s = min(wait_s, max(0.0, (min(d.next_attempt_ms for d in heads.values()) - stamp) / 1000))
            with trio.move_on_after(wait_s):
                await woken.wait()
            self._running[endpoint_id] = trio.Event()
            return True
        events = {event.id: event for event in await self.store.events.get_many([delivery.event_id for delivery in due])}
        limiter = trio.CapacityLimiter(self.config.concurrency_per_endpoint)
        async with trio.open_nursery() as sends:
            for delivery in due:
                event = events.get(delivery.event_id)
                if event is None:
                    self.errors.record("webhook_event_missing", endpoint_id=endpoint_id, event_id=delivery.event_id)
                    continue
                sends.start_soon(self._deliver, limiter, endpoint, delivery, event)
        return True

    async def _deliver(self, limiter: trio.CapacityLimiter, endpoint: WebhookEndpointRow, delivery: DeliveryRow, event: EventRow) -> None:
        async with limiter:
            status_code, error, latency_ms = await self._post(endpoint, event)
        tries = delivery.attempts + 1
        stamp = now_ms()
        if status_code is not None and 200 <= status_code < 300:
            status, next_ms = "delivered", stamp
        else:
            delay = next_delay_s(self.config.schedule_s, tries, self.rng)
            status, next_ms = ("dead", stamp) if delay is None else ("pending", stamp + int(delay * 1000))
        moved = msgspec.structs.replace(delivery, status=status, attempts=tries, next_attempt_ms=next_ms, updated_s=stamp // 1000)
        attempt = DeliveryAttemptRow(endpoint.id, event.id, tries, stamp, status_code, latency_ms, error)
        self.attempts_total += 1
        if self.metrics is not None:
            self.metrics.webhook_deliveries.labels("failed" if status == "pending" else status).inc()
        log.info(
            "webhook_delivery_attempted",
            endpoint_id=endpoint.id,
            event_id=event.id,
            event_type=event.type,
            attempt=tries,
            status_code=status_code,
            latency_ms=latency_ms,
            error=error,
            outcome=status,
        )
        if status != "delivered":
            self.errors.record("webhook_delivery_failed", endpoint_id=endpoint.id, event_id=event.id, attempt=tries, error=error, outcome=status)
        await self.store.webhooks.record_attempt(moved, attempt)

    async def _post(self, endpoint: WebhookEndpointRow, event: EventRow) -> tuple[int | None, str | None, int]:
        """One try: (status code, error, latency). The error is None only
        for a 2xx answer."""
        started = time.perf_counter()
        body = self.render(event)
        secret = self.vault.unseal(endpoint.secret_sealed, endpoint.id)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": signature_header(secret, body, int(time.time())),
            "User-Agent": "payments-webhooks/1",
        }
        status_code, error = await self._sender.post(endpoint.url, body, headers)
        if status_code is not None and not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
        latency_ms = int((time.perf_counter() - started) * 1000)
        return status_code, error, latency_ms


async def run_webhook_delivery(dispatcher: Dispatcher, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Deliver pending webhooks until cancelled; the dispatcher is passed to
    `task_status.started`. A failed try is logged and counted and retried on
    the schedule; a database error is logged and counted, and the endpoint
    is served again after `poll_s`."""
    config = dispatcher.config
    async with WebhookSender(timeout_s=config.timeout_s, allow_private=config.allow_private, getaddrinfo=dispatcher.getaddrinfo) as sender:
        await dispatcher.serve(sender, task_status)
