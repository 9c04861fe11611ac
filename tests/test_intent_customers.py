"""An intent's customer, setup_future_usage and off-session confirms, against
the pure core: what the intent keeps, when it may change, how an off-session
payment the issuer wants authenticated is declined, and that journal rows
written before these fields existed still decode and replay."""

from __future__ import annotations

import msgspec
import pytest

from engine import charges, ids
from engine import intent as machine
from engine.attempts import void_id_of
from engine.intent import AttemptKind, AttemptStatus, CaptureMethod, Result, Status

MERCHANT = "acct_customers"
PARTITION = 3
INTENT_ID = ids.make_id("pi", PARTITION, 1_700_000_000_000, bytes(10))
ATTEMPT_ID = ids.make_id("att", PARTITION, 1_700_000_000_500, bytes(range(10)))
COMMON = {"intent_id": INTENT_ID, "merchant_id": MERCHANT, "livemode": False}
CREATE = machine.CreateIntent(
    **COMMON, amount=4200, currency="usd", capture_method=CaptureMethod.automatic, client_secret="secret",
    at_s=100, attempt_id=ATTEMPT_ID, payment_method_id="pm_saved", customer_id="cus_1", setup_future_usage="off_session",
)


def run(intent: machine.PaymentIntent | None, command: machine.Command) -> tuple[machine.PaymentIntent, machine.Decision]:
    decision = machine.decide(intent, command)
    assert decision.result is Result.ok, decision
    for event in decision.events:
        # Through the journal's encoding, as on replay.
        intent = machine.evolve(intent, machine.event_decoder.decode(machine.event_encoder.encode(event)))
    assert intent is not None
    return intent, decision


def action_required(attempt_id: str = ATTEMPT_ID) -> machine.RecordActionRequired:
    return machine.RecordActionRequired(intent_id=INTENT_ID, attempt_id=attempt_id, at_s=101, url="https://acs.test/3ds")


def test_an_intent_keeps_its_customer_and_setup_future_usage() -> None:
    created, _ = run(None, CREATE)
    assert (created.customer_id, created.setup_future_usage) == ("cus_1", "off_session")
    plain, _ = run(None, msgspec.structs.replace(CREATE, customer_id=None, setup_future_usage=None))
    assert (plain.customer_id, plain.setup_future_usage) == (None, None)


def test_a_confirm_may_set_setup_future_usage_and_leaves_it_otherwise() -> None:
    created, _ = run(None, msgspec.structs.replace(CREATE, setup_future_usage=None))
    confirm = machine.ConfirmIntent(**COMMON, attempt_id=ATTEMPT_ID, at_s=101, setup_future_usage="on_session")
    confirmed, _ = run(created, confirm)
    assert confirmed.setup_future_usage == "on_session" and confirmed.status is Status.processing
    again, _ = run(None, CREATE)
    kept, _ = run(again, machine.ConfirmIntent(**COMMON, attempt_id=ATTEMPT_ID, at_s=101))
    assert kept.setup_future_usage == "off_session"


def test_customer_and_setup_future_usage_change_before_a_confirm_only() -> None:
    created, _ = run(None, msgspec.structs.replace(CREATE, customer_id=None))
    updated, _ = run(created, machine.UpdateIntent(**COMMON, at_s=102, customer_id="cus_2", setup_future_usage=""))
    assert (updated.customer_id, updated.setup_future_usage) == ("cus_2", None)
    # Nothing asked, nothing changed; a description alone keeps them.
    relabelled, _ = run(updated, machine.UpdateIntent(**COMMON, at_s=103, description="order 5", setup_future_usage="on_session"))
    assert (relabelled.customer_id, relabelled.setup_future_usage) == ("cus_2", "on_session")
    processing, _ = run(relabelled, machine.ConfirmIntent(**COMMON, attempt_id=ATTEMPT_ID, at_s=104))
    for change, param in ((dict(customer_id="cus_3"), "customer"), (dict(setup_future_usage="off_session"), "setup_future_usage")):
        refused = machine.decide(processing, machine.UpdateIntent(**COMMON, at_s=105, **change))
        assert (refused.result, refused.param, refused.events) == (Result.intent_unexpected_state, param, ())
    # Labels still change, and keep the customer.
    later, _ = run(processing, machine.UpdateIntent(**COMMON, at_s=106, metadata={"k": "v"}))
    assert later.customer_id == "cus_2" and later.metadata == {"k": "v"}


