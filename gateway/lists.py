"""List pages over the whole cluster.

A node holds the intents of its own partitions only, so a list request is
answered by every node that serves partitions: the receiving node makes its
page, asks each live peer for the same page over the peer's partitions
(a signed request, which the peer answers from its own partitions without
asking further), and takes the same window over all of them (pages.merge).
A cursor may name an object another node holds: ids carry their creation
time (engine/ids.py) and objects are created at their id's second, so its
place in the order is known without asking for it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec

from engine import ids
from gateway import errors, pages
from gateway.errors import ApiError
from gateway.expansions import Expansion, check
from gateway.forwarding import Forwarder, forwarded_from
from gateway.params import ListParams

T = TypeVar("T")

# The id prefix of each kind whose place a cursor's id tells.
ID_PREFIXES = {"payment_intent": "pi", "refund": "re", "charge": "ch"}


class _PeerError(msgspec.Struct):
    type: str = "api_error"
    message: str = "A node holding part of this list refused it."
    code: str | None = None
    param: str | None = None


class _PeerAnswer(msgspec.Struct):
    error: _PeerError


def created_s(object_id: str, prefix: str) -> int:
    """The second an object is created at: its id's (an id just minted)."""
    parsed = ids.parse_id(object_id, prefix)
    assert parsed is not None, object_id
    return parsed[0] // 1000


def placed_elsewhere(served: Callable[[int], bool], kind: str, cursor: str) -> tuple[int, str] | None:
    """(created_s, id) of a cursor object whose partition another node
    serves, from its id; None when its id tells nothing or it is ours."""
    prefix = ID_PREFIXES.get(kind)
    parsed = None if prefix is None else ids.parse_id(cursor, prefix)
    if parsed is None or served(parsed[1]):
        return None
    return parsed[0] // 1000, cursor


async def cluster_page(
    forwarder: Forwarder,
    items: Sequence[T],
    values: ListParams,
    *,
    url: str,
    kind: str,
    key: Callable[[T], tuple[int, str]],
    render: Callable[[T], Any],
    expansion: Expansion | None = None,
    complete: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """The page of a list over every node's partitions (this node's alone
    when it is not in a cluster, or when a peer asks). With `expansion`,
    `values.expand` is applied to this node's items (each peer expands its
    own: it gets the same query). `complete` finishes this node's page
    first, with what rendering alone cannot read (from the store)."""
    node = forwarder.node
    elsewhere = functools.partial(placed_elsewhere, node.shards.__contains__, kind)
    local = msgspec.to_builtins(pages.page(items, values, url=url, kind=kind, key=key, render=render, elsewhere=elsewhere))
    if complete is not None:
        await complete(local)
    if expansion is not None:
        local = await expansion.apply(local, check(values.expand, "list", kind))
    elif values.expand:
        check(values.expand, "list", kind)
    if node.membership is None or forwarded_from(node) is not None:
        return local
    collected = [local]
    for answer in await forwarder.peer_answers():
        if answer.status_code != 200:
            raise peer_refusal(answer.status_code, answer.content)
        collected.append(msgspec.json.decode(answer.content))
    return pages.merge(collected, values)


def peer_refusal(status: int, body: bytes) -> ApiError:
    """A peer's refusal (a cursor its partition does not have, say), as ours."""
    if status >= 500:
        return errors.unavailable("A node holding part of this list could not answer. Retry shortly.")
    try:
        error = msgspec.json.decode(body, type=_PeerAnswer).error
    except msgspec.DecodeError:
        error = _PeerError()
    return ApiError(status, error.type, error.message, code=error.code, param=error.param)
