"""Events and signed webhooks, end to end: a node, a merchant's receiver,
failures, retries, the dead-letter list and a crash before publishing."""

from __future__ import annotations

import http.server
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from engine import intent as machine
from engine import notifications
from engine.intent import CaptureMethod
from shards.webhooks import EndpointUrlError, check_url
from tests.conftest import REDIS_URL, NodeProcess, create_merchant_keys
from tests.helpers import wait_until
from workers.webhook_delivery import ScheduleError, next_delay_s, parse_schedule
from workers.webhook_sender import signature_header

# The receivers below listen on loopback, which nodes refuse without this.
ALLOW_PRIVATE = "--allow-private-webhooks"

MANUAL_FLOW = [
    "payment_intent.created",
    "payment_intent.processing",
    "payment_intent.amount_capturable_updated",
    "payment_intent.processing",
    "payment_intent.succeeded",
]


# Kept under its old name for the modules that import it from here.
wait_for = wait_until


# ------------------------------------------------------------ pure parts


def run_commands(*commands: machine.Command) -> list[str]:
    """The event types a sequence of commands raises, through decide and evolve."""
    intent = None
    raised: list[str] = []
    for command in commands:
        decision = machine.decide(intent, command)
        assert decision.result is machine.Result.ok, (command, decision.result)
        for event in decision.events:
            after = machine.evolve(intent, event)
            raised += [event_type for event_type, _ in notifications.notices(intent, event, after)]
            intent = after
    return raised


INTENT = "pi_038g0sq9t2001r679mshv15xd0e32"
MERCHANT = "acct_038g0sq35r000n7zrz8syzzsk74mw"
OWNER = {"merchant_id": MERCHANT, "livemode": False}
ATTEMPT = "att_038g0sq9t2001448xeb5ssygd6wby"
CAPTURE = "att_038g0sq9t2001448xeb5ssygd6wbz"


def create(capture_method: CaptureMethod = CaptureMethod.automatic) -> machine.CreateIntent:
    return machine.CreateIntent(
        intent_id=INTENT,
        **OWNER,
        amount=2000,
        currency="usd",
        capture_method=capture_method,
        client_secret=INTENT + "_secret_x",
        at_s=1,
        attempt_id=ATTEMPT,
        payment_method_id="pm_038g0sq9sw000z4q77wbn87cw1700",
        confirm=True,
    )


def test_an_automatic_payment_raises_created_processing_succeeded() -> None:
    assert run_commands(create(), machine.RecordApproval(intent_id=INTENT, attempt_id=ATTEMPT, at_s=2)) == [
        "payment_intent.created",
        "payment_intent.processing",
        "charge.succeeded",
        "payment_intent.succeeded",
    ]


def test_a_manual_capture_raises_amount_capturable_updated_then_succeeded() -> None:
    assert run_commands(
        create(CaptureMethod.manual),
        machine.RecordApproval(intent_id=INTENT, attempt_id=ATTEMPT, at_s=2),
        machine.CaptureIntent(intent_id=INTENT, **OWNER, attempt_id=CAPTURE, at_s=3),
        machine.RecordApproval(intent_id=INTENT, attempt_id=CAPTURE, at_s=4),
    ) == MANUAL_FLOW[:2] + ["charge.succeeded"] + MANUAL_FLOW[2:4] + ["charge.captured"] + MANUAL_FLOW[4:]


def test_a_decline_raises_payment_failed_and_a_3ds_card_requires_action() -> None:
    decline = machine.RecordDecline(
        intent_id=INTENT, attempt_id=ATTEMPT, at_s=2, code="card_declined", decline_code="generic_decline", message="no"
    )
    assert run_commands(create(), decline)[-1] == "payment_intent.payment_failed"
    action = machine.RecordActionRequired(intent_id=INTENT, attempt_id=ATTEMPT, at_s=2, url="https://x.test/3ds")
    assert run_commands(create(), action)[-1] == "payment_intent.requires_action"


