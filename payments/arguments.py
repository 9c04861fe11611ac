"""What several commands share: the data dir, bounded numbers, and where the
database and Redis are (named servers, or the embedded ones)."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from payments import embedded

DEFAULT_DATA_DIR = Path(".payments")


def embedded_default() -> bool:
    """Whether `up` runs on the embedded servers (no external ones named)."""
    return not os.environ.get("PAYMENTS_DATABASE_URL") and not os.environ.get("PAYMENTS_REDIS_URL")


def database_url(data_dir: Path) -> str:
    url = os.environ.get("PAYMENTS_DATABASE_URL")
    if url:
        return url
    return embedded.database_url(data_dir)


@contextlib.contextmanager
def redis_url(data_dir: Path) -> Iterator[str]:
    url = os.environ.get("PAYMENTS_REDIS_URL")
    if url:
        yield url
        return
    with embedded.valkey(data_dir) as url:
        yield url


def _bounded(convert: Callable[[str], float], low: float, high: float, expected: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {expected}")
        return value

    return parse


def bounded_int(low: int, high: int) -> Callable[[str], Any]:
    return _bounded(int, low, high, f"a whole number from {low} to {high}")


def bounded_float(low: float, high: float, unit: str = "seconds") -> Callable[[str], Any]:
    return _bounded(float, low, high, f"{unit} from {low:g} to {high:g}")


def listener_options(command: argparse.ArgumentParser) -> None:
    """The options of a node's HTTP listener (`up` and `node`)."""
    command.add_argument(
        "--connections-per-client-max", type=bounded_int(1, 100_000), default=256, metavar="N",
        help="open connections one client address may hold; more are refused (default 256)",
    )
    command.add_argument(
        "--header-timeout-s", type=bounded_int(1, 600), default=10, metavar="SECONDS",
        help="time a new connection has to send its first request's headers (default 10)",
    )
    command.add_argument(
        "--requests-in-flight-max", type=bounded_int(0, 100_000), default=64, metavar="N",
        help="requests the node works on at once; more are answered 503 at once (default 64; 0: no bound)",
    )