def test_an_off_session_payment_that_needs_3ds_is_declined_authentication_required() -> None:
    confirmed, decision = run(None, msgspec.structs.replace(CREATE, confirm=True, off_session=True))
    assert confirmed.attempts[0].off_session and confirmed.status is Status.processing
    assert [effect.kind for effect in decision.effects] == ["charge"]

    declined, decision = run(confirmed, action_required())
    assert declined.status is Status.requires_payment_method
    assert declined.next_action_url is None and declined.payment_method_id is None
    error = declined.last_payment_error
    assert error is not None
    assert (error.code, error.decline_code, error.payment_method_id) == ("authentication_required", "authentication_required", "pm_saved")
    assert error.message == "Your card was declined. This transaction requires authentication."
    authorization, void = declined.attempts
    assert authorization.status is AttemptStatus.failed
    # The challenge nobody will answer is closed at the network.
    assert (void.kind, void.amount, void.parent_id, void.status, void.id) == (AttemptKind.void, 0, ATTEMPT_ID, AttemptStatus.pending, void_id_of(ATTEMPT_ID))
    assert [(effect.kind, effect.attempt_id, effect.parent_id) for effect in decision.effects] == [("void", void.id, ATTEMPT_ID)]
    # Stripe makes no charge of an authentication that never happened.
    assert charges.latest(declined) is None

    closed, _ = run(declined, machine.RecordApproval(intent_id=INTENT_ID, attempt_id=void.id, at_s=102))
    assert closed.status is Status.requires_payment_method and closed.attempts[1].status is AttemptStatus.succeeded
    # The decline stays shown: the void only closed the challenge.
    assert closed.last_payment_error == declined.last_payment_error
    # The customer, back on the site, may pay on-session with another card.
    retry_id = ids.make_id("att", PARTITION, 1_700_000_001_000, bytes(10))
    retried, _ = run(closed, machine.ConfirmIntent(**COMMON, attempt_id=retry_id, at_s=103, payment_method_id="pm_other"))
    assert retried.status is Status.processing and not retried.attempts[-1].off_session
    waiting, _ = run(retried, action_required(retry_id))
    assert waiting.status is Status.requires_action and waiting.next_action_url == "https://acs.test/3ds"


def test_an_off_session_confirm_of_an_existing_intent_is_declined_the_same_way() -> None:
    created, _ = run(None, CREATE)
    confirmed, _ = run(created, machine.ConfirmIntent(**COMMON, attempt_id=ATTEMPT_ID, at_s=101, off_session=True))
    declined, _ = run(confirmed, action_required())
    assert declined.status is Status.requires_payment_method
    assert declined.last_payment_error is not None and declined.last_payment_error.code == "authentication_required"


def test_an_off_session_payment_without_3ds_succeeds_and_on_session_still_waits_for_3ds() -> None:
    confirmed, _ = run(None, msgspec.structs.replace(CREATE, confirm=True, off_session=True))
    paid, _ = run(confirmed, machine.RecordApproval(intent_id=INTENT_ID, attempt_id=ATTEMPT_ID, at_s=101))
    assert paid.status is Status.succeeded and paid.amount_received == 4200 and len(paid.attempts) == 1
    on_session, _ = run(None, msgspec.structs.replace(CREATE, confirm=True))
    waiting, decision = run(on_session, action_required())
    assert waiting.status is Status.requires_action and decision.effects == ()


def test_the_void_id_is_the_attempt_s_partition_and_time_and_the_same_on_every_replay() -> None:
    void_id = void_id_of(ATTEMPT_ID)
    assert void_id != ATTEMPT_ID and void_id == void_id_of(ATTEMPT_ID)
    assert ids.parse_id(void_id, "att") == ids.parse_id(ATTEMPT_ID, "att")
    assert ids.partition_of_reference(void_id) == PARTITION
    other = ids.make_id("att", PARTITION, 1_700_000_000_500, bytes(range(1, 11)))
    assert void_id_of(other) != void_id


