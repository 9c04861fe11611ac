"""Effects: the network calls the actors ask for, performed outside their
turns.

An actor's decision can ask for a `NetworkCall`; the actor runs `perform`
as a child task and gets back the command that records the answer
(approved, declined, action required, or unknown), which it decides like
any other. The payment method is read and its card number unsealed only
here, for the one request that carries it. The attempt id is the reference
the network sees, so a repeated call is the same operation (DESIGN section
5).

The network also reports things later, unasked (a refund that failed after
it was accepted, a 3-D Secure challenge completed, a dispute):
`run_notice_relay` turns each report into a command for the owning actor.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any, Protocol
from urllib.parse import urlencode

import structlog
import trio

from engine import intent as machine
from engine.intent import Command, NetworkCall
from engine.urls import return_url_allowed
from engine.network import (
    AuthorizationRequest,
    CaptureRequest,
    IncrementRequest,
    NetworkAnswer,
    NetworkNotice,
    NetworkOutcomeUnknown,
    NetworkRefused,
    RefundRequest,
    VoidRequest,
)
from shards.payment_methods import PaymentMethods
from shards.router import NotServed, Router
from shards.vault import Vault
from store.errors import StoreUnavailable

log = structlog.get_logger("shards.effects")

DECLINE_MESSAGES = {
    "payment_intent_authentication_failure": "We are unable to authenticate your payment method. Please choose a different payment method and try again.",
    "card_declined": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
    "incorrect_cvc": "Your card's security code is incorrect.",
    "incorrect_number": "Your card number is incorrect.",
    "processing_error": "An error occurred while processing your card. Try again in a little bit.",
}


# Waits between tries to read an attempt's payment method; None: give up.
PAYMENT_METHOD_RETRY_DELAYS_S = (0.05, 0.25, 1.0, None)
# Waits between tries to give a notice back to the network (seconds).
NOTICE_RETURN_DELAYS_S = (0.1, 0.5, 1.0, 2.0, 5.0)
# Notices the relay hands over between two scheduler passes.
NOTICES_PER_PASS = 256


class PaymentMethodUnavailable(Exception):
    """The database could not give the payment method: the network was not called."""


class CardNetwork(Protocol):
    async def authorize(self, request: AuthorizationRequest) -> NetworkAnswer: ...
    async def capture(self, request: CaptureRequest) -> NetworkAnswer: ...
    async def void(self, request: VoidRequest) -> NetworkAnswer: ...
    async def increment(self, request: IncrementRequest) -> NetworkAnswer: ...
    async def refund(self, request: RefundRequest) -> NetworkAnswer: ...
    async def next_notice(self, partitions: Collection[int] | None = None) -> NetworkNotice: ...
    async def inquire(self, reference: str) -> NetworkAnswer: ...


def decline(intent_id: str, attempt_id: str, at_s: int, code: str, decline_code: str | None) -> Command:
    """The command recording a declined attempt, with Stripe's message for its code."""
    return machine.RecordDecline(
        intent_id=intent_id,
        attempt_id=attempt_id,
        at_s=at_s,
        code=code,
        decline_code=decline_code,
        message=DECLINE_MESSAGES.get(code, DECLINE_MESSAGES["card_declined"]),
    )


