"""Webhooks: from the event streams to merchants' endpoints, at least once.

Two workers, both in the node:

- the *ingest* reads the partitions' streams in the consumer group
  `webhooks`, turns each event into one delivery row per matching endpoint
  (durable in PostgreSQL), and only then acknowledges the stream entries. A
  crash in between re-reads the entries, and the rows are keyed by
  (endpoint, event), so nothing is queued twice;
- the *dispatcher* runs one task per endpoint with pending deliveries. For
  each intent it sends only the oldest pending event (stream order), so
  retries never reorder one intent's events; different intents go in
  parallel, bounded per endpoint. A failure (non-2xx, timeout, refused
  connection) is retried after the next delay of the schedule, with jitter;
  after the last one the delivery is dead (the dead-letter list) until
  someone asks for it again. A slow endpoint only slows itself.

Endpoints are merchants' URLs sent to from inside our network, so each try
looks the host up once, refuses it (a failed try, nothing sent) unless all
its addresses are public (shards/destinations.py), and connects to exactly
those addresses; redirects are not followed. `--allow-private-webhooks`
lifts the address rule for local development.

The signature is Stripe's: `Stripe-Signature: t=<unix>,v1=<hex>` with
v1 = HMAC-SHA256(secret, "<t>.<body>").
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import random
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, NamedTuple

import httpcore
import httpx
import msgspec
import structlog
import trio

from shards.destinations import (
    REFUSED_TEXT,
    DestinationRefused,
    GetAddrInfo,
    IPAddress,
    address_allowed,
    is_local_name,
    literal_address,
    resolve_destination,
)
from shards.outbox import OutboxRelay, trim_streams_forever
from shards.vault import Vault
from store.errors import RedisUnavailable, StoreUnavailable
from store.postgres import Store
from store.redis_link import RedisLink
from store.rows import DeliveryAttemptRow, DeliveryRow, EventRow, WebhookEndpointRow

log = structlog.get_logger("shards.webhooks")

GROUP = "webhooks"
# About three days in all, like Stripe's schedule for live mode.
DEFAULT_RETRY_SCHEDULE_S = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14_400.0, 28_800.0, 43_200.0, 86_400.0, 86_400.0, 86_400.0)
RETRY_DELAYS_MAX = 50
RETRY_DELAY_S_MAX = 7 * 86_400.0
JITTER = 0.2  # each delay is stretched or shrunk by up to this share
URL_CHARS_MAX = 2048


class ScheduleError(ValueError):
    pass


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


def signature_header(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


# ---------------------------------------------------------------- urls


class EndpointUrlError(ValueError):
    pass


def check_url(url: str, livemode: bool, allow_private: bool = False) -> str:
    """The URL, if an endpoint may have it; else EndpointUrlError saying why.

    In every mode the host may not be `localhost` (or under it) nor a literal
    address that is not public (loopback, private, link-local, shared, ...;
    shards/destinations.py), read as a connection would read it, so
    `http://2130706433/` is 127.0.0.1. Live mode also needs https and a
    dotted, non-`.local` name. allow_private lifts the host rules, not https.
    Names are judged again, by their addresses, at each delivery."""
    if len(url) > URL_CHARS_MAX:
        raise EndpointUrlError(f"The URL must be at most {URL_CHARS_MAX} characters.")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # urlsplit checks the port only when it is read
        # The host as the sender will connect to it (IDNA, `。` read as `.`).
        host = httpx.URL(url).raw_host.decode("ascii")
    except (ValueError, httpx.InvalidURL):
        raise EndpointUrlError("Invalid URL.") from None
    if port == 0:
        raise EndpointUrlError("Invalid URL: port 0 cannot be reached.")
    if parts.scheme not in ("http", "https") or not parts.hostname or not host:
        raise EndpointUrlError("Invalid URL: it must be an absolute http or https URL.")
    if parts.username is not None or parts.password is not None:
        raise EndpointUrlError("Invalid URL: credentials may not be part of the URL.")
    if any(character.isspace() or ord(character) < 32 for character in url):
        raise EndpointUrlError("Invalid URL.")
    if livemode and parts.scheme != "https":
        raise EndpointUrlError("Live-mode webhook endpoints must use https.")
    if allow_private:
        return url
    if is_local_name(host):
        raise EndpointUrlError("Webhook endpoints may not point at a local host.")
    address = literal_address(host)
    if address is not None and not address_allowed(address):
        raise EndpointUrlError("Webhook endpoints may not point at loopback, link-local, private or other internal addresses.")
    name = host.rstrip(".")
    if livemode and address is None and (name.endswith(".local") or "." not in name):
        raise EndpointUrlError("Live-mode webhook endpoints may not point at a local host.")
    return url


# ----------------------------------------------------------- endpoints


class EndpointCache:
    """Every endpoint of every merchant, reloaded now and then and whenever
    the API changes one on this node."""

    def __init__(self, store: Store, refresh_s: float = 2.0) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._by_id: dict[str, WebhookEndpointRow] = {}
        self._by_merchant: dict[tuple[str, bool], list[WebhookEndpointRow]] = {}
        self._loaded_at = float("-inf")

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")

    async def refresh(self, *, force: bool = False) -> None:
        if not force and trio.current_time() - self._loaded_at < self.refresh_s:
            return
        rows = await self.store.webhooks.list_endpoints(None)
        by_merchant: dict[tuple[str, bool], list[WebhookEndpointRow]] = {}
        for row in rows:
            by_merchant.setdefault((row.merchant_id, row.livemode), []).append(row)
        self._by_id = {row.id: row for row in rows}
        self._by_merchant = by_merchant
        self._loaded_at = trio.current_time()

    def get(self, endpoint_id: str) -> WebhookEndpointRow | None:
        return self._by_id.get(endpoint_id)

    def matching(self, event: EventRow) -> list[WebhookEndpointRow]:
        return [
            endpoint
            for endpoint in self._by_merchant.get((event.merchant_id, event.livemode), ())
            if "*" in endpoint.enabled_events or event.type in endpoint.enabled_events
        ]


def new_deliveries(event: EventRow, endpoints: list[WebhookEndpointRow], now_ms: int) -> list[DeliveryRow]:
    return [
        DeliveryRow(
            endpoint_id=endpoint.id,
            event_id=event.id,
            partition=event.partition,
            seq=event.seq,
            idx=event.idx,
            intent_id=event.intent_id,
            status="pending",
            attempts=0,
            next_attempt_ms=now_ms,
            updated_s=now_ms // 1000,
        )
        for endpoint in endpoints
    ]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -------------------------------------------------------------- ingest


class WebhookIngest:
    def __init__(
        self,
        store: Store,
        redis: RedisLink,
        partitions: list[int],
        endpoints: EndpointCache,
        on_queued: Callable[[set[str]], None],
        *,
        consumer: str = "node",
        count: int = 1000,
        block_ms: int = 200,
        retry_s: float = 0.5,
    ) -> None:
        self.store = store
        self.redis = redis
        self.partitions = partitions
        self.endpoints = endpoints
        self.on_queued = on_queued
        self.consumer = consumer
        self.count = count
        self.block_ms = block_ms
        self.retry_s = retry_s
        self.ingested_total = 0

    async def run(self) -> None:
        ready = False
        pending = True  # first what this consumer read before a crash but never acknowledged
        while True:
            try:
                if not ready:
                    await self.redis.ensure_group(self.partitions, GROUP)
                    ready = True
                entries = await self.redis.read_group(
                    GROUP, self.consumer, self.partitions, pending=pending, count=self.count, block_ms=self.block_ms
                )
                if pending and not entries:
                    pending = False
                    continue
                if entries:
                    await self._queue(entries)
            except (StoreUnavailable, RedisUnavailable) as error:
                log.warning("webhook_ingest_waiting", waiting_for=error.service, error=str(error))
                # Redis may have restarted empty: make the groups again.
                ready = False
                pending = True
                await trio.sleep(self.retry_s)

    async def _queue(self, entries: list[Any]) -> None:
        await self.endpoints.refresh()
        stamp = now_ms()
        rows = [row for entry in entries for row in new_deliveries(entry.event, self.endpoints.matching(entry.event), stamp)]
        queued: dict[int, tuple[int, int]] = {}
        for entry in entries:
            event = entry.event
            queued[event.partition] = max(queued.get(event.partition, (0, -1)), (event.seq, event.idx))
        await self.store.webhooks.add_deliveries(rows, queued)
        await self.redis.ack(GROUP, entries)
        self.ingested_total += len(entries)
        if rows:
            self.on_queued({row.endpoint_id for row in rows})


# -------------------------------------------------------------- sending


class Pin(NamedTuple):
    """The addresses checked for one delivery attempt's host and port."""

    host: str
    port: int
    addresses: tuple[IPAddress, ...]


