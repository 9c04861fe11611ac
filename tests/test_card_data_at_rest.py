"""Attacks on a copy of the database: nothing in it gives back a card number or a CVC.

The attack that opened this file: idempotency records stored a plain SHA-256
of each request's parameters, card number and CVC included, next to a body
showing the last four digits and the expiry. With the BIN known, trying every
candidate number and CVC against the digest took four minutes. Fingerprints
are now HMACs under a key derived from the vault's master key, over the
parameters with the card number replaced by its keyed card fingerprint and
the CVC dropped; records from before are rewritten at start.
"""

from __future__ import annotations

import asyncio
import base64
import glob
import hashlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import msgspec

from gateway.forms import decode_form
from shards import idempotency
from shards.idempotency import IdempotencyRecords
from shards.vault import Vault
from store.memory import MemoryStore
from store.rows import IdempotencyRow
from tests.conftest import NodeProcess

PAYMENT_METHODS = "/v1/payment_methods"

# (number as typed, CVC, expiry month): Stripe test cards of four brands and
# one that is declined, one typed with spaces as a cardholder would.
CARDS = [
    ("4242 4242 4242 4242", "737", "4"),
    ("5555555555554444", "918", "7"),
    ("378282246310005", "7351", "11"),
    ("4000056655665556", "265", "2"),
    ("4000000000000002", "482", "9"),
]
DECLINED = "4000000000000002"


def card_form(number: str, cvc: str | None, exp_month: str) -> dict[str, str]:
    form = {"type": "card", "card[number]": number, "card[exp_month]": exp_month, "card[exp_year]": "2040"}
    if cvc is not None:
        form["card[cvc]"] = cvc
    return form


def decoded(form: dict[str, str]) -> dict[str, Any]:
    """The parameters exactly as the gateway decodes the form it is sent."""
    return decode_form(urlencode(form).encode())


def old_fingerprint(method: str, path: str, params: dict[str, Any]) -> bytes:
    """What the code before keyed fingerprints stored, written out again here
    so this test does not trust the module it checks."""
    return hashlib.sha256(method.encode() + b" " + path.encode() + b" " + msgspec.json.Encoder(order="sorted").encode(params)).digest()


# ------------------------------------------------------------ the hashed input


def test_a_cvc_does_not_change_the_idempotency_fingerprint_and_the_number_is_not_hashed() -> None:
    vault = Vault(bytes(range(32)))
    records = IdempotencyRecords(MemoryStore(), vault)
    spaced = decoded(card_form("4242 4242 4242 4242", "737", "4"))
    with_cvc = records.fingerprint("POST", PAYMENT_METHODS, spaced)

    hashed = idempotency.fingerprint_input("POST", PAYMENT_METHODS, spaced, vault.fingerprint)
    assert b"4242424242424242" not in hashed and b"4242 4242" not in hashed and b"42424242" not in hashed
    assert b"cvc" not in hashed and b"737" not in hashed
    assert vault.fingerprint("4242424242424242").encode() in hashed  # the number's keyed stand-in
    assert spaced["card"]["cvc"] == "737" and spaced["card"]["number"] == "4242 4242 4242 4242"  # not modified

    assert len(with_cvc) == 33 and with_cvc[0] == idempotency.FINGERPRINT_KEYED
    assert records.fingerprint("POST", PAYMENT_METHODS, decoded(card_form("4242424242424242", None, "4"))) == with_cvc
    assert records.fingerprint("POST", PAYMENT_METHODS, decoded(card_form("4242424242424242", "999", "4"))) == with_cvc
    assert records.fingerprint("POST", PAYMENT_METHODS, decoded(card_form("5555555555554444", "737", "4"))) != with_cvc
    assert records.fingerprint("POST", PAYMENT_METHODS, decoded(card_form("4242424242424242", "737", "5"))) != with_cvc
    assert records.fingerprint("POST", "/v1/other", spaced) != with_cvc
    assert IdempotencyRecords(MemoryStore(), Vault(bytes(32))).fingerprint("POST", PAYMENT_METHODS, spaced) != with_cvc
    assert old_fingerprint("POST", PAYMENT_METHODS, spaced) not in with_cvc

    # A card object deeper in the parameters is treated the same way.
    nested = {"payment_method_data": {"type": "card", "card": {"number": "4242424242424242", "cvc": "737"}}}
    nested_input = idempotency.fingerprint_input("POST", "/v1/x", nested, vault.fingerprint)
    assert b"4242424242424242" not in nested_input and b"737" not in nested_input


