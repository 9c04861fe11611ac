"""Card numbers never reach a log, an error message or a plain-text column.

The gateway runs in-process here (quart's test client) on a real node and a
real PostgreSQL, so the logs can be captured and the tables searched.
"""

from __future__ import annotations

import base64

import msgspec
import pytest
import trio
from cryptography.exceptions import InvalidTag
from structlog.testing import capture_logs

from gateway.app import create_app
from shards.merchants import create_merchant
from shards.node import NodeConfig, run_node
from shards.vault import Vault
from simulators.card_network import CardNetwork

NUMBER = "4000000000009995"


def json_values(value: object) -> list[object]:
    if isinstance(value, dict):
        return [leaf for child in value.values() for leaf in json_values(child)]
    if isinstance(value, list):
        return [leaf for child in value for leaf in json_values(child)]
    return [value]  # insufficient funds: exercises the decline path too


def test_vault_round_trip_is_bound_to_its_payment_method() -> None:
    vault = Vault(bytes(32))
    sealed = vault.seal(NUMBER, "pm_a")
    assert NUMBER.encode() not in sealed
    assert vault.unseal(sealed, "pm_a") == NUMBER
    with pytest.raises(InvalidTag):  # cryptography's, and it carries no message
        vault.unseal(sealed, "pm_b")
    assert vault.seal(NUMBER, "pm_a") != sealed  # fresh nonce every time


def test_fingerprint_is_keyed_and_stable() -> None:
    one, other = Vault(bytes(32)), Vault(bytes(range(32)))
    assert one.fingerprint(NUMBER) == one.fingerprint(NUMBER)
    assert one.fingerprint(NUMBER) != one.fingerprint("4242424242424242")
    assert one.fingerprint(NUMBER) != other.fingerprint(NUMBER)
    assert NUMBER not in one.fingerprint(NUMBER)


def test_card_key_file_is_private_and_reused(tmp_path) -> None:
    first = Vault.from_config(tmp_path, environ={})
    key_file = tmp_path / "card.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    second = Vault.from_config(tmp_path, environ={})
    assert second.unseal(first.seal(NUMBER, "pm_x"), "pm_x") == NUMBER
    configured = Vault.from_config(tmp_path, environ={"PAYMENTS_CARD_KEY": base64.b64encode(bytes(32)).decode()})
    assert configured.fingerprint(NUMBER) == Vault(bytes(32)).fingerprint(NUMBER)


async def test_card_number_is_nowhere_in_clear(store) -> None:
    keys = await create_merchant(store, "Secrecy shop")
    vault = Vault(bytes(range(32)))
    auth = {"Authorization": f"Bearer {keys.secret_key}"}
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            node = await nursery.start(run_node, store, vault, CardNetwork(seed=1), NodeConfig(partitions=4))
            app = create_app(node)
            async with app.test_app() as test_app:
                client = test_app.test_client()
                created = await client.post(
                    "/v1/payment_methods",
                    form={"type": "card", "card[number]": NUMBER, "card[exp_month]": "4", "card[exp_year]": "2040", "card[cvc]": "321"},
                    headers=auth,
                )
                assert created.status_code == 200
                method = await created.get_json()
                declined = await client.post(
                    "/v1/payment_intents",
                    form={"amount": "500", "currency": "usd", "payment_method": method["id"], "confirm": "true"},
                    headers=auth,
                )
                assert declined.status_code == 402
                bad = await client.post(
                    "/v1/payment_methods",
                    form={"type": "card", "card[number]": NUMBER[:-1] + "4", "card[exp_month]": "4", "card[exp_year]": "2040"},
                    headers=auth,
                )
                assert bad.status_code == 402
                bodies = [await response.get_data(as_text=True) for response in (created, declined, bad)]
            node.stop_accepting()
    assert method["card"]["last4"] == NUMBER[-4:]
    for body in bodies:
        assert NUMBER not in body and NUMBER[:-1] not in body
        # The CVC must not be any value of the response (ids may contain its digits by chance).
        assert "321" not in json_values(msgspec.json.decode(body))
    assert logs, "the node logged nothing; this test would prove nothing"
    assert NUMBER[:12] not in repr(logs)

    async def dump(query: str) -> str:
        async def run(connection):  # runs on the asyncio side of the bridge
            return "\n".join(str(tuple(row)) for row in await connection.fetch(query))

        return await store.database.call(run)

    tables = await dump("SELECT payment_methods::text FROM payment_methods") + await dump("SELECT journal::text FROM journal")
    assert method["id"] in tables
    assert NUMBER not in tables and NUMBER[:12] not in tables
    assert "'321'" not in tables and '"321"' not in tables
