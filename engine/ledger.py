"""The ledger: double-entry postings of every movement of money.

Theory of operation. Money only moves by a `Transfer` from one account to
another, in one currency, for a positive whole number of minor units. Each
transfer adds its amount to the debit column of one account and the credit
column of the other, so per currency the sum of all debits always equals the
sum of all credits (invariant I5).

Transfers are two-phase, after TigerBeetle:

    single        posts at once:            debits_posted / credits_posted
    pending       reserves (a hold):        debits_pending / credits_pending
    post_pending  closes a pending one: releases all of it, posts `amount`
                  (<= the pending amount; the rest is simply released, which
                  is how a partial capture works)
    void_pending  closes a pending one: releases all of it, posts nothing

A pending transfer is closed at most once, by one post or one void, and the
closing transfer moves money between the same two accounts in the same
currency as the pending one.

An account is named by `account_id(merchant_id, name)` and holds one
`Balance` per currency; no account has to be opened first.

`check` runs an ordered ladder and returns the first refusal (a client can
cause those, for example by capturing more than was authorized); `apply`
asserts the ladder passes and then changes state once, at the end. What only
a bug can cause (a kind without its pending id, an unknown currency) is an
assert. The ledger holds no clock: whoever asks for available funds passes
the time in.
"""

from __future__ import annotations

import enum

import msgspec

from engine import money

MERCHANT_BALANCE = "merchant_balance"
NETWORK_RECEIVABLE = "network_receivable"
FEES_REVENUE = "fees_revenue"

_ACCOUNT_SEPARATOR = ":"

BASIS_POINTS_PER_WHOLE = 10_000


def account_id(merchant_id: str, name: str) -> str:
    """The id of a merchant's account `name`, e.g. "acct_x:merchant_balance"."""
    # The separator must split the id back into exactly these two parts, or two
    # merchants could end up sharing an account.
    assert merchant_id and _ACCOUNT_SEPARATOR not in merchant_id, merchant_id
    assert name and _ACCOUNT_SEPARATOR not in name, name
    return merchant_id + _ACCOUNT_SEPARATOR + name


# Fees are transfers of their own here (money from the merchant's balance to
# the platform's revenue), but Stripe shows a fee inside the balance
# transaction of the movement it was taken on, with `net = amount - fee`.
# A fee is named after the operation of that movement, "<operation>:<fee
# code>" beside the movement's "<operation>:<what it does>" (engine.postings
# names them so, and always did: journals written before fees were shown this
# way group the same). The movement's code says which fee goes with it.
FEE_CODE_OF = {"charge": "fee", "dispute": "dispute_fee"}
FEE_CODES = frozenset(FEE_CODE_OF.values())


def operation_of(transfer_id: str) -> str:
    """The attempt, refund or dispute a transfer belongs to: its id before
    the last separator ("att_x:charge" -> "att_x")."""
    operation, separator, _ = transfer_id.rpartition(_ACCOUNT_SEPARATOR)
    return operation if separator else transfer_id


def fee_id_of(transfer: Transfer) -> str | None:
    """The id the fee taken on `transfer` has when there is one; None for a
    movement that carries no fee (a refund, a dispute reversal, a fee)."""
    fee_code = FEE_CODE_OF.get(transfer.code)
    return None if fee_code is None else operation_of(transfer.id) + _ACCOUNT_SEPARATOR + fee_code


def _merchant_of(account: str) -> str:
    merchant_id, separator, _ = account.partition(_ACCOUNT_SEPARATOR)
    assert separator, account
    return merchant_id


class TransferKind(enum.StrEnum):
    single = "single"
    pending = "pending"
    post_pending = "post_pending"
    void_pending = "void_pending"


_KINDS = frozenset(TransferKind)
_CLOSING_KINDS = frozenset({TransferKind.post_pending, TransferKind.void_pending})


