"""Baselines, measured in the same run on the same machine, so every
headline figure can be given as a ratio to what the layer under it can do:

- ingest: raw PostgreSQL ingest of journal-shaped rows (COPY in batches,
  one transaction per batch, several writers at once, as the actors write)
  into a scratch table of the run's database; rows per second.
- actor: the trio request/reply ceiling of one actor: a task draining a
  bounded mailbox in batches and setting one reply per request, as
  ShardActor does, with nothing decided and nothing written; round trips
  per second.
- bridge: the client CPU one database round trip costs (`SELECT 1`, one
  at a time), from plain asyncio on asyncpg and from trio through the
  store's one adapter (trio-asyncio); the difference is what the bridge
  adds to every call the node makes, whatever the call carries.
- http (http mode): a bare quart-trio JSON endpoint on the node's hypercorn
  settings, in a process of its own, driven closed-loop by the bench's own
  client over the same number of connections; requests per second.

Each runs for `seconds` and alone (the load has stopped by then).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import trio
import trio_asyncio

from bench.histograms import histogram_of, summary_ms
from bench.http_client import HttpFailed, Pool, Templates
from bench.machine import process_usage
from engine import intent as machine
from shards.actor import Reply
from store.database import Database

INGEST_BATCH_ROWS = 256
INGEST_WRITERS_MAX = 8
ACTOR_CLIENTS = 256
ACTOR_BATCH_MAX = 512
SCRATCH_TABLE = "bench_scratch_journal"
BARE_START_TIMEOUT_S = 30
BRIDGE_WARM_UP_CALLS = 50


def journal_bodies() -> list[tuple[str, str]]:
    """(kind, JSON body) of real events of one paid intent, the rows a
    payment writes most."""

    intent_id = "pi_038g0sq9t2001r679mshv15xd0e32"
    attempt_id = "att_038g0sq9t2001448xeb5ssygd6wby"
    create = machine.CreateIntent(
        intent_id=intent_id,
        merchant_id="acct_038g0sq35r000n7zrz8syzzsk74mw",
        livemode=False,
        amount=2000,
        currency="usd",
        capture_method=machine.CaptureMethod.automatic,
        client_secret=f"{intent_id}_secret_xxxxxxxxxxxxxxxxxxxxxxxx",
        at_s=1_795_309_818,
        attempt_id=attempt_id,
        payment_method_id="pm_038g0sq9sw000z4q77wbn87cw1700",
        confirm=True,
    )
    decision = machine.decide(None, create)
    intent = None
    events = list(decision.events)
    for event in events:
        intent = machine.evolve(intent, event)
    events += machine.decide(intent, machine.RecordApproval(intent_id=intent_id, attempt_id=attempt_id, at_s=1_795_309_819)).events
    return [(type(event).__name__, machine.event_encoder.encode(event).decode()) for event in events]


async def _ingest(url: str, seconds: float, writers: int) -> dict[str, Any]:
    bodies = journal_bodies()
    pool = await asyncpg.create_pool(url, min_size=writers, max_size=writers)
    try:
        async with pool.acquire() as connection:
            await connection.execute(
                f"CREATE TABLE {SCRATCH_TABLE} (partition smallint NOT NULL, seq bigint NOT NULL, entity_id text NOT NULL,"
                " kind text NOT NULL, body jsonb NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now(),"
                " PRIMARY KEY (partition, seq));"
                f" CREATE INDEX ON {SCRATCH_TABLE} (entity_id)"
            )
        commit_s: list[float] = []
        rows_total = 0
        deadline = time.monotonic() + seconds

        async def writer(partition: int) -> None:
            nonlocal rows_total
            seq = 0
            async with pool.acquire() as connection:
                while time.monotonic() < deadline:
                    records = []
                    for _ in range(INGEST_BATCH_ROWS):
                        seq += 1
                        kind, body = bodies[seq % len(bodies)]
                        records.append((partition, seq, f"pi_{partition:04d}{seq // 3:026d}", kind, body))
                    started = time.monotonic()
                    async with connection.transaction():
                        await connection.copy_records_to_table(
                            SCRATCH_TABLE, records=records, columns=("partition", "seq", "entity_id", "kind", "body")
                        )
                    commit_s.append(time.monotonic() - started)
                    rows_total += len(records)

        started = time.monotonic()
        await asyncio.gather(*(writer(partition) for partition in range(writers)))
        elapsed = time.monotonic() - started
        async with pool.acquire() as connection:
            await connection.execute(f"DROP TABLE {SCRATCH_TABLE}")
    finally:
        await pool.close()
    from array import array

    commits = summary_ms(histogram_of(array("q", (int(value * 1_000_000) for value in commit_s))))
    return {
        "rows_per_s": round(rows_total / elapsed, 1),
        "commits_per_s": round(len(commit_s) / elapsed, 1),
        "rows_per_commit": INGEST_BATCH_ROWS,
        "writers": writers,
        "commit_p50_ms": commits["p50_ms"],
        "commit_p99_ms": commits["p99_ms"],
        "seconds": round(elapsed, 2),
    }


def ingest(url: str, seconds: float, partitions: int) -> dict[str, Any]:
    return asyncio.run(_ingest(url, seconds, max(1, min(partitions, INGEST_WRITERS_MAX))))


async def _select_one(connection: asyncpg.Connection) -> int:
    return await connection.fetchval("SELECT 1")


async def _timed_calls(call: Callable[[], Awaitable[Any]], seconds: float) -> tuple[int, float, float]:
    """(calls, CPU seconds, wall seconds) of `call` made one after another
    for `seconds`, after a few unmeasured ones."""
    for _ in range(BRIDGE_WARM_UP_CALLS):
        await call()
    calls = 0
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    deadline = wall_before + seconds
    while time.perf_counter() < deadline:
        await call()
        calls += 1
    return calls, time.process_time() - cpu_before, time.perf_counter() - wall_before


async def _plain_round_trips(url: str, seconds: float) -> tuple[int, float, float]:
    connection = await asyncpg.connect(url)
    try:
        return await _timed_calls(lambda: _select_one(connection), seconds)
    finally:
        await connection.close()


async def _bridged_round_trips(url: str, seconds: float) -> tuple[int, float, float]:
    async with trio_asyncio.open_loop():
        database = await Database.open(url, connections_max=1)
        try:
            return await _timed_calls(lambda: database.call(_select_one), seconds)
        finally:
            await database.close()


def bridge(url: str, seconds: float) -> dict[str, Any]:
    """Half the time each way, one after the other, in this process."""
    figures: dict[str, Any] = {}
    plain = asyncio.run(_plain_round_trips(url, seconds / 2))
    bridged = trio.run(_bridged_round_trips, url, seconds / 2)
    for name, (calls, cpu_s, wall_s) in (("plain", plain), ("bridged", bridged)):
        figures[f"{name}_cpu_us_per_call"] = round(cpu_s / max(calls, 1) * 1_000_000, 1)
        figures[f"{name}_calls_per_s"] = round(calls / wall_s, 1)
    figures["bridge_cpu_us_per_call"] = round(figures["bridged_cpu_us_per_call"] - figures["plain_cpu_us_per_call"], 1)
    figures["seconds"] = round(seconds, 2)
    return figures


async def _actor(seconds: float) -> dict[str, Any]:
    from array import array


    send, receive = trio.open_memory_channel[tuple[int, Reply]](4096)
    round_trips = 0
    latencies_us = array("q")

    async def actor() -> None:
        while True:
            batch = [await receive.receive()]
            while len(batch) < ACTOR_BATCH_MAX:
                try:
                    batch.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            for request, reply in batch:
                reply.set(request)  # type: ignore[arg-type]

    async def client(deadline: float) -> None:
        nonlocal round_trips
        clock = trio.current_time
        while clock() < deadline:
            reply = Reply()
            started = clock()
            send.send_nowait((round_trips, reply))
            await reply.wait()
            latencies_us.append(int((clock() - started) * 1_000_000))
            round_trips += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor)
        started = trio.current_time()
        async with trio.open_nursery() as clients:
            for _ in range(ACTOR_CLIENTS):
                clients.start_soon(client, started + seconds)
        elapsed = trio.current_time() - started
        nursery.cancel_scope.cancel()
    latency = summary_ms(histogram_of(latencies_us))
    return {
        "round_trips_per_s": round(round_trips / elapsed, 1),
        "clients": ACTOR_CLIENTS,
        "round_trip_p50_ms": latency["p50_ms"],
        "round_trip_p99_ms": latency["p99_ms"],
        "seconds": round(elapsed, 2),
    }


def actor(seconds: float) -> dict[str, Any]:
    return trio.run(_actor, seconds)


async def _drive_bare(host: str, port: int, connections: int, seconds: float) -> dict[str, Any]:
    from array import array

    pool = Pool(host, port, connections)
    templates = Templates(host, port)
    request = templates.post("/v1/echo", b'{"amount": 2000, "currency": "usd"}', b"application/json")
    latencies_us = array("q")
    failures = 0

    async def worker(deadline: float) -> None:
        nonlocal failures
        clock = trio.current_time
        while clock() < deadline:
            started = clock()
            try:
                status, _ = await pool.request(request, timeout_s=10)
            except HttpFailed:
                failures += 1
                continue
            if status != 200:
                failures += 1
            latencies_us.append(int((clock() - started) * 1_000_000))

    try:
        await pool.request(request, timeout_s=10)  # connect once before the clock
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(worker, started + seconds)
        elapsed = trio.current_time() - started
    finally:
        pool.close()
    latency = summary_ms(histogram_of(latencies_us))
    return {
        "requests_per_s": round(len(latencies_us) / elapsed, 1),
        "connections": connections,
        "failures": failures,
        "request_p50_ms": latency["p50_ms"],
        "request_p99_ms": latency["p99_ms"],
        "seconds": round(elapsed, 2),
    }


def bare_http(connections: int, seconds: float) -> dict[str, Any]:
    """Start the bare server, drive it, stop it."""

    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_server", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + BARE_START_TIMEOUT_S
        match = None
        while time.monotonic() < deadline and match is None:
            line = process.stdout.readline()
            if not line:
                break
            match = re.match(r"bare server: listening on http://([^:]+):(\d+)", line)
        if match is None:
            return {"error": "the bare server did not start"}
        cpu_before, _ = process_usage(process.pid)
        result = trio.run(_drive_bare, match.group(1), int(match.group(2)), connections, seconds)
        cpu_after, _ = process_usage(process.pid)
        result["server_cpu_s"] = round(cpu_after - cpu_before, 2)
        return result
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
