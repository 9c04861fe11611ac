"""Charges on two nodes: a charge id names its partition (engine/ids.py), so
a retrieval, a capture or a refund by charge reaches the node that holds it,
and the list covers both nodes, expanded by each for its own charges."""

from __future__ import annotations

import httpx

from tests.test_cluster import PAY, cluster, served, two_nodes


async def test_charges_are_read_captured_refunded_and_listed_from_either_node(database_url: str) -> None:
    async with cluster(database_url) as (start, headers, _, _):
        a, b = await two_nodes(start)
        async with httpx.AsyncClient(headers=headers, timeout=30) as http:
            paid = [(await http.post(f"{node.url}/v1/payment_intents", data=PAY)).json() for node in (a, b, a, b)]
            charge_ids = [intent["latest_charge"] for intent in paid]
            assert {a.node.partition_of_intent(intent["id"]) in served(a) for intent in paid} == {True, False}, "charges on both nodes"
            for node in (a, b):
                for intent in paid:
                    charge = (await http.get(f"{node.url}/v1/charges/{intent['latest_charge']}", params={"expand[]": "balance_transaction"})).json()
                    assert (charge["payment_intent"], charge["balance_transaction"]["amount"]) == (intent["id"], 1500), charge
                listed = (await http.get(f"{node.url}/v1/charges", params={"limit": 100, "expand[]": "data.payment_intent"})).json()
                assert sorted(item["id"] for item in listed["data"]) == sorted(charge_ids)
                assert {item["payment_intent"]["id"] for item in listed["data"]} == {intent["id"] for intent in paid}
                # Two at a time, the cursor naming a charge on either node.
                first = (await http.get(f"{node.url}/v1/charges", params={"limit": 2})).json()
                rest = (await http.get(f"{node.url}/v1/charges", params={"limit": 2, "starting_after": first["data"][-1]["id"]})).json()
                assert [item["id"] for item in first["data"] + rest["data"]] == [item["id"] for item in listed["data"]]
            # Refunds by charge, each sent to the node that does not hold it.
            for intent in paid:
                other = b if a.node.partition_of_intent(intent["id"]) in served(a) else a
                refund = await http.post(f"{other.url}/v1/refunds", data={"charge": intent["latest_charge"], "amount": "500"})
                assert refund.status_code == 200 and refund.json()["payment_intent"] == intent["id"], refund.text
            held = (await http.post(f"{a.url}/v1/payment_intents", data={**PAY, "capture_method": "manual"})).json()
            owner_is_a = a.node.partition_of_intent(held["id"]) in served(a)
            captured = await http.post(f"{(b if owner_is_a else a).url}/v1/charges/{held['latest_charge']}/capture")
            assert captured.status_code == 200 and captured.json()["captured"] is True, captured.text
