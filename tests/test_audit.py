"""The audit archive (workers/audit/) on the real PostgreSQL.

Journal rows and events are seeded straight through store.journal.append, then
exported to a local archive under tmp_path. The tampering tests change the
archive the way an attacker would (a byte, a file, a line, a recomputed
entry) and expect verify to name it; the crash tests stop an export between
two of its writes and expect the next one to carry on consistently.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import re
import time
from pathlib import Path

import asyncpg
import msgspec
import pytest
import trio
import trio_asyncio

from payments import audit_cli
from store.errors import StoreUnavailable
from store.postgres import Store
from store.rows import DeliveryAttemptRow, DeliveryRow, EventRow, JournalRow
from tests.helpers import wait_until_async
from workers import audit
from workers.audit import (
    ArchiveInconsistent,
    ArchiveUnavailable,
    ExportBusy,
    LocalArchive,
)

NOW_S = int(time.time())
DAY_S = 86_400


def intent_json(seq: int) -> bytes:
    return msgspec.json.encode({"id": f"pi_{seq}", "amount": 1000 + seq, "currency": "usd", "status": "succeeded"})


async def seed(store: Store, partition: int, first: int, count: int, *, created_s: int = NOW_S, events_per_row: int = 1) -> None:
    """Journal rows first..first+count-1 of a partition, each raising events."""
    rows, events = [], []
    for seq in range(first, first + count):
        rows.append(JournalRow(seq, f"pi_{partition}_{seq}", "intent_updated", json.dumps({"seq": seq, "amount": 1000 + seq}).encode()))
        for idx in range(events_per_row):
            events.append(
                EventRow(
                    id=f"evt_{partition}_{seq}_{idx}", partition=partition, seq=seq, idx=idx, merchant_id="acct_1",
                    livemode=False, type="payment_intent.succeeded", intent_id=f"pi_{partition}_{seq}",
                    object_id=f"pi_{partition}_{seq}", created_s=created_s, intent=intent_json(seq),
                )
            )
    await store.journal.append(partition, rows, (), events)


def manifest(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]


def segment_file(root: Path, entry: dict) -> Path:
    return root / entry["path"]


async def seeded_archive(store: Store, root: Path) -> LocalArchive:
    """Partitions 0 (10 rows) and 2 (5 rows), exported four rows a segment."""
    await seed(store, 0, 1, 10)
    await seed(store, 2, 1, 5, events_per_row=2)
    archive = LocalArchive(root)
    await audit.export(store, archive, segment_rows=4)
    return archive


def problems(report: audit.VerifyReport) -> str:
    return "\n".join(report.problems)


# ------------------------------------------------------------- export, verify


async def test_export_writes_chained_segments_by_date_and_partition_and_verify_passes(store, tmp_path):
    await seed(store, 0, 1, 10)
    await seed(store, 2, 1, 5, events_per_row=2)
    archive = LocalArchive(tmp_path)
    report = await audit.export(store, archive, segment_rows=4)
    assert (len(report.segments), report.journal_rows, report.event_rows) == (5, 15, 20)
    entries = manifest(tmp_path)
    # Partitions in turn: 0, 2, 0, 2, 0.
    assert [(e["sequence"], e["partition"], e["first_seq"], e["last_seq"]) for e in entries] == [
        (1, 0, 1, 4), (2, 2, 1, 4), (3, 0, 5, 8), (4, 2, 5, 5), (5, 0, 9, 10),
    ]
    assert entries[0]["prev_hash"] == "0" * 64
    assert all(later["prev_hash"] == earlier["hash"] for earlier, later in itertools.pairwise(entries))
    today = time.strftime("%Y/%m/%d", time.gmtime())
    assert entries[1]["path"] == f"{today}/p0002/000000000001-000000000004.jsonl.gz"
    lines = gzip.decompress(segment_file(tmp_path, entries[1]).read_bytes()).decode().splitlines()
    decoded = [json.loads(line) for line in lines]
    assert decoded[0] == {"t": "segment", "format": 1, "partition": 2, "first_seq": 1, "last_seq": 4}
    assert [(d["t"], d["seq"]) for d in decoded[1:4]] == [("journal", 1), ("event", 1), ("event", 1)]
    assert decoded[1]["body"] == {"seq": 1, "amount": 1001}
    assert json.loads(decoded[2]["intent"])["id"] == "pi_1"
    assert (await store.audit.state()).positions == {0: 10, 2: 5}

    verified = await audit.verify(store, archive)
    assert verified.ok, problems(verified)
    assert (verified.entries, verified.journal_rows, verified.event_rows, verified.mirror_entries) == (5, 15, 20, 5)
    assert verified.journal_rows_compared == 15
    assert verified.head_hash == entries[-1]["hash"]


async def test_a_second_export_appends_a_segment_chained_to_the_first(store, tmp_path):
    archive = LocalArchive(tmp_path)
    await seed(store, 1, 1, 3)
    await audit.export(store, archive)
    nothing = await audit.export(store, archive)
    await seed(store, 1, 4, 2)
    second = await audit.export(store, archive)
    entries = manifest(tmp_path)
    assert nothing.segments == []
    assert [(e["first_seq"], e["last_seq"]) for e in entries] == [(1, 3), (4, 5)]
    assert entries[1]["prev_hash"] == entries[0]["hash"]
    assert second.head_sequence == 2 and second.head_hash == entries[1]["hash"]
    assert (await audit.verify(store, archive)).ok


async def test_a_gap_in_the_journal_is_waited_for_not_skipped(store, tmp_path):
    archive = LocalArchive(tmp_path)
    await seed(store, 1, 1, 3)
    await seed(store, 1, 5, 2)
    report = await audit.export(store, archive)
    assert [(e.first_seq, e.last_seq) for e in report.segments] == [(1, 3)]
    assert report.waiting_partitions == [1]
    await seed(store, 1, 4, 1)
    later = await audit.export(store, archive)
    assert [(e.first_seq, e.last_seq) for e in later.segments] == [(4, 6)]
    assert (await audit.verify(store, archive)).ok


async def test_export_is_refused_while_another_exporter_holds_the_lease(store, tmp_path):
    await seed(store, 0, 1, 2)
    assert await store.audit.take_lease("someone-else", 60)
    with pytest.raises(ExportBusy, match=r"^another export holds the archive lease$"):
        await audit.export(store, LocalArchive(tmp_path))
    await store.audit.release_lease("someone-else")
    assert len((await audit.export(store, LocalArchive(tmp_path))).segments) == 1


# ------------------------------------------------------------------ tampering


async def test_one_changed_byte_in_a_segment_fails_verify(store, tmp_path):
    archive = await seeded_archive(store, tmp_path)
    path = segment_file(tmp_path, manifest(tmp_path)[2])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = await audit.verify(store, archive)
    assert not report.ok
    assert re.fullmatch(r"entry 3: segment \S+ has been changed \(its SHA-256 differs\)", problems(report))


async def test_a_deleted_segment_fails_verify(store, tmp_path):
    archive = await seeded_archive(store, tmp_path)
    segment_file(tmp_path, manifest(tmp_path)[0]).unlink()
    report = await audit.verify(None, archive)
    assert re.fullmatch(r"entry 1: segment \S+ is missing", problems(report))


async def test_swapped_segments_fail_verify(store, tmp_path):
    archive = await seeded_archive(store, tmp_path)
    first, third = (segment_file(tmp_path, e) for e in manifest(tmp_path)[0:3:2])
    first_bytes, third_bytes = first.read_bytes(), third.read_bytes()
    first.write_bytes(third_bytes)
    third.write_bytes(first_bytes)
    report = await audit.verify(store, archive)
    assert [p.split(":")[0] for p in report.problems] == ["entry 1", "entry 3"]


async def test_reordered_manifest_lines_fail_verify(store, tmp_path):
    archive = await seeded_archive(store, tmp_path)
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    lines[1], lines[2] = lines[2], lines[1]
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    without_database = await audit.verify(None, archive)
    assert "manifest line 2: holds entry 3 (lines reordered, missing or repeated)" in without_database.problems
    assert any("chain is broken" in problem for problem in without_database.problems)
    with_database = await audit.verify(store, archive)
    assert "entry 2 differs from the database mirror" in with_database.problems


async def test_an_edited_manifest_entry_fails_verify(store, tmp_path):
    archive = await seeded_archive(store, tmp_path)
    text = (tmp_path / "manifest.jsonl").read_text()
    (tmp_path / "manifest.jsonl").write_text(text.replace('"event_rows":4', '"event_rows":5', 1))
    report = await audit.verify(None, archive)
    assert "entry 1: its hash does not match its contents (the entry was edited)" in report.problems


def rewrite_segment_and_chain(root: Path, target: int) -> None:
    """What a careful attacker does: change a row in segment `target`, then
    recompute its entry and every entry after it, so the file chain holds."""
    entries = [audit.ManifestEntry(**entry) for entry in manifest(root)]
    path = root / entries[target].path
    text = gzip.decompress(path.read_bytes()).replace(b'"amount": 1001', b'"amount": 9001')
    data = gzip.compress(text, compresslevel=6, mtime=0)
    assert data != path.read_bytes()
    path.write_bytes(data)
    entries[target] = msgspec.structs.replace(entries[target], sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    previous = entries[target - 1].hash if target else audit.GENESIS_HASH
    for index in range(target, len(entries)):
        unsigned = msgspec.structs.replace(entries[index], prev_hash=previous)
        entries[index] = msgspec.structs.replace(unsigned, hash=audit.entry_hash(unsigned))
        previous = entries[index].hash
    (root / "manifest.jsonl").write_bytes(b"".join(audit.manifest_line(entry) + b"\n" for entry in entries))


async def test_a_rewritten_segment_with_a_recomputed_chain_is_caught_by_the_database_mirror(store, tmp_path):
    archive = await seeded_archive(store, tmp_path)
    rewrite_segment_and_chain(tmp_path, 0)
    assert (await audit.verify(None, archive)).ok  # the files alone agree with each other
    report = await audit.verify(store, archive, journal_rows_max=0)
    assert report.problems == [f"entry {n} differs from the database mirror" for n in range(1, 6)]
    compared = await audit.verify(store, archive)
    assert "partition 0 seq 1: journal row differs from the archive" in compared.problems


async def test_a_changed_journal_row_is_caught_against_the_archive(store, database_url, tmp_path):
    archive = await seeded_archive(store, tmp_path)

    async def tamper() -> None:
        connection = await asyncpg.connect(database_url)
        try:
            await connection.execute("""UPDATE journal SET body = '{"seq": 3, "amount": 1}' WHERE partition = 0 AND seq = 3""")
        finally:
            await connection.close()

    await trio_asyncio.aio_as_trio(tamper)()
    report = await audit.verify(store, archive)
    assert report.problems == ["partition 0 seq 3: journal row differs from the archive"]


# ---------------------------------------------------------------- crashes


class FailOnce:
    """Wraps a method so that its first call raises `error` instead."""

    def __init__(self, method, error: Exception) -> None:
        self.method, self.error, self.calls = method, error, 0

    async def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            raise self.error
        return await self.method(*args, **kwargs)


async def test_a_crash_before_the_mirror_commit_is_adopted_by_the_next_export(store, tmp_path, monkeypatch):
    archive = LocalArchive(tmp_path)
    await seed(store, 0, 1, 6)
    monkeypatch.setattr(store.audit, "commit", FailOnce(store.audit.commit, StoreUnavailable("database unavailable: test")))
    with pytest.raises(StoreUnavailable, match=r"^database unavailable: test$"):
        await audit.export(store, archive, segment_rows=4)
    assert len(manifest(tmp_path)) == 1 and (await store.audit.state()).head_sequence == 0
    interrupted = await audit.verify(store, archive)
    assert interrupted.ok, problems(interrupted)
    assert any("not yet in the database mirror" in note for note in interrupted.notes)
    report = await audit.export(store, archive, segment_rows=4)
    assert report.adopted == 1
    assert [(e.sequence, e.first_seq) for e in report.segments] == [(2, 5)]
    final = await audit.verify(store, archive)
    assert final.ok and final.mirror_entries == 2 and not final.notes


async def test_a_crash_before_the_manifest_append_writes_the_segment_again(store, tmp_path, monkeypatch):
    archive = LocalArchive(tmp_path)
    await seed(store, 0, 1, 3)
    monkeypatch.setattr(archive, "append", FailOnce(archive.append, ArchiveUnavailable("archive: test")))
    with pytest.raises(ArchiveUnavailable, match=r"^archive: test$"):
        await audit.export(store, archive)
    assert not (tmp_path / "manifest.jsonl").exists()
    orphan = await audit.verify(store, archive)
    assert orphan.ok and any("left by an interrupted export" in note for note in orphan.notes)
    await audit.export(store, archive)
    final = await audit.verify(store, archive)
    assert final.ok and final.entries == 1 and not final.notes


async def test_a_torn_manifest_line_is_dropped_by_the_next_export(store, tmp_path):
    archive = LocalArchive(tmp_path)
    await seed(store, 0, 1, 3)
    await audit.export(store, archive)
    manifest_path = trio.Path(tmp_path / "manifest.jsonl")
    await manifest_path.write_bytes(await manifest_path.read_bytes() + b'{"sequence":2,"pa')
    assert any("torn" in note for note in (await audit.verify(store, archive)).notes)
    await seed(store, 0, 4, 1)
    report = await audit.export(store, archive)
    assert [e.sequence for e in report.segments] == [2]
    assert (await audit.verify(store, archive)).ok


async def test_a_manifest_that_lost_entries_stops_export(store, tmp_path):
    archive = await seeded_archive(store, tmp_path)
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "manifest.jsonl").write_text("".join(lines[:3]))
    await seed(store, 0, 11, 1)
    with pytest.raises(ArchiveInconsistent, match=r"has 3 entries, the database mirror 5"):
        await audit.export(store, archive)
    report = await audit.verify(store, archive)
    assert report.problems == [
        "entry 4 is in the database mirror but missing from the manifest",
        "entry 5 is in the database mirror but missing from the manifest",
        "partition 0: the database says it is archived to 10, the mirrored entries say 8",
        "partition 2: the database says it is archived to 5, the mirrored entries say 4",
    ]


# --------------------------------------------------------------------- prune


async def test_prune_deletes_only_old_archived_and_finished_rows_and_never_the_journal(store, tmp_path):
    old_s, recent_s = NOW_S - 40 * DAY_S, NOW_S - 10 * DAY_S
    await seed(store, 0, 1, 4, created_s=old_s)        # archived below
    await seed(store, 0, 5, 2, created_s=recent_s)     # archived, but younger than 30 days
    await seed(store, 0, 7, 2, created_s=old_s)        # old, not archived
    await audit.export(store, LocalArchive(tmp_path), segment_rows=6, segments_max=1)
    await store.webhooks.add_deliveries([], queued={0: (8, 0)})
    old_ms, recent_ms = (NOW_S - 20 * DAY_S) * 1000, (NOW_S - DAY_S) * 1000

    def delivery(event_id: str, status: str, updated_s: int) -> DeliveryRow:
        return DeliveryRow("we_1", event_id, 0, 1, 0, "pi_0_1", status, 1, 0, updated_s)

    deliveries = [
        delivery("evt_0_1_0", "delivered", NOW_S - 20 * DAY_S),
        delivery("evt_0_2_0", "dead", NOW_S - 20 * DAY_S),
        delivery("evt_0_3_0", "pending", NOW_S - 20 * DAY_S),   # keeps its event and attempts
        delivery("evt_0_4_0", "delivered", NOW_S - DAY_S),
    ]
    await store.webhooks.add_deliveries(deliveries)
    for row, at_ms in zip(deliveries, (old_ms, old_ms, old_ms, recent_ms), strict=True):
        await store.webhooks.record_attempt(row, DeliveryAttemptRow(row.endpoint_id, row.event_id, 1, at_ms, 200, 5, None))

    report = await audit.prune(store, 7, batch_rows=2)
    assert (report.events, report.webhook_deliveries, report.webhook_attempts, report.complete) == (3, 2, 2, True)
    assert report.batches == 2
    left = await store.events.get_many([f"evt_0_{seq}_0" for seq in range(1, 9)])
    assert sorted(event.seq for event in left) == [3, 5, 6, 7, 8]
    assert [row.status for row in await store.webhooks.deliveries_of_event("evt_0_3_0")] == ["pending"]
    assert await store.webhooks.deliveries_of_event("evt_0_1_0") == []
    assert [a.attempt for a in await store.webhooks.attempts_of_event("evt_0_3_0")] == [1]
    assert [a.attempt for a in await store.webhooks.attempts_of_event("evt_0_4_0")] == [1]
    assert await store.webhooks.attempts_of_event("evt_0_1_0") == []
    assert len(await store.journal.load(0)) == 8
    # Archived events that were pruned are still in the archive, and verify
    # does not mistake their absence from the hot table for tampering.
    assert (await audit.verify(store, LocalArchive(tmp_path))).ok


async def test_prune_keeps_events_not_yet_queued_for_webhooks(store, tmp_path):
    await seed(store, 0, 1, 2, created_s=NOW_S - 40 * DAY_S)
    await audit.export(store, LocalArchive(tmp_path))
    assert (await audit.prune(store, 1)).events == 0
    await store.webhooks.add_deliveries([], queued={0: (1, 0)})
    assert (await audit.prune(store, 1)).events == 1


async def test_the_archive_worker_survives_an_unreachable_database_and_counts_it(store, tmp_path, monkeypatch):
    archive = LocalArchive(tmp_path)
    await seed(store, 0, 1, 2)
    monkeypatch.setattr(store.audit, "take_lease", FailOnce(store.audit.take_lease, StoreUnavailable("database unavailable: test")))
    async with trio.open_nursery() as nursery:
        errors = await nursery.start(audit.run_audit_archive, store, archive, audit.ArchiveBounds(every_s=0.5))
        # The real clock: the store is a real PostgreSQL (see tests/helpers.py).
        await wait_until_async(lambda: errors.counts, 10, "the first export to fail", interval_s=0.01)
        assert not (tmp_path / "manifest.jsonl").exists()
        await wait_until_async((tmp_path / "manifest.jsonl").exists, 10, "the next export, every_s later", interval_s=0.05)
        nursery.cancel_scope.cancel()
    assert len(manifest(tmp_path)) == 1
    assert errors.counts == {"audit_export_postponed": 1}


# ----------------------------------------------------------------------- CLI


def seed_database(url: str) -> None:
    async def run() -> None:
        async with trio_asyncio.open_loop():
            store = await Store.open(url, connections_max=2)
            try:
                await store.migrate(4)
                await seed(store, 1, 1, 5)
            finally:
                await store.close()

    trio.run(run)


def test_the_cli_exit_codes(database_url, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PAYMENTS_DATABASE_URL", raising=False)
    monkeypatch.delenv("PAYMENTS_ARCHIVE_S3_BUCKET", raising=False)
    archive = ["--archive", str(tmp_path)]
    database = ["--database-url", database_url]

    assert audit_cli.main(["audit", "export", *archive]) == 2
    assert "needs the database" in capsys.readouterr().err
    assert audit_cli.main(["audit", "verify", *archive, *database]) == 2  # no schema yet
    assert capsys.readouterr().err.startswith("error: the database has no audit tables yet")

    seed_database(database_url)
    assert audit_cli.main(["audit", "export", *archive, *database]) == 0
    assert "exported 1 segment(s): 5 journal rows, 5 events" in capsys.readouterr().out
    assert audit_cli.main(["audit", "verify", *archive, *database]) == 0
    assert capsys.readouterr().out.endswith("OK\n")
    assert audit_cli.main(["audit", "prune", "--retention-days", "7", *database]) == 0
    assert capsys.readouterr().out.startswith("deleted 0 events")

    segment = next(tmp_path.rglob("*.jsonl.gz"))
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    assert audit_cli.main(["audit", "verify", *archive, *database]) == 1
    output = capsys.readouterr().out
    assert re.search(r"^problem: entry 1: segment \S+ has been changed", output, re.MULTILINE)
    assert output.endswith("FAILED: 1 problem(s)\n")

    unreachable = "postgresql://postgres@127.0.0.1:1/nothing"
    assert audit_cli.main(["audit", "verify", *archive, "--database-url", unreachable]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: cannot connect to the database") and "Traceback" not in error
    with pytest.raises(SystemExit) as usage:  # argparse's: its text is the exit code, checked below
        audit_cli.main(["audit", "prune", *database])
    assert usage.value.code == 2


# ------------------------------------------------------------------------ S3


@pytest.fixture
def s3_endpoint(monkeypatch):
    """An S3-compatible server (moto, in server mode) on a free port."""
    server_module = pytest.importorskip("moto.server")
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


async def test_an_s3_archive_exports_verifies_and_catches_a_changed_object(store, s3_endpoint, monkeypatch, tmp_path):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="audit-test")
    monkeypatch.setenv("PAYMENTS_ARCHIVE_S3_BUCKET", "audit-test")
    monkeypatch.setenv("PAYMENTS_ARCHIVE_S3_PREFIX", "node-a/")
    monkeypatch.setenv("PAYMENTS_ARCHIVE_S3_ENDPOINT", s3_endpoint)
    archive = audit.archive_from_environment(tmp_path)
    assert isinstance(archive, audit.S3Archive)

    await seed(store, 3, 1, 5)
    first = await audit.export(store, archive, segment_rows=2)
    await seed(store, 3, 6, 1)
    second = await audit.export(store, archive, segment_rows=2)
    assert [e.sequence for e in first.segments + second.segments] == [1, 2, 3, 4]
    assert client.get_object(Bucket="audit-test", Key="node-a/manifest.jsonl")["Body"].read().count(b"\n") == 4
    report = await audit.verify(store, archive)
    assert report.ok and report.entries == 4 and report.journal_rows == 6, problems(report)

    key = "node-a/" + first.segments[1].path
    data = bytearray(client.get_object(Bucket="audit-test", Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    client.put_object(Bucket="audit-test", Key=key, Body=bytes(data))
    assert re.fullmatch(r"entry 2: segment \S+ has been changed \(its SHA-256 differs\)", problems(await audit.verify(store, archive)))


async def test_an_unreachable_s3_archive_is_archive_unavailable(store, s3_endpoint):
    archive = audit.S3Archive("no-such-bucket", endpoint_url=s3_endpoint)
    await seed(store, 0, 1, 1)
    with pytest.raises(ArchiveUnavailable, match=r"^archive s3://no-such-bucket/ at http://\S+: NoSuchBucket$"):
        await audit.export(store, archive)
