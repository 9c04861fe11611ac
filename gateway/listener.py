"""The node's HTTP listener: hypercorn's connections behind our own accept loop.

hypercorn's `serve` gives no hold on a connection, and a payment API needs
three:

- a cap on the connections one client address holds at once (past it, the
  next one is answered 503 and closed), so one client cannot take every
  socket the node has;
- a deadline for a new connection's first request headers, so a client that
  connects and dribbles bytes (slowloris) is cut off;
- a way for the app to end a connection after an answer it gave before
  reading the body (an oversized body, a refused key): hypercorn would
  otherwise keep the connection while the unread body fills the app's queue,
  and the client's next request on it waits until someone gives up.

The app is wrapped (`guarded_app`) so that it finds its connection's guard in
the ASGI scope's `state`, which hypercorn copies per request from the
connection's.
"""

from __future__ import annotations

import functools
import math
import os
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import msgspec
import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.events import Closed, RawData, Updated
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from gateway.door import AT_CAPACITY, Door, split

log = structlog.get_logger("gateway.listener")

GUARD_KEY = "payments.connection_guard"

REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s"
)
REFUSED_BODY = (
    b'{"error": {"type": "api_error", "code": "too_many_connections",'
    b' "message": "This client holds too many open connections. Reuse one, or retry shortly."}}'
)


class ConnectionLimits(msgspec.Struct, frozen=True):
    per_client_max: int = 256
    header_timeout_s: float = 10.0
    # Requests the node works on at once; one more is answered 503 at the
    # door, before any parsing, routing or authentication (0: no bound).
    # Past capacity this keeps the admitted requests' latency: a request
    # costs the node about 4 ms of CPU, so 64 in flight is a quarter second.
    requests_in_flight_max: int = 64
    # How long a connection the app asked to close may linger while the
    # client reads the answer; past it the socket is closed whatever it holds.
    close_linger_s: float = 1.0


class ConnectionGuard:
    """One connection's deadline, moved as requests come and go: the first
    request's head within `header_timeout_s`, none while a request is
    served, `keep_alive_s` while idle between requests (hypercorn's
    keep-alive timer, which would start a task after every request), a
    short linger once an answer asked to close. While the server stops,
    an idle connection closes at once."""

    def __init__(self, scope: trio.CancelScope, limits: ConnectionLimits, keep_alive_s: float, stopping: trio.Event) -> None:
        self.scope = scope
        self.limits = limits
        self.keep_alive_s = keep_alive_s
        self.stopping = stopping
        self.idle = True
        self.closing = False
        # The door let in this connection's next request and counted it in
        # flight; the app takes it over (gateway/door.py).
        self.admitted = False

    def request_started(self) -> None:
        self.set_idle(False)

    def set_idle(self, idle: bool) -> None:
        if self.closing:
            return
        self.idle = idle
        if not idle:
            self.scope.deadline = math.inf
        elif self.stopping.is_set():
            self.scope.cancel()
        else:
            self.scope.deadline = trio.current_time() + self.keep_alive_s

    def close_soon(self) -> None:
        self.closing = True
        self.scope.deadline = min(self.scope.deadline, trio.current_time() + self.limits.close_linger_s)


