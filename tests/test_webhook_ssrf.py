"""Webhook SSRF: a merchant's endpoint URL may not make the node send to
itself, its private network or a metadata service, whatever the mode, the
spelling of the address, or the DNS answers (shards/destinations.py and
WebhookSender in workers/webhook_sender.py).

The sending tests run real HTTP(S) servers on loopback. Where a *public*
server is needed, a fake network backend routes one public address to a
local server, so nothing leaves the machine; names are answered by a
scripted resolver handed to the sender.
"""

from __future__ import annotations

import asyncio
import datetime
import http.server
import ipaddress
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpcore
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shards.destinations import DestinationRefused, address_allowed, literal_address, resolve_destination
from shards.webhooks import EndpointUrlError, check_url
from tests.conftest import NodeProcess
from tests.test_webhooks import client_for, wait_for
from workers.webhook_sender import WebhookSender

REFUSED = "destination address not allowed"
PUBLIC = "93.184.216.34"  # stands for any public server; routed to loopback by FakeInternet
TEST_TIMEOUT_S = 20

# ------------------------------------------------------- the policy tables

INTERNAL_HOSTS = [
    # IPv4
    "100.64.0.1",  # shared address space (carrier NAT)
    "100.127.255.254",
    "100.100.100.200",  # a cloud's metadata service
    "169.254.169.254",  # the other clouds' metadata service
    "169.254.0.1",
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "0.1.2.3",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.0.1",
    "192.168.255.255",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.0.170",
    "192.0.2.1",
    "198.18.0.1",
    "198.51.100.7",
    "203.0.113.9",
    # IPv6
    "[::1]",
    "[::]",
    "[fe80::1]",
    "[fe80::1%25eth0]",
    "[fc00::1]",
    "[fd12:3456:789a::1]",
    "[fec0::1]",
    "[ff02::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:169.254.169.254]",
    "[::ffff:10.0.0.1]",
    "[::ffff:100.100.100.200]",
    "[::127.0.0.1]",  # IPv4-compatible
    "[64:ff9b::7f00:1]",  # NAT64 of 127.0.0.1
    "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
    "[64:ff9b:1::1]",  # local-use NAT64
    "[2002:7f00:1::]",  # 6to4 of 127.0.0.1
    "[2002:a9fe:a9fe::1]",  # 6to4 of 169.254.169.254
    "[2001:0:4136:e378:8000:63bf:3fff:fdd2]",  # Teredo
    "[2001:db8::1]",
    # IPv4 as inet_aton reads it
    "2130706433",
    "0x7f000001",
    "0x7f.1",
    "127.1",
    "0177.0.0.1",
    "0",
    "127.0.0.1.",
    "169.254.43518",
    "127。0。0。1",  # ideographic full stops are dots to IDNA
]

LOCAL_NAMES = ["localhost", "LOCALHOST", "localhost.", "api.localhost", "a.b.LocalHost."]

PUBLIC_HOSTS = [
    "8.8.8.8",
    "1.1.1.1",
    PUBLIC,
    "100.63.255.255",  # just below shared address space
    "100.128.0.0",  # just above it
    "172.32.0.1",
    "[2606:4700:4700::1111]",
    "[::ffff:8.8.8.8]",
    "[64:ff9b::808:808]",
    "[2002:808:808::1]",
    "hooks.example.com",
    "127.0.0.1.example.com",  # a name: judged by its addresses at delivery
]


INTERNAL_REFUSAL = r"^Webhook endpoints may not point at loopback, link-local, private or other internal addresses\.$"
# httpx will not send to a dotted quad with leading zeros at all.
UNSENDABLE = {"0177.0.0.1"}


@pytest.mark.parametrize("host", INTERNAL_HOSTS)
def test_an_internal_address_in_any_spelling_is_refused_in_both_modes(host: str) -> None:
    refusal = r"^Invalid URL\.$" if host in UNSENDABLE else INTERNAL_REFUSAL
    for scheme in ("http", "https"):
        with pytest.raises(EndpointUrlError, match=refusal):
            check_url(f"{scheme}://{host}/hook", livemode=False)
    with pytest.raises(EndpointUrlError, match=refusal):
        check_url(f"https://{host}:8443/hook", livemode=True)


