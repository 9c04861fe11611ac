"""An in-process card network: authorizes, captures, voids and refunds after a seeded delay.

The network is the party that actually moves money, so it must never move
it twice for one reference, whatever the engine does (retry after a timeout,
two shards racing). It therefore decides and records every operation the
moment the call arrives, before any await: a second call with the same
reference, whether later or overlapping, finds the record and gets the
first answer back. A caller cancelled during the delay has still been
charged, captured or refunded, which is exactly the lost-reply case the
engine must survive.

For the same reason the network enforces the money rules itself rather than
trusting the engine: a capture needs a live uncaptured authorization, a void
needs one too, and refunds never exceed what was captured. Each call runs an
ordered ladder of checks and the first that fails names the decline code:

0. faults (see below), which may refuse the call, lose it, or lose its
   answer;
1. idempotency: a known reference returns its first answer (the network's
   promise comes before everything, even shape), and a reference closed by
   an inquiry answers "reference_closed" whatever the kind;
2. shape: amounts are at least one minor unit;
3. lookup: the authorization exists and was approved;
4. state: captured, voided, not yet captured;
5. currency, then limits (the authorized or still refundable amount).

Refunds of a charge made with `cards.REFUND_FAILS_LATER` are approved, then
fail after a seeded delay. The failure takes effect at its due time: from
then on the refund's amount is refundable again and its Operation carries
`failed_later=True`. A `NetworkNotice` says so through `next_notice()`.
Nothing runs in the background; due failures are applied whenever the
network is next consulted inside a trio run, which is indistinguishable to
a caller because every observation goes through such a call.

Charges captured on `cards.DISPUTED_LATER` (Stripe's test card, and its
`pm_card_createDispute`) are disputed by the issuer after a seeded delay,
as fraudulent, for what is still captured and unrefunded: through
`open_dispute`, as if the cardholder had asked, so the engine hears of it by
the same notice as any dispute. A charge is captured once, so it is
scheduled once; `open_dispute` refuses a charge disputed already (by the
simulator's page meanwhile, say) or refunded in full, and then nothing
happens.

Faults (simulators.faults.FaultSpec) are decided when a call arrives, from
a random stream of their own so that they do not shift the seeded
latencies: one draw per call says whether the call is refused
(NetworkRefused; nothing happens), lost before it arrives (it hangs and
nothing happens), or performed with its answer lost (it hangs, and money
may have moved). An outage window refuses every call. A hanging call ends
only by the caller's own timeout, as it would against a real network.
The draws of latencies and faults live in simulators.wire.

`inquire` is how reconciliation asks what became of a reference. Asking
about a reference the network has never seen closes it with a tombstone,
so that a call lost "in flight" cannot arrive afterwards and move money
behind the answer reconciliation already acted on.

Every distinct operation is kept so that tests can check invariants against
what the network believes happened. The store grows without bound; this is
a test double, and a run holds at most a benchmark's worth of payments.
Card numbers are not kept: an authorization leaves behind only its brand,
last four digits and whether its refunds fail later.
"""

import collections
import hashlib
import heapq
import math
import os
import random
import time
from collections.abc import Callable, Collection

import msgspec
import trio

from engine import cards
from engine.network import (
    AuthorizationRequest,
    CaptureRequest,
    IncrementRequest,
    NetworkAnswer,
    NetworkNotice,
    NetworkRefused,
    RefundRequest,
    VoidRequest,
)
from simulators.faults import FaultSpec
from simulators.wire import Wire

__all__ = [
    "AuthorizationRequest",
    "CaptureRequest",
    "CardNetwork",
    "IncrementRequest",
    "FaultSpec",
    "NetworkAnswer",
    "NetworkNotice",
    "NetworkRefused",
    "Operation",
    "RefundRequest",
    "VoidRequest",
]

