"""Micro-benchmarks of the engine core: what one command costs the actor.

Every command type's decide and every event type's encode has a benchmark,
each on a state where the command is accepted (a refusal is cheaper and
would flatter the figure). They run once each as ordinary tests
(`--benchmark-disable` is in pyproject's addopts); for figures run
`python -m pytest tests/test_benchmarks.py --benchmark-enable
--benchmark-columns=min,median,ops` and compare against the baseline
measured in the same run (an encode of a tiny Struct).
"""

from __future__ import annotations

import typing
from collections.abc import Callable

import msgspec
import pytest

from engine import intent as machine
from engine.intent import CaptureMethod

MERCHANT = "acct_038g0sq35r000n7zrz8syzzsk74mw"
INTENT = "pi_038g0sq9t2001r679mshv15xd0e32"
ATTEMPT = "att_038g0sq9t2001448xeb5ssygd6wby"
SECOND_ATTEMPT = "att_038g0sq9t2001448xeb5ssygd6wbz"
REFUND = "re_038g0sq9t2001448xeb5ssygd6wb0"
DISPUTE = "dp_0123456789abcdef01234567"
AT_S = 1_795_309_818

CREATE = machine.CreateIntent(
    intent_id=INTENT,
    merchant_id=MERCHANT,
    livemode=False,
    amount=2000,
    currency="usd",
    capture_method=CaptureMethod.automatic,
    client_secret=f"{INTENT}_secret_x",
    at_s=AT_S,
    attempt_id=ATTEMPT,
    payment_method_id="pm_038g0sq9sw000z4q77wbn87cw1700",
    confirm=True,
)
COMMON = {"intent_id": INTENT, "merchant_id": MERCHANT, "livemode": False}


def run(intent: machine.PaymentIntent | None, *commands: machine.Command) -> machine.PaymentIntent | None:
    """The intent after each command is decided (and accepted) and its events applied."""
    for command in commands:
        decision = machine.decide(intent, command)
        assert decision.result is machine.Result.ok, (command, decision)
        for event in decision.events:
            intent = machine.evolve(intent, event)
    return intent


def processing(capture_method: CaptureMethod = CaptureMethod.automatic) -> machine.PaymentIntent | None:
    return run(None, msgspec.structs.replace(CREATE, capture_method=capture_method))


def approved(capture_method: CaptureMethod = CaptureMethod.automatic) -> machine.PaymentIntent | None:
    return run(processing(capture_method), machine.RecordApproval(intent_id=INTENT, attempt_id=ATTEMPT, at_s=AT_S + 1))


def refund_pending() -> machine.PaymentIntent | None:
    return run(approved(), machine.CreateRefund(**COMMON, refund_id=REFUND, at_s=AT_S + 2, amount=500))


def refunded() -> machine.PaymentIntent | None:
    return run(refund_pending(), machine.RecordApproval(intent_id=INTENT, attempt_id=REFUND, at_s=AT_S + 3))


def disputed() -> machine.PaymentIntent | None:
    return run(approved(), machine.RecordDisputeOpened(intent_id=INTENT, dispute_id=DISPUTE, amount=2000, at_s=AT_S + 4))


