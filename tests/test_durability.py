"""Every acknowledged intent survives a SIGKILL of the node (invariant I4)."""

from __future__ import annotations

import random

import httpx
import trio

from tests.conftest import NodeProcess, status_reachable
from tests.helpers import wait_until_async

WORKERS = 24
# The node is killed once this many intents are acknowledged (within
# LOAD_S_MAX): under load, whatever the machine's speed.
ACKNOWLEDGED_BEFORE_KILL = 250
LOAD_S_MAX = 60
REQUESTS_PER_WORKER_MAX = 400


async def _load(node: NodeProcess, acknowledged: dict[str, dict], seed: int) -> None:
    """Create intents from several workers until the node dies under them."""
    rng = random.Random(seed)
    choices = [
        {"payment_method": "pm_card_visa", "confirm": "true"},
        {"payment_method": "pm_card_visa", "confirm": "true", "capture_method": "manual"},
        {"payment_method": "pm_card_mastercard"},
        {"payment_method": "pm_card_chargeDeclined", "confirm": "true"},
        {},
    ]

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in range(REQUESTS_PER_WORKER_MAX):
            body = {"amount": str(rng.randint(50, 99_999_999)), "currency": "usd", **rng.choice(choices)}
            try:
                response = await client.post("/v1/payment_intents", data=body)
            except httpx.HTTPError:
                return  # the node is gone; in-flight requests were never acknowledged
            payload = response.json()
            if response.status_code == 200:
                acknowledged[payload["id"]] = payload
            elif response.status_code == 402:
                intent = payload["error"]["payment_intent"]
                acknowledged[intent["id"]] = intent
            elif response.status_code == 429:
                # The key's rate limit: nothing was done or acknowledged. The
                # pause lets its bucket refill; it is pacing, not a wait for
                # something to happen.
                await trio.sleep(0.05)
            else:
                assert response.status_code == 503, payload

    async with httpx.AsyncClient(base_url=node.url, auth=(node.secret_key, ""), timeout=10) as client:
        async with trio.open_nursery() as nursery:
            for _ in range(WORKERS):
                nursery.start_soon(worker, client)
            await wait_until_async(
                lambda: len(acknowledged) >= ACKNOWLEDGED_BEFORE_KILL, LOAD_S_MAX, f"{ACKNOWLEDGED_BEFORE_KILL} acknowledged intents"
            )
            node.kill()


async def test_sigkill_loses_no_acknowledged_intent(new_node, database_url, tmp_path) -> None:
    first = new_node(database_url, tmp_path)
    acknowledged: dict[str, dict] = {}
    await _load(first, acknowledged, seed=7)
    assert len(acknowledged) >= 50, "the load produced too few acknowledged intents to mean anything"

    second = new_node(database_url, tmp_path)
    assert second.secret_key == first.secret_key
    async with httpx.AsyncClient(base_url=second.url, auth=(second.secret_key, ""), timeout=10) as client:
        for intent_id, before in acknowledged.items():
            response = await client.get(f"/v1/payment_intents/{intent_id}")
            while response.status_code == 429:  # the key's rate limit: wait as told, for the bucket to refill
                await trio.sleep(float(response.headers["Retry-After"]))
                response = await client.get(f"/v1/payment_intents/{intent_id}")
            assert response.status_code == 200, (intent_id, response.text)
            after = response.json()
            assert status_reachable(before["status"], after["status"]), (before, after)
            if before["status"] in ("succeeded", "requires_capture"):
                assert after == before
            assert (after["amount"], after["currency"], after["created"]) == (before["amount"], before["currency"], before["created"])


async def test_clean_shutdown_then_restart_keeps_everything(new_node, database_url, tmp_path) -> None:
    first = new_node(database_url, tmp_path)
    async with httpx.AsyncClient(base_url=first.url, auth=(first.secret_key, ""), timeout=10) as client:
        created = []
        for capture_method in ("automatic", "manual"):
            response = await client.post(
                "/v1/payment_intents",
                data={"amount": "1234", "currency": "gbp", "payment_method": "pm_card_visa", "confirm": "true", "capture_method": capture_method},
            )
            assert response.status_code == 200
            created.append(response.json())
    assert first.stop() == 0
    second = new_node(database_url, tmp_path)
    async with httpx.AsyncClient(base_url=second.url, auth=(second.secret_key, ""), timeout=10) as client:
        for before in created:
            after = (await client.get(f"/v1/payment_intents/{before['id']}")).json()
            assert after == before
