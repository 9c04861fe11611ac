"""Card key rotation: envelope encryption, `payments vault rotate-key`, the
re-wrap job, retirement, cards sealed before key versions, and a wrong
master key.

Nodes run in-process on a real PostgreSQL (the gateway through quart's test
client) next to their workers, and the commands run as an operator runs
them. The card network records every number it is sent, so a payment that
succeeds is also shown to have carried the right number.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from structlog.testing import capture_logs

from engine import cards, ids
from engine.network import AuthorizationRequest, NetworkAnswer
from gateway.app import create_app
from payments import cli
from shards.merchants import MerchantKeys, create_merchant
from shards.node import Node, NodeConfig, run_node
from shards.vault import CardKeyRetired, CardKeys, Vault, VaultKeyError, open_card, rewrap_card, seal_card
from simulators.card_network import CardNetwork
from store.errors import StoreUnavailable
from store.memory import MemoryStore
from store.rows import PaymentMethodRow
from store.vault_keys import SEALED_BYTES, KeyVersionRetired, VaultKeys, key_version_of
from tests.conftest import REDIS_URL
from workers.card_rewrap import RewrapBounds, rewrap_step
from workers.node_workers import NodeWorkerBounds, run_node_workers

MASTER = bytes(range(32))
OTHER = bytes(range(1, 33))
MASTER_B64 = base64.b64encode(MASTER).decode()
OTHER_B64 = base64.b64encode(OTHER).decode()

# Cards that pay in test mode, of several brands and lengths.
OLD_NUMBERS = ["4242424242424242", "5555555555554444", "378282246310005", "4000056655665556", "6011111111111117"]
NEW_NUMBERS = ["5200828282828210", "4012888888881881"]

FAST_REWRAP = NodeWorkerBounds(card_rewrap=RewrapBounds(batch_cards_max=2, batch_pause_s=0.01, idle_s=0.05, retire_after_s=0.0))


class RecordingNetwork(CardNetwork):
    """The simulator, noting the number of every authorization it is sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.numbers: list[str] = []

    async def authorize(self, request: AuthorizationRequest) -> NetworkAnswer:
        self.numbers.append(request.card_number)
        return await super().authorize(request)


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 20.0) -> Any:
    """Poll an async check until it returns something truthy."""
    with trio.move_on_after(timeout_s):
        while not (value := await check()):
            await trio.sleep(0.05)
        return value
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def sql(store: Any, query: str, *args: Any) -> list[asyncpg.Record]:
    async def run(connection: asyncpg.Connection) -> list[asyncpg.Record]:
        return await connection.fetch(query, *args)

    return await store.database.call(run)


async def cards_by_id(store: Any) -> dict[str, asyncpg.Record]:
    rows = await sql(store, "SELECT * FROM payment_methods")
    return {row["id"]: row for row in rows}


async def states(store: Any) -> dict[int, tuple[str, bool, bool]]:
    """version -> (state, usable, has a wrapped key)."""
    rows = await sql(store, "SELECT version, state, usable, wrapped_key IS NOT NULL AS wrapped FROM vault_key_versions")
    return {row["version"]: (row["state"], row["usable"], row["wrapped"]) for row in rows}


@asynccontextmanager
async def serving(store: Any, network: CardNetwork, *, workers: bool = True, refresh_s: float = 0.2):  # type: ignore[no-untyped-def]
    """A node with its workers (the re-wrap job quick) and a test client."""
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(run_node, store, Vault(MASTER), network, NodeConfig(partitions=4))
        node.payment_methods.keys.refresh_s = refresh_s
        if workers:
            await nursery.start(run_node_workers, node, None, FAST_REWRAP)
        async with create_app(node).test_app() as test_app:
            yield node, test_app.test_client()
        node.stop_accepting()


async def new_card(client: Any, merchant: MerchantKeys, number: str) -> str:
    response = await client.post(
        "/v1/payment_methods",
        form={"type": "card", "card[number]": number, "card[exp_month]": "12", "card[exp_year]": "2040", "card[cvc]": "123"},
        headers={"Authorization": f"Bearer {merchant.secret_key}"},
    )
    assert response.status_code == 200, await response.get_data(as_text=True)
    return (await response.get_json())["id"]


