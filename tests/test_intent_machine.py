"""The PaymentIntent state machine, as tables of (before, command, expected)."""

import msgspec
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from engine.intent import (
    TRANSITIONS,
    Attempt,
    AttemptApproved,
    AttemptDeclined,
    AttemptOutcomeUnknown,
    AttemptStarted,
    AttemptStatus,
    AuthorizeAttempt,
    CaptureMethod,
    ConfirmIntent,
    CreateIntent,
    IntentCreated,
    PaymentError,
    PaymentIntent,
    RecordApproval,
    RecordDecline,
    RecordUnknownOutcome,
    Status,
    decide,
    event_decoder,
    event_encoder,
    evolve,
)
from engine.results import Result

INTENT_ID = "pi_01"
MERCHANT_ID = "acct_01"
CLIENT_SECRET = "pi_01_secret_abc"
AMOUNT = 2_000
CREATED_S = 1_700_000_000
OPEN_ATTEMPT_ID = "att_01"
NEW_ATTEMPT_ID = "att_02"
PAYMENT_METHOD_ID = "pm_card_visa"
OTHER_PAYMENT_METHOD_ID = "pm_card_mastercard"

S = Status
automatic = CaptureMethod.automatic
manual = CaptureMethod.manual


# ------------------------------------------------------------------ helpers


def make_intent(status: Status, capture_method: CaptureMethod = automatic) -> PaymentIntent:
    """An intent in `status`, built directly, with the attempts that status implies.

    `processing` has one open (pending) attempt OPEN_ATTEMPT_ID; a status the
    network has already answered holds that attempt closed, so an answer naming
    it is an answer for an attempt that is no longer pending.
    """
    capture = capture_method is automatic
    payment_method_id: str | None = PAYMENT_METHOD_ID
    attempt_status: AttemptStatus | None = None
    amount_capturable = 0
    amount_received = 0
    last_payment_error = None
    if status is S.requires_payment_method:
        payment_method_id = None
    elif status is S.processing:
        attempt_status = AttemptStatus.pending
    elif status is S.requires_capture:
        attempt_status = AttemptStatus.succeeded
        capture = False
        amount_capturable = AMOUNT
    elif status is S.succeeded:
        attempt_status = AttemptStatus.succeeded
        amount_received = AMOUNT
    elif status is S.canceled:
        attempt_status = AttemptStatus.failed
        last_payment_error = PaymentError("card_declined", "generic_decline", "Your card was declined.", PAYMENT_METHOD_ID)
    attempts = ()
    if attempt_status is not None:
        attempts = (Attempt(OPEN_ATTEMPT_ID, PAYMENT_METHOD_ID, capture, attempt_status, CREATED_S),)
    return PaymentIntent(
        id=INTENT_ID,
        merchant_id=MERCHANT_ID,
        livemode=False,
        amount=AMOUNT,
        currency="usd",
        capture_method=capture_method,
        status=status,
        created_s=CREATED_S,
        client_secret=CLIENT_SECRET,
        metadata={"order_id": "6735"},
        payment_method_id=payment_method_id,
        amount_capturable=amount_capturable,
        amount_received=amount_received,
        last_payment_error=last_payment_error,
        attempts=attempts,
    )


def confirm(attempt_id=NEW_ATTEMPT_ID, payment_method_id=PAYMENT_METHOD_ID, merchant_id=MERCHANT_ID, livemode=False):
    return ConfirmIntent(
        intent_id=INTENT_ID,
        merchant_id=merchant_id,
        livemode=livemode,
        attempt_id=attempt_id,
        at_s=CREATED_S + 1,
        payment_method_id=payment_method_id,
    )


def approval(attempt_id=OPEN_ATTEMPT_ID):
    return RecordApproval(intent_id=INTENT_ID, attempt_id=attempt_id, at_s=CREATED_S + 2)


def decline(attempt_id=OPEN_ATTEMPT_ID):
    return RecordDecline(
        intent_id=INTENT_ID,
        attempt_id=attempt_id,
        at_s=CREATED_S + 2,
        code="card_declined",
        decline_code="insufficient_funds",
        message="Your card has insufficient funds.",
    )


