"""Micro-benchmarks of the engine core: what one command costs the actor.

They run once each as ordinary tests; for figures run
`python -m pytest tests/test_benchmarks.py --benchmark-enable` and compare
against the baseline measured in the same run (an empty msgspec encode).
"""

from __future__ import annotations

from engine import intent as machine
from engine.intent import CaptureMethod

CREATE = machine.CreateIntent(
    intent_id="pi_038g0sq9t2001r679mshv15xd0e32",
    merchant_id="acct_038g0sq35r000n7zrz8syzzsk74mw",
    livemode=False,
    amount=2000,
    currency="usd",
    capture_method=CaptureMethod.automatic,
    client_secret="pi_038g0sq9t2001r679mshv15xd0e32_secret_x",
    at_s=1_795_309_818,
    attempt_id="att_038g0sq9t2001448xeb5ssygd6wby",
    payment_method_id="pm_038g0sq9sw000z4q77wbn87cw1700",
    confirm=True,
)


def created_and_processing() -> machine.PaymentIntent:
    decision = machine.decide(None, CREATE)
    intent = None
    for event in decision.events:
        intent = machine.evolve(intent, event)
    assert intent is not None and intent.status is machine.Status.processing
    return intent


def test_baseline_encode_of_a_tiny_struct(benchmark) -> None:
    approval = machine.RecordApproval(intent_id=CREATE.intent_id, attempt_id=CREATE.attempt_id, at_s=1)
    assert benchmark(machine.event_encoder.encode, approval)


def test_decide_create_and_confirm(benchmark) -> None:
    decision = benchmark(machine.decide, None, CREATE)
    assert decision.result is machine.Result.ok and len(decision.effects) == 1


def test_decide_and_evolve_an_approval(benchmark) -> None:
    intent = created_and_processing()
    approval = machine.RecordApproval(intent_id=intent.id, attempt_id=CREATE.attempt_id, at_s=CREATE.at_s + 1)

    def approve() -> machine.PaymentIntent:
        decision = machine.decide(intent, approval)
        return machine.evolve(intent, decision.events[0])

    assert benchmark(approve).status is machine.Status.succeeded


def test_encode_and_decode_a_journal_event(benchmark) -> None:
    event = machine.decide(None, CREATE).events[0]

    def round_trip() -> machine.Event:
        return machine.event_decoder.decode(machine.event_encoder.encode(event))

    assert benchmark(round_trip) == event
