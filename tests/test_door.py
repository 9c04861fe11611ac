"""The door's cheap refusals (gateway/door.py): which bytes it answers, holds
or hands to hypercorn."""

from __future__ import annotations

from types import SimpleNamespace

import h11

from gateway.door import AT_CAPACITY, Door, split
from gateway.listener import GuardedConnection

BODY = b"amount=100&currency=usd"
CREATE = b"POST /v1/payment_intents HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)
CONFIRM = b"POST /v1/payment_intents/pi_1/confirm HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"


def crowded(in_flight: int = 48) -> tuple[Door, list[str]]:
    kinds: list[str] = []
    door = Door(64, kinds.append)
    door.in_flight = in_flight
    return door, kinds


def parsed(answer: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """Read an answer back with h11, as a client would."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(answer)
    response = client.next_event()
    body = client.next_event()
    assert isinstance(response, h11.Response) and isinstance(body, h11.Data)
    assert isinstance(client.next_event(), h11.EndOfMessage)
    return response.status_code, dict(response.headers), body.data


def test_pipelined_new_payments_are_answered_without_hypercorn() -> None:
    door, kinds = crowded()
    taken = split(door, CREATE + CREATE)
    assert len(taken.answers) == 2 and taken.passed == b"" and taken.held == b"" and not taken.close
    assert kinds == ["new_payment", "new_payment"]
    status, headers, body = parsed(taken.answers[0])
    assert status == 503 and headers[b"retry-after"] == b"1" and body == AT_CAPACITY
    assert headers[b"request-id"].startswith(b"req_") and headers[b"request-id"] != parsed(taken.answers[1])[1][b"request-id"]


def test_a_request_the_door_lets_in_goes_to_hypercorn_with_everything_after_it() -> None:
    door, kinds = crowded()
    # Past three quarters of the bound only new payments are refused.
    taken = split(door, CREATE + CONFIRM + CREATE)
    assert len(taken.answers) == 1 and taken.passed == CONFIRM + CREATE and kinds == ["new_payment"]
    door.in_flight = 64
    assert len(split(door, CONFIRM).answers) == 1 and kinds[-1] == "other"


def test_a_request_split_across_reads_is_held_until_complete() -> None:
    door, kinds = crowded()
    head_only = split(door, CREATE[:20])
    assert head_only.answers == [] and head_only.passed == b"" and head_only.held == CREATE[:20]
    part_body = split(door, CREATE[:-5])
    assert part_body.answers == [] and part_body.held == CREATE[:-5]
    whole = split(door, part_body.held + CREATE[-5:])
    assert len(whole.answers) == 1 and whole.held == b"" and kinds == ["new_payment"]


def test_what_it_cannot_frame_for_certain_goes_to_hypercorn() -> None:
    door, kinds = crowded(64)
    chunked = b"POST /v1/payment_intents HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    twice = b"POST /v1/payment_intents HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc"
    old = b"POST /v1/payment_intents HTTP/1.0\r\ncontent-length: 0\r\n\r\n"
    expect = b"POST /v1/payment_intents HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n"
    large = b"POST /v1/payment_intents HTTP/1.1\r\ncontent-length: 100000\r\n\r\n"
    for data in (chunked, twice, old, expect, large, b"garbage\r\n\r\n"):
        taken = split(door, data)
        assert taken.answers == [] and taken.passed == data and taken.held == b"", data
    assert kinds == []


def test_a_head_h11_could_read_otherwise_goes_to_hypercorn() -> None:
    """Bare line feeds, a folded line, a space before a colon: h11 might
    frame these differently (a hidden Content-Length, say), so the door
    neither answers them nor holds them, crowded or not."""
    door, kinds = crowded(64)
    heads = (
        b"POST /v1/payment_intents HTTP/1.1\nhost: x\ncontent-length: 0\n\n",
        b"POST /v1/payment_intents HTTP/1.1\r\nx-a: 1\ncontent-length: 2\r\n\r\n{}",
        b"POST /v1/payment_intents HTTP/1.1\r\nx-a: 1\rcontent-length: 2\r\n\r\n{}",
        b"POST /v1/payment_intents HTTP/1.1\r\nx-a: 1\r\n content-length: 2\r\n\r\n{}",
        b"POST /v1/payment_intents HTTP/1.1\r\ncontent-length : 2\r\n\r\n{}",
    )
    for in_flight in (64, 0):
        door.in_flight = in_flight
        for data in heads:
            taken = split(door, data)
            assert taken.answers == [] and taken.passed == data and taken.held == b"" and not taken.admitted, data
            assert door.in_flight == in_flight
    assert kinds == []


def test_health_and_metrics_always_pass_and_an_open_door_takes_nothing() -> None:
    door, kinds = crowded(64)
    for path in (b"/healthz", b"/metrics"):
        data = b"GET %s HTTP/1.1\r\nhost: x\r\n\r\n" % path
        assert split(door, data).passed == data
    door.in_flight = 10
    assert split(door, CREATE).passed == CREATE
    assert kinds == []


def test_the_request_it_lets_in_is_counted_as_its_head_is_read() -> None:
    door, kinds = crowded(46)
    first = split(door, CREATE + CREATE)
    assert first.admitted and first.passed == CREATE + CREATE and door.in_flight == 47, "only the first is counted here"
    second = split(door, CREATE)
    assert second.admitted and door.in_flight == 48
    third = split(door, CREATE)
    assert not third.admitted and len(third.answers) == 1 and door.in_flight == 48 and kinds == ["new_payment"]
    head_only = split(door, CREATE[:30])
    assert not head_only.admitted and head_only.held == CREATE[:30] and door.in_flight == 48, "nothing counted before the head is whole"
    chunked = b"POST /v1/payment_intents HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
    door.in_flight = 0
    assert not split(door, chunked).admitted and door.in_flight == 0, "what it cannot frame the app counts"


def test_a_refused_request_asking_to_close_closes_the_connection() -> None:
    door, _ = crowded()
    closing = CREATE.replace(b"host: x\r\n", b"host: x\r\nconnection: close\r\n")
    taken = split(door, closing + CREATE)
    assert len(taken.answers) == 1 and taken.close
    assert parsed(taken.answers[0])[1][b"connection"] == b"close"


def _connection_in(states: str) -> GuardedConnection:
    """A listener connection (no socket) whose hypercorn h11 state is
    `idle`, `answering` (a response's body under way) or `done` (answered,
    not yet recycled)."""
    h11_connection = h11.Connection(h11.SERVER)
    stream = None
    if states != "idle":
        stream = object()
        h11_connection.receive_data(CONFIRM)
        while not isinstance(h11_connection.next_event(), h11.EndOfMessage):
            pass
        h11_connection.send(h11.Response(status_code=200, headers=[("content-length", "2")]))
        if states == "done":
            h11_connection.send(h11.Data(data=b"{}"))
            h11_connection.send(h11.EndOfMessage())
    connection = GuardedConnection.__new__(GuardedConnection)
    connection.protocol = SimpleNamespace(protocol=SimpleNamespace(connection=h11_connection, stream=stream))
    return connection


def test_the_door_answers_between_requests_and_after_an_answer_but_never_during_one() -> None:
    assert _connection_in("idle")._between_requests()
    assert _connection_in("done")._between_requests(), "answered, not yet recycled by hypercorn"
    assert not _connection_in("answering")._between_requests()
    pipelined = _connection_in("done")
    pipelined.protocol.protocol.connection.receive_data(CREATE)
    assert not pipelined._between_requests(), "bytes hypercorn holds already go first"
