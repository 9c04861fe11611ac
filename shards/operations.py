"""What an operator runs against a database: `payments check`, and the
recovered states `payments reconcile` (workers/reconciliation.py) compares."""

from __future__ import annotations

from shards import checks
from shards.actor import ShardState
from shards.network_client import HttpCardNetwork
from store.postgres import Store


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