def _without(body: bytes, *names: str, inside: str | None = None) -> bytes:
    """A journal row as code before customers wrote it: without `names`."""
    values = msgspec.json.decode(body)
    target = values if inside is None else values[inside]
    for name in names:
        assert name in target, name
        del target[name]
    return msgspec.json.encode(values)


def test_journal_rows_written_before_customers_decode_and_replay() -> None:
    created, decision = run(None, msgspec.structs.replace(CREATE, customer_id=None, setup_future_usage=None, confirm=True))
    created_row, started_row = (machine.event_encoder.encode(event) for event in decision.events)
    old_created = _without(created_row, "customer_id", "setup_future_usage", inside="intent")
    old_started = _without(started_row, "setup_future_usage")
    values = msgspec.json.decode(old_started)
    del values["attempt"]["off_session"]
    old_started = msgspec.json.encode(values)
    declined = machine.decide(created, machine.RecordDecline(
        intent_id=INTENT_ID, attempt_id=ATTEMPT_ID, at_s=101, code="card_declined", decline_code="generic_decline", message="Your card was declined."
    ))
    old_declined = _without(machine.event_encoder.encode(declined.events[0]), "void")
    update = machine.decide(machine.evolve(created, declined.events[0]), machine.UpdateIntent(**COMMON, at_s=102, metadata={"a": "b"}))
    old_updated = _without(machine.event_encoder.encode(update.events[0]), "customer_id", "setup_future_usage")

    intent = None
    for row in (old_created, old_started, old_declined, old_updated):
        intent = machine.evolve(intent, machine.event_decoder.decode(row))
    assert intent is not None
    assert (intent.customer_id, intent.setup_future_usage, intent.status) == (None, None, Status.requires_payment_method)
    assert intent.metadata == {"a": "b"} and not intent.attempts[0].off_session and len(intent.attempts) == 1


@pytest.mark.parametrize("kind", [machine.CreateIntent, machine.ConfirmIntent, machine.UpdateIntent])
def test_commands_written_before_customers_decode(kind: type) -> None:
    if kind is machine.CreateIntent:
        command = msgspec.structs.replace(CREATE, customer_id=None, setup_future_usage=None)
        dropped = ("customer_id", "setup_future_usage", "off_session")
    elif kind is machine.ConfirmIntent:
        command = machine.ConfirmIntent(**COMMON, attempt_id=ATTEMPT_ID, at_s=101)
        dropped = ("off_session", "setup_future_usage")
    else:
        command = machine.UpdateIntent(**COMMON, at_s=101)
        dropped = ("customer_id", "setup_future_usage")
    old = _without(msgspec.json.encode(command), *dropped)
    assert msgspec.json.decode(old, type=kind) == command


def test_a_late_void_answer_leaves_an_intent_confirmed_again_as_it_is() -> None:
    confirmed, _ = run(None, msgspec.structs.replace(CREATE, confirm=True, off_session=True))
    declined, _ = run(confirmed, action_required())
    void_id = declined.attempts[1].id
    retry_id = ids.make_id("att", PARTITION, 1_700_000_001_000, bytes(10))
    retried, _ = run(declined, machine.ConfirmIntent(**COMMON, attempt_id=retry_id, at_s=103, payment_method_id="pm_other"))
    waiting, _ = run(retried, action_required(retry_id))
    # The void of the first challenge answers while the second one waits.
    late, _ = run(waiting, machine.RecordApproval(intent_id=INTENT_ID, attempt_id=void_id, at_s=104))
    assert late.attempts[1].status is AttemptStatus.succeeded
    assert msgspec.structs.replace(late, attempts=waiting.attempts) == waiting
    assert (late.status, late.next_action_url) == (Status.requires_action, "https://acs.test/3ds")
    paid, _ = run(late, machine.RecordApproval(intent_id=INTENT_ID, attempt_id=retry_id, at_s=105))
    assert paid.status is Status.succeeded and paid.amount_received == 4200

