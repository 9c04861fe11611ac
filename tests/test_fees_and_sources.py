"""Balance transactions as Stripe has them (issue 15): the fee of a charge
(or of a dispute) is inside the balance transaction it was taken on, with
its fee_details and `net = amount - fee`, not a transaction of its own; and
`source` names what the movement is about: the charge (`ch_`), the refund
(`re_`) or the dispute (`dp_`).

The ledger keeps fees as transfers of their own (invariant I5 is about
transfers); `engine.ledger.entries` groups them for the API. A journal
written before the grouping existed replays to the same balances and groups
the same way."""

from __future__ import annotations

import httpx
import pytest
import stripe

from engine import intent as machine
from engine import ledger
from engine.ledger import Ledger, Transfer, TransferKind
from tests.conftest import NodeProcess
from tests.helpers import wait_until

MERCHANT = "acct_1"
BALANCE = ledger.account_id(MERCHANT, ledger.MERCHANT_BALANCE)
RECEIVABLE = ledger.account_id(MERCHANT, ledger.NETWORK_RECEIVABLE)
FEES = ledger.account_id(MERCHANT, ledger.FEES_REVENUE)


def transfer(transfer_id: str, code: str, amount: int, *, debit: str = RECEIVABLE, credit: str = BALANCE, **more: object) -> Transfer:
    fields: dict = dict(
        id=transfer_id, debit_account_id=debit, credit_account_id=credit, amount=amount, currency="usd",
        kind=TransferKind.single, code=code, intent_id="pi_a", created_s=100, available_on_s=200,
    )
    fields.update(more)
    return Transfer(**fields)


CHARGE = transfer("att_1:charge", "charge", 10_000)
CHARGE_FEE = transfer("att_1:fee", "fee", 320, debit=BALANCE, credit=FEES)
REFUND = transfer("re_1:refund", "refund", 2_500, debit=BALANCE, credit=RECEIVABLE)
DISPUTE = transfer("dp_1:dispute", "dispute", 7_500, debit=BALANCE, credit=RECEIVABLE)
DISPUTE_FEE = transfer("dp_1:dispute_fee", "dispute_fee", 1_500, debit=BALANCE, credit=FEES)
DISPUTE_WON = transfer("dp_1:dispute_won", "dispute_won", 7_500)


# ------------------------------------------------------------ the grouping


def test_each_fee_joins_the_movement_it_was_taken_on() -> None:
    grouped = ledger.entries([CHARGE, CHARGE_FEE, REFUND, DISPUTE, DISPUTE_FEE, DISPUTE_WON])
    assert [(entry.transfer.id, [fee.id for fee in entry.fees], entry.fee) for entry in grouped] == [
        ("att_1:charge", ["att_1:fee"], 320),
        ("re_1:refund", [], 0),
        ("dp_1:dispute", ["dp_1:dispute_fee"], 1_500),
        # The reversal of a won dispute takes no fee: the fee is not returned.
        ("dp_1:dispute_won", [], 0),
    ]


def test_a_capture_s_fee_joins_the_capture() -> None:
    capture = transfer("att_2:capture", "charge", 3_000, kind=TransferKind.post_pending, pending_id="att_1:hold")
    fee = transfer("att_2:fee", "fee", 117, debit=BALANCE, credit=FEES)
    assert [(entry.transfer.id, entry.fees) for entry in ledger.entries([fee, capture])] == [("att_2:capture", (fee,))]


def test_a_fee_whose_movement_is_not_listed_stands_alone() -> None:
    # A list narrowed to part of the ledger must not lose money from sight.
    assert [(entry.transfer.id, entry.fees) for entry in ledger.entries([CHARGE_FEE])] == [("att_1:fee", ())]


def test_a_fee_is_found_by_its_movement_in_the_ledger() -> None:
    books = Ledger()
    for item in (CHARGE, CHARGE_FEE, REFUND):
        books.apply(item)
    assert books.entry("att_1:charge") == ledger.Entry(CHARGE, (CHARGE_FEE,))
    assert books.entry("re_1:refund") == ledger.Entry(REFUND)
    assert books.entry("att_9:charge") is None


# A journal row as nodes wrote it before fees were shown inside charges
# (taken from tests/test_intent_machine.py's fixed encodings): the fee is a
# transfer of its own, named after its attempt.
OLD_JOURNAL_ROW = (
    b'{"type":"AttemptApproved","intent_id":"pi_b","attempt_id":"att_4","status":"succeeded","amount_capturable":0,'
    b'"amount_received":700,"transfers":[{"type":"Transfer","id":"att_4:charge","debit_account_id":"acct_1:network_receivable",'
    b'"credit_account_id":"acct_1:merchant_balance","amount":700,"currency":"eur","kind":"single","code":"charge","intent_id":"pi_b",'
    b'"created_s":203,"pending_id":null,"available_on_s":173003},{"type":"Transfer","id":"att_4:fee",'
    b'"debit_account_id":"acct_1:merchant_balance","credit_account_id":"acct_1:fees_revenue","amount":50,"currency":"eur",'
    b'"kind":"single","code":"fee","intent_id":"pi_b","created_s":203,"pending_id":null,"available_on_s":173003}]}'
)


