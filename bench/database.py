"""The run's own database: made fresh on the server PAYMENTS_DATABASE_URL
names (an admin connection; default the machine's PostgreSQL), dropped at
the end. Also the plain SQL the report needs (journal figures, the
server's version), done with asyncpg directly, outside trio."""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CONNECT_TIMEOUT_S = 10


class DatabaseError(Exception):
    """The server could not be reached or refused; the message is one line for a person."""


def admin_url() -> str:
    return os.environ.get("PAYMENTS_DATABASE_URL") or DEFAULT_ADMIN_URL


def url_for(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def where(url: str, port_default: int = 5432) -> str:
    """host:port of a URL, without credentials, for messages."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or port_default}"


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:300]


async def _execute(url: str, *statements: str) -> list[Any]:
    try:
        connection = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise DatabaseError(f"cannot connect to PostgreSQL at {where(url)}: {_one_line(error)}") from None
    try:
        return [await connection.fetch(statement) for statement in statements]
    except asyncpg.PostgresError as error:
        raise DatabaseError(f"PostgreSQL at {where(url)} refused: {_one_line(error)}") from None
    finally:
        await connection.close()


def create_database(admin: str) -> tuple[str, str]:
    """Create `bench_<random>`; returns (name, its URL)."""
    name = f"bench_{secrets.token_hex(5)}"
    asyncio.run(_execute(admin, f'CREATE DATABASE "{name}"'))
    return name, url_for(admin, name)


def drop_database(admin: str, name: str) -> None:
    asyncio.run(_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def journal_figures(url: str) -> dict[str, Any]:
    """Rows, commits and transactions in the journal. Every row of one
    transaction carries its transaction's start time (now()), so distinct
    (partition, recorded_at) pairs count the partitions' commits (actor turns
    that wrote journal rows), and distinct recorded_at the database
    transactions, which a node's group commit shares among its partitions."""
    journal, postings, version = asyncio.run(
        _execute(
            url,
            "SELECT count(*) AS rows, count(DISTINCT (partition, recorded_at)) AS commits,"
            " count(DISTINCT recorded_at) AS transactions,"
            " extract(epoch FROM max(recorded_at) - min(recorded_at)) AS span_s FROM journal",
            "SELECT count(*) AS rows FROM postings",
            "SHOW server_version",
        )
    )
    row = journal[0]
    return {
        "journal_rows": row["rows"],
        "journal_commits": row["commits"],
        "journal_transactions": row["transactions"],
        "journal_span_s": float(row["span_s"] or 0.0),
        "posting_rows": postings[0]["rows"],
        "server_version": version[0][0],
    }
