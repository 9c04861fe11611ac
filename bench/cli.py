"""`payments bench`: the command line of the load harness.

`register(subparsers)` adds the `bench` subcommand to the `payments` parser
(its handler is `arguments.handler`); `python -m bench ...` runs it alone.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from bench.arrivals import DEFAULT_MIX, parse_mix
from bench import runner
from simulators.faults import fault_spec, latency_range

RATE_PER_S_MAX = 100_000
DURATION_S_MAX = 3600
PROCESSES_MAX = 16
NODES_MAX = 16
CONNECTIONS_MAX = 1024

DESCRIPTION = """\
Offer payments at a fixed rate (open loop, Poisson arrivals) and measure what
the engine makes of them: latency per operation and end to end (from each
payment's scheduled arrival, so a slow system cannot hide its latency),
achieved against offered rate, the payments that did not finish (shed:
refused for overload, at create or later; timed out; failed) and errors by
kind, commits and batch sizes, CPU and memory. At the end it checks
invariants I1 to I6 over everything the run did and exits 1 on any violation
(shed payments are none). Baselines measured in the same run (raw
PostgreSQL ingest, one trio actor's request/reply ceiling, and in http mode a
bare quart-trio endpoint) put every headline figure in proportion.

http mode with --nodes N starts `payments up --nodes N`: N node processes
sharing the partitions and one card-network simulator service. The
connections are spread over the nodes and each payment goes to the next node
in turn; a node forwards what belongs to another's partitions. The report
shows each process's CPU and memory and the nodes' total.

A payment is create, then confirm, then what its scenario needs:
  auto     automatic capture (confirm ends succeeded)
  manual   manual capture: confirm ends requires_capture, then capture
  refund   automatic capture, then a refund of half the amount
  decline  a declining test card (confirm ends requires_payment_method)
  3ds      a card that needs 3-D Secure: confirm ends requires_action, the
           challenge is passed on the simulator, and the payment ends when
           its intent is succeeded

Each run uses a fresh database (bench_<random>) on the PostgreSQL server that
PAYMENTS_DATABASE_URL names (default postgresql://postgres@127.0.0.1:5432/postgres),
dropped at the end unless --keep-database. http mode also needs Redis
(PAYMENTS_REDIS_URL, default redis://127.0.0.1:6379/0). Load goes to loopback only.
"""

EPILOG = """\
examples:
  payments bench --rate 2000 --duration 20 --report bench-report
  payments bench --mode http --rate 300 --duration 30 --report bench-http
  payments bench --mode http --nodes 2 --rate 300 --duration 30 --report bench-http-2
  payments bench --rate 500 --duration 30 --faults timeout_after=0.01,error=0.01

exit status: 0 all invariants hold; 1 an invariant was violated;
2 bad arguments, or the database, Redis or a node could not be used.
"""


def _bounded_number(low: float, high: float, *, whole: bool = False):  # type: ignore[no-untyped-def]
    kind = "a whole number" if whole else "a number"

    def parse(text: str) -> float | int:
        try:
            value = int(text) if whole else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind} from {low:g} to {high:g}, got {text[:40]!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {kind} from {low:g} to {high:g}, got {text[:40]!r}")
        return value

    return parse


def _mix(text: str) -> str:
    try:
        return parse_mix(text).text()
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("engine", "http"), default="engine", help="engine: shard actors in-process; http: a node over loopback (default engine)")
    parser.add_argument("--rate", type=_bounded_number(0.1, RATE_PER_S_MAX), required=True, metavar="N", help=f"offered payments per second (0.1 to {RATE_PER_S_MAX:,})")
    parser.add_argument("--duration", type=_bounded_number(1, DURATION_S_MAX), required=True, metavar="S", help=f"seconds of arrivals (1 to {DURATION_S_MAX})")
    parser.add_argument("--partitions", type=_bounded_number(1, 1024, whole=True), default=16, metavar="P", help="partitions of the run's database (default 16)")
    parser.add_argument(
        "--processes", type=_bounded_number(1, PROCESSES_MAX, whole=True), default=2, metavar="K",
        help="engine mode: node processes, each serving a fixed share of the partitions, each with its share of the load (default 2)",
    )
    parser.add_argument(
        "--nodes", type=_bounded_number(1, NODES_MAX, whole=True), default=1, metavar="N",
        help="http mode: node processes sharing the partitions (payments up --nodes N), the connections spread over them (default 1)",
    )
    parser.add_argument("--faults", type=fault_spec, default="", metavar="SPEC", help="card-network faults, e.g. timeout_after=0.01,error=0.01,latency_ms=5..50 (see payments sim --help)")
    parser.add_argument("--mix", type=_mix, default=DEFAULT_MIX, metavar="SPEC", help=f"scenario weights (default {DEFAULT_MIX})")
    parser.add_argument("--seed", type=_bounded_number(0, 2**31 - 1, whole=True), default=0, metavar="N", help="seed of arrivals, amounts, mix and simulator (default 0)")
    parser.add_argument("--report", type=Path, default=None, metavar="DIR", help="write report.json, report.md and PNG plots here")
    parser.add_argument("--network-latency-ms", type=latency_range, default=(1, 5), metavar="MIN..MAX", help="simulated card-network latency (default 1..5)")
    parser.add_argument("--connections", type=_bounded_number(1, CONNECTIONS_MAX, whole=True), default=64, metavar="N", help="http mode: keep-alive connections in the client's pool (default 64)")
    parser.add_argument("--drain", type=_bounded_number(0, 600), default=30.0, metavar="S", help="after the last arrival, wait this long for payments in flight (default 30)")
    parser.add_argument("--baseline-seconds", type=_bounded_number(0, 60), default=5.0, metavar="S", help="how long each baseline runs; 0 skips them (default 5)")
    parser.add_argument("--keep-database", action="store_true", help="keep the run's database (its name is printed)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="warning", help="the nodes' log level (default warning; info logs every transition)")
    parser.add_argument("--quiet", action="store_true", help="no live progress line")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `bench` to a `payments` subparsers object; its handler is set as
    `handler` (called with the parsed arguments, returns the exit status)."""
    parser = subparsers.add_parser(
        "bench",
        help="offer load at a fixed rate and measure latency, throughput and invariants",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(handler=handle)
    return parser


def argument_problem(arguments: argparse.Namespace) -> str | None:
    """What is wrong with a combination of arguments, for a person; None when nothing."""
    if arguments.nodes > 1 and arguments.mode != "http":
        return "argument --nodes: http mode only (--mode http); in engine mode the node processes are --processes"
    if arguments.nodes > arguments.connections:
        return f"argument --connections: at least one per node, so at least {arguments.nodes} with --nodes {arguments.nodes}"
    return None


def handle(arguments: argparse.Namespace, argv: list[str] | None = None) -> int:
    problem = argument_problem(arguments)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    command = "payments bench " + shlex.join(argv if argv is not None else _bench_argv())
    return runner.run(arguments, command)


def _bench_argv() -> list[str]:
    args = sys.argv[1:]
    return args[args.index("bench") + 1 :] if "bench" in args else args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    arguments = parser.parse_args(argv)
    return handle(arguments, argv)
