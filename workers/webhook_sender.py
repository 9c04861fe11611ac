"""One webhook try: a POST to a merchant's endpoint, checked against SSRF.

Endpoints are merchants' URLs sent to from inside our network, so each try
looks the host up once, refuses it (a failed try, nothing sent) unless all
its addresses are public (shards/destinations.py), and connects to exactly
those addresses; redirects are not followed. `--allow-private-webhooks`
lifts the address rule for local development.

The signature is Stripe's: `Stripe-Signature: t=<unix>,v1=<hex>` with
v1 = HMAC-SHA256(secret, "<t>.<body>").
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import ssl
from collections.abc import Iterable
from types import TracebackType
from typing import Any, NamedTuple

import httpcore
import httpx
import structlog
import trio

from shards.destinations import REFUSED_TEXT, DestinationRefused, GetAddrInfo, IPAddress, resolve_destination

log = structlog.get_logger("workers.webhook_sender")

CONNECTIONS_MAX = 1000
KEEPALIVE_CONNECTIONS_MAX = 100
KEEPALIVE_EXPIRY_S = 5.0


def signature_header(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class Pin(NamedTuple):
    """The addresses checked for one delivery attempt's host and port."""

    host: str
    port: int
    addresses: tuple[IPAddress, ...]


# Set by WebhookSender.post around one request, read by PinnedBackend when
# that request opens a connection (httpcore connects in the requesting task).
_pin: contextvars.ContextVar[Pin | None] = contextvars.ContextVar("webhook_pin", default=None)


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to the addresses checked for the delivery
    attempt running in this task: the URL's host name is never looked up a
    second time between the check and the connection, so DNS cannot answer
    a public address to the one and an internal one to the other. TLS is
    still started (by httpcore) for the URL's host name, so SNI and the
    certificate check use the name, not the address. `backend` opens the
    connections to numeric addresses (tests wrap it)."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.backend = backend or httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pin = _pin.get()
        # Only WebhookSender.post sends, and it pins the request's own host;
        # anything else is a bug, and the pin's addresses were checked anyway.
        assert pin is not None and (pin.host, pin.port) == (host, port), f"no checked address for {host}:{port}"
        failure: httpcore.ConnectError | None = None
        for address in pin.addresses:
            try:
                return await self.backend.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as error:
                failure = error  # the next checked address may answer
        assert failure is not None  # resolve_destination never returns no address
        raise failure

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


# Failures a try records by the library's class name (ConnectError,
# ReadTimeout, RemoteProtocolError, ...).
_SEND_ERRORS = (httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError, httpcore.UnsupportedProtocol)


class WebhookSender:
    """POSTs a body to endpoint URLs, one try per call.

    Each try looks the host up once, refuses it unless every address is
    allowed (shards/destinations.py; all are when allow_private), and then
    connects to one of those addresses only (PinnedBackend). A connection
    kept alive for reuse was opened the same way, to addresses checked by the
    try that opened it. TLS is verified for the URL's host name. Redirects
    are never followed: httpcore does not follow them, and a 3xx is an
    answer like any other."""

    def __init__(
        self,
        *,
        timeout_s: float,
        allow_private: bool = False,
        getaddrinfo: GetAddrInfo | None = None,
        backend: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connections_max: int = CONNECTIONS_MAX,
        keepalive_connections_max: int = KEEPALIVE_CONNECTIONS_MAX,
    ) -> None:
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        self.getaddrinfo = getaddrinfo
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            max_connections=connections_max,
            max_keepalive_connections=keepalive_connections_max,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
            network_backend=PinnedBackend(backend),
        )

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None) -> None:
        await self._pool.aclose()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
        """Send once. Returns (status code, None) when the endpoint answered,
        whatever the status, and (None, error text) when it did not: the URL
        is invalid, the host does not resolve, a destination is not allowed
        (then nothing was sent), the connection failed, or no answer came
        within timeout_s (the lookup included)."""
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL:
            return None, "invalid URL"
        host = target.raw_host.decode("ascii")
        port = target.port or (443 if target.scheme == "https" else 80)
        request_url = httpcore.URL(scheme=target.raw_scheme, host=target.raw_host, port=target.port, target=target.raw_path)
        # Host is written here, not by httpcore, which leaves IPv6 unbracketed.
        request_headers = [("Host", target.netloc.decode("ascii")), *headers.items()]
        timeouts = {"timeout": {"connect": self.timeout_s, "read": self.timeout_s, "write": self.timeout_s, "pool": self.timeout_s}}
        try:
            with trio.fail_after(self.timeout_s):
                try:
                    addresses = await resolve_destination(host, port, allow_private=self.allow_private, getaddrinfo=self.getaddrinfo)
                except DestinationRefused as refused:
                    log.warning("webhook_destination_refused", host=host, addresses=[str(address) for address in refused.addresses])
                    return None, REFUSED_TEXT
                except OSError as failure:
                    return None, f"cannot resolve {host}: {failure.strerror or failure}"
                token = _pin.set(Pin(host, port, tuple(addresses)))
                try:
                    async with self._pool.stream("POST", request_url, headers=request_headers, content=body, extensions=timeouts) as response:
                        return response.status, None
                finally:
                    _pin.reset(token)
        except trio.TooSlowError:
            return None, f"no answer within {self.timeout_s:g} s"
        except _SEND_ERRORS as failure:
            return None, type(failure).__name__

