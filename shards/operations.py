"""What an operator runs against a database: `payments check` and
`payments reconcile`."""

from __future__ import annotations

from pathlib import Path

import trio

from shards import checks
from shards.actor import ShardState
from shards.network_client import HttpCardNetwork
from shards.node import Node, NodeConfig, run_node
from shards.vault import Vault
from store.postgres import Store

RECONCILE_PASSES_MAX = 20


async def load_states(store: Store) -> list[ShardState]:
    """Every partition, replayed from the journal as a node would."""
    partitions = await store.migrate(16)
    states = []
    for partition in range(partitions):
        state = ShardState(partition)
        state.replay(await store.journal.load(partition))
        states.append(state)
    return states


async def check_database(store: Store, *, simulator_url: str | None = None) -> checks.Report:
    states = await load_states(store)
    operations = None
    if simulator_url:
        async with HttpCardNetwork(simulator_url) as network:
            operations = await network.operations()
    return checks.check(states, await store.idempotency.records(), operations)


async def reconcile(store: Store, *, simulator_url: str, data_dir: Path) -> str:
    """One reconciliation: start the actors (no HTTP), ask the network about
    every unknown outcome until none is left or the passes run out, then
    compare settlement. Run it while no node serves this database: partitions
    have no leases yet to keep two writers apart."""
    partitions = await store.migrate(16)
    async with HttpCardNetwork(simulator_url) as network, trio.open_nursery() as nursery:
        node: Node = await nursery.start(run_node, store, Vault.from_config(data_dir), network, NodeConfig(partitions=partitions))
        unknown_before = sum(len(shard.state.unknown) for shard in node.shards.values())
        started = trio.current_time()
        resolved = 0
        for _ in range(RECONCILE_PASSES_MAX):
            resolved += (await node.reconcile_once()).resolved
            await trio.sleep(0.2)  # let the actors journal the answers
            if not any(shard.state.unknown for shard in node.shards.values()):
                break
        still_unknown = sum(len(shard.state.unknown) for shard in node.shards.values())
        elapsed = trio.current_time() - started
        settlement = await network.settlement()
        node.stop_accepting()
    mismatches = checks.settlement_mismatches(await load_states(store), settlement)
    lines = [
        f"unknown before: {unknown_before}",
        f"resolved: {resolved} in {elapsed:.1f} s",
        f"still unknown: {still_unknown}",
        f"settlement entries: {len(settlement)}",
        *mismatches[:50],
        f"mismatches: {len(mismatches)}",
    ]
    return "\n".join(lines)
