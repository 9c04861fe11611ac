"""Random lifecycles of one intent, with its ledger alongside.

A hypothesis state machine drives one intent (automatic or manual capture)
with every command a client, the shell and the network can send, in any
order: confirms, captures (whole, partial, too large), cancels, expiries,
refunds, and network answers that arrive late, twice, after an unknown
outcome, for operations long closed, or for references never issued; and
disputes opened, decided, and reported twice.

Accepted events are applied with `evolve`, and every event's transfers with
`Ledger.apply` after `Ledger.check` has accepted them, as the shard actor
does. After every step the DESIGN invariants hold:

- I2: captured <= authorized <= amount, refunded <= captured;
- I5: the ledger balances, and the merchant's posted balance is what the
  intent says it should be: received - fees - refunded (refunds that failed
  give their money back) - disputed and not won - dispute fees;
- at most one money-moving attempt is open (DESIGN section 5, step 4);
- a refused command produces no events and no effects and changes nothing.
"""

import msgspec
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine import ledger
from engine.intent import (
    OPEN_ATTEMPT,
    AttemptKind,
    AttemptStatus,
    CancelIntent,
    CaptureIntent,
    CaptureMethod,
    ConfirmIntent,
    CreateIntent,
    CreateRefund,
    DisputeStatus,
    ExpireAuthorization,
    NetworkCall,
    RecordActionRequired,
    RecordApproval,
    RecordDecline,
    RecordDisputeClosed,
    RecordDisputeOpened,
    RecordRefundFailure,
    RecordUnknownOutcome,
    RefundStatus,
    Status,
    decide,
    event_decoder,
    event_encoder,
    evolve,
    transfers_of,
)
from engine.ledger import Ledger, LedgerResult
from engine.results import Result

INTENT_ID = "pi_01"
MERCHANT_ID = "acct_01"
CREATED_S = 1_700_000_000
PAYMENT_METHOD_ID = "pm_card_visa"
OTHER_PAYMENT_METHOD_ID = "pm_card_mastercard"
STRANGER_ID = "att_stranger"

MERCHANT_BALANCE = ledger.account_id(MERCHANT_ID, ledger.MERCHANT_BALANCE)
NETWORK_RECEIVABLE = ledger.account_id(MERCHANT_ID, ledger.NETWORK_RECEIVABLE)
FEES_REVENUE = ledger.account_id(MERCHANT_ID, ledger.FEES_REVENUE)

ANSWER_TYPES = [RecordApproval, RecordDecline, RecordActionRequired, RecordUnknownOutcome]
FINAL_ANSWERS = (RecordApproval, RecordDecline)
CANCELLATION_REASONS = [None, "duplicate", "fraudulent", "requested_by_customer", "abandoned", "bored"]
REFUND_REASONS = [None, "duplicate", "fraudulent", "requested_by_customer", "bored"]
# A share of what is capturable or refundable, in percent; None for "all of it".
SHARES = st.one_of(st.none(), st.integers(min_value=0, max_value=110))


def share_of(total: int, percent: int | None) -> int | None:
    return None if percent is None else total * percent // 100


def snapshot(intent) -> bytes:
    return msgspec.json.encode(intent)


