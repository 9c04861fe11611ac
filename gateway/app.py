"""The HTTP gateway: Stripe-compatible routes on quart-trio.

A handler authenticates, decodes and validates its body, builds one engine
command, hands it to the node and renders what comes back. It holds no state
of its own. Every response carries a `Request-Id`; every error is
Stripe-shaped; nothing a client sends can produce a stack trace in a response.

This module assembles the app: the hooks around every request and the error
handlers (gateway/hooks.py), then the routes of gateway/routes/ over the
app's `Calls` (gateway/calls.py), then any mounts. Two things of Stripe's
are added here: every answer names the one API version objects are rendered
as (`Stripe-Version`; a request may send any, it is accepted and answered in
this one), and an unknown URL is answered with Stripe's 404.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import NotFound

from gateway import errors, hooks, openapi, routes
from gateway.calls import BODY_BYTES_MAX, ID_CHARS_MAX, Calls
from gateway.objects import API_VERSION
from gateway.responses import error_response, json_response
from shards.node import Node, NotServed

# The composition root, the simulator's routes and tests import these from here.
__all__ = ["BODY_BYTES_MAX", "ID_CHARS_MAX", "Mount", "create_app", "json_response", "published_document"]


# Adds routes to the app: (app, node, authenticate, read_body).
Mount = Callable[[QuartTrio, Node, Callable[..., Awaitable[Any]], Callable[[], Awaitable[dict[str, Any]]]], None]


def create_app(node: Node, *, mounts: Sequence[Mount] = ()) -> QuartTrio:
    """The node's app. Each of `mounts` adds routes of its own, with the
    app's authentication and body reading (the composition root mounts the
    simulator's pages this way, where the simulator runs in the node)."""
    app = QuartTrio("payments")
    app.config["MAX_CONTENT_LENGTH"] = BODY_BYTES_MAX
    app.config["BODY_TIMEOUT"] = 30
    app.before_request(hooks.start_request)
    app.after_request(hooks.finish_response)
    app.after_request(stamp_api_version)
    app.teardown_request(hooks.end_request)
    for kind, handler in hooks.ERROR_HANDLERS:
        app.register_error_handler(kind, handler)
    app.register_error_handler(NotFound, unrecognized_url)
    calls = Calls(node)
    app.register_error_handler(NotServed, calls.forwarder.not_served)
    routes.register(app, calls)
    for mount in mounts:
        mount(app, node, calls.authenticate, calls.read_body)

    @app.get("/openapi.json")
    async def openapi_document() -> Response:
        return json_response(published)

    @app.get("/healthz")
    async def health() -> Response:
        return json_response({"status": "ok"})

    published = openapi.document(app)
    return app


async def stamp_api_version(response: Response) -> Response:
    """Name the API version the answer is rendered as. An answer forwarded
    from another node keeps the header that node gave it."""
    response.headers.setdefault("Stripe-Version", API_VERSION)
    return response


async def unrecognized_url(error: NotFound) -> Response:
    """Stripe's answer to a URL it has no route for: its wording up to the
    pointer at its own documentation and support, which is ours instead."""
    path = request.path[:200]
    message = f"Unrecognized request URL ({request.method}: {path})."
    if path.endswith("/") and path != "/":
        message += (
            " If you are trying to list objects, remove the trailing slash. If you are trying to retrieve an object,"
            " make sure you passed a valid (non-empty) identifier in your code."
        )
    message += " This server's routes are listed at /openapi.json."
    return error_response(errors.invalid_request(message, status=404))


def published_document() -> dict[str, Any]:
    """The OpenAPI document, without a node: routes are registered when the
    app is made, and no handler runs here."""
    return openapi.document(create_app(None))  # type: ignore[arg-type]

