"""Webhook endpoints: which URLs a merchant's endpoint may have.

Endpoints are merchants' URLs sent to from inside our network, so the API
refuses, in every mode, a host that names this machine or an internal
address however it is spelt (shards/destinations.py). Names are judged
again, by the addresses they resolve to, at each delivery
(workers/webhook_sender.py). `--allow-private-webhooks` lifts the address
rule for local development.
"""

from __future__ import annotations

import urllib.parse

import httpx

from shards.destinations import address_allowed, is_local_name, literal_address

URL_CHARS_MAX = 2048


class EndpointUrlError(ValueError):
    """A URL an endpoint may not have; the message says why, for the merchant."""


def check_url(url: str, livemode: bool, allow_private: bool = False) -> str:
    """The URL, if an endpoint may have it; else EndpointUrlError saying why.

    In every mode the host may not be `localhost` (or under it) nor a literal
    address that is not public (loopback, private, link-local, shared, ...;
    shards/destinations.py), read as a connection would read it, so
    `http://2130706433/` is 127.0.0.1. Live mode also needs https and a
    dotted, non-`.local` name. allow_private lifts the host rules, not https.
    Names are judged again, by their addresses, at each delivery."""
    if len(url) > URL_CHARS_MAX:
        raise EndpointUrlError(f"The URL must be at most {URL_CHARS_MAX} characters.")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # urlsplit checks the port only when it is read
        # The host as the sender will connect to it (IDNA, `。` read as `.`).
        host = httpx.URL(url).raw_host.decode("ascii")
    except (ValueError, httpx.InvalidURL):
        raise EndpointUrlError("Invalid URL.") from None
    if port == 0:
        raise EndpointUrlError("Invalid URL: port 0 cannot be reached.")
    if parts.scheme not in ("http", "https") or not parts.hostname or not host:
        raise EndpointUrlError("Invalid URL: it must be an absolute http or https URL.")
    if parts.username is not None or parts.password is not None:
        raise EndpointUrlError("Invalid URL: credentials may not be part of the URL.")
    if any(character.isspace() or ord(character) < 32 for character in url):
        raise EndpointUrlError("Invalid URL.")
    if livemode and parts.scheme != "https":
        raise EndpointUrlError("Live-mode webhook endpoints must use https.")
    if allow_private:
        return url
    if is_local_name(host):
        raise EndpointUrlError("Webhook endpoints may not point at a local host.")
    address = literal_address(host)
    if address is not None and not address_allowed(address):
        raise EndpointUrlError("Webhook endpoints may not point at loopback, link-local, private or other internal addresses.")
    name = host.rstrip(".")
    if livemode and address is None and (name.endswith(".local") or "." not in name):
        raise EndpointUrlError("Live-mode webhook endpoints may not point at a local host.")
    return url
