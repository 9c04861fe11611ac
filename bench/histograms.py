"""What a run measured: latencies per operation and end to end, counts, errors.

Every payment that arrives either finishes or goes to exactly one of three
counts (`Outcome`): shed (the system refused it because it is past
capacity), timed out (the client gave up waiting) or failed (anything
else). Shed payments are split once more by where they stopped: at create
(nothing was started) or later (a started payment's work was wasted).

While load runs, a latency costs one append to an array (tens of
nanoseconds): the load generator shares the machine with what it measures,
so the HdrHistograms are built only once the load has stopped. A process
ships its measurements as encoded HdrHistograms (compact, mergeable), and the
parent adds those of every process together.

Latencies are kept in microseconds, from 1 µs to an hour, to three
significant figures.
"""

from __future__ import annotations

import collections
import enum
import math
from array import array
from typing import Any

from hdrh.histogram import HdrHistogram

LATENCY_US_MAX = 3_600_000_000
SIGNIFICANT_FIGURES = 3
# The operations a payment is made of, and "e2e": from its scheduled arrival
# to its last acknowledged step.
OPERATIONS = ("create", "confirm", "capture", "refund", "challenge", "e2e")
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


class Outcome(enum.StrEnum):
    """Which count a payment that did not finish goes to."""

    # Refused because the system is past capacity: the engine's Overloaded,
    # or an HTTP 503 service_unavailable.
    shed = "shed"
    # Refused by the merchant's rate limit (HTTP 429): shed too, and counted
    # apart, since it says the client asked too fast, not the engine is full.
    rate_limited = "rate_limited"
    # The client gave up: no answer within its timeout, still running when
    # the drain ended, or never sent for too many payments in flight.
    timed_out = "timed_out"
    # Anything else: other refusals, the store away, unexpected answers.
    failed = "failed"


# The count (one of UNFINISHED) each outcome goes to.
_COUNT_OF = {outcome: "shed" if outcome is Outcome.rate_limited else str(outcome) for outcome in Outcome}
# The counts of payments that did not finish; each is also kept per second.
UNFINISHED = ("shed", "timed_out", "failed")
# Their totals, and the shed payments split by where and why they stopped.
OUTCOME_COUNTS = (*UNFINISHED, "shed_at_create", "shed_rate_limited")


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, LATENCY_US_MAX, SIGNIFICANT_FIGURES)


def histogram_of(values_us: array) -> HdrHistogram:
    histogram = new_histogram()
    record = histogram.record_value
    for value in values_us:
        record(min(max(value, 1), LATENCY_US_MAX))
    return histogram


def encode(histogram: HdrHistogram) -> str:
    return histogram.encode().decode() if histogram.get_total_count() else ""


def decode_into(histogram: HdrHistogram, encoded: str) -> None:
    if encoded:
        histogram.add(HdrHistogram.decode(encoded.encode()))


