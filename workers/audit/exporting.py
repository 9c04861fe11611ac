"""Export: the journal past each partition's archived position, written as
segments, listed in the manifest and mirrored in the database, under the
export lease (the order of writes is in workers/audit/__init__.py)."""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import time

import msgspec
import structlog
import trio

from store.errors import StoreUnavailable
from store.postgres import Store
from store.rows import AuditEntryRow, AuditState
from workers.audit.formats import (
    EVENTS_PER_ROW_MAX,
    GENESIS_HASH,
    LEASE_TTL_S,
    MANIFEST_BYTES_MAX,
    MANIFEST_KEY,
    SEGMENT_BYTES_MAX,
    SEGMENT_ROWS_DEFAULT,
    SEGMENT_ROWS_MAX,
    SEGMENTS_PER_RUN_DEFAULT,
    SEGMENTS_PER_RUN_MAX,
    ArchiveInconsistent,
    ExportBusy,
    ManifestEntry,
    encode_segment,
    entry_hash,
    manifest_decoder,
    manifest_line,
    manifest_lines,
    rfc3339,
    segment_key,
)
from workers.audit.storage import Archive

log = structlog.get_logger("workers.audit")



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



def _parse_entry(line: bytes) -> ManifestEntry:
    try:
        return manifest_decoder.decode(line)
    except msgspec.DecodeError as error:
        raise ArchiveInconsistent(f"a manifest line is not an entry ({error})") from None


async def _reconcile(store: Store, archive: Archive, state: AuditState, holder: str) -> tuple[Chain, int]:
    """Bring the mirror up to the manifest after an interrupted export (see
    the module docstring); the chain to go on from, and how many entries
    were adopted. Raises ArchiveInconsistent when the two cannot be matched."""
    data = await archive.read(MANIFEST_KEY, MANIFEST_BYTES_MAX) or b""
    lines, torn = manifest_lines(data)
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
        created_at=rfc3339(time.time_ns() // 1000),
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

