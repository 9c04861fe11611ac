"""The settlement check: now and then, our captures and refunds compared
with the network's settlement report, every mismatch logged
(reconciliation's full pass; shards/checks.py says what a mismatch is)."""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
import trio

from engine.network import NetworkOutcomeUnknown, NetworkRefused
from shards import checks
from shards.node import Node
from workers.errors import WorkerErrors

log = structlog.get_logger("workers.settlement")


class SettlementBounds(msgspec.Struct, frozen=True):
    every_s: float = 300.0
    # Mismatches logged per check at most (all are counted).
    mismatches_logged_max: int = 100


async def settlement_report(network: Any) -> list[dict[str, Any]] | None:
    """The network's settlement report as dicts; None for a network that
    keeps none. Raises NetworkRefused or NetworkOutcomeUnknown when it
    cannot be read."""
    if hasattr(network, "settlement"):
        return await network.settlement()
    report = getattr(network, "settlement_report", None)
    return None if report is None else [msgspec.structs.asdict(operation) for operation in report()]


async def compare_settlement(node: Node, bounds: SettlementBounds, errors: WorkerErrors) -> None:
    """One check: log each mismatch and a summary. A report that cannot be
    read is logged and counted; never raises for the network."""
    try:
        report = await settlement_report(node.network)
    except (NetworkRefused, NetworkOutcomeUnknown) as error:
        errors.record("settlement_report_unavailable", error=str(error) or type(error).__name__)
        return
    if report is None:
        return
    problems = checks.settlement_mismatches([shard.state for shard in node.shards.values()], report)
    for problem in problems[: bounds.mismatches_logged_max]:
        log.warning("settlement_mismatch", detail=problem)
    log.info("settlement_compared", entries=len(report), mismatches=len(problems))


async def run_settlement_check(
    node: Node,
    bounds: SettlementBounds = SettlementBounds(),
    *,
    errors: WorkerErrors | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Compare settlement every `every_s` (first after one interval) until
    cancelled; the counter is passed to `task_status.started`."""
    errors = errors or WorkerErrors("settlement_check")
    task_status.started(errors)
    while True:
        await trio.sleep(bounds.every_s)
        await compare_settlement(node, bounds, errors)