# Decline codes the network itself gives, as opposed to the issuer's codes
# from cards.outcome_for. They are Stripe's error codes where one fits.
RESOURCE_MISSING = "resource_missing"
CHARGE_ALREADY_CAPTURED = "charge_already_captured"
CHARGE_EXPIRED_FOR_CAPTURE = "charge_expired_for_capture"
CHARGE_NOT_CAPTURED = "charge_not_captured"
AUTHORIZATION_ALREADY_VOIDED = "authorization_already_voided"
AMOUNT_TOO_SMALL = "amount_too_small"
AMOUNT_TOO_LARGE = "amount_too_large"
CURRENCY_MISMATCH = "currency_mismatch"
# A reference already used by an operation of another kind. Answering with
# that operation's first answer would tell a capture caller that an
# authorization's approval was its own, so the call is refused instead.
REFERENCE_IN_USE = "reference_in_use"
REFUND_FAILED = "refund_failed"
# The issuer's answer to an increment of a card that takes none.
INCREMENT_DECLINED = "card_declined"
AUTHENTICATION_REQUIRED = "authentication_required"
AUTHENTICATION_FAILED = "payment_intent_authentication_failure"
# The answer for a reference an inquiry found unknown, and for every call
# with it afterwards: reconciliation has concluded that nothing happened
# under it, so nothing ever may.
REFERENCE_CLOSED = "reference_closed"

_NETWORK_UNKNOWN = "unknown"

# Stripe's test card that needs 3-D Secure for a one-time payment, but not
# once its holder has authenticated it for later use (a SetupIntent's card
# check): the issuer remembers the card, and later payments go through.
AUTHENTICATED_ONCE = frozenset({"4000002500003155"})


# How often a wait for notices of some partitions looks again (they may
# have changed hands meanwhile).
PARTITIONS_RESCAN_S = 1.0

class Operation(msgspec.Struct, frozen=True):
    """The network's own record of one distinct operation.

    `sequence` counts first arrivals from 0 across all kinds; repeats do not
    advance it. `kind` is "authorize", "capture", "void", "refund",
    "increment" (an authorization raised to `amount_minor`, moving no money) or
    "tombstone" (a reference closed by `inquire`: network "unknown", last4
    "", amount 0, currency "", declined "reference_closed"; it moves no
    money);
    `parent_reference` is the authorization a capture, void or refund names
    (None for an authorization). `capture` is whether an authorization also
    captured; it is False for the other kinds. A void moves no money and
    records `amount_minor=0`. `failed_later` marks a refund that was approved
    and later failed; `approved` keeps the first answer. An operation that
    names an unknown authorization records network "unknown" and last4 "".
    """

    reference: str
    network: str
    last4: str
    amount_minor: int
    currency: str
    capture: bool
    approved: bool
    code: str | None
    decline_code: str | None
    sequence: int
    kind: str = "authorize"
    parent_reference: str | None = None
    failed_later: bool = False


class _Charge(msgspec.Struct):
    """Mutable money state of one approved authorization; internal only.

    `refunded_minor` sums the approved refunds that have not failed later,
    so it is what counts against `captured_minor`.
    """

    authorization: Operation
    refund_fails_later: bool
    captured_minor: int = 0
    capture_reference: str | None = None
    void_reference: str | None = None
    refunded_minor: int = 0
    # Raised by approved increments (0: the authorization's own amount), and
    # whether the issuer declines every increment (cards.INCREMENT_DECLINED).
    incremented_to_minor: int = 0
    increments_decline: bool = False
    # Whether the issuer disputes the charge once captured (cards.DISPUTED_LATER).
    disputed_later: bool = False

    @property
    def captured(self) -> bool:
        return self.captured_minor > 0

    @property
    def authorized_minor(self) -> int:
        """What the authorization holds now: its amount, or its latest increment's."""
        return self.incremented_to_minor or self.authorization.amount_minor


def _today_utc() -> tuple[int, int]:
    now = time.gmtime()
    return now.tm_year, now.tm_mon


def _assert_amount_is_int(amount_minor: int) -> None:
    # Money is integer minor units; a float or bool here is a bug in the
    # caller, not something a client could send through the gateway.
    assert type(amount_minor) is int, "amount_minor must be an int"


