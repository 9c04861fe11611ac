"""The invariants of DESIGN section 6, checked over a whole journal, and
against the card network's own record when it can be had.

The journal is replayed partition by partition exactly as a node recovers
it, so what is checked is what a node would believe. The network's record
comes as plain dicts (the simulator's operations), so this works the same
for the in-process simulator and the HTTP service.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from engine import ids
from engine import intent as machine
from engine.intent import AttemptKind, AttemptStatus, PaymentIntent, RefundStatus
from shards.actor import ShardState
from store.rows import IdempotencyRow

INVARIANTS = {
    "I1": "at most one successful authorization per intent at the network",
    "I2": "captured <= authorized <= amount; refunded <= captured",
    "I3": "every network operation maps to an attempt and both agree; none unknown",
    "I4": "every acknowledged response is durable: stored responses and the payments callers saw finish are in the journal",
    "I5": "the ledger balances and each account equals the sum of its transfers",
    "I6": "one idempotency key, one stored first response",
}

AUTHORIZATIONS = (AttemptKind.authorize, AttemptKind.charge)


class Violation(msgspec.Struct, frozen=True):
    invariant: str
    subject: str
    detail: str


class Acknowledged(msgspec.Struct, frozen=True):
    """What a caller was told when its payment finished: the intent's
    status, and the refund it made (if any), which was told `succeeded`."""

    status: str
    refund_id: str | None = None


class Report(msgspec.Struct):
    checked: dict[str, int]
    violations: list[Violation]
    network_checked: bool

    @property
    def ok(self) -> bool:
        return not self.violations

    def table(self) -> str:
        counts = Counter(violation.invariant for violation in self.violations)
        lines = [f"{'invariant':<10} {'checked':>8} {'violations':>10}  meaning"]
        for name, meaning in INVARIANTS.items():
            checked = self.checked.get(name, 0)
            lines.append(f"{name:<10} {checked:>8} {counts[name]:>10}  {meaning}")
        if not self.network_checked:
            lines.append("(the card network's record was not reachable: I1 and I3 checked on our side only)")
        for violation in self.violations[:50]:
            lines.append(f"  {violation.invariant} {violation.subject}: {violation.detail}")
        if len(self.violations) > 50:
            lines.append(f"  ... and {len(self.violations) - 50} more")
        return "\n".join(lines)


def check(
    states: Sequence[ShardState],
    idempotency: Iterable[IdempotencyRow] = (),
    network_operations: Sequence[dict[str, Any]] | None = None,
    acknowledged: Mapping[str, Acknowledged] | None = None,
) -> Report:
    """I1 to I6 over the replayed `states`; `acknowledged` (intent id ->
    what its caller was told last) is checked against them as part of I4."""
    intents = [intent for state in states for intent in state.intents.values()]
    violations: list[Violation] = []
    checked: Counter[str] = Counter()
    for intent in intents:
        checked["I1"] += 1
        checked["I2"] += 1
        violations += _check_intent(intent)
    for state in states:
        checked["I5"] += len(state.ledger.transfers())
        violations += [Violation("I5", f"partition {state.partition}", problem) for problem in state.ledger.verify()]
    by_id = {intent.id: intent for intent in intents}
    keys: Counter[tuple[str, str]] = Counter()
    for row in idempotency:
        checked["I4"] += 1
        checked["I6"] += 1
        keys[(row.merchant_id, row.key)] += 1
        if row.object_id is not None and row.object_id.startswith("pi_") and row.object_id not in by_id:
            violations.append(Violation("I4", row.object_id, "a stored response names an intent the journal does not have"))
    violations += [Violation("I6", f"{merchant}/{key}", f"{count} records") for (merchant, key), count in keys.items() if count > 1]
    if acknowledged:
        checked["I4"] += len(acknowledged)
        violations += _check_acknowledged(by_id, acknowledged)
    if network_operations is not None:
        violations += _check_network(intents, network_operations, checked)
    return Report(checked=dict(checked), violations=violations, network_checked=network_operations is not None)


def _check_intent(intent: PaymentIntent) -> list[Violation]:
    found = []
    approved = [a for a in intent.attempts if a.kind in AUTHORIZATIONS and a.status is AttemptStatus.succeeded]
    if len(approved) > 1:
        found.append(Violation("I1", intent.id, f"{len(approved)} successful authorizations"))
    authorized = approved[0].amount if approved else 0
    captured = intent.amount_received
    if not captured <= authorized <= intent.amount:
        found.append(Violation("I2", intent.id, f"captured {captured}, authorized {authorized}, amount {intent.amount}"))
    if intent.amount_refunded > captured:
        found.append(Violation("I2", intent.id, f"refunded {intent.amount_refunded} of {captured} captured"))
    for attempt in intent.attempts:
        if attempt.status in (AttemptStatus.unknown, AttemptStatus.pending) and intent.status is not machine.Status.requires_action:
            found.append(Violation("I3", attempt.id, f"{attempt.kind} attempt left {attempt.status}"))
    for refund in intent.refunds:
        if refund.outcome_unknown:
            found.append(Violation("I3", refund.id, "refund outcome unknown"))
    return found


def _check_acknowledged(intents: Mapping[str, PaymentIntent], acknowledged: Mapping[str, Acknowledged]) -> list[Violation]:
    """Each payment a caller saw finish, as the journal has it. Whoever
    acknowledges must change nothing after a payment finishes (the bench
    does not), so the journal must show exactly the status the caller was
    told, not merely a later one."""
    found = []
    for intent_id, told in acknowledged.items():
        intent = intents.get(intent_id)
        if intent is None:
            found.append(Violation("I4", intent_id, f"the caller was told {told.status}; the journal has no such intent"))
            continue
        if str(intent.status) != told.status:
            found.append(Violation("I4", intent_id, f"the caller was told {told.status}; the journal says {intent.status}"))
        if told.refund_id is not None:
            refund = intent.refund(told.refund_id)
            if refund is None or refund.status is not RefundStatus.succeeded:
                said = "no such refund" if refund is None else f"the refund {refund.status}"
                found.append(Violation("I4", told.refund_id, f"the caller was told the refund succeeded; the journal has {said}"))
    return found


def _check_network(intents: Sequence[PaymentIntent], operations: Sequence[dict[str, Any]], checked: Counter[str]) -> list[Violation]:
    found = []
    attempts = {attempt.id: (intent, attempt) for intent in intents for attempt in intent.attempts}
    refunds = {refund.id: (intent, refund) for intent in intents for refund in intent.refunds}
    approved_by_intent: Counter[str] = Counter()
    for operation in operations:
        reference, kind, approved = operation["reference"], operation["kind"], operation["approved"]
        checked["I3"] += 1
        if kind == "tombstone":
            continue  # closed by an inquiry: nothing moved
        if reference.startswith("setatt_"):
            continue  # a SetupIntent's card check (amount 0): no intent's, and no money moved
        if kind == "refund":
            ours = refunds.get(reference)
            if ours is None:
                found.append(Violation("I3", reference, "the network refunded under a reference we do not have"))
                continue
            succeeded = approved and not operation.get("failed_later", False)
            if succeeded != (ours[1].status is RefundStatus.succeeded) and ours[1].status is not RefundStatus.pending:
                found.append(Violation("I3", reference, f"network says {'succeeded' if succeeded else 'failed'}, we say {ours[1].status}"))
            continue
        mine = attempts.get(reference)
        if mine is None:
            found.append(Violation("I3", reference, f"the network has a {kind} we have no attempt for"))
            continue
        intent, attempt = mine
        if kind == "authorize" and approved:
            checked["I1"] += 1
            approved_by_intent[intent.id] += 1
        if attempt.status in (AttemptStatus.succeeded, AttemptStatus.failed) and approved != (attempt.status is AttemptStatus.succeeded):
            found.append(Violation("I3", reference, f"network says {'approved' if approved else 'declined'}, we say {attempt.status}"))
    for intent_id, count in approved_by_intent.items():
        if count > 1:
            found.append(Violation("I1", intent_id, f"the network approved {count} authorizations"))
    return found


def settlement_mismatches(states: Sequence[ShardState], settlement: Sequence[dict[str, Any]]) -> list[str]:
    """Our captures and refunds against the network's settlement report.

    Operations still open on our side (pending or unknown) are left out:
    reconciliation settles those, and until then a difference is expected.
    """
    ours: dict[str, int] = {}
    still_open: set[str] = set()
    for state in states:
        for intent in state.intents.values():
            for attempt in intent.attempts:
                if attempt.kind in (AttemptKind.charge, AttemptKind.capture) and attempt.status is AttemptStatus.succeeded:
                    ours[attempt.id] = attempt.amount
                if attempt.status in (AttemptStatus.pending, AttemptStatus.unknown):
                    still_open.add(attempt.id)
            for refund in intent.refunds:
                if refund.status is RefundStatus.succeeded:
                    ours[refund.id] = refund.amount
                if refund.status is RefundStatus.pending:
                    still_open.add(refund.id)
    # The report's entries for these partitions, and those naming none of
    # ours at all: in a cluster the other partitions' are their owners' to
    # compare.
    partitions = {state.partition for state in states} | {None}
    theirs = {
        entry["reference"]: entry["amount_minor"]
        for entry in settlement
        if not entry.get("failed_later", False) and ids.partition_of_reference(entry["reference"]) in partitions
    }
    references = sorted((set(ours) | set(theirs)) - still_open)
    problems = [f"{reference}: ours {ours.get(reference)}, network {theirs.get(reference)}" for reference in references if ours.get(reference) != theirs.get(reference)]
    return problems

