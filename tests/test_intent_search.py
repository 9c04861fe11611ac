"""GET /v1/payment_intents/search and GET /v1/charges/search on real nodes:
through the official SDK on one node, and over two nodes, each answering
for the partitions of both."""

from __future__ import annotations

import uuid

import httpx
import pytest
import stripe

from tests.conftest import NodeProcess
from tests.test_cluster import PAY, cluster, served, two_nodes


def client_of(node: NodeProcess, keys: dict) -> stripe.StripeClient:
    return stripe.StripeClient(keys["secret_key"], base_addresses={"api": node.url}, max_network_retries=0)


def ids_of(result) -> list[str]:
    return [item.id for item in result.data]


@pytest.fixture
def shop(node: NodeProcess, fresh_merchant: dict) -> dict:
    """A merchant with five intents: three paid (two in eur), one held, one
    waiting for a payment method; each tagged with metadata["n"]."""
    client = client_of(node, fresh_merchant)
    made = {}
    for n, (amount, currency, extra) in enumerate(
        [
            (1000, "usd", {"payment_method": "pm_card_visa", "confirm": True}),
            (2500, "eur", {"payment_method": "pm_card_visa", "confirm": True}),
            (4000, "eur", {"payment_method": "pm_card_mastercard", "confirm": True}),
            (5000, "usd", {"payment_method": "pm_card_visa", "confirm": True, "capture_method": "manual"}),
            (7000, "usd", {}),
        ]
    ):
        intent = client.v1.payment_intents.create(
            params={"amount": amount, "currency": currency, "metadata": {"n": str(n), "shop": "hats"}, **extra}
        )
        made[n] = intent
    return {"client": client, "intents": made, "keys": fresh_merchant}


def search(client: stripe.StripeClient, query: str, **extra):
    return client.v1.payment_intents.search(params={"query": query, **extra})


def test_search_finds_intents_by_status_metadata_amount_and_currency(shop: dict) -> None:
    client, made = shop["client"], shop["intents"]
    ids = {n: intent.id for n, intent in made.items()}
    found = search(client, "status:'succeeded'")
    assert found.object == "search_result" and found.url == "/v1/payment_intents/search"
    # Newest first, as lists are.
    assert ids_of(found) == [ids[2], ids[1], ids[0]] and found.has_more is False and found.next_page is None
    assert ids_of(search(client, 'status:"requires_capture"')) == [ids[3]]
    assert ids_of(search(client, 'metadata["n"]:"4"')) == [ids[4]]
    assert ids_of(search(client, "metadata['n']:'1' OR metadata['n']:'3'")) == [ids[3], ids[1]]
    assert ids_of(search(client, 'currency:"EUR" AND amount>3000')) == [ids[2]]
    assert ids_of(search(client, "amount>=2500 amount<=5000")) == [ids[3], ids[2], ids[1]]
    assert ids_of(search(client, "amount:7000")) == [ids[4]]
    assert ids_of(search(client, '-currency:"usd" -status:"canceled"')) == [ids[2], ids[1]]
    assert ids_of(search(client, 'metadata["shop"]:"hats" -metadata["n"]:"0" status:"succeeded"')) == [ids[2], ids[1]]
    assert ids_of(search(client, 'metadata["missing"]:null amount<1500')) == [ids[0]]
    assert ids_of(search(client, "customer:null amount:1000")) == [ids[0]]
    assert ids_of(search(client, 'metadata["n"]:"9"')) == []
    created = made[0].created
    assert set(ids_of(search(client, f"created>={created} AND created<{created + 3600}"))) == set(ids.values())
    assert ids_of(search(client, f"created<{created}")) == []
    # What was found is the intent as retrieving it shows it.
    (held,) = search(client, 'status:"requires_capture"').data
    assert held.to_dict() == client.v1.payment_intents.retrieve(ids[3]).to_dict()