def unknown(attempt_id=OPEN_ATTEMPT_ID):
    return RecordUnknownOutcome(intent_id=INTENT_ID, attempt_id=attempt_id, at_s=CREATED_S + 2)


COMMANDS = {
    ConfirmIntent: confirm,
    RecordApproval: approval,
    RecordDecline: decline,
    RecordUnknownOutcome: unknown,
}


def create(**changes) -> CreateIntent:
    fields = dict(
        intent_id=INTENT_ID,
        merchant_id=MERCHANT_ID,
        livemode=False,
        amount=AMOUNT,
        currency="usd",
        capture_method=automatic,
        client_secret=CLIENT_SECRET,
        at_s=CREATED_S,
        attempt_id=OPEN_ATTEMPT_ID,
    )
    fields.update(changes)
    return CreateIntent(**fields)


def fold(intent, events):
    for event in events:
        intent = evolve(intent, event)
    return intent


def accept(intent, command):
    """Decide and apply a command that must be accepted; returns (decision, new intent)."""
    decision = decide(intent, command)
    assert decision.result is Result.ok, decision
    return decision, fold(intent, decision.events)


def snapshot(intent: PaymentIntent | None) -> bytes:
    # Encoded, so that a mutation of a nested dict would show too.
    return msgspec.json.encode(intent)


def assert_refused(intent, command, result, param=None):
    before = snapshot(intent)
    decision = decide(intent, command)
    assert (decision.result, decision.param) == (result, param)
    assert decision.events == ()
    assert decision.effects == ()
    assert snapshot(intent) == before
    return decision


# ------------------------------------------------- every (status, command)

# The spec: for each status, what each command leads to under automatic and
# under manual capture: a status (accepted) or a Result (refused).
EXPECTED = [
    # status                      command               automatic                     manual
    (S.requires_payment_method, ConfirmIntent, S.processing, S.processing),
    (S.requires_payment_method, RecordApproval, Result.attempt_not_pending, Result.attempt_not_pending),
    (S.requires_payment_method, RecordDecline, Result.attempt_not_pending, Result.attempt_not_pending),
    (S.requires_payment_method, RecordUnknownOutcome, Result.attempt_not_pending, Result.attempt_not_pending),
    (S.requires_confirmation, ConfirmIntent, S.processing, S.processing),
    (S.requires_confirmation, RecordApproval, Result.attempt_not_pending, Result.attempt_not_pending),
    (S.requires_confirmation, RecordDecline, Result.attempt_not_pending, Result.attempt_not_pending),
    (S.requires_confirmation, RecordUnknownOutcome, Result.attempt_not_pending, Result.attempt_not_pending),
    (S.requires_action, ConfirmIntent, Result.intent_unexpected_state, Result.intent_unexpected_state),
    (S.requires_action, RecordApproval, Result.attempt_not_pending, Result.attempt_not_pending),
    (S.requires_action, RecordDecline, Result.attempt_not_pending, Result.attempt_not_pending),
    (S.requires_action, RecordUnknownOutcome, Result.attempt_not_pending, Result.attempt_not_pending),
    (S.processing, ConfirmIntent, Result.intent_unexpected_state, Result.intent_unexpected_state),
    (S.processing, RecordApproval, S.succeeded, S.requires_capture),
    (S.processing, RecordDecline, S.requires_payment_method, S.requires_payment_method),
    (S.processing, RecordUnknownOutcome, S.processing, S.processing),
    (S.requires_capture, ConfirmIntent, Result.intent_unexpected_state, Result.intent_unexpected_state),
    (S.requires_capture, RecordApproval, Result.attempt_not_pending, Result.attempt_not_pending),
    (S.requires_capture, RecordDecline, Result.attempt_not_pending, Result.attempt_not_pending),
    (S.requires_capture, RecordUnknownOutcome, Result.attempt_not_pending, Result.attempt_not_pending),
    (S.canceled, ConfirmIntent, Result.intent_unexpected_state, Result.intent_unexpected_state),
    (S.canceled, RecordApproval, Result.attempt_not_pending, Result.attempt_not_pending),
    (S.canceled, RecordDecline, Result.attempt_not_pending, Result.attempt_not_pending),
    (S.canceled, RecordUnknownOutcome, Result.attempt_not_pending, Result.attempt_not_pending),
    (S.succeeded, ConfirmIntent, Result.intent_unexpected_state, Result.intent_unexpected_state),
    (S.succeeded, RecordApproval, Result.attempt_not_pending, Result.attempt_not_pending),
    (S.succeeded, RecordDecline, Result.attempt_not_pending, Result.attempt_not_pending),
    (S.succeeded, RecordUnknownOutcome, Result.attempt_not_pending, Result.attempt_not_pending),
]

