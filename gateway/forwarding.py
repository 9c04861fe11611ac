"""Requests for partitions another node owns: sent on to the owner.

Any node accepts any request. When serving it needs a partition this node
does not serve (`NotServed`), the request is sent as it came (method, path,
query, body, the caller's headers) to the node that holds the partition's
lease, and the owner's answer goes back to the caller. The owner runs the
request in full, authentication and idempotency included; only the checks
the forwarding node already made (rate limit, request signature and its
nonce) are not repeated, for a request signed by a peer with the cluster
secret (shards/cluster.py). A signed request is never forwarded again, so
views that disagree for a moment cannot make a request loop. With no owner
known, or the owner unreachable, the answer is a 503 with Retry-After: the
request did nothing here.
"""

from __future__ import annotations

import time

import httpx
import structlog
import trio
from quart import Response, g, request

from gateway import errors
from gateway.responses import error_response
from shards.cluster import forward_signature, forwarded_by
from shards.node import Node, NotServed
from store.errors import StoreUnavailable

log = structlog.get_logger("gateway.forwarding")

FORWARDED_HEADER = "Payments-Forwarded-By"
FORWARDED_FOR_HEADER = "Payments-Forwarded-For"
FORWARD_TIMEOUT_S = 35.0
CONNECTIONS_MAX = 64
# Not passed on: they describe one hop, or are set again for the next.
_HOP_HEADERS = frozenset(
    {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-authorization",
     FORWARDED_HEADER.lower(), FORWARDED_FOR_HEADER.lower()}
)
# What of the owner's answer the caller gets besides status and body.
_ANSWER_HEADERS = ("Content-Type", "Retry-After", "Idempotent-Replayed", "Stripe-Version", "Original-Request")


def forwarded_from(node: Node) -> str | None:
    """The peer that forwarded the current request, if it was signed by one
    with the cluster secret (checked once per request)."""
    if "forwarded_from" not in g:
        membership = node.membership
        header = request.headers.get(FORWARDED_HEADER)
        g.forwarded_from = None
        if membership is not None and header is not None:
            g.forwarded_from = forwarded_by(membership.secret, header, request.method, request.path, time.time())
    return g.forwarded_from


def client_address(node: Node) -> str | None:
    """The caller's address: the original caller's for a forwarded request."""
    if forwarded_from(node) is not None:
        return request.headers.get(FORWARDED_FOR_HEADER, request.remote_addr)
    return request.remote_addr


class Forwarder:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(FORWARD_TIMEOUT_S),
                limits=httpx.Limits(max_connections=CONNECTIONS_MAX, max_keepalive_connections=CONNECTIONS_MAX),
                follow_redirects=False,
            )
        return self._client

    async def _owner(self, partition: int | None) -> str | None:
        """Where the partition's owner (or, for None, any serving peer)
        listens; the view is read again once when it knows none."""
        membership = self.node.membership
        assert membership is not None
        for attempt in range(2):
            url = membership.owner_url(partition) if partition is not None else membership.any_peer_url()
            if url is not None or attempt:
                return url
            try:
                await membership.refresh_view()
            except StoreUnavailable:
                return None
        return None

    def _signed_headers(self, lookup_path: str | None = None) -> dict[str, str]:
        """The caller's headers, with this node's signature for the peer:
        for the request itself, or for a GET of `lookup_path` made on its
        behalf (then without the request's body headers)."""
        membership = self.node.membership
        assert membership is not None
        headers = {name: value for name, value in request.headers.items() if name.lower() not in _HOP_HEADERS}
        method, path = request.method, request.path
        if lookup_path is not None:
            method, path = "GET", lookup_path
            headers = {name: value for name, value in headers.items() if name.lower() not in ("content-type", "content-length")}
        headers[FORWARDED_HEADER] = forward_signature(membership.secret, membership.node_id, int(time.time()), method, path)
        headers[FORWARDED_FOR_HEADER] = client_address(self.node) or ""
        return headers

    async def peer_answers(self, lookup_path: str | None = None) -> list[httpx.Response]:
        """The current (bodiless) request as each other live node serving
        partitions answers it for its own partitions; with `lookup_path`
        (a path without a query), a GET of that path instead, made on the
        request's behalf (where is the dispute a POST names?). Raises a 503
        when one cannot be asked: an answer without its partitions would be
        wrong."""
        membership = self.node.membership
        assert membership is not None
        # Who holds what now, not at the last heartbeat: a partition handed
        # off since would otherwise be missed. Raises StoreUnavailable.
        await membership.refresh_view()
        urls = membership.peer_urls()
        headers = self._signed_headers(lookup_path)
        target = request.full_path.rstrip("?") if lookup_path is None else lookup_path
        answers: list[httpx.Response] = []
        # A peer that took partitions before saying where it listens.
        unreachable: list[str | None] = [url for url in urls if url is None]

        async def ask(url: str) -> None:
            try:
                answers.append(await self._http().get(url.rstrip("/") + target, headers=headers))
            except httpx.HTTPError as failure:
                log.warning("peer_unreachable", peer=url, error=type(failure).__name__)
                unreachable.append(url)

        async with trio.open_nursery() as nursery:
            for url in urls:
                if url is not None:
                    nursery.start_soon(ask, url)
        if unreachable:
            raise errors.unavailable("A node holding part of this list did not answer. Retry shortly.")
        return answers

    async def not_served(self, error: NotServed) -> Response:
        """The error handler for NotServed: the owner's answer, or a 503."""
        node, membership = self.node, self.node.membership
        if membership is None or forwarded_from(node) is not None:
            return error_response(errors.unavailable("This payment is being moved between nodes. Retry shortly."))
        url = await self._owner(error.partition)
        if url is None:
            return error_response(errors.unavailable("No node serves this payment right now. Retry shortly."))
        headers = self._signed_headers()
        body = await request.get_data()
        g.body_read = True
        target = url.rstrip("/") + request.full_path.rstrip("?")
        try:
            answer = await self._http().request(request.method, target, headers=headers, content=body)
        except httpx.HTTPError as failure:
            log.warning("forward_failed", partition=error.partition, owner=url, error=type(failure).__name__)
            return error_response(errors.unavailable("The node serving this payment did not answer. Retry shortly."))
        log.debug("request_forwarded", partition=error.partition, owner=url, status=answer.status_code)
        response = Response(answer.content, status=answer.status_code)
        for name in _ANSWER_HEADERS:
            if name in answer.headers:
                response.headers[name] = answer.headers[name]
        response.headers["Payments-Forwarded-To"] = url
        return response