def test_search_pages_with_next_page_and_the_sdk_pages_through_all(shop: dict) -> None:
    client, made = shop["client"], shop["intents"]
    newest_first = [made[n].id for n in range(4, -1, -1)]
    seen: list[str] = []
    page = search(client, 'metadata["shop"]:"hats"', limit=2)
    while True:
        seen += ids_of(page)
        assert len(page.data) <= 2
        if not page.has_more:
            assert page.next_page is None
            break
        assert page.next_page.startswith("page_")
        page = search(client, 'metadata["shop"]:"hats"', limit=2, page=page.next_page)
    assert seen == newest_first
    everything = [intent.id for intent in search(client, 'metadata["shop"]:"hats"', limit=1).auto_paging_iter()]
    assert everything == newest_first


def test_search_expands_and_sees_only_the_callers_intents(node: NodeProcess, shop: dict, merchant_keys: dict) -> None:
    client = shop["client"]
    (paid,) = search(client, 'metadata["n"]:"0"', expand=["data.latest_charge"]).data
    assert paid.latest_charge.object == "charge" and paid.latest_charge.amount == 1000
    other = client_of(node, merchant_keys)
    assert not set(ids_of(search(other, 'metadata["shop"]:"hats"'))) & {intent.id for intent in shop["intents"].values()}


@pytest.mark.parametrize(
    ("params", "param", "message"),
    [
        ({"query": "status:succeeded"}, "query", "Quote the value of field `status`"),
        ({"query": 'email:"a@b.c"'}, "query", "Field `email` is not a search field of payment intents"),
        ({"query": 'status:"a" AND amount>1 OR amount<2'}, "query", "A search query cannot combine AND and OR"),
        ({"query": ""}, "query", "The search query is empty"),
        ({"query": "x" * 1001}, "query", "Invalid string for parameter query."),
        ({"query": 'status:"a"', "page": "nonsense"}, "page", "Invalid page"),
        ({"query": 'status:"a"', "page": "page_!!!"}, "page", "Invalid page"),
        ({"query": 'status:"a"', "limit": "0"}, "limit", None),
        ({"query": 'status:"a"', "limit": "101"}, "limit", None),
        ({"query": 'status:"a"', "expand[]": "data.amount"}, None, "This property cannot be expanded (data.amount)."),
        ({}, "query", "Missing required param: query."),
        ({"query": 'status:"a"', "sort": "amount"}, "sort", "Received unknown parameter: sort"),
    ],
)
def test_a_bad_search_is_stripe_s_400_naming_the_problem(node: NodeProcess, merchant_keys: dict, params: dict, param, message) -> None:
    answer = httpx.get(f"{node.url}/v1/payment_intents/search", params=params, auth=(merchant_keys["secret_key"], ""), timeout=30)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error.get("param") == param
    if message is not None:
        assert error["message"].startswith(message), error["message"]


def test_the_sdk_hears_a_bad_query_as_an_invalid_request(shop: dict) -> None:
    with pytest.raises(stripe.InvalidRequestError, match=r"Field `amount` takes a whole number") as refused:
        search(shop["client"], "amount>lots")
    assert refused.value.param == "query"


def test_charges_search_by_status_intent_amount_and_flags(shop: dict) -> None:
    client, made = shop["client"], shop["intents"]
    client.v1.refunds.create(params={"payment_intent": made[1].id})
    found = client.v1.charges.search(params={"query": 'status:"succeeded" AND currency:"eur"'})
    assert found.url == "/v1/charges/search"
    assert ids_of(found) == [made[2].latest_charge, made[1].latest_charge]
    assert found.data[0].payment_method_details.card.brand == "mastercard"
    assert ids_of(client.v1.charges.search(params={"query": f'payment_intent:"{made[3].id}"'})) == [made[3].latest_charge]
    assert ids_of(client.v1.charges.search(params={"query": f'refunded:"true" payment_intent:"{made[1].id}"'})) == [made[1].latest_charge]
    assert ids_of(client.v1.charges.search(params={"query": f'refunded:false payment_intent:"{made[1].id}"'})) == []
    assert ids_of(client.v1.charges.search(params={"query": f'disputed:false amount:1000 payment_intent:"{made[0].id}"'})) == [made[0].latest_charge]
    assert ids_of(client.v1.charges.search(params={"query": f'metadata["n"]:"2" payment_intent:"{made[2].id}"'})) == [made[2].latest_charge]
    with pytest.raises(stripe.InvalidRequestError, match=r"Field `customerr` is not a search field of charges"):
        client.v1.charges.search(params={"query": 'customerr:"cus_1"'})


