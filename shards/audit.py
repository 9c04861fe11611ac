"""The audit archive: the journal, copied out of PostgreSQL into a
tamper-evident chain of compressed segments, then verified and pruned.

Theory of operation
-------------------

Export takes each partition's journal rows after its archived position,
with the events those rows raised, and writes them as one *segment*: gzip
compressed JSON lines, a header line, then each journal row followed by its
events, at `<YYYY>/<MM>/<DD>/p<partition>/<first seq>-<last seq>.jsonl.gz`
(the date of the segment's first row, UTC). A segment holds at most
`segment_rows` journal rows; a run writes at most `segments_max` segments,
taking partitions in turn.

Every segment gets one line in `manifest.jsonl`: its sequence number (1, 2,
3... across all partitions), path, partition, seq range, row counts, size,
SHA-256, the hash of the previous entry and its own hash, the SHA-256 of
the entry's canonical JSON (sorted keys, `hash` left out, `prev_hash` in).
The entries form one chain, so a changed, missing, reordered or edited
segment or entry breaks it somewhere. Each entry is also mirrored, as the
exact same line, in PostgreSQL (`audit_manifest`), and the archived position
of each partition lives there too (`audit_positions`): someone who rewrites
a segment *and* the whole manifest after it still disagrees with the mirror.

Order of writes, so that a crash at any point leaves something explainable:

1. the segment (temporary name, fsync, rename, fsync of the directory);
2. its manifest line (appended and fsynced);
3. in one transaction, the mirror row and the partition's new position.

A crash after 1 leaves an unlisted segment that the next export writes
again (same rows, same bytes: the gzip header carries no time). A crash
after 2 leaves a manifest entry the mirror lacks: the next export checks it
(chain, segment hash, position) and adopts it into the mirror before doing
anything else. A torn last manifest line (a crash mid-append) is dropped.
Anything else (a manifest shorter than the mirror, an entry that differs
from it) stops export with `ArchiveInconsistent`: that needs a person.

One exporter runs at a time, whichever node it is on, under a lease row in
PostgreSQL that the mirror transaction checks. Nodes that export must share
the archive (one directory or one bucket): the chain is one chain.

Only rows with consecutive seqs are exported. A gap (a later batch committed
before an earlier one) just waits for the next run.

Storage is a local directory, or an S3-compatible bucket through boto3
(imported only then; it is synchronous, so it runs in worker threads).

Prune deletes from the hot tables what they no longer need: events older
than max(retention, 30 days) (events are served for 30 days) that are
archived, queued for webhooks and not awaiting a delivery; finished webhook
deliveries and their attempts older than the retention. Journal rows are
never deleted: actors rebuild their state by replaying the journal at start,
and there are no snapshots yet. Webhook deliveries and attempts are
operational records, not in the archive.
"""

from __future__ import annotations

import datetime
import functools
import gzip
import hashlib
import io
import math
import os
import re
import secrets
import socket
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

import msgspec
import structlog
import trio

from store.errors import StoreUnavailable
from store.postgres import Store
from store.rows import AuditEntryRow, AuditState, EventRow, JournalRecord

log = structlog.get_logger("shards.audit")

FORMAT = 1
MANIFEST_KEY = "manifest.jsonl"
GENESIS_HASH = "0" * 64
SEGMENT_ROWS_DEFAULT = 20_000
SEGMENT_ROWS_MAX = 100_000
# A journal row raises a handful of events; more than this many per row in
# one segment means something is wrong, not that the segment should grow.
EVENTS_PER_ROW_MAX = 64
SEGMENTS_PER_RUN_DEFAULT = 100
SEGMENTS_PER_RUN_MAX = 10_000
LEASE_TTL_S = 600
# What verify and export will read, at most.
MANIFEST_BYTES_MAX = 512 * 1024 * 1024
SEGMENT_BYTES_MAX = 1024 * 1024 * 1024
SEGMENT_LINE_BYTES_MAX = 16 * 1024 * 1024
ARCHIVE_KEYS_MAX = 10_000_000
MIRROR_PAGE_ROWS = 10_000
JOURNAL_COMPARE_ROWS_DEFAULT = 10_000
PROBLEMS_MAX = 1000
# Prune.
EVENTS_SERVED_DAYS = 30
RETENTION_DAYS_MAX = 36_500
PRUNE_BATCH_ROWS = 10_000
PRUNE_BATCHES_MAX = 10_000
DAY_S = 86_400

SEGMENT_KEY = re.compile(r"^(\d{4})/(\d{2})/(\d{2})/p(\d{4,5})/(\d{12})-(\d{12})\.jsonl\.gz$")
HEX64 = r"^[0-9a-f]{64}$"


class AuditError(Exception):
    """Base of the archive's own exceptions; messages fit on one line."""


class ArchiveUnavailable(AuditError):
    """The archive storage could not be read or written; try again later."""


class ArchiveInconsistent(AuditError):
    """The archive and the database mirror disagree; export will not go on."""


class ExportBusy(AuditError):
    """Another exporter holds the lease."""


