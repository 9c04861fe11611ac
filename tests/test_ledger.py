"""The double-entry ledger: result codes as tables, two-phase transfers, I5, fees."""

import copy
import re
from fractions import Fraction

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.ledger import (
    FEES_REVENUE,
    MERCHANT_BALANCE,
    NETWORK_RECEIVABLE,
    Balance,
    Ledger,
    LedgerResult,
    Transfer,
    TransferKind,
    account_id,
    fee_minor,
)

R = LedgerResult
K = TransferKind

MERCHANT_ID = "acct_01"
OTHER_MERCHANT_ID = "acct_02"
BALANCE_ACCOUNT = account_id(MERCHANT_ID, MERCHANT_BALANCE)
RECEIVABLE = account_id(MERCHANT_ID, NETWORK_RECEIVABLE)
FEES = account_id(MERCHANT_ID, FEES_REVENUE)
INTENT_ID = "pi_01"
CREATED_S = 1_700_000_000
HOLD_AMOUNT = 1_000
HOLD_ID = "tr_hold"
CHARGE_ID = "tr_charge"


# ------------------------------------------------------------------ helpers


def single(**changes) -> Transfer:
    """A charge of 500 usd from the network receivable to the merchant balance."""
    fields = dict(
        id="tr_new",
        debit_account_id=RECEIVABLE,
        credit_account_id=BALANCE_ACCOUNT,
        amount=500,
        currency="usd",
        kind=K.single,
        code="charge",
        intent_id=INTENT_ID,
        created_s=CREATED_S,
    )
    fields.update(changes)
    return Transfer(**fields)


def refused_by(result: LedgerResult, transfer: Transfer) -> str:
    """The message of `apply`'s assert on a transfer `check` refuses: the result and the transfer."""
    return rf"^\({re.escape(repr(result))}, {re.escape(repr(transfer))}\)$"


def hold(**changes) -> Transfer:
    return single(**{"id": HOLD_ID, "amount": HOLD_AMOUNT, "kind": K.pending, "code": "authorization_hold", **changes})


def post(**changes) -> Transfer:
    return single(**{"id": "tr_post", "amount": HOLD_AMOUNT, "kind": K.post_pending, "pending_id": HOLD_ID, **changes})


def void(**changes) -> Transfer:
    return single(**{"id": "tr_void", "amount": 0, "kind": K.void_pending, "code": "authorization_hold", "pending_id": HOLD_ID, **changes})


def ledger_with(*transfers: Transfer) -> Ledger:
    ledger = Ledger()
    for transfer in transfers:
        ledger.apply(transfer)
    return ledger


def standard_ledger() -> Ledger:
    """An open hold HOLD_ID of 1000 usd and a posted charge CHARGE_ID."""
    return ledger_with(hold(), single(id=CHARGE_ID))


def state_of(ledger: Ledger) -> dict:
    """A deep copy of everything the ledger holds, to show that nothing changed."""
    return {name: copy.deepcopy(getattr(ledger, name)) for name in Ledger.__slots__}


# ------------------------------------------------------------- result codes