class CardNetwork:
    def __init__(
        self,
        *,
        seed: int = 0,
        latency_ms: tuple[int, int] = (1, 5),
        today: Callable[[], tuple[int, int]] | None = None,
        refund_failure_delay_ms: tuple[int, int] = (20, 50),
        dispute_delay_ms: tuple[int, int] = (50, 200),
        faults: FaultSpec | None = None,
        latency_ticks: bool = False,
    ) -> None:
        # How long each call takes and which fault it meets: seeded streams
        # of their own, apart from what the network decides.
        self._wire = Wire(seed=seed, latency_ms=latency_ms, faults=faults, latency_ticks=latency_ticks)
        delay_ms_min, delay_ms_max = refund_failure_delay_ms
        assert 0 <= delay_ms_min <= delay_ms_max
        self._refund_failure_delay_us_range = (delay_ms_min * 1000, delay_ms_max * 1000)
        # A stream of its own, so that a failing refund does not shift every
        # later latency; str seeds are hashed stably across runs.
        self._refund_failure_random = random.Random(f"{seed}:refund_failure")
        self._today = today if today is not None else _today_utc
        self._operations: dict[str, Operation] = {}
        self._charges: dict[str, _Charge] = {}
        # (due time, sequence of the refund, refund reference); the sequence
        # breaks ties in scheduling order.
        self._failures_pending: list[tuple[float, int, str]] = []
        self._notices_due: collections.deque[NetworkNotice] = collections.deque()
        self._notice_scheduled = trio.Event()
        self._calls_total = 0
        # Authorizations waiting for the cardholder's 3-D Secure challenge,
        # by reference; completed or abandoned ones are removed.
        self._challenges: dict[str, tuple[Operation, bool]] = {}
        # Cards (AUTHENTICATED_ONCE) whose holder passed the challenge of a
        # card check, as salted digests: no card number is kept. And the
        # digest of the card of each card check's challenge still open.
        self._card_salt = os.urandom(16)
        self._authenticated_cards: set[bytes] = set()
        self._check_challenges: dict[str, bytes] = {}
        # Disputes by reference: (charge reference, amount, closed?).
        self._disputes: dict[str, tuple[str, int, bool]] = {}
        self._dispute_random = random.Random(f"{seed}:dispute")
        # Charges on cards.DISPUTED_LATER waiting for their dispute: (due
        # time, sequence of the charge's operation, charge reference).
        delay_ms_min, delay_ms_max = dispute_delay_ms
        assert 0 <= delay_ms_min <= delay_ms_max
        self._dispute_delay_us_range = (delay_ms_min * 1000, delay_ms_max * 1000)
        self._dispute_delay_random = random.Random(f"{seed}:dispute_delay")
        self._disputes_pending: list[tuple[float, int, str]] = []

    # -- calls ---------------------------------------------------------------

    async def authorize(self, request: AuthorizationRequest) -> NetworkAnswer:
        """Answer after a seeded delay; a known reference gets its first answer."""
        brand = cards.brand_of(request.card_number)
        return await self._call("authorize", request.reference, brand, lambda: self._authorize(request))

    async def capture(self, request: CaptureRequest) -> NetworkAnswer:
        """Capture an uncaptured authorization, at most once and at most its amount.

        Declines: resource_missing (unknown or declined authorization),
        amount_too_small, charge_already_captured, charge_expired_for_capture
        (voided), currency_mismatch, amount_too_large.
        """
        _assert_amount_is_int(request.amount_minor)
        brand = self._brand_of_authorization(request.authorization_reference)
        return await self._call("capture", request.reference, brand, lambda: self._capture(request))

    async def increment(self, request: IncrementRequest) -> NetworkAnswer:
        """Raise an uncaptured authorization to a larger total, at once.

        Declines: amount_too_small (not above what it holds), resource_missing,
        charge_already_captured, charge_expired_for_capture (voided),
        currency_mismatch, and the issuer's card_declined for a card that
        takes no increments (cards.INCREMENT_DECLINED).
        """
        _assert_amount_is_int(request.amount_minor)
        brand = self._brand_of_authorization(request.authorization_reference)
        return await self._call("increment", request.reference, brand, lambda: self._increment(request))

    async def void(self, request: VoidRequest) -> NetworkAnswer:
        """Release an uncaptured authorization.

        Declines: resource_missing, charge_already_captured,
        authorization_already_voided (by another reference).
        """
        brand = self._brand_of_authorization(request.authorization_reference)
        return await self._call("void", request.reference, brand, lambda: self._void(request))

    async def refund(self, request: RefundRequest) -> NetworkAnswer:
        """Refund part of a captured charge, never more than is still refundable.

        Declines: amount_too_small, resource_missing, charge_not_captured,
        currency_mismatch, amount_too_large. On a REFUND_FAILS_LATER card an
        approved refund fails after a seeded delay; see next_notice().
        """
        _assert_amount_is_int(request.amount_minor)
        brand = self._brand_of_authorization(request.charge_reference)
        return await self._call("refund", request.reference, brand, lambda: self._refund(request))

    async def inquire(self, reference: str) -> NetworkAnswer:
        """The network's answer on record for `reference`: what reconciliation asks.

        A recorded operation gives its first answer (a refund that failed
        later still answers approved; its failure came as a notice). A
        pending 3-D Secure challenge answers "authentication_required" and
        stays open. An unknown reference is closed with a tombstone and
        answers "reference_closed", and so does every later call with it:
        a call lost before arriving can then never move money after
        reconciliation has concluded that it did not. Raises NetworkRefused
        in an outage or on an error fault; never times out by fault.
        """
        # Decided on arrival, before any await, like every call.
        self._calls_total += 1
        self._apply_due_failures()
        operation = self._operations.get(reference)
        brand = operation.network if operation is not None else _NETWORK_UNKNOWN
        spec = self._wire.spec_for(brand)
        latency_us = self._wire.latency_us(spec)
        fault = self._wire.draw_fault(spec, timeouts=False)
        if fault is not None:
            await self._wire.refuse(fault, latency_us, f"inquire {reference}")
        if operation is None:
            operation = Operation(
                reference=reference,
                network=_NETWORK_UNKNOWN,
                last4="",
                amount_minor=0,
                currency="",
                capture=False,
                approved=False,
                code=REFERENCE_CLOSED,
                decline_code=REFERENCE_CLOSED,
                sequence=len(self._operations),
                kind="tombstone",
            )
            self._operations[reference] = operation
        # A pending challenge's record already answers authentication_required.
        answer = _answer_of(operation)
        await self._wire.wait_latency(latency_us)
        return answer

    # -- faults ----------------------------------------------------------------

    def set_faults(self, spec: FaultSpec | None) -> None:
        """Inject `spec` from the next call on; None injects nothing.

        Calls already hanging stay hung: their fault was decided on arrival.
        """
        self._wire.set_faults(spec)

    def fault_counts(self) -> dict[str, int]:
        """How many times each fault was injected, by kind (wire.FAULT_KINDS), zeros included."""
        return self._wire.fault_counts()

    # -- notices, challenges and disputes ----------------------------------------

    async def next_notice(self, partitions: Collection[int] | None = None) -> NetworkNotice:
        """Wait until a scheduled notice is due and return it: with
        `partitions`, only one whose operation's id names one of them or
        none (a node in a cluster asks for the partitions it owns).

        Each notice is returned once, to one caller, in order of due time
        (ties in the order the refunds were approved). A caller cancelled
        while waiting loses nothing: the notice stays for the next call.
        """
        # A checkpoint first, and none after taking a notice, so that a
        # cancellation can never drop a notice already taken off the queue.
        await trio.lowlevel.checkpoint()
        while True:
            notice = self.take_notice_nowait(partitions)
            if notice is not None:
                return notice
            deadline = self._failures_pending[0][0] if self._failures_pending else math.inf
            if self._disputes_pending:
                deadline = min(deadline, self._disputes_pending[0][0])
            if partitions is not None:
                # The caller's partitions may change (a handoff): look again.
                deadline = min(deadline, trio.current_time() + PARTITIONS_RESCAN_S)
            # A refund approved meanwhile may fall due before `deadline`, so
            # its scheduling wakes us to look again.
            with trio.move_on_at(deadline):
                await self._notice_scheduled.wait()

    def take_notice_nowait(self, partitions: Collection[int] | None = None) -> NetworkNotice | None:
        """The next notice due (as `next_notice` picks it), or None when none
        is due now: a caller that took one drains the rest without a
        scheduler pass for each."""
        self._apply_due_failures()
        for index, notice in enumerate(self._notices_due):
            partition = notice.partition()
            # One that names no partition goes to whoever asks.
            if partitions is None or partition is None or partition in partitions:
                del self._notices_due[index]
                return notice
        return None

    def notices_outstanding(self) -> int:
        """Notices not yet taken by the engine, and refund failures still to
        come (each will be one): what a run must wait for before it checks
        our record against the network's."""
        self._apply_due_failures()
        return len(self._notices_due) + len(self._failures_pending) + len(self._disputes_pending)

    async def return_notice(self, notice: NetworkNotice) -> None:
        """Take back a notice handed to a node that no longer serves its
        partition (it asked just before a handoff): it goes out again first."""
        self._notices_due.appendleft(notice)
        self._notice_scheduled.set()
        self._notice_scheduled = trio.Event()

    def open_dispute(self, charge_reference: str, reason: str | None = None) -> str | None:
        """The cardholder disputes a captured charge, for what of it is not
        refunded; `reason` is Stripe's category, if the issuer names one.
        Returns the dispute's reference, or None when there is no captured
        charge to dispute (or it is disputed already, or refunded in full).
        The engine hears of it by a notice."""
        charge = self._charges.get(charge_reference)
        if charge is None or not charge.captured:
            return None
        if any(parent == charge_reference for parent, _, _ in self._disputes.values()):
            return None
        amount = charge.captured_minor - charge.refunded_minor
        if amount <= 0:
            return None
        reference = "dp_" + "".join(self._dispute_random.choices("0123456789abcdef", k=24))
        self._disputes[reference] = (charge_reference, amount, False)
        self._notify(
            NetworkNotice(reference=reference, kind="dispute_opened", parent_reference=charge_reference, amount_minor=amount, reason=reason)
        )
        return reference

    def close_dispute(self, reference: str, won: bool) -> bool:
        """The issuer decides an open dispute. False if there is none open."""
        dispute = self._disputes.get(reference)
        if dispute is None or dispute[2]:
            return False
        charge_reference, amount, _ = dispute
        self._disputes[reference] = (charge_reference, amount, True)
        self._notify(
            NetworkNotice(reference=reference, kind="dispute_closed", parent_reference=charge_reference, amount_minor=amount, won=won)
        )
        return True

    def dispute_accepted(self, reference: str) -> bool:
        """The merchant accepted the dispute (Stripe's close): it is lost and
        closed here too, with no notice (the engine decided it). False if
        there is none open."""
        dispute = self._disputes.get(reference)
        if dispute is None or dispute[2]:
            return False
        self._disputes[reference] = (dispute[0], dispute[1], True)
        return True

    def _notify(self, notice: NetworkNotice) -> None:
        self._notices_due.append(notice)
        self._notice_scheduled.set()
        self._notice_scheduled = trio.Event()

    def challenge_pending(self, reference: str) -> bool:
        return reference in self._challenges

    def complete_challenge(self, reference: str, passed: bool) -> bool:
        """The cardholder answered the 3-D Secure challenge of `reference`.

        Passed: the authorization is approved now (and captured, if it was a
        charge). Failed: it is declined. Either way the final answer reaches
        the engine as an "authorization_completed" notice. Returns False when
        no challenge is pending under that reference (unknown, answered, or
        abandoned by a void). A card check (amount 0) sends no notice: its
        outcome is read with `inquire`; passed, on an AUTHENTICATED_ONCE
        card, later authorizations of that card need no challenge.
        """
        challenge = self._challenges.pop(reference, None)
        checked_card = self._check_challenges.pop(reference, None)
        if challenge is None:
            return False
        if passed and checked_card is not None:
            self._authenticated_cards.add(checked_card)
        waiting, refund_fails_later = challenge
        code = None if passed else AUTHENTICATION_FAILED
        operation = msgspec.structs.replace(waiting, approved=passed, code=code, decline_code=code)
        self._operations[reference] = operation
        if passed:
            self._charges[reference] = _Charge(
                authorization=operation,
                refund_fails_later=refund_fails_later,
                captured_minor=operation.amount_minor if operation.capture else 0,
            )
        if waiting.amount_minor > 0:
            # A zero-amount authorization is a card check (a SetupIntent's):
            # nothing waits on a notice of it, the engine asks by reference.
            self._notify(NetworkNotice(reference=reference, kind="authorization_completed", code=code))
        return True

    # -- inspection ----------------------------------------------------------

    def operations(self) -> list[Operation]:
        """Every distinct operation, in order of first arrival."""
        self._apply_due_failures()
        # dicts keep insertion order, which is arrival order here; a refund
        # marked failed later is replaced in place and keeps its position.
        return list(self._operations.values())

    def lookup(self, reference: str) -> Operation | None:
        self._apply_due_failures()
        return self._operations.get(reference)

    def settlement_report(self) -> list[Operation]:
        """Approved money movements, in order of first arrival.

        Authorizations that captured at once, approved captures and approved
        refunds, including refunds that failed later (marked `failed_later`):
        what reconciliation compares the engine's ledger against.
        """
        self._apply_due_failures()
        return [operation for operation in self._operations.values() if _moves_money(operation)]

    def calls_total(self) -> int:
        """Number of calls of every kind, repeats included."""
        return self._calls_total

    # -- the shared shell of every call --------------------------------------

    async def _call(
        self, kind: str, reference: str, brand: str, decide: Callable[[], Operation]
    ) -> NetworkAnswer:
        # Everything up to the first await is synchronous: that is what makes
        # overlapping calls with one reference see a single decision.
        self._calls_total += 1
        self._apply_due_failures()
        spec = self._wire.spec_for(brand)
        # Drawn on every call, repeats and faulted calls included, so that
        # the sequence of delays depends only on the seed and the order of
        # calls, never on which calls were faulted.
        latency_us = self._wire.latency_us(spec)
        # A refusal says "not performed", which is only true of a reference
        # the network has not acted on; for one it has, it answers as it did
        # the first time.
        fault = self._wire.draw_fault(spec, timeouts=True, refusals=reference not in self._operations)
        if fault in ("outage", "error"):
            await self._wire.refuse(fault, latency_us, f"{kind} {reference}")
        if fault == "timeout_before":
            # Lost on the way: the network never saw it, so nothing is recorded.
            await trio.sleep_forever()
        answer = self._decide_and_record(kind, reference, decide)
        if fault == "timeout_after":
            # Performed and recorded above; only the answer is lost.
            await trio.sleep_forever()
        await self._wire.wait_latency(latency_us)
        return answer

    def _decide_and_record(
        self, kind: str, reference: str, decide: Callable[[], Operation]
    ) -> NetworkAnswer:
        operation = self._operations.get(reference)
        if operation is not None and operation.kind == "tombstone":
            # Before the kind check: a closed reference answers the same to
            # every kind, the answer reconciliation was given.
            return _answer_of(operation)
        if operation is None:
            operation = decide()
            assert operation.reference == reference and operation.kind == kind
            self._operations[reference] = operation
            return _answer_of(operation)
        if operation.kind != kind:
            return NetworkAnswer(
                reference=reference,
                approved=False,
                code=REFERENCE_IN_USE,
                decline_code=REFERENCE_IN_USE,
                network=_NETWORK_UNKNOWN,
            )
        return _answer_of(operation)

    def _brand_of_authorization(self, reference: str) -> str:
        # A capture, void or refund is routed by the card it concerns; one
        # naming an authorization the network never saw has no brand.
        operation = self._operations.get(reference)
        if operation is None or operation.kind != "authorize":
            return _NETWORK_UNKNOWN
        return operation.network

    # -- decisions: pure apart from the final mutation of a charge ------------

    def _authorize(self, request: AuthorizationRequest) -> Operation:
        today_year, today_month = self._today()
        outcome = cards.outcome_for(
            request.card_number, request.exp_month, request.exp_year, today_year, today_month
        )
        if (
            outcome.approved
            and request.card_number in cards.THREE_D_SECURE_REQUIRED
            and self._card_digest(request) not in self._authenticated_cards
        ):
            # Nothing is held until the cardholder passes the challenge; the
            # final answer comes later as a notice (see complete_challenge).
            outcome = cards.CardOutcome(approved=False, code=AUTHENTICATION_REQUIRED, decline_code=None)
        operation = Operation(
            reference=request.reference,
            network=cards.brand_of(request.card_number),
            last4=request._last4_or_blank(),
            amount_minor=request.amount_minor,
            currency=request.currency,
            capture=request.capture,
            approved=outcome.approved,
            code=outcome.code,
            decline_code=outcome.decline_code,
            sequence=len(self._operations),
        )
        if outcome.code == AUTHENTICATION_REQUIRED:
            self._challenges[request.reference] = (operation, request.card_number == cards.REFUND_FAILS_LATER)
            if request.amount_minor == 0 and request.card_number in AUTHENTICATED_ONCE:
                self._check_challenges[request.reference] = self._card_digest(request)
        if operation.approved:
            self._charges[request.reference] = _Charge(
                authorization=operation,
                refund_fails_later=request.card_number == cards.REFUND_FAILS_LATER,
                captured_minor=request.amount_minor if request.capture else 0,
                increments_decline=request.card_number == cards.INCREMENT_DECLINED,
                disputed_later=request.card_number == cards.DISPUTED_LATER,
            )
            if request.capture:
                self._schedule_dispute(self._charges[request.reference])
        return operation

    def _card_digest(self, request: AuthorizationRequest) -> bytes:
        """Who a card is to the issuer, without keeping its number: a digest
        of the number and expiry under this network's own salt."""
        text = f"{request.card_number}/{request.exp_month}/{request.exp_year}".encode()
        return hashlib.blake2b(text, key=self._card_salt, digest_size=16).digest()

    def _capture(self, request: CaptureRequest) -> Operation:
        charge = self._charges.get(request.authorization_reference)
        code = _first_failing(
            (request.amount_minor < 1, AMOUNT_TOO_SMALL),
            (charge is None, RESOURCE_MISSING),
            (charge is not None and charge.captured, CHARGE_ALREADY_CAPTURED),
            (charge is not None and charge.void_reference is not None, CHARGE_EXPIRED_FOR_CAPTURE),
            (charge is not None and request.currency != charge.authorization.currency, CURRENCY_MISMATCH),
            (charge is not None and request.amount_minor > charge.authorized_minor, AMOUNT_TOO_LARGE),
        )
        if code is None:
            assert charge is not None
            charge.captured_minor = request.amount_minor
            charge.capture_reference = request.reference
            self._schedule_dispute(charge)
        return self._operation_on(
            charge,
            kind="capture",
            reference=request.reference,
            parent_reference=request.authorization_reference,
            amount_minor=request.amount_minor,
            currency=request.currency,
            code=code,
        )

    def _increment(self, request: IncrementRequest) -> Operation:
        charge = self._charges.get(request.authorization_reference)
        code = _first_failing(
            (request.amount_minor < 1, AMOUNT_TOO_SMALL),
            (charge is None, RESOURCE_MISSING),
            (charge is not None and charge.captured, CHARGE_ALREADY_CAPTURED),
            (charge is not None and charge.void_reference is not None, CHARGE_EXPIRED_FOR_CAPTURE),
            (charge is not None and request.currency != charge.authorization.currency, CURRENCY_MISMATCH),
            (charge is not None and request.amount_minor <= charge.authorized_minor, AMOUNT_TOO_SMALL),
            (charge is not None and charge.increments_decline, INCREMENT_DECLINED),
        )
        if code is None:
            assert charge is not None
            charge.incremented_to_minor = request.amount_minor
        return self._operation_on(
            charge,
            kind="increment",
            reference=request.reference,
            parent_reference=request.authorization_reference,
            amount_minor=request.amount_minor,
            currency=request.currency,
            code=code,
        )

    def _void(self, request: VoidRequest) -> Operation:
        challenge = self._challenges.pop(request.authorization_reference, None)
        if challenge is not None:
            # Abandoned before the cardholder answered: nothing was held, and
            # a late answer to the challenge must not authorize anything.
            return Operation(
                reference=request.reference,
                network=challenge[0].network,
                last4=challenge[0].last4,
                amount_minor=0,
                currency=challenge[0].currency,
                capture=False,
                approved=True,
                code=None,
                decline_code=None,
                sequence=len(self._operations),
                kind="void",
                parent_reference=request.authorization_reference,
            )
        charge = self._charges.get(request.authorization_reference)
        code = _first_failing(
            (charge is None, RESOURCE_MISSING),
            (charge is not None and charge.captured, CHARGE_ALREADY_CAPTURED),
            (charge is not None and charge.void_reference is not None, AUTHORIZATION_ALREADY_VOIDED),
        )
        if code is None:
            assert charge is not None
            charge.void_reference = request.reference
        return self._operation_on(
            charge,
            kind="void",
            reference=request.reference,
            parent_reference=request.authorization_reference,
            amount_minor=0,
            currency=charge.authorization.currency if charge is not None else "",
            code=code,
        )

    def _refund(self, request: RefundRequest) -> Operation:
        charge = self._charges.get(request.charge_reference)
        refundable_minor = (
            charge.captured_minor - charge.refunded_minor if charge is not None else 0
        )
        code = _first_failing(
            (request.amount_minor < 1, AMOUNT_TOO_SMALL),
            (charge is None, RESOURCE_MISSING),
            (charge is not None and not charge.captured, CHARGE_NOT_CAPTURED),
            (charge is not None and request.currency != charge.authorization.currency, CURRENCY_MISMATCH),
            (request.amount_minor > refundable_minor, AMOUNT_TOO_LARGE),
        )
        operation = self._operation_on(
            charge,
            kind="refund",
            reference=request.reference,
            parent_reference=request.charge_reference,
            amount_minor=request.amount_minor,
            currency=request.currency,
            code=code,
        )
        if code is None:
            assert charge is not None
            charge.refunded_minor += request.amount_minor
            assert 0 <= charge.refunded_minor <= charge.captured_minor
            if charge.refund_fails_later:
                self._schedule_refund_failure(operation)
        return operation

    def _operation_on(
        self,
        charge: _Charge | None,
        *,
        kind: str,
        reference: str,
        parent_reference: str,
        amount_minor: int,
        currency: str,
        code: str | None,
    ) -> Operation:
        return Operation(
            reference=reference,
            network=charge.authorization.network if charge is not None else _NETWORK_UNKNOWN,
            last4=charge.authorization.last4 if charge is not None else "",
            amount_minor=amount_minor,
            currency=currency,
            capture=False,
            approved=code is None,
            code=code,
            decline_code=code,
            sequence=len(self._operations),
            kind=kind,
            parent_reference=parent_reference,
        )

    # -- refunds that fail later ---------------------------------------------

    def _schedule_refund_failure(self, refund: Operation) -> None:
        delay_us = self._refund_failure_random.randint(*self._refund_failure_delay_us_range)
        due = trio.current_time() + delay_us / 1_000_000
        heapq.heappush(self._failures_pending, (due, refund.sequence, refund.reference))
        # Wake every waiter in next_notice(): this one may be due sooner than
        # what they are sleeping towards.
        self._notice_scheduled.set()
        self._notice_scheduled = trio.Event()

    # -- charges disputed later ------------------------------------------------

    def _schedule_dispute(self, charge: _Charge) -> None:
        """A captured charge on cards.DISPUTED_LATER: its dispute falls due
        after a seeded delay. Called once per charge (it is captured once)."""
        if not charge.disputed_later:
            return
        delay_us = self._dispute_delay_random.randint(*self._dispute_delay_us_range)
        due = trio.current_time() + delay_us / 1_000_000
        authorization = charge.authorization
        heapq.heappush(self._disputes_pending, (due, authorization.sequence, authorization.reference))
        self._notice_scheduled.set()
        self._notice_scheduled = trio.Event()

    def _apply_due_disputes(self, now: float) -> None:
        """Open the dispute of every charge whose dispute is due, in due order."""
        while self._disputes_pending and self._disputes_pending[0][0] <= now:
            _, _, charge_reference = heapq.heappop(self._disputes_pending)
            # None when it was disputed meanwhile, or refunded in full: then
            # the cardholder has nothing (more) to dispute.
            self.open_dispute(charge_reference, reason=cards.DISPUTED_LATER_REASON)

    def _apply_due_failures(self) -> None:
        """Fail every refund whose failure is due, in due order, and queue
        its notice; open the disputes that are due."""
        if not self._failures_pending and not self._disputes_pending:
            return
        try:
            now = trio.current_time()
        except RuntimeError:
            # Outside a trio run there is no clock to say what has come due;
            # the record stands as of the last call made inside one.
            return
        self._apply_due_disputes(now)
        while self._failures_pending and self._failures_pending[0][0] <= now:
            _, _, reference = heapq.heappop(self._failures_pending)
            refund = self._operations[reference]
            assert refund.kind == "refund" and refund.approved and not refund.failed_later
            charge = self._charges[refund.parent_reference]
            charge.refunded_minor -= refund.amount_minor
            assert charge.refunded_minor >= 0
            self._operations[reference] = msgspec.structs.replace(refund, failed_later=True)
            self._notices_due.append(
                NetworkNotice(reference=reference, kind="refund_failed", code=REFUND_FAILED)
            )


def _first_failing(*checks: tuple[bool, str]) -> str | None:
    """The code of the first check that fails, in the order given; None if all pass."""
    for failed, code in checks:
        if failed:
            return code
    return None


def _answer_of(operation: Operation) -> NetworkAnswer:
    return NetworkAnswer(
        reference=operation.reference,
        approved=operation.approved,
        code=operation.code,
        decline_code=operation.decline_code,
        network=operation.network,
    )


def _moves_money(operation: Operation) -> bool:
    if not operation.approved:
        return False
    if operation.kind == "authorize":
        return operation.capture
    return operation.kind in ("capture", "refund")