# ------------------------------------------------------------------ formats


class ManifestEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sequence: Annotated[int, msgspec.Meta(ge=1)]
    path: Annotated[str, msgspec.Meta(max_length=200)]
    partition: Annotated[int, msgspec.Meta(ge=0, le=32_767)]
    first_seq: Annotated[int, msgspec.Meta(ge=1)]
    last_seq: Annotated[int, msgspec.Meta(ge=1)]
    journal_rows: Annotated[int, msgspec.Meta(ge=1)]
    event_rows: Annotated[int, msgspec.Meta(ge=0)]
    bytes: Annotated[int, msgspec.Meta(ge=1)]
    sha256: Annotated[str, msgspec.Meta(pattern=HEX64)]
    created_at: Annotated[str, msgspec.Meta(max_length=64)]
    prev_hash: Annotated[str, msgspec.Meta(pattern=HEX64)]
    hash: Annotated[str, msgspec.Meta(pattern=HEX64)]
    format: int = FORMAT


class SegmentHeader(msgspec.Struct, frozen=True, tag="segment", tag_field="t", forbid_unknown_fields=True):
    format: int
    partition: int
    first_seq: int
    last_seq: int


class ArchivedJournalRow(msgspec.Struct, frozen=True, tag="journal", tag_field="t", forbid_unknown_fields=True):
    partition: int
    seq: int
    entity_id: str
    kind: str
    body: msgspec.Raw           # the jsonb as PostgreSQL prints it, byte for byte
    recorded_at: str            # RFC 3339, microseconds, UTC


class ArchivedEvent(msgspec.Struct, frozen=True, tag="event", tag_field="t", forbid_unknown_fields=True):
    id: str
    partition: int
    seq: int
    idx: int
    merchant_id: str
    livemode: bool
    type: str
    intent_id: str
    object_id: str
    created_s: int
    intent: str                 # the intent snapshot (msgspec JSON) as text


SegmentLine = SegmentHeader | ArchivedJournalRow | ArchivedEvent

_encoder = msgspec.json.Encoder(order="sorted")
_manifest_decoder = msgspec.json.Decoder(ManifestEntry)
_line_decoder = msgspec.json.Decoder(SegmentLine)


def entry_hash(entry: ManifestEntry) -> str:
    """SHA-256 of the entry's canonical JSON: sorted keys, no `hash`."""
    fields = msgspec.structs.asdict(entry)
    del fields["hash"]
    return hashlib.sha256(_encoder.encode(fields)).hexdigest()


def manifest_line(entry: ManifestEntry) -> bytes:
    return _encoder.encode(entry)


def segment_key(partition: int, first_seq: int, last_seq: int, first_recorded_at_us: int) -> str:
    day = _datetime_of(first_recorded_at_us)
    return f"{day:%Y/%m/%d}/p{partition:04d}/{first_seq:012d}-{last_seq:012d}.jsonl.gz"


def _datetime_of(us: int) -> datetime.datetime:
    return datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(microseconds=us)