# Set by WebhookSender.post around one request, read by PinnedBackend when
# that request opens a connection (httpcore connects in the requesting task).
_pin: contextvars.ContextVar[Pin | None] = contextvars.ContextVar("webhook_pin", default=None)


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to the addresses checked for the delivery
    attempt running in this task: the URL's host name is never looked up a
    second time between the check and the connection, so DNS cannot answer
    a public address to the one and an internal one to the other. TLS is
    still started (by httpcore) for the URL's host name, so SNI and the
    certificate check use the name, not the address. `backend` opens the
    connections to numeric addresses (tests wrap it)."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.backend = backend or httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pin = _pin.get()
        # Only WebhookSender.post sends, and it pins the request's own host;
        # anything else is a bug, and the pin's addresses were checked anyway.
        assert pin is not None and (pin.host, pin.port) == (host, port), f"no checked address for {host}:{port}"
        failure: httpcore.ConnectError | None = None
        for address in pin.addresses:
            try:
                return await self.backend.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as error:
                failure = error  # the next checked address may answer
        assert failure is not None  # resolve_destination never returns no address
        raise failure

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


# Failures a try records by the library's class name (ConnectError,
# ReadTimeout, RemoteProtocolError, ...).
_SEND_ERRORS = (httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError, httpcore.UnsupportedProtocol)