@pytest.mark.parametrize(
    ("transfer", "expected"),
    [
        # shape
        (single(), R.ok),
        (single(amount=1), R.ok),
        (single(amount=0), R.amount_invalid),
        (single(amount=-1), R.amount_invalid),
        (single(amount=True), R.amount_invalid),
        (single(amount=1.0), R.amount_invalid),
        (single(amount="1"), R.amount_invalid),
        (hold(id="tr_hold_2", amount=0), R.amount_invalid),
        (post(amount=0), R.amount_invalid),
        (post(amount=-5), R.amount_invalid),
        (void(amount=-1), R.amount_invalid),
        (void(amount=0), R.ok),
        (single(credit_account_id=RECEIVABLE), R.accounts_same),
        (hold(id="tr_hold_2", debit_account_id=BALANCE_ACCOUNT), R.accounts_same),
        (post(debit_account_id=BALANCE_ACCOUNT), R.accounts_same),
        # lookups
        (post(pending_id="tr_nowhere"), R.pending_missing),
        (void(pending_id="tr_nowhere"), R.pending_missing),
        (post(pending_id=CHARGE_ID), R.pending_missing),
        (post(debit_account_id=BALANCE_ACCOUNT, credit_account_id=RECEIVABLE), R.accounts_mismatch),
        (post(credit_account_id=FEES), R.accounts_mismatch),
        (void(debit_account_id=FEES), R.accounts_mismatch),
        (post(currency="eur"), R.currency_mismatch),
        (void(currency="jpy"), R.currency_mismatch),
        # idempotency
        (single(id=CHARGE_ID), R.id_exists),
        (single(id=HOLD_ID), R.id_exists),
        (hold(), R.id_exists),
        (post(id=CHARGE_ID), R.id_exists),
        # limits
        (post(amount=HOLD_AMOUNT + 1), R.amount_exceeds_pending),
        (void(amount=HOLD_AMOUNT + 1), R.amount_exceeds_pending),
        (void(amount=HOLD_AMOUNT - 1), R.amount_differs_from_pending),
        (void(amount=1), R.amount_differs_from_pending),
        (void(amount=HOLD_AMOUNT), R.ok),
        (post(amount=HOLD_AMOUNT), R.ok),
        (post(amount=1), R.ok),
        (post(code="charge", available_on_s=CREATED_S + 86_400), R.ok),
    ],
)
def test_check_result(transfer, expected):
    ledger = standard_ledger()
    before = state_of(ledger)
    assert ledger.check(transfer) == expected
    assert state_of(ledger) == before


@pytest.mark.parametrize(
    ("transfer", "expected"),
    [
        # Each transfer is wrong in several ways; the earliest rung wins.
        (single(id=CHARGE_ID, amount=0, credit_account_id=RECEIVABLE), R.amount_invalid),
        (single(id=CHARGE_ID, credit_account_id=RECEIVABLE), R.accounts_same),
        (post(id=CHARGE_ID, pending_id="tr_nowhere"), R.pending_missing),
        (post(id=CHARGE_ID, credit_account_id=FEES, currency="eur"), R.accounts_mismatch),
        (post(id=CHARGE_ID, currency="eur", amount=HOLD_AMOUNT + 1), R.currency_mismatch),
        (post(id=CHARGE_ID, amount=HOLD_AMOUNT + 1), R.id_exists),
    ],
)
def test_check_runs_the_ladder_in_order(transfer, expected):
    assert standard_ledger().check(transfer) == expected


@pytest.mark.parametrize(
    "closing",
    [post(), post(id="tr_post_2", amount=1), void(), void(id="tr_void_2", amount=HOLD_AMOUNT)],
)
@pytest.mark.parametrize("closed_by", [post(id="tr_first"), void(id="tr_first")])
def test_pending_closes_once(closed_by, closing):
    ledger = ledger_with(hold(), closed_by)
    before = state_of(ledger)
    assert ledger.check(closing) == R.pending_already_closed
    with pytest.raises(AssertionError, match=refused_by(R.pending_already_closed, closing)):
        ledger.apply(closing)
    assert state_of(ledger) == before


def test_retried_post_is_id_exists_not_already_closed():
    # Idempotency comes before state: a retry learns that it already happened.
    ledger = ledger_with(hold(), post())
    assert ledger.check(post()) == R.id_exists


def test_closed_pending_exceeded_is_already_closed_first():
    ledger = ledger_with(hold(), post(amount=400))
    assert ledger.check(post(id="tr_post_2", amount=HOLD_AMOUNT + 1)) == R.pending_already_closed