@pytest.mark.parametrize("host", [host for host in INTERNAL_HOSTS if "。" not in host])  # IDNA's dots are httpx's to read
def test_the_policy_refuses_what_the_resolver_would_reach(host: str) -> None:
    address = literal_address(host)
    assert address is not None, "a number, not a name"
    assert not address_allowed(address)


@pytest.mark.parametrize("host", LOCAL_NAMES)
def test_localhost_names_are_refused_in_both_modes(host: str) -> None:
    for livemode in (False, True):
        with pytest.raises(EndpointUrlError, match=r"^Webhook endpoints may not point at a local host\.$"):
            check_url(f"https://{host}/hook", livemode)


@pytest.mark.parametrize("host", PUBLIC_HOSTS)
def test_public_destinations_are_accepted_in_both_modes(host: str) -> None:
    assert check_url(f"http://{host}/hook", livemode=False) == f"http://{host}/hook"
    assert check_url(f"https://{host}/hook", livemode=True) == f"https://{host}/hook"
    address = literal_address(host)
    if address is not None:
        assert address_allowed(address)


def test_allow_private_lets_loopback_through_but_live_mode_still_needs_https() -> None:
    for url in ("http://127.0.0.1:8080/hooks", "http://localhost/hooks", "http://[::1]:9/h", "http://2130706433/"):
        assert check_url(url, livemode=False, allow_private=True) == url
    assert check_url("https://10.0.0.8/hooks", livemode=True, allow_private=True) == "https://10.0.0.8/hooks"
    with pytest.raises(EndpointUrlError, match=r"^Live-mode webhook endpoints must use https\.$"):
        check_url("http://127.0.0.1/hooks", livemode=True, allow_private=True)


# ------------------------------------------------------------- resolving


class ScriptedResolver:
    """A getaddrinfo whose n-th lookup gets the n-th answer (the last one
    again after that), and which keeps the names it was asked for."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> list[tuple[Any, ...]]:  # noqa: A002 - getaddrinfo's names
        self.lookups.append(host)
        answer = self.answers[min(len(self.lookups), len(self.answers)) - 1]
        return [
            (trio.socket.AF_INET6, trio.socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
            if ":" in address
            else (trio.socket.AF_INET, trio.socket.SOCK_STREAM, 6, "", (address, port))
            for address in answer
        ]


async def test_a_name_with_one_internal_address_among_public_ones_is_refused_whole() -> None:
    lookup = ScriptedResolver([PUBLIC, "10.0.0.1", "8.8.8.8"])
    with pytest.raises(DestinationRefused, match=f"^{REFUSED}$") as refused:
        await resolve_destination("mixed.example", 443, allow_private=False, getaddrinfo=lookup)
    assert refused.value.addresses == [ipaddress.ip_address("10.0.0.1")]
    allowed = await resolve_destination("mixed.example", 443, allow_private=True, getaddrinfo=lookup)
    assert allowed == [ipaddress.ip_address(address) for address in (PUBLIC, "10.0.0.1", "8.8.8.8")]
    assert lookup.lookups == ["mixed.example", "mixed.example"]


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "127.1", "0177.0.0.1", "::ffff:127.0.0.1", "localhost"])
async def test_odd_numeric_hosts_resolve_to_loopback_and_are_refused(host: str) -> None:
    """The system resolver, not a fake: these are what a connection reaches."""
    with pytest.raises(DestinationRefused, match=f"^{REFUSED}$") as refused:
        await resolve_destination(host, 80, allow_private=False)
    loopback = {ipaddress.ip_address(address) for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1")}
    assert set(refused.value.addresses) <= loopback


# ---------------------------------------------------------------- sending


class Recorder:
    """An HTTP(S) server on loopback that keeps each request's path, headers
    and body (and, with TLS, the SNI names it was asked for), and answers
    `status` with `headers`."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.server_names: list[str | None] = []
        received, answer = self.received, (status, headers or {})

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the library's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append((self.path, dict(self.headers), body))
                self.send_response(answer[0])
                for name, value in answer[1].items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None  # quiet: the test reads `received`

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            tls.sni_callback = lambda _socket, name, _context: self.server_names.append(name)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers() -> Iterator[Callable[..., Recorder]]:
    started: list[Recorder] = []

    def start(*args: Any, **options: Any) -> Recorder:
        started.append(Recorder(*args, **options))
        return started[-1]

    yield start
    for server in started:
        server.close()