class Transfer(msgspec.Struct, frozen=True, tag=True, gc=False):  # no cycles: see engine.records
    """One movement of money. Tagged so that it can sit inside event unions.

    `amount` is in minor units. For `post_pending` it is the amount posted, at
    most the pending amount; for `void_pending` it is the pending amount, or 0
    meaning "whatever is pending". `available_on_s` is set on money that
    reaches a merchant balance: from then on the merchant may pay it out.
    """

    id: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    currency: str
    kind: TransferKind
    code: str
    intent_id: str
    created_s: int
    pending_id: str | None = None
    available_on_s: int | None = None


class Entry(msgspec.Struct, frozen=True, gc=False):
    """A movement of a merchant's balance as Stripe shows it (a balance
    transaction): one posted transfer and the fees taken on it."""

    transfer: Transfer
    fees: tuple[Transfer, ...] = ()

    @property
    def fee(self) -> int:
        return sum(fee.amount for fee in self.fees)


def entries(transfers: list[Transfer]) -> list[Entry]:
    """The posted `transfers` grouped as balance transactions, in their
    order: each fee joins the movement it was taken on (`fee_id_of`), and a
    fee whose movement is not among them stands alone."""
    by_fee_id = {fee_id: transfer for transfer in transfers if (fee_id := fee_id_of(transfer)) is not None}
    fees_of: dict[str, list[Transfer]] = {}
    shown: list[Transfer] = []
    for transfer in transfers:
        principal = by_fee_id.get(transfer.id) if transfer.code in FEE_CODES else None
        if principal is None:
            shown.append(transfer)
        else:
            fees_of.setdefault(principal.id, []).append(transfer)
    return [Entry(transfer, tuple(fees_of.get(transfer.id, ()))) for transfer in shown]


class LedgerResult(enum.StrEnum):
    """Why `check` refuses a transfer; members are listed in ladder order."""

    ok = "ok"
    # shape: the transfer on its own is malformed
    amount_invalid = "amount_invalid"
    accounts_same = "accounts_same"
    # lookups: the pending transfer it closes
    pending_missing = "pending_missing"
    accounts_mismatch = "accounts_mismatch"
    currency_mismatch = "currency_mismatch"
    # idempotency
    id_exists = "id_exists"
    # state and limits
    pending_already_closed = "pending_already_closed"
    amount_exceeds_pending = "amount_exceeds_pending"
    amount_differs_from_pending = "amount_differs_from_pending"


class Balance(msgspec.Struct):
    debits_posted: int = 0
    credits_posted: int = 0
    debits_pending: int = 0
    credits_pending: int = 0


def _is_amount(value: object) -> bool:
    # bool is an int subclass and a float can look whole; neither is an amount.
    return type(value) is int


def _assert_well_formed(transfer: Transfer) -> None:
    """What the engine guarantees before it ever builds a transfer."""
    assert transfer.id, transfer
    # Every account belongs to someone: currencies() finds a merchant's
    # accounts by the part of the id before the separator.
    assert _ACCOUNT_SEPARATOR in transfer.debit_account_id, transfer
    assert _ACCOUNT_SEPARATOR in transfer.credit_account_id, transfer
    assert money.is_currency(transfer.currency), transfer.currency
    assert transfer.kind in _KINDS, transfer.kind
    assert (transfer.pending_id is not None) == (transfer.kind in _CLOSING_KINDS), transfer
    # A hold or a void never reaches a balance, so an availability date on one
    # means the caller confused the kinds.
    if transfer.kind in (TransferKind.pending, TransferKind.void_pending):
        assert transfer.available_on_s is None, transfer


