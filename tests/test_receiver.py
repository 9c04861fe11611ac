"""The merchant webhook receiver: simulators/receiver.py.

Signatures are made here with the test's own HMAC, so the receiver is
checked against the format, not against itself; one test also hands such a
signature to the official stripe SDK's verifier, so the format is Stripe's.
The HTTP tests run the receiver on a free port on the real clock (the
autojump clock would jump while a task waits on a socket); one that must
let a mode run out jumps a mock clock that otherwise runs at real speed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import httpx
import pytest
import stripe
import trio
import trio.testing

from simulators.receiver import run_receiver, verify_signature

SECRET = "whsec_test_receiver_secret"
TEST_TIMEOUT_S = 15


@pytest.fixture
def jumping_clock() -> trio.testing.MockClock:
    """Trio's clock at real speed, so sockets keep their real timeouts, which
    the test jumps forward past a wait that is the behaviour under test. It
    jumps only while no request is in flight."""
    return trio.testing.MockClock(rate=1)


def signed_header(secret: str, body: bytes, timestamp: int | None = None, *extra_v1: str) -> str:
    """Stripe-Signature for `body`, computed independently of the receiver."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return ",".join([f"t={timestamp}", *(f"v1={v}" for v in extra_v1), f"v1={digest}"])


def event_body(event_id: str = "evt_1", object_id: str = "pi_1", event_type: str = "payment_intent.succeeded") -> bytes:
    return json.dumps(
        {"id": event_id, "object": "event", "type": event_type, "data": {"object": {"id": object_id, "object": "payment_intent"}}}
    ).encode()


def check(header: str | None, body: bytes, secret: str = SECRET, *, now_s: float | None = None) -> str | None:
    return verify_signature(header, body, secret, now_s=time.time() if now_s is None else now_s, tolerance_s=300)


# ------------------------------------------------------------ signatures


def test_a_correctly_signed_body_verifies():
    body = event_body()
    assert check(signed_header(SECRET, body), body) is None


@pytest.mark.parametrize(
    ("make_header", "body", "reason"),
    [
        (lambda: signed_header("whsec_other", event_body()), event_body(), "signature_mismatch"),
        (lambda: signed_header(SECRET, event_body()), event_body("evt_2"), "signature_mismatch"),
        (lambda: signed_header(SECRET, event_body(), int(time.time()) - 400), event_body(), "timestamp_outside_tolerance"),
        (lambda: signed_header(SECRET, event_body(), int(time.time()) + 400), event_body(), "timestamp_outside_tolerance"),
        (lambda: None, event_body(), "missing_signature"),
        (lambda: "v1=abc", event_body(), "malformed_signature"),
        (lambda: "t=12x,v1=abc", event_body(), "malformed_signature"),
        (lambda: "garbage", event_body(), "malformed_signature"),
        (lambda: f"t={int(time.time())},v0=abc", event_body(), "no_v1_signature"),
    ],
    ids=["wrong_secret", "tampered_body", "stale", "future", "missing", "no_t", "bad_t", "garbage", "no_v1"],
)
def test_a_bad_signature_is_refused_with_its_reason(make_header, body, reason):
    # Headers are made when the test runs, not when it is collected, so the
    # clock has not moved between signing and checking.
    assert check(make_header(), body) == reason


def test_one_matching_v1_among_several_is_enough():
    body = event_body()
    assert check(signed_header(SECRET, body, None, "00" * 32, "not-hex"), body) is None


def test_the_signature_format_is_the_one_the_stripe_sdk_verifies():
    body = event_body("evt_sdk", "pi_sdk")
    header = signed_header(SECRET, body)
    event = stripe.Webhook.construct_event(body.decode(), header, SECRET)
    assert (event.id, event.type) == ("evt_sdk", "payment_intent.succeeded")
    assert check(header, body) is None
    with pytest.raises(stripe.SignatureVerificationError):  # the SDK's own text, not ours
        stripe.Webhook.construct_event(body.decode(), signed_header("whsec_other", body), SECRET)


# ------------------------------------------------------------------ HTTP


@asynccontextmanager
async def receiver(secret: str | None = SECRET, **options) -> AsyncIterator[httpx.AsyncClient]:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(run_receiver, "127.0.0.1", 0, secret, **options))
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            yield client
        nursery.cancel_scope.cancel()


async def deliver(client: httpx.AsyncClient, body: bytes, path: str = "/hooks/a", secret: str = SECRET, **options) -> httpx.Response:
    return await client.post(
        path, content=body, headers={"Stripe-Signature": signed_header(secret, body), "Content-Type": "application/json"}, **options
    )


async def recorded(client: httpx.AsyncClient, **params) -> list[dict]:
    response = await client.get("/_control/deliveries", params=params)
    assert response.status_code == 200
    return response.json()["deliveries"]