class FakeInternet(httpcore.AsyncNetworkBackend):
    """The network as the sender sees it: addresses in `routes` lead to a
    local server's port, loopback addresses really are loopback, anything
    else is unreachable. Keeps every (address, port) asked for."""

    def __init__(self, routes: dict[str, int]) -> None:
        self.routes = routes
        self.connects: list[tuple[str, int]] = []
        self.real = httpcore.TrioBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None, socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        if host in self.routes:
            return await self.real.connect_tcp("127.0.0.1", self.routes[host], timeout=timeout)
        if ipaddress.ip_address(host).is_loopback:
            return await self.real.connect_tcp(host, port, timeout=timeout)
        raise httpcore.ConnectError(f"{host} is unreachable in tests")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)  # part of httpcore's backend interface, not a wait of the test's


async def test_dns_rebinding_cannot_turn_the_checked_address_into_loopback(servers: Callable[..., Recorder]) -> None:
    internal, public = servers(), servers()
    internet = FakeInternet({PUBLIC: public.port})
    # The attacker's DNS answers a public address once, loopback ever after:
    # a check by one lookup and a connection by another would reach loopback.
    lookup = ScriptedResolver([PUBLIC], ["127.0.0.1"])
    url = f"http://rebind.attacker.example:{internal.port}/hooks"
    with trio.fail_after(TEST_TIMEOUT_S):
        async with WebhookSender(timeout_s=5, getaddrinfo=lookup, backend=internet) as sender:
            first = await sender.post(url, b'{"n": 1}', {})
            second = await sender.post(url, b'{"n": 2}', {})
    assert first == (200, None), "the first try went to the checked public address"
    assert [body for _, _, body in public.received] == [b'{"n": 1}']
    assert second == (None, REFUSED), "the second try's lookup said loopback: refused"
    assert internet.connects == [(PUBLIC, internal.port)], "one connection, to the checked address, none after the refusal"
    assert internal.received == []
    assert lookup.lookups == ["rebind.attacker.example"] * 2, "one lookup per try"


async def test_the_connection_goes_to_the_checked_address_with_the_url_host_header(servers: Callable[..., Recorder]) -> None:
    local = servers()
    lookup = ScriptedResolver(["127.0.0.1"])
    with trio.fail_after(TEST_TIMEOUT_S):
        async with WebhookSender(timeout_s=5, allow_private=True, getaddrinfo=lookup) as sender:
            answer = await sender.post(f"http://hooks.merchant.example:{local.port}/in?x=1", b"{}", {"Stripe-Signature": "t=1,v1=ab"})
    assert answer == (200, None)
    [(path, headers, body)] = local.received
    assert (path, body) == ("/in?x=1", b"{}")
    assert headers["Host"] == f"hooks.merchant.example:{local.port}"
    assert headers["Stripe-Signature"] == "t=1,v1=ab"


@pytest.mark.parametrize("host", ["127.0.0.1", "2130706433", "0x7f.1", "127.1", "[::ffff:127.0.0.1]", "localhost"])
async def test_a_loopback_destination_is_never_connected_to(servers: Callable[..., Recorder], host: str) -> None:
    local = servers()
    internet = FakeInternet({})
    with trio.fail_after(TEST_TIMEOUT_S):
        async with WebhookSender(timeout_s=5, backend=internet) as sender:
            answer = await sender.post(f"http://{host}:{local.port}/hooks", b"{}", {})
    assert answer == (None, REFUSED)
    assert internet.connects == [] and local.received == []


async def test_a_redirect_to_an_internal_address_is_not_followed(servers: Callable[..., Recorder]) -> None:
    metadata = servers()
    public = servers(302, {"Location": f"http://127.0.0.1:{metadata.port}/latest/meta-data/"})
    internet = FakeInternet({PUBLIC: public.port})
    with trio.fail_after(TEST_TIMEOUT_S):
        async with WebhookSender(timeout_s=5, getaddrinfo=ScriptedResolver([PUBLIC]), backend=internet) as sender:
            answer = await sender.post("http://hooks.example.com/hooks", b"{}", {})
    assert answer == (302, None), "the 302 is the answer"
    assert len(public.received) == 1 and metadata.received == []
    assert internet.connects == [(PUBLIC, 80)]