class Effects:
    def __init__(self, network: CardNetwork, vault: Vault, payment_methods: PaymentMethods, router: Router, *, timeout_s: float) -> None:
        self.network = network
        self.vault = vault
        self.payment_methods = payment_methods
        self.router = router
        self.timeout_s = timeout_s
        # The address cardholders reach this node at (for 3-D Secure pages),
        # known once the HTTP server listens (Node.set_public_url).
        self.public_url = "http://127.0.0.1"

    async def perform(self, effect: NetworkCall) -> Command:
        """Call the network and return the command recording its answer.
        Never raises for the network: no answer is an unknown outcome, a
        refusal (nothing happened there) a decline, and a payment method
        the database could not give (so the network was never called) an
        attempt not sent, which is no decline."""
        try:
            answer = await self.call_network(effect)
        except PaymentMethodUnavailable as error:
            log.warning("attempt_not_sent", intent_id=effect.intent_id, attempt_id=effect.attempt_id, error=str(error))
            return machine.RecordNotSent(intent_id=effect.intent_id, attempt_id=effect.attempt_id, at_s=int(time.time()))
        except NetworkRefused:
            # Nothing happened at the network, for certain: the attempt failed.
            return decline(effect.intent_id, effect.attempt_id, int(time.time()), "processing_error", "processing_error")
        at_s = int(time.time())
        if answer is None:
            log.warning("network_outcome_unknown", intent_id=effect.intent_id, attempt_id=effect.attempt_id, kind=effect.kind)
            return machine.RecordUnknownOutcome(intent_id=effect.intent_id, attempt_id=effect.attempt_id, at_s=at_s)
        return self.command_for(effect.intent_id, effect.attempt_id, answer)

    async def call_network(self, effect: NetworkCall) -> NetworkAnswer | None:
        """The network's answer, or None when it is unknown (no answer in
        time, or an ambiguous failure). Raises NetworkRefused when the
        network did not act."""
        answer: NetworkAnswer | None = None
        if effect.kind in ("authorize", "charge"):
            request = await self._authorization_request(effect)
            if request is None:
                raise NetworkRefused("the payment method could not be read, so the network was not called")
            with trio.move_on_after(self.timeout_s):
                try:
                    answer = await self.network.authorize(request)
                except NetworkOutcomeUnknown:
                    return None
        else:
            assert effect.parent_id is not None, effect
            with trio.move_on_after(self.timeout_s):
                try:
                    answer = await self._call_other(effect)
                except NetworkOutcomeUnknown:
                    return None
        return answer

    async def _call_other(self, effect: NetworkCall) -> NetworkAnswer:
        assert effect.parent_id is not None
        if effect.kind == "capture":
            return await self.network.capture(CaptureRequest(effect.attempt_id, effect.parent_id, effect.amount, effect.currency))
        if effect.kind == "void":
            return await self.network.void(VoidRequest(effect.attempt_id, effect.parent_id))
        if effect.kind == "increment":
            return await self.network.increment(IncrementRequest(effect.attempt_id, effect.parent_id, effect.amount, effect.currency))
        assert effect.kind == "refund", effect
        return await self.network.refund(RefundRequest(effect.attempt_id, effect.parent_id, effect.amount, effect.currency))

    def command_for(self, intent_id: str, reference: str, answer: NetworkAnswer) -> Command:
        """The command recording the network's answer for an operation."""
        at_s = int(time.time())
        if answer.approved:
            return machine.RecordApproval(intent_id=intent_id, attempt_id=reference, at_s=at_s)
        if answer.code == "authentication_required":
            url = self.challenge_url(intent_id, reference)
            return machine.RecordActionRequired(intent_id=intent_id, attempt_id=reference, at_s=at_s, url=url)
        return decline(intent_id, reference, at_s, answer.code or "card_declined", answer.decline_code)

    def challenge_url(self, intent_id: str, reference: str) -> str:
        """Where the cardholder answers a 3-D Secure challenge: the network's
        own page when it has one (the simulator service; it sends them back
        to the intent's return URL), else this node's simulator page."""
        page = getattr(self.network, "challenge_page", None)
        if page is None:
            return f"{self.public_url}/simulator/3ds/{reference}"
        try:
            intent = self.router.intent(intent_id)
        except NotServed:
            intent = None  # handed off meanwhile: no way back, the page says done
        return_to = None
        if intent is not None and intent.return_url and return_url_allowed(intent.return_url, intent.livemode):
            separator = "&" if "?" in intent.return_url else "?"
            return_to = intent.return_url + separator + urlencode({"payment_intent": intent.id})
        return page(reference, return_to)

    async def _authorization_request(self, effect: NetworkCall) -> AuthorizationRequest | None:
        """The request for an authorization, None when its payment method
        does not exist. Raises PaymentMethodUnavailable when the database
        could not give it after a few short tries."""
        for delay_s in PAYMENT_METHOD_RETRY_DELAYS_S:
            try:
                method = await self.payment_methods.get(effect.payment_method_id)
                card = None if method is None else await self.payment_methods.opened(method)
                break
            except StoreUnavailable as error:
                if delay_s is None:
                    raise PaymentMethodUnavailable(str(error)) from None
                await trio.sleep(delay_s)
        if card is None:
            return None
        method, card_number = card
        return AuthorizationRequest(
            reference=effect.attempt_id,
            card_number=card_number,
            exp_month=method.exp_month,
            exp_year=method.exp_year,
            amount_minor=effect.amount,
            currency=effect.currency,
            capture=effect.kind == "charge",
        )


