"""What every API call does around its command: who is calling (API key,
rate limit, request signature), what it sent (body and query string), its
Idempotency-Key (claimed, replayed or refused) and the hand-off to the node.

The app holds one `Calls` over its node; the methods read quart's request in
hand, so they are called from inside a request.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import structlog
from quart import Response, g, request

from engine import intent as machine
from engine.results import Result
from gateway import errors, params, signing
from gateway.forwarding import Forwarder, forwarded_from
from gateway.errors import ApiError
from gateway.forms import BodyError, decode_form, decode_json
from gateway.responses import raw_response
from shards import idempotency
from shards.actor import Outcome
from shards.idempotency import Claim, Render
from shards.node import Node, NotServed, Overloaded, hash_key
from store.errors import RedisUnavailable
from store.rows import ApiKeyRow

log = structlog.get_logger("gateway")

BODY_BYTES_MAX = 64 * 1024
# A body without a content type is read as a form, as curl -d sends it.
FORM_CONTENT_TYPES = ("", "application/x-www-form-urlencoded", "application/json")
API_KEY_CHARS_MAX = 256
ID_CHARS_MAX = 255

# What a publishable key (a browser's) may do beyond the routes published
# for it with `@api(..., publishable=True)` (creating a card payment method,
# confirming an intent with its client secret): read one intent, when the
# query string carries that intent's client secret (Stripe.js's
# retrievePaymentIntent). By endpoint, the path parameter naming the intent.
CLIENT_SECRET_VIEWS = {"retrieve_payment_intent": "intent_id"}
PUBLISHABLE_REFUSED = "This API call cannot be made with a publishable API key. Please use a secret API key."

T = TypeVar("T")


class Replayed(Exception):
    """The stored first response to a request with this idempotency key."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


