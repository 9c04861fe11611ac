"""Reconciliation: every operation whose outcome is unknown is asked of the
network by its reference, and the answer journaled through the owning
actor (DESIGN section 5, step 5).

A reference the network cannot answer for now (unreachable, or still
waiting for the cardholder's 3-D Secure challenge) is asked again later,
after a delay that doubles each time up to `backoff_s_max`. A pass looks
at `batch_max` unknown operations at most.
"""

from __future__ import annotations

import os
import socket

from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio

from engine.network import NetworkAnswer, NetworkOutcomeUnknown, NetworkRefused
from shards import checks
from shards.cluster import ClusterConfig
from shards.network_client import HttpCardNetwork
from shards.node import Node, NodeConfig, run_node
from shards.operations import load_states
from shards.vault import Vault
from store.postgres import Store
from workers.errors import WorkerErrors

log = structlog.get_logger("workers.reconciliation")

# `payments reconcile`: passes at most before it reports what is left.
RECONCILE_PASSES_MAX = 20


class ReconcileBounds(msgspec.Struct, frozen=True):
    every_s: float = 1.0
    # Unknown operations looked at per pass, at most.
    batch_max: int = 1000
    # How long one inquiry may take; None: the node's network_timeout_s.
    inquiry_timeout_s: float | None = None
    # The first delay before asking again is twice this; each next one doubles.
    backoff_s_first: float = 0.5
    backoff_s_max: float = 60.0


class ReconcileSummary(msgspec.Struct):
    unknown: int = 0
    resolved: int = 0
    approved: int = 0
    deferred: int = 0


# reference -> (next try, delay)
Due = dict[str, tuple[float, float]]


async def _inquire(node: Node, reference: str, timeout_s: float) -> tuple[NetworkAnswer | None, str | None]:
    """(the network's answer, None), or (None, why there is none)."""
    with trio.move_on_after(timeout_s):
        try:
            return await node.network.inquire(reference), None
        except (NetworkRefused, NetworkOutcomeUnknown) as error:
            return None, str(error) or type(error).__name__
    return None, f"no answer within {timeout_s:g} s"


async def reconcile_once(
    node: Node, bounds: ReconcileBounds = ReconcileBounds(), due: Due | None = None, errors: WorkerErrors | None = None
) -> ReconcileSummary:
    """One pass over the unknown operations: ask, then journal the answer
    through the owning actor. Bounded per pass. An inquiry that fails is
    logged and counted (in `errors`), and deferred; never raises for the
    network."""
    errors = errors or WorkerErrors("reconciliation")
    timeout_s = node.config.network_timeout_s if bounds.inquiry_timeout_s is None else bounds.inquiry_timeout_s
    summary = ReconcileSummary()
    now = trio.current_time()
    unknown = [(shard.state.partition, item) for shard in node.shards.values() for item in sorted(shard.state.unknown)]
    for partition, (intent_id, reference) in unknown[: bounds.batch_max]:
        summary.unknown += 1
        if due is not None and due.get(reference, (0.0, 0.0))[0] > now:
            continue
        answer, failure = await _inquire(node, reference, timeout_s)
        if failure is not None:
            errors.record("reconciliation_inquiry_failed", partition=partition, intent_id=intent_id, reference=reference, error=failure)
        if answer is None or answer.code == "authentication_required":
            # Unreachable, or still waiting for the cardholder: ask later.
            if due is not None:
                delay = min(bounds.backoff_s_max, 2 * due.get(reference, (0.0, bounds.backoff_s_first))[1])
                due[reference] = (now + delay, delay)
            summary.deferred += 1
            continue
        if due is not None:
            due.pop(reference, None)
        if not await node.router.send(intent_id, node.effects.command_for(intent_id, reference, answer)):
            break
        summary.resolved += 1
        summary.approved += answer.approved
    if summary.resolved:
        log.info("reconciliation_pass", unknown=summary.unknown, resolved=summary.resolved, deferred=summary.deferred)
    return summary


async def run_reconciliation(
    node: Node,
    bounds: ReconcileBounds = ReconcileBounds(),
    *,
    errors: WorkerErrors | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Reconcile every `every_s` until cancelled, with backoff per reference.
    Failed inquiries are logged and counted; never raises for the network."""
    errors = errors or WorkerErrors("reconciliation")
    due: Due = {}
    task_status.started(errors)
    while True:
        await reconcile_once(node, bounds, due, errors)
        await trio.sleep(bounds.every_s)


async def _wait_for_silent_owners(node: Node) -> None:
    """Until the leases of nodes that stopped heartbeating have run out and
    been taken here (at most a lease TTL and a heartbeat or two)."""
    membership = node.membership
    assert membership is not None
    ttl_s = membership.config.lease_ttl_s
    with trio.move_on_after(ttl_s + 3 * membership.config.heartbeat_s):
        while membership.held_by_silent_nodes() or not membership.view:
            await trio.sleep(0.2)
    # The rebalance after the last heartbeat takes what ran out.
    await membership.heartbeat()
    await membership.rebalance()


async def reconcile_database(store: Store, *, simulator_url: str, data_dir: Path) -> str:
    """`payments reconcile`: start the actors (no HTTP) of every partition no
    live node holds (taking their leases; a serving node reconciles its own
    partitions all the time), ask the network about every unknown outcome
    until none is left or the passes run out, then compare settlement over
    all partitions; a report in lines. Safe while nodes serve. Raises
    StoreUnavailable, or NetworkRefused when the settlement report cannot
    be read."""
    partitions = await store.migrate(16)
    passer_by = ClusterConfig(f"reconcile-{socket.gethostname()}-{os.getpid()}", passer_by=True)
    config = NodeConfig(partitions=partitions, cluster=passer_by)
    async with HttpCardNetwork(simulator_url) as network, trio.open_nursery() as nursery:
        node: Node = await nursery.start(run_node, store, Vault.from_config(data_dir), network, config)
        await _wait_for_silent_owners(node)
        reconciled_here = sorted(node.shards)
        unknown_before = sum(len(shard.state.unknown) for shard in node.shards.values())
        started = trio.current_time()
        resolved = 0
        for _ in range(RECONCILE_PASSES_MAX):
            resolved += (await reconcile_once(node)).resolved
            await trio.sleep(0.2)  # let the actors journal the answers
            if not any(shard.state.unknown for shard in node.shards.values()):
                break
        still_unknown = sum(len(shard.state.unknown) for shard in node.shards.values())
        elapsed = trio.current_time() - started
        settlement = await network.settlement()
        node.stop_accepting()
    mismatches = checks.settlement_mismatches(await load_states(store), settlement)
    lines = [
        f"partitions reconciled here: {len(reconciled_here)} of {partitions} (the others by the nodes serving them)",
        f"unknown before: {unknown_before}",
        f"resolved: {resolved} in {elapsed:.1f} s",
        f"still unknown: {still_unknown}",
        f"settlement entries: {len(settlement)}",
        *mismatches[:50],
        f"mismatches: {len(mismatches)}",
    ]
    return "\n".join(lines)