class GuardedConnection(TCPServer):
    """hypercorn's connection, ended as soon as its client's side is done
    (hypercorn itself would keep it, and its place under the client's cap,
    until its keep-alive timer runs out), answering the requests the door
    refuses without handing them to hypercorn (gateway/door.py), and timed
    out by its guard's deadline instead of hypercorn's idle task."""

    def __init__(
        self, app: Any, config: HypercornConfig, context: WorkerContext, state: Any, stream: Any, scope: trio.CancelScope, door: Door, guard: ConnectionGuard
    ) -> None:
        super().__init__(app, config, context, state, stream)
        self._connection_scope = scope
        self._door = door
        self._guard = guard

    async def _read_data(self) -> None:
        door, guard = self._door, self._guard
        try:
            held = b""
            while True:
                try:
                    data = await self._receive()
                except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                    break
                if data and door.requests_max and (held or self._between_requests()):
                    # hypercorn may have answered the request the door let
                    # in without the app (a malformed one, say).
                    self._give_back_admitted()
                    taken = split(door, held + bytes(data))
                    held = taken.held
                    guard.admitted = taken.admitted
                    if taken.answers:
                        guard.set_idle(True)
                        await self._send_now(b"".join(taken.answers))
                    if taken.close:
                        break
                    data = taken.passed
                    if not data:
                        continue
                await self.protocol.handle(RawData(bytes(data)))
                if data == b"":
                    break
            await self.protocol.handle(Closed())
        finally:
            self._give_back_admitted()
            # The client closed or went silent past the read timeout; hypercorn
            # has already told the app. Nothing is left to serve.
            self._connection_scope.cancel()

    def _give_back_admitted(self) -> None:
        """Uncount a request the door let in that the app never took over."""
        if self._guard.admitted:
            self._guard.admitted = False
            self._door.in_flight -= 1

    async def protocol_send(self, event: Any) -> None:
        if isinstance(event, Updated):
            self._guard.set_idle(event.idle)
        else:
            await super().protocol_send(event)

    async def _idle_timeout(self) -> None:
        """hypercorn's keep-alive task: nothing to do, the guard's deadline
        times the connection out."""

    async def _receive(self) -> bytes:
        if self.config.read_timeout is None:
            # No timeout: no cancel scope to make and close at every read.
            return await self.stream.receive_some(MAX_RECV)
        with trio.fail_after(self.config.read_timeout):
            return await self.stream.receive_some(MAX_RECV)

    async def _send_now(self, answer: bytes) -> None:
        """Send the door's answers: straight into the socket's buffer when
        nothing else is being sent on it (a small 503 nearly always fits),
        else, or for what did not fit, after the answers before it, through
        hypercorn's send (its lock keeps the order)."""
        if not self.send_lock.locked():
            try:
                sent = os.write(self.stream.socket.fileno(), answer)
            except BlockingIOError:
                sent = 0  # the buffer is full: hypercorn's send waits for room
            except OSError:
                # The client is gone; the next read says so.
                return
            answer = answer[sent:]
        if answer:
            await self.protocol_send(RawData(answer))

    def _between_requests(self) -> bool:
        """Whether hypercorn holds nothing of a request on this connection:
        idle, or done with the last one (every byte of its answer already
        handed to `protocol_send`, whose lock keeps the door's answers
        after them) and not yet ready for the next. A client that sends
        its next request as soon as it has read an answer usually finds
        the connection in the second state on a busy node."""
        protocol = getattr(self.protocol, "protocol", None)
        connection = getattr(protocol, "connection", None)
        if not isinstance(connection, h11.Connection) or connection.trailing_data[0]:
            return False
        if connection.their_state is h11.DONE and connection.our_state is h11.DONE:
            return True
        return connection.their_state is h11.IDLE and connection.our_state is h11.IDLE and protocol.stream is None