REFUSAL_PARAMS = {Result.intent_unexpected_state: None, Result.attempt_not_pending: "attempt"}

TABLE_CASES = [
    pytest.param(status, command_type, capture_method, expected, id=f"{status}-{command_type.__name__}-{capture_method}")
    for status, command_type, expected_automatic, expected_manual in EXPECTED
    for capture_method, expected in ((automatic, expected_automatic), (manual, expected_manual))
]


def test_expected_table_covers_every_pair_once():
    pairs = [(status, command_type) for status, command_type, _, _ in EXPECTED]
    assert len(pairs) == len(set(pairs)) == len(Status) * len(COMMANDS)


def test_transitions_table_allows_exactly_the_accepted_pairs():
    accepted = {
        (status, command_type): expected_automatic
        for status, command_type, expected_automatic, _ in EXPECTED
        if isinstance(expected_automatic, Status)
    }
    in_table = {
        (status, command_type): target for status, row in TRANSITIONS.items() for command_type, target in row.items()
    }
    assert set(TRANSITIONS) == set(Status)
    assert in_table == accepted


@pytest.mark.parametrize(("status", "command_type", "capture_method", "expected"), TABLE_CASES)
def test_every_status_and_command(status, command_type, capture_method, expected):
    intent = make_intent(status, capture_method)
    command = COMMANDS[command_type]()
    if isinstance(expected, Result):
        assert_refused(intent, command, expected, REFUSAL_PARAMS[expected])
        assert intent == make_intent(status, capture_method)
        return
    before = snapshot(intent)
    decision = decide(intent, command)
    assert decision.result is Result.ok
    assert decision.param is None
    assert len(decision.events) == 1
    after = fold(intent, decision.events)
    assert after.status is expected
    assert snapshot(intent) == before, "decide must not change the intent it was given"
    assert (after.open_attempt() is not None) == (after.status is S.processing)
    if command_type is ConfirmIntent:
        assert decision.effects == (
            AuthorizeAttempt(
                intent_id=INTENT_ID,
                attempt_id=NEW_ATTEMPT_ID,
                payment_method_id=PAYMENT_METHOD_ID,
                amount=AMOUNT,
                currency="usd",
                capture=capture_method is automatic,
            ),
        )
    else:
        assert decision.effects == ()


# --------------------------------------------------------- network answers


@pytest.mark.parametrize(
    ("capture_method", "status", "amount_capturable", "amount_received"),
    [
        (automatic, S.succeeded, 0, AMOUNT),
        (manual, S.requires_capture, AMOUNT, 0),
    ],
)
def test_approval_moves_the_money_by_capture_method(capture_method, status, amount_capturable, amount_received):
    decision, after = accept(make_intent(S.processing, capture_method), approval())
    assert decision.events == (
        AttemptApproved(INTENT_ID, OPEN_ATTEMPT_ID, status, amount_capturable, amount_received),
    )
    assert (after.status, after.amount_capturable, after.amount_received) == (status, amount_capturable, amount_received)
    assert [attempt.status for attempt in after.attempts] == [AttemptStatus.succeeded]
    assert after.last_payment_error is None