class Ledger:
    """All transfers applied so far, with the balances they add up to.

    Every field below except `_transfers` is an index kept for speed; `verify`
    recomputes each one from `_transfers` and reports any difference. Tests
    may poke the fields directly to plant corruption.
    """

    __slots__ = ("_balances", "_closed_by", "_merchant_currencies", "_merchant_net", "_transfers", "_transfers_by_id")

    def __init__(self) -> None:
        self._transfers: list[Transfer] = []
        self._transfers_by_id: dict[str, Transfer] = {}
        self._balances: dict[tuple[str, str], Balance] = {}
        # pending transfer id -> id of the transfer that posted or voided it
        self._closed_by: dict[str, str] = {}
        # (merchant balance account, currency) -> {available_on_s: net posted credit}
        self._merchant_net: dict[tuple[str, str], dict[int | None, int]] = {}
        self._merchant_currencies: dict[str, set[str]] = {}

    # ------------------------------------------------------------- commands

    def check(self, transfer: Transfer) -> LedgerResult:
        """The first reason to refuse `transfer`, or `ok`. Changes nothing.

        Order: shape, then the pending transfer it names, then idempotency
        (a retried transfer is `id_exists` even after it closed its pending
        one), then the state and amount of the pending transfer.
        """
        _assert_well_formed(transfer)
        if not _is_amount(transfer.amount):
            return LedgerResult.amount_invalid
        # A void may say 0 for "all of it"; everything else moves something.
        amount_min = 0 if transfer.kind == TransferKind.void_pending else 1
        if transfer.amount < amount_min:
            return LedgerResult.amount_invalid
        if transfer.debit_account_id == transfer.credit_account_id:
            return LedgerResult.accounts_same

        pending = None
        if transfer.pending_id is not None:
            pending = self._transfers_by_id.get(transfer.pending_id)
            if pending is None or pending.kind != TransferKind.pending:
                return LedgerResult.pending_missing
            if (transfer.debit_account_id, transfer.credit_account_id) != (
                pending.debit_account_id,
                pending.credit_account_id,
            ):
                return LedgerResult.accounts_mismatch
            if transfer.currency != pending.currency:
                return LedgerResult.currency_mismatch

        if transfer.id in self._transfers_by_id:
            return LedgerResult.id_exists

        if pending is not None:
            if pending.id in self._closed_by:
                return LedgerResult.pending_already_closed
            if transfer.amount > pending.amount:
                return LedgerResult.amount_exceeds_pending
            # A void releases the whole hold; a smaller non-zero amount would
            # suggest a partial void, which does not exist.
            if transfer.kind == TransferKind.void_pending and transfer.amount not in (0, pending.amount):
                return LedgerResult.amount_differs_from_pending
        return LedgerResult.ok

    def apply(self, transfer: Transfer) -> None:
        """Apply a transfer that `check` accepts; asserts that it does."""
        result = self.check(transfer)
        assert result == LedgerResult.ok, (result, transfer)

        pending = None if transfer.pending_id is None else self._transfers_by_id[transfer.pending_id]
        debit = self._balance_for_update(transfer.debit_account_id, transfer.currency)
        credit = self._balance_for_update(transfer.credit_account_id, transfer.currency)
        posted = 0
        if transfer.kind == TransferKind.single:
            posted = transfer.amount
        elif transfer.kind == TransferKind.pending:
            debit.debits_pending += transfer.amount
            credit.credits_pending += transfer.amount
        else:
            assert pending is not None
            debit.debits_pending -= pending.amount
            credit.credits_pending -= pending.amount
            self._closed_by[pending.id] = transfer.id
            if transfer.kind == TransferKind.post_pending:
                posted = transfer.amount
        if posted:
            debit.debits_posted += posted
            credit.credits_posted += posted
            self._note_merchant_balance(transfer, posted)

        self._transfers.append(transfer)
        self._transfers_by_id[transfer.id] = transfer
        for account in (transfer.debit_account_id, transfer.credit_account_id):
            self._merchant_currencies.setdefault(_merchant_of(account), set()).add(transfer.currency)

    def _balance_for_update(self, account: str, currency: str) -> Balance:
        return self._balances.setdefault((account, currency), Balance())

    def _note_merchant_balance(self, transfer: Transfer, posted: int) -> None:
        for account, sign in ((transfer.credit_account_id, 1), (transfer.debit_account_id, -1)):
            if account.endswith(_ACCOUNT_SEPARATOR + MERCHANT_BALANCE):
                net = self._merchant_net.setdefault((account, transfer.currency), {})
                net[transfer.available_on_s] = net.get(transfer.available_on_s, 0) + sign * posted

    # -------------------------------------------------------------- queries

    def balance(self, account_id: str, currency: str) -> Balance:
        """A copy of the account's balance in `currency`; zeros if never used."""
        found = self._balances.get((account_id, currency))
        return Balance() if found is None else msgspec.structs.replace(found)

    def merchant_funds(self, merchant_id: str, currency: str, now_s: int) -> tuple[int, int]:
        """(available, pending) of the merchant's balance account at `now_s`.

        Both are posted credits minus posted debits; money whose
        `available_on_s` is later than `now_s` counts as pending, and money
        without one as available. Authorization holds (pending transfers) are
        in neither: they are not the merchant's yet.
        """
        net = self._merchant_net.get((account_id(merchant_id, MERCHANT_BALANCE), currency), {})
        available = 0
        pending = 0
        for available_on_s, amount in net.items():
            if available_on_s is None or available_on_s <= now_s:
                available += amount
            else:
                pending += amount
        return available, pending

    def currencies(self, merchant_id: str) -> list[str]:
        """Sorted currencies in which any account of this merchant has moved."""
        return sorted(self._merchant_currencies.get(merchant_id, ()))

    def transfers(self) -> list[Transfer]:
        """Every applied transfer, in the order applied."""
        return list(self._transfers)

    def transfer(self, transfer_id: str) -> Transfer | None:
        """The applied transfer with this id, if any."""
        return self._transfers_by_id.get(transfer_id)

    def entry(self, transfer_id: str) -> Entry | None:
        """The applied transfer with this id and the fee taken on it, if any."""
        transfer = self._transfers_by_id.get(transfer_id)
        if transfer is None:
            return None
        fee_id = fee_id_of(transfer)
        fee = None if fee_id is None else self._transfers_by_id.get(fee_id)
        return Entry(transfer, () if fee is None else (fee,))

    # --------------------------------------------------------------- checks

    def verify(self) -> list[str]:
        """Invariant I5 and the consistency of every index; [] when all hold.

        Recomputes everything from the list of transfers alone, without the
        code path `apply` uses, and describes each difference in one line.
        """
        problems: list[str] = []
        by_id: dict[str, Transfer] = {}
        closed_by: dict[str, str] = {}
        expected: dict[tuple[str, str], Balance] = {}
        merchant_net: dict[tuple[str, str], dict[int | None, int]] = {}

        def add(account: str, currency: str, column: str, amount: int) -> None:
            balance = expected.setdefault((account, currency), Balance())
            setattr(balance, column, getattr(balance, column) + amount)

        for transfer in self._transfers:
            if transfer.id in by_id:
                problems.append(f"transfer {transfer.id} appears more than once")
            by_id[transfer.id] = transfer
            debit, credit, currency = transfer.debit_account_id, transfer.credit_account_id, transfer.currency
            posted = 0
            if transfer.kind == TransferKind.single:
                posted = transfer.amount
            elif transfer.kind == TransferKind.pending:
                add(debit, currency, "debits_pending", transfer.amount)
                add(credit, currency, "credits_pending", transfer.amount)
            else:
                pending = by_id.get(transfer.pending_id or "")
                if pending is None or pending.kind != TransferKind.pending:
                    problems.append(f"transfer {transfer.id} closes {transfer.pending_id}, which is not an earlier pending transfer")
                    continue
                if transfer.pending_id in closed_by:
                    problems.append(
                        f"pending transfer {transfer.pending_id} closed more than once: "
                        f"by {closed_by[transfer.pending_id]} and by {transfer.id}"
                    )
                closed_by[pending.id] = transfer.id
                add(pending.debit_account_id, pending.currency, "debits_pending", -pending.amount)
                add(pending.credit_account_id, pending.currency, "credits_pending", -pending.amount)
                if transfer.kind == TransferKind.post_pending:
                    posted = transfer.amount
            if posted:
                add(debit, currency, "debits_posted", posted)
                add(credit, currency, "credits_posted", posted)
                for account, sign in ((credit, 1), (debit, -1)):
                    if account.endswith(_ACCOUNT_SEPARATOR + MERCHANT_BALANCE):
                        net = merchant_net.setdefault((account, currency), {})
                        net[transfer.available_on_s] = net.get(transfer.available_on_s, 0) + sign * posted

        problems.extend(_totals_problems(self._balances))
        for key in sorted(expected.keys() | self._balances.keys()):
            recomputed = expected.get(key, Balance())
            held = self._balances.get(key, Balance())
            if held != recomputed:
                problems.append(f"account {key[0]} in {key[1]}: balance is {held}, its transfers add up to {recomputed}")
            if recomputed.debits_pending < 0 or recomputed.credits_pending < 0:
                problems.append(f"account {key[0]} in {key[1]}: pending columns below zero: {recomputed}")
        if closed_by != self._closed_by:
            problems.append(f"index of closed pending transfers {self._closed_by} differs from the transfers {closed_by}")
        if by_id != self._transfers_by_id:
            problems.append("index of transfers by id differs from the list of transfers")
        if _without_zeros(merchant_net) != _without_zeros(self._merchant_net):
            problems.append("index of merchant balances by availability differs from the transfers")
        merchant_currencies: dict[str, set[str]] = {}
        for account, currency in expected:
            merchant_currencies.setdefault(_merchant_of(account), set()).add(currency)
        if merchant_currencies != self._merchant_currencies:
            problems.append("index of currencies by merchant differs from the transfers")
        return problems


