"""Nodes sharing partitions: who owns what, and how a node keeps its share.

A node in a cluster holds leases on some partitions (store/leases.py). Its
membership loop (`run_membership`) does three things, each on its own task
so that a slow one never starves another:

- the heartbeat: every `lease_ttl_s / 3`, say it is alive and renew its
  leases in one transaction. A lease that did not renew is lost: its actor
  is closed (its writes are fenced anyway). If no heartbeat has succeeded
  for nearly a TTL, every partition is given up: the node can no longer
  know it still owns them, and serving them from memory could be stale.
- rebalancing, after each heartbeat: with `n` live nodes and `P`
  partitions, each node aims at `ceil(P / n)`; it takes free or expired
  partitions up to that, hands off those beyond it, and hands off one more
  while it is at the ceiling and another node is below the floor. A handoff
  closes the actor (it drains its mailbox, finishes its network calls and
  commits) and only then releases the lease; the taker loads the journal.
- leaving (SIGTERM): mark the node leaving, hand off everything, release.

Forwarded requests between nodes are signed with the cluster secret
(`forward_signature`): a request carrying a good signature is never
forwarded again, so a stale view cannot make requests loop.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import msgspec
import structlog
import trio

from store.errors import StoreUnavailable
from store.leases import ClusterView, Leases

log = structlog.get_logger("shards.cluster")

# How far a forwarded request's timestamp may be from the receiver's clock.
FORWARD_SKEW_S = 60
HOST = socket.gethostname()


class ClusterConfig(msgspec.Struct, frozen=True):
    node_id: str
    lease_ttl_s: float = 10.0
    # A passer-by (`payments reconcile` while nodes serve) takes only the
    # partitions no live node holds and is never counted in the spread, so
    # serving nodes never hand it theirs.
    passer_by: bool = False

    @property
    def heartbeat_s(self) -> float:
        return self.lease_ttl_s / 3


class NodeIdTaken(Exception):
    """Another live node already uses this node id."""


class Member(Protocol):
    """What the membership loop needs of a node."""

    url: str | None

    def held(self) -> dict[int, int]: ...

    def mailbox_depth(self) -> int: ...

    async def take(self, partition: int, epoch: int) -> None: ...

    async def give_up(self, partition: int) -> None: ...

    def drop(self, partition: int) -> None: ...


def target_changes(
    view: ClusterView, me: str, held: Iterable[int], partitions: int, ttl_s: float, leaving: bool = False
) -> tuple[list[int], list[int]]:
    """(partitions to take, partitions to hand off) for node `me`, which
    serves `held`, from the database's view: the even spread described in
    the module docstring. A lease left under our id by an earlier process
    of this node is free to take."""
    held = sorted(held)
    if leaving:
        return [], held
    dead = set(dead_nodes(view))
    live = {m.node_id for m in view.members if m.silent_s < ttl_s and not m.leaving and m.node_id not in dead} | {me}
    ceiling = math.ceil(partitions / len(live))
    floor = partitions // len(live)
    free = free_partitions(view, me, held)
    if len(held) < ceiling:
        return free[: ceiling - len(held)], []
    excess = len(held) - ceiling
    counts = {node_id: 0 for node_id in live}
    for lease in view.leases:
        if lease.owner in counts and lease.expires_in_s > 0 and lease.owner != me:
            counts[lease.owner] += 1
    if excess == 0 and not free and any(count < floor for node_id, count in counts.items() if node_id != me):
        excess = 1
    # Hand off the highest-numbered ones: any choice works, a fixed one
    # keeps two nodes from trading the same partitions back and forth.
    return [], held[len(held) - excess :] if excess > 0 else []


def dead_nodes(view: ClusterView) -> list[str]:
    """Nodes of this machine whose process has exited (a crash): their
    leases need not be waited out."""
    return [member.node_id for member in view.members if member.host == HOST and member.pid and not process_alive(member.pid)]


def free_partitions(view: ClusterView, me: str, held: Iterable[int]) -> list[int]:
    """Partitions nobody holds: free, expired, left under our id by an
    earlier process of this node, or held by a node known dead."""
    held = set(held)
    dead = set(dead_nodes(view))
    return [
        lease.partition
        for lease in view.leases
        if lease.owner is None
        or lease.expires_in_s <= 0
        or lease.owner in dead
        or (lease.owner == me and lease.partition not in held)
    ]


def owner_url(view: ClusterView | None, partition: int, me: str, ttl_s: float) -> str | None:
    """Where the partition's owner listens, if another live node owns it."""
    if view is None:
        return None
    lease = next((lease for lease in view.leases if lease.partition == partition), None)
    if lease is None or lease.owner is None or lease.owner == me:
        return None
    member = next((m for m in view.members if m.node_id == lease.owner), None)
    if member is None or member.url is None or member.silent_s >= ttl_s:
        return None
    return member.url