def _rfc3339(us: int) -> str:
    return _datetime_of(us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _microseconds(text: str) -> int | None:
    try:
        moment = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
    return (moment - _datetime_of(0)) // datetime.timedelta(microseconds=1)


def _archived_journal(record: JournalRecord) -> ArchivedJournalRow:
    return ArchivedJournalRow(
        partition=record.partition,
        seq=record.seq,
        entity_id=record.entity_id,
        kind=record.kind,
        body=msgspec.Raw(record.body.encode()),
        recorded_at=_rfc3339(record.recorded_at_us),
    )


def _archived_event(event: EventRow) -> ArchivedEvent:
    fields = msgspec.structs.asdict(event)
    try:
        fields["intent"] = event.intent.decode()
    except UnicodeDecodeError:
        raise ArchiveInconsistent(f"event {event.id[:64]}: its intent snapshot is not UTF-8 JSON") from None
    return ArchivedEvent(**fields)


def encode_segment(partition: int, records: Sequence[JournalRecord], events: Sequence[EventRow]) -> bytes:
    """The segment's bytes: deterministic for the same rows (gzip mtime 0)."""
    by_seq: dict[int, list[EventRow]] = {}
    for event in events:
        by_seq.setdefault(event.seq, []).append(event)
    out = io.BytesIO()
    out.write(_encoder.encode(SegmentHeader(FORMAT, partition, records[0].seq, records[-1].seq)) + b"\n")
    for record in records:
        out.write(_encoder.encode(_archived_journal(record)) + b"\n")
        for event in by_seq.get(record.seq, ()):
            out.write(_encoder.encode(_archived_event(event)) + b"\n")
    return gzip.compress(out.getvalue(), compresslevel=6, mtime=0)


class DecodedSegment(msgspec.Struct):
    header: SegmentHeader | None
    journal: list[ArchivedJournalRow]
    events: list[ArchivedEvent]
    problems: list[str]


def decode_segment(data: bytes, lines_max: int) -> DecodedSegment:
    """Read a segment back, line by line and bounded; what is wrong with it
    goes into `problems` rather than raising."""
    decoded = DecodedSegment(None, [], [], [])
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            for number in range(1, lines_max + 2):
                line = stream.readline(SEGMENT_LINE_BYTES_MAX + 1)
                if not line:
                    break
                if number > lines_max or len(line) > SEGMENT_LINE_BYTES_MAX:
                    decoded.problems.append("has more or longer lines than a segment may")
                    break
                try:
                    item = _line_decoder.decode(line)
                except msgspec.DecodeError as error:
                    decoded.problems.append(f"line {number} is not a segment line ({error})")
                    break
                if isinstance(item, SegmentHeader):
                    if number != 1:
                        decoded.problems.append(f"line {number}: a second header")
                    decoded.header = item
                elif isinstance(item, ArchivedJournalRow):
                    decoded.journal.append(item)
                else:
                    decoded.events.append(item)
    except (OSError, EOFError, zlib.error):
        decoded.problems.append("does not decompress")
    return decoded


# ------------------------------------------------------------------ storage


class Archive(Protocol):
    """Where segments and the manifest live. Keys are relative paths."""

    def describe(self) -> str: ...

    async def read(self, key: str, bytes_max: int) -> bytes | None:
        """The object's bytes, None if there is none."""

    async def write(self, key: str, data: bytes) -> None:
        """Store atomically and durably: a reader sees the old bytes or these."""

    async def append(self, key: str, data: bytes) -> None:
        """Add to the end durably. Single writer (the export lease)."""

    async def keys(self) -> list[str]:
        """Every segment key (not the manifest)."""


def _check_key(key: str) -> str:
    if key != MANIFEST_KEY and not SEGMENT_KEY.match(key):
        raise ArchiveInconsistent(f"not an archive path: {key[:200]!r}")
    return key


T = TypeVar("T")


class LocalArchive:
    """A directory on this machine (or a shared mount)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        try:
            return await trio.to_thread.run_sync(functools.partial(function, *args))
        except OSError as error:
            raise ArchiveUnavailable(f"archive {self.root}: {error.strerror or type(error).__name__}") from error

    async def read(self, key: str, bytes_max: int) -> bytes | None:
        path = self.root / _check_key(key)

        def run() -> bytes | None:
            try:
                with open(path, "rb") as file:
                    data = file.read(bytes_max + 1)
            except FileNotFoundError:
                return None
            if len(data) > bytes_max:
                raise ArchiveInconsistent(f"{key} is larger than {bytes_max} bytes")
            return data

        return await self._run(run)

    async def write(self, key: str, data: bytes) -> None:
        path = self.root / _check_key(key)

        def run() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            try:
                with open(temporary, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, path)
            finally:
                temporary.unlink(missing_ok=True)
            self._sync_directories(path.parent)

        await self._run(run)

    async def append(self, key: str, data: bytes) -> None:
        path = self.root / _check_key(key)

        def run() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            created = not path.exists()
            descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(descriptor, view):]
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            if created:
                self._sync_directories(path.parent)

        await self._run(run)

    async def keys(self) -> list[str]:
        def run() -> list[str]:
            found: list[str] = []
            if not self.root.is_dir():
                return found
            for path in self.root.glob("*/*/*/p*/*.jsonl.gz"):
                found.append(path.relative_to(self.root).as_posix())
                if len(found) >= ARCHIVE_KEYS_MAX:
                    break
            return sorted(found)

        return await self._run(run)

    def _sync_directories(self, directory: Path) -> None:
        """fsync a directory and its parents up to the root, so a rename or a
        newly made directory survives a crash."""
        root = self.root.resolve()
        current = directory.resolve()
        while True:
            descriptor = os.open(current, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            if current == root or current.parent == current:
                return
            current = current.parent


class S3Archive:
    """An S3-compatible bucket, through boto3 in worker threads."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, *, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self._client = client

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    def _s3(self) -> Any:
        if self._client is None:
            try:
                import boto3
            except ImportError:
                raise ArchiveUnavailable("an S3 archive needs boto3: pip install 'payments-engine[s3]'") from None
            self._client = boto3.client("s3", endpoint_url=self.endpoint_url)
        return self._client

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        try:
            from botocore.exceptions import BotoCoreError, ClientError
        except ImportError:
            raise ArchiveUnavailable("an S3 archive needs boto3: pip install 'payments-engine[s3]'") from None
        try:
            return await trio.to_thread.run_sync(functools.partial(function, *args))
        except (BotoCoreError, ClientError) as error:
            code = getattr(error, "response", {}).get("Error", {}).get("Code") if isinstance(error, ClientError) else None
            raise ArchiveUnavailable(f"archive {self.describe()}: {code or type(error).__name__}") from error

    async def read(self, key: str, bytes_max: int) -> bytes | None:
        name = self.prefix + _check_key(key)

        def run() -> bytes | None:
            client = self._s3()
            try:
                answer = client.get_object(Bucket=self.bucket, Key=name)
            except client.exceptions.NoSuchKey:
                return None
            if answer["ContentLength"] > bytes_max:
                answer["Body"].close()
                raise ArchiveInconsistent(f"{key} is larger than {bytes_max} bytes")
            return answer["Body"].read()

        return await self._run(run)

    async def write(self, key: str, data: bytes) -> None:
        name = self.prefix + _check_key(key)
        digest = hashlib.md5(data, usedforsecurity=False).digest()

        def run() -> None:
            import base64

            # Content-MD5 makes the store refuse a body damaged on the way.
            self._s3().put_object(Bucket=self.bucket, Key=name, Body=data, ContentMD5=base64.b64encode(digest).decode())

        await self._run(run)

    async def append(self, key: str, data: bytes) -> None:
        # S3 has no append: read, add, put whole. Safe under the export lease.
        existing = await self.read(key, MANIFEST_BYTES_MAX) or b""
        await self.write(key, existing + data)

    async def keys(self) -> list[str]:
        def run() -> list[str]:
            found: list[str] = []
            pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for item in page.get("Contents", ()):
                    key = item["Key"][len(self.prefix):]
                    if key.endswith(".jsonl.gz"):
                        found.append(key)
                if len(found) >= ARCHIVE_KEYS_MAX:
                    break
            return sorted(found)

        return await self._run(run)


def archive_from_environment(data_dir: Path, archive_dir: Path | None = None) -> Archive:
    """`archive_dir` if given; else the bucket PAYMENTS_ARCHIVE_S3_BUCKET
    (PAYMENTS_ARCHIVE_S3_PREFIX, PAYMENTS_ARCHIVE_S3_ENDPOINT); else the
    directory PAYMENTS_ARCHIVE_DIR, by default <data dir>/archive."""
    if archive_dir is not None:
        return LocalArchive(archive_dir)
    bucket = os.environ.get("PAYMENTS_ARCHIVE_S3_BUCKET")
    if bucket:
        return S3Archive(
            bucket, os.environ.get("PAYMENTS_ARCHIVE_S3_PREFIX", ""), os.environ.get("PAYMENTS_ARCHIVE_S3_ENDPOINT") or None
        )
    return LocalArchive(Path(os.environ.get("PAYMENTS_ARCHIVE_DIR") or data_dir / "archive"))


# ------------------------------------------------------------------- export


class Chain(msgspec.Struct):
    """Where the archive ends: the last entry and each partition's position."""

    sequence: int
    hash: str
    positions: dict[int, int]


class ExportReport(msgspec.Struct):
    segments: list[ManifestEntry] = msgspec.field(default_factory=list)
    adopted: int = 0
    journal_rows: int = 0
    event_rows: int = 0
    head_sequence: int = 0
    head_hash: str = GENESIS_HASH
    waiting_partitions: list[int] = msgspec.field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"exported {len(self.segments)} segment(s): {self.journal_rows} journal rows, {self.event_rows} events",
            f"archive head: entry {self.head_sequence}, hash {self.head_hash}",
        ]
        if self.adopted:
            lines.append(f"adopted {self.adopted} entry(ies) an interrupted export had written")
        if self.waiting_partitions:
            lines.append(
                "waiting for a gap in the journal to fill: partition(s) " + ", ".join(map(str, self.waiting_partitions))
            )
        return "\n".join(lines)


