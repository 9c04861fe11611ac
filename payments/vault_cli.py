"""`payments vault`: the card key versions of the database (shards/vault.py).

`rotate-key` makes a new version, which new cards use at once (running
nodes read it within a few seconds); the re-wrap job of a running node then
moves the older versions' cards to it and retires each old version once no
card uses it. `status` shows the versions and how many cards each holds.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import trio
import trio_asyncio

from payments.arguments import database_url
from shards.vault import LIVE_VERSIONS_MAX, REFRESH_S_DEFAULT, CardKeys, Vault
from store.postgres import Store
from store.vault_keys import LEGACY_VERSION, KeyVersionRow, Rotated, VaultKeys

EXIT_STATUSES = (
    "exit status: 0 done; 1 refused (too many versions still hold cards: wait for the re-wrap job);"
    " 2 no master key, not the master key of this database's cards, the database unreachable or not migrated"
)


class NotMigrated(Exception):
    """The database has no key versions table: it was never migrated by this version."""


def register(commands: Any, data_dir_option: Callable[[argparse.ArgumentParser], None]) -> None:
    vault = commands.add_parser(
        "vault", help="the card key versions: rotate the key, see which versions hold cards",
        description="Card numbers are sealed under a key version, each a random key wrapped by the master key"
        " (PAYMENTS_CARD_KEY, or card.key in the data dir).",
    )
    vault_commands = vault.add_subparsers(dest="vault_command", required=True, metavar="SUBCOMMAND")
    rotate = vault_commands.add_parser(
        "rotate-key", help="make a new card key version; new cards use it, older cards are re-wrapped to it",
        description="Make a new card key version and make it the active one. New cards are sealed with it at once"
        f" (running nodes read it again within {REFRESH_S_DEFAULT:g} s). The re-wrap job of a running node moves the"
        " cards of older versions to it in batches, then retires each old version once no card uses it (its wrapped"
        f" key is deleted). At most {LIVE_VERSIONS_MAX} versions may be live at once. Needs the master key.",
        epilog=EXIT_STATUSES,
    )
    rotate.add_argument("--json", action="store_true", help='print {"version", "live"} as JSON')
    data_dir_option(rotate)
    status = vault_commands.add_parser(
        "status", help="the card key versions, their states and how many cards each holds",
        description="Every card key version: active (new cards), retiring (its cards are being re-wrapped), retired"
        " (no card uses it; its wrapped key is deleted); version 0 is the key derived from the master key before"
        " versions existed. Does not need the master key.",
        epilog="exit status: 0 shown; 2 the database unreachable or not migrated",
    )
    status.add_argument("--json", action="store_true", help="one JSON object per version")
    data_dir_option(status)
    rotate.set_defaults(handler=command_rotate_key)
    status.set_defaults(handler=command_status)


async def _with_versions(data_dir: Path, action):  # type: ignore[no-untyped-def]
    async with trio_asyncio.open_loop():
        store = await Store.open(database_url(data_dir), connections_max=1)
        try:
            versions = VaultKeys(store.database)
            if not await versions.ready():
                raise NotMigrated("the database has no card key versions yet: run `payments migrate` or start a node first")
            return await action(versions)
        finally:
            await store.close()


def command_rotate_key(arguments: argparse.Namespace) -> int:
    # Never make a key here: a new one would open nothing already sealed.
    # VaultKeyError and NotMigrated are told in one line by `payments.cli.main`.
    vault = Vault.from_config(arguments.data_dir, create=False)

    async def action(versions: VaultKeys) -> Rotated:
        keys = CardKeys(versions, vault)
        await keys.check()
        return await keys.rotate()

    rotated = trio.run(_with_versions, arguments.data_dir, action)
    if not rotated.created:
        print(
            f"error: refused: {rotated.live} card key versions are live (at most {LIVE_VERSIONS_MAX}); the re-wrap job of a"
            " running node retires old versions once their cards are moved (see `payments vault status`)",
            file=sys.stderr,
        )
        return 1
    if arguments.json:
        print(msgspec.json.encode({"version": rotated.version, "live": rotated.live}).decode())
    else:
        print(f"card key version {rotated.version} is active: new cards are sealed with it"
              f" (running nodes read it within {REFRESH_S_DEFAULT:g} s)")
        print(f"older versions still live: {rotated.live - 1}; a running node's re-wrap job moves their cards and retires them")
    return 0


def command_status(arguments: argparse.Namespace) -> int:
    rows = trio.run(_with_versions, arguments.data_dir, _status)
    if arguments.json:
        for row in rows:
            print(msgspec.json.encode(msgspec.structs.replace(row, wrapped_key=None)).decode())
    else:
        print(status_table(rows))
    return 0


async def _status(versions: VaultKeys) -> list[KeyVersionRow]:
    return await versions.status()


def _when(seconds: int | None) -> str:
    return "-" if seconds is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(seconds))


def status_table(rows: list[KeyVersionRow]) -> str:
    """The versions as an operator reads them (never a key, wrapped or not)."""
    lines = ["VERSION  STATE     CARDS     CREATED               RETIRED"]
    for row in rows:
        note = "  (derived from the master key; cards sealed before versions)" if row.version == LEGACY_VERSION else ""
        lines.append(f"{row.version:>7}  {row.state:<8} {row.cards:>6}     {_when(row.created_s):<20}  {_when(row.retired_s)}{note}")
    moving = sum(row.cards for row in rows if row.state == "retiring")
    lines.append("")
    lines.append(f"{len(rows)} versions, {sum(row.cards for row in rows)} cards, {moving} still to re-wrap")
    return "\n".join(lines)
