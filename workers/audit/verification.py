"""Verify: the archive checked against itself (hashes, chain, seq
continuity) and, given the database, against the mirror and the journal."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import msgspec
import trio

from store.postgres import Store
from store.rows import AuditState
from workers.audit.formats import (
    GENESIS_HASH,
    JOURNAL_COMPARE_ROWS_DEFAULT,
    MANIFEST_BYTES_MAX,
    MANIFEST_KEY,
    MIRROR_PAGE_ROWS,
    PROBLEMS_MAX,
    SEGMENT_BYTES_MAX,
    SEGMENT_KEY,
    ArchivedJournalRow,
    DecodedSegment,
    ManifestEntry,
    archived_event,
    decode_segment,
    entry_hash,
    manifest_decoder,
    manifest_lines,
    microseconds_of,
)
from workers.audit.storage import Archive



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
            row.entity_id, row.kind, bytes(row.body), microseconds_of(row.recorded_at),
        ):
            report.problem(f"{where}: journal row differs from the archive")
    archived_events = {event.id: event for event in decoded.events}
    for event in events:
        archived = archived_events.get(event.id)
        if archived is None or msgspec.structs.astuple(archived_event(event)) != msgspec.structs.astuple(archived):
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
    lines, torn = manifest_lines(data)
    if torn:
        report.notes.append("the manifest ends in a torn line (an interrupted export; the next export drops it)")
    entries: list[ManifestEntry | None] = []
    previous_hash = GENESIS_HASH
    for number, line in enumerate(lines, start=1):
        try:
            entry = manifest_decoder.decode(line)
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
            entry = manifest_decoder.decode(line)
        except msgspec.DecodeError:
            continue
        expected[entry.partition] = max(expected.get(entry.partition, 0), entry.last_seq)
    for partition in sorted(set(state.positions) | set(expected)):
        if state.positions.get(partition, 0) != expected.get(partition, 0):
            report.problem(
                f"partition {partition}: the database says it is archived to {state.positions.get(partition, 0)},"
                f" the mirrored entries say {expected.get(partition, 0)}"
            )

