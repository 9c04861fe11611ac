"""Nodes sharing one database: partitions leased with fencing, spread over
the live nodes, handed off on a clean stop and taken over after a crash;
requests for another node's partition forwarded to its owner.

Everything runs in this process on a real PostgreSQL: each node has its own
pool, actors, lease loop and HTTP server on a loopback port, as separate
processes would, with a short lease TTL so that takeovers take seconds."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import trio
import trio_asyncio

from engine import ids
from engine import intent as machine
from gateway.app import create_app
from gateway.listener import ConnectionLimits, hypercorn_config, serve_guarded
from shards.cluster import ClusterConfig, NodeIdTaken
from shards.merchants import create_merchant
from shards.node import Node, NodeConfig, NotServed, run_node
from shards.vault import Vault
from simulators.card_network import CardNetwork
from store.postgres import Store
from tests.helpers import wait_until_async

PARTITIONS = 4
TTL_S = 1.5
VAULT_KEY = bytes(range(32))
PAY = {"amount": "1500", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}


class Running:
    def __init__(self, node: Node, url: str, scope: trio.CancelScope) -> None:
        self.node = node
        self.url = url
        # Cancelling it is a crash: nothing is handed off or released.
        self.scope = scope


async def _serve(store: Store, network: CardNetwork, node_id: str, *, task_status: Any) -> None:
    config = NodeConfig(partitions=PARTITIONS, cluster=ClusterConfig(node_id, lease_ttl_s=TTL_S))
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            node: Node = await nursery.start(run_node, store, Vault(VAULT_KEY), network, config)
            stop = trio.Event()

            async def stop_node() -> None:
                await node.wait_stop_requested()
                stop.set()

            nursery.start_soon(stop_node)
            binds = await nursery.start(
                functools.partial(serve_guarded, create_app(node), hypercorn_config("127.0.0.1", 0), ConnectionLimits(), shutdown_trigger=stop.wait)
            )
            node.set_public_url(binds[0])
            task_status.started(Running(node, binds[0], scope))


@contextlib.asynccontextmanager
async def cluster(database_url: str) -> AsyncIterator[tuple[Any, dict[str, str], trio.Nursery, CardNetwork]]:
    """(start(node_id) -> Running, a merchant's auth headers, the nursery, the network)."""
    async with trio_asyncio.open_loop():
        stores: list[Store] = []
        network = CardNetwork(seed=11, latency_ms=(1, 2))
        setup = await Store.open(database_url, connections_max=2)
        stores.append(setup)
        await setup.migrate(PARTITIONS)
        merchant = await create_merchant(setup, "Cluster shop")
        headers = {"Authorization": f"Bearer {merchant.secret_key}"}
        try:
            async with trio.open_nursery() as nursery:

                async def start(node_id: str) -> Running:
                    store = await Store.open(database_url, connections_max=4)
                    stores.append(store)
                    return await nursery.start(_serve, store, network, node_id)

                yield start, headers, nursery, network
                nursery.cancel_scope.cancel()
        finally:
            for store in stores:
                await store.close()


def served(running: Running) -> set[int]:
    return set(running.node.shards)


async def two_nodes(start: Any) -> tuple[Running, Running]:
    """Nodes a and b, once they hold half the partitions each."""
    a = await start("node-a")
    b = await start("node-b")
    await wait_until_async(lambda: len(served(a)) == len(served(b)) == PARTITIONS // 2, 15, "an even spread")
    return a, b


async def test_a_second_node_takes_half_the_partitions_and_requests_reach_their_owner(database_url: str) -> None:
    async with cluster(database_url) as (start, headers, _, _):
        a = await start("node-a")
        assert served(a) == set(range(PARTITIONS)), "alone, a node takes every partition"
        async with httpx.AsyncClient(headers=headers, timeout=30) as http:
            paid_on_a = [(await http.post(f"{a.url}/v1/payment_intents", data=PAY)).json() for _ in range(8)]
            assert {p["status"] for p in paid_on_a} == {"succeeded"}
            b = await start("node-b")
            await wait_until_async(lambda: len(served(a)) == len(served(b)) == PARTITIONS // 2, 15, "an even spread")
            assert served(a).isdisjoint(served(b))
            forwarded = 0
            for intent in paid_on_a:
                answer = await http.get(f"{b.url}/v1/payment_intents/{intent['id']}")
                assert answer.status_code == 200 and answer.json()["status"] == "succeeded", answer.text
                forwarded += "Payments-Forwarded-To" in answer.headers
            moved = [p for p in paid_on_a if b.node.partition_of_intent(p["id"]) in served(b)]
            # What B took over it loaded from the journal; what A kept, A answered.
            assert forwarded == len(paid_on_a) - len(moved)
            # A confirm sent to the node that does not own the intent.
            created = (await http.post(f"{a.url}/v1/payment_intents", data={"amount": "700", "currency": "usd"})).json()
            other = b if a.node.partition_of_intent(created["id"]) in served(a) else a
            confirmed = await http.post(f"{other.url}/v1/payment_intents/{created['id']}/confirm", data={"payment_method": "pm_card_visa"})
            assert confirmed.status_code == 200 and confirmed.json()["status"] == "succeeded", confirmed.text
            assert "Payments-Forwarded-To" in confirmed.headers


async def test_an_idempotency_key_holds_across_nodes(database_url: str) -> None:
    async with cluster(database_url) as (start, headers, _, _):
        a, b = await two_nodes(start)
        async with httpx.AsyncClient(timeout=30) as http:
            for n in range(6):
                keyed = {**headers, "Idempotency-Key": f"order-{n}"}
                first = await http.post(f"{a.url}/v1/payment_intents", data=PAY, headers=keyed)
                again = await http.post(f"{b.url}/v1/payment_intents", data=PAY, headers=keyed)
                assert first.status_code == again.status_code == 200, (first.text, again.text)
                assert first.json()["id"] == again.json()["id"]
                assert again.headers.get("Idempotent-Replayed") == "true"


async def test_a_write_under_a_stale_epoch_is_refused_and_the_node_drops_the_partition(database_url: str) -> None:
    async with cluster(database_url) as (start, _, _, _):
        a = await start("node-a")
        partition = 0
        epoch = a.node.held()[partition]
        # Another node took the partition while this one was paused (its
        # heartbeat late): the lease moved to a newer epoch.
        connection = await trio_asyncio.aio_as_trio(asyncpg.connect)(database_url)
        try:
            await trio_asyncio.aio_as_trio(connection.execute)(
                "UPDATE partition_leases SET owner = 'node-z', epoch = epoch + 1, expires_at = now() + interval '1 hour' WHERE partition = $1",
                partition,
            )
        finally:
            await trio_asyncio.aio_as_trio(connection.close)()
        before = await a.node.store.journal.position(partition)
        intent_id = a.node.new_id("pi", partition)
        command = machine.CreateIntent(
            intent_id=intent_id, merchant_id="acct_none", livemode=False, amount=100, currency="usd",
            capture_method=machine.CaptureMethod.automatic, client_secret=a.node.client_secret(intent_id), at_s=1,
            attempt_id=a.node.new_id("att", partition),
        )
        try:
            await a.node.submit(command)
            raise AssertionError("a write under a stale epoch was accepted")
        except NotServed as refused:
            assert refused.partition == partition
        assert await a.node.store.journal.position(partition) == before, "nothing was written"
        assert partition not in served(a), "the node dropped the partition"
        assert partition not in a.node.held()
        assert epoch >= 1


async def test_a_clean_stop_hands_off_and_a_crash_is_taken_over_after_the_ttl(database_url: str) -> None:
    async with cluster(database_url) as (start, headers, _, _):
        a, b = await two_nodes(start)
        async with httpx.AsyncClient(headers=headers, timeout=30) as http:
            paid = [(await http.post(f"{node.url}/v1/payment_intents", data=PAY)).json() for node in (a, b) for _ in range(4)]
            b.node.stop_accepting()
            await wait_until_async(lambda: served(a) == set(range(PARTITIONS)), 15, "node a holding every partition after the handoff")
            for intent in paid:
                answer = await http.get(f"{a.url}/v1/payment_intents/{intent['id']}")
                assert answer.json()["status"] == "succeeded"
            c = await start("node-c")
            await wait_until_async(lambda: len(served(a)) == len(served(c)) == PARTITIONS // 2, 15, "an even spread again")
            # Node c dies without a word: its leases run out, then a takes them.
            c.scope.cancel()
            await wait_until_async(lambda: served(a) == set(range(PARTITIONS)), 15, "node a taking over the dead node's partitions")
            for intent in paid:
                answer = await http.get(f"{a.url}/v1/payment_intents/{intent['id']}")
                assert answer.json()["status"] == "succeeded" and answer.json()["amount"] == 1500


async def test_a_second_live_node_with_the_same_id_is_refused(database_url: str) -> None:
    async with cluster(database_url) as (start, _, _, _):
        await start("node-a")
        refusals = []
        try:
            await start("node-a")
        except* NodeIdTaken as refused:
            refusals = list(refused.exceptions)
        assert len(refusals) == 1 and "a live node already uses the id 'node-a'" in str(refusals[0])


async def test_lists_cover_every_node_and_page_across_them(database_url: str) -> None:
    async with cluster(database_url) as (start, headers, _, _):
        a, b = await two_nodes(start)
        async with httpx.AsyncClient(headers=headers, timeout=30) as http:
            made = {(await http.post(f"{node.url}/v1/payment_intents", data=PAY)).json()["id"] for node in (a, b, a, b, a, b, a)}
            homes = {b.node.partition_of_intent(intent_id) in served(b) for intent_id in made}
            assert homes == {True, False}, "intents on both nodes"
            for node in (a, b):
                whole = (await http.get(f"{node.url}/v1/payment_intents", params={"limit": 100})).json()
                assert {intent["id"] for intent in whole["data"]} == made and not whole["has_more"]
                newest_first = [(intent["created"], intent["id"]) for intent in whole["data"]]
                assert newest_first == sorted(newest_first, reverse=True)
                # Three at a time, the cursor naming objects on either node.
                seen: list[str] = []
                cursor: dict[str, str] = {}
                while True:
                    page = (await http.get(f"{node.url}/v1/payment_intents", params={"limit": 3, **cursor})).json()
                    seen += [intent["id"] for intent in page["data"]]
                    if not page["has_more"]:
                        break
                    cursor = {"starting_after": page["data"][-1]["id"]}
                assert seen == [intent_id for _, intent_id in newest_first], "every intent once, in order"
                back = (await http.get(f"{node.url}/v1/payment_intents", params={"limit": 2, "ending_before": seen[-1]})).json()
                assert [intent["id"] for intent in back["data"]] == seen[-3:-1]
            # Refunds, likewise.
            refunded = sorted(made)[:3]
            for intent_id in refunded:
                assert (await http.post(f"{a.url}/v1/refunds", data={"payment_intent": intent_id})).status_code == 200
            refunds = (await http.get(f"{b.url}/v1/refunds", params={"limit": 100})).json()
            assert sorted(refund["payment_intent"] for refund in refunds["data"]) == refunded
            # A peer's signature cannot be made up: a forged header is not trusted.
            forged = await http.get(f"{a.url}/v1/payment_intents", params={"limit": 100}, headers={"Payments-Forwarded-By": "node-b,1,00"})
            assert {intent["id"] for intent in forged.json()["data"]} == made


async def test_a_dispute_is_found_from_any_node(database_url: str) -> None:
    async with cluster(database_url) as (start, headers, _, network):
        a, b = await two_nodes(start)
        async with httpx.AsyncClient(headers=headers, timeout=30) as http:
            intent = (await http.post(f"{a.url}/v1/payment_intents", data=PAY)).json()
            owner, other = (a, b) if a.node.partition_of_intent(intent["id"]) in served(a) else (b, a)
            # The network knows the charge by its attempt (engine/ids.py).
            dispute_id = network.open_dispute(ids.attempt_id_of_charge(intent["latest_charge"]))
            assert dispute_id is not None
            # The notice goes to the node that polls for the intent's partition.
            await wait_until_async(lambda: owner.node.dispute(dispute_id) is not None, 15, "the owner recording the dispute")
            found = await http.get(f"{other.url}/v1/disputes/{dispute_id}")
            assert found.status_code == 200 and found.json()["payment_intent"] == intent["id"], found.text
            listed = (await http.get(f"{other.url}/v1/disputes")).json()
            assert [dispute["id"] for dispute in listed["data"]] == [dispute_id]
            missing = await http.get(f"{other.url}/v1/disputes/dp_unknown")
            assert missing.status_code == 404