async def pay(client: Any, merchant: MerchantKeys, payment_method_id: str) -> str:
    response = await client.post(
        "/v1/payment_intents",
        form={"amount": "1250", "currency": "usd", "payment_method": payment_method_id, "confirm": "true"},
        headers={"Authorization": f"Bearer {merchant.secret_key}"},
    )
    assert response.status_code == 200, await response.get_data(as_text=True)
    return (await response.get_json())["status"]


def vault_command(data_dir: Path, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "payments.cli", "vault", *arguments, "--data-dir", str(data_dir)]


def command_environ(database_url: str, key: str | None = MASTER_B64) -> dict[str, str]:
    environ = {name: value for name, value in os.environ.items() if name != "PAYMENTS_CARD_KEY"}
    environ["PAYMENTS_DATABASE_URL"] = database_url
    if key is not None:
        environ["PAYMENTS_CARD_KEY"] = key
    return environ


# ------------------------------------------------------------ the sealed value


def test_a_card_is_sealed_under_a_key_of_its_own_bound_to_its_version_and_its_id() -> None:
    version_key = AESGCM(os.urandom(32))
    short, long = seal_card(7, version_key, "378282246310005", "pm_a"), seal_card(7, version_key, "4000056655665556111", "pm_a")
    assert len(short) == len(long) == SEALED_BYTES  # the length says nothing of the number's
    assert key_version_of(short) == 7 and open_card(short, version_key, "pm_a") == "378282246310005"
    assert open_card(long, version_key, "pm_a") == "4000056655665556111"
    assert b"378282246310005" not in short
    with pytest.raises(InvalidTag):
        open_card(short, version_key, "pm_b")  # copied onto another row
    relabelled = short[:1] + (8).to_bytes(4, "big") + short[5:]
    assert key_version_of(relabelled) == 8
    with pytest.raises(InvalidTag):
        open_card(relabelled, version_key, "pm_a")  # moved to another version
    with pytest.raises(InvalidTag):
        open_card(short, AESGCM(os.urandom(32)), "pm_a")

    newer = AESGCM(os.urandom(32))
    moved = rewrap_card(short, version_key, 9, newer, "pm_a")
    assert key_version_of(moved) == 9 and open_card(moved, newer, "pm_a") == "378282246310005"
    assert moved[65:] == short[65:]  # the number's ciphertext is kept: it was not opened
    with pytest.raises(InvalidTag):
        open_card(moved, version_key, "pm_a")

    # The format from before versions (any length but 125) is version 0.
    legacy = Vault(MASTER).seal("4242424242424242", "pm_a")
    assert len(legacy) == 44 and key_version_of(legacy) == 0


def test_a_version_key_is_unwrapped_only_by_its_master_key_and_for_its_version() -> None:
    key = os.urandom(32)
    wrapped = Vault(MASTER).wrap_version_key(3, key)
    assert key not in wrapped and Vault(MASTER).unwrap_version_key(3, wrapped) == key
    message = r"^the master key does not open card key version 3: it is not the key this database's cards were sealed with \(check PAYMENTS_CARD_KEY, or card.key in the data dir\)$"
    with pytest.raises(VaultKeyError, match=message):
        Vault(OTHER).unwrap_version_key(3, wrapped)
    with pytest.raises(VaultKeyError, match=r"^the master key does not open card key version 4:"):
        Vault(MASTER).unwrap_version_key(4, wrapped)


# ------------------------------------------------------------ rotation, end to end


