"""What a node counts and measures, for Prometheus (`GET /metrics`).

Each node has a registry of its own, not prometheus_client's global one: a
process that runs several nodes (the tests do) keeps them apart, and every
node of a machine serves its metrics on its own port, so no state is shared
between processes. (prometheus_client's multiprocess mode is for several
processes behind one port, which a node never is.)

Two kinds of figures:
- counted where they happen: requests by route and status, commit latency
  and size, commands per actor turn, outbox publishing, webhook deliveries
  by outcome, requests refused at the door;
- tallied by the actors in plain dictionaries the node shares among them
  (`Tally`: journal events by type, intents entering each status), which
  costs a turn no lock, and exposed as counters when scraped;
- read when scraped (`NodeCollector`), at no cost in between: mailbox depth
  per partition, commands and commits and shed commands per actor, the
  unknown operations waiting for reconciliation and the oldest one's age,
  the partitions held and their lease epochs.

Labels are bounded: routes are URL rules (never paths with ids), statuses,
event types, HTTP status codes, partitions. No id, amount, key or card data
is ever a label or a value.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from engine import ids

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    """A node's instruments; the parts of the node that count hold it."""

    def __init__(self) -> None:
        registry = self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Histogram(
            "payments_http_request_duration_seconds",
            "HTTP requests by route (URL rule), method and status, from routing to the response",
            ["route", "method", "status"],
            buckets=_SECONDS,
            registry=registry,
        )
        self.refused_at_door = Counter(
            "payments_http_refused_at_door_total",
            "Requests answered 503 before any work because the node had too many in flight",
            ["kind"],
            registry=registry,
        )
        self.admission_limit = Gauge(
            "payments_admission_limit",
            "Commands in flight past which the node refuses new payments now (it follows the node's own delay)",
            registry=registry,
        )
        self.commands_in_flight = Gauge("payments_commands_in_flight", "Client commands the node works on now", registry=registry)
        self.turn_commands = Histogram(
            "payments_actor_turn_commands", "Commands decided in one actor turn (one journal write)", buckets=_COUNTS, registry=registry
        )
        self.commit_seconds = Histogram(
            "payments_journal_commit_seconds", "Time of one group-commit write to PostgreSQL", buckets=_SECONDS, registry=registry
        )
        self.commit_rows = Histogram(
            "payments_journal_commit_rows", "Journal rows in one group-commit write", buckets=_COUNTS, registry=registry
        )
        self.outbox_published = Counter(
            "payments_outbox_published_total", "Events the outbox relay published to the streams", registry=registry
        )
        self.outbox_lag = Gauge(
            "payments_outbox_lag_seconds",
            "Age of the oldest event of the relay's last publish when it was published",
            registry=registry,
        )
        self.webhook_deliveries = Counter(
            "payments_webhook_deliveries_total",
            "Webhook delivery attempts by outcome (delivered, failed: will retry, dead: gave up)",
            ["outcome"],
            registry=registry,
        )
        self.webhook_backlog = Gauge(
            "payments_webhook_queue",
            "Webhook deliveries by state (pending: waiting or retrying; dead: dead letters), sampled",
            ["state"],
            registry=registry,
        )

    def render(self) -> bytes:
        """The text exposition format of everything registered."""
        return generate_latest(self.registry)


class Tally:
    """Counts the actors of one node keep as they commit: plain dictionaries
    (an actor's turn takes no lock for them), shared by all the node's
    actors so that a partition moving away takes nothing back."""

    def __init__(self) -> None:
        self.events: dict[str, int] = {}
        self.intents: dict[str, int] = {}

    def committed(self, event_types: list[str], statuses: list[str]) -> None:
        events, intents = self.events, self.intents
        for name in event_types:
            events[name] = events.get(name, 0) + 1
        for status in statuses:
            intents[status] = intents.get(status, 0) + 1


class Shard(Protocol):
    """What the collector reads of an actor (shards.actor.ShardActor)."""

    commits_total: int
    commands_total: int
    shed_total: int
    state: Any
    mailbox_send: Any


class NodeCollector(Collector):
    """Figures read from the node's actors and leases when scraped."""

    def __init__(self, tally: Tally, shards: Callable[[], dict[int, Shard]], epochs: Callable[[], dict[int, int]]) -> None:
        self._tally = tally
        self._shards = shards
        self._epochs = epochs

    def collect(self) -> Iterator[Any]:
        shards = sorted(self._shards().items())
        depth = GaugeMetricFamily("payments_actor_mailbox_depth", "Messages waiting in a partition's mailbox", labels=["partition"])
        commands = CounterMetricFamily("payments_actor_commands", "Commands an actor decided", labels=["partition"])
        commits = CounterMetricFamily("payments_actor_commits", "Journal writes an actor made", labels=["partition"])
        shed = CounterMetricFamily(
            "payments_actor_shed_commands", "Client commands refused (503) for waiting too long in the mailbox", labels=["partition"]
        )
        unknown = GaugeMetricFamily(
            "payments_unknown_operations", "Network operations whose outcome is unknown, waiting for reconciliation"
        )
        oldest = GaugeMetricFamily(
            "payments_unknown_operation_oldest_seconds", "Age of the oldest operation whose outcome is unknown (0: none)"
        )
        now_ms = time.time() * 1000
        waiting = 0
        oldest_ms = now_ms
        for partition, shard in shards:
            label = [str(partition)]
            depth.add_metric(label, shard.mailbox_send.statistics().current_buffer_used)
            commands.add_metric(label, shard.commands_total)
            commits.add_metric(label, shard.commits_total)
            shed.add_metric(label, shard.shed_total)
            for _, reference in list(shard.state.unknown):
                waiting += 1
                created = _created_ms(reference)
                if created is not None:
                    oldest_ms = min(oldest_ms, created)
        unknown.add_metric([], waiting)
        oldest.add_metric([], max(0.0, (now_ms - oldest_ms) / 1000))
        held = GaugeMetricFamily("payments_partitions_served", "Partitions this node serves")
        held.add_metric([], len(shards))
        epochs = GaugeMetricFamily("payments_partition_lease_epoch", "Lease epoch of each partition this node holds", labels=["partition"])
        for partition, epoch in sorted(self._epochs().items()):
            epochs.add_metric([str(partition)], epoch)
        events = CounterMetricFamily(
            "payments_journal_events",
            "Journal events committed, by type (attempts approved, declined, outcome unknown, refunds, disputes, ...)",
            labels=["type"],
        )
        for name, count in sorted(self._tally.events.items()):
            events.add_metric([name], count)
        intents = CounterMetricFamily("payments_intents", "Payment intents entering each status (committed)", labels=["status"])
        for status, count in sorted(self._tally.intents.items()):
            intents.add_metric([status], count)
        yield from (depth, commands, commits, shed, unknown, oldest, held, epochs, events, intents)


def _created_ms(reference: str) -> int | None:
    """When an operation reference (an attempt or refund id) was made."""
    prefix = reference.partition("_")[0]
    if prefix not in ids.PREFIXES:
        return None
    parsed = ids.parse_id(reference, prefix)
    return None if parsed is None else parsed[0]