def _holder() -> str:
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"


def _mirror_row(entry: ManifestEntry) -> AuditEntryRow:
    return AuditEntryRow(
        sequence=entry.sequence,
        partition=entry.partition,
        first_seq=entry.first_seq,
        last_seq=entry.last_seq,
        sha256=entry.sha256,
        prev_hash=entry.prev_hash,
        hash=entry.hash,
        entry=manifest_line(entry).decode(),
    )


def _manifest_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """The complete lines of a manifest, and a torn last line if any."""
    *lines, torn = data.split(b"\n")
    return lines, torn


def _parse_entry(line: bytes) -> ManifestEntry:
    try:
        return _manifest_decoder.decode(line)
    except msgspec.DecodeError as error:
        raise ArchiveInconsistent(f"a manifest line is not an entry ({error})") from None


async def _reconcile(store: Store, archive: Archive, state: AuditState, holder: str) -> tuple[Chain, int]:
    """Bring the mirror up to the manifest after an interrupted export (see
    the module docstring); the chain to go on from, and how many entries
    were adopted. Raises ArchiveInconsistent when the two cannot be matched."""
    data = await archive.read(MANIFEST_KEY, MANIFEST_BYTES_MAX) or b""
    lines, torn = _manifest_lines(data)
    if torn:
        log.warning("audit_manifest_torn_line_dropped", archive=archive.describe(), bytes=len(torn))
        await archive.write(MANIFEST_KEY, data[: len(data) - len(torn)])
    mirrored = state.head_sequence
    if len(lines) < mirrored:
        raise ArchiveInconsistent(
            f"the manifest at {archive.describe()} has {len(lines)} entries, the database mirror {mirrored}:"
            " this is not the archive this database exports to, or it lost entries"
        )
    chain = Chain(0, GENESIS_HASH, dict(state.positions))
    if mirrored:
        if lines[mirrored - 1].decode(errors="replace") != state.head_entry:
            raise ArchiveInconsistent(f"manifest entry {mirrored} differs from the database mirror")
        head = _parse_entry(lines[mirrored - 1])
        chain.sequence, chain.hash = head.sequence, head.hash
    adopted = 0
    for line in lines[mirrored:]:
        entry = _parse_entry(line)
        if entry.sequence != chain.sequence + 1 or entry.prev_hash != chain.hash or entry_hash(entry) != entry.hash:
            raise ArchiveInconsistent(f"manifest entry {entry.sequence} past the mirror does not continue the chain")
        if entry.first_seq != chain.positions.get(entry.partition, 0) + 1:
            raise ArchiveInconsistent(f"manifest entry {entry.sequence} does not continue partition {entry.partition}")
        segment = await archive.read(entry.path, SEGMENT_BYTES_MAX)
        if segment is None or hashlib.sha256(segment).hexdigest() != entry.sha256:
            raise ArchiveInconsistent(f"manifest entry {entry.sequence} past the mirror: its segment is missing or differs")
        reason = await store.audit.commit([_mirror_row(entry)], holder)
        if reason is not None:
            raise ArchiveInconsistent(reason)
        log.warning("audit_entry_adopted", sequence=entry.sequence, partition=entry.partition, path=entry.path)
        chain.sequence, chain.hash = entry.sequence, entry.hash
        chain.positions[entry.partition] = entry.last_seq
        adopted += 1
    return chain, adopted


