"""The reply timer: callers waiting for an actor's answer stop waiting
after `timeout_s`.

One timer task serves every waiting caller: a cancel scope per command cost
more than the command's decision. Replies are kept in the order they were
asked for, all with the same timeout, so only the front of the queue is
ever looked at.
"""

from __future__ import annotations

from typing import Any

import trio

from shards.actor import Outcome, Reply
from store.errors import StoreUnavailable

CHECK_EVERY_S = 0.25


class ReplyTimer:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        # Replies callers wait for, oldest first, with their deadlines.
        self._waiting: dict[Reply, float] = {}

    @property
    def waiting(self) -> int:
        """How many callers wait now (the node's commands in flight)."""
        return len(self._waiting)

    async def wait(self, reply: Reply) -> Outcome | StoreUnavailable | None:
        """The reply's value, or None when it expired first (see Reply.wait)."""
        self._waiting[reply] = trio.current_time() + self.timeout_s
        try:
            return await reply.wait()
        finally:
            self._waiting.pop(reply, None)

    def expire_due(self, now: float) -> None:
        """Expire every reply whose deadline is not after `now`."""
        waiting = self._waiting
        while waiting:
            reply, deadline = next(iter(waiting.items()))
            if deadline > now:
                return
            del waiting[reply]
            reply.expire()


async def run_reply_timer(timer: ReplyTimer, *, every_s: float = CHECK_EVERY_S, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Expire late replies every `every_s` until cancelled. Never raises."""
    task_status.started()
    while True:
        await trio.sleep(every_s)
        timer.expire_due(trio.current_time())