def _certificate_authority(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A throwaway CA and a server certificate for `name` signed by it:
    (the server's context, a client context trusting only that CA)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    chain = tmp_path / "server.pem"
    chain.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(chain)
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


async def test_tls_is_verified_for_the_url_host_not_the_pinned_address(servers: Callable[..., Recorder], tmp_path: Path) -> None:
    server_tls, client_tls = _certificate_authority(tmp_path, "hooks.merchant.example")
    local = servers(tls=server_tls)
    lookup = ScriptedResolver(["127.0.0.1"])
    with trio.fail_after(TEST_TIMEOUT_S):
        async with WebhookSender(timeout_s=5, allow_private=True, getaddrinfo=lookup, ssl_context=client_tls) as sender:
            good = await sender.post(f"https://hooks.merchant.example:{local.port}/hooks", b"{}", {})
            # Same address, another name: the certificate does not cover it.
            other = await sender.post(f"https://other.merchant.example:{local.port}/hooks", b"{}", {})
    assert good == (200, None)
    assert other == (None, "ConnectError")
    assert local.server_names[0] == "hooks.merchant.example", "SNI names the URL's host, not 127.0.0.1"
    [(_, headers, _)] = local.received
    assert headers["Host"] == f"hooks.merchant.example:{local.port}"


# ------------------------------------------------------------- via a node


def _attempts(database_url: str) -> list[tuple[int | None, str | None]]:
    async def run() -> list[tuple[int | None, str | None]]:
        connection = await asyncpg.connect(database_url)
        try:
            rows = await connection.fetch("SELECT status_code, error FROM webhook_attempts ORDER BY at_ms")
        finally:
            await connection.close()
        return [(row["status_code"], row["error"]) for row in rows]

    return asyncio.run(run())


def test_a_node_without_allow_private_webhooks_refuses_a_loopback_endpoint_in_test_mode(
    new_node: Callable[..., NodeProcess], servers: Callable[..., Recorder]
) -> None:
    node = new_node()
    local = servers()
    with client_for(node, node.secret_key) as client:
        for url in (local.url, f"http://2130706433:{local.port}/hooks", f"http://localhost:{local.port}/hooks", "http://169.254.169.254/latest"):
            response = client.post("/v1/webhook_endpoints", data={"url": url, "enabled_events[0]": "*"})
            assert response.status_code == 400, (url, response.text)
            error = response.json()["error"]
            assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "url", "url_invalid"), url
        created = client.post("/v1/webhook_endpoints", data={"url": "https://hooks.example.com/h", "enabled_events[0]": "*"})
        assert created.status_code == 200, created.text
        moved = client.post(f"/v1/webhook_endpoints/{created.json()['id']}", data={"url": local.url})
        assert moved.status_code == 400 and moved.json()["error"]["param"] == "url"
        assert client.get(f"/v1/webhook_endpoints/{created.json()['id']}").json()["url"] == "https://hooks.example.com/h"


def test_a_loopback_endpoint_stored_while_allowed_is_refused_at_delivery_without_the_flag(
    make_database: Callable[[], str], new_node: Callable[..., NodeProcess], servers: Callable[..., Recorder], tmp_path: Path
) -> None:
    database = make_database()
    one_try = {"PAYMENTS_WEBHOOK_RETRY_SCHEDULE": ""}
    local = servers()
    allowing = new_node(database, tmp_path, "--allow-private-webhooks", environ=one_try)
    with client_for(allowing, allowing.secret_key) as client:
        assert client.post("/v1/webhook_endpoints", data={"url": local.url, "enabled_events[0]": "*"}).status_code == 200
    allowing.kill()
    node = new_node(database, tmp_path, environ=one_try)
    with client_for(node, node.secret_key) as client:
        paid = client.post("/v1/payment_intents", data={"amount": "1000", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"})
        assert paid.json()["status"] == "succeeded", paid.text
        events = client.get("/v1/events", params={"limit": 100}).json()["data"]
    assert events, "the payment raised events for the endpoint"

    def every_event_tried() -> list[tuple[int | None, str | None]] | None:
        attempts = _attempts(database)
        return attempts if len(attempts) >= len(events) else None

    # One try per event (no retries). A try is recorded after its request
    # would have reached the server, so once every event has been tried,
    # anything that got through is already in `local.received`.
    attempts = wait_for(every_event_tried, 30, "a recorded try of every event")
    assert local.received == []
    assert len(attempts) == len(events) and all(attempt == (None, REFUSED) for attempt in attempts), attempts
