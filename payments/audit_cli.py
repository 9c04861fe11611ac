"""`payments audit export|verify|prune`: the audit archive (workers/audit/).

Wired into the `payments` command by `register(commands)`; `command_audit`
runs whichever subcommand was chosen (each leaf parser carries its handler
as `arguments.audit_handler`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import trio
import trio_asyncio

from gateway.logs import configure_logging
from payments.arguments import DEFAULT_DATA_DIR, bounded_int
from store.errors import StoreError
from store.postgres import Store
from workers import audit
from workers.audit import ArchiveInconsistent, ArchiveUnavailable, ExportBusy, archive_from_environment

DESCRIPTION = """\
The audit archive: the journal and its events, copied out of PostgreSQL into
gzip-compressed JSON-lines segments chained by SHA-256 in a manifest, and
mirrored entry by entry in the database, so that a changed, missing or
reordered segment, or an edited manifest, is found by `verify`.

Where: --archive DIR; else the S3 bucket PAYMENTS_ARCHIVE_S3_BUCKET
(PAYMENTS_ARCHIVE_S3_PREFIX, PAYMENTS_ARCHIVE_S3_ENDPOINT; needs the s3
extra: pip install 'payments-engine[s3]'); else PAYMENTS_ARCHIVE_DIR; else
<data dir>/archive. The database: --database-url or PAYMENTS_DATABASE_URL.
"""

PRUNE_EPILOG = """\
Journal rows are never deleted: actors rebuild their state by replaying the
journal at start, and there are no snapshots yet. Events are kept at least
30 days (they are served that long), and only once archived, queued for
webhooks and not awaiting a delivery."""


def register(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Add `audit` with its three subcommands to the `payments` command."""
    parser = commands.add_parser(
        "audit",
        help="export the journal to a tamper-evident archive, verify it, prune hot tables",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subcommands = parser.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")

    def common(command: argparse.ArgumentParser, *, archive: bool = True) -> None:
        command.add_argument(
            "--database-url", default=os.environ.get("PAYMENTS_DATABASE_URL"),
            help="the database (default $PAYMENTS_DATABASE_URL)",
        )
        if archive:
            command.add_argument("--archive", type=Path, metavar="DIR", help="a local archive directory (overrides the environment)")
            command.add_argument(
                "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="the default archive is <data dir>/archive (default ./.payments)"
            )

    export = subcommands.add_parser(
        "export", help="archive the journal rows not archived yet",
        description="Archive each partition's journal rows (and their events) past what is archived already.",
    )
    common(export)
    export.add_argument(
        "--segment-rows", type=bounded_int(1, audit.SEGMENT_ROWS_MAX), default=audit.SEGMENT_ROWS_DEFAULT, metavar="N",
        help=f"journal rows per segment at most (default {audit.SEGMENT_ROWS_DEFAULT})",
    )
    export.add_argument(
        "--segments-max", type=bounded_int(1, audit.SEGMENTS_PER_RUN_MAX), default=audit.SEGMENTS_PER_RUN_DEFAULT, metavar="N",
        help=f"segments written by this run at most (default {audit.SEGMENTS_PER_RUN_DEFAULT}); run again for more",
    )
    export.set_defaults(audit_handler=command_export)

    verify = subcommands.add_parser(
        "verify", help="check segments, the hash chain and the database mirror; exit 1 on any problem",
        description="Recompute every segment's SHA-256, walk the manifest's hash chain, check each partition's"
        " seqs are continuous, and, with a database, compare the manifest with its mirror there and sampled"
        " archived rows with the journal. Exit 0 when all checks pass, 1 when a problem is found (one line"
        " each), 2 when the archive or the database cannot be read or the command is wrong."
        " Without a database, only the archive is checked.",
    )
    common(verify)
    verify.add_argument(
        "--journal-rows", type=bounded_int(0, 100_000_000), default=audit.JOURNAL_COMPARE_ROWS_DEFAULT, metavar="N",
        help=f"archived journal rows to compare with the database, spread over the segments (default"
        f" {audit.JOURNAL_COMPARE_ROWS_DEFAULT}; 0: none; more than archived: all)",
    )
    verify.set_defaults(audit_handler=command_verify)

    prune = subcommands.add_parser(
        "prune", help="delete old, archived rows from the hot tables (never the journal)",
        description="Delete events older than max(N, 30) days that are archived, and finished webhook deliveries"
        " and attempts older than N days, in bounded batches.",
        epilog=PRUNE_EPILOG,
    )
    common(prune, archive=False)
    prune.add_argument(
        "--retention-days", type=bounded_int(1, audit.RETENTION_DAYS_MAX), required=True, metavar="N",
        help="keep what is younger than this many days",
    )
    prune.add_argument(
        "--batch-rows", type=bounded_int(1, 100_000), default=audit.PRUNE_BATCH_ROWS, metavar="N",
        help=f"rows deleted per table and transaction (default {audit.PRUNE_BATCH_ROWS})",
    )
    prune.set_defaults(audit_handler=command_prune)
    return parser


def command_audit(arguments: argparse.Namespace) -> int:
    return arguments.audit_handler(arguments)


def _archive(arguments: argparse.Namespace) -> Any:

    return archive_from_environment(arguments.data_dir, arguments.archive)


async def _with_store(database_url: str, action: Any) -> Any:

    async with trio_asyncio.open_loop():
        store = await Store.open(database_url, connections_max=2)
        try:
            return await action(store)
        finally:
            await store.close()


def _run(action: Any, *args: Any) -> tuple[int, Any]:
    """Run `action` under trio; infrastructure trouble becomes one line on
    stderr and exit status 2, an inconsistent or busy archive status 1."""

    status, result = 0, None
    try:
        result = trio.run(action, *args)
    except* (ArchiveInconsistent, ExportBusy) as group:
        for error in _leaves(group):
            print(f"error: {error}", file=sys.stderr)
        status = 1
    except* (StoreError, ArchiveUnavailable) as group:
        for error in _leaves(group):
            print(f"error: {error}", file=sys.stderr)
        status = 2
    return status, result


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:  # type: ignore[type-arg]
    found: list[BaseException] = []
    for error in group.exceptions:
        found.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return found


def _database_url(arguments: argparse.Namespace, command: str) -> str | None:
    if not arguments.database_url:
        print(f"error: audit {command} needs the database: --database-url or PAYMENTS_DATABASE_URL", file=sys.stderr)
    return arguments.database_url


def command_export(arguments: argparse.Namespace) -> int:
    database_url = _database_url(arguments, "export")
    if not database_url:
        return 2
    archive = _archive(arguments)

    async def action(store):  # type: ignore[no-untyped-def]
        await store.audit.state()   # a one-line error when the schema is missing
        return await audit.export(store, archive, segment_rows=arguments.segment_rows, segments_max=arguments.segments_max)

    status, report = _run(_with_store, database_url, action)
    if report is not None:
        print(f"archive: {archive.describe()}\n{report.summary()}")
    return status


def command_verify(arguments: argparse.Namespace) -> int:
    archive = _archive(arguments)

    async def check(store):  # type: ignore[no-untyped-def]
        return await audit.verify(store, archive, journal_rows_max=arguments.journal_rows)

    if arguments.database_url:
        status, report = _run(_with_store, arguments.database_url, check)
    else:
        status, report = _run(check, None)
    if report is None:
        return status
    print(report.summary())
    return 0 if report.ok else 1


def command_prune(arguments: argparse.Namespace) -> int:
    database_url = _database_url(arguments, "prune")
    if not database_url:
        return 2

    async def action(store):  # type: ignore[no-untyped-def]
        await store.audit.state()
        return await audit.prune(store, arguments.retention_days, batch_rows=arguments.batch_rows)

    status, report = _run(_with_store, database_url, action)
    if report is not None:
        print(report.summary())
    return status


def main(argv: list[str] | None = None) -> int:
    """`python -m payments.audit_cli audit ...`: the same as `payments audit ...`."""

    parser = argparse.ArgumentParser(prog="payments")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    arguments = parser.parse_args(argv)
    configure_logging("warning")
    return command_audit(arguments)


if __name__ == "__main__":
    sys.exit(main())
