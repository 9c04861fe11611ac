"""Partition leases and the cluster's nodes (DESIGN section 8).

Each partition has one lease row: its owner (a node id, or none), an epoch
and an expiry, all judged by the database's clock. Taking a partition that
is free or expired raises its epoch; the journal append of a batch names
the epoch it was decided under and is refused once the epoch has moved on
(store/journal.py), so a node that was paused or cut off past its lease can
never write again. A node renews its leases well within the TTL; renewal
only succeeds under the epoch it holds.

Nodes also say where they listen and that they are alive (`cluster_nodes`):
that is how a node forwards a request to a partition's owner and how the
partitions are spread over the live nodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec

from store.database import Database, columns


class Lease(msgspec.Struct, frozen=True):
    partition: int
    owner: str | None
    epoch: int
    # Seconds until it expires by the database's clock (negative: expired).
    expires_in_s: float


class Member(msgspec.Struct, frozen=True):
    node_id: str
    url: str | None
    # Seconds since the last heartbeat, by the database's clock.
    silent_s: float
    leaving: bool
    mailbox_depth: int
    started_at_s: float
    host: str = ""
    pid: int = 0


class ClusterView(msgspec.Struct, frozen=True):
    leases: list[Lease]
    members: list[Member]
    # The partitions whose lease this node renewed, with their epochs.
    renewed: dict[int, int]


async def _join(connection: asyncpg.Connection, node_id: str, url: str | None, ttl_s: float, host: str, pid: int, gone: int | None) -> Member | None:
    """Register; None when done, else the live node that holds the id."""
    joined = await connection.fetchval(
        "INSERT INTO cluster_nodes (node_id, url, host, pid) VALUES ($1, $2, $4, $5)"
        " ON CONFLICT (node_id) DO UPDATE SET url = EXCLUDED.url, started_at = now(), heartbeat_at = now(), leaving = false,"
        " mailbox_depth = 0, host = EXCLUDED.host, pid = EXCLUDED.pid"
        " WHERE cluster_nodes.heartbeat_at < now() - make_interval(secs => $3) OR cluster_nodes.leaving"
        " OR (cluster_nodes.host = $4 AND cluster_nodes.pid = $6)"
        " RETURNING true",
        node_id,
        url,
        float(ttl_s),
        host,
        pid,
        gone if gone is not None else -1,
    )
    if joined:
        return None
    return next(member for member in await _members(connection) if member.node_id == node_id)


async def _heartbeat(
    connection: asyncpg.Connection, node_id: str, url: str | None, held: dict[int, int], ttl_s: float, mailbox_depth: int, leaving: bool
) -> ClusterView:
    await connection.execute(
        "UPDATE cluster_nodes SET heartbeat_at = now(), url = $2, leaving = $3, mailbox_depth = $4 WHERE node_id = $1",
        node_id,
        url,
        leaving,
        mailbox_depth,
    )
    partitions, epochs = columns(sorted(held.items()), 2)
    renewed = await connection.fetch(
        "UPDATE partition_leases AS l SET expires_at = now() + make_interval(secs => $4)"
        " FROM unnest($2::smallint[], $3::bigint[]) AS h (partition, epoch)"
        " WHERE l.partition = h.partition AND l.epoch = h.epoch AND l.owner = $1"
        " RETURNING l.partition, l.epoch",
        node_id,
        partitions,
        epochs,
        float(ttl_s),
    )
    return ClusterView(await _leases(connection), await _members(connection), {row["partition"]: row["epoch"] for row in renewed})


async def _leases(connection: asyncpg.Connection) -> list[Lease]:
    rows = await connection.fetch(
        "SELECT partition, owner, epoch, extract(epoch FROM expires_at - now())::float8 AS expires_in_s"
        " FROM partition_leases ORDER BY partition"
    )
    return [Lease(row["partition"], row["owner"], row["epoch"], max(row["expires_in_s"], -1e9)) for row in rows]


async def _members(connection: asyncpg.Connection) -> list[Member]:
    rows = await connection.fetch(
        "SELECT node_id, url, extract(epoch FROM now() - heartbeat_at)::float8 AS silent_s, leaving, mailbox_depth,"
        " extract(epoch FROM started_at)::float8 AS started_at_s, host, pid FROM cluster_nodes ORDER BY node_id"
    )
    return [
        Member(row["node_id"], row["url"], row["silent_s"], row["leaving"], row["mailbox_depth"], row["started_at_s"], row["host"], row["pid"])
        for row in rows
    ]


async def _acquire(connection: asyncpg.Connection, node_id: str, partitions: list[int], ttl_s: float, dead: list[str]) -> dict[int, int]:
    rows = await connection.fetch(
        "UPDATE partition_leases SET owner = $1, epoch = epoch + 1, expires_at = now() + make_interval(secs => $3)"
        " WHERE partition = ANY($2::smallint[]) AND (owner IS NULL OR owner = $1 OR owner = ANY($4::text[]) OR expires_at < now())"
        " RETURNING partition, epoch",
        node_id,
        partitions,
        float(ttl_s),
        dead,
    )
    return {row["partition"]: row["epoch"] for row in rows}


async def _release(connection: asyncpg.Connection, node_id: str, held: dict[int, int]) -> int:
    partitions, epochs = columns(sorted(held.items()), 2)
    status = await connection.execute(
        "UPDATE partition_leases AS l SET owner = NULL, expires_at = 'epoch'"
        " FROM unnest($2::smallint[], $3::bigint[]) AS h (partition, epoch)"
        " WHERE l.partition = h.partition AND l.epoch = h.epoch AND l.owner = $1",
        node_id,
        partitions,
        epochs,
    )
    return int(status.split()[-1])


async def _leave(connection: asyncpg.Connection, node_id: str) -> None:
    await connection.execute("UPDATE partition_leases SET owner = NULL, expires_at = 'epoch' WHERE owner = $1", node_id)
    await connection.execute("DELETE FROM cluster_nodes WHERE node_id = $1", node_id)


async def _view(connection: asyncpg.Connection) -> ClusterView:
    return ClusterView(await _leases(connection), await _members(connection), {})


async def _take_worker(connection: asyncpg.Connection, name: str, owner: str, ttl_s: float) -> bool:
    taken = await connection.fetchval(
        "INSERT INTO worker_leases (name, owner, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3))"
        " ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at"
        " WHERE worker_leases.owner = EXCLUDED.owner OR worker_leases.expires_at < now()"
        " RETURNING true",
        name,
        owner,
        float(ttl_s),
    )
    return bool(taken)


async def _release_worker(connection: asyncpg.Connection, name: str, owner: str) -> None:
    await connection.execute("DELETE FROM worker_leases WHERE name = $1 AND owner = $2", name, owner)


async def _setting(connection: asyncpg.Connection, key: str) -> str | None:
    return await connection.fetchval("SELECT value FROM settings WHERE key = $1", key)


class Leases:
    """Each method is one bridged call; each raises StoreUnavailable when the
    database cannot be reached."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def join(self, node_id: str, url: str | None, ttl_s: float, *, host: str = "", pid: int = 0, gone: int | None = None) -> Member | None:
        """Register a node running as process `pid` on `host`. Refused (the
        live node holding the id is returned) while another node with this
        id was heard from within `ttl_s` and is not leaving, unless it is
        process `gone` on the same host (known to have exited)."""
        return await self._database.call(_join, node_id, url, ttl_s, host, pid, gone, transaction=True)

    async def heartbeat(
        self, node_id: str, url: str | None, held: dict[int, int], ttl_s: float, *, mailbox_depth: int = 0, leaving: bool = False
    ) -> ClusterView:
        """Say the node is alive and renew the leases it holds (partition ->
        epoch) for `ttl_s` more; in one transaction. The view's `renewed`
        holds those still this node's: any other has been lost."""
        return await self._database.call(_heartbeat, node_id, url, held, ttl_s, mailbox_depth, leaving, transaction=True)

    async def acquire(self, node_id: str, partitions: Sequence[int], ttl_s: float, *, dead: Sequence[str] = ()) -> dict[int, int]:
        """Take those of `partitions` that are free, expired, left under
        this node id by an earlier process, or held by one of the `dead`
        nodes (known to have exited), each under a new epoch (which fences
        the earlier holder); returns partition -> epoch of those taken."""
        return await self._database.call(_acquire, node_id, list(partitions), ttl_s, list(dead))

    async def release(self, node_id: str, held: dict[int, int]) -> int:
        """Give up leases still held under these epochs; how many were."""
        return await self._database.call(_release, node_id, held)

    async def leave(self, node_id: str) -> None:
        """Release every lease of a node and forget it."""
        await self._database.call(_leave, node_id, transaction=True)

    async def view(self) -> ClusterView:
        """Every lease and every node, as the database sees them now."""
        return await self._database.call(_view, transaction=True)

    async def take_worker(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take or renew the lease of a once-per-cluster worker; False while
        another node holds it."""
        return await self._database.call(_take_worker, name, owner, ttl_s)

    async def release_worker(self, name: str, owner: str) -> None:
        """Give a worker's lease up, if `owner` holds it."""
        await self._database.call(_release_worker, name, owner)

    async def cluster_secret(self) -> bytes:
        """The key nodes sign forwarded requests with (made at migrate)."""
        value = await self._database.call(_setting, "cluster_secret")
        assert value is not None, "migrate makes the cluster secret"
        return bytes.fromhex(value)
