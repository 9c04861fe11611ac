"""The audit archive's format: manifest entries chained by hash, segments
of gzip-compressed JSON lines, the archive's limits and its errors (the
theory of operation is in workers/audit/__init__.py)."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import re
import zlib
from collections.abc import Sequence
from typing import Annotated

import msgspec

from store.rows import EventRow, JournalRecord

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
    # The API request behind the event; segments written before it was
    # recorded lack it, and read as None.
    request_id: str | None = None


SegmentLine = SegmentHeader | ArchivedJournalRow | ArchivedEvent

_encoder = msgspec.json.Encoder(order="sorted")
manifest_decoder = msgspec.json.Decoder(ManifestEntry)
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


def rfc3339(us: int) -> str:
    return _datetime_of(us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def microseconds_of(text: str) -> int | None:
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
        recorded_at=rfc3339(record.recorded_at_us),
    )


def archived_event(event: EventRow) -> ArchivedEvent:
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
            out.write(_encoder.encode(archived_event(event)) + b"\n")
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


def manifest_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """The complete lines of a manifest, and a torn last line if any."""
    *lines, torn = data.split(b"\n")
    return lines, torn

