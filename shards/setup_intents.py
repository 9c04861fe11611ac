"""SetupIntents: the shell around engine/setup_intents.py.

Each change reads the SetupIntent, decides it (pure), and stores the result
with a compare-and-set on its version, trying again from a fresh read when
another change got there first. A confirm stores `processing` with the
check's reference (and its request's idempotency claim) before the network
is called, as an attempt is journaled before its call (DESIGN section 5),
then stores the answer with the request's response; so every answer given
is on disk first, and two confirms cannot both call the network.

The card check is a zero-amount authorization sent the way an intent's is
(shards/effects.py reads the payment method and opens the card). What comes
later, the answer to a 3-D Secure challenge or to a check whose answer was
lost, is read from the network by the check's reference (`inquire`), when
the SetupIntent is next looked at (`resolve`) or when the simulator's
challenge page is answered. With a customer, a successful check saves the
payment method to it in the same transaction as the success.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlencode

import msgspec
import structlog
import trio

from engine import setup_intents as machine
from engine.decisions import NetworkCall
from engine.network import NetworkAnswer, NetworkOutcomeUnknown, NetworkRefused
from engine.results import Result
from engine.setup_intents import Refusal, SetupIntent, SetupStatus
from engine.urls import return_url_allowed
from shards.effects import DECLINE_MESSAGES, PaymentMethodUnavailable
from shards.idempotency import Claim
from shards.node import Node
from store.rows import AttachmentRow
from store.setup_intents import Idempotency

log = structlog.get_logger("shards.setup_intents")

# A pure decision on a SetupIntent (engine/setup_intents.py).
Decide = Callable[[SetupIntent], "SetupIntent | Refusal"]

# Tries of a change whose compare-and-set keeps losing to other changes.
CHANGE_TRIES_MAX = 5
# A check still processing this long past the network's timeout has lost
# its answer: the network is asked about it by reference.
INQUIRY_MARGIN_S = 5.0
# The network answers an inquiry about a reference it never saw (so that
# nothing may happen under it afterwards) with this code.
REFERENCE_CLOSED = "reference_closed"
# Stripe's code for a failed 3-D Secure challenge, on a SetupIntent.
AUTHENTICATION_FAILED = "setup_intent_authentication_failure"


class SetupOutcome(msgspec.Struct, frozen=True):
    """What a request did to a SetupIntent: the SetupIntent after it, and
    whether this request's own check was declined (answered as a card
    error) or could not be sent (answered 503, nothing stored)."""

    setup_intent: SetupIntent
    declined: bool = False
    not_sent: bool = False


class CannotSave(Exception):
    """The payment method cannot be saved to the SetupIntent's customer
    (attached to another, detached once, or the customer is gone)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ChangedTooOften(Exception):
    """Other changes kept winning the compare-and-set: nothing was stored."""


def _stamped(before: SetupIntent, after: SetupIntent) -> SetupIntent:
    return msgspec.structs.replace(after, version=before.version + 1)