def test_an_old_journal_replays_to_the_same_balance_and_groups_the_same() -> None:
    event = machine.event_decoder.decode(OLD_JOURNAL_ROW)
    books = Ledger()
    for item in machine.transfers_of(event):
        books.apply(item)
    assert books.verify() == []
    assert books.merchant_funds(MERCHANT, "eur", 0) == (0, 650)
    (entry,) = ledger.entries(books.transfers())
    assert (entry.transfer.id, entry.transfer.amount, entry.fee) == ("att_4:charge", 700, 50)
    # What the API shows adds up to the balance, as before.
    assert entry.transfer.amount - entry.fee == sum(books.merchant_funds(MERCHANT, "eur", 0))


# ------------------------------------------------------------ on a node


def _http(node: NodeProcess, merchant: dict) -> httpx.Client:
    return httpx.Client(base_url=node.url, auth=(merchant["secret_key"], ""), timeout=30)


def _ok(answer: httpx.Response) -> dict:
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_charge_s_transaction_carries_its_fee_and_names_the_charge(node: NodeProcess, fresh_merchant: dict) -> None:
    with _http(node, fresh_merchant) as http:
        paid = _ok(http.post("/v1/payment_intents", data={
            "amount": "10000", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true",
            "expand[]": "latest_charge.balance_transaction",
        }))
        transaction = paid["latest_charge"]["balance_transaction"]
        fee = ledger.fee_minor(10_000)
        assert fee == 320
        assert (transaction["type"], transaction["amount"], transaction["fee"], transaction["net"]) == ("charge", 10_000, fee, 10_000 - fee)
        assert transaction["fee_details"] == [{"amount": fee, "currency": "usd", "type": "stripe_fee", "description": "Stripe processing fees", "application": None}]
        assert transaction["source"] == paid["latest_charge"]["id"] and transaction["source"].startswith("ch_")
        assert transaction["reporting_category"] == "charge"
        # The same object by id and in the list; no fee transaction beside it.
        assert _ok(http.get(f"/v1/balance_transactions/{transaction['id']}")) == transaction
        listed = _ok(http.get("/v1/balance_transactions", params={"limit": 100}))["data"]
        assert listed == [transaction]
        assert _ok(http.get("/v1/balance_transactions", params={"type": "stripe_fee"}))["data"] == []


def test_refunds_and_disputes_name_themselves_and_the_nets_add_up_to_the_balance(node: NodeProcess, fresh_merchant: dict) -> None:
    with _http(node, fresh_merchant) as http:
        paid = _ok(http.post("/v1/payment_intents", data={"amount": "10000", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}))
        refund = _ok(http.post("/v1/refunds", data={"payment_intent": paid["id"], "amount": "2500"}))
        opened = _ok(http.post("/simulator/disputes", data={"payment_intent": paid["id"]}))
        dispute = wait_until(lambda: (answer := http.get(f"/v1/disputes/{opened['id']}")).status_code == 200 and answer.json(), 10, "the dispute")
        listed = _ok(http.get("/v1/balance_transactions", params={"limit": 100}))["data"]
        balance = _ok(http.get("/v1/balance"))
    by_source = {item["source"]: item for item in listed}
    assert set(by_source) == {paid["latest_charge"], refund["id"], dispute["id"]}
    refunded = by_source[refund["id"]]
    assert (refunded["type"], refunded["amount"], refunded["fee"], refunded["net"], refunded["fee_details"]) == ("refund", -2500, 0, -2500, [])
    disputed = by_source[dispute["id"]]
    assert (disputed["type"], disputed["reporting_category"], disputed["amount"], disputed["fee"], disputed["net"]) == (
        "adjustment", "dispute", -7500, 1500, -9000,
    )
    assert disputed["fee_details"][0]["description"] == "Dispute fee"
    # The dispute shows the very transaction the ledger lists.
    assert dispute["balance_transactions"] == [disputed]
    held = sum(entry["amount"] for entry in balance["available"] + balance["pending"] if entry["currency"] == "usd")
    assert sum(item["net"] for item in listed) == held == 10_000 - 320 - 2500 - 7500 - 1500


def test_a_capture_s_transaction_names_the_authorized_charge(node: NodeProcess, fresh_merchant: dict) -> None:
    client = stripe.StripeClient(fresh_merchant["secret_key"], base_addresses={"api": node.url})
    held = client.v1.payment_intents.create(
        params={"amount": 4000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True, "capture_method": "manual"}
    )
    captured = client.v1.payment_intents.capture(held.id, params={"amount_to_capture": 3000, "expand": ["latest_charge.balance_transaction"]})
    transaction = captured.latest_charge.balance_transaction
    assert isinstance(transaction, stripe.BalanceTransaction)
    assert (transaction.source, transaction.amount, transaction.fee, transaction.net) == (held.latest_charge, 3000, 117, 2883)
    assert transaction.fee_details[0].type == "stripe_fee"
    listed = client.v1.balance_transactions.list(params={"limit": 100}).data
    assert [(item.id, item.source) for item in listed] == [(transaction.id, held.latest_charge)]


@pytest.mark.parametrize("amount", [1, 30, 31])
def test_the_fee_never_exceeds_the_charge_and_net_is_never_negative(node: NodeProcess, fresh_merchant: dict, amount: int) -> None:
    # Small charges in a currency without a published minimum: the fee is
    # capped at the amount.
    with _http(node, fresh_merchant) as http:
        paid = _ok(http.post("/v1/payment_intents", data={
            "amount": str(amount), "currency": "zar", "payment_method": "pm_card_visa", "confirm": "true",
            "expand[]": "latest_charge.balance_transaction",
        }))
    transaction = paid["latest_charge"]["balance_transaction"]
    assert transaction["fee"] == ledger.fee_minor(amount) <= amount
    assert transaction["net"] == amount - transaction["fee"] >= 0
