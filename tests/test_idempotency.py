"""Idempotency keys with Stripe's semantics: retries never run a request twice."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest
import stripe
import trio

from tests.conftest import NodeProcess

PAY = {"amount": "4200", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}


@pytest.fixture
def merchant(node: NodeProcess, fresh_merchant: dict) -> httpx.Client:
    with httpx.Client(base_url=node.url, auth=(fresh_merchant["secret_key"], ""), timeout=30) as client:
        yield client


def authorizations(client: httpx.Client) -> list[dict]:
    operations = client.get("/simulator/operations").json()["data"]
    return [operation for operation in operations if operation["kind"] == "authorize"]


def test_a_replay_returns_the_identical_response_and_charges_once(merchant: httpx.Client) -> None:
    first = merchant.post("/v1/payment_intents", data=PAY, headers={"Idempotency-Key": "order-1"})
    again = merchant.post("/v1/payment_intents", data=PAY, headers={"Idempotency-Key": "order-1"})
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert first.json()["status"] == "succeeded"
    assert len(merchant.get("/v1/payment_intents").json()["data"]) == 1
    assert len(authorizations(merchant)) == 1


def test_a_decline_is_replayed_as_the_same_402(merchant: httpx.Client) -> None:
    body = {**PAY, "payment_method": "pm_card_chargeDeclined"}
    first = merchant.post("/v1/payment_intents", data=body, headers={"Idempotency-Key": "declined"})
    again = merchant.post("/v1/payment_intents", data=body, headers={"Idempotency-Key": "declined"})
    assert first.status_code == again.status_code == 402
    assert again.content == first.content


def test_the_same_key_with_other_parameters_or_endpoint_is_refused(merchant: httpx.Client) -> None:
    assert merchant.post("/v1/payment_intents", data=PAY, headers={"Idempotency-Key": "k"}).status_code == 200
    other = merchant.post("/v1/payment_intents", data={**PAY, "amount": "4201"}, headers={"Idempotency-Key": "k"})
    assert other.status_code == 400
    assert (other.json()["error"]["type"], other.json()["error"]["code"]) == ("idempotency_error", "idempotency_key_reused")
    elsewhere = merchant.post(
        "/v1/payment_methods",
        data={"type": "card", "card[number]": "4242424242424242", "card[exp_month]": "1", "card[exp_year]": "2040"},
        headers={"Idempotency-Key": "k"},
    )
    assert elsewhere.status_code == 400 and elsewhere.json()["error"]["type"] == "idempotency_error"
    assert len(authorizations(merchant)) == 1


def test_a_payment_method_retry_replays_whatever_its_cvc_and_another_card_is_refused(merchant: httpx.Client) -> None:
    card = {"type": "card", "card[number]": "4242424242424242", "card[exp_month]": "3", "card[exp_year]": "2040", "card[cvc]": "123"}
    first = merchant.post("/v1/payment_methods", data=card, headers={"Idempotency-Key": "card-once"})
    # The CVC is no part of the stored fingerprint, so it cannot tell retries apart.
    again = merchant.post("/v1/payment_methods", data={**card, "card[cvc]": "456"}, headers={"Idempotency-Key": "card-once"})
    spaced = merchant.post(
        "/v1/payment_methods", data={**card, "card[number]": "4242 4242 4242 4242"}, headers={"Idempotency-Key": "card-once"}
    )
    other = merchant.post(
        "/v1/payment_methods", data={**card, "card[number]": "5555555555554444"}, headers={"Idempotency-Key": "card-once"}
    )
    assert first.status_code == 200
    assert again.content == spaced.content == first.content and again.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 400
    assert (other.json()["error"]["type"], other.json()["error"]["code"]) == ("idempotency_error", "idempotency_key_reused")


def test_a_request_refused_by_validation_stores_nothing(merchant: httpx.Client) -> None:
    bad = merchant.post("/v1/payment_intents", data={**PAY, "amount": "-1"}, headers={"Idempotency-Key": "fix-me"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "amount"
    good = merchant.post("/v1/payment_intents", data=PAY, headers={"Idempotency-Key": "fix-me"})
    assert good.status_code == 200 and "Idempotent-Replayed" not in good.headers


def test_a_refusal_by_the_engine_is_stored_and_replayed(merchant: httpx.Client) -> None:
    intent = merchant.post("/v1/payment_intents", data=PAY).json()
    path = f"/v1/payment_intents/{intent['id']}/confirm"
    first = merchant.post(path, headers={"Idempotency-Key": "late-confirm"})
    again = merchant.post(path, headers={"Idempotency-Key": "late-confirm"})
    assert first.status_code == again.status_code == 400
    assert first.json()["error"]["code"] == "payment_intent_unexpected_state"
    assert again.content == first.content and again.headers["Idempotent-Replayed"] == "true"


def test_keys_are_scoped_per_merchant(node: NodeProcess, merchant: httpx.Client, merchant_keys: dict) -> None:
    with httpx.Client(base_url=node.url, auth=(merchant_keys["secret_key"], "")) as other:
        mine = merchant.post("/v1/payment_intents", data=PAY, headers={"Idempotency-Key": "shared-name"})
        theirs = other.post("/v1/payment_intents", data=PAY, headers={"Idempotency-Key": "shared-name"})
    assert mine.status_code == theirs.status_code == 200
    assert mine.json()["id"] != theirs.json()["id"]
    assert "Idempotent-Replayed" not in theirs.headers


def test_an_overlong_key_is_refused(merchant: httpx.Client) -> None:
    response = merchant.post("/v1/payment_intents", data=PAY, headers={"Idempotency-Key": "k" * 256})
    assert response.status_code == 400 and response.json()["error"]["code"] == "idempotency_key_invalid"
    assert merchant.post("/v1/payment_intents", data=PAY, headers={"Idempotency-Key": "k" * 255}).status_code == 200


async def test_twenty_concurrent_identical_creates_make_one_intent_and_one_charge(node: NodeProcess, fresh_merchant: dict) -> None:
    statuses: list[int] = []
    bodies: list[bytes] = []
    async with httpx.AsyncClient(base_url=node.url, auth=(fresh_merchant["secret_key"], ""), timeout=30) as client:

        async def pay() -> None:
            response = await client.post("/v1/payment_intents", data=PAY, headers={"Idempotency-Key": "burst"})
            statuses.append(response.status_code)
            if response.status_code == 200:
                bodies.append(response.content)
            else:
                assert response.json()["error"]["code"] == "idempotency_key_in_use"

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(pay)
        after = await client.post("/v1/payment_intents", data=PAY, headers={"Idempotency-Key": "burst"})
        listed = (await client.get("/v1/payment_intents")).json()["data"]
        operations = (await client.get("/simulator/operations")).json()["data"]
    assert sorted(set(statuses)) in ([200], [200, 409])
    assert len({body for body in bodies}) == 1 and after.content == bodies[0]
    assert len(listed) == 1
    assert len([op for op in operations if op["kind"] == "authorize"]) == 1


class DropFirstResponse:
    """A loopback TCP proxy that forwards requests to the node but, for the
    first POST that creates an intent, drops the node's response: the charge
    happens and the client never hears of it."""

    def __init__(self, upstream_url: str) -> None:
        host, port = upstream_url.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.dropped = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        for _ in range(50):  # bounded: a test needs a handful of connections
            client, _ = self.listener.accept()
            threading.Thread(target=self.relay, args=(client,), daemon=True).start()

    def relay(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.upstream) as upstream:
            client.settimeout(10)
            upstream.settimeout(10)
            while True:
                request = read_message(client)
                if not request:
                    return
                upstream.sendall(request)
                response = read_message(upstream)
                with self.lock:
                    drop = self.dropped == 0 and request.startswith(b"POST /v1/payment_intents ")
                    self.dropped += drop
                if drop:
                    return  # close without answering
                client.sendall(response)


def read_message(stream: socket.socket) -> bytes:
    """One HTTP/1.1 message with a Content-Length body (all our server and
    the SDK send), or b"" when the peer closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = stream.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = stream.recv(65536)
        if not chunk:
            return b""
        body += chunk
    return head + b"\r\n\r\n" + body


