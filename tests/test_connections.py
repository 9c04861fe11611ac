"""What one client can hold of a node: connections, time before its first
request, and a connection after an answer given without reading the body."""

from __future__ import annotations

import base64
import socket
import time

import httpx

from gateway.app import BODY_BYTES_MAX
from tests.conftest import NodeProcess
from tests.helpers import wait_until


def _connect(node: NodeProcess) -> socket.socket:
    host, port = node.url.removeprefix("http://").rsplit(":", 1)
    connection = socket.create_connection((host, int(port)), timeout=10)
    return connection


def _read_response_head(connection: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _closed_within(connection: socket.socket, seconds: float) -> bool:
    """Whether the peer closes the connection (EOF or reset) within `seconds`."""
    connection.settimeout(seconds)
    try:
        while connection.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def test_oversized_body_on_keep_alive_closes_the_connection_instead_of_hanging_the_next_request(node: NodeProcess) -> None:
    auth = base64.b64encode(f"{node.secret_key}:".encode())
    body = b"amount=" + b"9" * (BODY_BYTES_MAX * 2)
    with _connect(node) as connection:
        connection.sendall(
            b"POST /v1/payment_intents HTTP/1.1\r\nHost: node\r\nAuthorization: Basic " + auth
            + b"\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        try:
            connection.sendall(body)
        except OSError:
            pass  # the node may stop reading once it has answered; that is the point
        head = _read_response_head(connection)
        assert head.startswith(b"HTTP/1.1 400"), head[:80]
        assert b"connection: close" in head.lower()
        started = time.monotonic()
        try:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
        except OSError:
            pass
        assert _closed_within(connection, 5), "the next request on the connection hung"
        assert time.monotonic() - started < 5


def test_refused_key_before_the_body_is_read_closes_the_connection(node: NodeProcess) -> None:
    body = b"amount=2000&currency=usd&" + b"description=" + b"x" * 60_000
    with _connect(node) as connection:
        connection.sendall(
            b"POST /v1/payment_intents HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer sk_test_wrong\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        head = _read_response_head(connection)
        assert head.startswith(b"HTTP/1.1 401"), head[:80]
        assert b"connection: close" in head.lower()
        assert _closed_within(connection, 5)


def test_an_answer_after_reading_the_body_keeps_the_connection(node: NodeProcess) -> None:
    with httpx.Client(base_url=node.url, auth=(node.secret_key, "")) as client:
        refused = client.post("/v1/payment_intents", data={"amount": "1", "currency": "usd"})
        assert refused.status_code == 400
        assert refused.headers.get("connection") != "close"
        assert client.get("/healthz").status_code == 200


def test_slowloris_headers_are_cut_off_after_the_header_timeout(new_node) -> None:  # type: ignore[no-untyped-def]
    node = new_node(None, None, "--header-timeout-s", "1")
    with _connect(node) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        closed = False
        # Well past the 1 s deadline, but bounded: a busy machine may be slow
        # to act on it, a node without the deadline never would. The pause
        # between header lines is the slow client under test, not a wait.
        for _ in range(20):
            time.sleep(0.4)
            try:
                connection.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed = True
                break
        closed = closed or _closed_within(connection, 1)
        assert closed
        assert time.monotonic() - started < 9
    # A client that sends its headers in time is served as usual.
    assert httpx.get(node.url + "/healthz").status_code == 200


def test_one_client_cannot_hold_more_than_its_connection_cap(new_node) -> None:  # type: ignore[no-untyped-def]
    node = new_node(None, None, "--connections-per-client-max", "3", "--header-timeout-s", "30")
    held = [_connect(node) for _ in range(3)]
    try:
        # An answer on each shows the node has accepted it and counts it:
        # connections accepted together may be counted in any order.
        for connection in held:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
            assert _read_response_head(connection).startswith(b"HTTP/1.1 200"), "one of the first three was refused"
        with _connect(node) as extra:
            head = _read_response_head(extra)
            assert head.startswith(b"HTTP/1.1 503"), head[:80]
            assert b"too_many_connections" in head + extra.recv(4096)
    finally:
        for connection in held:
            connection.close()
    # Once they are closed (and the node has seen it) the client gets in again.
    def let_in() -> bool:
        try:
            return httpx.get(node.url + "/healthz").status_code == 200
        except httpx.TransportError:
            return False  # refused while the node still counted the old ones

    wait_until(let_in, 10, "a connection to be let in again")
