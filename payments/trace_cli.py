"""`payments trace pi_...|req_...`: one payment's story from the journal.

For an intent: every journal row in order (when, the request that caused
it, the transition, the network call it starts or the answer it records),
under each row the events it raised (with their request id, as Stripe
shows it), and under each event every try at delivering it to a webhook
endpoint. For a request id: the same for every intent the request changed.
Read only: it opens the database, never a node.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
import trio_asyncio

from engine import ids
from payments.arguments import DEFAULT_DATA_DIR, database_url
from store.errors import StoreError
from store.postgres import Store
from store.rows import DeliveryAttemptRow, EventRow
from store.trace import TracedDelivery, TracedRow, body_fields

DESCRIPTION = """\
Print one payment's story from the journal, in order: each change of the
intent with the request that caused it (Request-Id), the card-network calls
it started and the answers it recorded, the events each change raised, and
every webhook delivery try of those events. Give an intent id (pi_...) or a
request id (req_...: every intent that request changed).
The database: PAYMENTS_DATABASE_URL, else the embedded one of --data-dir.
"""

# What starts a card-network call, and what records its answer.
NETWORK_CALLS = {"AttemptStarted": "network call sent", "RefundCreated": "network call sent (refund)"}
NETWORK_ANSWERS = {
    "AttemptApproved": "network answer: approved",
    "AttemptDeclined": "network answer: declined",
    "AttemptActionRequired": "network answer: 3-D Secure needed",
    "AttemptOutcomeUnknown": "network answer: none (outcome unknown, reconciliation asks)",
    "AttemptNotSent": "not sent to the network",
    "RefundUpdated": "network answer (refund)",
}
REQUEST_CHARS_MAX = 64


def register(commands: Any) -> None:
    """Add `payments trace` to the `payments` command."""
    trace = commands.add_parser(
        "trace", help="print one payment's story: requests, transitions, network calls, events, webhook tries",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    trace.add_argument("id", help="an intent id (pi_...) or a request id (req_...)")
    trace.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=f"where the embedded database lives (default {DEFAULT_DATA_DIR})")


def command_trace(arguments: argparse.Namespace) -> int:
    wanted = arguments.id.strip()
    if ids.parse_id(wanted, "pi") is None and not (wanted.startswith("req_") and 4 < len(wanted) <= REQUEST_CHARS_MAX):
        print("error: expected an intent id (pi_...) or a request id (req_...)", file=sys.stderr)
        return 2
    try:
        lines = trio.run(_trace, database_url(arguments.data_dir), wanted)
    except StoreError as error:
        print(f"error: the database cannot be read: {error}", file=sys.stderr)
        return 2
    if not lines:
        print(f"nothing in the journal for {wanted}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


async def _trace(url: str, wanted: str) -> list[str]:
    async with trio_asyncio.open_loop():
        store = await Store.open(url, connections_max=2)
        try:
            intents = [wanted] if wanted.startswith("pi_") else await store.trace.entities_of_request(wanted)
            lines: list[str] = []
            for intent_id in intents:
                lines += await _story(store, intent_id, wanted if wanted.startswith("req_") else None)
            return lines
        finally:
            await store.close()


async def _story(store: Store, intent_id: str, request_id: str | None) -> list[str]:
    rows = await store.trace.journal_of(intent_id)
    if not rows:
        return []
    partition = rows[0].partition
    events = await store.trace.events_of_rows(partition, [row.seq for row in rows])
    deliveries, tries = await store.trace.deliveries_of([event.id for event in events])
    header = f"{intent_id}  partition {partition}: {len(rows)} journal rows, {len(events)} events, {len(tries)} webhook tries"
    lines = ["", header + (f"  (rows of {request_id} marked *)" if request_id else ""), ""]
    for row in rows:
        lines.append(_row_line(row, request_id))
        for event in (event for event in events if event.seq == row.seq):
            lines.append(f"{'':27}event {event.id}  {event.type}  request {event.request_id or '-'}")
            lines += _delivery_lines(event, deliveries, tries)
    return lines


def _row_line(row: TracedRow, marked: str | None) -> str:
    fields = body_fields(row.body)
    when = row.recorded_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    mark = "*" if marked is not None and row.request_id == marked else " "
    return f"{when} {mark} #{row.seq:<6} {row.kind:<22} {_describe(row.kind, fields):<44} {row.request_id or '-'}"


def _describe(kind: str, fields: dict[str, Any]) -> str:
    """The status and what the row says about money and the network; never
    card data (journal rows hold payment method ids, not numbers)."""
    parts = []
    intent = fields.get("intent") if isinstance(fields.get("intent"), dict) else None
    status = fields.get("status") or (intent or {}).get("status")
    if status:
        parts.append(f"{'refund ' if kind.startswith('Refund') else ''}-> {status}")
    attempt = fields.get("attempt") if isinstance(fields.get("attempt"), dict) else None
    if attempt:
        parts.append(f"{attempt.get('kind')} {attempt.get('amount')} ({attempt.get('id')})")
    elif fields.get("attempt_id"):
        parts.append(str(fields["attempt_id"]))
    refund = fields.get("refund") if isinstance(fields.get("refund"), dict) else None
    if refund:
        parts.append(f"refund {refund.get('amount')} ({refund.get('id')})")
    if intent:
        parts.append(f"{intent.get('amount')} {intent.get('currency')}")
    note = NETWORK_CALLS.get(kind) or NETWORK_ANSWERS.get(kind)
    if note:
        parts.append(f"[{note}]")
    return "  ".join(parts)


def _delivery_lines(event: EventRow, deliveries: list[TracedDelivery], tries: list[DeliveryAttemptRow]) -> list[str]:
    lines = []
    for delivery in (d for d in deliveries if d.event_id == event.id):
        lines.append(f"{'':31}webhook to {delivery.endpoint_id}: {delivery.status} after {delivery.attempts} tries")
        for attempt in (t for t in tries if t.event_id == event.id and t.endpoint_id == delivery.endpoint_id):
            when = datetime.fromtimestamp(attempt.at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
            answer = f"HTTP {attempt.status_code}" if attempt.status_code is not None else (attempt.error or "no answer")
            lines.append(f"{'':35}try {attempt.attempt} at {when}: {answer} in {attempt.latency_ms} ms")
    return lines