@pytest.mark.parametrize(
    ("transfer", "named"),
    [
        (single(kind=K.post_pending), "the transfer"),
        (single(pending_id=HOLD_ID), "the transfer"),
        (single(currency="USD"), "USD"),
        (single(currency="xyz"), "xyz"),
        (single(debit_account_id="receivable"), "the transfer"),
        (single(id=""), "the transfer"),
        (hold(id="tr_hold_2", available_on_s=CREATED_S), "the transfer"),
        (void(available_on_s=CREATED_S), "the transfer"),
    ],
)
def test_engine_bug_is_an_assert_not_a_result(transfer, named):
    ledger = standard_ledger()
    before = state_of(ledger)
    # The assert names what is wrong: the whole transfer, or the one field checked on its own.
    message = repr(transfer) if named == "the transfer" else named
    with pytest.raises(AssertionError, match=f"^{re.escape(message)}$"):
        ledger.check(transfer)
    assert state_of(ledger) == before


def test_apply_refuses_what_check_refuses_and_changes_nothing():
    ledger = standard_ledger()
    before = state_of(ledger)
    with pytest.raises(AssertionError, match=r"amount_exceeds_pending"):
        ledger.apply(post(amount=HOLD_AMOUNT + 1))
    assert state_of(ledger) == before


# --------------------------------------------------------------- two phases


def test_single_posts_at_once():
    ledger = ledger_with(single(amount=700))
    assert ledger.balance(RECEIVABLE, "usd") == Balance(debits_posted=700)
    assert ledger.balance(BALANCE_ACCOUNT, "usd") == Balance(credits_posted=700)
    assert ledger.verify() == []


def test_pending_reserves_without_posting():
    ledger = ledger_with(hold())
    assert ledger.balance(RECEIVABLE, "usd") == Balance(debits_pending=HOLD_AMOUNT)
    assert ledger.balance(BALANCE_ACCOUNT, "usd") == Balance(credits_pending=HOLD_AMOUNT)
    assert ledger.verify() == []


def test_partial_post_releases_the_rest():
    ledger = ledger_with(hold(), post(amount=600))
    assert ledger.balance(RECEIVABLE, "usd") == Balance(debits_posted=600)
    assert ledger.balance(BALANCE_ACCOUNT, "usd") == Balance(credits_posted=600)
    assert ledger.merchant_funds(MERCHANT_ID, "usd", CREATED_S) == (600, 0)
    assert ledger.verify() == []


def test_full_post_moves_all_of_the_hold():
    ledger = ledger_with(hold(), post())
    assert ledger.balance(RECEIVABLE, "usd") == Balance(debits_posted=HOLD_AMOUNT)
    assert ledger.balance(BALANCE_ACCOUNT, "usd") == Balance(credits_posted=HOLD_AMOUNT)


@pytest.mark.parametrize("amount", [0, HOLD_AMOUNT])
def test_void_releases_all_and_posts_nothing(amount):
    ledger = ledger_with(hold(), void(amount=amount))
    assert ledger.balance(RECEIVABLE, "usd") == Balance()
    assert ledger.balance(BALANCE_ACCOUNT, "usd") == Balance()
    assert ledger.merchant_funds(MERCHANT_ID, "usd", CREATED_S) == (0, 0)
    assert ledger.verify() == []


def test_holds_are_not_merchant_funds():
    ledger = ledger_with(hold())
    assert ledger.merchant_funds(MERCHANT_ID, "usd", CREATED_S) == (0, 0)


# -------------------------------------------------------------------- verify


def test_verify_finds_a_changed_balance():
    ledger = standard_ledger()
    ledger._balances[(BALANCE_ACCOUNT, "usd")].credits_posted += 1
    assert ledger.verify() == [
        "usd: posted debits 500 != posted credits 501",
        f"account {BALANCE_ACCOUNT} in usd: balance is "
        f"{Balance(credits_posted=501, credits_pending=HOLD_AMOUNT)}, its transfers add up to "
        f"{Balance(credits_posted=500, credits_pending=HOLD_AMOUNT)}",
    ]


