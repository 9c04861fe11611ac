"""The PaymentIntent state machine: its statuses and the table of its moves.

Theory of operation
-------------------
An intent moves through Stripe's statuses. A command is first *decided*:
checked against the intent as it is now, in a fixed order (shape, then
lookups, then status, then amounts), and either refused with a `Result` code
or turned into events plus effects. Events are then *applied* with `evolve`,
which is also what the journal replays on recovery. Events carry the status
they lead to and the ledger transfers they make, so replaying an old journal
never depends on today's table or today's fee policy.

`TRANSITIONS[status][command type]` is the whole table of allowed moves of an
intent; any pair not in it is refused with `intent_unexpected_state` and
changes nothing.

The double-charge protocol (DESIGN section 5) lives in the table as data: a
confirm or a capture opens an attempt in status `pending` and asks for a
`NetworkCall` effect; the intent is `processing` until the network's answer
(or the lack of one) is recorded. `processing` accepts no confirm, capture or
cancel, so an intent never has two open money-moving attempts.

Special cases (decided in `engine.attempts` unless another module is named):
- an approval leads to `succeeded` for a charge (automatic capture) or a
  capture, but to `requires_capture` for an authorization (manual capture);
- a declined capture returns to `requires_capture`: the authorization holds;
- confirming needs a payment method, on the intent or given with the confirm;
  a decline takes the declined method off the intent, as Stripe does;
- cancel from `requires_capture` (and expiry) releases the hold in the
  ledger at once and asks the network to void it; the void's answer changes
  nothing on the intent, which is final;
- an authorization that needs 3-D Secure leaves its attempt open while the
  intent is `requires_action`; the network's final answer for that same
  attempt comes after the cardholder's challenge. A cancel meanwhile
  abandons the attempt and asks the network to void it;
- but an attempt made off session (the cardholder away) that the network
  wants authenticated is declined at once, `authentication_required`, to
  `requires_payment_method`, and its challenge voided: nobody would answer;
- an increment of a held authorization (engine.increments) goes through
  `processing` like a capture, but its answer, approved or declined, leads
  back to `requires_capture` whatever the table's target says;
- disputes, like refunds, do not move the intent; each has its own table,
  `DISPUTE_TRANSITIONS` in `engine.disputes`;
- refunds do not move the intent, which stays `succeeded`. Each refund is its
  own network operation (its id is the reference) with a small table of its
  own, `REFUND_TRANSITIONS` in `engine.refunds`. Several may be in flight at
  once; together they never exceed what was received.

Where the rest lives: the intent's records in `engine.records`, commands in
`engine.commands`, events in `engine.events`, effects and `Decision` in
`engine.decisions`, shape checks in `engine.shapes`, ledger postings in
`engine.postings`; `engine.intent` holds `decide` and `evolve` and is the
face the rest of the code imports.
"""

from __future__ import annotations

import enum

from engine.commands import (
    CancelIntent,
    CaptureIntent,
    ConfirmIntent,
    CreateRefund,
    ExpireAuthorization,
    IncrementAuthorization,
    RecordActionRequired,
    RecordApproval,
    RecordDecline,
    RecordDisputeOpened,
    RecordNotSent,
    RecordUnknownOutcome,
)


class Status(enum.StrEnum):
    requires_payment_method = "requires_payment_method"
    requires_confirmation = "requires_confirmation"
    requires_action = "requires_action"
    processing = "processing"
    requires_capture = "requires_capture"
    canceled = "canceled"
    succeeded = "succeeded"


TRANSITIONS: dict[Status, dict[type, Status]] = {
    Status.requires_payment_method: {ConfirmIntent: Status.processing, CancelIntent: Status.canceled},
    Status.requires_confirmation: {ConfirmIntent: Status.processing, CancelIntent: Status.canceled},
    Status.requires_action: {
        RecordApproval: Status.succeeded,  # or requires_capture, as from processing
        RecordDecline: Status.requires_payment_method,
        # After a restart nobody is waiting on the challenge's answer any
        # more: the attempt becomes unknown for reconciliation to resolve.
        RecordUnknownOutcome: Status.requires_action,
        CancelIntent: Status.canceled,
    },
    Status.processing: {
        RecordApproval: Status.succeeded,  # or requires_capture: see the docstring
        RecordDecline: Status.requires_payment_method,  # or requires_capture for a capture
        RecordActionRequired: Status.requires_action,
        RecordUnknownOutcome: Status.processing,
        # The network was never called: the customer may confirm again.
        RecordNotSent: Status.requires_confirmation,
    },
    Status.requires_capture: {
        CaptureIntent: Status.processing,
        CancelIntent: Status.canceled,
        ExpireAuthorization: Status.canceled,
        # Special case (engine.increments): processing while the network
        # answers, then requires_capture again, approved or not.
        IncrementAuthorization: Status.processing,
    },
    Status.canceled: {},
    Status.succeeded: {
        CreateRefund: Status.succeeded,
        RecordDisputeOpened: Status.succeeded,
    },
}