class IntentLifecycle(RuleBasedStateMachine):
    @initialize(
        capture_method=st.sampled_from(CaptureMethod),
        amount=st.one_of(st.integers(min_value=50, max_value=5_000), st.sampled_from([50, 51, 99_999_999])),
        fee_basis_points=st.sampled_from([0, 290, 10_000]),
        fee_fixed_minor=st.sampled_from([0, 30, 200]),
        dispute_fee_minor=st.sampled_from([0, 1_500]),
        with_payment_method=st.booleans(),
        confirm_at_create=st.booleans(),
    )
    def create(
        self, capture_method, amount, fee_basis_points, fee_fixed_minor, dispute_fee_minor, with_payment_method, confirm_at_create
    ):
        self.intent = None
        self.ledger = Ledger()
        self.journal = []
        self.counter = 0
        self.at_s = CREATED_S
        # Every reference ever issued, attempts (voids included) and refunds:
        # the pool that late and repeated answers are drawn from.
        self.references: list[str] = []
        command = CreateIntent(
            intent_id=INTENT_ID,
            merchant_id=MERCHANT_ID,
            livemode=False,
            amount=amount,
            currency="usd",
            capture_method=capture_method,
            client_secret="pi_01_secret",
            at_s=self.at_s,
            attempt_id=self.new_reference("att"),
            payment_method_id=PAYMENT_METHOD_ID if with_payment_method else None,
            confirm=confirm_at_create and with_payment_method,
            fee_basis_points=fee_basis_points,
            fee_fixed_minor=fee_fixed_minor,
            dispute_fee_minor=dispute_fee_minor,
        )
        decision = self.step(command)
        assert decision.result is Result.ok, decision

    # ------------------------------------------------------------ helpers

    def new_reference(self, prefix: str) -> str:
        self.counter += 1
        reference = f"{prefix}_{self.counter:03}"
        self.references.append(reference)
        return reference

    def now(self) -> int:
        self.at_s += 1
        return self.at_s

    def step(self, command):
        """Decide `command`; apply what it is accepted with, ledger first."""
        before = snapshot(self.intent)
        decision = decide(self.intent, command)
        assert snapshot(self.intent) == before, "decide must not change the intent it was given"
        if decision.result is not Result.ok:
            assert decision.events == (), decision
            assert decision.effects == (), decision
            return decision
        assert decision.events != ()
        assert decision.param is None
        for event in decision.events:
            for transfer in transfers_of(event):
                assert self.ledger.check(transfer) is LedgerResult.ok, (self.ledger.check(transfer), transfer, command)
                self.ledger.apply(transfer)
            self.intent = evolve(self.intent, event)
        self.journal.extend(decision.events)
        for effect in decision.effects:
            assert isinstance(effect, NetworkCall)
            # An effect always names an operation the journal already holds
            # as pending.
            operation = self.intent.attempt(effect.attempt_id) or self.intent.refund(effect.attempt_id)
            assert operation is not None and operation.status == "pending", (effect, operation)
            assert effect.amount == operation.amount
        return decision

    def client(self):
        return {"intent_id": INTENT_ID, "merchant_id": MERCHANT_ID, "livemode": False}

    # -------------------------------------------------------------- rules

    @rule(with_payment_method=st.booleans())
    def confirm(self, with_payment_method):
        was_confirmable = self.intent.status in (Status.requires_payment_method, Status.requires_confirmation)
        command = ConfirmIntent(
            **self.client(),
            attempt_id=self.new_reference("att"),
            at_s=self.now(),
            payment_method_id=OTHER_PAYMENT_METHOD_ID if with_payment_method else None,
        )
        decision = self.step(command)
        if decision.result is Result.ok:
            assert was_confirmable
            assert self.intent.open_attempt().id == command.attempt_id
        else:
            assert decision.result in (Result.intent_unexpected_state, Result.payment_method_required)

    @rule(percent=SHARES)
    def capture(self, percent):
        capturable = self.intent.amount_capturable
        was_capturable = self.intent.status is Status.requires_capture
        amount_to_capture = share_of(capturable, percent)
        command = CaptureIntent(**self.client(), attempt_id=self.new_reference("att"), at_s=self.now(), amount_to_capture=amount_to_capture)
        decision = self.step(command)
        if not was_capturable:
            assert decision.result is Result.intent_unexpected_state
        elif amount_to_capture is not None and not 1 <= amount_to_capture <= capturable:
            assert (decision.result, decision.param) == (Result.amount_exceeds_capturable, "amount_to_capture")
        else:
            assert decision.result is Result.ok, decision
            assert self.intent.open_attempt().amount == (capturable if amount_to_capture is None else amount_to_capture)

    @rule(reason=st.sampled_from(CANCELLATION_REASONS))
    def cancel(self, reason):
        before = self.intent.status
        command = CancelIntent(**self.client(), attempt_id=self.new_reference("att"), at_s=self.now(), cancellation_reason=reason)
        decision = self.step(command)
        if reason == "bored":
            assert (decision.result, decision.param) == (Result.cancellation_reason_invalid, "cancellation_reason")
        elif before in (Status.processing, Status.succeeded, Status.canceled):
            assert decision.result is Result.intent_unexpected_state
        else:
            assert decision.result is Result.ok, decision
            assert (self.intent.status, self.intent.cancellation_reason) == (Status.canceled, reason)

    @rule()
    def expire(self):
        before = self.intent.status
        decision = self.step(ExpireAuthorization(intent_id=INTENT_ID, attempt_id=self.new_reference("att"), at_s=self.now()))
        if before is Status.requires_capture:
            assert decision.result is Result.ok, decision
            assert (self.intent.status, self.intent.cancellation_reason) == (Status.canceled, "automatic")
        else:
            assert decision.result is Result.intent_unexpected_state

    @rule(percent=SHARES, reason=st.sampled_from(REFUND_REASONS))
    def refund(self, percent, reason):
        remaining = self.intent.amount_returnable
        amount = share_of(remaining, percent)
        status = self.intent.status
        dispute_open = self.dispute_open()
        command = CreateRefund(**self.client(), refund_id=self.new_reference("re"), at_s=self.now(), amount=amount, reason=reason)
        decision = self.step(command)
        if reason == "bored":
            assert (decision.result, decision.param) == (Result.refund_reason_invalid, "reason")
        elif status is not Status.succeeded:
            assert (decision.result, decision.param) == (Result.intent_not_refundable, "payment_intent")
        elif dispute_open:
            assert (decision.result, decision.param) == (Result.intent_disputed, "payment_intent")
        elif remaining == 0:
            assert (decision.result, decision.param) == (Result.intent_fully_refunded, "payment_intent")
        elif amount is not None and not 1 <= amount <= remaining:
            assert (decision.result, decision.param) == (Result.amount_exceeds_refundable, "amount")
        else:
            assert decision.result is Result.ok, decision
            assert self.intent.refunds[-1].amount == (remaining if amount is None else amount)

    def answer(self, answer_type, reference):
        at_s = self.now()
        if answer_type is RecordApproval:
            command = RecordApproval(intent_id=INTENT_ID, attempt_id=reference, at_s=at_s)
        elif answer_type is RecordDecline:
            command = RecordDecline(
                intent_id=INTENT_ID,
                attempt_id=reference,
                at_s=at_s,
                code="card_declined",
                decline_code="generic_decline",
                message="Your card was declined.",
            )
        elif answer_type is RecordActionRequired:
            command = RecordActionRequired(intent_id=INTENT_ID, attempt_id=reference, at_s=at_s, url=f"https://sim/3ds/{reference}")
        else:
            command = RecordUnknownOutcome(intent_id=INTENT_ID, attempt_id=reference, at_s=at_s)
        attempt = self.intent.attempt(reference)
        refund = self.intent.refund(reference)
        decision = self.step(command)
        is_open = (attempt is not None and attempt.status in OPEN_ATTEMPT) or (
            refund is not None and refund.status is RefundStatus.pending
        )
        if not is_open:
            # Late: the operation is closed, or was never ours.
            assert (decision.result, decision.param) == (Result.attempt_not_pending, "attempt"), (command, decision)
        elif answer_type in FINAL_ANSWERS:
            # The network's final word on an open operation is never lost.
            assert decision.result is Result.ok, (command, decision)
        elif answer_type is RecordUnknownOutcome and (
            (attempt is not None and attempt.status is AttemptStatus.unknown) or (refund is not None and refund.outcome_unknown)
        ):
            assert (decision.result, decision.param) == (Result.attempt_not_pending, "attempt")
        assert decision.effects == ()

    @rule(answer_type=st.sampled_from(ANSWER_TYPES))
    def answer_the_open_operation(self, answer_type):
        """The network answers what is in flight (the common case)."""
        open_references = [a.id for a in self.intent.attempts if a.status in OPEN_ATTEMPT]
        open_references += [r.id for r in self.intent.refunds if r.status is RefundStatus.pending]
        reference = open_references[-1] if open_references else STRANGER_ID
        self.answer(answer_type, reference)

    @rule(answer_type=st.sampled_from(ANSWER_TYPES), index=st.integers(min_value=0, max_value=1_000))
    def answer_late_or_again(self, answer_type, index):
        """Any answer for any reference ever issued, or for one never issued."""
        pool = [*self.references, STRANGER_ID]
        reference = pool[index % len(pool)]
        self.answer(answer_type, reference)

    @precondition(lambda self: self.intent is not None and self.intent.refunds)
    @rule(index=st.integers(min_value=0, max_value=1_000), stranger=st.booleans())
    def refund_fails_later(self, index, stranger):
        refund_id = STRANGER_ID if stranger else self.intent.refunds[index % len(self.intent.refunds)].id
        refund = self.intent.refund(refund_id)
        decision = self.step(
            RecordRefundFailure(intent_id=INTENT_ID, refund_id=refund_id, at_s=self.now(), failure_reason="expired_or_canceled_card")
        )
        # A late failure ends a succeeded refund, and one still pending
        # (the failure overtook the network's answer).
        if refund is not None and refund.status in (RefundStatus.succeeded, RefundStatus.pending):
            assert decision.result is Result.ok, decision
            assert self.intent.refund(refund_id).status is RefundStatus.failed
        else:
            assert (decision.result, decision.param) == (Result.attempt_not_pending, "refund")

    @rule(percent=SHARES, again=st.booleans())
    def dispute_opens(self, percent, again):
        """The network reports a dispute, or repeats one it reported."""
        kept = self.intent.amount_returnable
        amount = share_of(kept, 100 if percent is None else percent)
        repeated = again and self.intent.disputes
        dispute_id = self.intent.disputes[-1].id if repeated else self.new_reference("dp")
        status = self.intent.status
        dispute_open = self.dispute_open()
        decision = self.step(RecordDisputeOpened(intent_id=INTENT_ID, dispute_id=dispute_id, amount=amount, at_s=self.now()))
        if repeated:
            assert (decision.result, decision.param) == (Result.attempt_not_pending, "dispute")
        elif status is not Status.succeeded:
            assert decision.result is Result.intent_unexpected_state
        elif dispute_open:
            assert (decision.result, decision.param) == (Result.intent_disputed, "dispute")
        elif not 1 <= amount <= kept:
            assert (decision.result, decision.param) == (Result.amount_exceeds_refundable, "amount")
        else:
            assert decision.result is Result.ok, decision

    @rule(index=st.integers(min_value=0, max_value=1_000), won=st.booleans(), stranger=st.booleans())
    def dispute_closes(self, index, won, stranger):
        """The issuer decides a dispute, or the network repeats a decision."""
        disputes = self.intent.disputes
        dispute = None if stranger or not disputes else disputes[index % len(disputes)]
        dispute_id = "dp_stranger" if dispute is None else dispute.id
        decision = self.step(RecordDisputeClosed(intent_id=INTENT_ID, dispute_id=dispute_id, won=won, at_s=self.now()))
        if dispute is not None and dispute.status is DisputeStatus.needs_response:
            assert decision.result is Result.ok, decision
        else:
            assert (decision.result, decision.param) == (Result.attempt_not_pending, "dispute")

    def dispute_open(self) -> bool:
        return any(dispute.status is DisputeStatus.needs_response for dispute in self.intent.disputes)

    @rule(approve=st.integers(min_value=0, max_value=3), percent=SHARES)
    def advance(self, approve, percent):
        """The next step of a payment that goes well (mostly): confirm, let
        the network approve (or, one time in four, decline), capture, refund,
        and let the network settle the refunds in flight."""
        status = self.intent.status
        pending_refunds = [r.id for r in self.intent.refunds if r.status is RefundStatus.pending]
        if status in (Status.requires_payment_method, Status.requires_confirmation):
            self.confirm(with_payment_method=True)
        elif status in (Status.processing, Status.requires_action):
            self.answer(RecordApproval if approve else RecordDecline, self.intent.open_attempt().id)
        elif status is Status.requires_capture:
            self.capture(percent)
        elif status is Status.succeeded and pending_refunds and approve < 2:
            self.answer(RecordApproval if approve else RecordDecline, pending_refunds[0])
        elif status is Status.succeeded:
            self.refund(percent, None)

    @rule(kind=st.sampled_from(["other_merchant", "livemode"]), which=st.integers(min_value=0, max_value=3))
    def another_caller(self, kind, which):
        """Another merchant, or the other mode, sees no intent at all."""
        merchant_id, livemode = ("acct_other", False) if kind == "other_merchant" else (MERCHANT_ID, True)
        caller = {"intent_id": INTENT_ID, "merchant_id": merchant_id, "livemode": livemode}
        command = (
            ConfirmIntent(**caller, attempt_id="att_x", at_s=self.now(), payment_method_id=PAYMENT_METHOD_ID),
            CaptureIntent(**caller, attempt_id="att_x", at_s=self.now()),
            CancelIntent(**caller, attempt_id="att_x", at_s=self.now()),
            CreateRefund(**caller, refund_id="re_x", at_s=self.now()),
        )[which]
        decision = self.step(command)
        assert (decision.result, decision.param) == (Result.intent_missing, "intent")

    # --------------------------------------------------------- invariants

    @invariant()
    def i2_captured_within_authorized_within_amount(self):
        intent = self.intent
        authorization = intent.authorization()
        authorized = 0 if authorization is None else authorization.amount
        captured = intent.amount_received
        refunded = intent.amount_refunded
        assert 0 <= captured <= authorized <= intent.amount, intent
        assert 0 <= refunded <= captured, intent
        assert 0 <= intent.amount_capturable <= authorized, intent

    @invariant()
    def i5_ledger_balances_and_matches_the_intent(self):
        assert self.ledger.verify() == []
        intent = self.intent
        received = intent.amount_received
        fee = ledger.fee_minor(received, intent.fee_basis_points, intent.fee_fixed_minor) if received else 0
        # A dispute takes its amount back until it is won, and its fee for good.
        charged_back = sum(dispute.amount for dispute in intent.disputes if dispute.status is not DisputeStatus.won)
        dispute_fees = intent.dispute_fee_minor * len(intent.disputes)
        merchant = self.ledger.balance(MERCHANT_BALANCE, "usd")
        assert merchant.credits_posted - merchant.debits_posted == (
            received - fee - intent.amount_refunded - charged_back - dispute_fees
        ), intent
        receivable = self.ledger.balance(NETWORK_RECEIVABLE, "usd")
        assert receivable.debits_posted - receivable.credits_posted == received - intent.amount_refunded - charged_back
        fees = self.ledger.balance(FEES_REVENUE, "usd")
        assert fees.credits_posted - fees.debits_posted == fee + dispute_fees
        # An authorization hold is in the ledger exactly while it can be captured.
        assert merchant.credits_pending == receivable.debits_pending == intent.amount_capturable, (merchant, intent)

    @invariant()
    def at_most_one_money_moving_attempt_is_open(self):
        intent = self.intent
        open_attempts = [a for a in intent.attempts if a.kind is not AttemptKind.void and a.status in OPEN_ATTEMPT]
        assert len(open_attempts) <= 1, intent.attempts
        assert (intent.open_attempt() is not None) == (intent.status in (Status.processing, Status.requires_action))

    @invariant()
    def at_most_one_charge_and_one_capture_succeed(self):
        succeeded = [a.kind for a in self.intent.attempts if a.status is AttemptStatus.succeeded]
        assert succeeded.count(AttemptKind.authorize) + succeeded.count(AttemptKind.charge) <= 1, self.intent.attempts
        assert succeeded.count(AttemptKind.capture) <= 1, self.intent.attempts

    @invariant()
    def references_are_unique(self):
        intent = self.intent
        references = [a.id for a in intent.attempts] + [r.id for r in intent.refunds] + [d.id for d in intent.disputes]
        assert len(references) == len(set(references))

    def teardown(self):
        if getattr(self, "intent", None) is None:
            return
        # The journal, through the codec, rebuilds the same intent and ledger.
        decoded = [event_decoder.decode(event_encoder.encode(event)) for event in self.journal]
        assert decoded == self.journal
        replayed = None
        rebuilt = Ledger()
        for event in decoded:
            replayed = evolve(replayed, event)
            for transfer in transfers_of(event):
                rebuilt.apply(transfer)
        assert replayed == self.intent
        assert rebuilt.transfers() == self.ledger.transfers()


IntentLifecycle.TestCase.settings = settings(max_examples=250, stateful_step_count=40, deadline=None)
TestIntentLifecycle = IntentLifecycle.TestCase