async def test_search_over_two_nodes_finds_and_pages_through_both(database_url: str) -> None:
    tag = uuid.uuid4().hex[:8]
    async with cluster(database_url) as (start, headers, _, _):
        a, b = await two_nodes(start)
        async with httpx.AsyncClient(headers=headers, timeout=30) as http:
            made = []
            for n, node in enumerate((a, b, a, b, a, b)):
                answer = await http.post(f"{node.url}/v1/payment_intents", data={**PAY, "metadata[tag]": tag, "metadata[n]": str(n)})
                made.append(answer.json())
            owners = {a.node.partition_of_intent(intent["id"]) in served(a) for intent in made}
            assert owners == {True, False}, "intents on both nodes"
            newest_first = [intent["id"] for intent in sorted(made, key=lambda i: (i["created"], i["id"]), reverse=True)]
            query = f'metadata["tag"]:"{tag}" AND status:"succeeded"'
            for node in (a, b):
                everything = (await http.get(f"{node.url}/v1/payment_intents/search", params={"query": query, "limit": 100})).json()
                assert [item["id"] for item in everything["data"]] == newest_first
                seen: list[str] = []
                params = {"query": query, "limit": 4}
                while True:
                    page = (await http.get(f"{node.url}/v1/payment_intents/search", params=params)).json()
                    seen += [item["id"] for item in page["data"]]
                    if not page["has_more"]:
                        break
                    params = {"query": query, "limit": 4, "page": page["next_page"]}
                assert seen == newest_first
                charges = (
                    await http.get(f"{node.url}/v1/charges/search", params={"query": f'metadata["tag"]:"{tag}"', "expand[]": "data.payment_intent"})
                ).json()
                assert {item["payment_intent"]["id"] for item in charges["data"]} == set(newest_first)
                odd = (await http.get(f"{node.url}/v1/payment_intents/search", params={"query": 'metadata["n"]:"1" OR metadata["n"]:"4"'})).json()
                assert [item["id"] for item in odd["data"]] == [made[4]["id"], made[1]["id"]]


def test_search_finds_a_customers_intents_and_charges(shop: dict) -> None:
    client = shop["client"]
    customer = client.v1.customers.create(params={"email": "ada@shop.test"})
    other = client.v1.customers.create(params={"email": "bob@shop.test"})
    theirs = [
        client.v1.payment_intents.create(
            params={"amount": amount, "currency": "usd", "customer": customer.id, "payment_method": "pm_card_visa", "confirm": True}
        )
        for amount in (1100, 1200)
    ]
    client.v1.payment_intents.create(params={"amount": 1300, "currency": "usd", "customer": other.id})
    assert ids_of(search(client, f'customer:"{customer.id}"')) == [theirs[1].id, theirs[0].id]
    assert ids_of(search(client, f'customer:"{customer.id}" AND amount<1200')) == [theirs[0].id]
    mine = {intent.id for intent in shop["intents"].values()}
    assert set(ids_of(search(client, f'-customer:"{customer.id}" customer:null', limit=100))) == mine
    found = client.v1.charges.search(params={"query": f'customer:"{customer.id}"'})
    assert ids_of(found) == [theirs[1].latest_charge, theirs[0].latest_charge]


def test_the_module_level_sdk_searches_too(node: NodeProcess, shop: dict) -> None:
    made = shop["intents"]
    stripe.api_key, stripe.api_base = shop["keys"]["secret_key"], node.url
    try:
        found = stripe.PaymentIntent.search(query="status:'succeeded' AND metadata['shop']:'hats'", limit=2)
        assert [item.id for item in found.data] == [made[2].id, made[1].id] and found.has_more
        assert [item.id for item in found.auto_paging_iter()] == [made[2].id, made[1].id, made[0].id]
        charges = stripe.Charge.search(query=f"payment_intent:'{made[0].id}'")
        assert [item.id for item in charges.data] == [made[0].latest_charge]
    finally:
        stripe.api_key, stripe.api_base = None, "https://api.stripe.com"
