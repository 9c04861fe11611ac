"""What operators reach on a node: `GET /metrics` (Prometheus text format),
and the timing of every API request behind it.

These answer an operator, never a merchant: a request must carry the
cluster's operator token (`Authorization: Bearer op_...`), which `payments
up` prints and `operator_token` derives from the cluster secret, so every
node of a cluster takes the same one. An API key is refused here, as the
token is refused by the API.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

from quart import Response, g, request
from quart_trio import QuartTrio

from gateway.errors import ApiError
from shards.metrics import CONTENT_TYPE
from shards.node import Node

TOKEN_PREFIX = "op_"


def operator_token(cluster_secret: bytes) -> str:
    """The operator token of a cluster: a key derived from its secret for
    this purpose alone (it opens nothing else)."""
    digest = hmac.new(cluster_secret, b"payments operator token v1", hashlib.sha256).digest()
    return TOKEN_PREFIX + base64.urlsafe_b64encode(digest[:24]).decode()


def node_operator_token(node: Node) -> str | None:
    """The token for `node`'s cluster; None before it has joined one."""
    membership = node.membership
    return None if membership is None or not membership.secret else operator_token(membership.secret)


def check_operator(node: Node) -> None:
    """Pass a request carrying the operator token; raise the 401 otherwise."""
    expected = node_operator_token(node)
    header = request.headers.get("Authorization", "")
    presented = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if expected is None or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise ApiError(
            401,
            "invalid_request_error",
            "This page needs the operator token printed by `payments up` (Authorization: Bearer op_...).",
            code="operator_token_required",
        )


def mount(app: QuartTrio, node: Node, authenticate: Callable[..., Awaitable[Any]], read_body: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """Time every request by route, method and status, and serve /metrics
    (a `gateway.app.Mount`)."""
    requests = node.metrics.requests

    @app.before_request
    async def start_timer() -> None:
        g.started_at = time.perf_counter()

    @app.after_request
    async def observe(response: Response) -> Response:
        started = g.get("started_at")
        if started is not None:
            rule = request.url_rule
            route = rule.rule if rule is not None else "unmatched"
            requests.labels(route, request.method, str(response.status_code)).observe(time.perf_counter() - started)
        return response

    @app.get("/metrics")
    async def metrics() -> Response:
        check_operator(node)
        return Response(node.metrics.render(), status=200, content_type=CONTENT_TYPE)
