"""The HTTP gateway: Stripe-compatible routes on quart-trio.

A handler authenticates, decodes and validates its body, builds one engine
command, hands it to the node and renders what comes back. It holds no state
of its own. Every response carries a `Request-Id`; every error is
Stripe-shaped; nothing a client sends can produce a stack trace in a response.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hmac
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import msgspec
import structlog
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from engine import cards
from engine import intent as machine
from engine.results import Result
from engine.urls import return_url_allowed
from gateway import errors, objects, openapi, pages, params, signing, webhook_routes
from gateway.openapi import api
from gateway.errors import ApiError
from gateway.forms import BodyError, decode_form, decode_json
from shards.actor import Outcome
from shards import idempotency
from shards.idempotency import Claim, Render
from shards.node import Node, Overloaded, hash_key
from store.errors import RedisUnavailable, StoreUnavailable
from store.rows import ApiKeyRow, PaymentMethodRow

log = structlog.get_logger("gateway")

BODY_BYTES_MAX = 64 * 1024
# A body without a content type is read as a form, as curl -d sends it.
FORM_CONTENT_TYPES = ("", "application/x-www-form-urlencoded", "application/json")
API_KEY_CHARS_MAX = 256
ID_CHARS_MAX = 255
# Test payment methods get this many years of validity from today.
TEST_CARD_YEARS = 3

_json = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(_json.encode(body), status=status, content_type="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def intent_body(outcome: Outcome, amount: object = None) -> dict[str, Any]:
    """The PaymentIntent a command's outcome shows; raises the ApiError it
    stands for when it is a refusal or a failed attempt."""
    intent = outcome.intent
    if outcome.result is not Result.ok:
        status = None if intent is None else str(intent.status)
        error = errors.from_result(outcome.result, outcome.param, amount=amount, status=status)
        if intent is not None and error.status != 404:
            error.extra["payment_intent"] = objects.payment_intent(intent)
        raise error
    assert intent is not None
    attempt = next((a for a in intent.attempts if a.id == outcome.attempt_id), None)
    if attempt is not None and attempt.status is machine.AttemptStatus.failed:
        failure = intent.last_payment_error
        if attempt.kind is machine.AttemptKind.capture or failure is None:
            error = errors.card_error("card_declined", "The card network declined the capture.")
        else:
            error = errors.card_error(failure.code, failure.message, decline_code=failure.decline_code)
        error.extra["payment_intent"] = objects.payment_intent(intent)
        raise error
    return objects.payment_intent(intent)


def render(body: Callable[[], dict[str, Any]]) -> tuple[int, bytes]:
    """(status, JSON) of a response, errors included. The same bytes are
    stored for idempotent replays."""
    try:
        return 200, _json.encode(body())
    except ApiError as error:
        return error.status, _json.encode(error.body())


def render_intent(outcome: Outcome, amount: object = None) -> tuple[int, bytes]:
    return render(lambda: intent_body(outcome, amount))


def render_payment_method(row: PaymentMethodRow) -> tuple[int, bytes]:
    return 200, _json.encode(objects.payment_method(row))


def render_refund(refund_id: str) -> Callable[[Outcome], tuple[int, bytes]]:
    def body_of(outcome: Outcome) -> dict[str, Any]:
        if outcome.result is not Result.ok:
            raise errors.from_result(outcome.result, outcome.param)
        assert outcome.intent is not None
        refund = outcome.intent.refund(refund_id)
        assert refund is not None
        return objects.refund(outcome.intent, refund)

    return lambda outcome: render(lambda: body_of(outcome))


# Adds routes to the app: (app, node, authenticate, read_body).
Mount = Callable[[QuartTrio, Node, Callable[..., Awaitable[Any]], Callable[[], Awaitable[dict[str, Any]]]], None]


class Replayed(Exception):
    """The stored first response to a request with this idempotency key."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def raw_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    response = Response(body, status=status, content_type="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def create_app(node: Node, *, mounts: Sequence[Mount] = ()) -> QuartTrio:
    """The node's app. Each of `mounts` adds routes of its own, with the
    app's authentication and body reading (the composition root mounts the
    simulator's pages this way, where the simulator runs in the node)."""
    app = QuartTrio("payments")
    app.config["MAX_CONTENT_LENGTH"] = BODY_BYTES_MAX
    app.config["BODY_TIMEOUT"] = 30

    @app.after_request
    async def add_request_id(response: Response) -> Response:
        response.headers["Request-Id"] = "req_" + secrets.token_urlsafe(12)
        if response.status_code >= 400 and body_left_unread():
            # The client is still sending a body nobody will read: keeping the
            # connection would leave those bytes to be parsed as its next
            # request, which then hangs. Close it after this answer.
            response.headers["Connection"] = "close"
        for name, value in getattr(g, "rate_limit", {}).items():
            response.headers[name] = value
        return response

    def body_left_unread() -> bool:
        sends_body = bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        return sends_body and not g.get("body_read", False)

    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> Response:
        return json_response(error.body(), error.status, error.headers)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if status == 404:
            message = f"Unrecognized request URL ({request.method}: {request.path[:200]})."
        elif status == 405:
            message = f"The method {request.method} is not allowed for {request.path[:200]}."
        elif status == 413:
            # The issue asks for a 400 naming the problem for oversized bodies.
            message = f"The request body is larger than {BODY_BYTES_MAX} bytes."
            return json_response(errors.invalid_request(message, code="request_too_large").body(), 400)
        else:
            message = error.description or "The request could not be handled."
        error_type = "invalid_request_error" if status < 500 else "api_error"
        return json_response({"error": {"type": error_type, "message": message}}, status)

    @app.errorhandler(Replayed)
    async def replayed(replay: Replayed) -> Response:
        return raw_response(replay.status, replay.body, {"Idempotent-Replayed": "true"})

    @app.errorhandler(StoreUnavailable)
    async def store_unavailable(error: StoreUnavailable) -> Response:
        api = errors.unavailable("The service is temporarily unable to record changes. Retry shortly.")
        return json_response(api.body(), api.status, api.headers)

    @app.errorhandler(RedisUnavailable)
    async def redis_unavailable(error: RedisUnavailable) -> Response:
        # Redis holds rate-limit buckets and request nonces, never what a
        # request records: a client is told what could not be checked, not
        # that changes cannot be recorded.
        log.warning("request_refused", path=request.path[:200], reason="redis_unavailable", error=str(error))
        api = errors.unavailable("Rate limits and request signatures cannot be checked right now. Retry shortly.")
        return json_response(api.body(), api.status, api.headers)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        # A bug. Log it (exception text and type only go to our own log), never the client.
        log.exception("request_failed", path=request.path[:200], method=request.method)
        body = {"error": {"type": "api_error", "message": "An unexpected error occurred on our side."}}
        return json_response(body, 500)

    # ------------------------------------------------------------- helpers

    async def authenticate(*, publishable_allowed: bool = False) -> ApiKeyRow:
        """The caller's key, after its rate limit and, where the merchant asks
        for it, its request signature. Without a working key the caller's
        address is rate-limited instead."""
        header = request.headers.get("Authorization", "")
        secret = ""
        if header.startswith("Bearer "):
            secret = header[len("Bearer ") :].strip()
        elif header.startswith("Basic "):
            try:
                secret = base64.b64decode(header[len("Basic ") :], validate=True).decode().split(":", 1)[0]
            except (binascii.Error, UnicodeDecodeError):
                secret = ""
        row = None
        if secret and len(secret) <= API_KEY_CHARS_MAX and secret.isascii():
            row = await node.authenticate(secret)
        if row is None:
            await limit(f"ip:{request.remote_addr}", node.config.anonymous_rate_per_s, node.config.anonymous_burst)
            if not secret:
                raise ApiError(
                    401,
                    "invalid_request_error",
                    "You did not provide an API key. Provide it as 'Authorization: Bearer YOUR_SECRET_KEY'.",
                )
            raise ApiError(401, "invalid_request_error", f"Invalid API Key provided: {mask(secret)}", code="api_key_invalid")
        await limit("key:" + hash_key(secret).hex()[:32], row.rate_limit_per_s, row.rate_limit_burst)
        if row.require_signed_requests:
            await check_signature(row)
        if row.kind == "publishable" and not publishable_allowed:
            raise ApiError(401, "invalid_request_error", "This API call cannot be made with a publishable API key.")
        return row

    async def limit(bucket_name: str, rate_per_s: int, burst: int) -> None:
        """Take a token or answer 429. Fails open when Redis is down: rate
        limits protect capacity, not money, and payments must go on."""
        if node.redis is None:
            return
        try:
            bucket = await node.redis.take_token(bucket_name, rate_per_s, burst)
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

    async def check_signature(key: ApiKeyRow) -> None:
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

    async def read_body() -> dict[str, Any]:
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

    async def owned_payment_method(payment_method_id: str, key: ApiKeyRow) -> PaymentMethodRow:
        """Resolve a payment method the caller may use; test aliases become real ones."""
        number = cards.TEST_PAYMENT_METHODS.get(payment_method_id)
        if number is not None and not key.livemode:
            return await node.create_payment_method(
                key.merchant_id, False, number, 12, time.gmtime().tm_year + TEST_CARD_YEARS, cards.brand_of(number)
            )
        row = None
        if len(payment_method_id) <= ID_CHARS_MAX:
            row = await node.payment_method(payment_method_id)
        if row is None or row.merchant_id != key.merchant_id or row.livemode != key.livemode:
            raise errors.invalid_request(
                f"No such PaymentMethod: '{payment_method_id[:64]}'", param="payment_method", code="resource_missing"
            )
        return row

    def owned_intent(intent_id: str, key: ApiKeyRow) -> machine.PaymentIntent:
        intent = node.intent(intent_id) if len(intent_id) <= ID_CHARS_MAX else None
        if intent is None or intent.merchant_id != key.merchant_id or intent.livemode != key.livemode:
            raise errors.not_found("payment_intent", intent_id, "intent")
        return intent

    async def intent_command(intent_id: str, schema: type, build: Callable[[Any, dict[str, Any]], machine.Command]) -> Response:
        """Run a command on one of the caller's intents that opens an attempt."""
        key = await authenticate()
        owned_intent(intent_id, key)
        body = await read_body()
        values = params.convert(body, schema)
        common = {
            "intent_id": intent_id,
            "merchant_id": key.merchant_id,
            "livemode": key.livemode,
            "attempt_id": node.new_id("att", node.partition_of_intent(intent_id)),
            "at_s": int(time.time()),
        }
        command = build(values, common)
        async with idempotent(key, body, render_intent) as claim:
            return raw_response(*render_intent(await submit(command, claim)))

    def owned_child(found: tuple[machine.PaymentIntent, Any] | None, key: ApiKeyRow, kind: str, object_id: str) -> tuple[machine.PaymentIntent, Any]:
        """A refund or dispute with its intent, if the caller owns the intent."""
        if found is None or found[0].merchant_id != key.merchant_id or found[0].livemode != key.livemode:
            raise errors.not_found(kind, object_id, kind)
        return found

    async def child_page(attribute: str, url: str, kind: str, render_child: Callable[..., Any]) -> Response:
        """A list page of the refunds or disputes of the caller's intents."""
        key = await authenticate()
        values = list_params()
        intents = node.merchant_intents(key.merchant_id, key.livemode)
        if values.payment_intent is not None:
            intents = [intent for intent in intents if intent.id == values.payment_intent]
        pairs = [(intent, child) for intent in intents for child in getattr(intent, attribute)]
        return json_response(
            pages.page(pairs, values, url=url, kind=kind, key=lambda pair: (pair[1].created_s, pair[1].id), render=lambda pair: render_child(*pair))
        )

    def list_params() -> params.ListParams:
        try:
            values = decode_form(request.query_string)
        except BodyError as error:
            raise errors.invalid_request(error.message, param=error.param, code=error.code) from None
        return params.convert(values, params.ListParams)

    @contextlib.asynccontextmanager
    async def idempotent(key: ApiKeyRow, values: dict[str, Any], render_outcome: Render) -> AsyncIterator[Claim | None]:
        """Claim the request's Idempotency-Key for the block, or replay the
        response stored under it (raises Replayed), or refuse it."""
        header = request.headers.get("Idempotency-Key")
        if header is None:
            yield None
            return
        if not 1 <= len(header) <= idempotency.KEY_CHARS_MAX:
            raise errors.invalid_request(
                f"Idempotency keys are 1 to {idempotency.KEY_CHARS_MAX} characters long.", code="idempotency_key_invalid"
            )
        records = node.idempotency
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
                if not records.matches(found.fingerprint, request.method, request.path, values):
                    raise ApiError(
                        400,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                        code="idempotency_key_reused",
                    )
                if found.status_code is not None and found.body is not None:
                    raise Replayed(found.status_code, found.body)
                # Started, never finished, and not running here: the node
                # that ran it stopped. The object's state now is the answer.
                intent = None if found.object_id is None else node.intent(found.object_id)
                if intent is None:
                    raise errors.unavailable("The first request with this idempotency key did not finish. Retry shortly.")
                last = intent.attempts[-1].id if intent.attempts else None
                raise Replayed(*render_outcome(Outcome(Result.ok, intent, attempt_id=last)))
            yield Claim(key.merchant_id, header, request_fingerprint, render_outcome, now_s + records.ttl_s)
        finally:
            records.end(key.merchant_id, header)

    async def submit(command: machine.Command, claim: Claim | None = None) -> Outcome:
        try:
            return await node.submit(command, claim)
        except Overloaded:
            raise errors.unavailable("Too many requests are in flight for this payment. Retry shortly.") from None

    webhook_routes.register(app, node, authenticate, read_body)
    for mount in mounts:
        mount(app, node, authenticate, read_body)

    # -------------------------------------------------------------- routes

    @app.post("/v1/payment_methods")
    @api("Create a card payment method", objects.PaymentMethodObject, body=params.CreatePaymentMethod, publishable=True)
    async def create_payment_method() -> Response:
        key = await authenticate(publishable_allowed=True)
        body = await read_body()
        values = params.convert(body, params.CreatePaymentMethod)
        card = values.card
        number = card.number.replace(" ", "")
        if not cards.luhn_valid(number):
            raise errors.card_error("incorrect_number", "Your card number is incorrect.", param="card[number]")
        if not 1 <= card.exp_month <= 12:
            raise errors.card_error("invalid_expiry_month", "Your card's expiration month is invalid.", param="card[exp_month]")
        exp_year = card.exp_year + 2000 if 0 <= card.exp_year < 100 else card.exp_year
        today = time.gmtime()
        if not today.tm_year <= exp_year <= today.tm_year + 50:
            raise errors.card_error("invalid_expiry_year", "Your card's expiration year is invalid.", param="card[exp_year]")
        if exp_year == today.tm_year and card.exp_month < today.tm_mon:
            raise errors.card_error("invalid_expiry_month", "Your card's expiration month is invalid.", param="card[exp_month]")
        if card.cvc is not None and not (card.cvc.isdigit() and 3 <= len(card.cvc) <= 4):
            raise errors.card_error("invalid_cvc", "Your card's security code is invalid.", param="card[cvc]")
        async with idempotent(key, body, render_payment_method) as claim:
            row = await node.create_payment_method(
                key.merchant_id, key.livemode, number, card.exp_month, exp_year, cards.brand_of(number), claim
            )
            log.info("payment_method_created", payment_method_id=row.id, brand=row.brand, last4=row.last4)
            return raw_response(*render_payment_method(row))

    @app.get("/v1/payment_methods/<payment_method_id>")
    @api("Retrieve a payment method", objects.PaymentMethodObject)
    async def retrieve_payment_method(payment_method_id: str) -> Response:
        key = await authenticate()
        row = await node.payment_method(payment_method_id) if len(payment_method_id) <= ID_CHARS_MAX else None
        if row is None or row.merchant_id != key.merchant_id or row.livemode != key.livemode:
            raise errors.not_found("payment_method", payment_method_id, "payment_method")
        return json_response(objects.payment_method(row))

    @app.post("/v1/payment_intents")
    @api("Create a PaymentIntent, optionally confirming it", objects.PaymentIntentObject, body=params.CreatePaymentIntent)
    async def create_payment_intent() -> Response:
        key = await authenticate()
        body = await read_body()
        values = params.convert(body, params.CreatePaymentIntent)
        render_outcome = functools.partial(render_intent, amount=values.amount)
        refusal = machine.check_create_shape(
            values.amount, values.currency.lower(), values.metadata, values.description, values.return_url, key.livemode
        )
        if refusal is not None:
            raise errors.from_result(refusal.result, refusal.param, amount=values.amount)
        async with idempotent(key, body, render_outcome) as claim:
            return raw_response(*render_outcome(await submit(await create_command(key, values), claim)))

    async def create_command(key: ApiKeyRow, values: params.CreatePaymentIntent) -> machine.CreateIntent:
        payment_method_id = None
        if values.payment_method is not None:
            payment_method_id = (await owned_payment_method(values.payment_method, key)).id
        intent_id = node.new_id("pi")
        partition = node.partition_of_intent(intent_id)
        return machine.CreateIntent(
            intent_id=intent_id,
            merchant_id=key.merchant_id,
            livemode=key.livemode,
            amount=values.amount,
            currency=values.currency.lower(),
            capture_method=machine.CaptureMethod(values.capture_method),
            client_secret=node.client_secret(intent_id),
            at_s=int(time.time()),
            attempt_id=node.new_id("att", partition),
            payment_method_id=payment_method_id,
            confirm=values.confirm,
            description=values.description,
            metadata=values.metadata,
            return_url=values.return_url,
            fee_basis_points=key.fee_basis_points,
            fee_fixed_minor=key.fee_fixed_minor,
            settlement_delay_s=node.config.settlement_delay_s,
            dispute_fee_minor=node.config.dispute_fee_minor,
        )

    @app.get("/v1/payment_intents/<intent_id>")
    @api("Retrieve a PaymentIntent", objects.PaymentIntentObject)
    async def retrieve_payment_intent(intent_id: str) -> Response:
        key = await authenticate()
        return json_response(objects.payment_intent(owned_intent(intent_id, key)))

    @app.post("/v1/payment_intents/<intent_id>/confirm")
    @api("Confirm a PaymentIntent", objects.PaymentIntentObject, body=params.ConfirmPaymentIntent, publishable=True)
    async def confirm_payment_intent(intent_id: str) -> Response:
        key = await authenticate(publishable_allowed=True)
        intent = owned_intent(intent_id, key)
        body = await read_body()
        values = params.convert(body, params.ConfirmPaymentIntent)
        if values.return_url is not None and not return_url_allowed(values.return_url, key.livemode):
            raise errors.from_result(Result.return_url_invalid, "return_url")
        if key.kind == "publishable" and not (
            values.client_secret is not None and hmac.compare_digest(values.client_secret.encode(), intent.client_secret.encode())
        ):
            # A browser holding only the publishable key must also hold the
            # intent's client secret; without it the intent is not its to see.
            raise errors.not_found("payment_intent", intent_id, "intent")
        async with idempotent(key, body, render_intent) as claim:
            payment_method_id = None
            if values.payment_method is not None:
                payment_method_id = (await owned_payment_method(values.payment_method, key)).id
            command = machine.ConfirmIntent(
                intent_id=intent_id,
                merchant_id=key.merchant_id,
                livemode=key.livemode,
                attempt_id=node.new_id("att", node.partition_of_intent(intent_id)),
                at_s=int(time.time()),
                payment_method_id=payment_method_id,
                return_url=values.return_url,
            )
            return raw_response(*render_intent(await submit(command, claim)))

    @app.get("/v1/payment_intents")
    @api("List PaymentIntents, newest first", objects.ListObject[objects.PaymentIntentObject], query=params.ListParams)
    async def list_payment_intents() -> Response:
        key = await authenticate()
        values = list_params()
        intents = node.merchant_intents(key.merchant_id, key.livemode)
        return json_response(
            pages.page(intents, values, url="/v1/payment_intents", kind="payment_intent", key=lambda i: (i.created_s, i.id), render=objects.payment_intent)
        )

    @app.post("/v1/payment_intents/<intent_id>/capture")
    @api("Capture an authorized PaymentIntent", objects.PaymentIntentObject, body=params.CaptureParams)
    async def capture_payment_intent(intent_id: str) -> Response:
        return await intent_command(
            intent_id,
            params.CaptureParams,
            lambda values, common: machine.CaptureIntent(**common, amount_to_capture=values.amount_to_capture),
        )

    @app.post("/v1/payment_intents/<intent_id>/cancel")
    @api("Cancel a PaymentIntent", objects.PaymentIntentObject, body=params.CancelParams)
    async def cancel_payment_intent(intent_id: str) -> Response:
        return await intent_command(
            intent_id,
            params.CancelParams,
            lambda values, common: machine.CancelIntent(**common, cancellation_reason=values.cancellation_reason),
        )

    @app.post("/v1/refunds")
    @api("Refund a PaymentIntent", objects.RefundObject, body=params.CreateRefund)
    async def create_refund() -> Response:
        key = await authenticate()
        body = await read_body()
        values = params.convert(body, params.CreateRefund)
        intent_id = values.payment_intent
        try:
            owned_intent(intent_id, key)
        except ApiError:
            raise errors.invalid_request(f"No such payment_intent: '{intent_id[:64]}'", param="payment_intent", code="resource_missing") from None
        refund_id = node.new_id("re", node.partition_of_intent(intent_id))
        command = machine.CreateRefund(
            intent_id=intent_id,
            merchant_id=key.merchant_id,
            livemode=key.livemode,
            refund_id=refund_id,
            at_s=int(time.time()),
            amount=values.amount,
            reason=values.reason,
            metadata=values.metadata,
        )
        render_outcome = render_refund(refund_id)
        async with idempotent(key, body, render_outcome) as claim:
            return raw_response(*render_outcome(await submit(command, claim)))

    @app.get("/v1/refunds/<refund_id>")
    @api("Retrieve a refund", objects.RefundObject)
    async def retrieve_refund(refund_id: str) -> Response:
        key = await authenticate()
        found = node.refund(refund_id) if len(refund_id) <= ID_CHARS_MAX else None
        return json_response(objects.refund(*owned_child(found, key, "refund", refund_id)))

    @app.get("/v1/refunds")
    @api("List refunds, newest first", objects.ListObject[objects.RefundObject], query=params.ListParams)
    async def list_refunds() -> Response:
        return await child_page("refunds", "/v1/refunds", "refund", objects.refund)

    @app.get("/v1/balance")
    @api("Retrieve the balance", objects.BalanceObject)
    async def retrieve_balance() -> Response:
        key = await authenticate()
        return json_response(objects.balance(node.merchant_funds(key.merchant_id, int(time.time())), key.livemode))

    @app.get("/v1/balance_transactions")
    @api("List balance transactions, newest first", objects.ListObject[objects.BalanceTransactionObject], query=params.ListParams)
    async def list_balance_transactions() -> Response:
        key = await authenticate()
        values = list_params()
        now_s = int(time.time())
        transfers = node.merchant_transfers(key.merchant_id)
        if values.payment_intent is not None:
            transfers = [transfer for transfer in transfers if transfer.intent_id == values.payment_intent]
        if values.type is not None:
            transfers = [t for t in transfers if objects.BALANCE_TRANSACTION_TYPES.get(t.code, "adjustment") == values.type]
        return json_response(
            pages.page(
                transfers,
                values,
                url="/v1/balance_transactions",
                kind="balance_transaction",
                key=lambda t: (t.created_s, objects.balance_transaction_id(t)),
                render=lambda t: objects.balance_transaction(t, key.merchant_id, now_s),
            )
        )

    @app.get("/v1/disputes/<dispute_id>")
    @api("Retrieve a dispute", objects.DisputeObject)
    async def retrieve_dispute(dispute_id: str) -> Response:
        key = await authenticate()
        found = node.dispute(dispute_id) if len(dispute_id) <= ID_CHARS_MAX else None
        return json_response(objects.dispute(*owned_child(found, key, "dispute", dispute_id)))

    @app.get("/v1/disputes")
    @api("List disputes, newest first", objects.ListObject[objects.DisputeObject], query=params.ListParams)
    async def list_disputes() -> Response:
        return await child_page("disputes", "/v1/disputes", "dispute", objects.dispute)


    @app.get("/openapi.json")
    async def openapi_document() -> Response:
        return json_response(published)

    @app.get("/healthz")
    async def health() -> Response:
        return json_response({"status": "ok"})

    published = openapi.document(app)
    return app


def published_document() -> dict[str, Any]:
    """The OpenAPI document, without a node: routes are registered when the
    app is made, and no handler runs here."""
    return openapi.document(create_app(None))  # type: ignore[arg-type]


def mask(secret: str) -> str:
    """Show a key the way Stripe does: its kind and last four characters."""
    head = secret[:8] if secret[:3] in ("sk_", "pk_") else ""
    return f"{head}{'*' * 8}{secret[-4:] if len(secret) > 12 else ''}"