def test_decline_records_the_error_against_the_attempts_payment_method():
    decision, after = accept(make_intent(S.processing), decline())
    error = PaymentError("card_declined", "insufficient_funds", "Your card has insufficient funds.", PAYMENT_METHOD_ID)
    assert decision.events == (AttemptDeclined(INTENT_ID, OPEN_ATTEMPT_ID, S.requires_payment_method, error),)
    assert after.last_payment_error == error
    assert [attempt.status for attempt in after.attempts] == [AttemptStatus.failed]
    assert (after.amount_capturable, after.amount_received) == (0, 0)


# ----------------------------------------------------------------- create


def test_create_without_payment_method_requires_one():
    decision, intent = accept(None, create())
    assert decision.effects == ()
    assert [type(event) for event in decision.events] == [IntentCreated]
    assert intent.status is S.requires_payment_method
    assert (intent.payment_method_id, intent.attempts) == (None, ())
    assert (intent.amount, intent.currency, intent.created_s) == (AMOUNT, "usd", CREATED_S)


def test_create_with_payment_method_requires_confirmation():
    decision, intent = accept(None, create(payment_method_id=PAYMENT_METHOD_ID))
    assert decision.effects == ()
    assert [type(event) for event in decision.events] == [IntentCreated]
    assert intent.status is S.requires_confirmation
    assert intent.payment_method_id == PAYMENT_METHOD_ID
    assert intent.attempts == ()


@pytest.mark.parametrize(("capture_method", "capture"), [(automatic, True), (manual, False)])
def test_create_and_confirm_opens_one_attempt_and_asks_to_authorize(capture_method, capture):
    command = create(payment_method_id=PAYMENT_METHOD_ID, confirm=True, capture_method=capture_method)
    decision, intent = accept(None, command)
    assert [type(event) for event in decision.events] == [IntentCreated, AttemptStarted]
    assert intent.status is S.processing
    assert decision.effects == (
        AuthorizeAttempt(
            intent_id=INTENT_ID,
            attempt_id=command.attempt_id,
            payment_method_id=PAYMENT_METHOD_ID,
            amount=AMOUNT,
            currency="usd",
            capture=capture,
        ),
    )
    assert intent.attempts == (Attempt(command.attempt_id, PAYMENT_METHOD_ID, capture, AttemptStatus.pending, CREATED_S),)


def test_create_and_confirm_without_payment_method_is_refused():
    assert_refused(None, create(confirm=True), Result.payment_method_required, "payment_method")


def test_create_over_an_existing_intent_is_refused():
    existing = make_intent(S.requires_payment_method)
    assert_refused(existing, create(), Result.intent_exists, "intent")


