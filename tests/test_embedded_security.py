"""The embedded servers are not open to other local users: Valkey and
PostgreSQL ask for passwords, what we write is private, and Valkey dies with
the process that started it. And the local test merchant's key is not kept
in clear."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import msgspec
import psutil
import pytest
import redis
import trio
import trio_asyncio

from payments import embedded, up as server
from shards.vault import Vault
from tests.helpers import wait_until


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_embedded_valkey_without_the_password_cannot_read_or_delete_nonces(tmp_path: Path) -> None:
    with embedded.valkey(tmp_path) as url:
        parts = urlsplit(url)
        assert parts.password and len(parts.password) >= 32
        intruder = redis.Redis(host="127.0.0.1", port=parts.port, socket_timeout=5)
        # Valkey's own refusals: their text is the server's, not ours.
        with pytest.raises(redis.AuthenticationError):
            intruder.keys("nonce:*")
        with pytest.raises(redis.AuthenticationError):
            intruder.flushall()
        intruder.close()
        owner = redis.Redis.from_url(url, socket_timeout=5)
        owner.set("nonce:acct_x:1", "1")
        assert owner.keys("nonce:*") == [b"nonce:acct_x:1"]
        owner.close()
        directory = tmp_path / "valkey"
        assert _mode(directory) == 0o700
        for path in directory.iterdir():
            assert _mode(path) & 0o077 == 0, path
            # The password is handed over on standard input, never written.
            assert parts.password.encode() not in path.read_bytes(), path


def test_embedded_valkey_dies_with_a_sigkilled_parent(tmp_path: Path) -> None:
    script = (
        "import sys, time; from pathlib import Path; from payments import embedded\n"
        "with embedded.valkey(Path(sys.argv[1])) as url:\n"
        "    print(url, flush=True); time.sleep(120)\n"  # the parent lives on until killed below
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        url = parent.stdout.readline().strip()
        assert url.startswith("redis://")
        client = redis.Redis.from_url(url, socket_timeout=2)
        assert client.ping()
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)

        def gone() -> bool:
            try:
                client.ping()
            except redis.ConnectionError:
                return True
            return False

        wait_until(gone, 15, "valkey-server to die with the process that started it", interval_s=0.1)
    finally:
        parent.kill()
        parent.wait(10)


def test_embedded_postgres_without_the_password_is_refused(tmp_path: Path) -> None:
    import pgserver

    url = embedded.database_url(tmp_path)
    try:
        password = urlsplit(url).password
        assert password and password == (tmp_path / embedded.PASSWORD_FILE).read_text().strip()
        assert _mode(tmp_path / embedded.PASSWORD_FILE) == 0o600
        hba = (tmp_path / "postgres" / "pg_hba.conf").read_text()
        rules = [line.split() for line in hba.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        assert rules and all(rule[-1] != "trust" for rule in rules)
        without = url.replace(f":{password}@", ":@", 1)

        async def connect(target: str) -> int:
            connection = await asyncpg.connect(target)
            try:
                return await connection.fetchval("SELECT 1")
            finally:
                await connection.close()

        async def check() -> None:
            async with trio_asyncio.open_loop():
                assert await trio_asyncio.aio_as_trio(connect)(url) == 1
                # PostgreSQL's own refusal: its text is the server's, not ours.
                with pytest.raises(asyncpg.InvalidPasswordError):
                    await trio_asyncio.aio_as_trio(connect)(without)

        trio.run(check)
        # A second start on the same data dir joins it with the same password.
        assert embedded.database_url(tmp_path) == url
    finally:
        pgserver.get_server(tmp_path / "postgres")._cleanup()


async def test_the_test_merchant_secret_key_is_not_stored_in_clear(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vault = Vault.from_config(tmp_path)
    keys = await server.test_merchant(store, tmp_path, vault)
    path = tmp_path / server.TEST_MERCHANT_FILE
    assert _mode(path) == 0o600
    assert keys.secret_key.encode() not in path.read_bytes()
    again = await server.test_merchant(store, tmp_path, vault)
    assert again.secret_key == keys.secret_key


async def test_a_test_merchant_file_in_clear_from_an_older_version_is_sealed_at_start(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vault = Vault.from_config(tmp_path)
    first = await server.test_merchant(store, tmp_path, vault)
    path = tmp_path / server.TEST_MERCHANT_FILE
    path.write_bytes(msgspec.json.encode({"id": first.id, "secret_key": first.secret_key, "publishable_key": first.publishable_key}))
    kept = await server.test_merchant(store, tmp_path, vault)
    assert kept.secret_key == first.secret_key
    assert first.secret_key.encode() not in path.read_bytes()


def _start_up(data_dir: Path) -> tuple[subprocess.Popen, str]:
    """`payments up` on the embedded servers (no server named in the environment)."""
    environ = {name: value for name, value in os.environ.items() if name not in ("PAYMENTS_DATABASE_URL", "PAYMENTS_REDIS_URL")}
    process = subprocess.Popen(
        [sys.executable, "-m", "payments.cli", "up", "--port", "0", "--data-dir", str(data_dir), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=environ,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("payments up: listening on "):
            return process, line.split()[-1]
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError("payments up did not start")


def _left_behind(data_dir: Path, pids: set[int]) -> list[str]:
    """Processes still alive among `pids`, or serving anything under `data_dir`."""
    found = []
    for process in psutil.process_iter(attrs=["pid", "cmdline"]):
        command = " ".join(process.info["cmdline"] or ())
        if process.info["pid"] in pids or str(data_dir) in command:
            try:
                if process.status() != psutil.STATUS_ZOMBIE:
                    found.append(f"{process.info['pid']} {command[:120]}")
            except psutil.NoSuchProcess:
                pass
    return found


def _descendants(pid: int) -> set[int]:
    return {child.pid for child in psutil.Process(pid).children(recursive=True)}


def test_sigkill_of_payments_up_leaves_nothing_behind_and_it_starts_again(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first, url = _start_up(data_dir)
    try:
        started = _descendants(first.pid)
        assert started, "up started no servers"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        wait_until(
            lambda: not _left_behind(data_dir, started), 15,
            lambda: f"the servers of a SIGKILLed up to exit; left behind: {_left_behind(data_dir, started)}", interval_s=0.2,
        )
    finally:
        first.kill()
    # The same data dir starts again, serves, and a clean stop stops all it started.
    second, url = _start_up(data_dir)
    try:
        started = _descendants(second.pid)
        keys = msgspec.json.decode((data_dir / server.TEST_MERCHANT_FILE).read_bytes())
        assert keys["id"].startswith("acct_")
        assert httpx.get(url + "/healthz", timeout=10).status_code == 200
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
        wait_until(
            lambda: not _left_behind(data_dir, started), 15,
            lambda: f"the servers of a stopped up to exit; left behind: {_left_behind(data_dir, started)}", interval_s=0.2,
        )
    finally:
        second.kill()
