"""The errors a worker meets: each is logged with its context and counted.

A worker that retries forever must not fail silently: every error it
swallows to go on is one warning log line (the event names what failed;
partition, endpoint_id, event_id and the like say where) and one more in
its counter, which tests read and an operator's page can show.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

import structlog


class WorkerErrors:
    """The counter of one worker (one kind of worker on a node: all outbox
    relays share one)."""

    def __init__(self, worker: str, recent_max: int = 20) -> None:
        self.worker = worker
        self.counts: Counter[str] = Counter()
        # The newest errors (wall-clock seconds, event, context), for an
        # operator's page; the context is what the log line says.
        self.recent: deque[tuple[float, str, dict[str, Any]]] = deque(maxlen=recent_max)
        self._log = structlog.get_logger(f"workers.{worker}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, event: str, *, level: str = "warning", **context: Any) -> None:
        """Log `event` with its context at `level` and count it."""
        self.counts[event] += 1
        self.recent.append((time.time(), event, context))
        getattr(self._log, level)(event, **context)
