"""Past capacity the node sheds instead of queueing: a client command that
waited in its partition's mailbox past `queue_wait_max_s` is refused without
being decided or journaled, and new payments are refused while commands
wait longer than `create_wait_max_s`, so the payments already started
finish. Run on the memory store under trio's MockClock, with every journal
write made slow, so the waits are exact."""

from __future__ import annotations

import functools
import random
import time
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from quart_trio import QuartTrio

from engine import intent as machine
from gateway.listener import ConnectionLimits, hypercorn_config, serve_guarded
from shards.actor import ShardConfig
from shards.node import Node, NodeConfig, Overloaded, run_node
from shards.vault import Vault
from simulators.card_network import CardNetwork
from store.memory import MemoryStore
from tests.test_request_ids import in_process_node

COMMIT_S = 0.8  # every journal write takes this long (mock time)
CONFIG = NodeConfig(partitions=1, shard=ShardConfig(queue_wait_max_s=0.5, create_wait_max_s=0.05), group_commit=False)


def create(node: Node) -> machine.CreateIntent:
    intent_id = node.new_id("pi")
    return machine.CreateIntent(
        intent_id=intent_id, merchant_id="acct_busy", livemode=False, amount=1000, currency="usd",
        capture_method=machine.CaptureMethod.automatic, client_secret=node.client_secret(intent_id), at_s=int(time.time()),
        attempt_id=node.new_id("att", node.partition_of_intent(intent_id)),
    )


def cancel(node: Node, intent_id: str) -> machine.CancelIntent:
    return machine.CancelIntent(
        intent_id=intent_id, merchant_id="acct_busy", livemode=False, attempt_id=node.new_id("att", 0), at_s=int(time.time()),
        cancellation_reason=None,
    )


async def slow_node(store: MemoryStore, nursery: trio.Nursery) -> Node:
    append_many = store.journal.append_many

    async def slow_append_many(batches: Any) -> None:
        await trio.sleep(COMMIT_S)
        await append_many(batches)

    store.journal.append_many = slow_append_many  # type: ignore[method-assign]
    await store.migrate(1)
    return await nursery.start(functools.partial(run_node, random_bytes=random.Random(1).randbytes), store, Vault(bytes(32)), CardNetwork(seed=1), CONFIG)


async def test_commands_that_waited_past_their_deadline_are_shed_and_never_journaled(autojump_clock: Any) -> None:
    queued = 3
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        node = await slow_node(store, nursery)
        made = [await node.submit(create(node)) for _ in range(queued)]
        intent_ids = [outcome.intent.id for outcome in made]
        told: dict[str, str] = {}

        async def cancel_one(intent_id: str) -> None:
            try:
                await node.submit(cancel(node, intent_id))
                told[intent_id] = "done"
            except Overloaded as refused:
                told[intent_id] = str(refused)

        async with trio.open_nursery() as clients:
            # The first cancel is taken at once and its commit takes 0.8 s;
            # the next arrive 0.2 s apart: the second has waited 0.6 s when
            # the actor is free again, the third 0.4 s.
            for intent_id in intent_ids:
                clients.start_soon(cancel_one, intent_id)
                await trio.sleep(0.2)
        shard = node.shards[0]
        node.stop_accepting()
    statuses = {intent_id: shard.state.intents[intent_id].status for intent_id in intent_ids}
    assert told[intent_ids[0]] == "done" and statuses[intent_ids[0]] is machine.Status.canceled
    shed = [intent_id for intent_id in intent_ids if told[intent_id] != "done"]
    assert shed == [intent_ids[1]], told
    assert told[intent_ids[1]] == "the command waited too long for its partition"
    # Refused without being decided: nothing was journaled for them.
    assert all(statuses[i] is machine.Status.requires_payment_method for i in shed)
    kinds = [row.kind for row in await store.journal.load(0)]
    assert kinds.count("IntentCanceled") == queued - len(shed)
    assert shard.shed_total == len(shed)


async def test_new_payments_are_refused_while_the_started_ones_wait(autojump_clock: Any) -> None:
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        node = await slow_node(store, nursery)
        first = await node.submit(create(node))
        second = await node.submit(create(node))
        shard = node.shards[0]
        async with trio.open_nursery() as clients:
            clients.start_soon(node.submit, cancel(node, first.intent.id))
            await trio.sleep(0.4)
            # Queued behind a 0.8 s commit: when the actor takes it, it has waited 0.4 s.
            clients.start_soon(node.submit, cancel(node, second.intent.id))
        assert shard.queue_wait_s() > CONFIG.shard.create_wait_max_s
        with pytest.raises(Overloaded, match=r"^partition 0 is saturated; new payments are refused for now$"):
            await node.submit(create(node))
        # Once nothing has waited for a while, new payments are taken again.
        await trio.sleep(1.5)
        assert shard.queue_wait_s() == 0.0
        assert (await node.submit(create(node))).intent.status is machine.Status.requires_payment_method
        node.stop_accepting()


