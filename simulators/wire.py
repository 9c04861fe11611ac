"""The line between a caller and the simulated card network: how long a call
takes and which fault it meets on the way.

`CardNetwork` decides what a call does to money; the wire decides only its
timing and its faults, each from a seeded random stream of its own:

- latency: one draw per call from the network's range (or the fault spec's
  `latency_ms`), so that the sequence of delays depends only on the seed
  and the order of calls;
- faults: one draw per call from a stream seeded apart from the latencies,
  so that injecting faults does not shift them; an outage window refuses
  every call, on a clock that starts with the wire (or with its first call,
  for a wire built outside a trio run).

With ticks, latencies are rounded up to whole milliseconds so that calls due
together share a timer (the bench's in-process network, where the
simulator's cost counts against the engine's).
"""

import math
import random

import trio

from engine.network import NetworkRefused
from simulators.faults import FaultSpec

__all__ = ["FAULT_KINDS", "Wire"]

FAULT_KINDS = ("timeout_before", "timeout_after", "error", "outage")


class Wire:
    """Latencies and faults of one network's calls; see the module docstring."""

    def __init__(
        self,
        *,
        seed: int,
        latency_ms: tuple[int, int],
        faults: FaultSpec | None,
        latency_ticks: bool,
    ) -> None:
        latency_ms_min, latency_ms_max = latency_ms
        self._latency_ticks = latency_ticks
        assert 0 <= latency_ms_min <= latency_ms_max
        self._latency_us_range = (latency_ms_min * 1000, latency_ms_max * 1000)
        self._random = random.Random(seed)
        # Calls answering at the same millisecond tick share one timer.
        self._ticks: dict[int, trio.Event] = {}
        self._faults = faults if faults is not None else FaultSpec()
        self._fault_random = random.Random(f"{seed}:faults")
        self._fault_counts = dict.fromkeys(FAULT_KINDS, 0)
        # Outage windows count from here. A network built outside a trio run
        # (at import, say) has no clock yet; its first call starts it.
        self._created_at: float | None = _trio_time_or_none()

    def set_faults(self, spec: FaultSpec | None) -> None:
        """Inject `spec` from the next call on; None injects nothing."""
        self._faults = spec if spec is not None else FaultSpec()

    def fault_counts(self) -> dict[str, int]:
        """How many times each fault was injected, by kind (FAULT_KINDS), zeros included."""
        return dict(self._fault_counts)

    def spec_for(self, brand: str) -> FaultSpec:
        """The faults in force for a call on `brand`'s network."""
        return self._faults.per_network.get(brand, self._faults)

    def latency_us(self, spec: FaultSpec) -> int:
        """Draw the latency of one call, in microseconds."""
        if spec.latency_ms is None:
            return self._random.randint(*self._latency_us_range)
        latency_ms_min, latency_ms_max = spec.latency_ms
        return self._random.randint(latency_ms_min * 1000, latency_ms_max * 1000)

    async def wait_latency(self, latency_us: int) -> None:
        """Wait out a call's latency; with ticks, rounded up to the next
        millisecond tick.

        Every call due at one tick waits on one timer: under load that is a
        few timers a millisecond instead of one per call (a timer's wake-up
        is one of trio's dearer operations). Should the call holding the
        timer be cancelled, the others are answered at once rather than
        never.
        """
        if not self._latency_ticks:
            await trio.sleep(latency_us / 1_000_000)
            return
        tick = math.ceil((trio.current_time() + latency_us / 1_000_000) * 1000)
        waiter = self._ticks.get(tick)
        if waiter is not None:
            await waiter.wait()
            return
        waiter = self._ticks[tick] = trio.Event()
        try:
            await trio.sleep_until(tick / 1000)
        finally:
            del self._ticks[tick]
            waiter.set()

    def draw_fault(self, spec: FaultSpec, *, timeouts: bool, refusals: bool = True) -> str | None:
        """The fault to inject into this call, counted, or None.

        One draw per call whatever happens, outage or not, so that the
        faults of later calls depend only on the seed and the order of
        calls, not on the clock.
        """
        draw = self._fault_random.random()
        if self._created_at is None:
            self._created_at = trio.current_time()
        fault = None
        if self._in_outage(spec):
            fault = "outage"
        elif draw < spec.error:
            fault = "error"
        elif draw < spec.error + spec.timeout_before:
            fault = "timeout_before"
        elif draw < spec.error + spec.timeout_before + spec.timeout_after:
            fault = "timeout_after"
        if fault in ("timeout_before", "timeout_after") and not timeouts:
            return None
        if fault in ("outage", "error") and not refusals:
            return None
        if fault is not None:
            self._fault_counts[fault] += 1
        return fault

    def _in_outage(self, spec: FaultSpec) -> bool:
        if spec.outage is None:
            return False
        assert self._created_at is not None
        start_s, end_s = spec.outage
        return start_s <= trio.current_time() - self._created_at < end_s

    async def refuse(self, fault: str, latency_us: int, what: str) -> None:
        """Raise NetworkRefused for an "outage" or "error" fault.

        An outage refuses at once, as a connection that cannot be opened
        does; an error is an answer, so it takes the network's latency.
        """
        if fault == "outage":
            await trio.lowlevel.checkpoint()
            raise NetworkRefused(f"network outage: {what} was not performed")
        assert fault == "error", fault
        await self.wait_latency(latency_us)
        raise NetworkRefused(f"network error: {what} was not performed")


def _trio_time_or_none() -> float | None:
    try:
        return trio.current_time()
    except RuntimeError:
        return None