def test_refunds_and_disputes_raise_their_events() -> None:
    refund_id = "re_038g0sq9t2001448xeb5ssygd6wc0"
    raised = run_commands(
        create(),
        machine.RecordApproval(intent_id=INTENT, attempt_id=ATTEMPT, at_s=2),
        machine.CreateRefund(intent_id=INTENT, **OWNER, refund_id=refund_id, amount=500, at_s=3),
        machine.RecordApproval(intent_id=INTENT, attempt_id=refund_id, at_s=4),
        machine.RecordRefundFailure(intent_id=INTENT, refund_id=refund_id, at_s=4, failure_reason="lost_or_stolen_card"),
        machine.RecordDisputeOpened(intent_id=INTENT, dispute_id="dp_1", amount=1500, at_s=5),
        machine.RecordDisputeClosed(intent_id=INTENT, dispute_id="dp_1", won=True, at_s=6),
    )
    assert raised[4:] == [
        "refund.created",
        "charge.refunded",
        "refund.updated",
        "refund.updated",
        "refund.failed",
        "charge.dispute.created",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.closed",
        "charge.dispute.funds_reinstated",
    ]
    assert set(raised) <= set(notifications.EVENT_TYPES)


def test_the_signature_is_what_the_stripe_sdk_verifies() -> None:
    body = json.dumps({"id": "evt_1", "object": "event", "type": "payment_intent.succeeded", "data": {"object": {"id": "pi_1"}}}).encode()
    header = signature_header("whsec_test", body, int(time.time()))
    event = stripe.Webhook.construct_event(body.decode(), header, "whsec_test")
    assert event.type == "payment_intent.succeeded"
    with pytest.raises(stripe.SignatureVerificationError):  # the SDK's own text, not ours
        stripe.Webhook.construct_event(body.decode(), header, "whsec_other")


def test_the_retry_schedule_parses_bounds_and_jitters() -> None:
    assert parse_schedule("1, 2.5,60") == (1.0, 2.5, 60.0)
    assert parse_schedule("") == ()
    for bad, message in (
        ("1,x", r"^retry schedule: 'x' is not a number of seconds$"),
        ("-1", r"^retry schedule: each delay must be from 0 to 604800 seconds$"),
        ("1e9", r"^retry schedule: each delay must be from 0 to 604800 seconds$"),
        (",".join(["1"] * 51), r"^retry schedule: at most 50 delays$"),
    ):
        with pytest.raises(ScheduleError, match=message):
            parse_schedule(bad)
    rng = random.Random(7)
    delays = [next_delay_s((10.0, 100.0), 1, rng) for _ in range(200)]
    assert all(8.0 <= delay <= 12.0 for delay in delays) and len(set(delays)) > 100
    assert 80.0 <= next_delay_s((10.0, 100.0), 2, rng) <= 120.0
    assert next_delay_s((10.0, 100.0), 3, rng) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://localhost/hook",
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.1/hook",
        "https://169.254.169.254/latest",
        "https://100.100.100.200/latest",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "http://127.0.0.1:8080/hook",
    ],
)
def test_endpoints_may_not_point_inside_in_either_mode(url: str) -> None:
    for livemode in (False, True):
        with pytest.raises(EndpointUrlError, match=r"^(Webhook endpoints may not point at .*|Live-mode webhook endpoints must use https)\.$"):
            check_url(url, livemode)
    assert check_url(url, livemode=False, allow_private=True) == url