async def test_rotation_moves_every_card_to_the_new_version_retires_the_old_one_and_every_card_still_pays(
    store: Any, database_url: str, tmp_path: Path
) -> None:
    merchant = await create_merchant(store, "Rotation shop")
    network = RecordingNetwork(seed=1)
    environ = command_environ(database_url)
    with capture_logs() as logs:
        async with serving(store, network) as (node, client):
            old = [await new_card(client, merchant, number) for number in OLD_NUMBERS]
            assert {row["key_version"] for row in (await cards_by_id(store)).values()} == {1}
            assert await pay(client, merchant, old[0]) == "succeeded"
            # The job retires version 0 (no card was ever sealed before versions).
            await eventually(lambda: _retired(store, 0), "version 0 retired")
            before = await cards_by_id(store)

            rotated = await trio.run_process(vault_command(tmp_path, "rotate-key", "--json"), capture_stdout=True, env=environ)
            assert json.loads(rotated.stdout) == {"version": 2, "live": 2}
            # New cards use version 2 once the node has read it (refresh_s).
            await trio.sleep(0.3)
            new = [await new_card(client, merchant, number) for number in NEW_NUMBERS]
            assert {(await cards_by_id(store))[card]["key_version"] for card in new} == {2}

            await eventually(lambda: _retired(store, 1), "version 1 retired by the re-wrap job")
            after = await cards_by_id(store)
            assert {row["key_version"] for row in after.values()} == {2}
            assert await states(store) == {0: ("retired", False, False), 1: ("retired", False, False), 2: ("active", True, True)}
            for card in old:
                assert after[card]["sealed_number"] != before[card]["sealed_number"]
                # Only the card's key was re-wrapped: the number was not opened to move it.
                assert after[card]["sealed_number"][65:] == before[card]["sealed_number"][65:]
                assert after[card]["fingerprint"] == before[card]["fingerprint"]  # fingerprints survive rotation

            # The node's cache still holds the old sealed values: every card pays.
            network.numbers.clear()
            for card in old + new:
                assert await pay(client, merchant, card) == "succeeded"
            assert network.numbers == OLD_NUMBERS + NEW_NUMBERS

            status = await trio.run_process(vault_command(tmp_path, "status", "--json"), capture_stdout=True, env=environ)
            shown = [json.loads(line) for line in status.stdout.decode().splitlines()]
            assert [(row["version"], row["state"], row["cards"], row["wrapped_key"]) for row in shown] == [
                (0, "retired", 0, None), (1, "retired", 0, None), (2, "active", 7, None)
            ]

        # A node started afresh on the same database loses nothing.
        network.numbers.clear()
        async with serving(store, network, workers=False) as (node, client):
            assert await pay(client, merchant, old[1]) == "succeeded"
            assert await pay(client, merchant, new[1]) == "succeeded"
        assert network.numbers == [OLD_NUMBERS[1], NEW_NUMBERS[1]]

    events = [entry["event"] for entry in logs]
    assert "cards_rewrapped" in events and "card_key_version_retired" in events  # the logs were seen
    # Bounded batches: five cards of version 1 moved two at a time.
    batches = [entry["count"] for entry in logs if entry["event"] == "cards_rewrapped" and entry["version"] == 1]
    assert batches == [2, 2, 1]
    assert not any(number in repr(logs) for number in OLD_NUMBERS + NEW_NUMBERS)
    assert MASTER_B64 not in repr(logs) and MASTER.hex() not in repr(logs)


async def _retired(store: Any, version: int) -> bool:
    return (await states(store)).get(version, ("",))[0] == "retired"


# ------------------------------------------------------------ before key versions


async def downgrade(store: Any) -> None:
    """The schema as it was before key versions."""
    await sql(store, "ALTER TABLE payment_methods DROP CONSTRAINT payment_methods_key_version_fkey")
    await sql(store, "ALTER TABLE payment_methods DROP COLUMN key_version, DROP COLUMN key_usable")
    await sql(store, "DROP TABLE vault_key_versions")