def summary_ms(histogram: HdrHistogram) -> dict[str, float | int]:
    """count, p50, p90, p99, p99.9, max and mean of a histogram, in milliseconds."""
    count = histogram.get_total_count()
    if not count:
        return {"count": 0, "p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "p999_ms": 0.0, "max_ms": 0.0, "mean_ms": 0.0}
    values = {p: histogram.get_value_at_percentile(p) / 1000 for p in PERCENTILES}
    return {
        "count": count,
        "p50_ms": round(values[50.0], 3),
        "p90_ms": round(values[90.0], 3),
        "p99_ms": round(values[99.0], 3),
        "p999_ms": round(values[99.9], 3),
        "max_ms": round(histogram.get_max_value() / 1000, 3),
        "mean_ms": round(histogram.get_mean_value() / 1000, 3),
    }


def cdf_points_ms(histogram: HdrHistogram, points_max: int = 400) -> list[tuple[float, float]]:
    """(latency ms, fraction of samples at or below it), for plotting."""
    total = histogram.get_total_count()
    if not total:
        return []
    points = []
    seen = 0
    for item in histogram.get_recorded_iterator():
        seen += item.count_at_value_iterated_to
        points.append((item.value_iterated_to / 1000, seen / total))
    if len(points) > points_max:
        step = len(points) / points_max
        points = [points[int(index * step)] for index in range(points_max)] + [points[-1]]
    return points


class Steps:
    """The requests (or engine commands) one payment sends, counted for the
    run as well: the baselines' payment equivalents divide by what a
    finished payment sent."""

    __slots__ = ("recorder", "count")

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.count = 0

    def sent(self) -> None:
        self.count += 1
        self.recorder.requests += 1


class Recorder:
    """Measurements of one process's share of the load. Times are seconds on
    the caller's monotonic clock; `start` is the run's time zero on it."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.samples_us: dict[str, array] = {name: array("q") for name in OPERATIONS}
        self.scenario_e2e_us: dict[str, array] = collections.defaultdict(lambda: array("q"))
        # Completion offsets (s) of each finished payment, parallel to samples_us["e2e"].
        self.completed_at = array("d")
        self.arrivals_per_s: collections.Counter[int] = collections.Counter()
        self.unfinished_per_s = {name: collections.Counter[int]() for name in UNFINISHED}
        self.errors: collections.Counter[str] = collections.Counter()
        # The count (one of UNFINISHED) each kind of error went to.
        self.error_outcomes: dict[str, str] = {}
        self.scenarios: collections.Counter[str] = collections.Counter()
        self.arrived = 0
        self.completed = 0
        self.outcomes = collections.Counter[str]({name: 0 for name in OUTCOME_COUNTS})
        self.in_flight = 0
        self.requests = 0  # HTTP requests or engine commands sent
        # Of them, those sent by the payments that finished.
        self.finished_requests = 0
        self._window_start = 0

    def arrival(self, at: float, scenario: str) -> None:
        self.arrived += 1
        self.scenarios[scenario] += 1
        self.arrivals_per_s[int(at)] += 1

    def operation(self, name: str, latency_s: float) -> None:
        self.samples_us[name].append(int(latency_s * 1_000_000))

    def finished(self, scenario: str, scheduled: float, now: float, steps: Steps) -> None:
        self.finished_requests += steps.count
        latency_us = int((now - scheduled) * 1_000_000)
        self.samples_us["e2e"].append(latency_us)
        self.scenario_e2e_us[scenario].append(latency_us)
        self.completed_at.append(now - self.start)
        self.completed += 1

    def error(self, kind: str, now: float, outcome: Outcome = Outcome.failed, operation: str = "") -> None:
        """A payment that did not finish: `kind` says why, `outcome` which
        count it goes to, `operation` the step it stopped at. Past capacity
        most arrivals end here, and the generator shares its core with the
        engine: kept cheap."""
        kind = kind[:80]
        count = _COUNT_OF[outcome]
        self.errors[kind] += 1
        self.error_outcomes[kind] = count
        self.unfinished_per_s[count][int(now - self.start) if now > self.start else 0] += 1
        outcomes = self.outcomes
        outcomes[count] += 1
        if operation == "create" and count == "shed":
            outcomes["shed_at_create"] += 1
        if outcome is Outcome.rate_limited:
            outcomes["shed_rate_limited"] += 1

    def progress(self) -> dict[str, Any]:
        """Counts so far and the p99 of payments finished since the last call."""
        window = self.samples_us["e2e"][self._window_start :]
        self._window_start = len(self.samples_us["e2e"])
        p99_ms = 0.0
        if window:
            ordered = sorted(window)
            p99_ms = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)] / 1000
        return {
            "arrived": self.arrived,
            "completed": self.completed,
            **{name: self.outcomes[name] for name in UNFINISHED},
            "in_flight": self.in_flight,
            "window_p99_ms": p99_ms,
        }

    def export(self) -> dict[str, Any]:
        """Everything measured, with latencies as encoded HdrHistograms."""
        per_second: dict[int, array] = collections.defaultdict(lambda: array("q"))
        for offset, latency_us in zip(self.completed_at, self.samples_us["e2e"]):
            per_second[int(offset)].append(latency_us)
        seconds = sorted(set(per_second).union(self.arrivals_per_s, *self.unfinished_per_s.values()))
        return {
            "histograms": {name: encode(histogram_of(values)) for name, values in self.samples_us.items()},
            "scenario_histograms": {name: encode(histogram_of(values)) for name, values in self.scenario_e2e_us.items()},
            "per_second": [
                {
                    "second": second,
                    "arrived": self.arrivals_per_s.get(second, 0),
                    "completed": len(per_second.get(second, ())),
                    **{name: counts.get(second, 0) for name, counts in self.unfinished_per_s.items()},
                    "e2e": encode(histogram_of(per_second.get(second, array("q")))),
                }
                for second in seconds
            ],
            "errors": dict(self.errors),
            "error_outcomes": dict(self.error_outcomes),
            "scenarios": dict(self.scenarios),
            "arrived": self.arrived,
            "completed": self.completed,
            "outcomes": dict(self.outcomes),
            "requests": self.requests,
            "finished_requests": self.finished_requests,
            "last_completed_s": max(self.completed_at, default=0.0),
        }


PER_SECOND_COUNTS = ("arrived", "completed", *UNFINISHED)


class Merged:
    """The exports of every process added together."""

    def __init__(self) -> None:
        self.histograms = {name: new_histogram() for name in OPERATIONS}
        self.scenario_histograms: dict[str, HdrHistogram] = collections.defaultdict(new_histogram)
        self.per_second: dict[int, dict[str, Any]] = {}
        self.errors: collections.Counter[str] = collections.Counter()
        self.error_outcomes: dict[str, str] = {}
        self.scenarios: collections.Counter[str] = collections.Counter()
        self.arrived = 0
        self.completed = 0
        self.outcomes = collections.Counter[str]({name: 0 for name in OUTCOME_COUNTS})
        self.requests = 0
        self.finished_requests = 0
        self.last_completed_s = 0.0

    def add(self, export: dict[str, Any]) -> None:
        for name, encoded in export["histograms"].items():
            decode_into(self.histograms[name], encoded)
        for name, encoded in export["scenario_histograms"].items():
            decode_into(self.scenario_histograms[name], encoded)
        for row in export["per_second"]:
            slot = self.per_second.setdefault(row["second"], {"e2e": new_histogram(), **{name: 0 for name in PER_SECOND_COUNTS}})
            for name in PER_SECOND_COUNTS:
                slot[name] += row[name]
            decode_into(slot["e2e"], row["e2e"])
        self.errors.update(export["errors"])
        self.error_outcomes.update(export["error_outcomes"])
        self.scenarios.update(export["scenarios"])
        self.arrived += export["arrived"]
        self.completed += export["completed"]
        self.outcomes.update(export["outcomes"])
        self.requests += export["requests"]
        self.finished_requests += export["finished_requests"]
        self.last_completed_s = max(self.last_completed_s, export["last_completed_s"])