class WebhookSender:
    """POSTs a body to endpoint URLs, one try per call.

    Each try looks the host up once, refuses it unless every address is
    allowed (shards/destinations.py; all are when allow_private), and then
    connects to one of those addresses only (PinnedBackend). A connection
    kept alive for reuse was opened the same way, to addresses checked by the
    try that opened it. TLS is verified for the URL's host name. Redirects
    are never followed: httpcore does not follow them, and a 3xx is an
    answer like any other."""

    def __init__(
        self,
        *,
        timeout_s: float,
        allow_private: bool = False,
        getaddrinfo: GetAddrInfo | None = None,
        backend: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connections_max: int = 1000,
        keepalive_connections_max: int = 100,
    ) -> None:
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        self.getaddrinfo = getaddrinfo
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            max_connections=connections_max,
            max_keepalive_connections=keepalive_connections_max,
            keepalive_expiry=5.0,
            network_backend=PinnedBackend(backend),
        )

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None) -> None:
        await self._pool.aclose()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
        """Send once. Returns (status code, None) when the endpoint answered,
        whatever the status, and (None, error text) when it did not: the URL
        is invalid, the host does not resolve, a destination is not allowed
        (then nothing was sent), the connection failed, or no answer came
        within timeout_s (the lookup included)."""
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL:
            return None, "invalid URL"
        host = target.raw_host.decode("ascii")
        port = target.port or (443 if target.scheme == "https" else 80)
        request_url = httpcore.URL(scheme=target.raw_scheme, host=target.raw_host, port=target.port, target=target.raw_path)
        # Host is written here, not by httpcore, which leaves IPv6 unbracketed.
        request_headers = [("Host", target.netloc.decode("ascii")), *headers.items()]
        timeouts = {"timeout": {"connect": self.timeout_s, "read": self.timeout_s, "write": self.timeout_s, "pool": self.timeout_s}}
        try:
            with trio.fail_after(self.timeout_s):
                try:
                    addresses = await resolve_destination(host, port, allow_private=self.allow_private, getaddrinfo=self.getaddrinfo)
                except DestinationRefused as refused:
                    log.warning("webhook_destination_refused", host=host, addresses=[str(address) for address in refused.addresses])
                    return None, REFUSED_TEXT
                except OSError as failure:
                    return None, f"cannot resolve {host}: {failure.strerror or failure}"
                token = _pin.set(Pin(host, port, tuple(addresses)))
                try:
                    async with self._pool.stream("POST", request_url, headers=request_headers, content=body, extensions=timeouts) as response:
                        return response.status, None
                finally:
                    _pin.reset(token)
        except trio.TooSlowError:
            return None, f"no answer within {self.timeout_s:g} s"
        except _SEND_ERRORS as failure:
            return None, type(failure).__name__


# ---------------------------------------------------------- dispatcher