async def set_mode(client: httpx.AsyncClient, **body) -> None:
    response = await client.post("/_control/mode", json=body)
    assert response.status_code == 200, response.text


async def test_deliveries_are_verified_and_recorded_with_their_event_fields():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with receiver() as client:
            good = await deliver(client, event_body("evt_a", "pi_a"))
            forged = await deliver(client, event_body("evt_b", "pi_b"), secret="whsec_wrong")
            unsigned = await client.post("/hooks/a", content=event_body("evt_c"))
            deliveries = await recorded(client)
    assert [good.status_code, forged.status_code, unsigned.status_code] == [200, 400, 400]
    assert forged.json() == {"error": "signature_mismatch"}
    assert [(d["index"], d["path"], d["event_id"], d["object_id"], d["type"], d["verified"], d["signature_error"], d["status"]) for d in deliveries] == [
        (1, "/hooks/a", "evt_a", "pi_a", "payment_intent.succeeded", True, None, 200),
        (2, "/hooks/a", "evt_b", "pi_b", "payment_intent.succeeded", False, "signature_mismatch", 400),
        (3, "/hooks/a", "evt_c", "pi_1", "payment_intent.succeeded", False, "missing_signature", 400),
    ]
    assert all(abs(d["received_at_ms"] / 1000 - time.time()) < 60 for d in deliveries)


async def test_duplicate_deliveries_are_accepted_and_counted():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with receiver() as client:
            answers = [(await deliver(client, event_body("evt_dup"))).status_code for _ in range(3)]
            await deliver(client, event_body("evt_other"))
            deliveries = await recorded(client)
            only_dup = await recorded(client, event_id="evt_dup")
    assert answers == [200, 200, 200]
    assert [(d["event_id"], d["attempt"]) for d in deliveries] == [("evt_dup", 1), ("evt_dup", 2), ("evt_dup", 3), ("evt_other", 1)]
    assert [d["attempt"] for d in only_dup] == [1, 2, 3]


async def test_secrets_are_per_path_with_a_default_and_none_means_unverified():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with receiver(secret=None, path_secrets={"/hooks/b": "whsec_b"}) as client:
            open_path = await deliver(client, event_body("evt_1"), "/hooks/a", secret="whsec_anything")
            own_secret = await deliver(client, event_body("evt_2"), "/hooks/b", secret="whsec_b")
            response = await client.post("/_control/secrets", json={"path": "/hooks/c", "secret": "whsec_c"})
            assert response.status_code == 200
            set_later = await deliver(client, event_body("evt_3"), "/hooks/c", secret="whsec_c")
            wrong_for_c = await deliver(client, event_body("evt_4"), "/hooks/c", secret="whsec_b")
            response = await client.post("/_control/secrets", json={"secret": "whsec_default"})
            assert response.status_code == 200
            default_now = await deliver(client, event_body("evt_5"), "/hooks/a", secret="whsec_default")
            deliveries = await recorded(client)
    assert [r.status_code for r in (open_path, own_secret, set_later, wrong_for_c, default_now)] == [200, 200, 200, 400, 200]
    assert [(d["verified"], d["signature_error"]) for d in deliveries] == [
        (False, "no_secret"), (True, None), (True, None), (False, "signature_mismatch"), (True, None),
    ]


async def test_fail_mode_answers_its_status_then_reverts_after_count():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with receiver() as client:
            await set_mode(client, mode="fail", status=503, count=2)
            answers = [(await deliver(client, event_body("evt_f"))).status_code for _ in range(3)]
            mode = (await client.get("/_control/mode")).json()
            deliveries = await recorded(client)
    assert answers == [503, 503, 200]
    assert mode == {"mode": "ok"}
    assert [(d["mode"], d["status"], d["attempt"]) for d in deliveries] == [("fail", 503, 1), ("fail", 503, 2), ("ok", 200, 3)]


async def test_fail_mode_for_some_seconds_reverts_by_itself(jumping_clock):
    with trio.fail_after(TEST_TIMEOUT_S):
        async with receiver() as client:
            await set_mode(client, mode="fail", for_s=0.3)
            first = await deliver(client, event_body())
            jumping_clock.jump(0.3)  # the mode's time runs out at once
            later = await deliver(client, event_body())
    assert (first.status_code, later.status_code) == (500, 200)


async def test_slow_mode_answers_ok_after_the_delay():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with receiver() as client:
            await set_mode(client, mode="slow", delay_ms=400, count=1)
            started = trio.current_time()
            slow = await deliver(client, event_body())
            slow_s = trio.current_time() - started
            started = trio.current_time()
            fast = await deliver(client, event_body())
            fast_s = trio.current_time() - started
    assert (slow.status_code, fast.status_code) == (200, 200)
    assert slow_s >= 0.4
    assert fast_s < 0.4