def test_verify_finds_a_balanced_but_wrong_account():
    # Debits still equal credits in total; only the recount finds it.
    ledger = standard_ledger()
    ledger._balances[(BALANCE_ACCOUNT, "usd")].credits_pending -= 100
    ledger._balances[(FEES, "usd")] = Balance(credits_pending=100)
    assert ledger.verify() == [
        f"account {FEES} in usd: balance is {Balance(credits_pending=100)}, its transfers add up to {Balance()}",
        f"account {BALANCE_ACCOUNT} in usd: balance is "
        f"{Balance(credits_posted=500, credits_pending=HOLD_AMOUNT - 100)}, its transfers add up to "
        f"{Balance(credits_posted=500, credits_pending=HOLD_AMOUNT)}",
    ]


def test_verify_finds_a_pending_closed_twice():
    ledger = ledger_with(hold(), post(amount=300))
    ledger._transfers.append(void())
    problems = ledger.verify()
    assert f"pending transfer {HOLD_ID} closed more than once: by tr_post and by tr_void" in problems


def test_verify_finds_a_forgotten_close():
    ledger = ledger_with(hold(), void())
    del ledger._closed_by[HOLD_ID]
    assert ledger.verify() == [f"index of closed pending transfers {{}} differs from the transfers {{'{HOLD_ID}': 'tr_void'}}"]


def test_verify_finds_a_transfer_listed_twice():
    ledger = standard_ledger()
    ledger._transfers.append(ledger._transfers[-1])
    problems = ledger.verify()
    assert f"transfer {CHARGE_ID} appears more than once" in problems


def test_verify_finds_a_wrong_available_index():
    ledger = ledger_with(single(available_on_s=100))
    ledger._merchant_net[(BALANCE_ACCOUNT, "usd")][100] += 1
    assert ledger.verify() == ["index of merchant balances by availability differs from the transfers"]


# --------------------------------------------------------- merchant queries


def test_merchant_funds_split_by_available_on():
    ledger = ledger_with(
        single(id="tr_charge_1", amount=1_000, available_on_s=100),
        single(id="tr_fee_1", debit_account_id=BALANCE_ACCOUNT, credit_account_id=FEES, amount=59, code="fee"),
        single(id="tr_charge_2", amount=500, available_on_s=200),
        hold(),  # a hold is not the merchant's money yet
        single(id="tr_other", amount=800, currency="eur", available_on_s=100),
    )
    assert ledger.merchant_funds(MERCHANT_ID, "usd", 99) == (-59, 1_500)
    assert ledger.merchant_funds(MERCHANT_ID, "usd", 100) == (941, 500)
    assert ledger.merchant_funds(MERCHANT_ID, "usd", 200) == (1_441, 0)
    assert ledger.merchant_funds(MERCHANT_ID, "eur", 100) == (800, 0)
    assert ledger.merchant_funds(MERCHANT_ID, "jpy", 100) == (0, 0)
    assert ledger.merchant_funds(OTHER_MERCHANT_ID, "usd", 100) == (0, 0)


def test_refund_reduces_pending_funds_of_its_availability():
    ledger = ledger_with(
        single(id="tr_charge_1", amount=1_000, available_on_s=100),
        single(
            id="tr_refund_1",
            debit_account_id=BALANCE_ACCOUNT,
            credit_account_id=RECEIVABLE,
            amount=1_000,
            code="refund",
            available_on_s=100,
        ),
    )
    assert ledger.merchant_funds(MERCHANT_ID, "usd", 0) == (0, 0)
    assert ledger.verify() == []


def test_currencies_of_a_merchant():
    other_balance = account_id(OTHER_MERCHANT_ID, MERCHANT_BALANCE)
    ledger = ledger_with(
        single(id="tr_1", currency="usd"),
        hold(currency="jpy"),
        single(id="tr_2", currency="eur", debit_account_id=account_id(OTHER_MERCHANT_ID, NETWORK_RECEIVABLE), credit_account_id=other_balance),
    )
    assert ledger.currencies(MERCHANT_ID) == ["jpy", "usd"]
    assert ledger.currencies(OTHER_MERCHANT_ID) == ["eur"]
    assert ledger.currencies("acct_03") == []