async def legacy_cards(store: Any, vault: Vault, merchant_id: str, numbers: list[str]) -> list[str]:
    """Cards stored as the code before key versions stored them."""
    made = []
    for number in numbers:
        payment_method_id = ids.make_id("pm", 0, time.time_ns() // 1_000_000, os.urandom(ids.RANDOM_BYTES))
        row = PaymentMethodRow(
            payment_method_id, merchant_id, False, cards.brand_of(number), number[-4:], 12, 2040,
            vault.fingerprint(number), vault.seal(number, payment_method_id), int(time.time()),
        )
        await store.merchants.insert_payment_method(row)
        made.append(payment_method_id)
    return made


async def test_a_card_sealed_before_key_versions_pays_after_the_upgrade_and_is_then_sealed_anew(store: Any) -> None:
    merchant = await create_merchant(store, "Legacy shop")
    await downgrade(store)
    legacy = await legacy_cards(store, Vault(MASTER), merchant.id, OLD_NUMBERS[:3])
    before = await cards_by_id(store)
    await store.migrate(4)  # the upgrade
    assert {row["key_version"] for row in (await cards_by_id(store)).values()} == {0}
    assert await states(store) == {0: ("retiring", True, False)}

    network = RecordingNetwork(seed=1)
    async with serving(store, network, workers=False) as (node, client):
        assert await pay(client, merchant, legacy[0]) == "succeeded"
    assert network.numbers == [OLD_NUMBERS[0]]
    assert (await cards_by_id(store))[legacy[0]]["sealed_number"] == before[legacy[0]]["sealed_number"]

    network.numbers.clear()
    async with serving(store, network) as (node, client):
        await eventually(lambda: _retired(store, 0), "version 0 retired once its cards are sealed anew")
        after = await cards_by_id(store)
        assert {row["key_version"] for row in after.values()} == {1}
        assert all(len(row["sealed_number"]) == SEALED_BYTES for row in after.values())
        assert all(after[card]["fingerprint"] == before[card]["fingerprint"] for card in legacy)
        for card in legacy:
            assert await pay(client, merchant, card) == "succeeded"
    assert network.numbers == OLD_NUMBERS[:3]


async def test_a_master_key_that_does_not_open_the_old_cards_is_refused_before_anything_is_made(store: Any) -> None:
    merchant = await create_merchant(store, "Legacy shop")
    [card] = await legacy_cards(store, Vault(MASTER), merchant.id, OLD_NUMBERS[:1])
    keys = CardKeys(VaultKeys(store.database), Vault(OTHER))
    message = rf"^the master key does not open card {card}, sealed before key versions: it is not the key this database's cards were sealed with"
    with pytest.raises(VaultKeyError, match=message):
        await keys.open()
    assert await states(store) == {0: ("retiring", True, False)}  # no version made under the wrong key
    await CardKeys(VaultKeys(store.database), Vault(MASTER)).open()
    assert (await states(store))[1] == ("active", True, True)


# ------------------------------------------------------------ retirement, in both stores


async def _retirement_waits_for_the_last_card(versions: Any, store: Any, merchant_id: str) -> tuple[bytes, AESGCM]:
    """Shared by both stores: returns a card sealed under version 1 after
    version 1 was retired, and the key it was sealed with."""
    keys = CardKeys(versions, Vault(MASTER))
    await keys.open()
    sealed_v1 = await keys.seal(OLD_NUMBERS[0], "pm_first")
    version_1_key = keys._ring.keys[1]
    await store.merchants.insert_payment_method(PaymentMethodRow("pm_first", merchant_id, False, "visa", "4242", 12, 2040, "fp", sealed_v1, 0))
    assert (await keys.rotate()).version == 2
    assert not await versions.retire(1, 0.0)  # a card still uses it
    assert [row.cards for row in await versions.status() if row.version == 1] == [1]
    bounds = RewrapBounds(retire_after_s=0.0)
    assert await rewrap_step(keys, bounds) == 1
    await rewrap_step(keys, bounds)
    assert [(row.version, row.state, row.wrapped_key, row.cards) for row in await versions.status()][:2] == [
        (0, "retired", None, 0), (1, "retired", None, 0)
    ]
    await keys.refresh()
    assert keys.retiring_versions() == [] and keys.active_version == 2
    return seal_card(1, version_1_key, OLD_NUMBERS[1], "pm_late"), version_1_key


async def test_a_version_retires_only_once_no_card_uses_it_and_then_takes_no_card(store: Any) -> None:
    merchant = await create_merchant(store, "Retiring shop")
    late, _ = await _retirement_waits_for_the_last_card(VaultKeys(store.database), store, merchant.id)
    # The database itself refuses either way round; a card refused is told
    # as the memory store tells it, so that its caller seals it again.
    with pytest.raises(KeyVersionRetired, match=r"^card key version 1 is retired$"):
        await store.merchants.insert_payment_method(PaymentMethodRow("pm_late", merchant.id, False, "visa", "4242", 12, 2040, "fp", late, 0))
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="payment_methods_key_version_fkey"):
        await sql(store, "UPDATE vault_key_versions SET state = 'retired', usable = false, wrapped_key = NULL, retiring_at = now(), retired_at = now() WHERE version = 2")