@pytest.mark.parametrize(
    ("changes", "result", "param"),
    [
        pytest.param({"amount": 0}, Result.amount_out_of_range, "amount", id="amount-0"),
        pytest.param({"amount": -1}, Result.amount_out_of_range, "amount", id="amount-negative"),
        pytest.param({"amount": 100_000_000}, Result.amount_out_of_range, "amount", id="amount-9-digits"),
        pytest.param({"amount": True}, Result.amount_out_of_range, "amount", id="amount-bool"),
        pytest.param({"amount": 100.0}, Result.amount_out_of_range, "amount", id="amount-float"),
        pytest.param({"currency": "xyz"}, Result.currency_unknown, "currency", id="currency-unknown"),
        pytest.param({"currency": "USD"}, Result.currency_unknown, "currency", id="currency-uppercase"),
        pytest.param({"currency": ""}, Result.currency_unknown, "currency", id="currency-empty"),
        pytest.param(
            {"metadata": {f"key_{index}": "v" for index in range(51)}},
            Result.metadata_invalid,
            "metadata",
            id="metadata-51-keys",
        ),
        pytest.param({"metadata": {"k" * 41: "v"}}, Result.metadata_invalid, "metadata", id="metadata-41-char-key"),
        pytest.param({"metadata": {"key": "v" * 501}}, Result.metadata_invalid, "metadata", id="metadata-501-char-value"),
        pytest.param({"metadata": {"": "v"}}, Result.metadata_invalid, "metadata", id="metadata-empty-key"),
        pytest.param({"description": "d" * 1001}, Result.metadata_invalid, "description", id="description-1001-chars"),
        # Shape comes first on the ladder: a bad amount is reported even when
        # the currency and the confirm are wrong too.
        pytest.param(
            {"amount": 0, "currency": "xyz", "confirm": True}, Result.amount_out_of_range, "amount", id="amount-before-currency"
        ),
        pytest.param(
            {"currency": "xyz", "metadata": {"k" * 41: "v"}}, Result.currency_unknown, "currency", id="currency-before-metadata"
        ),
    ],
)
@pytest.mark.parametrize("with_confirm", [False, True], ids=["create", "create-and-confirm"])
def test_create_with_bad_shape_is_refused(changes, result, param, with_confirm):
    command = create(payment_method_id=PAYMENT_METHOD_ID, confirm=with_confirm)
    command = msgspec.structs.replace(command, **changes)
    assert_refused(None, command, result, param)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"amount": 1}, id="amount-1"),
        pytest.param({"amount": 99_999_999}, id="amount-8-digits"),
        pytest.param({"currency": "jpy"}, id="currency-jpy"),
        pytest.param({"metadata": {f"key_{index}": "v" for index in range(50)}}, id="metadata-50-keys"),
        pytest.param({"metadata": {"k" * 40: "v" * 500}}, id="metadata-longest-key-and-value"),
        pytest.param({"metadata": {"key": ""}}, id="metadata-empty-value"),
        pytest.param({"description": "d" * 1000}, id="description-1000-chars"),
    ],
)
def test_create_at_the_limits_is_accepted(changes):
    _, intent = accept(None, create(**changes))
    for name, value in changes.items():
        assert getattr(intent, name) == value


# ------------------------------------------------- double-charge protocol


def test_confirm_opens_exactly_one_attempt():
    _, intent = accept(make_intent(S.requires_confirmation), confirm())
    assert [attempt.id for attempt in intent.attempts] == [NEW_ATTEMPT_ID]
    assert intent.open_attempt() == Attempt(NEW_ATTEMPT_ID, PAYMENT_METHOD_ID, True, AttemptStatus.pending, CREATED_S + 1)


def test_second_confirm_while_processing_is_refused():
    _, intent = accept(make_intent(S.requires_confirmation), confirm())
    assert_refused(intent, confirm(attempt_id="att_03"), Result.intent_unexpected_state)
    assert_refused(intent, confirm(attempt_id=NEW_ATTEMPT_ID), Result.intent_unexpected_state)


@pytest.mark.parametrize("answer", [approval, decline, unknown])
def test_answer_for_another_attempt_is_refused(answer):
    intent = make_intent(S.processing)
    assert_refused(intent, answer("att_99"), Result.attempt_not_pending, "attempt")
    assert_refused(intent, answer(""), Result.attempt_not_pending, "attempt")


@pytest.mark.parametrize("answer", [approval, decline, unknown])
def test_answer_on_a_missing_intent_is_refused(answer):
    assert_refused(None, answer(), Result.intent_missing, "intent")


def test_confirm_after_decline_opens_a_second_attempt():
    _, declined = accept(make_intent(S.processing), decline())
    assert declined.status is S.requires_payment_method
    decision, retried = accept(declined, confirm(payment_method_id=OTHER_PAYMENT_METHOD_ID))
    assert [(attempt.id, attempt.status) for attempt in retried.attempts] == [
        (OPEN_ATTEMPT_ID, AttemptStatus.failed),
        (NEW_ATTEMPT_ID, AttemptStatus.pending),
    ]
    assert retried.open_attempt().id == NEW_ATTEMPT_ID
    assert retried.payment_method_id == OTHER_PAYMENT_METHOD_ID
    assert [effect.attempt_id for effect in decision.effects] == [NEW_ATTEMPT_ID]
    # The answer for the first, failed attempt can no longer change anything.
    assert_refused(retried, approval(OPEN_ATTEMPT_ID), Result.attempt_not_pending, "attempt")