# ----------------------------------------------------------- the database dump


def pg_dump_path() -> str | None:
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"), key=lambda path: int(Path(path).parts[-3]))
    return versions[-1] if versions else shutil.which("pg_dump")


def dump_database(database_url: str) -> str:
    """Every row of every table as text: pg_dump if there is one, else each
    table's rows through asyncpg."""
    pg_dump = pg_dump_path()
    if pg_dump is not None:
        return subprocess.run(
            [pg_dump, "--no-owner", "--dbname", database_url], capture_output=True, text=True, timeout=120, check=True
        ).stdout

    async def rows() -> str:
        connection = await asyncpg.connect(database_url)
        try:
            tables = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            lines = []
            for table in tables:
                for row in await connection.fetch(f'SELECT t::text FROM "{table["tablename"]}" t'):
                    lines.append(f"{table['tablename']}: {row[0]}")
            return "\n".join(lines)
        finally:
            await connection.close()

    return asyncio.run(rows())


def with_bytea_decoded(dump: str) -> str:
    """The dump, followed by every bytea value in it decoded (response bodies
    and event payloads are JSON stored as bytea, shown as hex)."""
    values = re.findall(r"\\x([0-9a-fA-F]+)", dump)
    return dump + "\n" + "\n".join(bytes.fromhex(value[: len(value) // 2 * 2]).decode("latin-1") for value in values)


def base64_cores(data: bytes) -> list[str]:
    """What `data` looks like inside any base64 text, at each of the three
    alignments it can start at (the characters that do not depend on what
    surrounds it), standard and URL-safe alphabets."""
    cores = []
    for shift in range(3):
        encoded = base64.b64encode(bytes(shift) + data).decode()
        # Characters are 6 bits: keep those whose bits all come from `data`.
        start, end = -(-8 * shift // 6), 8 * (shift + len(data)) // 6
        core = encoded[start:end]
        cores += [core, core.replace("+", "-").replace("/", "_")]
    return cores


def digests(data: bytes) -> list[bytes]:
    return [hashlib.sha256(data).digest(), hashlib.sha1(data).digest(), hashlib.md5(data).digest()]


def secret_forms(name: str, data: bytes) -> dict[str, str]:
    """Needles for a secret: its hex (any case: searched lowercased) and base64."""
    needles = {f"{name} hex": data.hex()}
    needles.update({f"{name} base64 #{index}": core for index, core in enumerate(base64_cores(data))})
    return needles


def pan_needles(number: str) -> dict[str, str]:
    digits = number.replace(" ", "")
    groups = [digits[i : i + 4] for i in range(0, len(digits), 4)]
    amex = [digits[:4], digits[4:10], digits[10:]]
    needles = {
        "pan": digits,
        "pan spaced": " ".join(groups),
        "pan spaced as amex": " ".join(amex),
        "pan dashed": "-".join(groups),
        # More than the BIN and last four together: a number with a gap.
        "pan first 12": digits[:12],
    }
    needles.update(secret_forms("pan", digits.encode()))
    for index, digest in enumerate(digests(digits.encode())):
        needles.update(secret_forms(f"pan digest #{index}", digest))
    return needles


def cvc_patterns(cvc: str) -> dict[str, re.Pattern[str]]:
    patterns = {
        "cvc next to its name": re.compile(r"cvc[^0-9a-z]{0,12}" + cvc + r"(?![0-9])", re.IGNORECASE),
        "cvc as a quoted value": re.compile(r"[\"']" + cvc + r"[\"']"),
    }
    for index, digest in enumerate(digests(cvc.encode())):
        for name, needle in secret_forms(f"cvc digest #{index}", digest).items():
            patterns[name] = re.compile(re.escape(needle), re.IGNORECASE)
    return patterns


def leaks(haystack: str, needles: dict[str, str], patterns: dict[str, re.Pattern[str]]) -> list[str]:
    lowered = haystack.lower()
    found = [name for name, needle in needles.items() if needle in haystack or needle.lower() in lowered]
    return found + [name for name, pattern in patterns.items() if pattern.search(haystack)]


def test_the_needle_search_finds_every_form_it_looks_for() -> None:
    """The dump test is only as good as its search: plant each form and see it found."""
    number, cvc = "378282246310005", "7351"
    needles, patterns = pan_needles(number), cvc_patterns(cvc)
    for name, needle in needles.items():
        assert name in leaks(f"x{needle}y", needles, {}), name
    for shift in range(3):
        planted = base64.b64encode(b"ab"[:shift] + number.encode() + b"tail").decode()
        assert leaks(planted, needles, {}), shift
    # A JSON body kept as bytea, as pg_dump shows it: found once decoded.
    shown = "\\\\x" + msgspec.json.encode({"number": number}).hex()
    assert not leaks(shown, {"pan": number}, {}) and leaks(with_bytea_decoded(shown), {"pan": number}, {}) == ["pan"]
    assert leaks('{"card": {"cvc": "7351"}}', {}, patterns) == ["cvc next to its name", "cvc as a quoted value"]
    assert leaks(hashlib.sha1(b"7351").hexdigest().upper(), {}, patterns) == ["cvc digest #1 hex"]
    assert not leaks("pi_7351abc 73510 card ending 0005", needles, patterns)


def test_a_database_dump_gives_back_no_card_number_cvc_or_unkeyed_digest(new_node, database_url: str, tmp_path: Path) -> None:
    node: NodeProcess = new_node(database_url, tmp_path)
    requests: list[tuple[str, dict[str, Any]]] = []
    methods: list[dict[str, Any]] = []
    intents: list[dict[str, Any]] = []
    with httpx.Client(base_url=node.url, auth=(node.secret_key, ""), timeout=30) as client:

        def post(path: str, form: dict[str, str], key: str) -> httpx.Response:
            requests.append((path, decoded(form)))
            return client.post(path, data=form, headers={"Idempotency-Key": key})

        for index, (number, cvc, exp_month) in enumerate(CARDS):
            created = post(PAYMENT_METHODS, card_form(number, cvc, exp_month), f"pm-{index}")
            assert created.status_code == 200, created.text
            methods.append(created.json())
            # A retry is the same request, whatever CVC it carries.
            retried = post(PAYMENT_METHODS, card_form(number, str(int(cvc) + 1), exp_month), f"pm-{index}")
            assert retried.content == created.content and retried.headers["Idempotent-Replayed"] == "true"
        refused = post(PAYMENT_METHODS, card_form("5555555555554444", "918", "4"), "pm-0")
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "idempotency_key_reused"
        mistyped = post(PAYMENT_METHODS, card_form("4242424242424241", "737", "4"), "pm-typo")
        assert mistyped.status_code == 402

        for index, method in enumerate(methods):
            form = {"amount": str(1000 + index), "currency": "usd", "payment_method": method["id"], "confirm": "true"}
            paid = post("/v1/payment_intents", form, f"pay-{index}")
            declined = CARDS[index][0] == DECLINED
            assert paid.status_code == (402 if declined else 200), paid.text
            intents.append(paid.json()["error"]["payment_intent"] if declined else paid.json())
        assert intents[0]["status"] == "succeeded"
        refund = post("/v1/refunds", {"payment_intent": intents[0]["id"]}, "refund-0")
        assert refund.status_code == 200, refund.text
    assert node.stop() == 0

    dump = dump_database(database_url)
    haystack = with_bytea_decoded(dump)

    # The dump holds what it should: otherwise finding nothing proves nothing.
    vault = Vault.from_config(tmp_path)
    for (number, _, _), method in zip(CARDS, methods):
        assert method["id"] in haystack and method["card"]["last4"] == number[-4:]
        assert f'"last4":"{number[-4:]}"' in haystack and method["card"]["fingerprint"] in haystack
    for intent in intents:
        assert intent["id"] in haystack
    assert "refund-0" in haystack and refund.json()["id"] in haystack
    expected = idempotency.fingerprint(vault.idempotency_key, "POST", PAYMENT_METHODS, requests[0][1], vault.fingerprint)
    assert expected.hex() in dump  # the stored fingerprint is the keyed one, shown as hex

    needles: dict[str, str] = {}
    patterns: dict[str, re.Pattern[str]] = {}
    for number, cvc, _ in [*CARDS, ("4242424242424241", "737", "4")]:
        needles.update({f"{name} of {number[-4:]}": needle for name, needle in pan_needles(number).items()})
        # The CVC of each retry too: it was sent, so it must not be kept either.
        for sent in (cvc, str(int(cvc) + 1)):
            patterns.update({f"{name} ({sent})": pattern for name, pattern in cvc_patterns(sent).items()})
    for index, (path, params) in enumerate(requests):
        needles.update({f"old fingerprint of request {index}: {name}": needle for name, needle in secret_forms("", old_fingerprint("POST", path, params)).items()})
    assert leaks(haystack, needles, patterns) == []


# ------------------------------------------------------------------ migration


async def read_row(database_url: str, key: str) -> asyncpg.Record:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchrow("SELECT merchant_id, fingerprint FROM idempotency_keys WHERE key = $1", key)
    finally:
        await connection.close()


async def write_fingerprint(database_url: str, key: str, fingerprint: bytes) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("UPDATE idempotency_keys SET fingerprint = $2 WHERE key = $1", key, fingerprint)
    finally:
        await connection.close()


def test_a_legacy_unkeyed_fingerprint_is_rekeyed_at_start_and_its_retry_still_replays(new_node, database_url: str, tmp_path: Path) -> None:
    form = card_form("4242424242424242", "737", "4")
    first = new_node(database_url, tmp_path)
    with httpx.Client(base_url=first.url, auth=(first.secret_key, ""), timeout=30) as client:
        original = client.post(PAYMENT_METHODS, data=form, headers={"Idempotency-Key": "before-keying"})
    assert original.status_code == 200
    assert first.stop() == 0
    # What the code before keying stored for this request: the same row,
    # with a bare SHA-256 of the raw parameters, card number and CVC in them.
    legacy = old_fingerprint("POST", PAYMENT_METHODS, decoded(form))
    asyncio.run(write_fingerprint(database_url, "before-keying", legacy))
    assert asyncio.run(read_row(database_url, "before-keying"))["fingerprint"] == legacy

    second = new_node(database_url, tmp_path)
    rewritten = bytes(asyncio.run(read_row(database_url, "before-keying"))["fingerprint"])
    vault = Vault.from_config(tmp_path)
    assert len(rewritten) == 33 and rewritten[0] == idempotency.FINGERPRINT_LEGACY
    assert legacy not in rewritten and legacy.hex() not in dump_database(database_url).lower()
    assert rewritten == idempotency.rekeyed_legacy(vault.idempotency_key, legacy)

    with httpx.Client(base_url=second.url, auth=(second.secret_key, ""), timeout=30) as client:
        retry = client.post(PAYMENT_METHODS, data=form, headers={"Idempotency-Key": "before-keying"})
        other = client.post(PAYMENT_METHODS, data={**form, "card[exp_month]": "5"}, headers={"Idempotency-Key": "before-keying"})
    assert retry.status_code == 200 and retry.content == original.content and retry.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 400
    assert (other.json()["error"]["type"], other.json()["error"]["code"]) == ("idempotency_error", "idempotency_key_reused")


async def test_rekeying_rewrites_every_legacy_row_in_bounded_batches_and_only_those(store) -> None:
    vault = Vault(bytes(range(32)))
    for backend in (store, MemoryStore()):
        records = IdempotencyRecords(backend, vault)
        forms = {f"old-{index}": card_form("4242424242424242", str(100 + index), "4") for index in range(5)}
        legacy = {key: old_fingerprint("POST", PAYMENT_METHODS, decoded(form)) for key, form in forms.items()}
        keyed = {f"new-{index}": records.fingerprint("POST", PAYMENT_METHODS, decoded(card_form("5555555555554444", None, str(index + 1)))) for index in range(2)}
        rows = [
            IdempotencyRow(merchant, key, fingerprint, 200, b"{}", None, 2**40)
            for merchant in ("acct_a", "acct_b")
            for key, fingerprint in {**legacy, **keyed}.items()
        ]
        await backend.journal.append(0, [], idempotency=rows)

        assert await idempotency.rekey_legacy_fingerprints(backend, vault, batch_rows_max=3) == 10
        stored = {(merchant, key): fingerprint for merchant, key, fingerprint in await backend.idempotency.fingerprints_after(("", ""), 100)}
        assert len(stored) == 14
        for (merchant, key), fingerprint in stored.items():
            if key in keyed:
                assert fingerprint == keyed[key]
                continue
            assert fingerprint == idempotency.rekeyed_legacy(vault.idempotency_key, legacy[key])
            assert records.matches(fingerprint, "POST", PAYMENT_METHODS, decoded(forms[key]))
            assert not records.matches(fingerprint, "POST", PAYMENT_METHODS, decoded({**forms[key], "card[exp_month]": "5"}))
        assert await idempotency.rekey_legacy_fingerprints(backend, vault, batch_rows_max=3) == 0