async def test_a_saturated_partition_refuses_a_new_payment_before_any_work(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with in_process_node(database_url, "Busy shop") as (node, client, headers):
        made = await client.post("/v1/payment_intents", form={"amount": "900", "currency": "usd"}, headers=headers)
        assert made.status_code == 200
        looked_up: list[str] = []
        monkeypatch.setattr(node, "saturated", lambda partition: True)
        # A test card id makes a payment method: that would be the first work done.
        monkeypatch.setattr(node, "create_payment_method", lambda *args: looked_up.append("created"))
        monkeypatch.setattr(node, "payment_method", lambda payment_method_id: looked_up.append(payment_method_id))
        refused = await client.post(
            "/v1/payment_intents", form={"amount": "900", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}, headers=headers
        )
        # The payment already started is still served.
        read = await client.get(f"/v1/payment_intents/{(await made.get_json())['id']}", headers=headers)
        listed = await (await client.get("/v1/payment_intents", headers=headers)).get_json()
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    body = await refused.get_json()
    assert body["error"]["message"] == "The engine is at capacity and takes no new payments for a moment. Retry shortly."
    assert looked_up == [], "no work was done for the refused payment"
    assert read.status_code == 200
    assert len(listed["data"]) == 1, "nothing was created"


class Held:
    """A route that holds every request until `release` is set, counting
    those that reached it in `entered`."""

    def __init__(self, app: QuartTrio, method: str, path: str, answer: str) -> None:
        self.release = trio.Event()
        self.entered = 0

        async def held() -> str:
            self.entered += 1
            await self.release.wait()
            return answer

        app.add_url_rule(path, "held", held, methods=[method])

    async def two_calls(self, nursery: trio.Nursery, http: httpx.AsyncClient) -> list[httpx.Response]:
        """Start two GETs of the route; returns once both are held, with the
        list their answers will go to."""
        answers: list[httpx.Response] = []

        async def call() -> None:
            answers.append(await http.get("/slow"))

        nursery.start_soon(call)
        nursery.start_soon(call)
        with trio.fail_after(10):
            while self.entered < 2:
                await trio.sleep(0.01)
        return answers


async def _connect(bind: str) -> trio.SocketStream:
    """A raw connection to the listener at `bind` (http://host:port)."""
    host, port = bind.removeprefix("http://").rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def test_requests_past_the_in_flight_bound_are_refused_at_the_door() -> None:
    """A node at capacity answers the next request 503 at once, before any
    routing or authentication, and takes requests again as soon as one
    finishes; health checks always pass."""
    app = QuartTrio("busy")
    slow = Held(app, "GET", "/slow", "done")

    @app.get("/healthz")
    async def healthz() -> str:
        return "ok"

    limits = ConnectionLimits(requests_in_flight_max=2)
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        binds = await nursery.start(functools.partial(serve_guarded, app, hypercorn_config("127.0.0.1", 0), limits, shutdown_trigger=stop.wait))
        async with httpx.AsyncClient(base_url=binds[0], timeout=10) as http:
            answers = await slow.two_calls(nursery, http)
            refused = await http.get("/slow")
            health = await http.get("/healthz")
            slow.release.set()
            with trio.fail_after(10):
                while len(answers) < 2:
                    await trio.sleep(0.01)
            after = await http.get("/slow")
        stop.set()
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert refused.json() == {"error": {"type": "api_error", "code": "service_unavailable", "message": "The node is at capacity. Retry shortly."}}
    assert refused.headers["Request-Id"].startswith("req_") and refused.headers["Content-Length"] == str(len(refused.content))
    assert slow.entered == 3, "the refused request never reached the app"
    assert health.status_code == 200
    assert [answer.text for answer in answers] == ["done", "done"] and after.text == "done"


async def _exchange(stream: trio.SocketStream) -> bytes:
    """Read one whole answer (head and Content-Length body) from `stream`."""
    data = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")))
        while len(body) < length:
            body += await stream.receive_some(65536)
    return head


async def test_a_burst_of_new_payments_is_counted_as_its_heads_are_read() -> None:
    """Eight new payments arrive at once at a node that takes three: the door
    counts each one it lets in as its head is read, so exactly three reach
    the app and the door refuses the other five itself, keeping their
    connections (the app's refusal would close them); once the three finish,
    each connection in turn is let in again, so nothing stayed counted."""
    app = QuartTrio("burst")
    create_intent = Held(app, "POST", "/v1/payment_intents", "made")

    request = b"POST /v1/payment_intents HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"
    refused: list[str] = []
    limits = ConnectionLimits(requests_in_flight_max=4)
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        binds = await nursery.start(
            functools.partial(serve_guarded, app, hypercorn_config("127.0.0.1", 0), limits, shutdown_trigger=stop.wait, refused=refused.append)
        )
        streams = [await _connect(binds[0]) for _ in range(8)]
        await trio.sleep(0.2)  # every connection accepted and waiting to read
        heads: dict[int, bytes] = {}

        async def pay(index: int) -> None:
            await streams[index].send_all(request)
            heads[index] = await _exchange(streams[index])

        async with trio.open_nursery() as paying:
            for index in range(8):
                paying.start_soon(pay, index)
            with trio.fail_after(10):
                while len(heads) < 5:
                    await trio.sleep(0.01)
            assert create_intent.entered == 3 and refused == ["new_payment"] * 5
            create_intent.release.set()
        assert sum(head.startswith(b"HTTP/1.1 200") for head in heads.values()) == 3
        door_refusals = [head for head in heads.values() if head.startswith(b"HTTP/1.1 503")]
        assert len(door_refusals) == 5 and not any(b"connection: close" in head.lower() for head in door_refusals)
        heads.clear()
        await trio.sleep(0.2)  # the three apps return after their answers went out
        for index in range(8):
            await pay(index)
        assert all(head.startswith(b"HTTP/1.1 200") for head in heads.values()) and create_intent.entered == 11, heads
        for stream in streams:
            await stream.aclose()
        stop.set()


async def test_a_request_the_door_let_in_but_hypercorn_refused_is_not_left_counted() -> None:
    """A head the door can split but h11 refuses (a space in a header name)
    is answered 400 by hypercorn without the app; the door's count of it is
    given back, so the bound still lets in as many requests as before."""
    app = QuartTrio("malformed")
    slow = Held(app, "GET", "/slow", "done")

    limits = ConnectionLimits(requests_in_flight_max=2)
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        binds = await nursery.start(functools.partial(serve_guarded, app, hypercorn_config("127.0.0.1", 0), limits, shutdown_trigger=stop.wait))
        for _ in range(3):
            stream = await _connect(binds[0])
            await stream.send_all(b"GET /slow HTTP/1.1\r\nhost: x\r\nbad name: 1\r\n\r\n")
            assert (await _exchange(stream)).startswith(b"HTTP/1.1 400")
            await stream.aclose()
        async with httpx.AsyncClient(base_url=binds[0], timeout=10) as http:
            answers = await slow.two_calls(nursery, http)
            slow.release.set()
            with trio.fail_after(10):
                while len(answers) < 2:
                    await trio.sleep(0.01)
        stop.set()
    assert slow.entered == 2 and [answer.status_code for answer in answers] == [200, 200]


async def test_idle_connections_close_after_the_keep_alive_timeout_and_at_once_when_the_server_stops() -> None:
    """Between requests a connection is bounded by the keep-alive timeout,
    also after a request the door refused; when the server stops, an idle
    connection closes at once, not after the graceful timeout."""
    app = QuartTrio("idle")

    @app.get("/ok")
    async def ok() -> str:
        return "ok"

    config = hypercorn_config("127.0.0.1", 0)
    config.keep_alive_timeout = 0.5
    config.graceful_timeout = 30
    # Every new payment is refused at the door (three quarters of 1 is 0).
    limits = ConnectionLimits(requests_in_flight_max=1)
    refused_create = b"POST /v1/payment_intents HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"

    async def closed_after(stream: trio.SocketStream, started: float) -> float:
        with trio.fail_after(10):
            assert await stream.receive_some(65536) == b""
        return trio.current_time() - started

    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        binds = await nursery.start(functools.partial(serve_guarded, app, config, limits, shutdown_trigger=stop.wait))
        served, refused, kept = [await _connect(binds[0]) for _ in range(3)]
        await served.send_all(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await _exchange(served)).startswith(b"HTTP/1.1 200")
        await refused.send_all(refused_create)
        assert (await _exchange(refused)).startswith(b"HTTP/1.1 503")
        answered_at = trio.current_time()
        assert 0.3 < await closed_after(served, answered_at) < 5
        assert 0.3 < await closed_after(refused, answered_at) < 5
        config.keep_alive_timeout = 60  # for the connections made from here
        await kept.aclose()
        kept = await _connect(binds[0])
        await kept.send_all(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await _exchange(kept)).startswith(b"HTTP/1.1 200")
        stopped_at = trio.current_time()
        stop.set()
        assert await closed_after(kept, stopped_at) < 5
    assert trio.current_time() - stopped_at < 5, "the server did not wait out its graceful timeout for an idle connection"
    for stream in (served, refused, kept):
        await stream.aclose()


async def test_a_request_head_with_bare_line_feeds_is_served() -> None:
    """h11 reads a head whose lines end in a bare line feed; the door, which
    reads every head on a connection between requests, leaves such a head
    to hypercorn at once rather than wait for a CRLF that never comes."""
    app = QuartTrio("bare")

    @app.get("/ok")
    async def ok() -> str:
        return "ok"

    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        binds = await nursery.start(functools.partial(serve_guarded, app, hypercorn_config("127.0.0.1", 0), ConnectionLimits(), shutdown_trigger=stop.wait))
        stream = await _connect(binds[0])
        await stream.send_all(b"GET /ok HTTP/1.1\nhost: x\n\n")
        assert (await _exchange(stream)).startswith(b"HTTP/1.1 200")
        await stream.aclose()
        stop.set()