# Each command type: (state it is decided against, the command).
COMMANDS: dict[str, Callable[[], tuple[machine.PaymentIntent | None, machine.Command]]] = {
    "CreateIntent": lambda: (None, CREATE),
    "ConfirmIntent": lambda: (
        run(None, msgspec.structs.replace(CREATE, confirm=False)),
        machine.ConfirmIntent(**COMMON, attempt_id=ATTEMPT, at_s=AT_S),
    ),
    "CaptureIntent": lambda: (approved(CaptureMethod.manual), machine.CaptureIntent(**COMMON, attempt_id=SECOND_ATTEMPT, at_s=AT_S + 2)),
    "CancelIntent": lambda: (approved(CaptureMethod.manual), machine.CancelIntent(**COMMON, attempt_id=SECOND_ATTEMPT, at_s=AT_S + 2)),
    "UpdateIntent": lambda: (
        run(None, msgspec.structs.replace(CREATE, confirm=False)),
        machine.UpdateIntent(**COMMON, at_s=AT_S + 1, amount=2500, metadata={"order": "8"}),
    ),
    "ExpireAuthorization": lambda: (approved(CaptureMethod.manual), machine.ExpireAuthorization(intent_id=INTENT, attempt_id=SECOND_ATTEMPT, at_s=AT_S + 9)),
    "CreateRefund": lambda: (approved(), machine.CreateRefund(**COMMON, refund_id=REFUND, at_s=AT_S + 2, amount=500)),
    "RecordApproval": lambda: (processing(), machine.RecordApproval(intent_id=INTENT, attempt_id=ATTEMPT, at_s=AT_S + 1)),
    "RecordDecline": lambda: (
        processing(),
        machine.RecordDecline(intent_id=INTENT, attempt_id=ATTEMPT, at_s=AT_S + 1, code="card_declined", decline_code="generic_decline", message="Your card was declined."),
    ),
    "RecordActionRequired": lambda: (processing(), machine.RecordActionRequired(intent_id=INTENT, attempt_id=ATTEMPT, at_s=AT_S + 1, url="http://127.0.0.1/simulator/3ds/x")),
    "RecordUnknownOutcome": lambda: (processing(), machine.RecordUnknownOutcome(intent_id=INTENT, attempt_id=ATTEMPT, at_s=AT_S + 1)),
    "RecordNotSent": lambda: (processing(), machine.RecordNotSent(intent_id=INTENT, attempt_id=ATTEMPT, at_s=AT_S + 1)),
    "RecordRefundFailure": lambda: (refunded(), machine.RecordRefundFailure(intent_id=INTENT, refund_id=REFUND, at_s=AT_S + 5, failure_reason="refund_failed")),
    "RecordDisputeOpened": lambda: (approved(), machine.RecordDisputeOpened(intent_id=INTENT, dispute_id=DISPUTE, amount=2000, at_s=AT_S + 4)),
    "RecordDisputeClosed": lambda: (disputed(), machine.RecordDisputeClosed(intent_id=INTENT, dispute_id=DISPUTE, won=True, at_s=AT_S + 5)),
    "IncrementAuthorization": lambda: (
        approved(CaptureMethod.manual),
        machine.IncrementAuthorization(**COMMON, attempt_id=SECOND_ATTEMPT, at_s=AT_S + 2, amount=2600, metadata={"order": "8"}),
    ),
    "UpdateCharge": lambda: (approved(), machine.UpdateCharge(**COMMON, attempt_id=ATTEMPT, at_s=AT_S + 2, description="order 8", metadata={"order": "8"})),
    "UpdateRefund": lambda: (refunded(), machine.UpdateRefund(**COMMON, refund_id=REFUND, at_s=AT_S + 4, metadata={"reason": "return"})),
    "UpdateDispute": lambda: (
        disputed(),
        machine.UpdateDispute(**COMMON, dispute_id=DISPUTE, at_s=AT_S + 5, evidence={"product_description": "A teapot"}),
    ),
    "CloseDispute": lambda: (disputed(), machine.CloseDispute(**COMMON, dispute_id=DISPUTE, at_s=AT_S + 5)),
}


def events_by_type() -> dict[str, machine.Event]:
    """One event of each type, from accepted decisions of the cases above."""
    found: dict[str, machine.Event] = {}
    for case in COMMANDS.values():
        intent, command = case()
        for event in machine.decide(intent, command).events:
            found.setdefault(type(event).__name__, event)
    return found


EVENTS = events_by_type()


def test_every_command_and_event_type_has_a_benchmark() -> None:
    assert set(COMMANDS) == {kind.__name__ for kind in typing.get_args(machine.Command)}
    assert set(EVENTS) == {kind.__name__ for kind in typing.get_args(machine.Event)}


def test_baseline_encode_of_a_tiny_struct(benchmark) -> None:
    approval = machine.RecordApproval(intent_id=CREATE.intent_id, attempt_id=CREATE.attempt_id, at_s=1)
    assert benchmark(machine.event_encoder.encode, approval)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_decide(benchmark, name: str) -> None:
    intent, command = COMMANDS[name]()
    decision = benchmark(machine.decide, intent, command)
    assert decision.result is machine.Result.ok and decision.events


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_encode_event(benchmark, name: str) -> None:
    event = EVENTS[name]
    encoded = benchmark(machine.event_encoder.encode, event)
    assert machine.event_decoder.decode(encoded) == event


def test_decide_and_evolve_an_approval(benchmark) -> None:
    intent = processing()
    approval = machine.RecordApproval(intent_id=INTENT, attempt_id=ATTEMPT, at_s=AT_S + 1)

    def approve() -> machine.PaymentIntent:
        decision = machine.decide(intent, approval)
        return machine.evolve(intent, decision.events[0])

    assert benchmark(approve).status is machine.Status.succeeded


def test_encode_and_decode_a_journal_event(benchmark) -> None:
    event = machine.decide(None, CREATE).events[0]

    def round_trip() -> machine.Event:
        return machine.event_decoder.decode(machine.event_encoder.encode(event))

    assert benchmark(round_trip) == event
