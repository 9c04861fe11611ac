"""Which `return_url` a PaymentIntent may carry.

The node serves the URL back as a redirect (after a 3-D Secure challenge) and
as `next_action.redirect_to_url.return_url`, so it must be a place a customer
may safely be sent from the node's own origin: https only (http for a local
address in test mode, for developers), no control characters that could
split a response header, no credentials, a bounded length. Pure: no
resolution, no I/O.
"""

from __future__ import annotations

import ipaddress
import urllib.parse

RETURN_URL_CHARS_MAX = 2048


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def return_url_allowed(url: str, livemode: bool) -> bool:
    """Whether `url` may be stored as an intent's return URL."""
    if not 0 < len(url) <= RETURN_URL_CHARS_MAX:
        return False
    # Control characters (CR and LF above all) and spaces would break the
    # Location header or smuggle text into it; a real URL escapes them.
    if any(ord(character) <= 0x20 or ord(character) == 0x7F for character in url) or "\\" in url:
        return False
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    if not host or parts.username is not None or parts.password is not None:
        return False
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and not livemode and _loopback(host)
