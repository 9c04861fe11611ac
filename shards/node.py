"""A node: the shard actors of the partitions this process owns, wired to
the parts that serve them. This module only wires:

- the router (shards/router.py): id -> partition -> local actor; it mints
  ids and client secrets and answers reads across the actors;
- effects (shards/effects.py): the network calls the actors ask for, and
  the relay of the network's later notices;
- the auth cache (shards/api_keys.py) and the payment methods
  (shards/payment_methods.py);
- the reply timer (shards/replies.py): callers stop waiting after
  `reply_timeout_s`;
- the group commit (shards/group_commit.py) the actors journal through.

Workers (outbox relay, webhooks, reconciliation, settlement check, purge,
audit archive) run beside the node, in workers/; they are given the node,
and it knows of them only what the API needs (`events`).
"""

from __future__ import annotations

import functools
import gc
import os
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
import structlog
import trio

from engine import intent as machine
from engine.intent import Command
from shards.actor import Journal, Outcome, Shed, ShardActor, ShardConfig, ShardState
from shards.api_keys import ApiKeyCache, hash_key
from shards.effects import CardNetwork, Effects, run_notice_relay
from shards.group_commit import GroupCommit
from shards.idempotency import TTL_S_DEFAULT, Claim, IdempotencyRecords
from shards.admission import Admission, AdmissionConfig
from shards.metrics import Metrics, NodeCollector, Tally
from shards.payment_methods import PaymentMethods
from shards.rate_limits import RateLimiter
from shards.replies import ReplyTimer, run_reply_timer
from shards.cluster import ClusterConfig, Membership, run_membership
from shards.router import NotServed, Overloaded, Router
from shards.vault import Vault
from store.errors import Fenced, StoreError, StoreUnavailable
from store.postgres import Store
from store.redis_link import RedisLink
from store.rows import EventRow

# The gateway and the composition root import these from here.
__all__ = ["CardNetwork", "ClusterConfig", "Events", "Node", "NodeConfig", "NotServed", "Overloaded", "hash_key", "run_node"]

log = structlog.get_logger("shards.node")


class NodeConfig(msgspec.Struct, frozen=True):
    partitions: int = 16
    shard: ShardConfig = ShardConfig()
    network_timeout_s: float = 10.0
    reply_timeout_s: float = 30.0
    # Commands in flight on the node past which new ones are refused at once
    # (503): past capacity a queue only adds latency until everything times out.
    in_flight_max: int = 8192
    # New payments are admitted under a bound that follows the node's own
    # delay (shards.admission); the bound above still caps everything.
    admission: AdmissionConfig = AdmissionConfig()
    cache_entries_max: int = 100_000
    # Terms given to new intents; fees come from each merchant's row.
    settlement_delay_s: int = 2 * 86_400
    dispute_fee_minor: int = 1500
    idempotency_ttl_s: int = TTL_S_DEFAULT
    key_cache_s: float = 5.0
    # Requests without a working key are limited per client address.
    anonymous_rate_per_s: int = 20
    anonymous_burst: int = 40
    # The partitions this node serves, fixed at start (None: all). Nodes
    # sharing a database are given disjoint sets. Ignored with `cluster`.
    owned_partitions: tuple[int, ...] | None = None
    # Partitions leased from the database and shared with other nodes
    # (shards/cluster.py); None serves the fixed set above without leases.
    cluster: ClusterConfig | None = None
    # One write for the batches of all the node's actors (shards.group_commit).
    group_commit: bool = True

    def served_partitions(self) -> tuple[int, ...]:
        return tuple(range(self.partitions)) if self.owned_partitions is None else self.owned_partitions


class Events(Protocol):
    """What the API asks of the node's event workers (workers/events.py):
    send an event again, and reload endpoints after a change. Its
    `dispatcher` has the delivery settings and `wake`."""

    dispatcher: Any

    async def retry(self, event: EventRow) -> list[str]: ...

    def endpoints_changed(self) -> None: ...

    def wake(self, partition: int) -> None: ...