class SetupIntents:
    """The SetupIntents of one node's store, checked on its network."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.store = node.store.setup_intents

    def _new_reference(self) -> str:
        # A card check belongs to no partition (no actor holds it): 0 in every reference.
        return self.node.new_id("setatt", 0)

    async def get(self, setup_intent_id: str) -> SetupIntent | None:
        return await self.store.get(setup_intent_id)

    async def create(
        self, setup: SetupIntent, claim: Claim | None, *, confirm: bool, return_url: str | None
    ) -> SetupOutcome | Refusal:
        """Store a new SetupIntent; with `confirm`, check its card at once."""
        if not confirm:
            await self.store.insert(setup, None if claim is None else Idempotency(claim.completed(SetupOutcome(setup), setup.id), "claim"))
            return SetupOutcome(setup)
        decided = machine.decide_confirm(
            setup, payment_method_id=None, return_url=return_url, reference=self._new_reference(), at_s=int(time.time())
        )
        if isinstance(decided, Refusal):
            return decided
        await self._check_saving(decided)
        await self.store.insert(decided, None if claim is None else Idempotency(claim.started(decided.id), "claim"))
        log.info("setup_intent_check_started", setup_intent_id=decided.id, reference=decided.reference)
        return await self._check(decided, claim)

    async def change(self, setup_intent_id: str, decide: Decide, claim: Claim | None) -> SetupOutcome | Refusal:
        """Apply `decide` (a pure decision) to the stored SetupIntent and
        store what it returns, with the request's response. Raises
        ChangedTooOften, IdempotencyKeyTaken, StoreUnavailable."""
        for _ in range(CHANGE_TRIES_MAX):
            setup = await self.store.get(setup_intent_id)
            if setup is None:
                return Refusal(Result.intent_missing)
            decided = decide(setup)
            if isinstance(decided, Refusal):
                return decided
            decided = _stamped(setup, decided)
            outcome = SetupOutcome(decided)
            idempotency = None if claim is None else Idempotency(claim.completed(outcome, decided.id), "claim")
            written, _ = await self.store.replace(decided, setup.version, idempotency)
            if written:
                log.info("setup_intent_changed", setup_intent_id=decided.id, status=str(decided.status))
                return outcome
        raise ChangedTooOften(setup_intent_id)

    async def confirm(
        self, setup_intent_id: str, *, payment_method_id: str | None, return_url: str | None, claim: Claim | None
    ) -> SetupOutcome | Refusal:
        """Move the SetupIntent to `processing` (stored), then check its card."""
        for _ in range(CHANGE_TRIES_MAX):
            setup = await self.store.get(setup_intent_id)
            if setup is None:
                return Refusal(Result.intent_missing)
            decided = machine.decide_confirm(
                setup, payment_method_id=payment_method_id, return_url=return_url, reference=self._new_reference(), at_s=int(time.time())
            )
            if isinstance(decided, Refusal):
                return decided
            await self._check_saving(decided)
            decided = _stamped(setup, decided)
            written, _ = await self.store.replace(decided, setup.version, None if claim is None else Idempotency(claim.started(decided.id), "claim"))
            if written:
                log.info("setup_intent_check_started", setup_intent_id=decided.id, reference=decided.reference)
                return await self._check(decided, claim)
        raise ChangedTooOften(setup_intent_id)

    async def resolve(self, setup: SetupIntent) -> SetupIntent:
        """The SetupIntent, after asking the network about a check whose
        answer is awaited: a 3-D Secure challenge, or a check processing
        for longer than a call may take. As it is when the network cannot
        say (the next look asks again)."""
        waiting = setup.status is SetupStatus.requires_action
        stale_after_s = self.node.config.network_timeout_s + INQUIRY_MARGIN_S
        lost = setup.status is SetupStatus.processing and time.time() - (setup.checked_at_s or 0) > stale_after_s
        if setup.reference is None or not (waiting or lost):
            return setup
        answer = None
        with trio.move_on_after(self.node.config.network_timeout_s):
            try:
                answer = await self.node.network.inquire(setup.reference)
            except (NetworkRefused, NetworkOutcomeUnknown) as error:
                log.warning("setup_intent_inquiry_failed", setup_intent_id=setup.id, reference=setup.reference, error=type(error).__name__)
        if answer is None:
            return setup
        return (await self._record(setup, answer, None)).setup_intent

    async def resolve_reference(self, reference: str) -> SetupIntent | None:
        """The SetupIntent whose check has this reference, resolved (the
        simulator's challenge page, once answered); None if there is none."""
        setup = await self.store.by_reference(reference)
        return None if setup is None else await self.resolve(setup)

    async def _check_saving(self, setup: SetupIntent) -> None:
        """Refuse before the check a payment method that could not be saved
        to the SetupIntent's customer after it."""
        if setup.payment_method_id is None:
            return
        found = self.node.store.customers
        if setup.customer_id is not None and await found.find_customer(setup.merchant_id, setup.livemode, setup.customer_id) is None:
            raise CannotSave(f"No such customer: '{setup.customer_id[:64]}'", "customer")
        # Whether or not this SetupIntent has a customer: a method saved to
        # one is set up only for it, and a detached one never again.
        attachment = await found.attachment(setup.payment_method_id)
        if attachment is None:
            return
        if attachment.detached_s is not None:
            raise CannotSave(
                "This PaymentMethod was detached from a Customer and may not be used again.", "payment_method"
            )
        if attachment.customer_id != setup.customer_id:
            raise CannotSave(
                "This PaymentMethod is attached to another Customer; it cannot be set up for this one.", "payment_method"
            )

    async def _check(self, setup: SetupIntent, claim: Claim | None) -> SetupOutcome:
        """Send the check of a SetupIntent stored `processing`, and store its answer."""
        assert setup.status is SetupStatus.processing and setup.reference is not None and setup.payment_method_id is not None
        effect = NetworkCall(
            intent_id=setup.id,
            attempt_id=setup.reference,
            kind="authorize",
            payment_method_id=setup.payment_method_id,
            amount=machine.CHECK_AMOUNT_MINOR,
            currency=machine.CHECK_CURRENCY,
        )
        try:
            answer = await self.node.effects.call_network(effect)
        except PaymentMethodUnavailable as error:
            log.warning("setup_intent_check_not_sent", setup_intent_id=setup.id, reference=setup.reference, error=str(error))
            return await self._not_sent(setup, claim)
        except NetworkRefused:
            # Nothing happened at the network, for certain: the check failed.
            answer = NetworkAnswer(setup.reference, approved=False, code="processing_error", decline_code="processing_error", network="unknown")
        if answer is None:
            # No answer: the SetupIntent stays processing, its request's
            # claim open; a later look asks the network (resolve).
            log.warning("setup_intent_check_unknown", setup_intent_id=setup.id, reference=setup.reference)
            return SetupOutcome(setup)
        return await self._record(setup, answer, claim)

    async def _not_sent(self, setup: SetupIntent, claim: Claim | None) -> SetupOutcome:
        """Back to requires_confirmation, and the request's claim dropped:
        it did nothing, and a retry runs it again."""
        assert setup.reference is not None
        for _ in range(CHANGE_TRIES_MAX):
            decided = machine.decide_not_sent(setup, setup.reference)
            if decided is None:
                return SetupOutcome(setup)
            decided = _stamped(setup, decided)
            release = None if claim is None else Idempotency(claim.started(setup.id), "release")
            written, _ = await self.store.replace(decided, setup.version, release)
            if written:
                return SetupOutcome(decided, not_sent=True)
            fresh = await self.store.get(setup.id)
            assert fresh is not None, setup.id
            setup = fresh
        raise ChangedTooOften(setup.id)

    async def _record(self, setup: SetupIntent, answer: NetworkAnswer, claim: Claim | None) -> SetupOutcome:
        """Store the network's answer to the check of `setup` (with the
        request's response, when a request waits for it)."""
        reference = answer.reference
        for _ in range(CHANGE_TRIES_MAX):
            if not answer.approved and answer.code == REFERENCE_CLOSED:
                # The network never saw the check and now never will: as if not sent.
                decided = machine.decide_not_sent(setup, reference)
            else:
                code = AUTHENTICATION_FAILED if answer.code == "payment_intent_authentication_failure" else answer.code
                message = DECLINE_MESSAGES.get(answer.code or "", DECLINE_MESSAGES["card_declined"])
                decided = machine.decide_answer(
                    setup,
                    reference,
                    approved=answer.approved,
                    code=code,
                    decline_code=answer.decline_code,
                    message=message,
                    challenge_url=self._challenge_url(setup),
                )
            if decided is None:
                return SetupOutcome(setup)
            decided = _stamped(setup, decided)
            outcome = SetupOutcome(decided, declined=decided.status is SetupStatus.requires_payment_method and decided.last_setup_error is not None)
            idempotency = None if claim is None else Idempotency(claim.completed(outcome, decided.id), "complete")
            attachment = None
            if decided.status is SetupStatus.succeeded and decided.customer_id is not None:
                assert decided.payment_method_id is not None
                attachment = AttachmentRow(decided.payment_method_id, decided.customer_id, decided.merchant_id, decided.livemode, int(time.time()))
            written, refusal = await self.store.replace(decided, setup.version, idempotency, attachment)
            if written:
                if refusal is not None:
                    log.warning("setup_intent_payment_method_not_saved", setup_intent_id=decided.id, refusal=str(refusal))
                log.info("setup_intent_check_answered", setup_intent_id=decided.id, reference=reference, status=str(decided.status))
                return outcome
            fresh = await self.store.get(setup.id)
            assert fresh is not None, setup.id
            setup = fresh
        raise ChangedTooOften(setup.id)

    def _challenge_url(self, setup: SetupIntent) -> str:
        """Where the cardholder answers the check's 3-D Secure challenge:
        the network's own page when it has one (which sends them back to
        the return URL), else this node's simulator page."""
        assert setup.reference is not None
        page = getattr(self.node.network, "challenge_page", None)
        if page is None:
            return f"{self.node.effects.public_url}/simulator/3ds/{setup.reference}"
        return page(setup.reference, return_to(setup))


def return_to(setup: SetupIntent) -> str | None:
    """Where a cardholder goes after the challenge: the return URL, naming
    the SetupIntent, when it is one a redirect may go to."""
    if not setup.return_url or not return_url_allowed(setup.return_url, setup.livemode):
        return None
    separator = "&" if "?" in setup.return_url else "?"
    return setup.return_url + separator + urlencode({"setup_intent": setup.id})

