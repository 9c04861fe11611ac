"""Admission of new payments: a bound on the node's commands in flight that
follows how long the node itself keeps a command.

The signal is the node's own delay, not the answer time a caller sees: for
each actor turn, how long its oldest client command waited from being queued
until its batch was journaled. The card network's time is not in it (a
confirm's reply waits for the network after its first commit), so a slow
network does not shrink the bound, while a CPU, a database or a loop that
cannot keep up does. The count held against the bound does include
confirms waiting for the network (they are commands in flight): while the
node stays quick the bound grows to cover them, up to `limit_max`, so a slow
network costs bound, not refusals, until that ceiling.

Every `window_s` the bound moves once, additive increase and multiplicative
decrease as in TCP's congestion control:

- a window in which some turn kept its commands longer than `target_s`
  multiplies the bound by `decrease` (never below `limit_min`);
- a window with every turn under half the target, in which the node had the
  bound nearly full (`busy_fraction`), grows it by `increase` of itself
  (at least one command, never above `limit_max`);
- otherwise it stays.

Only new payments are refused by it (the gateway's and the engine's check
before a create): commands of payments already started are never refused
here, so the work in progress finishes first.
"""

from __future__ import annotations

import math

import msgspec


class AdmissionConfig(msgspec.Struct, frozen=True):
    # How long the node may keep a command (queued to journaled) before it
    # counts as congested.
    target_s: float = 0.1
    window_s: float = 0.1
    limit_initial: int = 512
    limit_min: int = 64
    limit_max: int = 8192
    decrease: float = 0.8
    increase: float = 0.1
    busy_fraction: float = 0.8


class Admission:
    """The node's bound on commands in flight for new payments. Not
    thread-safe; called from the node's trio loop only."""

    def __init__(self, config: AdmissionConfig | None = None) -> None:
        self.config = config or AdmissionConfig()
        self.limit = self.config.limit_initial
        self._window_end = -math.inf
        self._worst_s = 0.0
        self._busiest = 0
        self.decreases = 0
        self.increases = 0

    def admits(self, in_flight: int) -> bool:
        """Whether a new payment may start with `in_flight` commands in
        flight on the node; notes how full the bound was."""
        if in_flight > self._busiest:
            self._busiest = in_flight
        return in_flight < self.limit

    def observe(self, kept_s: float, now: float) -> None:
        """A turn journaled its batch; `kept_s` is how long its oldest client
        command waited from being queued until then."""
        if kept_s > self._worst_s:
            self._worst_s = kept_s
        if now >= self._window_end:
            self._adjust()
            self._window_end = now + self.config.window_s

    def _adjust(self) -> None:
        config = self.config
        if self._worst_s > config.target_s:
            self.limit = max(config.limit_min, int(self.limit * config.decrease))
            self.decreases += 1
        elif self._worst_s < config.target_s / 2 and self._busiest >= self.limit * config.busy_fraction:
            self.limit = min(config.limit_max, self.limit + max(1, int(self.limit * config.increase)))
            self.increases += 1
        self._worst_s = 0.0
        self._busiest = 0