class Calls:
    """The request helpers of one node's app."""

    def __init__(self, node: Node) -> None:
        self.node = node
        # Requests and list pages for partitions other nodes serve.
        self.forwarder = Forwarder(node)

    async def authenticate(self, *, publishable_allowed: bool = False) -> ApiKeyRow:
        """The caller's key, after its rate limit and, where the merchant asks
        for it, its request signature. Without a working key the caller's
        address is rate-limited instead. Raises the 401 or 429 to answer."""
        node = self.node
        secret = _secret(request.headers.get("Authorization", ""))
        row = None
        if secret and len(secret) <= API_KEY_CHARS_MAX and secret.isascii():
            row = await node.authenticate(secret)
        # A request a peer forwarded was limited and checked there.
        checked = forwarded_from(node) is not None
        if row is None:
            if not checked:
                await self._limit(f"ip:{request.remote_addr}", node.config.anonymous_rate_per_s, node.config.anonymous_burst)
            if not secret:
                raise ApiError(
                    401,
                    "invalid_request_error",
                    "You did not provide an API key. Provide it as 'Authorization: Bearer YOUR_SECRET_KEY'.",
                )
            raise ApiError(401, "invalid_request_error", f"Invalid API Key provided: {mask(secret)}", code="api_key_invalid")
        if not checked:
            await self._limit("key:" + hash_key(secret).hex()[:32], row.rate_limit_per_s, row.rate_limit_burst)
        if row.require_signed_requests and not checked:
            await self._check_signature(row)
        g.api_key_kind = row.kind
        if row.kind == "publishable" and not publishable_allowed and not self._holds_client_secret(row):
            raise ApiError(401, "invalid_request_error", PUBLISHABLE_REFUSED)
        return row

    def _holds_client_secret(self, key: ApiKeyRow) -> bool:
        """Whether a publishable key's request is one it may make with the
        client secret it presents (`CLIENT_SECRET_VIEWS`). False when the
        route takes no client secret or none was sent (the caller answers
        the 401); raises the 404 when the secret is not that intent's, as
        confirming with it does: the intent is not this browser's to see."""
        rule = request.url_rule
        parameter = None if rule is None else CLIENT_SECRET_VIEWS.get(rule.endpoint)
        presented = request.args.get("client_secret")
        if parameter is None or presented is None:
            return False
        intent_id = (request.view_args or {}).get(parameter, "")
        intent = self.node.intent(intent_id) if len(intent_id) <= ID_CHARS_MAX else None
        if (
            intent is None
            or intent.merchant_id != key.merchant_id
            or intent.livemode != key.livemode
            or not hmac.compare_digest(presented.encode(), intent.client_secret.encode())
        ):
            raise errors.not_found("payment_intent", intent_id, "intent")
        return True

    async def _limit(self, bucket_name: str, rate_per_s: int, burst: int) -> None:
        """Take a token or answer 429. Fails open when Redis is down: rate
        limits protect capacity, not money, and payments must go on."""
        redis = self.node.redis
        if redis is None:
            return
        try:
            bucket = await self.node.rate_limits.take(redis, bucket_name, rate_per_s, burst)
        except RedisUnavailable:
            log.warning("rate_limit_skipped", reason="redis_unavailable")
            return
        g.rate_limit = {
            "X-RateLimit-Limit": str(burst),
            "X-RateLimit-Remaining": str(bucket.remaining),
            "X-RateLimit-Reset": str(int(time.time()) + (bucket.full_in_ms + 999) // 1000),
        }
        if not bucket.allowed:
            raise ApiError(
                429,
                "invalid_request_error",
                "Too many requests hit the API too quickly. Retry after the time in Retry-After.",
                code="rate_limit",
                headers={"Retry-After": str(max(1, (bucket.retry_after_ms + 999) // 1000))},
            )

    async def _check_signature(self, key: ApiKeyRow) -> None:
        """Pass a request signed with the merchant's secret and a nonce not
        seen before; raise the 401 (or the 503 while nonces cannot be
        remembered) otherwise."""
        node = self.node
        secret = node.signing_secret(key)
        assert secret is not None, key.merchant_id
        body = await request.get_data(cache=True, as_text=False)
        g.body_read = True
        path = request.path + ("?" + request.query_string.decode("latin-1") if request.query_string else "")
        try:
            nonce = signing.verify(secret, request.headers.get(signing.HEADER), request.method, path, body, int(time.time()))
        except signing.SignatureError as error:
            raise ApiError(401, "invalid_request_error", str(error), code="signature_invalid") from None
        if node.redis is None:
            # Without somewhere to remember nonces a replay cannot be told
            # apart: refuse rather than accept signed requests blindly.
            raise errors.unavailable("Signed requests cannot be checked right now. Retry shortly.")
        try:
            fresh = await node.redis.remember_once(f"nonce:{key.merchant_id}:{nonce}", 2 * signing.TOLERANCE_S)
        except RedisUnavailable:
            raise errors.unavailable("Signed requests cannot be checked right now. Retry shortly.") from None
        if not fresh:
            raise ApiError(401, "invalid_request_error", "This request's nonce was already used.", code="signature_replayed")

    async def read_body(self) -> dict[str, Any]:
        """The request's form or JSON body as nested values; raises a 400
        naming what is wrong with it."""
        if request.content_length is not None and request.content_length > BODY_BYTES_MAX:
            raise errors.invalid_request(
                f"The request body is larger than {BODY_BYTES_MAX} bytes.", code="request_too_large"
            )
        body = await request.get_data(cache=True, as_text=False)
        g.body_read = True
        content_type = (request.mimetype or "").lower()
        if body and content_type not in FORM_CONTENT_TYPES:
            raise errors.invalid_request(
                "Send the body as application/x-www-form-urlencoded or application/json.", code="body_invalid"
            )
        try:
            if content_type == "application/json":
                return decode_json(body)
            return decode_form(body)
        except BodyError as error:
            raise errors.invalid_request(error.message, param=error.param, code=error.code) from None

    def query(self, schema: type[T]) -> T:
        """The query string as `schema`; raises a 400 naming what is wrong with it."""
        try:
            values = decode_form(request.query_string)
        except BodyError as error:
            raise errors.invalid_request(error.message, param=error.param, code=error.code) from None
        return params.convert(values, schema)

    def idempotency_key(self) -> str | None:
        """The request's Idempotency-Key, if it sent one; raises a 400 when
        its length is out of bounds."""
        header = request.headers.get("Idempotency-Key")
        if header is not None and not 1 <= len(header) <= idempotency.KEY_CHARS_MAX:
            raise errors.invalid_request(
                f"Idempotency keys are 1 to {idempotency.KEY_CHARS_MAX} characters long.", code="idempotency_key_invalid"
            )
        return header

    def partition_for_new(self, key: ApiKeyRow) -> int:
        """The partition a new intent goes to, checked before any work is
        done for it. With an Idempotency-Key, the one the merchant and key
        hash to, so that a request and its retries meet on one node wherever
        they arrive (raises NotServed when another node serves it: the
        request is forwarded there); else the node's next. Raises a 503 when
        that partition is saturated (past capacity, payments already started
        go first)."""
        node = self.node
        header = self.idempotency_key()
        if header is None:
            partition = node.router.next_partition()
        else:
            digest = hashlib.sha256(f"{key.merchant_id}\n{header}".encode()).digest()
            partition = int.from_bytes(digest[:4], "big") % node.config.partitions
            if partition not in node.shards:
                raise NotServed(partition)
        if node.saturated(partition):
            raise errors.unavailable("The engine is at capacity and takes no new payments for a moment. Retry shortly.")
        return partition

    @contextlib.asynccontextmanager
    async def idempotent(self, key: ApiKeyRow, values: dict[str, Any], render_outcome: Render) -> AsyncIterator[Claim | None]:
        """Claim the request's Idempotency-Key for the block, or replay the
        response stored under it (raises Replayed), or refuse it."""
        header = self.idempotency_key()
        if header is None:
            yield None
            return
        records = self.node.idempotency
        if not records.begin_nowait(key.merchant_id, header):
            raise ApiError(
                409,
                "idempotency_error",
                "There is currently another in-progress request using this idempotency key. Retry shortly.",
                code="idempotency_key_in_use",
            )
        try:
            now_s = int(time.time())
            found = await records.find(key.merchant_id, header, now_s)
            request_fingerprint = records.fingerprint(request.method, request.path, values)
            if found is not None:
                if not records.matches(found.fingerprint, request.method, request.path, values, request_fingerprint):
                    raise errors.idempotency_key_reused()
                if found.status_code is not None and found.body is not None:
                    raise Replayed(found.status_code, found.body)
                # Started, never finished, and not running here: the node
                # that ran it stopped. The object's state now is the answer.
                intent = None if found.object_id is None else self.node.intent(found.object_id)
                if intent is None:
                    raise errors.unavailable("The first request with this idempotency key did not finish. Retry shortly.")
                last = intent.attempts[-1] if intent.attempts else None
                # A first run whose attempt never left (not_sent) answered a
                # 503 and stored nothing: this retry runs the command again.
                if last is None or last.status is not machine.AttemptStatus.not_sent:
                    raise Replayed(*render_outcome(Outcome(Result.ok, intent, attempt_id=None if last is None else last.id)))
            yield Claim(key.merchant_id, header, request_fingerprint, render_outcome, now_s + records.ttl_s)
        finally:
            records.end(key.merchant_id, header)

    async def run(self, command: machine.Command, claim: Claim | None, render_outcome: Render) -> Response:
        """Submit `command` and answer with its outcome, rendered by
        `render_outcome` (or as the actor already rendered it for the
        idempotency record: the same bytes, made once)."""
        outcome = await self.submit(command, claim)
        return raw_response(*(outcome.rendered or render_outcome(outcome)))

    async def submit(self, command: machine.Command, claim: Claim | None = None) -> Outcome:
        """The outcome of `command` on its intent's shard; raises a 503 when
        too many requests are already waiting on that intent."""
        try:
            return await self.node.submit(command, claim)
        except NotServed:
            raise  # the owner, elsewhere, takes it (gateway/forwarding.py)
        except Overloaded:
            raise errors.unavailable("Too many requests are in flight for this payment. Retry shortly.") from None


def _secret(header: str) -> str:
    """The API key in an Authorization header (Bearer, or Basic as the user
    name); empty when there is none to read."""
    if header.startswith("Bearer "):
        return header[len("Bearer ") :].strip()
    if header.startswith("Basic "):
        try:
            return base64.b64decode(header[len("Basic ") :], validate=True).decode().split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            return ""
    return ""


def mask(secret: str) -> str:
    """Show a key the way Stripe does: its kind and last four characters."""
    head = secret[:8] if secret[:3] in ("sk_", "pk_") else ""
    return f"{head}{'*' * 8}{secret[-4:] if len(secret) > 12 else ''}"
