"""Shared fixtures: a fresh PostgreSQL database per use, and real node processes.

Every answer of a node's API that a test receives is checked against
Stripe's published description (tests/stripe_spec.py): the test that
received one that does not validate fails, and the run ends with the count
of what was checked, by object type.

Tests talk to the PostgreSQL and Redis servers named by
PAYMENTS_TEST_ADMIN_URL (default: the machine's PostgreSQL on 127.0.0.1:5432)
and PAYMENTS_TEST_REDIS_URL (default redis://127.0.0.1:6379/0). Every test
database gets a random name and is dropped afterwards, so runs never collide.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import trio_asyncio

from store.postgres import Store
from tests.stripe_spec import RESPONSES, SPEC_PATH

ADMIN_URL = os.environ.get("PAYMENTS_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("PAYMENTS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NODE_START_TIMEOUT_S = 60


def _answers(url: str, port_default: int) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or port_default), timeout=2).close()
    except OSError:
        return False
    return True


def pytest_configure(config: pytest.Config) -> None:
    """Use the machine's PostgreSQL and Redis; on a machine without them, start
    the embedded ones (the same servers `payments up` uses) for this run."""
    global ADMIN_URL, REDIS_URL
    if not SPEC_PATH.is_file():
        raise pytest.UsageError(f"Stripe's OpenAPI description is not at {SPEC_PATH} (shared/ beside the checkout, or PAYMENTS_STRIPE_SPEC)")
    RESPONSES.install()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    scratch = Path(tempfile.mkdtemp(prefix="payments-tests-"))
    if not _answers(ADMIN_URL, 5432):
        from payments import embedded

        ADMIN_URL = embedded.database_url(scratch)
    if not _answers(REDIS_URL, 6379):
        from payments import embedded

        valkey = embedded.valkey(scratch)
        REDIS_URL = valkey.__enter__()
        config.add_cleanup(lambda: valkey.__exit__(None, None, None))


def _fail_on_invalid_responses(phase: str) -> Generator[None, object, object]:
    """Run a test's phase; then fail it if it received an answer that does
    not validate against Stripe's spec (unless it failed already)."""
    __tracebackhide__ = True
    RESPONSES.take_violations()
    result = yield
    violations = RESPONSES.take_violations()
    if violations:
        shown = "\n  ".join(violations[:20])
        raise AssertionError(f"{len(violations)} answer(s) during {phase} do not validate against Stripe's spec:\n  {shown}")
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    __tracebackhide__ = True
    return (yield from _fail_on_invalid_responses("setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    __tracebackhide__ = True
    return (yield from _fail_on_invalid_responses("the test"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, object]:
    __tracebackhide__ = True
    return (yield from _fail_on_invalid_responses("teardown"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if RESPONSES.responses:
        terminalreporter.write_sep("-", "Stripe spec conformance")
        for line in RESPONSES.summary():
            terminalreporter.write_line(line)


def _admin(sql: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(ADMIN_URL)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


def database_url_for(name: str) -> str:
    return urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))


@pytest.fixture(autouse=True)
def logging_left_as_found(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Commands run in-process configure structlog for a terminal; keep that
    from leaking into later tests: no logger is cached for good, and the
    configuration is put back afterwards (capture_logs relies on both)."""
    import structlog

    from payments import cli

    saved = structlog.get_config()
    configure = cli.configure_logging

    def configure_uncached(level: str) -> None:
        configure(level)
        structlog.configure(cache_logger_on_first_use=False)

    monkeypatch.setattr(cli, "configure_logging", configure_uncached)
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session")
def make_database() -> Iterator[Callable[[], str]]:
    """Create empty databases on demand; drop them all at the end of the session."""
    names: list[str] = []

    def make() -> str:
        name = f"payments_test_{os.getpid()}_{secrets.token_hex(4)}"
        _admin(f'CREATE DATABASE "{name}"')
        names.append(name)
        return database_url_for(name)

    yield make
    for name in names:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(make_database: Callable[[], str]) -> str:
    return make_database()


@pytest.fixture
async def store(database_url: str):
    """A migrated store on a fresh database, with 4 partitions."""
    async with trio_asyncio.open_loop():
        opened = await Store.open(database_url, connections_max=8)
        await opened.migrate(4)
        try:
            yield opened
        finally:
            await opened.close()


@dataclass
class NodeProcess:
    """A `payments up` child process."""

    database_url: str
    data_dir: Path
    extra_args: list[str] = field(default_factory=list)
    redis_url: str = ""
    environ: dict[str, str] = field(default_factory=dict)
    url: str = ""
    secret_key: str = ""
    process: subprocess.Popen | None = None

    def start(self) -> NodeProcess:
        environ = {
            **os.environ,
            "PAYMENTS_DATABASE_URL": self.database_url,
            "PAYMENTS_REDIS_URL": self.redis_url or REDIS_URL,
            # Each node its own keys in the shared Redis (unless the test
            # names a prefix): no bucket, nonce or stream is shared by chance.
            "PAYMENTS_REDIS_PREFIX": f"payments-test:{secrets.token_hex(6)}:",
            **self.environ,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "payments.cli", "up", "--port", "0", "--data-dir", str(self.data_dir), "--log-level", "warning", *self.extra_args],
            stdout=subprocess.PIPE,
            stderr=open(self.data_dir / "node.log", "ab"),
            env=environ,
            text=True,
        )
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            if match := re.match(r"payments up: listening on (\S+)", line):
                self.url = match.group(1)
            if match := re.match(r"secret key:\s+(\S+)", line):
                self.secret_key = match.group(1)
            if self.url and self.secret_key:
                return self
        self.kill()
        log = (self.data_dir / "node.log").read_text()[-3000:]
        raise AssertionError(f"node did not start; its log ends with:\n{log}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> int:
        """SIGTERM, then wait for the clean shutdown; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


@pytest.fixture(scope="session")
def node(make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One running node for the HTTP tests of a session."""
    started = NodeProcess(make_database(), tmp_path_factory.mktemp("node")).start()
    yield started
    started.stop()


@pytest.fixture
def new_node(make_database: Callable[[], str], tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Start nodes of one's own (for crash tests); all are killed at the end."""
    started: list[NodeProcess] = []

    def start(
        database_url: str | None = None,
        data_dir: Path | None = None,
        *extra_args: str,
        redis_url: str = "",
        environ: dict[str, str] | None = None,
    ) -> NodeProcess:
        process = NodeProcess(database_url or make_database(), data_dir or tmp_path, list(extra_args), redis_url, environ or {}).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def create_merchant_keys(node: NodeProcess, name: str, *options: str) -> dict:
    """A new merchant on a node's database, made with the CLI as an operator would."""
    environ = dict(os.environ, PAYMENTS_DATABASE_URL=node.database_url)
    output = subprocess.run(
        [sys.executable, "-m", "payments.cli", "merchant", "create", "--name", name, "--json", "--data-dir", str(node.data_dir), *options],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )
    assert output.returncode == 0, f"merchant create failed: {output.stderr.strip()[-2000:]}"
    return json.loads(output.stdout)


@pytest.fixture(scope="session")
def merchant_keys(node: NodeProcess) -> dict:
    """Keys of a second merchant on the session node's database."""
    return create_merchant_keys(node, "Other shop")


@pytest.fixture
def fresh_merchant(node: NodeProcess) -> dict:
    """A merchant of the test's own, so balances start from zero."""
    return create_merchant_keys(node, "Fresh shop")


def status_reachable(before: str, after: str) -> bool:
    """Whether an intent told `before` may later be `after`: I4 allows the
    acknowledged state "or a later one", where later follows the state
    machine's table (with its special cases), not any fixed order. It is a
    slight over-approximation: the table's processing -> requires_payment_method
    move also counts after a capture, whose decline really goes back to
    requires_capture."""
    from engine.intent import TRANSITIONS, Status

    moves = {status: {str(target) for target in row.values()} for status, row in TRANSITIONS.items()}
    # Special cases decided next to the table: approved authorizations and
    # declined captures go to requires_capture.
    moves[Status.processing].add("requires_capture")
    moves[Status.requires_action].add("requires_capture")
    seen, frontier = {before}, [before]
    while frontier:
        for target in moves[Status(frontier.pop())]:
            if target not in seen:
                seen.add(target)
                frontier.append(target)
    return after in seen
