"""`payments bench`: short bounded runs of each mode on the machine's
PostgreSQL (and Redis for http mode), the report they write, and the
refusal of bad arguments.

The runs are a few seconds at a low rate, where the engine keeps up easily,
so achieved must be close to offered, nothing is shed, and every invariant
must hold. One short run offers far more than the engine can do, so that it
sheds: shed payments are counted apart from failures and timeouts, and are
no violation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import arrivals, engine_mode, http_mode
from bench.histograms import Merged, Outcome, Recorder, Steps
from engine import intent as machine
from engine import records
from shards import checks
from shards.actor import ShardState
from tests import conftest

RUN_TIMEOUT_S = 180
REQUIRED_FIELDS = (
    "achieved_payments_per_s",
    "offered_payments_per_s",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "invariants_ok",
    "machine",
    "command",
    "baselines",
    "payments_shed",
    "payments_timed_out",
    "payments_failed",
    "shed_at_create",
    "shed_later",
    "shed_rate_limited",
)
# What became of every payment that arrived: each is in exactly one.
PAYMENT_COUNTS = ("payments_completed", "payments_shed", "payments_timed_out", "payments_failed")


def bench(*arguments: str, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # Read at run time: conftest may have started embedded servers.
    env = {**os.environ, "PAYMENTS_DATABASE_URL": conftest.ADMIN_URL, "PAYMENTS_REDIS_URL": conftest.REDIS_URL, **(environ or {})}
    return subprocess.run(
        [sys.executable, "-m", "bench", "--quiet", *arguments],
        capture_output=True,
        text=True,
        env=env,
        timeout=RUN_TIMEOUT_S,
    )


OPERATIONS = ("create", "confirm", "capture", "refund", "challenge", "e2e")


def check_report(directory: Path, mode: str, tolerance: float, operations: tuple[str, ...] = OPERATIONS) -> dict:
    done = json.loads((directory / "report.json").read_text())
    for field in REQUIRED_FIELDS:
        assert field in done, field
    assert done["mode"] == mode
    assert done["invariants_ok"] is True
    assert done["offered_payments_per_s"] > 0
    assert done["achieved_payments_per_s"] >= tolerance * done["offered_payments_per_s"], done
    assert done["payments_failed"] == done["payments_shed"] == done["payments_timed_out"] == 0, done["errors"]
    assert done["shed_at_create"] == done["shed_later"] == done["shed_rate_limited"] == 0
    assert all(row["shed_per_s"] == 0 for row in done["time_series"])
    assert 0 < done["p50_ms"] <= done["p99_ms"] <= done["p999_ms"] <= done["max_ms"]
    assert done["machine"]["cores"] >= 1 and done["command"].startswith("payments bench ")
    assert done["baselines"]["ingest"]["rows_per_s"] > 0
    assert done["baselines"]["actor"]["round_trips_per_s"] > 0
    # What a database round trip costs the client, plain and through the bridge.
    bridge = done["baselines"]["bridge"]
    assert bridge["plain_calls_per_s"] > 0 and bridge["bridged_calls_per_s"] > 0
    assert bridge["plain_cpu_us_per_call"] > 0 and bridge["bridged_cpu_us_per_call"] > 0
    assert bridge["bridge_cpu_us_per_call"] == round(bridge["bridged_cpu_us_per_call"] - bridge["plain_cpu_us_per_call"], 1)
    assert "| bridge | plain_cpu_us_per_call " in (directory / "report.md").read_text()
    assert done["ratios"]["achieved_payments_per_s"]["vs_ingest"] > 0
    assert done["journal"]["journal_rows"] > 0 and done["commits_per_s"] > 0
    # A group-commit transaction carries one or more partitions' commits.
    assert 0 < done["journal"]["journal_transactions"] <= done["journal"]["journal_commits"]
    assert done["journal"]["rows_per_transaction"] >= done["journal"]["rows_per_commit"]
    for operation in operations:
        assert done["operations"][operation]["count"] > 0, operation
    statuses = done["invariants"]["final_statuses"]
    assert statuses.get("succeeded", 0) > 0 and statuses.get("requires_payment_method", 0) > 0
    # Every finished payment was looked up in the journal as its caller was told (I4).
    assert done["invariants"]["checked"]["I4"] >= done["payments_completed"] > 0
    for name in ("throughput.png", "latency_over_time.png", "latency_cdf.png", "report.md"):
        assert (directory / name).stat().st_size > 0, name
    assert (directory / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return done


# A mix that gives every scenario a share even in a short run.
MIX = "auto=40,manual=20,refund=20,decline=10,3ds=10"
# Without 3-D Secure, whose payments end on a network notice: a node's
# notice poll keeps the partitions it asked for when it began (up to 20 s),
# so just after the nodes share out the partitions a notice can wait that
# long, or reach the node that handed its partition off and be dropped.
MIX_WITHOUT_3DS = "auto=40,manual=20,refund=20,decline=20"


@pytest.mark.parametrize("processes", [1, 2])
def test_engine_mode_run_writes_a_sane_report(tmp_path: Path, processes: int) -> None:
    done = bench(
        "--rate", "100", "--duration", "3", "--processes", str(processes), "--partitions", "4",
        "--mix", MIX, "--baseline-seconds", "0.5", "--report", str(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = check_report(tmp_path, "engine", tolerance=0.8)
    assert len(report["processes"]) == processes
    assert report["mean_batch_commands"] >= 1
    # CPU per finished payment: the machine's, and each process's share of it.
    per_payment = report["cpu_ms_per_payment"]
    for process in report["processes"]:
        assert per_payment[process["name"]] == pytest.approx(process["cpu_s"] * 1000 / report["payments_completed"], abs=0.001)
    assert per_payment["machine"] >= sum(per_payment[process["name"]] for process in report["processes"]) > 0
    assert "CPU per finished payment" in (tmp_path / "report.md").read_text()
    # Each worker checked its partitions against its own simulator's record.
    assert len(report["invariants"]["workers"]) == processes
    assert all(worker["network_operations"] > 0 for worker in report["invariants"]["workers"])


def test_engine_mode_past_capacity_sheds_and_counts_each_payment_once(tmp_path: Path) -> None:
    # Far more than two partitions on one process can take: new payments
    # are refused at once, which is no violation (exit 0).
    done = bench(
        "--rate", "8000", "--duration", "2", "--processes", "1", "--partitions", "2",
        "--mix", "auto=100", "--drain", "20", "--baseline-seconds", "0", "--report", str(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["invariants_ok"] is True
    assert report["payments_shed"] > 0, report["errors"]
    assert sum(report[key] for key in PAYMENT_COUNTS) == report["payments_arrived"]
    assert report["shed_at_create"] + report["shed_later"] == report["payments_shed"]
    assert report["errors"]["overloaded"] > 0 and report["error_outcomes"]["overloaded"] == "shed"
    assert sum(row["shed_per_s"] for row in report["time_series"]) == report["payments_shed"]
    assert (tmp_path / "throughput.png").stat().st_size > 0
    assert "| payments finished / shed / timed out / failed |" in (tmp_path / "report.md").read_text()


def http_run(directory: Path, *arguments: str, mix: str = MIX, operations: tuple[str, ...] = OPERATIONS) -> dict:
    done = bench(
        "--mode", "http", "--rate", "20", "--duration", "4", "--partitions", "4", "--connections", "16",
        "--mix", mix, "--baseline-seconds", "0.5", "--report", str(directory), *arguments,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = check_report(directory, "http", tolerance=0.6, operations=operations)
    assert report["baselines"]["http"]["requests_per_s"] > 0
    assert report["ratios"]["achieved_payments_per_s"]["vs_http"] > 0
    assert report["invariants"]["network_checked"] is True
    return report


def test_http_mode_run_writes_a_sane_report(tmp_path: Path) -> None:
    report = http_run(tmp_path)
    assert report["nodes"] == 1 and "nodes_total" not in report
    assert {process["name"] for process in report["processes"]} == {"node (gateway + actors)", "load generator"}


def test_http_mode_with_two_nodes_spreads_the_load_and_accounts_each_node(tmp_path: Path) -> None:
    report = http_run(tmp_path, "--nodes", "2", mix=MIX_WITHOUT_3DS, operations=tuple(name for name in OPERATIONS if name != "challenge"))
    assert report["nodes"] == 2 and report["settings"]["nodes"] == 2
    names = [process["name"] for process in report["processes"]]
    assert names[:2] == ["node-0 (gateway + actors)", "node-1 (gateway + actors)"]
    # Both nodes served payments: each did some work.
    assert all(process["cpu_s"] > 0 for process in report["processes"][:2])
    total = report["nodes_total"]
    assert total["nodes"] == 2 and total["cpu_s"] == pytest.approx(sum(process["cpu_s"] for process in report["processes"][:2]), abs=0.02)
    assert (tmp_path / "report.md").read_text().startswith("# payments bench: http mode, 2 nodes\n")


def test_a_childs_line_printed_into_the_cluster_banner_is_not_taken_for_a_url() -> None:
    node = http_mode.NodeProcess("postgresql://unused", Path("."), [], Path(os.devnull), nodes=2)
    spliced = "[node-1] node:          node-1 (partitions leased for 10 s at a time)\n"
    assert not node._read_banner("payments up: 2 nodes sharing 4 partitions: http://127.0.0.1:4001, http://127.0.0.1:4002" + spliced)
    assert node._read_banner("simulator:     http://127.0.0.1:4000" + spliced)
    assert (node.urls, node.simulator_url) == (["http://127.0.0.1:4001", "http://127.0.0.1:4002"], "http://127.0.0.1:4000")


def test_connections_are_spread_evenly_over_the_nodes() -> None:
    assert http_mode.spread(16, 2) == [8, 8]
    assert http_mode.spread(64, 3) == [22, 21, 21]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--rate", "-5", "--duration", "3"], "argument --rate: expected a number from 0.1 to 100000"),
        (["--rate", "10", "--duration", "7200"], "argument --duration: expected a number from 1 to 3600"),
        (["--rate", "10", "--duration", "3", "--mix", "auto=1,bogus=2"], "'bogus' is not a scenario"),
        (["--rate", "10", "--duration", "3", "--faults", "error=2"], "argument --faults"),
        (["--rate", "10", "--duration", "3", "--mode", "grpc"], "argument --mode: invalid choice"),
        (["--rate", "10", "--duration", "3", "--nodes", "17"], "argument --nodes: expected a whole number from 1 to 16"),
        (["--rate", "10", "--duration", "3", "--nodes", "2"], "argument --nodes: http mode only (--mode http); in engine mode the node processes are --processes"),
        (["--mode", "http", "--rate", "10", "--duration", "3", "--nodes", "4", "--connections", "2"], "argument --connections: at least one per node"),
        (["--duration", "3"], "the following arguments are required: --rate"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(arguments: list[str], message: str) -> None:
    done = bench(*arguments)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_database_is_one_line_and_exit_2() -> None:
    done = bench("--rate", "10", "--duration", "1", environ={"PAYMENTS_DATABASE_URL": "postgresql://postgres@127.0.0.1:9/postgres"})
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot connect to PostgreSQL at 127.0.0.1:9")
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_register_adds_the_bench_subcommand() -> None:
    from bench.cli import handle, register

    parser = argparse.ArgumentParser(prog="payments")
    register(parser.add_subparsers(dest="command"))
    arguments = parser.parse_args(["bench", "--rate", "50", "--duration", "2", "--processes", "1"])
    assert arguments.handler is handle
    assert (arguments.rate, arguments.duration, arguments.processes, arguments.mode) == (50.0, 2.0, 1, "engine")


def test_arrivals_are_poisson_at_the_offered_rate_and_replay_by_seed() -> None:
    mix = arrivals.parse_mix("auto=3,decline=1")
    first = list(arrivals.schedule(2000, 10, mix, seed=7))
    assert first == list(arrivals.schedule(2000, 10, mix, seed=7))
    assert first != list(arrivals.schedule(2000, 10, mix, seed=8))
    assert 19_000 < len(first) < 21_000
    assert all(0 <= a.at < 10 for a in first) and [a.at for a in first] == sorted(a.at for a in first)
    declines = sum(a.scenario == "decline" for a in first) / len(first)
    assert 0.22 < declines < 0.28
    gaps = [later.at - earlier.at for earlier, later in zip(first, first[1:])]
    # Exponential gaps: the standard deviation equals the mean.
    mean = sum(gaps) / len(gaps)
    deviation = (sum((gap - mean) ** 2 for gap in gaps) / len(gaps)) ** 0.5
    assert abs(deviation / mean - 1) < 0.05


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("auto=1,auto=2", "'auto' is given twice"),
        ("auto=0", "at least one scenario"),
        ("auto", "expected NAME=WEIGHT"),
        ("auto=-1", "a weight is a whole number"),
    ],
)
def test_bad_mixes_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        arrivals.parse_mix(text)


def test_partitions_are_split_statically_and_disjointly() -> None:
    split = engine_mode.split_partitions(16, 3)
    assert sorted(p for share in split for p in share) == list(range(16))
    assert split[0] == (0, 3, 6, 9, 12, 15)


@pytest.mark.parametrize(("now", "second"), [(99.0, 0), (100.0, 0), (100.7, 0), (103.2, 3)])
def test_a_shed_at_create_is_counted_once_in_its_second(now: float, second: int) -> None:
    recorder = Recorder(start=100.0)
    recorder.error("overloaded", now, Outcome.shed, "create")
    assert recorder.outcomes["shed_at_create"] == 1 and recorder.outcomes["shed"] == 1
    assert dict(recorder.unfinished_per_s["shed"]) == {second: 1}
    assert recorder.error_outcomes == {"overloaded": "shed"}


def test_recordings_of_processes_merge() -> None:
    merged = Merged()
    for offset in (0.0, 0.5):
        recorder = Recorder(start=100.0)
        for index in range(100):
            recorder.arrival(index / 100, "auto")
            recorder.operation("create", 0.001 * (index + 1))
            steps = Steps(recorder)
            steps.sent()
            steps.sent()
            recorder.finished("auto", 100.0 + index / 100, 100.0 + index / 100 + 0.010 + offset, steps)
        recorder.error("overloaded", 100.5, Outcome.shed, "create")
        recorder.error("confirm_http_429_rate_limit", 101.5, Outcome.rate_limited, "confirm")
        recorder.error("unfinished", 101.5, Outcome.timed_out)
        recorder.error("refused_intent_not_capturable", 102.5, operation="capture")
        merged.add(recorder.export())
    assert (merged.arrived, merged.completed) == (200, 200)
    assert (merged.requests, merged.finished_requests) == (400, 400)
    assert merged.outcomes == {"shed": 4, "shed_at_create": 2, "shed_rate_limited": 2, "timed_out": 2, "failed": 2}
    assert merged.errors == {"overloaded": 2, "confirm_http_429_rate_limit": 2, "unfinished": 2, "refused_intent_not_capturable": 2}
    assert merged.error_outcomes["confirm_http_429_rate_limit"] == "shed"
    assert [(second, merged.per_second[second]["shed"]) for second in (0, 1)] == [(0, 2), (1, 2)]
    assert (merged.per_second[1]["timed_out"], merged.per_second[2]["failed"]) == (2, 2)
    assert merged.histograms["create"].get_total_count() == 200
    assert 9.9 <= merged.histograms["e2e"].get_value_at_percentile(25) / 1000 <= 10.1
    assert 509 <= merged.histograms["e2e"].get_value_at_percentile(75) / 1000 <= 511


@pytest.mark.parametrize(
    ("status", "body", "kind", "outcome"),
    [
        (503, b'{"error":{"type":"api_error","code":"service_unavailable"}}', "create_http_503_service_unavailable", Outcome.shed),
        (429, b'{"error":{"type":"invalid_request_error","code":"rate_limit"}}', "create_http_429_rate_limit", Outcome.rate_limited),
        (503, b"Service Unavailable", "create_http_503", Outcome.failed),
        (402, b'{"error":{"type":"card_error","code":"card_declined"}}', "create_http_402_card_declined", Outcome.failed),
        (500, b'{"error":{"type":"api_error"}}', "create_http_500", Outcome.failed),
    ],
)
def test_http_answers_that_refuse_for_overload_are_shed(status: int, body: bytes, kind: str, outcome: Outcome) -> None:
    failure = http_mode._failed("create", status, body)
    assert (failure.kind, failure.outcome, failure.operation) == (kind, outcome, "create")


def _intent(intent_id: str, status: machine.Status, refunds: tuple[records.Refund, ...] = ()) -> records.PaymentIntent:
    return records.PaymentIntent(
        id=intent_id, merchant_id="acct_1", livemode=False, amount=1000, currency="usd",
        capture_method=machine.CaptureMethod.automatic, status=status, created_s=0, client_secret="s", refunds=refunds,
    )


def test_a_finished_payment_the_journal_lost_or_shows_otherwise_violates_i4() -> None:
    """What the bench's callers were told is checked against the journal's
    replay: a lost payment, another status, a lost or failed refund."""
    refund = records.Refund(id="re_1", intent_id="pi_refunded", amount=500, status=records.RefundStatus.succeeded, created_s=0)
    failed = records.Refund(id="re_2", intent_id="pi_refund_failed", amount=500, status=records.RefundStatus.failed, created_s=0)
    state = ShardState(0)
    for intent in (
        _intent("pi_ok", machine.Status.succeeded),
        _intent("pi_other", machine.Status.requires_capture),
        _intent("pi_refunded", machine.Status.succeeded, (refund,)),
        _intent("pi_refund_failed", machine.Status.succeeded, (failed,)),
        _intent("pi_no_refund", machine.Status.succeeded),
    ):
        state.put(intent)
    told = {
        "pi_ok": checks.Acknowledged("succeeded"),
        "pi_refunded": checks.Acknowledged("succeeded", "re_1"),
        "pi_lost": checks.Acknowledged("succeeded"),
        "pi_other": checks.Acknowledged("succeeded"),
        "pi_refund_failed": checks.Acknowledged("succeeded", "re_2"),
        "pi_no_refund": checks.Acknowledged("succeeded", "re_3"),
    }
    report = checks.check([state], (), None, told)
    assert report.checked["I4"] == len(told)
    # (These bare intents break I2 too: no authorization behind a refund.)
    assert sorted(v.subject for v in report.violations if v.invariant == "I4") == ["pi_lost", "pi_other", "re_2", "re_3"]
    kept = checks.check([state], (), None, {key: told[key] for key in ("pi_ok", "pi_refunded")})
    assert kept.checked["I4"] == 2 and not [v for v in kept.violations if v.invariant == "I4"]
