"""Stripe-style list pages: newest first, `limit`, `starting_after`,
`ending_before`, `has_more`, and `created` filters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from gateway import errors
from gateway.params import CreatedFilter, ListParams

T = TypeVar("T")


def _created_matches(created_s: int, created: int | CreatedFilter | None) -> bool:
    if created is None:
        return True
    if isinstance(created, int):
        return created_s == created
    return (
        (created.gt is None or created_s > created.gt)
        and (created.gte is None or created_s >= created.gte)
        and (created.lt is None or created_s < created.lt)
        and (created.lte is None or created_s <= created.lte)
    )


def page(
    items: Sequence[T],
    params: ListParams,
    *,
    url: str,
    kind: str,
    key: Callable[[T], tuple[int, str]],
    render: Callable[[T], dict[str, Any]],
) -> dict[str, Any]:
    """One page of `items`, whose `key` is (created_s, id).

    Ids break ties within a second, so the order is total and a cursor never
    skips or repeats an item.
    """
    ordered = sorted((item for item in items if _created_matches(key(item)[0], params.created)), key=key, reverse=True)
    ids = [key(item)[1] for item in ordered]
    if params.starting_after is not None and params.ending_before is not None:
        raise errors.invalid_request("Pass starting_after or ending_before, not both.", param="ending_before")
    if params.starting_after is not None:
        cursor = _position(ids, params.starting_after, kind, "starting_after")
        chosen = ordered[cursor + 1 : cursor + 1 + params.limit]
        has_more = cursor + 1 + params.limit < len(ordered)
    elif params.ending_before is not None:
        cursor = _position(ids, params.ending_before, kind, "ending_before")
        start = max(0, cursor - params.limit)
        chosen = ordered[start:cursor]
        has_more = start > 0
    else:
        chosen = ordered[: params.limit]
        has_more = len(ordered) > params.limit
    return {"object": "list", "url": url, "has_more": has_more, "data": [render(item) for item in chosen]}


def _position(ids: list[str], cursor: str, kind: str, param: str) -> int:
    try:
        return ids.index(cursor)
    except ValueError:
        raise errors.invalid_request(f"No such {kind}: '{cursor[:64]}'", param=param, code="resource_missing") from None