async def test_the_memory_store_retires_a_version_as_postgresql_does() -> None:
    store = MemoryStore()
    late, _ = await _retirement_waits_for_the_last_card(store.vault_keys, store, "acct_x")
    with pytest.raises(KeyVersionRetired, match=r"^card key version 1 is retired$"):
        await store.merchants.insert_payment_method(PaymentMethodRow("pm_late", "acct_x", False, "visa", "4242", 12, 2040, "fp", late, 0))
    assert not await store.vault_keys.retire(2, 0.0)


async def test_while_the_database_is_away_a_node_opens_cards_with_the_keys_it_read_and_seals_none(autojump_clock: Any) -> None:
    store = MemoryStore()
    keys = CardKeys(store.vault_keys, Vault(MASTER), refresh_s=1.0)
    await keys.open()
    sealed = await keys.seal(OLD_NUMBERS[0], "pm_a")
    legacy = Vault(MASTER).seal(OLD_NUMBERS[1], "pm_b")  # version 0 is not retired
    unknown = seal_card(5, AESGCM(os.urandom(32)), OLD_NUMBERS[2], "pm_c")
    store.tables.unavailable = True
    await trio.sleep(2)  # what the node read is old now
    with capture_logs() as logs:
        assert await keys.unseal(sealed, "pm_a") == OLD_NUMBERS[0]
        assert await keys.unseal(legacy, "pm_b") == OLD_NUMBERS[1]
    assert [entry["event"] for entry in logs] == ["card_key_versions_not_read", "card_key_versions_not_read"]
    with pytest.raises(StoreUnavailable):
        await keys.seal(OLD_NUMBERS[0], "pm_d")  # it might not be the active version any more
    with pytest.raises(StoreUnavailable):
        await keys.unseal(unknown, "pm_c")  # a version it never read
    store.tables.unavailable = False
    with pytest.raises(CardKeyRetired, match=r"^card pm_c names card key version 5, which is retired or unknown here$"):
        await keys.unseal(unknown, "pm_c")


# ------------------------------------------------------------ a wrong master key at start


