"""The HTTP gateway: Stripe-compatible routes on quart-trio.

A handler authenticates, decodes and validates its body, builds one engine
command, hands it to the node and renders what comes back. It holds no state
of its own. Every response carries a `Request-Id`; every error is
Stripe-shaped; nothing a client sends can produce a stack trace in a response.

This module assembles the app: the hooks around every request and the error
handlers (gateway/hooks.py), then the routes of gateway/routes/ over the
app's `Calls` (gateway/calls.py), then any mounts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from quart import Response
from quart_trio import QuartTrio

from gateway import hooks, openapi, routes
from gateway.calls import BODY_BYTES_MAX, ID_CHARS_MAX, Calls
from gateway.responses import json_response
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
    app.teardown_request(hooks.end_request)
    for kind, handler in hooks.ERROR_HANDLERS:
        app.register_error_handler(kind, handler)
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


def published_document() -> dict[str, Any]:
    """The OpenAPI document, without a node: routes are registered when the
    app is made, and no handler runs here."""
    return openapi.document(create_app(None))  # type: ignore[arg-type]

