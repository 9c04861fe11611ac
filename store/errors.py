"""The store's exceptions: a small hierarchy per service, each translated
from its library's errors at one edge (asyncpg's in store/database.py,
redis-py's in store/redis_link.py).

The two services fail separately and mean different things to a caller: a
database outage means nothing can be acknowledged, a Redis outage only that
rate limits, request nonces and the event streams must wait. So neither
hierarchy is a kind of the other, and `service` names which one failed in
logs and reports.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of the database store's own exceptions."""

    service = "database"


class StoreUnavailable(StoreError):
    """The database could not be reached or did not commit. Nothing was acknowledged."""


class JournalConflict(StoreError):
    """A journal position was already taken: two writers for one partition."""


class Fenced(StoreError):
    """A batch was decided under a partition lease that has since passed to
    another epoch: nothing was written, and this node no longer owns
    `partitions`."""

    def __init__(self, partitions: frozenset[int]) -> None:
        super().__init__(f"partitions {sorted(partitions)} are owned under a newer lease")
        self.partitions = partitions


class SchemaMismatch(StoreError):
    """The database was created with settings this node cannot serve."""


class RedisLinkError(Exception):
    """Base of the Redis link's own exceptions."""

    service = "redis"


class RedisUnavailable(RedisLinkError):
    """Redis could not be reached or did not answer in time."""
