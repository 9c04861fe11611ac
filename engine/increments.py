"""Incremental authorization: raising a held authorization to a larger total
before it is captured (Stripe's `increment_authorization`).

Theory of operation
-------------------
Only an intent holding an uncaptured authorization (`requires_capture`)
can be incremented. The increment is a network exchange of its own, like a
capture: an attempt of kind `increment`, whose id is its reference and
whose `amount` is the new total asked for, acting on the authorization
(`parent_id`). It is journaled `pending` before the call and the intent is
`processing` meanwhile, so the table refuses a capture, a cancel, an
expiry or a second increment until the answer (DESIGN section 5: never two
open money-moving attempts).

- Approved: the authorization now holds the new total. The intent's amount
  and amount_capturable become it, so does the authorization attempt's
  amount (its charge shows it), and the ledger's hold is replaced by one of
  the new total (the old hold released, a new one placed, in one event). A
  description and metadata sent with the increment apply now.
- Declined: nothing changes but the attempt, which failed; the intent is
  `requires_capture` again for the amount it held (Stripe answers
  `card_declined`).
- No answer: the attempt is unknown and the intent stays `processing` until
  reconciliation learns the answer, as for any attempt.

Stripe allows at most INCREMENTS_PER_INTENT_MAX tries per intent, declines
included; the new total must exceed what is authorized now.
"""

from __future__ import annotations

import msgspec

from engine import money
from engine.commands import IncrementAuthorization
from engine.decisions import Decision, network_call, refuse
from engine.events import AttemptApproved, AttemptDeclined, AttemptStarted, Event, IncrementRequested
from engine.postings import ledger_hold, ledger_release_hold
from engine.records import Attempt, AttemptKind, AttemptStatus, IncrementRequest, PaymentIntent
from engine.results import Result
from engine.shapes import DESCRIPTION_CHARS_MAX, check_metadata, check_text
from engine.status import TRANSITIONS, Status

INCREMENTS_PER_INTENT_MAX = 10


def increments(intent: PaymentIntent) -> list[Attempt]:
    """The intent's increment attempts, oldest first."""
    return [attempt for attempt in intent.attempts if attempt.kind is AttemptKind.increment]


def decide_increment(intent: PaymentIntent, command: IncrementAuthorization) -> Decision:
    """Opens an increment of the authorization to `command.amount` and asks
    the network for it; refused on a malformed amount, description or
    metadata, where the table allows no increment (the intent holds no
    uncaptured authorization), for a total not above what is held, or past
    the limit of tries."""
    if not money.amount_in_range(command.amount):
        return refuse(Result.amount_out_of_range, "amount")
    if not check_metadata(command.metadata) or not check_text(command.description, DESCRIPTION_CHARS_MAX):
        return refuse(Result.metadata_invalid, "metadata" if command.description is None else "description")
    # Bounded as merged, as an update's: the intent's keys count too.
    if not check_metadata(_merged(intent.metadata, command.metadata)):
        return refuse(Result.metadata_invalid, "metadata")
    target = TRANSITIONS[intent.status].get(IncrementAuthorization)
    if target is None:
        return refuse(Result.intent_unexpected_state)
    authorization = intent.authorization()
    assert authorization is not None and intent.open_attempt() is None, intent
    if authorization.kind is not AttemptKind.authorize:
        return refuse(Result.intent_unexpected_state)
    if command.amount <= intent.amount_capturable:
        return refuse(Result.increment_amount_invalid, "amount")
    if len(increments(intent)) >= INCREMENTS_PER_INTENT_MAX:
        return refuse(Result.increments_too_many, "amount")
    attempt = Attempt(
        id=command.attempt_id,
        kind=AttemptKind.increment,
        payment_method_id=authorization.payment_method_id,
        amount=command.amount,
        status=AttemptStatus.pending,
        created_s=command.at_s,
        parent_id=authorization.id,
    )
    events: tuple[Event, ...] = (AttemptStarted(intent_id=intent.id, attempt=attempt, status=target),)
    if command.description is not None or command.metadata:
        request = IncrementRequest(attempt_id=attempt.id, description=command.description, metadata=command.metadata)
        events += (IncrementRequested(intent_id=intent.id, request=request),)
    return Decision(result=Result.ok, events=events, effects=(network_call(intent, attempt),))


def increment_approval(intent: PaymentIntent, attempt: Attempt, at_s: int) -> AttemptApproved:
    """The network approved the increment `attempt`: the intent holds its
    new total, and the ledger's hold is replaced by one of that total."""
    assert attempt.kind is AttemptKind.increment and attempt.parent_id is not None, attempt
    transfers = (
        ledger_release_hold(intent, attempt.parent_id, at_s, transfer_id=f"{attempt.id}:release"),
        ledger_hold(intent, attempt, at_s),
    )
    return AttemptApproved(
        intent_id=intent.id,
        attempt_id=attempt.id,
        status=Status.requires_capture,
        amount_capturable=attempt.amount,
        amount_received=0,
        transfers=transfers,
    )


def is_increment_answer(intent: PaymentIntent, event: AttemptApproved | AttemptDeclined) -> bool:
    attempt = intent.attempt(event.attempt_id)
    return attempt is not None and attempt.kind is AttemptKind.increment


def evolve_increment_answer(intent: PaymentIntent, event: AttemptApproved | AttemptDeclined) -> PaymentIntent:
    """The intent after the network's answer to one of its increments:
    approved, the new total is what it asks for and holds (its
    authorization's amount too) and the request's description and metadata
    apply; declined, only the attempt changes. Either way the request is
    done."""
    replace = msgspec.structs.replace
    attempt = intent.attempt(event.attempt_id)
    assert attempt is not None and attempt.kind is AttemptKind.increment, event
    request = intent.increment_request if intent.increment_request is not None and intent.increment_request.attempt_id == attempt.id else None
    if isinstance(event, AttemptDeclined):
        attempts = tuple(replace(a, status=AttemptStatus.failed) if a.id == attempt.id else a for a in intent.attempts)
        return replace(intent, status=event.status, attempts=attempts, increment_request=None)
    attempts = tuple(
        replace(a, status=AttemptStatus.succeeded) if a.id == attempt.id else replace(a, amount=attempt.amount) if a.id == attempt.parent_id else a
        for a in intent.attempts
    )
    description, metadata = intent.description, intent.metadata
    if request is not None:
        metadata = _merged(metadata, request.metadata)
        description = description if request.description is None else (request.description or None)
    return replace(
        intent,
        status=event.status,
        amount=attempt.amount,
        amount_capturable=event.amount_capturable,
        attempts=attempts,
        description=description,
        metadata=metadata,
        increment_request=None,
    )


def _merged(metadata: dict[str, str], changes: dict[str, str]) -> dict[str, str]:
    """`metadata` with `changes` merged in; a key sent empty is removed."""
    return {key: value for key, value in {**metadata, **changes}.items() if value != ""}
