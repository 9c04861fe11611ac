"""The open-loop load generator shared by both modes.

One trio task per arrival, started at its scheduled time whatever the
payments before it are doing. A driver (engine or HTTP) runs a payment's
steps and records each step's latency; the payment's end-to-end latency
counts from its scheduled arrival. Bounds: the schedule is finite (rate x
duration), payments in flight are capped (an arrival past the cap is
never sent nor queued: it counts as timed out, kind `not_sent_in_flight_max`,
since the client gives up on it for want of answers), and payments still
running `drain_s` after the last arrival are cancelled and count as timed
out, kind `unfinished`.

A payment that does not finish raises PaymentFailed, which names its kind
and its `Outcome`: shed, rate limited, timed out or failed (see
`bench.histograms`). Only the drivers can tell a refusal for overload from
other trouble, so they classify; the rest is failed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import msgspec
import trio

from bench.arrivals import Arrival, parse_mix, schedule
from bench.histograms import Outcome, Recorder

# Cards by scenario: Stripe's test numbers, which the simulator knows.
CARDS = {
    "approve": "4242424242424242",
    "decline": "4000000000000002",
    "3ds": "4000002500003155",
}
CARD_OF_SCENARIO = {"auto": "approve", "manual": "approve", "refund": "approve", "decline": "decline", "3ds": "3ds"}
# How long a 3-D Secure payment waits for its intent to succeed once the
# challenge is passed, and how often it looks.
CHALLENGE_WAIT_S = 30.0
CHALLENGE_POLL_S = 0.005


class LoadSettings(msgspec.Struct, frozen=True):
    rate_per_s: float
    duration_s: float
    mix: str
    seed: int
    drain_s: float = 30.0
    in_flight_max: int = 50_000


class PaymentFailed(Exception):
    """A payment did not end as its scenario expects; `kind` names why,
    `outcome` which count it goes to and `operation` the step it stopped at
    (a payment shed at create was never started)."""

    def __init__(self, kind: str, outcome: Outcome = Outcome.failed, operation: str = "") -> None:
        super().__init__(kind)
        self.kind = kind
        self.outcome = outcome
        self.operation = operation


class Driver(Protocol):
    def refuses_now(self) -> bool:
        """Whether the next payment would be refused at create for overload
        before any work, as the gateway refuses it (engine mode asks the
        node, which is in this process); the generator then records it as
        shed at create without starting it."""

    async def pay(self, arrival: Arrival, due: float, recorder: Recorder) -> None:
        """Run one payment's steps; record each step and, at the end,
        `recorder.finished`. Raises PaymentFailed."""


def expect_status(operation: str, status: str, *expected: str) -> None:
    if status not in expected:
        raise PaymentFailed(f"{operation}_unexpected_{status}", operation=operation)


@contextmanager
def challenge_wait() -> Iterator[None]:
    """Bounds the wait for a 3-D Secure payment to succeed once its
    challenge is passed: past CHALLENGE_WAIT_S the client gives up, and the
    payment is timed out (PaymentFailed `challenge_timeout`)."""
    with trio.move_on_after(CHALLENGE_WAIT_S) as scope:
        yield
    if scope.cancelled_caught:
        raise PaymentFailed("challenge_timeout", Outcome.timed_out, "challenge")


async def _run_one(driver: Driver, arrival: Arrival, due: float, recorder: Recorder) -> None:
    try:
        await driver.pay(arrival, due, recorder)
    except PaymentFailed as failure:
        recorder.error(failure.kind, trio.current_time(), failure.outcome, failure.operation)
    except trio.Cancelled:
        recorder.error("unfinished", trio.current_time(), Outcome.timed_out)
        raise
    finally:
        recorder.in_flight -= 1


async def generate(driver: Driver, settings: LoadSettings, recorder: Recorder, *, share: int = 0, shares: int = 1) -> None:
    """Offer `settings.rate_per_s / shares` payments per second from
    `recorder.start` for `settings.duration_s`, then wait up to `drain_s` for
    the payments in flight. `share` picks this process's seed stream."""
    mix = parse_mix(settings.mix)
    start = recorder.start
    async with trio.open_nursery() as nursery:
        for arrival in schedule(settings.rate_per_s / shares, settings.duration_s, mix, settings.seed * 1000 + share):
            due = start + arrival.at
            now = trio.current_time()
            if now < due:
                await trio.sleep_until(due)
                now = trio.current_time()
            recorder.arrival(arrival.at, arrival.scenario)
            if recorder.in_flight >= settings.in_flight_max:
                recorder.error("not_sent_in_flight_max", now, Outcome.timed_out)
                continue
            if driver.refuses_now():
                recorder.requests += 1
                recorder.error("overloaded", now, Outcome.shed, "create")
                continue
            recorder.in_flight += 1
            nursery.start_soon(_run_one, driver, arrival, due, recorder)
        # Arrivals are over (the schedule may end a little before duration_s).
        await trio.sleep_until(start + settings.duration_s)
        with trio.move_on_after(settings.drain_s):
            while recorder.in_flight:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