@pytest.mark.parametrize("url", ["http://example.com/hook", "https://intranet/hook", "https://printer.local/hook"])
def test_live_mode_needs_https_and_a_public_looking_name(url: str) -> None:
    with pytest.raises(EndpointUrlError, match=r"^Live-mode webhook endpoints (must use https|may not point at a local host)\.$"):
        check_url(url, livemode=True)
    assert check_url(url, livemode=False) == url, "test mode takes them: their addresses are checked at delivery"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", r"^Invalid URL: it must be an absolute http or https URL\.$"),
        ("https://user:pw@example.com/", r"^Invalid URL: credentials may not be part of the URL\.$"),
        ("/relative", r"^Invalid URL: it must be an absolute http or https URL\.$"),
        ("https://", r"^Invalid URL: it must be an absolute http or https URL\.$"),
        ("http://exa mple.com/", r"^Invalid URL\.$"),
    ],
)
def test_malformed_urls_are_refused_in_both_modes(url: str, message: str) -> None:
    for livemode in (False, True):
        with pytest.raises(EndpointUrlError, match=message):
            check_url(url, livemode)


def test_a_public_https_url_is_fine_in_live_mode() -> None:
    assert check_url("https://hooks.example.com/stripe?x=1", livemode=True)


# ------------------------------------------------------------ receivers


