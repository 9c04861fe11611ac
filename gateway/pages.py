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
    elsewhere: Callable[[str], tuple[int, str] | None] = lambda cursor: None,
) -> dict[str, Any]:
    """One page of `items`, whose `key` is (created_s, id).

    Ids break ties within a second, so the order is total and a cursor never
    skips or repeats an item. A cursor that is not among `items` is placed by
    the key `elsewhere` gives it (an object another node serves), or refused.
    """
    ordered = sorted((item for item in items if _created_matches(key(item)[0], params.created)), key=key, reverse=True)
    keys = [key(item) for item in ordered]
    if params.starting_after is not None and params.ending_before is not None:
        raise errors.invalid_request("Pass starting_after or ending_before, not both.", param="ending_before")
    if params.starting_after is not None:
        # The items after the cursor: those whose key is below its key.
        cursor = _position(keys, params.starting_after, kind, "starting_after", elsewhere, after=True)
        chosen = ordered[cursor : cursor + params.limit]
        has_more = cursor + params.limit < len(ordered)
    elif params.ending_before is not None:
        cursor = _position(keys, params.ending_before, kind, "ending_before", elsewhere, after=False)
        start = max(0, cursor - params.limit)
        chosen = ordered[start:cursor]
        has_more = start > 0
    else:
        chosen = ordered[: params.limit]
        has_more = len(ordered) > params.limit
    return {"object": "list", "url": url, "has_more": has_more, "data": [render(item) for item in chosen]}


def _position(
    keys: list[tuple[int, str]], cursor: str, kind: str, param: str, elsewhere: Callable[[str], tuple[int, str] | None], *, after: bool
) -> int:
    """Where a page starts (`after`: just past the cursor) or ends (just
    before it), in `keys` sorted newest first."""
    found = next((index for index, (_, item_id) in enumerate(keys) if item_id == cursor), None)
    if found is not None:
        return found + 1 if after else found
    placed = elsewhere(cursor)
    if placed is None:
        raise errors.invalid_request(f"No such {kind}: '{cursor[:64]}'", param=param, code="resource_missing")
    # Keys run newest first: count those newer than the cursor.
    return sum(1 for item_key in keys if item_key > placed)


def merge(pages: Sequence[dict[str, Any]], params: ListParams) -> dict[str, Any]:
    """One page from the pages several nodes made for the same request, each
    over its own partitions: the same window over all of their items."""
    items = sorted((item for one in pages for item in one["data"]), key=lambda item: (item["created"], item["id"]), reverse=True)
    if params.ending_before is not None:
        chosen = items[-params.limit :] if params.limit else []
    else:
        chosen = items[: params.limit]
    has_more = len(items) > params.limit or any(one["has_more"] for one in pages)
    return {**pages[0], "has_more": has_more, "data": chosen}
