"""The card re-wrap job: after a rotation (`payments vault rotate-key`),
cards sealed under older key versions are moved to the active one, a
bounded batch at a time, and each old version is retired once no card uses
it (its wrapped key deleted; the database refuses it while a card does).

A card's own key is re-wrapped; its number is not opened, except for cards
of the format from before versions (version 0), which are sealed anew. It
runs once per cluster, under a worker lease (workers/node_workers.py).

A version is retired only after it has been retiring for `retire_after_s`
(by the database's clock), longer than a node takes to read the active
version again (shards/vault.py, REFRESH_S_DEFAULT): by then no node seals
new cards with it.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
import trio

from shards.vault import CardKeys
from store.errors import StoreUnavailable
from store.vault_keys import KeyVersionRetired
from workers.errors import WorkerErrors

log = structlog.get_logger("workers.card_rewrap")


class RewrapBounds(msgspec.Struct, frozen=True):
    # Cards read and written back in one batch (two round trips).
    batch_cards_max: int = 500
    # Pause between batches, so a large re-wrap leaves the database to payments.
    batch_pause_s: float = 0.05
    # How often to look for work when there was none.
    idle_s: float = 10.0
    retire_after_s: float = 60.0


async def run_card_rewrap(
    keys: CardKeys,
    bounds: RewrapBounds = RewrapBounds(),
    *,
    errors: WorkerErrors | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Re-wrap and retire until cancelled; the counter is passed to
    `task_status.started`. A database error is logged and counted, and
    tried again after `idle_s`."""
    errors = errors or WorkerErrors("card_rewrap")
    task_status.started(errors)
    while True:
        try:
            moved = await rewrap_step(keys, bounds)
        except StoreUnavailable as error:
            errors.record("card_rewrap_failed", error=str(error))
            moved = 0
        await trio.sleep(bounds.batch_pause_s if moved else bounds.idle_s)


async def rewrap_step(keys: CardKeys, bounds: RewrapBounds) -> int:
    """One step: read the versions again, then move one batch of the
    oldest retiring version's cards, or retire the versions that hold none.
    Returns how many cards it found to move (0: nothing to do now).
    Raises StoreUnavailable."""
    await keys.refresh()
    if keys.active_version is None:
        return 0
    for version in keys.retiring_versions():
        cards = await keys.versions.cards_under(version, bounds.batch_cards_max)
        if not cards:
            if await keys.versions.retire(version, bounds.retire_after_s):
                log.info("card_key_version_retired", version=version)
            continue
        rows = [(payment_method_id, sealed, keys.rewrapped(sealed, payment_method_id)) for payment_method_id, sealed in cards]
        try:
            moved = await keys.versions.replace_sealed(rows)
        except KeyVersionRetired:
            # Rotated and retired between our read and our write: read again.
            return 0
        log.info("cards_rewrapped", version=version, to_version=keys.active_version, count=moved)
        return len(cards)
    return 0