def test_a_node_given_another_master_key_stops_at_start_and_prints_no_key(make_database: Callable[[], str], tmp_path: Path) -> None:
    database_url = make_database()
    environ = command_environ(database_url)
    assert subprocess.run([sys.executable, "-m", "payments.cli", "migrate", "--partitions", "4", "--data-dir", str(tmp_path)],
                          env=environ, capture_output=True, timeout=60).returncode == 0
    made = subprocess.run(vault_command(tmp_path, "rotate-key"), env=environ, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr

    node_environ = {
        **command_environ(database_url, OTHER_B64),
        "PAYMENTS_REDIS_URL": REDIS_URL,
        "PAYMENTS_REDIS_PREFIX": f"payments-test:{os.urandom(6).hex()}:",
        "PAYMENTS_ARCHIVE_EVERY_S": "0",
    }
    started = subprocess.run(
        [sys.executable, "-m", "payments.cli", "up", "--port", "0", "--partitions", "4", "--data-dir", str(tmp_path), "--log-level", "info"],
        env=node_environ, capture_output=True, text=True, timeout=120,
    )
    output = started.stdout + started.stderr
    assert started.returncode == 2, output[-3000:]
    assert "error: the master key does not open card key version 1: it is not the key this database's cards were sealed with" in started.stderr
    assert "listening on" not in started.stdout and "Traceback" not in output
    for key in (MASTER, OTHER):
        for form in (base64.b64encode(key).decode(), key.hex(), base64.urlsafe_b64encode(key).decode()):
            assert form not in output


# ------------------------------------------------------------ the commands' errors


@pytest.fixture
def operator(
    make_database: Callable[[], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """Runs `payments ...` in-process, as an operator would, against a fresh
    database and the test's master key; returns (exit status, stdout, stderr)."""
    monkeypatch.setenv("PAYMENTS_DATABASE_URL", make_database())
    monkeypatch.setenv("PAYMENTS_CARD_KEY", MASTER_B64)

    def run(*arguments: str) -> tuple[int, str, str]:
        status = cli.main([*arguments, "--data-dir", str(tmp_path)])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def test_rotate_key_refuses_a_database_never_migrated(operator: Callable[..., tuple[int, str, str]]) -> None:
    status, out, err = operator("vault", "rotate-key")
    assert (status, out) == (2, "")
    assert err == "error: the database has no card key versions yet: run `payments migrate` or start a node first\n"
    assert operator("vault", "status")[0] == 2


def test_rotate_key_without_a_master_key_says_so_and_makes_none(
    operator: Callable[..., tuple[int, str, str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PAYMENTS_CARD_KEY")
    assert operator("migrate", "--partitions", "4")[0] == 0
    status, out, err = operator("vault", "rotate-key")
    assert (status, out) == (2, "")
    assert err == f"error: no master key: PAYMENTS_CARD_KEY is not set and there is no {tmp_path / 'card.key'}\n"
    assert not (tmp_path / "card.key").exists()  # a new key would open nothing already sealed
    monkeypatch.setenv("PAYMENTS_CARD_KEY", "not base64 at all!")
    status, _, err = operator("vault", "rotate-key")
    assert (status, err) == (2, "error: PAYMENTS_CARD_KEY is not valid base64\n")


def test_rotate_key_rotates_refuses_past_the_bound_and_refuses_another_master_key(
    operator: Callable[..., tuple[int, str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert operator("migrate", "--partitions", "4")[0] == 0
    status, out, err = operator("vault", "rotate-key", "--json")
    assert (status, json.loads(out), err) == (0, {"version": 1, "live": 2}, "")
    status, out, _ = operator("vault", "rotate-key")
    assert status == 0 and out.startswith("card key version 2 is active: new cards are sealed with it")
    assert operator("vault", "rotate-key")[0] == 0  # versions 0 to 3 live: the bound (4)
    status, out, err = operator("vault", "rotate-key")
    assert (status, out) == (1, "")
    assert err.startswith("error: refused: 4 card key versions are live (at most 4); the re-wrap job of a running node retires")

    status, out, err = operator("vault", "status")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["VERSION", "STATE", "CARDS", "CREATED", "RETIRED"]
    assert [line.split()[:3] for line in lines[1:5]] == [["0", "retiring", "0"], ["1", "retiring", "0"], ["2", "retiring", "0"], ["3", "active", "0"]]
    assert lines[-1] == "4 versions, 0 cards, 0 still to re-wrap"

    monkeypatch.setenv("PAYMENTS_CARD_KEY", OTHER_B64)
    status, out, err = operator("vault", "rotate-key")
    assert (status, out) == (2, "")
    assert err.startswith("error: the master key does not open card key version 1: it is not the key this database's cards were sealed with")
    assert OTHER_B64 not in err and MASTER_B64 not in err


def test_rotate_key_on_an_unreachable_database_is_one_line(operator: Callable[..., tuple[int, str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYMENTS_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nowhere")
    status, out, err = operator("vault", "rotate-key")
    assert (status, out) == (2, "")
    assert err.startswith("error: cannot connect to the database") and err.count("\n") == 1


def test_rotate_key_help_says_what_it_does_and_its_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["vault", "rotate-key", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Make a new card key version and make it the active one." in text
    assert "retires each old version once no card uses it" in text
    assert "exit status: 0 done; 1 refused (too many versions still hold cards: wait for the re-wrap job); 2 no master key" in text


# ------------------------------------------------------------ where numbers open

ROOT = Path(__file__).resolve().parent.parent


def _library_files_with(*needles: str) -> set[str]:
    found = set()
    for package in ("engine", "store", "shards", "workers", "gateway", "payments", "bench", "simulators"):
        for path in (ROOT / package).glob("**/*.py"):
            text = path.read_text()
            if all(needle in text for needle in needles):
                found.add(str(path.relative_to(ROOT)))
    return found


def test_a_card_number_is_opened_only_for_the_network_call() -> None:
    assert _library_files_with("payment_methods.opened(") == {"shards/effects.py"}
    assert _library_files_with("open_card(") == {"shards/vault.py"}
    assert _library_files_with("keys.unseal(") == {"shards/payment_methods.py"}
    # The derived key's `unseal` opens other secrets; on a sealed card
    # number only the vault itself uses it (cards from before versions).
    assert _library_files_with("sealed_number", "unseal(") <= {"shards/vault.py", "shards/payment_methods.py"}
    assert _library_files_with("sealed", "vault.unseal(") >= {"shards/vault.py"}  # the search sees what it looks for