def command_for_notice(notice: NetworkNotice, intent_id: str, at_s: int) -> Command | None:
    """The command recording a notice, None for a kind we do not know."""
    if notice.kind == "dispute_opened":
        return machine.RecordDisputeOpened(
            intent_id=intent_id, dispute_id=notice.reference, amount=notice.amount_minor, at_s=at_s, reason=notice.reason
        )
    if notice.kind == "dispute_closed":
        return machine.RecordDisputeClosed(intent_id=intent_id, dispute_id=notice.reference, won=bool(notice.won), at_s=at_s)
    if notice.kind == "refund_failed":
        return machine.RecordRefundFailure(
            intent_id=intent_id, refund_id=notice.reference, at_s=at_s, failure_reason=notice.code or "unknown"
        )
    if notice.kind == "authorization_completed" and notice.code is None:
        return machine.RecordApproval(intent_id=intent_id, attempt_id=notice.reference, at_s=at_s)
    if notice.kind == "authorization_completed":
        return decline(intent_id, notice.reference, at_s, notice.code, None)
    return None


async def run_notice_relay(network: Any, router: Router, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Turn the network's later reports into commands for the owning actors
    until cancelled. A notice about a partition this node does not serve
    (any more) goes back to the network for its owner; one for an operation
    nobody has, or of an unknown kind, is logged as an error and dropped.
    Returns at once for a network without notices."""
    task_status.started()
    next_notice = getattr(network, "next_notice", None)
    if next_notice is None:
        return
    # An in-process network hands over every notice already due at once:
    # one scheduler pass a notice could not keep up past a few hundred a
    # second on a loaded node (3-D Secure payments then waited seconds).
    take_nowait = getattr(network, "take_notice_nowait", lambda partitions: None)
    while True:
        # Only notices about the partitions served here (in a cluster, each
        # owner asks for its own); the set is read again at every poll.
        notice: NetworkNotice | None = await next_notice(router.shards.keys())
        relayed = 0
        while notice is not None:
            if not _relay(router, notice):
                await _give_back(network, notice)
            relayed += 1
            # Past a pass's worth, the rest of the node runs before the next.
            notice = take_nowait(router.shards.keys()) if relayed < NOTICES_PER_PASS else None


def _relay(router: Router, notice: NetworkNotice) -> bool:
    """Hand a notice's command to its actor; False when the notice belongs
    to a partition not served here (asked for just before a handoff, or
    handed off since the lookup): its owner takes it."""
    # A dispute is new to us: it finds its intent by the charge it names.
    named = notice.named
    intent_id = None if named is None else router.intent_of_reference(named)
    partition = notice.partition()
    if intent_id is None and partition is not None and partition not in router.shards:
        return False
    if intent_id is None:
        log.error("network_notice_unmatched", reference=notice.reference, kind=notice.kind)
        return True
    command = command_for_notice(notice, intent_id, int(time.time()))
    if command is None:
        log.error("network_notice_unknown", reference=notice.reference, kind=notice.kind)
        return True
    return router.send_nowait(intent_id, command)


async def _give_back(network: Any, notice: NetworkNotice) -> None:
    """Return a notice for another node's partition to the network, trying
    until it is taken back (it exists nowhere else)."""
    give_back = getattr(network, "return_notice", None)
    if give_back is None:
        log.error("network_notice_not_ours", reference=notice.reference, kind=notice.kind)
        return
    for delay_s in NOTICE_RETURN_DELAYS_S:
        try:
            await give_back(notice)
            log.info("network_notice_returned", reference=notice.reference, kind=notice.kind, partition=notice.partition())
            return
        except NetworkRefused as error:
            log.warning("network_notice_return_failed", reference=notice.reference, error=str(error))
            await trio.sleep(delay_s)
    log.error("network_notice_dropped", reference=notice.reference, kind=notice.kind)