def test_unknown_outcome_keeps_the_intent_processing_until_an_answer():
    decision, uncertain = accept(make_intent(S.processing), unknown())
    assert decision.events == (AttemptOutcomeUnknown(INTENT_ID, OPEN_ATTEMPT_ID, S.processing),)
    assert decision.effects == ()
    assert uncertain.status is S.processing
    assert [attempt.status for attempt in uncertain.attempts] == [AttemptStatus.unknown]
    assert uncertain.open_attempt().id == OPEN_ATTEMPT_ID
    assert_refused(uncertain, confirm(), Result.intent_unexpected_state)
    assert_refused(uncertain, unknown(), Result.attempt_not_pending, "attempt")
    assert_refused(uncertain, approval("att_99"), Result.attempt_not_pending, "attempt")
    _, resolved = accept(uncertain, approval())
    assert resolved.status is S.succeeded
    assert resolved.amount_received == AMOUNT
    assert [attempt.status for attempt in resolved.attempts] == [AttemptStatus.succeeded]


def test_unknown_outcome_can_still_resolve_as_declined():
    _, uncertain = accept(make_intent(S.processing), unknown())
    _, resolved = accept(uncertain, decline())
    assert resolved.status is S.requires_payment_method
    assert [attempt.status for attempt in resolved.attempts] == [AttemptStatus.failed]


# ------------------------------------------------------ other callers' intents


@pytest.mark.parametrize("status", [S.requires_payment_method, S.requires_confirmation, S.processing, S.succeeded])
@pytest.mark.parametrize(
    "command",
    [
        pytest.param(confirm(merchant_id="acct_other"), id="other-merchant"),
        pytest.param(confirm(livemode=True), id="livemode"),
        pytest.param(confirm(merchant_id="acct_other", livemode=True), id="other-merchant-livemode"),
    ],
)
def test_confirm_by_another_merchant_or_mode_sees_no_intent(status, command):
    # intent_missing, not intent_unexpected_state: the status of another
    # merchant's intent must not leak.
    assert_refused(make_intent(status), command, Result.intent_missing, "intent")


# ------------------------------------------------------------------ replay


def live_history(capture_method):
    """Create and confirm, decline, retry, lose the answer, then approve."""
    commands = [
        create(payment_method_id=PAYMENT_METHOD_ID, confirm=True, capture_method=capture_method, metadata={"a": "b"}),
        decline(OPEN_ATTEMPT_ID),
        confirm(NEW_ATTEMPT_ID, payment_method_id=OTHER_PAYMENT_METHOD_ID),
        unknown(NEW_ATTEMPT_ID),
        approval(NEW_ATTEMPT_ID),
    ]
    intent = None
    journal = []
    for command in commands:
        decision, intent = accept(intent, command)
        journal.extend(decision.events)
    return intent, journal


@pytest.mark.parametrize("capture_method", [automatic, manual])
def test_replaying_the_encoded_journal_rebuilds_the_live_intent(capture_method):
    live, journal = live_history(capture_method)
    encoded = [event_encoder.encode(event) for event in journal]
    decoded = [event_decoder.decode(line) for line in encoded]
    assert decoded == journal
    replayed = fold(None, decoded)
    assert replayed == live
    assert snapshot(replayed) == snapshot(live)
    assert replayed.status is (S.succeeded if capture_method is automatic else S.requires_capture)
    assert [attempt.status for attempt in replayed.attempts] == [AttemptStatus.failed, AttemptStatus.succeeded]


# ------------------------------------------------------- random histories

ANSWER_TYPES = [RecordApproval, RecordDecline, RecordUnknownOutcome]