def test_stripe_sdk_retries_across_a_dropped_response_without_charging_twice(node: NodeProcess, fresh_merchant: dict) -> None:
    proxy = DropFirstResponse(node.url)
    client = stripe.StripeClient(fresh_merchant["secret_key"], base_addresses={"api": proxy.url}, max_network_retries=2)
    intent = client.v1.payment_intents.create(params={"amount": 1234, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
    assert proxy.dropped == 1
    assert intent.status == "succeeded"
    with httpx.Client(base_url=node.url, auth=(fresh_merchant["secret_key"], "")) as direct:
        assert [i["id"] for i in direct.get("/v1/payment_intents").json()["data"]] == [intent.id]
        assert len(authorizations(direct)) == 1


def test_a_replay_survives_a_restart_of_the_node(new_node, database_url, tmp_path) -> None:
    first = new_node(database_url, tmp_path)
    with httpx.Client(base_url=first.url, auth=(first.secret_key, "")) as client:
        original = client.post("/v1/payment_intents", data=PAY, headers={"Idempotency-Key": "across-restart"})
    assert original.status_code == 200
    first.kill()
    second = new_node(database_url, tmp_path)
    with httpx.Client(base_url=second.url, auth=(second.secret_key, "")) as client:
        replay = client.post("/v1/payment_intents", data=PAY, headers={"Idempotency-Key": "across-restart"})
        assert len(client.get("/v1/payment_intents").json()["data"]) == 1
    assert replay.content == original.content and replay.headers["Idempotent-Replayed"] == "true"
