"""The operations page: `GET /ops`, for the operators of a node, never its
merchants.

Theory of operation. The page itself (gateway/static/ops.html, its script
and its style sheet) is served to anyone and holds no data and no secret:
a browser navigating cannot send an Authorization header. Its script reads
the operator token from the URL's fragment (`/ops#op_...`, which a browser
never sends to a server, so it reaches neither the request line nor a log)
and asks two JSON endpoints with `Authorization: Bearer op_...`, which
refuse anything but the cluster's operator token (gateway/operations.py
`check_operator`; a merchant's API key is refused):

- `GET /ops/data`: everything the page shows, read when asked;
- `POST /ops/dead-letters/<event_id>/retry`: send a dead event again
  (`EventWorkers.retry`, as `POST /v1/events/<id>/retry` does for a merchant).

The figures are the ones `/metrics` serves: read from the node's
prometheus-client registry (`node.metrics.registry`), never counted twice.
Rates and latency percentiles over time need history, which a registry does
not keep: `OpsHistory` keeps a bounded ring of samples of the cumulative
counters (`SAMPLES_MAX` samples, one every `SAMPLE_EVERY_S`: 15 minutes),
taken by `run_ops_sampler`, and turns consecutive samples into rates and
into p50/p99 from the difference of the request histogram's buckets (the
arithmetic of Prometheus's `histogram_quantile`). The requests of the
operator routes (`/ops...`, `/metrics`) are left out of those figures: the
page's own polling would otherwise show up as traffic.

What is not in the registry is read from where it lives: the cluster's
leases and nodes from the membership's last view, the dead letters from
PostgreSQL (bounded, newest first), the workers' errors from their
counters (workers/errors.py), of which the sampler remembers which rose
and when ("recent errors").

The page's answers forbid framing and carry a Content-Security-Policy
allowing only the node's own script, style and requests (no inline script).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib import resources
from typing import Any, Protocol

import msgspec
import structlog
import trio
from prometheus_client import CollectorRegistry
from quart import Response, request
from quart_trio import QuartTrio

from engine import ids
from gateway import errors
from gateway.app import Mount
from gateway.calls import ID_CHARS_MAX
from gateway.operations import check_operator
from gateway.responses import json_response
from shards.node import Node
from store.errors import StoreUnavailable

log = structlog.get_logger("gateway.ops_page")

SAMPLE_EVERY_S = 5.0
SAMPLES_MAX = 180  # 15 minutes of samples, one every 5 s
RECENT_ERRORS_MAX = 50
DEAD_LETTERS_SHOWN_MAX = 50
# The window of the headline rates and percentiles.
HEADLINE_WINDOW_S = 60.0
# A live point is added to the stored ones only this long after the last
# sample: a rate over a shorter interval is mostly noise.
LIVE_POINT_AFTER_S = 1.0
OPERATOR_ROUTE_PREFIXES = ("/ops", "/metrics")

REQUESTS = "payments_http_request_duration_seconds"
INTENTS = "payments_intents_total"

# The files of gateway/static/ served, by name: nothing else can be asked for.
STATIC_FILES = {
    "ops.js": "text/javascript; charset=utf-8",
    "ops.css": "text/css; charset=utf-8",
}
PAGE_FILE = "ops.html"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self';"
    " object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


# ------------------------------------------------------------ the registry

# Samples of a registry by name: (labels, value) of each.
Samples = dict[str, list[tuple[dict[str, str], float]]]


def read_registry(registry: CollectorRegistry) -> Samples:
    """Every sample of `registry` now, as /metrics would show it."""
    samples: Samples = {}
    for family in registry.collect():
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def summed(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples `name` whose labels include `labels`."""
    return sum(value for found, value in samples.get(name, ()) if all(found.get(k) == v for k, v in labels.items()))


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """The samples `name`, summed by the value of their label `label`."""
    values: dict[str, float] = {}
    for found, value in samples.get(name, ()):
        key = found.get(label, "")
        values[key] = values.get(key, 0.0) + value
    return values


def _api_route(labels: dict[str, str]) -> bool:
    return not labels.get("route", "").startswith(OPERATOR_ROUTE_PREFIXES)


# ------------------------------------------------------------ history


