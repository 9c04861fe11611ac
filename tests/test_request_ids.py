"""Request ids: minted when a request starts, carried by every log line the
gateway writes while it runs, and sent back in the `Request-Id` header."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
import trio
import trio_asyncio
from structlog.testing import capture_logs

from gateway.app import create_app
from shards.merchants import create_merchant
from shards.node import NodeConfig, run_node
from shards.vault import Vault
from simulators.card_network import CardNetwork
from store.errors import RedisUnavailable
from store.postgres import Store

PAY = {"amount": "2000", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}
CARD = {"type": "card", "card[number]": "4242424242424242", "card[exp_month]": "4", "card[exp_year]": "2040", "card[cvc]": "321"}
# What the gateway itself logs inside a request: a rate limit skipped while
# Redis is down, a created payment method, a handler's bug.
GATEWAY_EVENTS = {"rate_limit_skipped", "payment_method_created", "request_failed"}


class RefusingRedis:
    """A Redis link that is down: every rate limit it is asked for is skipped."""

    async def take_tokens(self, bucket_name: str, rate_per_s: int, burst: int, wanted: int) -> None:
        raise RedisUnavailable("redis unavailable: ConnectionError")


@contextlib.asynccontextmanager
async def in_process_node(
    database_url: str, merchant_name: str, network: CardNetwork | None = None
) -> AsyncIterator[tuple[Any, Any, dict[str, str]]]:
    """A node and its app in this process, on a fresh schema of a real
    PostgreSQL and with Redis down: (node, test client, a merchant's auth
    headers). The node stops when the block ends."""
    async with trio_asyncio.open_loop():
        store = await Store.open(database_url, connections_max=4)
        try:
            await store.migrate(4)
            merchant = await create_merchant(store, merchant_name)
            headers = {"Authorization": f"Bearer {merchant.secret_key}"}
            async with trio.open_nursery() as nursery:
                node = await nursery.start(run_node, store, Vault(bytes(range(32))), network or CardNetwork(seed=1), NodeConfig(partitions=4))
                # With Redis down every authentication logs a skipped rate limit.
                node.redis = RefusingRedis()
                async with create_app(node).test_app() as test_app:
                    yield node, test_app.test_client(), headers
                node.stop_accepting()
                nursery.cancel_scope.cancel()
        finally:
            await store.close()


async def test_every_log_line_inside_a_request_carries_its_request_id(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Request-Id was minted in after_request, once everything had been
    logged, so no log line of a request could be found from its response.
    Now it is bound when the request starts: each line the gateway writes in
    a handler or an error handler carries the id the response is sent with."""
    lines_of = {}
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with in_process_node(database_url, "Logged shop") as (node, client, headers):
            before = len(logs)
            created = await client.post("/v1/payment_methods", form=CARD, headers=headers)
            lines_of["created"] = logs[before:]

            async def broken_lookup(payment_method_id: str) -> None:
                raise RuntimeError("a bug in a lookup")

            monkeypatch.setattr(node, "payment_method", broken_lookup)
            before = len(logs)
            failed = await client.get("/v1/payment_methods/pm_anything", headers=headers)
            lines_of["failed"] = logs[before:]
    assert created.status_code == 200 and failed.status_code == 500
    ids = {"created": created.headers["Request-Id"], "failed": failed.headers["Request-Id"]}
    assert ids["created"].startswith("req_") and ids["failed"].startswith("req_") and ids["created"] != ids["failed"]
    expected_events = {"created": {"rate_limit_skipped", "payment_method_created"}, "failed": {"rate_limit_skipped", "request_failed"}}
    for name, lines in lines_of.items():
        gateway_lines = [line for line in lines if line["event"] in GATEWAY_EVENTS]
        assert {line["event"] for line in gateway_lines} == expected_events[name]
        assert [line.get("request_id") for line in gateway_lines] == [ids[name]] * len(gateway_lines), gateway_lines
    # The id is unbound when its request ends: nothing logged outside a request carries one.
    outside = [line for line in logs if line not in lines_of["created"] and line not in lines_of["failed"]]
    assert all("request_id" not in line for line in outside), outside


async def test_the_actor_transition_logs_carry_the_request_id_of_the_command_that_caused_them(database_url: str) -> None:
    """The actor's turn runs in its own task, outside the request's log
    context, so its transition logs (and those of the network answer a
    confirm waits for) could not be tied to the request that caused them."""
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with in_process_node(database_url, "Traced shop") as (_, client, headers):
            paid = await client.post("/v1/payment_intents", form=PAY, headers=headers)
    assert paid.status_code == 200
    assert (await paid.get_json())["status"] == "succeeded"
    request_id = paid.headers["Request-Id"]
    transitions = {line["event"]: line for line in logs if line["event"] in ("intent_created", "attempt_started", "attempt_approved")}
    assert set(transitions) == {"intent_created", "attempt_started", "attempt_approved"}
    assert {line["request_id"] for line in transitions.values()} == {request_id}


async def test_an_event_names_the_request_that_caused_it(database_url: str) -> None:
    """Events said `request: {"id": null}` whatever caused them, so a
    merchant could not match a webhook to the API call behind it."""
    async with in_process_node(database_url, "Evented shop") as (_, client, headers):
        paid = await client.post("/v1/payment_intents", form=PAY, headers=headers)
        listed = await client.get("/v1/events", headers=headers)
    events = (await listed.get_json())["data"]
    assert {event["type"] for event in events} >= {"payment_intent.created", "payment_intent.succeeded"}
    assert {event["request"]["id"] for event in events} == {paid.headers["Request-Id"]}