class IntentHistory(RuleBasedStateMachine):
    """One intent under a random stream of confirms and network answers.

    Besides the invariants, each step checks the decision against a small model
    of when a command is accepted, and every accepted event goes to a journal
    that must replay to the live intent.
    """

    @initialize(
        capture_method=st.sampled_from(CaptureMethod),
        with_payment_method=st.booleans(),
        confirm_at_create=st.booleans(),
    )
    def create_intent(self, capture_method, with_payment_method, confirm_at_create):
        self.attempts_made = 1
        self.journal = []
        self.intent = None
        command = create(
            capture_method=capture_method,
            payment_method_id=PAYMENT_METHOD_ID if with_payment_method else None,
            confirm=confirm_at_create,
        )
        accepted = with_payment_method or not confirm_at_create
        self.step(command, expected_ok=accepted)
        if not accepted:
            self.step(msgspec.structs.replace(command, confirm=False), expected_ok=True)

    def step(self, command, expected_ok):
        before = snapshot(self.intent)
        decision = decide(self.intent, command)
        assert (decision.result is Result.ok) == expected_ok, (command, decision, self.intent)
        assert snapshot(self.intent) == before
        if decision.result is not Result.ok:
            assert decision.events == ()
            assert decision.effects == ()
            return decision
        assert decision.events != ()
        self.intent = fold(self.intent, decision.events)
        self.journal.extend(decision.events)
        return decision

    @rule(with_payment_method=st.booleans())
    def confirm(self, with_payment_method):
        self.attempts_made += 1
        attempt_id = f"att_{self.attempts_made:02}"
        payment_method_id = OTHER_PAYMENT_METHOD_ID if with_payment_method else None
        expected_ok = self.intent.status in (S.requires_payment_method, S.requires_confirmation) and (
            with_payment_method or self.intent.payment_method_id is not None
        )
        decision = self.step(confirm(attempt_id, payment_method_id=payment_method_id), expected_ok)
        if expected_ok:
            assert [effect.attempt_id for effect in decision.effects] == [attempt_id]
            assert self.intent.open_attempt().id == attempt_id
        else:
            assert decision.result in (Result.intent_unexpected_state, Result.payment_method_required)

    @rule(
        answer_type=st.sampled_from(ANSWER_TYPES),
        which=st.sampled_from(["open", "latest", "first", "stranger"]),
    )
    def answer(self, answer_type, which):
        open_attempt = self.intent.open_attempt()
        attempt_id = {
            "open": open_attempt.id if open_attempt else OPEN_ATTEMPT_ID,
            "latest": self.intent.attempts[-1].id if self.intent.attempts else OPEN_ATTEMPT_ID,
            "first": OPEN_ATTEMPT_ID,
            "stranger": "att_99",
        }[which]
        matches = open_attempt is not None and open_attempt.id == attempt_id
        repeats_unknown = (
            answer_type is RecordUnknownOutcome and matches and open_attempt.status is AttemptStatus.unknown
        )
        command = COMMANDS[answer_type](attempt_id)
        decision = self.step(command, expected_ok=matches and not repeats_unknown)
        if decision.result is not Result.ok:
            assert (decision.result, decision.param) == (Result.attempt_not_pending, "attempt")
        assert decision.effects == ()

    @invariant()
    def at_most_one_attempt_is_open(self):
        open_attempts = [a for a in self.intent.attempts if a.status in (AttemptStatus.pending, AttemptStatus.unknown)]
        assert len(open_attempts) <= 1, self.intent.attempts

    @invariant()
    def at_most_one_attempt_succeeded(self):
        succeeded = [a for a in self.intent.attempts if a.status is AttemptStatus.succeeded]
        assert len(succeeded) <= 1, self.intent.attempts

    @invariant()
    def money_never_exceeds_the_amount(self):
        assert 0 <= self.intent.amount_received + self.intent.amount_capturable <= self.intent.amount

    @invariant()
    def processing_iff_an_attempt_is_open(self):
        assert (self.intent.status is S.processing) == (self.intent.open_attempt() is not None)

    @invariant()
    def attempt_ids_are_unique(self):
        attempt_ids = [attempt.id for attempt in self.intent.attempts]
        assert len(attempt_ids) == len(set(attempt_ids))

    @invariant()
    def journal_replays_to_the_live_intent(self):
        replayed = fold(None, [event_decoder.decode(event_encoder.encode(event)) for event in self.journal])
        assert replayed == self.intent


IntentHistory.TestCase.settings = settings(max_examples=300, stateful_step_count=25, deadline=None)
TestIntentHistory = IntentHistory.TestCase
