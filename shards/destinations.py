"""Where webhooks may go: the destination policy and the one lookup.

A merchant names a URL and the node sends signed POSTs there, from inside
the operator's network. Left alone, that lets any merchant aim the node at
itself (its API, Valkey, PostgreSQL), at its neighbours on a private
network, or at a cloud metadata service (169.254.169.254, 100.100.100.200).
So a destination is judged by the address a connection would actually
reach, never by how the URL spells it:

- `address_allowed` is the policy: public unicast addresses only. An IPv6
  address that leads to an IPv4 one (IPv4-mapped, NAT64, 6to4) is judged by
  that IPv4 address;
- `literal_address` reads a host the way the system resolver reads numbers
  (`2130706433`, `0x7f.1` and `127.1` are all 127.0.0.1), so the static
  check at create time sees what a connection would;
- `resolve_destination` looks a name up once and refuses it whole if any
  answer is not allowed. The caller must then connect to those very
  addresses (workers/webhook_sender.py pins them): a second lookup could answer
  differently (DNS rebinding).

`allow_private` (`payments up --allow-private-webhooks`) switches the policy
off for local development, where the receiver is on loopback.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
GetAddrInfo = Callable[..., Awaitable[list[tuple[Any, ...]]]]

REFUSED_TEXT = "destination address not allowed"

# IANA's special-purpose IPv4 ranges a webhook has no business reaching.
# Python's `is_global` is checked as well, but this table is the one to
# read, and it also holds ranges Python counts as global (192.0.0.0/24,
# 192.88.99.0/24, multicast).
REFUSED_IPV4 = tuple(
    ipaddress.IPv4Network(network)
    for network in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the host itself
        "10.0.0.0/8",  # private (RFC 1918)
        "100.64.0.0/10",  # shared address space: carrier NAT, cloud metadata (100.100.100.200)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local: cloud metadata (169.254.169.254)
        "172.16.0.0/12",  # private (RFC 1918)
        "192.0.0.0/24",  # IETF protocol assignments (NAT64 discovery and others)
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "192.168.0.0/16",  # private (RFC 1918)
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255 broadcast
    )
)

REFUSED_IPV6 = tuple(
    ipaddress.IPv6Network(network)
    for network in (
        "::/96",  # unspecified, loopback and the deprecated IPv4-compatible ::a.b.c.d
        "64:ff9b:1::/48",  # local-use NAT64: translates to whatever the local network chose
        "100::/64",  # discard-only
        "2001::/32",  # Teredo: the IPv4 client inside is obfuscated, so it cannot be judged
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
        "fc00::/7",  # unique local (the IPv6 private range)
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated, still routed inside some networks)
        "ff00::/8",  # multicast
    )
)

# The well-known NAT64 prefix: 64:ff9b::a.b.c.d is sent to a.b.c.d.
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")

# inet_aton reads decimal, octal (0177) and hex (0x7f) parts joined by dots.
_INET_ATON_CHARACTERS = frozenset("0123456789abcdefx.")


class DestinationRefused(Exception):
    """A destination is not allowed: nothing was sent."""

    def __init__(self, host: str, addresses: list[IPAddress]) -> None:
        super().__init__(REFUSED_TEXT)
        self.host = host
        self.addresses = addresses


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a packet to `address` ends up at by translation or
    tunnel (IPv4-mapped, NAT64 with the well-known prefix, 6to4); None when
    there is none."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address.sixtofour


def _ipv4_public(address: ipaddress.IPv4Address) -> bool:
    return address.is_global and not any(address in network for network in REFUSED_IPV4)


def _ipv6_public(address: ipaddress.IPv6Address) -> bool:
    return (
        address.is_global
        and not address.is_reserved
        and not address.is_multicast
        and not address.is_site_local
        and not any(address in network for network in REFUSED_IPV6)
    )


def address_allowed(address: IPAddress) -> bool:
    """Whether a webhook may be sent to `address`: True only for public
    unicast addresses. An IPv6 address embedding an IPv4 one is refused when
    that IPv4 address is; an IPv4-mapped or NAT64 address is otherwise judged
    by its IPv4 address alone, as it is only a way of writing it."""
    if isinstance(address, ipaddress.IPv4Address):
        return _ipv4_public(address)
    embedded = embedded_ipv4(address)
    if embedded is not None and not _ipv4_public(embedded):
        return False
    if address.ipv4_mapped is not None or address in NAT64_WELL_KNOWN:
        return True
    return _ipv6_public(address)


def literal_address(host: str) -> IPAddress | None:
    """The address a host stands for by itself, or None for a name. Reads
    numbers as the system resolver does: IPv6 (with or without brackets, with
    a zone), dotted quads, and the inet_aton forms (`2130706433`, `0x7f.1`,
    `127.1`, `0177.0.0.1`). A trailing dot is ignored."""
    host = host.strip().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        if not host or not set(host.lower()) <= _INET_ATON_CHARACTERS:
            return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def is_local_name(host: str) -> bool:
    """Whether a host name is reserved for the local machine (`localhost`
    and its subdomains, RFC 6761), whatever its case or trailing dot."""
    name = host.strip().rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


async def resolve_destination(
    host: str, port: int, *, allow_private: bool, getaddrinfo: GetAddrInfo | None = None
) -> list[IPAddress]:
    """Every address `host` resolves to for a TCP connection to `port`, in
    the resolver's order without repeats, from exactly one lookup.

    Raises DestinationRefused if any of them is not allowed, unless
    allow_private: which answer a client picks is up to the resolver, that
    is up to whoever runs the name's DNS, so a name with one internal address
    is refused whole. Raises OSError when the name does not resolve.
    `getaddrinfo` replaces trio.socket.getaddrinfo (tests)."""
    lookup = trio.socket.getaddrinfo if getaddrinfo is None else getaddrinfo
    answers = await lookup(host, port, type=trio.socket.SOCK_STREAM)
    addresses = list(
        dict.fromkeys(
            ipaddress.ip_address(sockaddr[0])
            for family, _type, _proto, _name, sockaddr in answers
            if family in (trio.socket.AF_INET, trio.socket.AF_INET6)
        )
    )
    if not addresses:
        raise OSError(f"{host} has no IPv4 or IPv6 address")
    if not allow_private:
        refused = [address for address in addresses if not address_allowed(address)]
        if refused:
            raise DestinationRefused(host, refused)
    return addresses
