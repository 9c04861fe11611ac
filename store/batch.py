"""A batch: what one actor turn writes, and the `append` every journal
(PostgreSQL's and the memory store's) offers on top of its `append_many`."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from store.rows import EventRow, IdempotencyRow, JournalRow


class Batch(msgspec.Struct, frozen=True):
    """What one actor turn writes: its journal rows (with their postings),
    the events they raise and the idempotency records they settle."""

    partition: int
    rows: Sequence[JournalRow]
    idempotency: Sequence[IdempotencyRow] = ()
    events: Sequence[EventRow] = ()
    # (owner, epoch) of the partition's lease the batch was decided under:
    # the write is refused (Fenced) unless the lease still has them. None
    # for a node given fixed partitions, which takes no leases.
    fence: tuple[str, int] | None = None


class BatchWriter:
    """A journal: writes batches all or none with `append_many`."""

    async def append_many(self, batches: Sequence[Batch]) -> None:
        """Write the batches of several partitions at once: all or none.
        Raises StoreUnavailable (nothing written, as far as the caller can
        tell), Fenced (a batch's lease has moved on: nothing written) or
        JournalConflict (a position was taken)."""
        raise NotImplementedError

    async def append(
        self,
        partition: int,
        rows: Sequence[JournalRow],
        idempotency: Sequence[IdempotencyRow] = (),
        events: Sequence[EventRow] = (),
        fence: tuple[str, int] | None = None,
    ) -> None:
        """Write one batch of journal rows, their postings, the events they
        raise (the outbox) and the idempotency records of the requests behind
        them, as `append_many` writes a batch."""
        await self.append_many([Batch(partition, rows, idempotency, events, fence)])
