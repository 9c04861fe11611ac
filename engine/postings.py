"""The ledger transfers an intent's events carry (see `engine.ledger`).

Money of a payment moves between the merchant's three accounts: the network
owes it (`network_receivable`), the merchant holds it (`merchant_balance`),
the platform earns fees from it (`fees_revenue`). Each transfer's id is made
from the attempt, refund or dispute it belongs to plus what it does, so a
replayed event yields the same ids and the ledger refuses a second posting.
"""

from __future__ import annotations

from engine import ledger
from engine.ledger import Transfer, TransferKind
from engine.records import Attempt, AttemptKind, AttemptStatus, PaymentIntent


def _transfer(
    intent: PaymentIntent,
    transfer_id: str,
    code: str,
    amount: int,
    at_s: int,
    *,
    debit: str = ledger.NETWORK_RECEIVABLE,
    credit: str = ledger.MERCHANT_BALANCE,
    kind: TransferKind = TransferKind.single,
    pending_id: str | None = None,
    settles: bool = True,
) -> Transfer:
    """A transfer of `intent`'s money, by default from the network to the
    merchant's balance."""
    return Transfer(
        id=transfer_id,
        debit_account_id=ledger.account_id(intent.merchant_id, debit),
        credit_account_id=ledger.account_id(intent.merchant_id, credit),
        amount=amount,
        currency=intent.currency,
        kind=kind,
        code=code,
        intent_id=intent.id,
        created_s=at_s,
        pending_id=pending_id,
        # Every movement of a payment settles on the same schedule as its
        # charge, so a refund nets against the charge's pending funds rather
        # than overdrawing the available balance. Holds and releases never
        # reach a balance, so they have no date.
        available_on_s=at_s + intent.settlement_delay_s if settles else None,
    )


def ledger_single(intent: PaymentIntent, transfer_id: str, code: str, amount: int, at_s: int, *, to_merchant: bool = True) -> Transfer:
    """Money between the network and the merchant's balance, in one step."""
    if to_merchant:
        return _transfer(intent, transfer_id, code, amount, at_s)
    receivable, balance = ledger.NETWORK_RECEIVABLE, ledger.MERCHANT_BALANCE
    return _transfer(intent, transfer_id, code, amount, at_s, debit=balance, credit=receivable)


def ledger_fee(intent: PaymentIntent, transfer_id: str, code: str, amount: int, at_s: int) -> Transfer:
    """A fee from the merchant's balance to the platform's revenue."""
    return _transfer(intent, transfer_id, code, amount, at_s, debit=ledger.MERCHANT_BALANCE, credit=ledger.FEES_REVENUE)


def ledger_hold(intent: PaymentIntent, authorization: Attempt, at_s: int) -> Transfer:
    """The pending transfer that an approved authorization holds."""
    transfer_id = f"{authorization.id}:hold"
    amount = authorization.amount
    return _transfer(intent, transfer_id, "authorization_hold", amount, at_s, kind=TransferKind.pending, settles=False)


def hold_id(intent: PaymentIntent, authorization_id: str) -> str:
    """The pending transfer holding an authorization's money now: its own
    hold, or the hold of its latest approved increment, which replaced it
    (engine.increments)."""
    for attempt in reversed(intent.attempts):
        if attempt.parent_id == authorization_id and attempt.kind is AttemptKind.increment and attempt.status is AttemptStatus.succeeded:
            return f"{attempt.id}:hold"
    return f"{authorization_id}:hold"


def ledger_capture(intent: PaymentIntent, capture: Attempt, at_s: int) -> Transfer:
    """Posts the captured amount of the hold `capture` acts on; the rest of
    the hold is released with it."""
    assert capture.parent_id is not None, capture
    transfer_id = f"{capture.id}:capture"
    pending_id = hold_id(intent, capture.parent_id)
    return _transfer(intent, transfer_id, "charge", capture.amount, at_s, kind=TransferKind.post_pending, pending_id=pending_id)


def ledger_release_hold(intent: PaymentIntent, authorization_id: str, at_s: int, *, transfer_id: str | None = None) -> Transfer:
    """Releases the whole hold of an authorization (amount 0: whatever is
    pending); `transfer_id` names a release other than the authorization's
    own (an increment's, which places a new hold)."""
    transfer_id = transfer_id or f"{authorization_id}:release"
    pending_id = hold_id(intent, authorization_id)
    return _transfer(
        intent, transfer_id, "authorization_release", 0, at_s, kind=TransferKind.void_pending, pending_id=pending_id, settles=False
    )