async def test_timeout_mode_holds_the_request_until_the_client_gives_up():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with receiver() as client:
            await set_mode(client, mode="timeout", count=1)
            with pytest.raises(httpx.ReadTimeout):  # httpx's own text, not ours
                await deliver(client, event_body("evt_t"), timeout=0.5)
            after = await deliver(client, event_body("evt_t"))
            deliveries = await recorded(client)
    assert after.status_code == 200
    assert [(d["mode"], d["status"], d["attempt"]) for d in deliveries] == [("timeout", None, 1), ("ok", 200, 2)]


async def test_deliveries_page_by_index_and_reset_forgets_them():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with receiver() as client:
            for number in range(5):
                await deliver(client, event_body(f"evt_{number}"))
            page = (await client.get("/_control/deliveries", params={"after": 1, "limit": 2})).json()
            rest = (await client.get("/_control/deliveries", params={"after": page["next_after"]})).json()
            await set_mode(client, mode="fail")
            assert (await client.post("/_control/reset")).status_code == 200
            mode = (await client.get("/_control/mode")).json()
            emptied = (await client.get("/_control/deliveries")).json()
            again = await deliver(client, event_body("evt_0"))
            deliveries = await recorded(client)
    assert [d["event_id"] for d in page["deliveries"]] == ["evt_1", "evt_2"]
    assert page["next_after"] == 3
    assert [d["event_id"] for d in rest["deliveries"]] == ["evt_3", "evt_4"]
    assert mode == {"mode": "ok"}
    assert emptied["deliveries"] == [] and emptied["last_index"] == 0
    assert again.status_code == 200
    assert [(d["index"], d["attempt"]) for d in deliveries] == [(1, 1)]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/_control/mode", b'{"mode": "explode"}'),
        ("POST", "/_control/mode", b'{"mode": "fail", "status": 200}'),
        ("POST", "/_control/mode", b'{"mode": "fail", "count": 0}'),
        ("POST", "/_control/mode", b'{"mode": "slow", "delay_ms": 999999999}'),
        ("POST", "/_control/mode", b'{"mode": "fail", "for_s": -1}'),
        ("POST", "/_control/mode", b'{"mode": "ok", "count": 3}'),
        ("POST", "/_control/mode", b'{"mode": "fail", "colour": "red"}'),
        ("POST", "/_control/mode", b"not json"),
        ("POST", "/_control/mode", b""),
        ("POST", "/_control/mode", b"[1, 2]"),
        ("POST", "/_control/secrets", b'{"path": "hooks", "secret": "whsec_x"}'),
        ("POST", "/_control/secrets", b'{"path": "/_control/mode", "secret": "whsec_x"}'),
        ("POST", "/_control/secrets", b'{"path": "/a", "secret": ""}'),
        ("POST", "/_control/secrets", b'{"path": "/a"}'),
        ("GET", "/_control/deliveries?after=-1", b""),
        ("GET", "/_control/deliveries?after=abc", b""),
        ("GET", "/_control/deliveries?limit=0", b""),
        ("GET", "/_control/deliveries?limit=100000", b""),
    ],
)
async def test_bad_control_input_is_a_400_with_a_json_error(method, path, body):
    with trio.fail_after(TEST_TIMEOUT_S):
        async with receiver() as client:
            response = await client.request(method, path, content=body)
            mode = (await client.get("/_control/mode")).json()
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    assert mode == {"mode": "ok"}


async def test_unknown_routes_and_methods_answer_json_not_500():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with receiver() as client:
            unknown = await client.post("/_control/nothing", json={})
            wrong_method = await client.get("/hooks/a")
            too_big = await client.post("/hooks/a", content=b"x" * (1024 * 1024 + 1))
    assert (unknown.status_code, wrong_method.status_code, too_big.status_code) == (404, 405, 413)
    assert all("error" in r.json() for r in (unknown, wrong_method, too_big))


def test_the_command_prints_its_url_and_help():
    help_text = subprocess.run(
        [sys.executable, "-m", "simulators.receiver", "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert "/_control/mode" in help_text and "--secret" in help_text
    process = subprocess.Popen(
        [sys.executable, "-m", "simulators.receiver", "--port", "0", "--secret", SECRET, "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = re.match(r"payments receiver: listening on (http://127\.0\.0\.1:\d+)$", line.strip())
        assert url, line
        body = event_body()
        answer = httpx.post(url.group(1) + "/hooks/x", content=body, headers={"Stripe-Signature": signed_header(SECRET, body)}, timeout=5)
        assert answer.status_code == 200
    finally:
        process.terminate()
        assert process.wait(10) == 0
    bad = subprocess.run(
        [sys.executable, "-m", "simulators.receiver", "--port", "70000"], check=False, capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
