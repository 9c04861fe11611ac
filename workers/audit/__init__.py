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
(the `s3` extra; it is synchronous, so it runs in worker threads).

Prune deletes from the hot tables what they no longer need: events older
than max(retention, 30 days) (events are served for 30 days) that are
archived, queued for webhooks and not awaiting a delivery; finished webhook
deliveries and their attempts older than the retention. Journal rows are
never deleted: actors rebuild their state by replaying the journal at start,
and there are no snapshots yet. Webhook deliveries and attempts are
operational records, not in the archive.

The parts: formats.py (entries, segments, limits, errors), storage.py
(local directory or bucket), exporting.py, verification.py, pruning.py, and
archiving.py, the worker that exports and prunes now and then. Their public
names are all here.
"""

from __future__ import annotations

from workers.audit.archiving import ArchiveBounds, run_audit_archive
from workers.audit.exporting import Chain, ExportReport, export
from workers.audit.formats import (
    ARCHIVE_KEYS_MAX,
    DAY_S,
    EVENTS_PER_ROW_MAX,
    EVENTS_SERVED_DAYS,
    FORMAT,
    GENESIS_HASH,
    JOURNAL_COMPARE_ROWS_DEFAULT,
    LEASE_TTL_S,
    MANIFEST_BYTES_MAX,
    MANIFEST_KEY,
    MIRROR_PAGE_ROWS,
    PROBLEMS_MAX,
    PRUNE_BATCH_ROWS,
    PRUNE_BATCHES_MAX,
    RETENTION_DAYS_MAX,
    SEGMENT_BYTES_MAX,
    SEGMENT_KEY,
    SEGMENT_LINE_BYTES_MAX,
    SEGMENT_ROWS_DEFAULT,
    SEGMENT_ROWS_MAX,
    SEGMENTS_PER_RUN_DEFAULT,
    SEGMENTS_PER_RUN_MAX,
    ArchivedEvent,
    ArchivedJournalRow,
    ArchiveInconsistent,
    ArchiveUnavailable,
    AuditError,
    DecodedSegment,
    ExportBusy,
    ManifestEntry,
    SegmentHeader,
    decode_segment,
    encode_segment,
    entry_hash,
    manifest_line,
    segment_key,
)
from workers.audit.pruning import PruneReport, prune
from workers.audit.storage import Archive, LocalArchive, S3Archive, archive_from_environment
from workers.audit.verification import VerifyReport, verify

__all__ = [
    "ARCHIVE_KEYS_MAX", "DAY_S", "EVENTS_PER_ROW_MAX", "EVENTS_SERVED_DAYS", "FORMAT", "GENESIS_HASH",
    "JOURNAL_COMPARE_ROWS_DEFAULT", "LEASE_TTL_S", "MANIFEST_BYTES_MAX", "MANIFEST_KEY", "MIRROR_PAGE_ROWS",
    "PROBLEMS_MAX", "PRUNE_BATCHES_MAX", "PRUNE_BATCH_ROWS", "RETENTION_DAYS_MAX", "SEGMENTS_PER_RUN_DEFAULT",
    "SEGMENTS_PER_RUN_MAX", "SEGMENT_BYTES_MAX", "SEGMENT_KEY", "SEGMENT_LINE_BYTES_MAX", "SEGMENT_ROWS_DEFAULT",
    "SEGMENT_ROWS_MAX", "Archive", "ArchiveBounds", "ArchiveInconsistent", "ArchiveUnavailable", "ArchivedEvent",
    "ArchivedJournalRow", "AuditError", "Chain", "DecodedSegment", "ExportBusy", "ExportReport", "LocalArchive",
    "ManifestEntry", "PruneReport", "S3Archive", "SegmentHeader", "VerifyReport", "archive_from_environment",
    "decode_segment", "encode_segment", "entry_hash", "export", "manifest_line", "prune", "run_audit_archive",
    "segment_key", "verify",
]
