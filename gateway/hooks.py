"""What runs around every request: its id, minted first and bound to its
log lines, the headers added to its response, and the Stripe-shaped answer
to whatever a handler raised. gateway/app.py registers these on the app.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from quart import Response, g, request
from werkzeug.exceptions import HTTPException

from gateway import errors
from gateway.calls import BODY_BYTES_MAX, Replayed
from gateway.errors import ApiError
from gateway.responses import error_response, json_response, raw_response
from shards.actor import REQUEST_ID
from store.errors import RedisUnavailable, StoreUnavailable

log = structlog.get_logger("gateway")


async def start_request() -> None:
    """Mint the request's id first, so that every log line the request
    makes carries it (gateway/logs.py merges bound context into each line)."""
    g.request_id = "req_" + secrets.token_urlsafe(12)
    g.request_id_tokens = structlog.contextvars.bind_contextvars(request_id=g.request_id)
    g.request_id_token = REQUEST_ID.set(g.request_id)


async def finish_response(response: Response) -> Response:
    """Add the request's id and rate-limit headers to its response."""
    response.headers["Request-Id"] = g.request_id
    if response.status_code >= 400 and body_left_unread():
        # The client is still sending a body nobody will read: keeping the
        # connection would leave those bytes to be parsed as its next
        # request, which then hangs. Close it after this answer.
        response.headers["Connection"] = "close"
    for name, value in getattr(g, "rate_limit", {}).items():
        response.headers[name] = value
    return response


async def end_request(error: BaseException | None) -> None:
    """Unbind the request's id as the request ends: nothing that runs after
    it in the same context (a server may reuse one) is part of it."""
    structlog.contextvars.reset_contextvars(**g.request_id_tokens)
    REQUEST_ID.reset(g.request_id_token)


def body_left_unread() -> bool:
    """Whether the client sent a body that no handler has read."""
    sends_body = bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    return sends_body and not g.get("body_read", False)


async def api_error(error: ApiError) -> Response:
    return error_response(error)


async def http_error(error: HTTPException) -> Response:
    status = error.code or 500
    if status == 404:
        message = f"Unrecognized request URL ({request.method}: {request.path[:200]})."
    elif status == 405:
        message = f"The method {request.method} is not allowed for {request.path[:200]}."
    elif status == 413:
        # The issue asks for a 400 naming the problem for oversized bodies.
        message = f"The request body is larger than {BODY_BYTES_MAX} bytes."
        return error_response(errors.invalid_request(message, code="request_too_large"))
    else:
        message = error.description or "The request could not be handled."
    error_type = "invalid_request_error" if status < 500 else "api_error"
    return json_response({"error": {"type": error_type, "message": message}}, status)


async def replayed(replay: Replayed) -> Response:
    return raw_response(replay.status, replay.body, {"Idempotent-Replayed": "true"})


async def store_unavailable(error: StoreUnavailable) -> Response:
    return error_response(errors.unavailable("The service is temporarily unable to record changes. Retry shortly."))


async def redis_unavailable(error: RedisUnavailable) -> Response:
    # Redis holds rate-limit buckets and request nonces, never what a
    # request records: a client is told what could not be checked, not
    # that changes cannot be recorded.
    log.warning("request_refused", path=request.path[:200], reason="redis_unavailable", error=str(error))
    return error_response(errors.unavailable("Rate limits and request signatures cannot be checked right now. Retry shortly."))


async def unexpected(error: Exception) -> Response:
    # A bug. Log it (exception text and type only go to our own log), never the client.
    log.exception("request_failed", path=request.path[:200], method=request.method)
    body = {"error": {"type": "api_error", "message": "An unexpected error occurred on our side."}}
    return json_response(body, 500)


ERROR_HANDLERS: tuple[tuple[type[Exception], Callable[[Any], Awaitable[Response]]], ...] = (
    (ApiError, api_error),
    (HTTPException, http_error),
    (Replayed, replayed),
    (StoreUnavailable, store_unavailable),
    (RedisUnavailable, redis_unavailable),
    (Exception, unexpected),
)