def test_transfers_in_application_order():
    applied = [hold(), single(id="tr_a"), post(amount=10), single(id="tr_b")]
    ledger = ledger_with(*applied)
    assert ledger.transfers() == applied
    ledger.transfers().clear()
    assert ledger.transfers() == applied


def test_balance_is_a_copy():
    ledger = ledger_with(single())
    ledger.balance(BALANCE_ACCOUNT, "usd").credits_posted += 1
    assert ledger.balance(BALANCE_ACCOUNT, "usd") == Balance(credits_posted=500)
    assert ledger.balance("acct_09:merchant_balance", "usd") == Balance()


def test_account_id():
    assert account_id("acct_x", MERCHANT_BALANCE) == "acct_x:merchant_balance"
    with pytest.raises(AssertionError, match=r"^acct:x$"):
        account_id("acct:x", MERCHANT_BALANCE)


def test_transfer_round_trips_as_a_tagged_struct():
    transfer = post(amount=10, available_on_s=5)
    encoded = msgspec.json.encode(transfer)
    assert msgspec.json.decode(encoded)["type"] == "Transfer"
    decoded = msgspec.json.decode(encoded, type=Transfer)
    assert decoded == transfer
    assert decoded.kind is K.post_pending


# ---------------------------------------------------------------------- fees


@pytest.mark.parametrize(
    ("amount_minor", "fee_expected"),
    [
        (1, 1),  # 30 fixed, capped at the amount
        (29, 29),
        (30, 30),  # 0.87 -> 1, + 30 = 31, capped
        (31, 31),  # 0.899 -> 1, + 30 = 31
        (32, 31),
        (100, 33),  # 2.9 -> 3
        (1_000, 59),  # 29 exactly
        (500, 45),  # 14.5 -> 15: exactly half rounds up
        (1_500, 74),  # 43.5 -> 44
        (499, 44),  # 14.471 -> 14
        (517, 45),  # 14.993 -> 15
        (2_000, 88),
        (99_999_999, 2_900_030),  # 2_899_999.971 -> 2_900_000
    ],
)
def test_fee_default(amount_minor, fee_expected):
    assert fee_minor(amount_minor) == fee_expected


@pytest.mark.parametrize(
    ("amount_minor", "percent_basis_points", "fixed_minor", "fee_expected"),
    [
        (1_000, 0, 0, 0),
        (1_000, 0, 30, 30),
        (1_000, 10_000, 0, 1_000),  # 100%
        (1_000, 10_000, 30, 1_000),  # capped
        (10, 150, 0, 0),  # 0.15 -> 0
        (100, 150, 0, 2),  # 1.5 -> 2
        (1, 5_000, 0, 1),  # 0.5 -> 1
        (1, 4_999, 0, 0),  # 0.4999 -> 0
    ],
)
def test_fee_with_rates(amount_minor, percent_basis_points, fixed_minor, fee_expected):
    assert fee_minor(amount_minor, percent_basis_points, fixed_minor) == fee_expected


@pytest.mark.parametrize(
    ("amount_minor", "percent_basis_points", "fixed_minor", "named"),
    [
        (0, 290, 30, "0"),
        (-1, 290, 30, "-1"),
        (True, 290, 30, "True"),
        (10.0, 290, 30, "10.0"),
        (100, 2.9, 30, "2.9"),
        (100, -1, 30, "-1"),
        (100, 290, -1, "-1"),
    ],
)
def test_fee_refuses_what_no_caller_may_pass(amount_minor, percent_basis_points, fixed_minor, named):
    # The assert names the value it refused.
    with pytest.raises(AssertionError, match=f"^{re.escape(named)}$"):
        fee_minor(amount_minor, percent_basis_points, fixed_minor)


