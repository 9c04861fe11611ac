"""The card network over HTTP: simulators/service.py and shards/network_client.py.

Each test starts the simulator on a free port inside its own nursery and
talks to it with the node's client, on the real clock: the autojump clock
would jump while a task waits on a socket, so it is used only for the
breaker on its own, where no I/O happens. Where a test over HTTP must let
a cooldown pass, it runs on a mock clock at real speed and jumps it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import msgspec
import pytest
import structlog
import trio
import trio.testing

from engine.network import (
    AuthorizationRequest,
    CaptureRequest,
    NetworkRefused,
    RefundRequest,
)
from shards.network_client import CircuitBreaker, HttpCardNetwork, NetworkOutcomeUnknown
from simulators import faults
from simulators.service import create_app, run_sim

VISA = "4242424242424242"
DECLINED = "4000000000000002"
REFUND_FAILS_LATER = "4000000000005126"
TEST_TIMEOUT_S = 15


@pytest.fixture
def jumping_clock() -> trio.testing.MockClock:
    """Trio's clock at real speed, so sockets keep their real timeouts, which
    the test jumps forward past a wait that is the behaviour under test. It
    jumps only while no call is in flight."""
    return trio.testing.MockClock(rate=1)


def authorization(reference: str, card_number: str = VISA, *, capture: bool = False) -> AuthorizationRequest:
    return AuthorizationRequest(
        reference=reference,
        card_number=card_number,
        exp_month=12,
        exp_year=2099,
        amount_minor=1000,
        currency="usd",
        capture=capture,
    )


@asynccontextmanager
async def simulator(fault_text: str = "", **client_options: Any) -> AsyncIterator[tuple[str, HttpCardNetwork]]:
    """A running simulator and a client of it; both gone on exit."""
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            partial(run_sim, "127.0.0.1", 0, seed=7, faults=faults.parse(fault_text), latency_ms=(1, 3))
        )
        async with HttpCardNetwork(url, **client_options) as client:
            yield url, client
        nursery.cancel_scope.cancel()


async def calls_total(client: HttpCardNetwork) -> int:
    return (await client.faults())["calls_total"]


async def test_authorization_round_trip_approves_and_declines_with_codes():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with simulator() as (_, client):
            approved = await client.authorize(authorization("att_ok"))
            declined = await client.authorize(authorization("att_no", DECLINED))
            recorded = await client.operations()
    assert (approved.reference, approved.approved, approved.code, approved.network) == ("att_ok", True, None, "visa")
    assert (declined.approved, declined.code, declined.decline_code) == (False, "card_declined", "generic_decline")
    assert [(o["reference"], o["approved"]) for o in recorded] == [("att_ok", True), ("att_no", False)]


async def test_a_decline_is_an_answer_and_is_never_retried():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with simulator(retries=2) as (_, client):
            before = await calls_total(client)
            answer = await client.authorize(authorization("att_declined_once", DECLINED))
            after = await calls_total(client)
    assert answer.approved is False
    assert after - before == 1


async def test_error_fault_refuses_and_records_nothing():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with simulator() as (url, client):
            await client.set_faults("error=1")
            with pytest.raises(NetworkRefused, match=r"^the network refused the call \(/v1/authorize\)$"):
                await client.authorize(authorization("att_refused"))
            async with httpx.AsyncClient(base_url=url) as raw:
                capture = CaptureRequest("cp_x", "att_x", 1, "usd")
                refused = await raw.post("/v1/capture", content=msgspec.json.encode(capture))
            recorded = await client.operations()
            report = await client.faults()
    assert (refused.status_code, refused.json()["performed"]) == (503, False)
    assert recorded == []
    assert report["spec"] == "error=1.0"
    assert report["counts"]["error"] == 2


async def test_timeout_after_is_unknown_but_performed_and_inquire_finds_the_approval():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with simulator(call_timeout_s=0.5, retries=2) as (_, client):
            await client.set_faults("timeout_after=1")
            before = await calls_total(client)
            # Our deadline and httpx's are the same length: either may end a try.
            with pytest.raises(NetworkOutcomeUnknown, match=r"^no answer for att_lost_reply after 3 tries: (timeout|ReadTimeout)$"):
                await client.authorize(authorization("att_lost_reply"))
            tries = await calls_total(client) - before
            recorded = await client.operations()
            await client.set_faults("")
            answer = await client.inquire("att_lost_reply")
    # Every retry carried the same reference, so three tries made one operation.
    assert tries == 3
    assert [(o["reference"], o["approved"]) for o in recorded] == [("att_lost_reply", True)]
    assert (answer.reference, answer.approved) == ("att_lost_reply", True)


async def test_timeout_before_is_unknown_and_inquire_closes_the_reference():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with simulator(call_timeout_s=0.5, retries=1) as (_, client):
            await client.set_faults("timeout_before=1")
            with pytest.raises(NetworkOutcomeUnknown, match=r"^no answer for att_lost_call after 2 tries: (timeout|ReadTimeout)$"):
                await client.authorize(authorization("att_lost_call"))
            recorded = await client.operations()
            await client.set_faults("")
            inquiry = await client.inquire("att_lost_call")
            retried = await client.authorize(authorization("att_lost_call"))
    assert recorded == []
    assert inquiry.approved is False
    assert (retried.approved, retried.code) == (False, "reference_closed")


async def test_connection_refused_before_sending_is_refused_for_certain():
    # A port that was free a moment ago and that nobody listens on.
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with trio.fail_after(TEST_TIMEOUT_S):
        async with HttpCardNetwork(f"http://127.0.0.1:{port}", retries=1) as client:
            with pytest.raises(NetworkRefused, match=r"^could not reach the network for att_nobody: ConnectError$"):
                await client.authorize(authorization("att_nobody"))


async def test_breaker_opens_on_refusals_fails_fast_then_half_opens_after_cooldown(jumping_clock):
    options = {"breaker_window": 4, "breaker_error_ratio": 0.5, "breaker_cooldown_s": 0.3}
    with trio.fail_after(TEST_TIMEOUT_S):
        async with simulator(**options) as (_, client):
            await client.set_faults("error=1")
            for number in range(2):
                with pytest.raises(NetworkRefused, match=r"^the network refused the call"):
                    await client.authorize(authorization(f"att_refused_{number}"))
            state_after_refusals = client.breaker_state("visa")
            before = await calls_total(client)
            with pytest.raises(NetworkRefused, match=r"^circuit open for network visa$"):
                await client.authorize(authorization("att_fast_fail"))
            calls_while_open = await calls_total(client) - before
            other_brand = client.breaker_state("default")
            jumping_clock.jump(0.3)
            state_after_cooldown = client.breaker_state("visa")
            # The probe fails too: open again, with a fresh cooldown.
            with pytest.raises(NetworkRefused, match=r"^the network refused the call"):
                await client.authorize(authorization("att_probe_1"))
            state_after_failed_probe = client.breaker_state("visa")
            jumping_clock.jump(0.3)
            await client.set_faults("")
            probe = await client.authorize(authorization("att_probe_2"))
            state_after_good_probe = client.breaker_state("visa")
    assert state_after_refusals == "open"
    assert calls_while_open == 0
    assert other_brand == "closed"
    assert state_after_cooldown == "half_open"
    assert state_after_failed_probe == "open"
    assert probe.approved is True
    assert state_after_good_probe == "closed"


async def test_breaker_needs_half_a_window_before_it_opens(autojump_clock):
    breaker = CircuitBreaker(window=20, error_ratio=0.5, cooldown_s=5.0)
    for _ in range(9):
        breaker.record(failed=True)
    state_after_nine = breaker.state()
    breaker.record(failed=True)
    assert (state_after_nine, breaker.state()) == ("closed", "open")


async def test_breaker_lets_one_probe_through_when_half_open(autojump_clock):
    breaker = CircuitBreaker(window=4, error_ratio=0.5, cooldown_s=5.0)
    breaker.record(failed=True)
    breaker.record(failed=True)
    assert (breaker.state(), breaker.allow()) == ("open", False)
    await trio.sleep(4.9)
    assert breaker.state() == "open"
    await trio.sleep(0.1)
    # First caller becomes the probe; the next is refused until it ends.
    assert [breaker.allow(), breaker.allow()] == [True, False]
    breaker.record(failed=False)
    assert (breaker.state(), breaker.allow()) == ("closed", True)


async def test_breaker_ratio_counts_only_the_last_window(autojump_clock):
    breaker = CircuitBreaker(window=4, error_ratio=0.5, cooldown_s=5.0)
    for failed in (False, False, True, False, False, True, False, True):
        breaker.record(failed=failed)
    # The last four hold two failures: 0.5 is not more than the ratio.
    assert breaker.state() == "closed"
    breaker.record(failed=True)
    assert breaker.state() == "open"


async def test_notice_long_poll_delivers_a_refund_failure():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with simulator() as (url, client):
            charged = await client.authorize(authorization("att_charge", REFUND_FAILS_LATER, capture=True))
            refunded = await client.refund(RefundRequest("re_1", "att_charge", 400, "usd"))
            notice = await client.next_notice()
            async with httpx.AsyncClient(base_url=url) as raw:
                empty = await raw.get("/v1/notices/next", params={"timeout_s": 0.05})
    assert (charged.approved, refunded.approved) == (True, True)
    assert (notice.reference, notice.kind, notice.code) == ("re_1", "refund_failed", "refund_failed")
    assert (empty.status_code, empty.content) == (204, b"")


async def test_capture_and_settlement_over_http():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with simulator() as (_, client):
            await client.authorize(authorization("att_auth"))
            captured = await client.capture(CaptureRequest("cp_1", "att_auth", 700, "usd"))
            settled = await client.settlement()
    assert captured.approved is True
    assert [(o["reference"], o["kind"], o["amount_minor"]) for o in settled] == [("cp_1", "capture", 700)]


async def test_bad_fault_spec_is_a_400_with_the_parse_error():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with simulator() as (url, client):
            async with httpx.AsyncClient(base_url=url) as raw:
                response = await raw.post("/admin/faults", json={"spec": "bogus=1"})
            with pytest.raises(ValueError, match=r"^'error=2': a probability must be a number between 0 and 1$"):
                await client.set_faults("error=2")
            report = await client.faults()
    assert response.status_code == 400
    assert "unknown fault 'bogus'" in response.json()["error"]
    assert report["spec"] == ""


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/authorize", b'{"reference": "att_x", "card_number": '),
        ("/v1/authorize", b'{"reference": "att_x", "card_number": "4242424242424242", "amount_minor": "ten"}'),
        ("/v1/refund", b"[]"),
        ("/v1/inquire", b'{"reference": 5}'),
        ("/admin/faults", b"not json"),
        ("/v1/challenges/att_x", b'{"passed": "yes"}'),
    ],
)
async def test_malformed_body_is_a_400_without_a_traceback(path, body):
    with trio.fail_after(TEST_TIMEOUT_S):
        async with simulator() as (url, client):
            async with httpx.AsyncClient(base_url=url) as raw:
                response = await raw.post(path, content=body, headers={"Content-Type": "application/json"})
            recorded = await client.operations()
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"error"}
    assert "Traceback" not in response.text and "4242424242424242" not in response.text
    assert recorded == []


async def test_unknown_route_and_bad_poll_timeout_are_json_errors():
    with trio.fail_after(TEST_TIMEOUT_S):
        async with simulator() as (url, _), httpx.AsyncClient(base_url=url) as raw:
            missing = await raw.get("/v1/nothing")
            bad_poll = await raw.get("/v1/notices/next", params={"timeout_s": "nan"})
    assert (missing.status_code, set(missing.json())) == (404, {"error"})
    assert (bad_poll.status_code, bad_poll.json()) == (400, {"error": "timeout_s must be a number of seconds, 0 or more"})


async def test_card_number_never_appears_in_operations_settlement_or_logs():
    with trio.fail_after(TEST_TIMEOUT_S):
        with structlog.testing.capture_logs() as logs:
            async with simulator(call_timeout_s=0.5, retries=1) as (url, client):
                await client.authorize(authorization("att_secret", capture=True))
                await client.set_faults("timeout_after=1")
                with pytest.raises(NetworkOutcomeUnknown, match=r"^no answer for att_secret_lost after 2 tries: (timeout|ReadTimeout)$"):
                    await client.authorize(authorization("att_secret_lost"))
                async with httpx.AsyncClient(base_url=url) as raw:
                    operations = (await raw.get("/v1/operations")).content
                    settlement = (await raw.get("/v1/settlement")).content
    assert b"att_secret" in operations and b"att_secret" in settlement
    assert VISA.encode() not in operations and VISA.encode() not in settlement
    assert logs, "the failed tries should have been logged"
    assert VISA not in repr(logs)
    assert msgspec.json.decode(operations)[0]["last4"] == "4242"


class BrokenNetwork:
    """A network with a bug whose message carries a card number."""

    async def authorize(self, request: AuthorizationRequest) -> None:
        raise RuntimeError(f"bug while handling {request.card_number}")


async def test_a_bug_is_a_plain_500_that_leaks_nothing():
    app = create_app(BrokenNetwork())
    body = msgspec.json.encode(authorization("att_bug"))
    with trio.fail_after(TEST_TIMEOUT_S):
        with structlog.testing.capture_logs() as logs:
            response = await app.test_client().post(
                "/v1/authorize", data=body, headers={"Content-Type": "application/json"}
            )
            text = await response.get_data(as_text=True)
    assert (response.status_code, msgspec.json.decode(text)) == (500, {"error": "internal error"})
    assert [(entry["event"], entry["error_type"]) for entry in logs] == [("simulator_request_failed", "RuntimeError")]
    assert VISA not in repr(logs)


async def test_a_refusal_after_a_try_that_may_have_arrived_is_unknown_not_refused() -> None:
    """Regression: a first try lost after the network charged, then a retry
    refused, was reported as refused: the node declined a payment the
    network had approved (found by the PostgreSQL-restart chaos test)."""
    from simulators.card_network import CardNetwork
    from simulators.faults import FaultSpec
    from simulators.service import serve_network

    network = CardNetwork(seed=5, faults=FaultSpec(timeout_after=1.0))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_network, network, "127.0.0.1", 0)
            async with HttpCardNetwork(url, call_timeout_s=0.5, retries=1) as client:
                calls: list[int] = []
                original = network._call

                async def first_lost_then_refused(kind, reference, brand, decide):
                    calls.append(1)
                    if len(calls) == 2:
                        raise NetworkRefused("refused on the retry")
                    return await original(kind, reference, brand, decide)

                network._call = first_lost_then_refused  # type: ignore[method-assign]
                with pytest.raises(NetworkOutcomeUnknown, match=r"^refused after an earlier try of att_lost_then_refused may have arrived$"):
                    await client.authorize(authorization("att_lost_then_refused"))
            assert network.lookup("att_lost_then_refused").approved
            nursery.cancel_scope.cancel()