class Capture:
    """A merchant endpoint that keeps the raw body and headers of each delivery."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        captured = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the library's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                captured.append((dict(self.headers), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Receiver:
    """The receiver simulator (simulators/receiver.py) as a child process."""

    def __init__(self, log_path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "simulators.receiver", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=open(log_path, "ab"),
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = re.search(r"listening on (\S+)", line)
        assert match, line
        self.base = match.group(1).rstrip("/")
        self.client = httpx.Client(base_url=self.base, timeout=10)

    def set_secret(self, path: str, secret: str) -> None:
        assert self.client.post("/_control/secrets", json={"path": path, "secret": secret}).status_code == 200

    def mode(self, **settings: Any) -> None:
        response = self.client.post("/_control/mode", json=settings)
        assert response.status_code == 200, response.text

    def deliveries(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self.client.get("/_control/deliveries", params={"after": after, "limit": 1000}).json()
            found += page["deliveries"]
            if not page["deliveries"]:
                return found
            after = page["next_after"]

    def close(self) -> None:
        self.client.close()
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    started = Receiver(tmp_path / "receiver.log")
    yield started
    started.close()


def client_for(node: NodeProcess, secret_key: str) -> httpx.Client:
    return httpx.Client(base_url=node.url, auth=(secret_key, ""), timeout=30)


def add_endpoint(client: httpx.Client, url: str, events: list[str]) -> dict[str, Any]:
    response = client.post("/v1/webhook_endpoints", data={"url": url, **{f"enabled_events[{i}]": e for i, e in enumerate(events)}})
    assert response.status_code == 200, response.text
    return response.json()


def pay_manually(client: httpx.Client) -> str:
    created = client.post(
        "/v1/payment_intents",
        data={"amount": "1500", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true", "capture_method": "manual"},
    )
    assert created.json()["status"] == "requires_capture", created.text
    captured = client.post(f"/v1/payment_intents/{created.json()['id']}/capture")
    assert captured.json()["status"] == "succeeded", captured.text
    return created.json()["id"]


# ------------------------------------------------------------ end to end


def test_a_payment_reaches_the_merchant_as_a_verified_signed_event(new_node: Callable[..., NodeProcess]) -> None:
    node = new_node(None, None, ALLOW_PRIVATE)
    capture = Capture()
    with client_for(node, node.secret_key) as client:
        endpoint = add_endpoint(client, capture.url, ["payment_intent.succeeded"])
        assert endpoint["secret"].startswith("whsec_")
        paid = client.post("/v1/payment_intents", data={"amount": "2000", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"})
        assert paid.json()["status"] == "succeeded"
        wait_for(lambda: capture.received, what="the webhook")
        # Not a wait for something to happen but a window for a wrong thing
        # to show: an event sent against the filter would arrive in it. No
        # condition says that nothing more will come.
        time.sleep(0.5)
        assert len(capture.received) == 1, "only the enabled event type is sent"
        headers, body = capture.received[0]
        event = stripe.Webhook.construct_event(body.decode(), headers["Stripe-Signature"], endpoint["secret"])
        assert event.type == "payment_intent.succeeded"
        assert event.data.object.id == paid.json()["id"]
        assert event.data.object.status == "succeeded" and event.data.object.amount_received == 2000
        # The same event is served by the API.
        assert client.get(f"/v1/events/{event.id}").json()["data"]["object"]["id"] == paid.json()["id"]


def test_failing_deliveries_are_retried_in_order_and_none_is_lost(
    new_node: Callable[..., NodeProcess], receiver: Receiver
) -> None:
    node = new_node(None, None, ALLOW_PRIVATE, environ={"PAYMENTS_WEBHOOK_RETRY_SCHEDULE": ",".join(["0.3"] * 30)})
    with client_for(node, node.secret_key) as client:
        endpoint = add_endpoint(client, receiver.base + "/hooks/a", ["*"])
        receiver.set_secret("/hooks/a", endpoint["secret"])
        receiver.mode(mode="fail", status=503, for_s=3)
        intents = [pay_manually(client) for _ in range(6)]

        def all_delivered() -> bool:
            done = {(d["object_id"], d["type"]) for d in receiver.deliveries() if d["status"] == 200}
            return all((intent, event_type) in done for intent in intents for event_type in set(MANUAL_FLOW))

        wait_for(all_delivered, 60, "every event to be delivered")
    deliveries = receiver.deliveries()
    assert all(d["verified"] for d in deliveries)
    assert any(d["status"] == 503 for d in deliveries), "the receiver failed for a while"
    assert max(d["attempt"] for d in deliveries) > 1, "and deliveries were retried"
    for intent in intents:
        mine = [d for d in deliveries if d["object_id"] == intent]
        type_of = {d["event_id"]: d["type"] for d in mine}
        tried = list(dict.fromkeys(d["event_id"] for d in mine))
        accepted = list(dict.fromkeys(d["event_id"] for d in mine if d["status"] == 200))
        # Every event arrived, in the stream's order for its intent, and no
        # event was tried before the one ahead of it had been accepted.
        assert [type_of[event_id] for event_id in accepted] == MANUAL_FLOW
        assert tried == accepted
        for earlier, later in zip(accepted, accepted[1:]):
            first_try_of_later = min(d["index"] for d in mine if d["event_id"] == later)
            accepted_at = min(d["index"] for d in mine if d["event_id"] == earlier and d["status"] == 200)
            assert accepted_at < first_try_of_later


def test_a_dead_letter_is_sent_again_on_request(new_node: Callable[..., NodeProcess], receiver: Receiver) -> None:
    node = new_node(None, None, ALLOW_PRIVATE, environ={"PAYMENTS_WEBHOOK_RETRY_SCHEDULE": "0.2,0.2"})
    with client_for(node, node.secret_key) as client:
        endpoint = add_endpoint(client, receiver.base + "/hooks/b", ["payment_intent.succeeded"])
        receiver.set_secret("/hooks/b", endpoint["secret"])
        receiver.mode(mode="fail", status=500, for_s=600)
        paid = client.post("/v1/payment_intents", data={"amount": "900", "currency": "eur", "payment_method": "pm_card_visa", "confirm": "true"})
        intent_id = paid.json()["id"]
        wait_for(lambda: len(receiver.deliveries()) >= 3, 30, "three tries")

        def undelivered() -> list[str]:
            listed = client.get("/v1/events", params={"delivery_success": "false", "type": "payment_intent.succeeded"}).json()
            return [event["id"] for event in listed["data"] if event["data"]["object"]["id"] == intent_id]

        event_ids = wait_for(undelivered, 10, "the event in the undelivered list")

        def dead_letters() -> list[dict[str, Any]]:
            listed = subprocess.run(
                [sys.executable, "-m", "payments.cli", "events", "dead-letters", "--json", "--data-dir", str(node.data_dir)],
                capture_output=True, text=True, timeout=60, env={**os.environ, "PAYMENTS_DATABASE_URL": node.database_url},
            )
            assert listed.returncode == 0, listed.stderr
            return [json.loads(line) for line in listed.stdout.splitlines()]

        # Once it is a dead letter nothing retries it, so the tries below are all there will be.
        dead = wait_for(dead_letters, 20, "the delivery to be given up", interval_s=0.2)
        tries = receiver.deliveries()
        assert len(tries) == 3 and all(d["status"] == 500 for d in tries), "one try and two retries, then it is dead"
        assert [(row["event_id"], row["endpoint_id"], row["attempts"]) for row in dead] == [(event_ids[0], endpoint["id"], 3)]
        receiver.mode(mode="ok")
        retried = client.post(f"/v1/events/{event_ids[0]}/retry")
        assert retried.status_code == 200 and retried.json()["endpoints"] == [endpoint["id"]]
        wait_for(lambda: any(d["status"] == 200 for d in receiver.deliveries()), 20, "the manual retry")
        assert receiver.deliveries()[-1]["event_id"] == event_ids[0]
        wait_for(lambda: not undelivered(), 10, "the event to leave the undelivered list")
        assert client.get("/v1/events", params={"delivery_success": "true", "type": "payment_intent.succeeded"}).json()["data"][0]["id"] == event_ids[0]


def test_events_committed_but_never_published_go_out_after_a_crash(
    make_database: Callable[[], str], new_node: Callable[..., NodeProcess], receiver: Receiver, tmp_path: Path
) -> None:
    database = make_database()
    prefix = f"payments-test:{os.urandom(6).hex()}:"
    # Redis unreachable: payments commit (events in the outbox) but nothing
    # can be published. Then the node is killed.
    cut_off = new_node(database, tmp_path, ALLOW_PRIVATE, redis_url="redis://127.0.0.1:1", environ={"PAYMENTS_REDIS_PREFIX": prefix})
    with client_for(cut_off, cut_off.secret_key) as client:
        endpoint = add_endpoint(client, receiver.base + "/hooks/c", ["*"])
        receiver.set_secret("/hooks/c", endpoint["secret"])
        intents = [pay_manually(client) for _ in range(3)]
    # A window for a wrong delivery to show, not a wait: with Redis cut off
    # the node has nothing to publish from, and nothing to poll for.
    time.sleep(0.5)
    assert receiver.deliveries() == []
    cut_off.kill()
    restarted = new_node(database, tmp_path, ALLOW_PRIVATE, redis_url=REDIS_URL, environ={"PAYMENTS_REDIS_PREFIX": prefix})
    assert restarted.url

    def delivered() -> bool:
        done = {(d["object_id"], d["type"]) for d in receiver.deliveries() if d["status"] == 200}
        return all((intent, event_type) in done for intent in intents for event_type in MANUAL_FLOW)

    wait_for(delivered, 30, "the outbox to be published after the restart")
    assert all(d["verified"] for d in receiver.deliveries())


# ------------------------------------------------------------------ API


def test_webhook_endpoints_are_created_read_updated_and_deleted(node: NodeProcess) -> None:
    keys = create_merchant_keys(node, "Hooks shop")
    with client_for(node, keys["secret_key"]) as client:
        created = add_endpoint(client, "https://shop.example/hooks", ["payment_intent.succeeded", "charge.refunded"])
        assert created["object"] == "webhook_endpoint" and created["status"] == "enabled"
        fetched = client.get(f"/v1/webhook_endpoints/{created['id']}").json()
        assert "secret" not in fetched, "the secret is shown once (and left out after, as Stripe does)"
        assert fetched["enabled_events"] == ["payment_intent.succeeded", "charge.refunded"]
        updated = client.post(f"/v1/webhook_endpoints/{created['id']}", data={"disabled": "true", "enabled_events[0]": "*"}).json()
        assert updated["status"] == "disabled" and updated["enabled_events"] == ["*"]
        listed = client.get("/v1/webhook_endpoints").json()
        assert [item["id"] for item in listed["data"]] == [created["id"]]
        deleted = client.delete(f"/v1/webhook_endpoints/{created['id']}").json()
        assert deleted == {"id": created["id"], "deleted": True, "object": "webhook_endpoint"}
        assert client.get(f"/v1/webhook_endpoints/{created['id']}").status_code == 404
        other = create_merchant_keys(node, "Nosy shop")
        mine = add_endpoint(client, "https://shop.example/h2", ["*"])
        with client_for(node, other["secret_key"]) as nosy:
            assert nosy.get(f"/v1/webhook_endpoints/{mine['id']}").status_code == 404
            assert nosy.delete(f"/v1/webhook_endpoints/{mine['id']}").status_code == 404


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"url": "ftp://x.test/", "enabled_events[0]": "*"}, "url"),
        ({"url": "https://x.test/"}, "enabled_events"),
        ({"url": "https://x.test/", "enabled_events[0]": "payment_intent.exploded"}, "enabled_events"),
        ({"url": "https://x.test/", "enabled_events[0]": "*", "colour": "red"}, "colour"),
        ({"url": "https://x.test/" + "a" * 3000, "enabled_events[0]": "*"}, "url"),
    ],
)
def test_bad_endpoint_parameters_are_400s_naming_the_param(node: NodeProcess, data: dict[str, str], param: str) -> None:
    with client_for(node, node.secret_key) as client:
        response = client.post("/v1/webhook_endpoints", data=data)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_live_mode_endpoints_must_be_public_https(node: NodeProcess) -> None:
    live = create_merchant_keys(node, "Live shop", "--live")
    with client_for(node, live["secret_key"]) as client:
        for url in ("http://shop.example/h", "https://127.0.0.1/h", "https://10.0.0.8/h", "https://localhost/h"):
            response = client.post("/v1/webhook_endpoints", data={"url": url, "enabled_events[0]": "*"})
            assert response.status_code == 400 and response.json()["error"]["param"] == "url", url
        assert client.post("/v1/webhook_endpoints", data={"url": "https://shop.example/h", "enabled_events[0]": "*"}).status_code == 200


def test_an_endpoint_created_twice_with_one_idempotency_key_is_one_endpoint(node: NodeProcess) -> None:
    keys = create_merchant_keys(node, "Retrying shop")
    data = {"url": "https://shop.example/idem", "enabled_events[0]": "*"}
    with client_for(node, keys["secret_key"]) as client:
        first = client.post("/v1/webhook_endpoints", data=data, headers={"Idempotency-Key": "hook-1"})
        second = client.post("/v1/webhook_endpoints", data=data, headers={"Idempotency-Key": "hook-1"})
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json() and second.headers["Idempotent-Replayed"] == "true"
        changed = client.post("/v1/webhook_endpoints", data={**data, "url": "https://shop.example/other"}, headers={"Idempotency-Key": "hook-1"})
        assert changed.status_code == 400 and changed.json()["error"]["type"] == "idempotency_error"
        assert len(client.get("/v1/webhook_endpoints").json()["data"]) == 1


def test_events_are_listed_newest_first_filtered_and_paged(node: NodeProcess) -> None:
    keys = create_merchant_keys(node, "Eventful shop")
    with client_for(node, keys["secret_key"]) as client:
        intents = [pay_manually(client) for _ in range(3)]
        listed = client.get("/v1/events", params={"limit": 100}).json()
        # Five about each intent, two about its charge (succeeded, captured).
        assert len(listed["data"]) == 21 and not listed["has_more"]
        keys_in_order = [(event["created"], event["id"]) for event in listed["data"]]
        assert keys_in_order == sorted(keys_in_order, reverse=True)
        shown = {event["data"]["object"]["id"] for event in listed["data"]}
        assert set(intents) <= shown and {object_id[:3] for object_id in shown - set(intents)} == {"ch_"}
        succeeded = client.get("/v1/events", params={"type": "payment_intent.succeeded"}).json()["data"]
        assert len(succeeded) == 3 and {event["type"] for event in succeeded} == {"payment_intent.succeeded"}
        family = client.get("/v1/events", params={"type": "payment_intent.*", "limit": 100}).json()["data"]
        assert len(family) == 15
        first = client.get("/v1/events", params={"limit": 4}).json()
        assert first["has_more"] and len(first["data"]) == 4
        rest = client.get("/v1/events", params={"limit": 100, "starting_after": first["data"][-1]["id"]}).json()
        assert [event["id"] for event in first["data"] + rest["data"]] == [event["id"] for event in listed["data"]]
        before = client.get("/v1/events", params={"limit": 2, "ending_before": rest["data"][0]["id"]}).json()
        assert [event["id"] for event in before["data"]] == [event["id"] for event in first["data"][-2:]]
        assert client.get("/v1/events", params={"type": "bad type!"}).status_code == 400
        event_id = listed["data"][0]["id"]
        other = create_merchant_keys(node, "Curious shop")
        with client_for(node, other["secret_key"]) as nosy:
            assert nosy.get(f"/v1/events/{event_id}").status_code == 404
            assert nosy.get("/v1/events").json()["data"] == []
        assert client.get("/v1/events/evt_nonsense").status_code == 404


def test_a_dead_slow_endpoint_delays_neither_payments_nor_other_endpoints(
    new_node: Callable[..., NodeProcess], receiver: Receiver
) -> None:
    node = new_node(None, None, ALLOW_PRIVATE, environ={"PAYMENTS_WEBHOOK_TIMEOUT_S": "20"})
    capture = Capture()
    with client_for(node, node.secret_key) as client:
        stuck = add_endpoint(client, receiver.base + "/hooks/stuck", ["*"])
        receiver.set_secret("/hooks/stuck", stuck["secret"])
        receiver.mode(mode="timeout", for_s=600)
        add_endpoint(client, capture.url, ["payment_intent.succeeded"])
        started = time.monotonic()
        paid = [
            client.post("/v1/payment_intents", data={"amount": "700", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"})
            for _ in range(10)
        ]
        assert all(response.json()["status"] == "succeeded" for response in paid)
        assert time.monotonic() - started < 10, "payments did not wait for the stuck endpoint"
        wait_for(lambda: len(capture.received) >= 10, 10, "the healthy endpoint's deliveries")
        assert {json.loads(body)["data"]["object"]["id"] for _, body in capture.received} == {r.json()["id"] for r in paid}
        held = [d for d in receiver.deliveries() if d["status"] is None]
        assert held, "the stuck endpoint was being tried meanwhile"


def test_a_running_node_archives_its_journal_and_verify_catches_an_edit(new_node: Callable[..., NodeProcess]) -> None:
    node = new_node(environ={"PAYMENTS_ARCHIVE_EVERY_S": "0.5"})
    with client_for(node, node.secret_key) as client:
        for _ in range(3):
            assert client.post("/v1/payment_intents", data={"amount": "1200", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}).status_code == 200
    environ = {**os.environ, "PAYMENTS_DATABASE_URL": node.database_url}

    def verify() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "payments.cli", "audit", "verify", "--data-dir", str(node.data_dir)],
            capture_output=True, text=True, timeout=60, env=environ,
        )

    def archived_everything() -> bool:
        result = verify()
        return result.returncode == 0 and "9 journal rows" in result.stdout

    wait_for(archived_everything, 20, "the node to archive 3 payments (9 journal rows)")
    segment = next((node.data_dir / "archive").rglob("*.jsonl.gz"))
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    failed = verify()
    assert failed.returncode == 1 and "has been changed" in failed.stdout