class DispatchConfig(msgspec.Struct, frozen=True):
    schedule_s: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE_S
    timeout_s: float = 10.0
    concurrency_per_endpoint: int = 4
    scan_rows_max: int = 1000
    poll_s: float = 1.0
    # Let endpoints point at loopback, private and other internal addresses
    # (`payments up --allow-private-webhooks`, local development only).
    allow_private: bool = False


class Dispatcher:
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
    ) -> None:
        self.store = store
        self.vault = vault
        self.endpoints = endpoints
        self.render = render
        self.config = config
        self.rng = rng or random.Random()
        self.getaddrinfo = getaddrinfo
        self._running: dict[str, trio.Event] = {}  # endpoint id -> its wake-up
        self._start: trio.MemorySendChannel[str]
        self._start, self._to_start = trio.open_memory_channel[str](10_000)
        self.attempts_total = 0

    def wake(self, endpoint_ids: set[str] | list[str]) -> None:
        for endpoint_id in endpoint_ids:
            event = self._running.get(endpoint_id)
            if event is not None:
                event.set()
            else:
                try:
                    self._start.send_nowait(endpoint_id)
                except trio.WouldBlock:
                    pass  # the periodic scan finds it

    async def run(self) -> None:
        sender = WebhookSender(timeout_s=self.config.timeout_s, allow_private=self.config.allow_private, getaddrinfo=self.getaddrinfo)
        async with sender, trio.open_nursery() as nursery:
            self._sender = sender
            nursery.start_soon(self._scan_forever)
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
            except StoreUnavailable as error:
                log.warning("webhook_scan_failed", error=str(error))
            await trio.sleep(self.config.poll_s * 5)

    async def _serve_endpoint(self, endpoint_id: str) -> None:
        try:
            while True:
                woken = self._running[endpoint_id]
                try:
                    if not await self._serve_once(endpoint_id, woken) and not woken.is_set():
                        return
                except StoreUnavailable as error:
                    log.warning("webhook_dispatch_waiting", endpoint_id=endpoint_id, error=str(error))
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
                if event is not None:
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


# ------------------------------------------------------------- wiring


class EventWorkers:
    """The outbox relays, the stream trimmer, the webhook ingest and the
    dispatcher of one node, and what the API needs of them."""

    def __init__(
        self,
        store: Store,
        redis: RedisLink,
        vault: Vault,
        render: Callable[[EventRow], bytes],
        config: DispatchConfig = DispatchConfig(),
    ) -> None:
        self.store = store
        self.redis = redis
        self.endpoints = EndpointCache(store)
        self.dispatcher = Dispatcher(store, vault, self.endpoints, render, config)
        self.relays: dict[int, OutboxRelay] = {}
        self._scope = trio.CancelScope()

    def stop(self) -> None:
        """Stop at once: everything not yet published or delivered is in
        PostgreSQL and goes out after the next start."""
        self._scope.cancel()

    async def run(self, shards: dict[int, Any], *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        partitions = sorted(shards)
        ingest = WebhookIngest(self.store, self.redis, partitions, self.endpoints, self.dispatcher.wake)
        with self._scope:
            await self._run(shards, partitions, ingest, task_status)

    async def _run(self, shards: dict[int, Any], partitions: list[int], ingest: WebhookIngest, task_status: Any) -> None:
        async with trio.open_nursery() as nursery:
            for partition, shard in shards.items():
                relay = OutboxRelay(self.store, self.redis, partition)
                shard.on_events = relay.wake
                self.relays[partition] = relay
                nursery.start_soon(relay.run)
            nursery.start_soon(trim_streams_forever, self.redis, partitions)
            nursery.start_soon(ingest.run)
            nursery.start_soon(self.dispatcher.run)
            task_status.started()

    def endpoints_changed(self) -> None:
        self.endpoints.invalidate()

    async def retry(self, event: EventRow) -> list[str]:
        """Send an event again to the endpoints that gave up on it, and to
        matching endpoints that never had it. Returns those endpoints."""
        await self.endpoints.refresh(force=True)
        stamp = now_ms()
        await self.store.webhooks.add_deliveries(new_deliveries(event, self.endpoints.matching(event), stamp))
        retried = await self.store.webhooks.retry_dead(event.id, stamp)
        queued = {delivery.endpoint_id for delivery in await self.store.webhooks.deliveries_of_event(event.id) if delivery.status == "pending"}
        self.dispatcher.wake(queued)
        return sorted(queued | set(retried))