def _totals_problems(balances: dict[tuple[str, str], Balance]) -> list[str]:
    """Per currency, total debits must equal total credits, posted and pending apart."""
    totals: dict[str, list[int]] = {}
    for (_, currency), balance in balances.items():
        total = totals.setdefault(currency, [0, 0, 0, 0])
        total[0] += balance.debits_posted
        total[1] += balance.credits_posted
        total[2] += balance.debits_pending
        total[3] += balance.credits_pending
    problems = []
    for currency, (debits_posted, credits_posted, debits_pending, credits_pending) in sorted(totals.items()):
        if debits_posted != credits_posted:
            problems.append(f"{currency}: posted debits {debits_posted} != posted credits {credits_posted}")
        if debits_pending != credits_pending:
            problems.append(f"{currency}: pending debits {debits_pending} != pending credits {credits_pending}")
    return problems


def _without_zeros(
    net_by_account: dict[tuple[str, str], dict[int | None, int]],
) -> dict[tuple[str, str], dict[int | None, int]]:
    # A refund can bring a bucket back to exactly zero; that equals no bucket.
    cleaned = {key: {when: amount for when, amount in net.items() if amount} for key, net in net_by_account.items()}
    return {key: net for key, net in cleaned.items() if net}


def fee_minor(amount_minor: int, percent_basis_points: int = 290, fixed_minor: int = 30) -> int:
    """Our fee on a charge of `amount_minor`: a percentage plus a fixed part.

    The default is 2.9% + 30 minor units. The percentage is given in basis
    points (1/100 of a percent) so that no float ever touches money.

    Rounding: the percentage part, amount * basis points / 10,000, is rounded
    half up to a whole minor unit with integer arithmetic (14.5 -> 15,
    14.49 -> 14). The fixed part is then added, and the sum is capped at the
    amount: the fee never exceeds the charge and is never negative.

    Asserts that the amount is at least one minor unit and the rates are not
    negative; callers pass amounts that have already been validated.
    """
    assert type(amount_minor) is int and amount_minor >= 1, amount_minor
    assert type(percent_basis_points) is int and percent_basis_points >= 0, percent_basis_points
    assert type(fixed_minor) is int and fixed_minor >= 0, fixed_minor
    # Adding half the divisor before a floor division rounds half up for
    # non-negative numbers.
    percent_part = (amount_minor * percent_basis_points + BASIS_POINTS_PER_WHOLE // 2) // BASIS_POINTS_PER_WHOLE
    return min(percent_part + fixed_minor, amount_minor)