@given(
    amount_minor=st.integers(1, 99_999_999),
    percent_basis_points=st.integers(0, 10_000),
    fixed_minor=st.integers(0, 1_000),
)
def test_fee_matches_exact_half_up(amount_minor, percent_basis_points, fixed_minor):
    exact = Fraction(amount_minor * percent_basis_points, 10_000)
    # Half up for a non-negative fraction: whole part, plus one when the rest is >= 1/2.
    rounded = int(exact) + (1 if exact - int(exact) >= Fraction(1, 2) else 0)
    fee = fee_minor(amount_minor, percent_basis_points, fixed_minor)
    assert type(fee) is int
    assert fee == min(rounded + fixed_minor, amount_minor)
    assert 0 <= fee <= amount_minor


# ------------------------------------------------- random transfer sequences

ACCOUNTS = [
    BALANCE_ACCOUNT,
    RECEIVABLE,
    FEES,
    account_id(OTHER_MERCHANT_ID, MERCHANT_BALANCE),
]
TRANSFER_IDS = [f"tr_{number}" for number in range(8)]


def random_transfer(data: st.DataObject, applied: list[Transfer]) -> Transfer:
    """Mostly plausible transfers, some wrong in one way or several.

    A closing transfer usually aims at a pending transfer already applied, with
    its accounts and currency, or it would almost never be accepted.
    """
    kind = data.draw(st.sampled_from(K))
    closing = kind in (K.post_pending, K.void_pending)
    reaches_balance = kind in (K.single, K.post_pending)
    fields = dict(
        id=data.draw(st.sampled_from(TRANSFER_IDS)),
        debit_account_id=data.draw(st.sampled_from(ACCOUNTS)),
        credit_account_id=data.draw(st.sampled_from(ACCOUNTS)),
        amount=data.draw(st.one_of(st.sampled_from([0, 100, 1_000]), st.integers(-2, 1_200))),
        currency=data.draw(st.sampled_from(["usd", "jpy"])),
        kind=kind,
        code="charge",
        intent_id=INTENT_ID,
        created_s=CREATED_S,
        pending_id=data.draw(st.sampled_from(TRANSFER_IDS)) if closing else None,
        available_on_s=data.draw(st.sampled_from([None, 0, 10, 20])) if reaches_balance else None,
    )
    holds = [transfer for transfer in applied if transfer.kind == K.pending]
    if closing and holds and data.draw(st.booleans()):
        target = data.draw(st.sampled_from(holds))
        fields.update(
            pending_id=target.id,
            debit_account_id=target.debit_account_id,
            credit_account_id=target.credit_account_id,
            currency=target.currency,
            amount=data.draw(st.sampled_from([0, 1, target.amount - 1, target.amount, target.amount + 1])),
        )
    return Transfer(**fields)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_transfers_keep_the_ledger_balanced(data):
    ledger = Ledger()
    applied: list[Transfer] = []
    for _ in range(data.draw(st.integers(0, 40))):
        transfer = random_transfer(data, applied)
        before = state_of(ledger)
        result = ledger.check(transfer)
        assert state_of(ledger) == before
        if result == R.ok:
            ledger.apply(transfer)
            applied.append(transfer)
        else:
            with pytest.raises(AssertionError, match=refused_by(result, transfer)):
                ledger.apply(transfer)
            assert state_of(ledger) == before
        assert ledger.verify() == []
        assert ledger.transfers() == applied
        for currency in ("usd", "jpy"):
            for merchant_id in (MERCHANT_ID, OTHER_MERCHANT_ID):
                balance = ledger.balance(account_id(merchant_id, MERCHANT_BALANCE), currency)
                for now_s in (0, 15, 100):
                    available, pending = ledger.merchant_funds(merchant_id, currency, now_s)
                    assert available + pending == balance.credits_posted - balance.debits_posted
