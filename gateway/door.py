"""The door: how many requests a node works on at once, and refusing the
rest cheaply.

A node works on at most `requests_max` HTTP requests at once; a request that
starts a new payment is refused earlier, at three quarters of it, so that
the payments already started keep room to finish. `/healthz` and `/metrics`
always pass.

Refusing through the HTTP stack costs about as much as a small request
(hypercorn's parsing, the ASGI scope, the response events): measured, one
node spent half a millisecond of CPU on each refusal, so at 3,000 requests
a second offered it did nothing but refuse, and the payments it had let in
stopped finishing. So a connection that is between requests (nothing of a
request handed to hypercorn yet) reads the next requests' heads itself
(while the door is open it only counts the one it lets in, below): each
complete request the door would refuse is
answered from a prepared 503 and never reaches hypercorn. Anything it does
not take for certain (a chunked body, an `Expect` header, HTTP/1.0, a head
it cannot split, a request the door lets in) goes to hypercorn as usual,
with everything after it, in order.

A request the door lets in is counted in flight there and then, as its head
is read, not when the app starts on it: the app runs a moment later, and
meanwhile every connection would find the door still open. Counted late,
a burst of heads read in one turn of the event loop all passed the door,
and the app then refused most of them the dear way (hypercorn's parsing,
the app's 503, and a closed connection the client had to open again).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

import msgspec

EXEMPT_PATHS = frozenset({"/healthz", "/metrics"})
# What `Door.refuses` may answer.
REFUSAL_KINDS = ("new_payment", "other")
NEW_PAYMENT = ("POST", "/v1/payment_intents")

# The answer to a request refused at the door: Stripe's shape, no state.
AT_CAPACITY = msgspec.json.encode(
    {"error": {"type": "api_error", "code": "service_unavailable", "message": "The node is at capacity. Retry shortly."}}
)
# The end of a request head as h11 finds it, and a header name (a token).
_HEAD_END = re.compile(rb"\n\r?\n")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A head larger than this is left to hypercorn (which bounds heads itself).
HEAD_MAX = 16 * 1024
# A refused request's body is read and dropped up to this size; a larger
# one goes to hypercorn, which refuses it as usual.
BODY_HELD_MAX = 64 * 1024


class Door:
    """The in-flight count of one listener and what it lets in."""

    def __init__(self, requests_max: int, refused: Callable[[str], None] = lambda kind: None) -> None:
        self.requests_max = requests_max
        self.new_payments_max = requests_max * 3 // 4
        self.in_flight = 0
        self.refused = refused

    def refuses(self, method: str, path: str) -> str | None:
        """The kind of refusal (`new_payment`, `other`) for this request
        now, or None to let it in."""
        if not self.requests_max or path in EXEMPT_PATHS:
            return None
        if (method, path) == NEW_PAYMENT:
            return "new_payment" if self.in_flight >= self.new_payments_max else None
        return "other" if self.in_flight >= self.requests_max else None


def refusal(close: bool) -> bytes:
    """The raw 503 of a refused request."""
    head = (
        b"HTTP/1.1 503 Service Unavailable\r\n"
        b"content-type: application/json\r\n"
        b"content-length: %d\r\n"
        b"retry-after: 1\r\n"
        b"request-id: req_%s\r\n" % (len(AT_CAPACITY), secrets.token_urlsafe(12).encode())
    )
    return head + (b"connection: close\r\n\r\n" if close else b"\r\n") + AT_CAPACITY


class Split(msgspec.Struct):
    """What the door made of the bytes a connection read: the answers to send
    (`answers`), the bytes to hand to hypercorn (`passed`), the bytes held
    back until the rest of a request arrives (`held`), whether the
    connection is to be closed after the answers (`close`), and whether
    `passed` starts with a request the door let in and already counted in
    flight (`admitted`: the app must not count it again)."""

    answers: list[bytes]
    passed: bytes
    held: bytes
    close: bool = False
    admitted: bool = False


def split(door: Door, data: bytes) -> Split:
    """Answer the complete requests at the front of `data` that the door
    refuses, and count in flight the first one it lets in; see the
    module's doc."""
    answers: list[bytes] = []
    position = 0
    while position < len(data):
        # Where h11 ends a head: a blank line, bare line feeds allowed.
        found = _HEAD_END.search(data, position, position + HEAD_MAX)
        if found is None:
            if len(data) - position < HEAD_MAX:
                return Split(answers, b"", data[position:])
            break
        end = found.start() - 1
        if end < position or data[end : found.end()] != b"\r\n\r\n":
            break  # a head ended by bare line feeds: hypercorn's to read
        parsed = _head(data[position:end])
        if parsed is None:
            break
        method, path, length, close = parsed
        kind = door.refuses(method, path)
        if kind is None:
            door.in_flight += 1
            return Split(answers, data[position:], b"", admitted=True)
        if length > BODY_HELD_MAX:
            break
        total = end + 4 + length - position
        if len(data) - position < total:
            return Split(answers, b"", data[position:])
        door.refused(kind)
        answers.append(refusal(close))
        position += total
        if close:
            return Split(answers, b"", b"", close=True)
    return Split(answers, data[position:], b"")


def _head(head: bytes) -> tuple[str, str, int, bool] | None:
    """(method, path, body length, connection: close) of a plain HTTP/1.1
    request head, or None for anything else (left to hypercorn). Where h11
    could read the head's lines or names otherwise (a bare CR or LF, a
    folded line, a space before a colon), the door leaves it to hypercorn:
    framing a refused request differently from h11 would let the bytes
    after it be read as another request."""
    if head.count(b"\n") != head.count(b"\r\n") or head.count(b"\r") != head.count(b"\r\n"):
        return None
    lines = head.split(b"\r\n")
    request_line = lines[0].split(b" ")
    if len(request_line) != 3 or request_line[2] != b"HTTP/1.1":
        return None
    method, target = request_line[0], request_line[1]
    if not method.isalpha() or not target.startswith(b"/"):
        return None
    length, close, seen_length = 0, False, False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            return None
        name = name.lower()
        if name == b"content-length":
            # Framing must be beyond doubt: one length, digits only.
            if not value.strip().isdigit() or seen_length:
                return None
            length, seen_length = int(value), True
        elif name in (b"transfer-encoding", b"expect", b"upgrade"):
            return None
        elif name == b"connection":
            close = b"close" in value.lower()
    path = target.split(b"?", 1)[0]
    return method.decode("ascii"), path.decode("latin-1"), length, close
