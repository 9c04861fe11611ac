"""A minimal keep-alive HTTP/1.1 client on trio streams, for load only.

The load generator competes with the node for the same cores, so every
microsecond it spends is taken from what it measures. Requests are bytes
built from pre-encoded templates; a response is read by finding the end of
its head and its Content-Length, nothing more (h11 does the same job with a
full state machine, for tens of microseconds a request). It serves the
bench's own requests to servers it started on loopback: no chunked bodies,
no pipelining, no redirects followed.

A bounded pool of connections: a request takes a free connection or waits
for one, and that wait counts in its latency, as a client's would.
"""

from __future__ import annotations

import trio

HEAD_BYTES_MAX = 64 * 1024
BODY_BYTES_MAX = 16 * 1024 * 1024
RECEIVE_BYTES = 65_536
REQUEST_TIMEOUT_S = 60.0
# The kind of HttpFailed when no answer came within the timeout.
TIMED_OUT = "http_timeout"


class HttpFailed(Exception):
    """No response: connection refused or reset, a malformed response, or a timeout."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Connection:
    __slots__ = ("host", "port", "stream", "buffer")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.stream: trio.SocketStream | None = None
        self.buffer = bytearray()

    def close(self) -> None:
        """Drop the connection at once (no checkpoint, so it works while cancelled)."""
        if self.stream is not None:
            self.stream.socket.close()
            self.stream = None
        self.buffer.clear()

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send one request, read its response: (status, body)."""
        if self.stream is None:
            self.stream = await trio.open_tcp_stream(self.host, self.port)
        stream = self.stream
        await stream.send_all(request)
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        while end < 0:
            if len(buffer) > HEAD_BYTES_MAX:
                raise HttpFailed("http_head_too_large")
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise HttpFailed("http_connection_closed")
            buffer += data
            end = buffer.find(b"\r\n\r\n")
        head = bytes(buffer[:end]).lower()
        del buffer[: end + 4]
        if not head.startswith(b"http/1.1 ") or len(head) < 12:
            raise HttpFailed("http_bad_status_line")
        status = int(head[9:12])
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            raise HttpFailed("http_no_content_length")
        stop = head.find(b"\r\n", at + 17)
        length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        if length > BODY_BYTES_MAX:
            raise HttpFailed("http_body_too_large")
        while len(buffer) < length:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise HttpFailed("http_connection_closed")
            buffer += data
        body = bytes(buffer[:length])
        del buffer[:length]
        if b"\r\nconnection: close" in head:
            self.close()
        return status, body


class Pool:
    """Up to `size` keep-alive connections to one server."""

    def __init__(self, host: str, port: int, size: int) -> None:
        assert size >= 1
        self._send, self._receive = trio.open_memory_channel[Connection](size)
        for _ in range(size):
            self._send.send_nowait(Connection(host, port))
        self.size = size

    async def request(self, request: bytes, timeout_s: float = REQUEST_TIMEOUT_S) -> tuple[int, bytes]:
        connection = await self._receive.receive()
        try:
            with trio.fail_after(timeout_s):
                return await connection.exchange(request)
        except trio.TooSlowError:
            connection.close()
            raise HttpFailed(TIMED_OUT) from None
        except HttpFailed:
            connection.close()
            raise
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ValueError) as error:
            connection.close()
            raise HttpFailed(f"http_{type(error).__name__}") from None
        except BaseException:
            # Cancelled half-way: the connection's state is unknown.
            connection.close()
            raise
        finally:
            self._send.send_nowait(connection)

    def close(self) -> None:
        while True:
            try:
                self._receive.receive_nowait().close()
            except trio.WouldBlock:
                return


class Templates:
    """Pre-encoded request heads for one server and one key."""

    def __init__(self, host: str, port: int, secret_key: str | None = None) -> None:
        common = f"Host: {host}:{port}\r\nUser-Agent: payments-bench\r\n"
        if secret_key is not None:
            common += f"Authorization: Bearer {secret_key}\r\n"
        self._common = common.encode()

    def post(self, path: str, body: bytes = b"", content_type: bytes = b"application/x-www-form-urlencoded") -> bytes:
        return b"".join(
            (
                b"POST ", path.encode(), b" HTTP/1.1\r\n", self._common,
                b"Content-Type: ", content_type, b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n\r\n", body,
            )
        )

    def get(self, path: str) -> bytes:
        return b"".join((b"GET ", path.encode(), b" HTTP/1.1\r\n", self._common, b"\r\n"))