class Sample(msgspec.Struct, frozen=True):
    """The cumulative counters behind the charts at one time."""

    at_s: float
    payments_succeeded: float
    requests: float
    # (upper bound, cumulative count) of the API requests' duration buckets.
    buckets: tuple[tuple[float, float], ...]


class Point(msgspec.Struct, frozen=True):
    """Rates and percentiles over the interval ending at `at_s`."""

    at_s: float
    interval_s: float
    payments_per_s: float
    requests_per_s: float
    p50_ms: float | None
    p99_ms: float | None


def take_sample(samples: Samples, at_s: float) -> Sample:
    buckets: dict[float, float] = {}
    requests = 0.0
    for labels, value in samples.get(REQUESTS + "_bucket", ()):
        if _api_route(labels):
            bound = float(labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    for labels, value in samples.get(REQUESTS + "_count", ()):
        if _api_route(labels):
            requests += value
    return Sample(at_s, summed(samples, INTENTS, status="succeeded"), requests, tuple(sorted(buckets.items())))


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram's (upper bound, cumulative count)
    buckets, interpolated linearly inside the bucket it falls in; None for
    no observations. In the +Inf bucket it is the highest finite bound."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def rate_point(before: Sample, after: Sample) -> Point:
    """What happened between two samples."""
    interval_s = max(after.at_s - before.at_s, 1e-9)
    earlier = dict(before.buckets)
    # A counter never goes down; a difference below zero would mean another
    # registry, so it counts as nothing.
    delta = [(bound, max(0.0, count - earlier.get(bound, 0.0))) for bound, count in after.buckets]
    p50, p99 = quantile(0.5, delta), quantile(0.99, delta)
    return Point(
        at_s=after.at_s,
        interval_s=interval_s,
        payments_per_s=max(0.0, after.payments_succeeded - before.payments_succeeded) / interval_s,
        requests_per_s=max(0.0, after.requests - before.requests) / interval_s,
        p50_ms=None if p50 is None else p50 * 1000,
        p99_ms=None if p99 is None else p99 * 1000,
    )


class Counted(Protocol):
    """What the page reads of a worker's error counter (workers.errors.WorkerErrors)."""

    @property
    def counts(self) -> Mapping[str, int]: ...

    @property
    def recent(self) -> Iterable[tuple[float, str, dict[str, Any]]]: ...


class ErrorCount(msgspec.Struct, frozen=True):
    worker: str
    event: str
    count: int


class RecentError(msgspec.Struct, frozen=True):
    """A worker's error count rose by `count` before `at_s` (since the sample
    before); `detail` is what the newest of them said (its log line's
    context, bounded)."""

    at_s: float
    worker: str
    event: str
    count: int
    detail: str = ""


DETAIL_CHARS_MAX = 300


def latest_detail(counter: Counted, event: str) -> str:
    """The context of the newest `event` a worker kept (workers.errors keeps
    its newest errors), as `key=value` pairs, bounded."""
    for _, name, context in reversed(list(counter.recent)):
        if name == event:
            return ", ".join(f"{key}={value}" for key, value in context.items())[:DETAIL_CHARS_MAX]
    return ""


class OpsHistory:
    """The bounded history behind the page's charts and recent errors."""

    def __init__(
        self,
        registry: CollectorRegistry,
        worker_errors: Mapping[str, Counted] | None = None,
        *,
        samples_max: int = SAMPLES_MAX,
        recent_errors_max: int = RECENT_ERRORS_MAX,
    ) -> None:
        self.registry = registry
        self.worker_errors = dict(worker_errors or {})
        self.samples: deque[Sample] = deque(maxlen=samples_max)
        self.recent_errors: deque[RecentError] = deque(maxlen=recent_errors_max)
        self._error_counts: dict[tuple[str, str], int] = {}

    def sample(self, at_s: float | None = None) -> None:
        """Keep a sample of the registry now (the oldest goes when full) and
        note the errors counted since the last one."""
        at_s = time.time() if at_s is None else at_s
        self.samples.append(take_sample(read_registry(self.registry), at_s))
        for found in self.error_counts():
            key = (found.worker, found.event)
            risen = found.count - self._error_counts.get(key, 0)
            if risen > 0:
                detail = latest_detail(self.worker_errors[found.worker], found.event)
                self.recent_errors.append(RecentError(at_s, found.worker, found.event, risen, detail))
            self._error_counts[key] = found.count

    def error_counts(self) -> list[ErrorCount]:
        """Every error a worker counted, by worker and event."""
        return [
            ErrorCount(worker, event, count)
            for worker, counter in sorted(self.worker_errors.items())
            for event, count in sorted(counter.counts.items())
            if count > 0
        ]

    def points(self, live: Sample) -> list[Point]:
        """A point per interval between stored samples, then one to `live`
        when the last sample is old enough."""
        stored = list(self.samples)
        if not stored or live.at_s - stored[-1].at_s >= LIVE_POINT_AFTER_S:
            stored.append(live)
        return [rate_point(before, after) for before, after in zip(stored, stored[1:])]

    def headline(self, live: Sample, window_s: float = HEADLINE_WINDOW_S) -> Point | None:
        """Rates and percentiles from the oldest sample of the last
        `window_s` (or the oldest there is) to `live`; None with no sample."""
        start = next((s for s in self.samples if s.at_s >= live.at_s - window_s), None)
        if start is None or live.at_s - start.at_s < LIVE_POINT_AFTER_S:
            return None
        return rate_point(start, live)


async def run_ops_sampler(
    history: OpsHistory,
    until: Callable[[], Awaitable[None]],
    every_s: float = SAMPLE_EVERY_S,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Sample `history` every `every_s`, from now until `until()` returns
    (the node's `wait_stop_requested`) or this is cancelled."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_sample_forever, history, every_s)
        task_status.started()
        await until()
        nursery.cancel_scope.cancel()


async def _sample_forever(history: OpsHistory, every_s: float) -> None:
    while True:
        history.sample()
        await trio.sleep(every_s)


# ------------------------------------------------------------ what the page shows


class PartitionRow(msgspec.Struct, frozen=True):
    partition: int
    owner: str | None
    epoch: int | None
    lease_expires_in_s: float | None
    # This node's mailbox of the partition; None where another node serves it.
    mailbox_depth: int | None


class NodeRow(msgspec.Struct, frozen=True):
    node_id: str
    url: str | None
    silent_s: float
    leaving: bool
    mailbox_depth: int


class DeadLetter(msgspec.Struct, frozen=True):
    event_id: str
    endpoint_id: str
    intent_id: str
    attempts: int
    dead_since_s: int


class OpsData(msgspec.Struct, frozen=True):
    """The answer of GET /ops/data."""

    node_id: str | None
    node_url: str | None
    generated_at_s: float
    sample_every_s: float
    window_s: float
    payments_succeeded: float
    requests: float
    intents: dict[str, float]
    headline: Point | None
    points: list[Point]
    partitions_served: float
    partitions: list[PartitionRow]
    nodes: list[NodeRow]
    unknown_operations: float
    unknown_oldest_s: float
    refused_at_door: dict[str, float]
    shed_commands: float
    outbox_published: float
    webhook_pending: float | None
    webhook_deliveries: dict[str, float]
    dead_letters: list[DeadLetter]
    dead_letters_shown_max: int
    dead_letters_error: str | None
    errors: list[ErrorCount]
    recent_errors: list[RecentError]


def partition_rows(node: Node, samples: Samples) -> tuple[list[PartitionRow], list[NodeRow]]:
    """Every partition with its lease and, where served here, its mailbox
    depth; and the cluster's nodes. Without a view of the cluster, the
    partitions this node serves."""
    depths = {int(p): int(v) for p, v in by_label(samples, "payments_actor_mailbox_depth", "partition").items()}
    epochs = {int(p): int(v) for p, v in by_label(samples, "payments_partition_lease_epoch", "partition").items()}
    membership = node.membership
    view = None if membership is None else membership.view
    if view is None:
        me = None if membership is None else membership.node_id
        rows = [PartitionRow(p, me, epochs.get(p), None, depth) for p, depth in sorted(depths.items())]
        return rows, []
    rows = [
        PartitionRow(lease.partition, lease.owner, lease.epoch, lease.expires_in_s, depths.get(lease.partition))
        for lease in sorted(view.leases, key=lambda lease: lease.partition)
    ]
    nodes = [NodeRow(m.node_id, m.url, m.silent_s, m.leaving, m.mailbox_depth) for m in sorted(view.members, key=lambda m: m.node_id)]
    return rows, nodes


async def dead_letters(node: Node) -> tuple[list[DeadLetter], str | None]:
    """The newest dead letters, or none and why."""
    try:
        rows = await node.store.webhooks.dead_deliveries(DEAD_LETTERS_SHOWN_MAX)
    except StoreUnavailable as error:
        log.warning("ops_dead_letters_unread", error=str(error))
        return [], "The database cannot be reached: dead letters are not shown."
    return [DeadLetter(row.event_id, row.endpoint_id, row.intent_id, row.attempts, row.updated_s) for row in rows], None


async def ops_data(node: Node, history: OpsHistory) -> OpsData:
    """Everything the page shows, now."""
    samples = read_registry(node.metrics.registry)
    now_s = time.time()
    live = take_sample(samples, now_s)
    partitions, nodes = partition_rows(node, samples)
    letters, letters_error = await dead_letters(node)
    pending = samples.get("payments_webhook_queue")
    membership = node.membership
    return OpsData(
        node_id=None if membership is None else membership.node_id,
        node_url=node.url,
        generated_at_s=now_s,
        sample_every_s=SAMPLE_EVERY_S,
        window_s=HEADLINE_WINDOW_S,
        payments_succeeded=live.payments_succeeded,
        requests=live.requests,
        intents=by_label(samples, INTENTS, "status"),
        headline=history.headline(live),
        points=history.points(live),
        partitions_served=summed(samples, "payments_partitions_served"),
        partitions=partitions,
        nodes=nodes,
        unknown_operations=summed(samples, "payments_unknown_operations"),
        unknown_oldest_s=summed(samples, "payments_unknown_operation_oldest_seconds"),
        refused_at_door=by_label(samples, "payments_http_refused_at_door_total", "kind"),
        shed_commands=summed(samples, "payments_actor_shed_commands_total"),
        outbox_published=summed(samples, "payments_outbox_published_total"),
        # Set by the webhook dispatcher, which runs on one node of a cluster.
        webhook_pending=None if not pending else summed(samples, "payments_webhook_queue", state="pending"),
        webhook_deliveries=by_label(samples, "payments_webhook_deliveries_total", "outcome"),
        dead_letters=letters,
        dead_letters_shown_max=DEAD_LETTERS_SHOWN_MAX,
        dead_letters_error=letters_error,
        errors=history.error_counts(),
        recent_errors=sorted(history.recent_errors, key=lambda e: -e.at_s),
    )


# ------------------------------------------------------------ the routes


def read_static(name: str) -> bytes:
    """A file of gateway/static/, from the source tree or an installed package."""
    return resources.files("gateway").joinpath("static", name).read_bytes()


def mount(history: OpsHistory) -> Mount:
    """The page and its endpoints, reading `history` (a `gateway.app.Mount`)."""
    page = read_static(PAGE_FILE)
    files = {name: (read_static(name), content_type) for name, content_type in STATIC_FILES.items()}

    def add(app: QuartTrio, node: Node, authenticate: Any, read_body: Any) -> None:
        @app.after_request
        async def protect(response: Response) -> Response:
            if request.path == "/ops" or request.path.startswith("/ops/"):
                for name, value in SECURITY_HEADERS.items():
                    response.headers[name] = value
                response.headers.setdefault("Cache-Control", "no-store")
            return response

        @app.get("/ops")
        async def ops_page() -> Response:
            return Response(page, status=200, content_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})

        @app.get("/ops/static/<name>")
        async def ops_static(name: str) -> Response:
            found = files.get(name)
            if found is None:
                raise errors.not_found("file", name, "name")
            body, content_type = found
            return Response(body, status=200, content_type=content_type, headers={"Cache-Control": "no-cache"})

        @app.get("/ops/data")
        async def ops_data_route() -> Response:
            check_operator(node)
            return json_response(await ops_data(node, history))

        @app.post("/ops/dead-letters/<event_id>/retry")
        async def ops_retry(event_id: str) -> Response:
            check_operator(node)
            row = None
            if len(event_id) <= ID_CHARS_MAX and ids.parse_id(event_id, "evt") is not None:
                row = await node.store.events.get(event_id)
            if row is None:
                raise errors.not_found("event", event_id, "id")
            if node.events is None:
                raise errors.unavailable("Events are not served by this node right now. Retry shortly.")
            endpoints = await node.events.retry(row)
            log.info("ops_dead_letter_retried", event_id=row.id, endpoints=len(endpoints))
            return json_response({"id": row.id, "endpoints": endpoints})

    return add