def forward_signature(secret: bytes, node_id: str, timestamp: int, method: str, path: str) -> str:
    """The value of the header a node puts on a request it forwards."""
    mac = hmac.new(secret, f"{node_id}\n{timestamp}\n{method}\n{path}".encode(), hashlib.sha256).hexdigest()
    return f"{node_id},{timestamp},{mac}"


def forwarded_by(secret: bytes, header: str | None, method: str, path: str, now_s: float) -> str | None:
    """The node that forwarded a request, if its header is good and fresh."""
    if not header:
        return None
    parts = header.split(",")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    node_id, timestamp = parts[0], int(parts[1])
    if abs(now_s - timestamp) > FORWARD_SKEW_S:
        return None
    expected = forward_signature(secret, node_id, timestamp, method, path)
    return node_id if hmac.compare_digest(expected.encode(), header.encode()) else None


class Membership:
    """One node's place in the cluster: its leases and the latest view."""

    def __init__(self, leases: Leases, config: ClusterConfig, partitions: int, member: Member) -> None:
        self.leases = leases
        self.config = config
        self.partitions = partitions
        self.member = member
        self.view: ClusterView | None = None
        self.leaving = False
        self.secret = b""
        # When the last heartbeat that renewed our leases started (trio clock).
        self._renewed_at = -math.inf
        self._beat = trio.Event()
        self._rebalancing = trio.Lock()

    @property
    def node_id(self) -> str:
        return self.config.node_id

    def owner_url(self, partition: int) -> str | None:
        return owner_url(self.view, partition, self.node_id, self.config.lease_ttl_s)

    def peer_urls(self) -> list[str | None]:
        """Where each other node holding a live lease listens (None: it has
        not said yet)."""
        view = self.view
        if view is None:
            return []
        owners = {lease.owner for lease in view.leases if lease.expires_in_s > 0} - {self.node_id}
        return [m.url for m in view.members if m.node_id in owners]

    def any_peer_url(self) -> str | None:
        """Where some other node that serves partitions listens."""
        return next((url for url in self.peer_urls() if url), None)

    def held_by_silent_nodes(self) -> list[int]:
        """Partitions whose lease has not run out though their owner has
        stopped heartbeating (it died or is cut off): a passer-by waits for
        those."""
        view = self.view
        if view is None:
            return []
        talking = {m.node_id for m in view.members if m.silent_s < 2 * self.config.heartbeat_s}
        return [l.partition for l in view.leases if l.owner and l.owner != self.node_id and l.expires_in_s > 0 and l.owner not in talking]

    async def refresh_view(self) -> None:
        """Read the leases and nodes again (a request found no owner in the
        last heartbeat's view). Raises StoreUnavailable."""
        view = await self.leases.view()
        self.view = ClusterView(view.leases, view.members, self.view.renewed if self.view is not None else {})

    async def join(self) -> None:
        """Register; raises NodeIdTaken when a live node has our id. An
        earlier process of this node on this machine that has exited (a
        crash, then a restart) does not count as live."""
        self.secret = await self.leases.cluster_secret()
        ttl_s, url = self.config.lease_ttl_s, self.member.url
        holder = await self.leases.join(self.node_id, url, ttl_s, host=HOST, pid=os.getpid())
        if holder is not None and holder.host == HOST and not process_alive(holder.pid):
            holder = await self.leases.join(self.node_id, url, ttl_s, host=HOST, pid=os.getpid(), gone=holder.pid)
        if holder is not None:
            raise NodeIdTaken(
                f"a live node already uses the id {self.node_id!r} (process {holder.pid} on {holder.host or 'an unknown host'},"
                f" heard from {holder.silent_s:.1f} s ago); pick another with --node-id"
            )

    async def heartbeat(self) -> None:
        """One heartbeat; gives up lost partitions. Raises StoreUnavailable."""
        started = trio.current_time()
        held = self.member.held()
        view = await self.leases.heartbeat(
            self.node_id,
            self.member.url,
            held,
            self.config.lease_ttl_s,
            mailbox_depth=self.member.mailbox_depth(),
            # Others leave a leaving node (and a passer-by) out of the spread.
            leaving=self.leaving or self.config.passer_by,
        )
        self.view = view
        self._renewed_at = started
        for partition, epoch in held.items():
            if view.renewed.get(partition) != epoch:
                log.warning("partition_lease_lost", partition=partition, epoch=epoch)
                self.member.drop(partition)

    async def rebalance(self) -> None:
        """Take and hand off partitions toward an even spread; one pass at a
        time (two at once could both take a partition)."""
        async with self._rebalancing:
            await self._rebalance()

    async def _rebalance(self) -> None:
        if self.view is None:
            return
        if self.config.passer_by and not self.leaving:
            take, hand_off = free_partitions(self.view, self.node_id, self.member.held()), []
        else:
            take, hand_off = target_changes(self.view, self.node_id, self.member.held(), self.partitions, self.config.lease_ttl_s, self.leaving)
        for partition in hand_off:
            await self.hand_off(partition)
        if take:
            taken = await self.leases.acquire(self.node_id, take, self.config.lease_ttl_s, dead=dead_nodes(self.view))
            for partition, epoch in sorted(taken.items()):
                log.info("partition_taken", partition=partition, epoch=epoch)
                await self.member.take(partition, epoch)
        if take or hand_off:
            # Forwarding reads the view: let it show what just moved.
            await self.refresh_view()

    async def hand_off(self, partition: int) -> None:
        """Drain and close the partition's actor, then release its lease."""
        epoch = self.member.held().get(partition)
        await self.member.give_up(partition)
        if epoch is not None:
            await self.leases.release(self.node_id, {partition: epoch})
            log.info("partition_released", partition=partition, epoch=epoch)

    async def leave(self) -> None:
        """Hand off every partition (their actors drain side by side) and
        leave the cluster."""
        self.leaving = True
        async with trio.open_nursery() as nursery:
            for partition in sorted(self.member.held()):
                nursery.start_soon(self.hand_off, partition)
        await self.leases.leave(self.node_id)

    async def run_heartbeats(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat until cancelled; past a TTL without one, give up everything."""
        task_status.started()
        while True:
            try:
                await self.heartbeat()
                self._beat.set()
            except StoreUnavailable as error:
                log.warning("cluster_heartbeat_failed", error=str(error))
                if trio.current_time() - self._renewed_at > self.config.lease_ttl_s * 0.8:
                    for partition in sorted(self.member.held()):
                        log.warning("partition_given_up_unrenewed", partition=partition)
                        self.member.drop(partition)
            await trio.sleep(self.config.heartbeat_s)

    async def run_rebalancing(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Rebalance after each heartbeat until cancelled."""
        task_status.started()
        while True:
            await self._beat.wait()
            self._beat = trio.Event()
            try:
                await self.rebalance()
            except StoreUnavailable as error:
                log.warning("cluster_rebalance_failed", error=str(error))


async def run_membership(membership: Membership, until: Callable[[], Awaitable[None]], *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Take a first share (after `membership.join()`), keep it until
    `until()` returns, then hand everything off and leave."""
    await membership.heartbeat()
    await membership.rebalance()
    async with trio.open_nursery() as nursery:
        await nursery.start(membership.run_heartbeats)
        await nursery.start(membership.run_rebalancing)
        task_status.started()
        await until()
        nursery.cancel_scope.cancel()
    with trio.CancelScope(shield=True):
        try:
            await membership.leave()
        except StoreUnavailable as error:
            log.warning("cluster_leave_failed", error=str(error))


def process_alive(pid: int) -> bool:
    """Whether a process of this machine with this id exists."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