async def _export_segment(
    store: Store, archive: Archive, chain: Chain, partition: int, segment_rows: int, holder: str, report: ExportReport
) -> bool:
    """Archive the next segment of one partition; False when it has nothing
    (more) to archive now."""
    position = chain.positions.get(partition, 0)
    events_max = segment_rows * EVENTS_PER_ROW_MAX
    records, events = await store.audit.read(partition, position, segment_rows, events_max)
    if not records:
        return False
    # Keep the run of consecutive seqs; a gap waits for the next run.
    run = 0
    while run < len(records) and records[run].seq == position + 1 + run:
        run += 1
    if run < len(records):
        if partition not in report.waiting_partitions:
            report.waiting_partitions.append(partition)
        log.warning("audit_journal_gap", partition=partition, archived_to=position + run, next_seq=records[run].seq)
    if run == 0:
        return False
    if len(events) >= events_max:
        raise ArchiveInconsistent(f"partition {partition}: more than {EVENTS_PER_ROW_MAX} events per journal row; lower the segment size")
    records = records[:run]
    last_seq = records[-1].seq
    events = [event for event in events if event.seq <= last_seq]
    data = await trio.to_thread.run_sync(encode_segment, partition, records, events)
    key = segment_key(partition, records[0].seq, last_seq, records[0].recorded_at_us)
    await archive.write(key, data)
    unsigned = ManifestEntry(
        sequence=chain.sequence + 1,
        path=key,
        partition=partition,
        first_seq=records[0].seq,
        last_seq=last_seq,
        journal_rows=len(records),
        event_rows=len(events),
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        created_at=_rfc3339(time.time_ns() // 1000),
        prev_hash=chain.hash,
        hash=GENESIS_HASH,
    )
    entry = msgspec.structs.replace(unsigned, hash=entry_hash(unsigned))
    await archive.append(MANIFEST_KEY, manifest_line(entry) + b"\n")
    reason = await store.audit.commit([_mirror_row(entry)], holder)
    if reason is not None:
        raise ArchiveInconsistent(reason)
    chain.sequence, chain.hash = entry.sequence, entry.hash
    chain.positions[partition] = last_seq
    report.segments.append(entry)
    report.journal_rows += len(records)
    report.event_rows += len(events)
    log.info(
        "audit_segment_archived", sequence=entry.sequence, partition=partition, first_seq=entry.first_seq,
        last_seq=last_seq, events=len(events), bytes=len(data),
    )
    return run == segment_rows


async def export(
    store: Store,
    archive: Archive,
    *,
    segment_rows: int = SEGMENT_ROWS_DEFAULT,
    segments_max: int = SEGMENTS_PER_RUN_DEFAULT,
) -> ExportReport:
    """Archive what the journal holds past each partition's archived
    position: at most `segments_max` segments of at most `segment_rows`
    journal rows, partitions taken in turn.

    Raises ExportBusy (another exporter runs), ArchiveInconsistent (archive
    and mirror disagree: nothing more is exported until a person looks),
    ArchiveUnavailable or StoreUnavailable (try again later; what was
    written is consistent)."""
    if not 1 <= segment_rows <= SEGMENT_ROWS_MAX:
        raise ValueError(f"segment_rows must be from 1 to {SEGMENT_ROWS_MAX}")
    if not 1 <= segments_max <= SEGMENTS_PER_RUN_MAX:
        raise ValueError(f"segments_max must be from 1 to {SEGMENTS_PER_RUN_MAX}")
    holder = _holder()
    if not await store.audit.take_lease(holder, LEASE_TTL_S):
        raise ExportBusy("another export holds the archive lease")
    report = ExportReport()
    try:
        # Read under the lease: no other exporter moves the mirror now.
        state = await store.audit.state()
        chain, report.adopted = await _reconcile(store, archive, state, holder)
        busy = list(range(state.partitions))
        while busy and len(report.segments) < segments_max:
            still_busy = []
            for partition in busy:
                if len(report.segments) >= segments_max:
                    break
                if await _export_segment(store, archive, chain, partition, segment_rows, holder, report):
                    still_busy.append(partition)
                    if not await store.audit.take_lease(holder, LEASE_TTL_S):
                        raise ExportBusy("the archive lease was lost during the export")
            busy = still_busy
        report.head_sequence, report.head_hash = chain.sequence, chain.hash
    finally:
        with trio.CancelScope(shield=True):
            try:
                await store.audit.release_lease(holder)
            except StoreUnavailable as error:
                # It expires by itself after LEASE_TTL_S.
                log.warning("audit_lease_not_released", error=str(error))
    return report


# ------------------------------------------------------------------- verify


class VerifyReport(msgspec.Struct):
    archive: str
    entries: int = 0
    journal_rows: int = 0
    event_rows: int = 0
    partitions: dict[int, int] = msgspec.field(default_factory=dict)
    head_sequence: int = 0
    head_hash: str = GENESIS_HASH
    mirror_entries: int | None = None      # None: the database was not checked
    journal_rows_compared: int = 0
    notes: list[str] = msgspec.field(default_factory=list)
    problems: list[str] = msgspec.field(default_factory=list)   # the first PROBLEMS_MAX
    problems_total: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        self.problems_total += 1
        if len(self.problems) < PROBLEMS_MAX:
            self.problems.append(text)

    def summary(self) -> str:
        lines = [
            f"archive: {self.archive}",
            (
                f"entries: {self.entries} segment(s), {self.journal_rows} journal rows, {self.event_rows} events,"
                f" {len(self.partitions)} partition(s)"
            ),
            f"head: entry {self.head_sequence}, hash {self.head_hash}",
            "database mirror: not checked (no database given)"
            if self.mirror_entries is None
            else f"database mirror: {self.mirror_entries} entries compared; {self.journal_rows_compared} archived journal rows compared with the journal",
        ]
        lines += [f"note: {note}" for note in self.notes]
        lines += [f"problem: {problem}" for problem in self.problems]
        if self.problems_total > len(self.problems):
            lines.append(f"problem: ... {self.problems_total - len(self.problems)} more not shown")
        lines.append("OK" if self.ok else f"FAILED: {self.problems_total} problem(s)")
        return "\n".join(lines)


def _sample(rows: Sequence[ArchivedJournalRow], count: int) -> list[ArchivedJournalRow]:
    if count >= len(rows):
        return list(rows)
    return [rows[index * len(rows) // count] for index in range(count)]


def _check_segment(entry: ManifestEntry, decoded: DecodedSegment, report: VerifyReport) -> None:
    name = f"entry {entry.sequence} ({entry.path})"
    for problem in decoded.problems:
        report.problem(f"{name}: segment {problem}")
    header = decoded.header
    if header is None or (header.partition, header.first_seq, header.last_seq) != (entry.partition, entry.first_seq, entry.last_seq):
        report.problem(f"{name}: segment header does not match the entry")
    seqs = [row.seq for row in decoded.journal]
    if seqs != list(range(entry.first_seq, entry.last_seq + 1)) or any(row.partition != entry.partition for row in decoded.journal):
        report.problem(f"{name}: segment rows are not seqs {entry.first_seq}..{entry.last_seq} of partition {entry.partition}")
    if (len(decoded.journal), len(decoded.events)) != (entry.journal_rows, entry.event_rows):
        report.problem(f"{name}: segment has {len(decoded.journal)} journal rows and {len(decoded.events)} events, the entry says"
                       f" {entry.journal_rows} and {entry.event_rows}")
    if any(event.partition != entry.partition or not entry.first_seq <= event.seq <= entry.last_seq for event in decoded.events):
        report.problem(f"{name}: segment has events from outside its range")


async def _compare_with_journal(
    store: Store, entry: ManifestEntry, decoded: DecodedSegment, count: int, report: VerifyReport
) -> None:
    rows = _sample(decoded.journal, count)
    if not rows:
        return
    records, events = await store.audit.rows(entry.partition, [row.seq for row in rows])
    present = {record.seq: record for record in records}
    for row in rows:
        record = present.get(row.seq)
        where = f"partition {entry.partition} seq {row.seq}"
        if record is None:
            report.problem(f"{where}: archived journal row is missing from the journal")
        elif (record.entity_id, record.kind, record.body.encode(), record.recorded_at_us) != (
            row.entity_id, row.kind, bytes(row.body), _microseconds(row.recorded_at),
        ):
            report.problem(f"{where}: journal row differs from the archive")
    archived_events = {event.id: event for event in decoded.events}
    for event in events:
        archived = archived_events.get(event.id)
        if archived is None or msgspec.structs.astuple(_archived_event(event)) != msgspec.structs.astuple(archived):
            report.problem(f"partition {entry.partition} seq {event.seq}: event {event.id[:64]} differs from the archive")
    report.journal_rows_compared += len(rows)


async def verify(store: Store | None, archive: Archive, *, journal_rows_max: int = JOURNAL_COMPARE_ROWS_DEFAULT) -> VerifyReport:
    """Check the archive: each segment's SHA-256 and contents, the chain of
    manifest entries, each partition's seq continuity; with a `store`, the
    manifest against the database mirror and archived positions, and up to
    `journal_rows_max` archived rows (spread over the segments) against the
    journal. Never raises for what it finds: it reports it. Raises
    ArchiveUnavailable / StoreUnavailable when it cannot look."""
    report = VerifyReport(archive=archive.describe())
    # The mirror is read before the manifest: an export running meanwhile
    # appends to the manifest before it mirrors, so every entry mirrored by
    # now is in the manifest read next.
    mirror: tuple[AuditState, list[str]] | None = None
    if store is not None:
        state = await store.audit.state()
        mirror = state, await _mirror_lines(store, state.head_sequence)
    data = await archive.read(MANIFEST_KEY, MANIFEST_BYTES_MAX)
    if data is None:
        report.notes.append("there is no manifest: nothing has been archived here")
        data = b""
    lines, torn = _manifest_lines(data)
    if torn:
        report.notes.append("the manifest ends in a torn line (an interrupted export; the next export drops it)")
    entries: list[ManifestEntry | None] = []
    previous_hash = GENESIS_HASH
    for number, line in enumerate(lines, start=1):
        try:
            entry = _manifest_decoder.decode(line)
        except msgspec.DecodeError as error:
            report.problem(f"manifest line {number}: not an entry ({error})")
            entries.append(None)
            previous_hash = ""
            continue
        entries.append(entry)
        if entry.sequence != number:
            report.problem(f"manifest line {number}: holds entry {entry.sequence} (lines reordered, missing or repeated)")
        if entry_hash(entry) != entry.hash:
            report.problem(f"entry {entry.sequence}: its hash does not match its contents (the entry was edited)")
        if previous_hash and entry.prev_hash != previous_hash:
            report.problem(f"entry {entry.sequence}: prev_hash is not the previous entry's hash (the chain is broken)")
        previous_hash = entry.hash
        end = report.partitions.get(entry.partition, 0)
        if entry.first_seq != end + 1 or entry.last_seq < entry.first_seq:
            report.problem(
                f"entry {entry.sequence}: partition {entry.partition} seqs {entry.first_seq}..{entry.last_seq}"
                f" do not follow {end} (a segment is missing, repeated or out of order)"
            )
        report.partitions[entry.partition] = max(end, entry.last_seq)
        report.head_sequence, report.head_hash = entry.sequence, entry.hash
    report.entries = len(entries)

    valid = [entry for entry in entries if entry is not None]
    per_segment = math.ceil(journal_rows_max / len(valid)) if valid and journal_rows_max else 0
    listed = set()
    for entry in valid:
        listed.add(entry.path)
        if not SEGMENT_KEY.match(entry.path):
            report.problem(f"entry {entry.sequence}: {entry.path[:200]!r} is not an archive path")
            continue
        segment = await archive.read(entry.path, SEGMENT_BYTES_MAX)
        if segment is None:
            report.problem(f"entry {entry.sequence}: segment {entry.path} is missing")
            continue
        if len(segment) != entry.bytes or hashlib.sha256(segment).hexdigest() != entry.sha256:
            report.problem(f"entry {entry.sequence}: segment {entry.path} has been changed (its SHA-256 differs)")
            continue
        lines_max = entry.journal_rows + entry.event_rows + 1
        decoded = await trio.to_thread.run_sync(decode_segment, segment, lines_max)
        _check_segment(entry, decoded, report)
        report.journal_rows += len(decoded.journal)
        report.event_rows += len(decoded.events)
        if store is not None and per_segment:
            await _compare_with_journal(store, entry, decoded, per_segment, report)

    starts = {(entry.partition, entry.first_seq) for entry in valid}
    for key in await archive.keys():
        if key in listed:
            continue
        match = SEGMENT_KEY.match(key)
        assert match is not None
        partition, first_seq = int(match.group(4)), int(match.group(5))
        if (partition, first_seq) in starts or first_seq == report.partitions.get(partition, 0) + 1:
            report.notes.append(f"{key} is not in the manifest: left by an interrupted export (harmless)")
        else:
            report.problem(f"{key} is not in the manifest")

    if mirror is not None:
        _compare_with_mirror(*mirror, lines, report)
    return report


async def _mirror_lines(store: Store, head_sequence: int) -> list[str]:
    """The mirrored entries 1..head_sequence (later ones are ignored: they
    came after the snapshot the positions were read in)."""
    found: list[str] = []
    while len(found) < head_sequence:
        page = await store.audit.mirror(len(found), min(MIRROR_PAGE_ROWS, head_sequence - len(found)))
        if not page:
            break
        found.extend(page)
    return found


def _compare_with_mirror(state: AuditState, mirror: list[str], lines: list[bytes], report: VerifyReport) -> None:
    for sequence, text in enumerate(mirror, start=1):
        if sequence > len(lines):
            report.problem(f"entry {sequence} is in the database mirror but missing from the manifest")
        elif lines[sequence - 1].decode(errors="replace") != text:
            report.problem(f"entry {sequence} differs from the database mirror")
    mirrored = len(mirror)
    report.mirror_entries = mirrored
    if mirrored != state.head_sequence:
        report.problem(f"the database mirror has {mirrored} entries up to its head {state.head_sequence}")
    if len(lines) > mirrored:
        report.notes.append(
            f"{len(lines) - mirrored} manifest entry(ies) not yet in the database mirror"
            " (an interrupted export; the next export adopts them)"
        )
    # The positions the database acts on (prune) must be what the mirrored
    # entries say.
    expected: dict[int, int] = {}
    for line in lines[:mirrored]:
        try:
            entry = _manifest_decoder.decode(line)
        except msgspec.DecodeError:
            continue
        expected[entry.partition] = max(expected.get(entry.partition, 0), entry.last_seq)
    for partition in sorted(set(state.positions) | set(expected)):
        if state.positions.get(partition, 0) != expected.get(partition, 0):
            report.problem(
                f"partition {partition}: the database says it is archived to {state.positions.get(partition, 0)},"
                f" the mirrored entries say {expected.get(partition, 0)}"
            )


# -------------------------------------------------------------------- prune


class PruneReport(msgspec.Struct):
    events: int = 0
    webhook_deliveries: int = 0
    webhook_attempts: int = 0
    batches: int = 0
    complete: bool = False

    def summary(self) -> str:
        return (
            f"deleted {self.events} events, {self.webhook_deliveries} webhook deliveries, {self.webhook_attempts}"
            f" webhook attempts in {self.batches} batch(es)" + ("" if self.complete else "; more remain (run again)")
        )


async def prune(
    store: Store,
    retention_days: int,
    *,
    batch_rows: int = PRUNE_BATCH_ROWS,
    batches_max: int = PRUNE_BATCHES_MAX,
    now_s: int | None = None,
) -> PruneReport:
    """Delete from the hot tables what is older than the retention and no
    longer needed (see the module docstring), `batch_rows` rows a table per
    transaction, at most `batches_max` transactions. Never the journal."""
    if not 1 <= retention_days <= RETENTION_DAYS_MAX:
        raise ValueError(f"retention_days must be from 1 to {RETENTION_DAYS_MAX}")
    now_s = int(time.time()) if now_s is None else now_s
    events_before_s = now_s - max(retention_days, EVENTS_SERVED_DAYS) * DAY_S
    before_s = now_s - retention_days * DAY_S
    report = PruneReport()
    while report.batches < batches_max:
        events, deliveries, attempts = await store.purge.archived_rows(events_before_s, before_s, before_s * 1000, batch_rows)
        report.batches += 1
        report.events += events
        report.webhook_deliveries += deliveries
        report.webhook_attempts += attempts
        if max(events, deliveries, attempts) < batch_rows:
            report.complete = True
            break
        # Let the node's other tasks run between batches.
        await trio.lowlevel.checkpoint()
    if report.events or report.webhook_deliveries or report.webhook_attempts:
        log.info(
            "audit_hot_tables_pruned", events=report.events, webhook_deliveries=report.webhook_deliveries,
            webhook_attempts=report.webhook_attempts, complete=report.complete,
        )
    return report


# --------------------------------------------------------------- background


async def archive_forever(
    store: Store,
    archive: Archive,
    every_s: float = 300.0,
    *,
    retention_days: int | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Export every `every_s` seconds (and prune, with `retention_days`)
    until cancelled. An unreachable database or archive is logged and tried
    again next time; so is an inconsistent archive, logged as an error,
    since export stays stopped until a person looks."""
    if not (math.isfinite(every_s) and every_s > 0):
        raise ValueError("every_s must be a positive number of seconds")
    task_status.started()
    while True:
        try:
            report = await export(store, archive)
            if report.segments or report.adopted:
                log.info(
                    "audit_export_finished", segments=len(report.segments), adopted=report.adopted,
                    journal_rows=report.journal_rows, events=report.event_rows, head_sequence=report.head_sequence,
                )
            if retention_days is not None:
                await prune(store, retention_days)
        except ExportBusy:
            log.debug("audit_export_skipped", reason="another exporter holds the lease")
        except (StoreUnavailable, ArchiveUnavailable) as error:
            log.warning("audit_export_postponed", error=str(error))
        except ArchiveInconsistent as error:
            log.error("audit_archive_inconsistent", error=str(error), archive=archive.describe())
        await trio.sleep(every_s)