def guarded_app(app: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """`app`, telling its connection's guard when a request starts and when
    an answer asked for the connection to be closed."""

    async def asgi(scope: dict[str, Any], receive: Callable[..., Awaitable[Any]], send: Callable[..., Awaitable[None]]) -> None:
        guard = scope.get("state", {}).get(GUARD_KEY) if scope["type"] == "http" else None
        if guard is None:
            await app(scope, receive, send)
            return
        guard.request_started()
        closing = False

        async def send_watched(message: dict[str, Any]) -> None:
            nonlocal closing
            if message["type"] == "http.response.start":
                closing = any(name.lower() == b"connection" and b"close" in value.lower() for name, value in message.get("headers", ()))
            if closing and message["type"] == "http.response.body" and not message.get("more_body", False):
                # Before the last part goes out: sending it is where hypercorn
                # may wait for the unread body to drain, which never happens.
                guard.close_soon()
            await send(message)

        await app(scope, receive, send_watched)

    return asgi


def admitting_app(app: Callable[..., Awaitable[None]], door: Door) -> Callable[..., Awaitable[None]]:
    """`app`, counting the requests in it on `door` and answering 503 with
    Retry-After at once those the door refuses (gateway/door.py). The
    refusal closes the connection when the request has a body, which is
    left unread."""

    async def asgi(scope: dict[str, Any], receive: Callable[..., Awaitable[Any]], send: Callable[..., Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        guard = scope.get("state", {}).get(GUARD_KEY)
        if guard is not None and guard.admitted:
            # Let in and counted by the door as its head was read.
            guard.admitted = False
        else:
            kind = door.refuses(scope.get("method", ""), scope.get("path", ""))
            if kind is not None:
                door.refused(kind)
                await _refuse_at_capacity(scope, send)
                return
            door.in_flight += 1
        try:
            await app(scope, receive, send)
        finally:
            door.in_flight -= 1

    return asgi


async def _refuse_at_capacity(scope: dict[str, Any], send: Callable[..., Awaitable[None]]) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(AT_CAPACITY)).encode()),
        (b"retry-after", b"1"),
        (b"request-id", ("req_" + secrets.token_urlsafe(12)).encode()),
    ]
    if any((name == b"content-length" and value != b"0") or name == b"transfer-encoding" for name, value in scope.get("headers", ())):
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": AT_CAPACITY})


async def serve_guarded(
    app: Any,
    config: HypercornConfig,
    limits: ConnectionLimits,
    *,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    refused: Callable[[str], None] = lambda kind: None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` (plain HTTP/1.1) on `config.bind` until `shutdown_trigger`
    returns, then let requests in flight finish for `config.graceful_timeout`.
    Reports the bound URLs through `task_status`."""
    door = Door(limits.requests_in_flight_max, refused)
    wrapped = wrap_app(guarded_app(admitting_app(app, door)), config.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    held: dict[str, int] = {}
    guards: set[ConnectionGuard] = set()
    stopping = trio.Event()

    async def handle(stream: trio.SocketStream) -> None:
        try:
            client = stream.socket.getpeername()[0]
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        if held.get(client, 0) >= limits.per_client_max:
            log.warning("connection_refused", reason="per_client_max", connections=held[client])
            with trio.move_on_after(1):
                await stream.send_all(REFUSED % (len(REFUSED_BODY), REFUSED_BODY))
            await trio.aclose_forcefully(stream)
            return
        held[client] = held.get(client, 0) + 1
        try:
            with trio.CancelScope(deadline=trio.current_time() + limits.header_timeout_s) as scope:
                guard = ConnectionGuard(scope, limits, config.keep_alive_timeout, stopping)
                guards.add(guard)
                state = ConnectionState({**lifespan_state, GUARD_KEY: guard})
                await GuardedConnection(wrapped, config, context, state, stream, scope, door, guard)
        finally:
            guards.discard(guard)
            held[client] -= 1
            if not held[client]:
                del held[client]
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            sockets = config.create_sockets()
            listeners = []
            binds = []
            for sock in sockets.insecure_sockets:
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            async with trio.open_nursery() as accepting:
                accepting.start_soon(functools.partial(trio.serve_listeners, handle, listeners, handler_nursery=connections))
                task_status.started(binds)
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
            # Idle keep-alive connections close at once; busy ones get the
            # graceful timeout to finish their request.
            await context.terminated.set()
            stopping.set()
            for guard in list(guards):
                if guard.idle:
                    guard.scope.cancel()
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


def hypercorn_config(host: str, port: int) -> HypercornConfig:
    """The HTTP server settings of the node (and of the simulators and the
    bench's bare baseline, so that they are compared on equal terms)."""
    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    # No access log, and no error log with tracebacks: ours logs what matters.
    config.accesslog = None
    config.errorlog = None
    # Idle keep-alive connections hold a graceful shutdown open until this
    # runs out; requests still running after it are cut off unacknowledged,
    # and the actors still journal what they started.
    config.graceful_timeout = 3
    config.keep_alive_timeout = 75
    # Bounds on what a client may send before the app sees it.
    config.h11_max_incomplete_size = 16 * 1024
    config.h2_max_inbound_frame_size = 16 * 1024
    return config