class Node:
    """Everything is given at construction; after it, only `set_public_url`
    (known once the HTTP server listens) and `stop_accepting` change it.
    The actors are added by `run_node` as it recovers their partitions."""

    def __init__(
        self,
        store: Store,
        vault: Vault,
        network: CardNetwork,
        config: NodeConfig,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        redis: RedisLink | None = None,
        events: Events | None = None,
    ) -> None:
        self.store = store
        self.vault = vault
        self.network = network
        self.config = config
        self.random_bytes = random_bytes
        # Rate-limit buckets and signature nonces; None runs without both.
        self.redis = redis
        # Rate limits spent from local batches of the buckets in Redis.
        self.rate_limits = RateLimiter()
        # What GET /metrics shows (shards/metrics.py).
        self.metrics = Metrics()
        self.tally = Tally()
        self.metrics.registry.register(NodeCollector(self.tally, lambda: self.shards, self.held))
        # The event workers, when the node runs with Redis.
        self.events = events
        self.idempotency = IdempotencyRecords(store, vault, ttl_s=config.idempotency_ttl_s)
        self.router = Router(random_bytes)
        self.shards: dict[int, ShardActor] = self.router.shards
        self.payment_methods = PaymentMethods(store, vault, self.router.new_id, entries_max=config.cache_entries_max)
        self.api_keys = ApiKeyCache(store, vault, entries_max=config.cache_entries_max, ttl_s=config.key_cache_s)
        self.effects = Effects(network, vault, self.payment_methods, self.router, timeout_s=config.network_timeout_s)
        self.replies = ReplyTimer(config.reply_timeout_s)
        self.admission = Admission(config.admission)
        self.metrics.admission_limit.set_function(lambda: self.admission.limit)
        self.metrics.commands_in_flight.set_function(lambda: self.replies.waiting)
        # The notice relay and the reply timer; cancelled by stop_accepting.
        self._background = trio.CancelScope()
        self._stop_requested = trio.Event()
        # Where cardholders and other nodes reach this node, once it listens.
        self.url: str | None = None
        # The leases this node holds, when it is in a cluster (run_node).
        self.membership: Membership | None = None
        # partition -> epoch of every actor still running here (None: a
        # fixed partition), and the event set when each has stopped.
        self._epochs: dict[int, int | None] = {}
        self._stopped: dict[int, trio.Event] = {}
        self._actors: trio.Nursery | None = None
        self._append: Journal | None = None
        # What the gateway, the simulator's pages and the workers call on the node.
        self.new_id = self.router.new_id
        self.partition_of_intent = self.router.partition_of_intent
        self.client_secret = self.router.client_secret
        self.intent = self.router.intent
        self.refund = self.router.refund
        self.dispute = self.router.dispute
        self.intent_of_reference = self.router.intent_of_reference
        self.merchant_intents = self.router.merchant_intents
        self.merchant_funds = self.router.merchant_funds
        self.merchant_transfers = self.router.merchant_transfers
        self.create_payment_method = self.payment_methods.create
        self.payment_method = self.payment_methods.get
        self.authenticate = self.api_keys.authenticate
        self.signing_secret = self.api_keys.signing_secret
        self.perform = self.effects.perform

    async def submit(self, command: Command, claim: Claim | None = None) -> Outcome:
        """Run a command on the owning actor and wait until it is journaled.

        Raises Overloaded (mailbox full) or StoreUnavailable (not journaled,
        or not journaled within `reply_timeout_s`). A confirm whose network
        answer does not come back within `reply_timeout_s` returns the intent
        as it is journaled now.
        """
        partition, shard = self.router.actor_of_intent(command.intent_id)
        if shard is None:
            raise NotServed(partition)
        if self.replies.waiting >= self.config.in_flight_max:
            raise Overloaded("too many commands in flight on this node")
        if isinstance(command, machine.CreateIntent):
            # Past capacity: the payments already started go first.
            if not self.admission.admits(self.replies.waiting):
                raise Overloaded("the node has as many commands in flight as it admits now; new payments are refused for now")
            if self._saturated(shard):
                raise Overloaded(f"partition {partition} is saturated; new payments are refused for now")
        try:
            reply = shard.submit_nowait(command, claim)
        except (trio.WouldBlock, trio.ClosedResourceError) as error:
            raise Overloaded(f"partition {partition} is busy") from error
        value = await self.replies.wait(reply)
        if isinstance(value, Fenced) and not reply.journaled:
            # Not written: the partition has a new owner, who can take it.
            raise NotServed(partition)
        if isinstance(value, Fenced):
            # Journaled, then its network answer was fenced: sent again to
            # the new owner it would run twice; that owner resolves it.
            raise StoreUnavailable("the partition moved to another node; retry to see the result")
        if isinstance(value, StoreError):
            raise value
        if isinstance(value, Shed):
            raise Overloaded(str(value))
        if value is not None:
            return value
        if not reply.journaled:
            # Still not committed (the database is away): say nothing about
            # an outcome that may yet happen; a retry with the same
            # idempotency key will find it.
            raise StoreUnavailable("the command could not be journaled in time")
        # Journaled and waiting for the network: the intent as it is on disk.
        try:
            return Outcome(machine.Result.ok, self.intent(command.intent_id))
        except NotServed:
            # Handed off meanwhile: journaled, so not to be sent again elsewhere.
            raise StoreUnavailable("the partition moved to another node; retry to see the result") from None

    def saturated(self, partition: int) -> bool:
        """Whether a new payment on this partition is refused for now: the
        node has as many commands in flight as its admission bound allows
        (shards.admission), or the partition's commands wait longer than a
        new payment may make them (`create_wait_max_s`). A cheap check, for
        callers to make before building one."""
        shard = self.shards.get(partition)
        return shard is not None and self._saturated(shard)

    def _saturated(self, shard: ShardActor) -> bool:
        return not self.admission.admits(self.replies.waiting) or shard.queue_wait_s() > self.config.shard.create_wait_max_s

    def set_public_url(self, url: str) -> None:
        """Where cardholders (3-D Secure pages) and other nodes (forwarded
        requests) reach this node, once the HTTP server listens."""
        self.url = url
        self.effects.public_url = url

    # ---------------------------------------------------------- partitions

    def held(self) -> dict[int, int]:
        """partition -> lease epoch of every leased actor still running here
        (serving, or draining after a handoff began)."""
        return {partition: epoch for partition, epoch in self._epochs.items() if epoch is not None}

    def mailbox_depth(self) -> int:
        """Commands queued in this node's actors."""
        return sum(shard.mailbox_send.statistics().current_buffer_used for shard in self.shards.values())

    async def take(self, partition: int, epoch: int | None) -> None:
        """Load the partition from the journal and serve it with a new actor,
        whose writes are fenced by `epoch` (None: a fixed partition). Raises
        StoreUnavailable when the journal cannot be read."""
        stopping = self._stopped.get(partition)
        if stopping is not None:
            await stopping.wait()  # the last actor of this partition here is still draining
        assert self._actors is not None and self._append is not None, "take runs inside run_node"
        state = ShardState(partition)
        state.replay(await self.store.journal.load(partition))
        append = self._append
        if epoch is not None:
            assert self.config.cluster is not None
            append = functools.partial(append, fence=(self.config.cluster.node_id, epoch))
        shard = ShardActor(state, append, self.perform, self.config.shard, functools.partial(self.new_id, partition=partition), self.store.journal.position)
        if self.events is not None:
            shard.on_events = functools.partial(self.events.wake, partition)
        shard.metrics, shard.tally, shard.admission = self.metrics, self.tally, self.admission
        self._epochs[partition] = epoch
        self._stopped[partition] = trio.Event()
        await self._actors.start(self._run_actor, partition, shard)
        self.router.serve(partition, shard)

    async def _run_actor(self, partition: int, shard: ShardActor, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await shard.run(task_status=task_status)
            if shard.fenced is not None:
                log.warning("partition_dropped_fenced", partition=partition)
        finally:
            self.router.unserve(partition, shard)
            del self._epochs[partition]
            self._stopped.pop(partition).set()

    def drop(self, partition: int) -> None:
        """Stop routing to the partition at once and close its actor, which
        drains in the background (its writes fenced if the lease moved)."""
        shard = self.router.shards.get(partition)
        if shard is not None:
            self.router.unserve(partition, shard)
            shard.close()

    async def give_up(self, partition: int) -> None:
        """Close the partition's actor and wait until it has drained its
        mailbox, finished its network calls and committed their answers."""
        stopping = self._stopped.get(partition)
        self.drop(partition)
        if stopping is not None:
            await stopping.wait()

    def stop_accepting(self) -> None:
        """Begin a clean shutdown: actors drain their mailboxes and finish
        their network calls (in a cluster, each partition is then handed
        off), then `run_node` returns; workers watching
        `wait_stop_requested` stop."""
        self._background.cancel()
        self._stop_requested.set()
        if self.membership is None:
            for partition in list(self.shards):
                self.drop(partition)

    async def wait_stop_requested(self) -> None:
        """Wait until `stop_accepting` is called."""
        await self._stop_requested.wait()


async def run_node(
    store: Store,
    vault: Vault,
    network: CardNetwork,
    config: NodeConfig,
    *,
    random_bytes: Callable[[int], bytes] = os.urandom,
    redis: RedisLink | None = None,
    events: Events | None = None,
    url: str | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Start the node (passed to `task_status.started`) with its partitions
    recovered from the journal, then serve until `stop_accepting`. With
    `config.cluster`, the partitions are leased (the node joins the cluster
    at `url`, takes its share, and hands it off when stopped); else the fixed
    set is served. Raises StoreUnavailable when the journal cannot be read
    at start, NodeIdTaken when a live node has the cluster node id."""
    node = Node(store, vault, network, config, random_bytes=random_bytes, redis=redis, events=events)
    node.url = url
    if config.cluster is not None:
        node.membership = Membership(store.leases, config.cluster, config.partitions, node)
        await node.membership.join()
    async with trio.open_nursery() as writing:
        node._append = store.journal.append
        if config.group_commit:
            group_commit = GroupCommit(store.journal.append_many, metrics=node.metrics)
            await writing.start(group_commit.run)
            node._append = group_commit.append
        async with trio.open_nursery() as actors:
            node._actors = actors
            if config.cluster is None:
                for partition in config.served_partitions():
                    await node.take(partition, None)
            else:
                assert node.membership is not None
                await actors.start(run_membership, node.membership, node.wait_stop_requested)
            tune_garbage_collection()
            actors.start_soon(_run_background, node)
            log.info("node_started", partitions=sorted(node.shards), intents=sum(len(s.state.intents) for s in node.shards.values()))
            task_status.started(node)
        # Every actor has drained and journaled its last answers.
        writing.cancel_scope.cancel()
    log.info("node_stopped")


def tune_garbage_collection() -> None:
    """After recovery: keep the recovered state out of every later
    collection, and collect the young generation less often. Under load the
    node allocates and drops many short-lived objects (tasks, messages,
    replies); with the default thresholds full collections over a large
    heap took a third of a worker's CPU once it fell behind."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def _run_background(node: Node) -> None:
    with node._background:
        async with trio.open_nursery() as tasks:
            await tasks.start(run_notice_relay, node.network, node.router)
            await tasks.start(run_reply_timer, node.replies)
