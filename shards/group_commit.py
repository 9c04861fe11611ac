"""Group commit across a node's partitions.

Each actor already commits its own mailbox's work in one write. With many
partitions per node, that is still one round trip and one fsync per actor
turn, and the profile showed commits, not commands, driving the cost. Here
every actor hands its batch to the node's writers instead; a writer takes
all the batches waiting and writes them in one statement. Results are all
or nothing, so an actor learns exactly what it would have learnt from its
own write: committed, or `StoreUnavailable` (after which it asks the journal
whether the write happened anyway, as before).

Each actor has at most one batch in flight, so the queue is bounded by the
number of actors. Two writers let one batch be written while the next
gathers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from shards.metrics import Metrics
from store.batch import Batch
from store.errors import Fenced, StoreError
from store.rows import EventRow, IdempotencyRow, JournalRow


class _Waiting:
    __slots__ = ("batch", "done", "error")

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.done = trio.Event()
        self.error: StoreError | None = None


class GroupCommit:
    def __init__(
        self,
        append_many: Callable[[Sequence[Batch]], Awaitable[None]],
        *,
        writers: int = 2,
        batches_max: int = 256,
        metrics: Metrics | None = None,
    ) -> None:
        self._append_many = append_many
        self._metrics = metrics
        self.writers = writers
        self.batches_max = batches_max
        self._send, self._receive = trio.open_memory_channel[_Waiting](4096)
        self.writes_total = 0
        self.batches_total = 0

    async def append(
        self,
        partition: int,
        rows: list[JournalRow],
        idempotency: list[IdempotencyRow] = (),  # type: ignore[assignment]
        events: list[EventRow] = (),  # type: ignore[assignment]
        fence: tuple[str, int] | None = None,
    ) -> None:
        """Same contract as `Journal.append`, shared with the node's other actors."""
        waiting = _Waiting(Batch(partition, rows, idempotency, events, fence))
        await self._send.send(waiting)
        await waiting.done.wait()
        if waiting.error is not None:
            raise waiting.error

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(self.writers):
                nursery.start_soon(self._write_forever)
            task_status.started()

    async def _write(self, group: list[_Waiting]) -> None:
        """Write the group; when some batches' leases have moved on, those
        fail with Fenced and the rest are written again without them
        (nothing was written the first time)."""
        try:
            await self._append_many([waiting.batch for waiting in group])
        except Fenced as error:
            kept = []
            for waiting in group:
                if waiting.batch.partition in error.partitions:
                    waiting.error = error
                else:
                    kept.append(waiting)
            if kept:
                await self._write(kept)
        except StoreError as error:
            for waiting in group:
                waiting.error = error

    async def _write_forever(self) -> None:
        receive = self._receive
        while True:
            group = [await receive.receive()]
            while len(group) < self.batches_max:
                try:
                    group.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            started = trio.current_time()
            await self._write(group)
            if self._metrics is not None:
                self._metrics.commit_seconds.observe(trio.current_time() - started)
                self._metrics.commit_rows.observe(sum(len(waiting.batch.rows) for waiting in group))
            self.writes_total += 1
            self.batches_total += len(group)
            for waiting in group:
                waiting.done.set()
