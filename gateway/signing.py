"""Signed requests, against replay and tampering.

A merchant can require every request to carry

    Payments-Signature: t=<unix seconds>,nonce=<random>,v1=<hex>

where v1 is HMAC-SHA256 under the merchant's signing secret of

    "<t>.<nonce>.<METHOD>.<path with query>." + body

The server refuses a bad signature, a timestamp more than `TOLERANCE_S` away
from its clock, and a nonce it has already seen within that window. `sign`
is the client helper; it needs only the standard library.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

HEADER = "Payments-Signature"
TOLERANCE_S = 300
NONCE_CHARS_MAX = 64


def _message(timestamp: int, nonce: str, method: str, path_with_query: str, body: bytes) -> bytes:
    return f"{timestamp}.{nonce}.{method.upper()}.{path_with_query}.".encode() + body


def sign(
    secret: str, method: str, path_with_query: str, body: bytes = b"", *, now_s: int | None = None, nonce: str | None = None
) -> str:
    """The `Payments-Signature` header value for one request."""
    timestamp = int(time.time()) if now_s is None else now_s
    nonce = secrets.token_hex(16) if nonce is None else nonce
    digest = hmac.new(secret.encode(), _message(timestamp, nonce, method, path_with_query, body), hashlib.sha256)
    return f"t={timestamp},nonce={nonce},v1={digest.hexdigest()}"


class SignatureError(Exception):
    """Why a signature was refused; the message is safe to show the caller."""


def verify(secret: str, header: str | None, method: str, path_with_query: str, body: bytes, now_s: int) -> str:
    """Check a signature; return its nonce (the caller checks it is fresh)."""
    if not header:
        raise SignatureError(f"This merchant requires signed requests: send a {HEADER} header.")
    fields: dict[str, str] = {}
    for part in header.split(",")[:8]:
        name, _, value = part.strip().partition("=")
        fields[name] = value
    try:
        timestamp = int(fields["t"])
        nonce = fields["nonce"]
        given = fields["v1"]
    except (KeyError, ValueError):
        raise SignatureError(f"The {HEADER} header is malformed: expected t=<unix>,nonce=<random>,v1=<hex>.") from None
    if not (1 <= len(nonce) <= NONCE_CHARS_MAX and nonce.isascii() and nonce.isprintable()):
        raise SignatureError(f"The nonce must be 1 to {NONCE_CHARS_MAX} printable characters.")
    if abs(now_s - timestamp) > TOLERANCE_S:
        raise SignatureError(f"The signature's timestamp is more than {TOLERANCE_S} seconds from the server's clock.")
    expected = hmac.new(secret.encode(), _message(timestamp, nonce, method, path_with_query, body), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, given):
        raise SignatureError("The request's signature does not match its content.")
    return nonce
