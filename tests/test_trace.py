"""`payments trace` (payments/trace_cli.py) on a paid-and-refunded intent of a
real node: requests, transitions, network calls, events and webhook tries,
in order, from the journal."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

import httpx

from tests.conftest import NodeProcess

PAY = {"amount": "2500", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}


def trace(node: NodeProcess, wanted: str) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PAYMENTS_DATABASE_URL=node.database_url)
    return subprocess.run(
        [sys.executable, "-m", "payments.cli", "trace", wanted, "--data-dir", str(node.data_dir)],
        capture_output=True, text=True, env=environ, timeout=60,
    )


def test_a_paid_and_refunded_intent_tells_its_story_in_order(new_node: Callable[..., NodeProcess]) -> None:
    node = new_node(None, None, "--allow-private-webhooks")
    auth = (node.secret_key, "")
    # An endpoint nobody answers, so that deliveries are tried and fail.
    endpoint = httpx.post(node.url + "/v1/webhook_endpoints", auth=auth, data={"url": "http://127.0.0.1:9/hook", "enabled_events[]": "*"})
    assert endpoint.status_code == 200, endpoint.text
    paid = httpx.post(node.url + "/v1/payment_intents", auth=auth, data=PAY)
    assert paid.json()["status"] == "succeeded"
    intent_id, pay_request = paid.json()["id"], paid.headers["Request-Id"]
    refunded = httpx.post(node.url + "/v1/refunds", auth=auth, data={"payment_intent": intent_id, "amount": "1000"})
    assert refunded.status_code == 200, refunded.text
    refund_request = refunded.headers["Request-Id"]
    deadline = time.monotonic() + 20
    while True:
        told = trace(node, intent_id)
        if "try 1 at" in told.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert told.returncode == 0, told.stderr
    lines = told.stdout.splitlines()
    # The transitions, in journal order, each with the request that caused it.
    order = ["IntentCreated", "AttemptStarted", "AttemptApproved", "RefundCreated", "RefundUpdated"]
    rows = [line for line in lines if any(f" {kind} " in line for kind in order)]
    assert [next(kind for kind in order if f" {kind} " in line) for line in rows] == order, told.stdout
    assert all(line.rstrip().endswith(pay_request) for line in rows[:3]), rows
    assert all(line.rstrip().endswith(refund_request) for line in rows[3:]), rows
    assert "[network call sent]" in rows[1] and "[network answer: approved]" in rows[2] and "-> succeeded" in rows[2]
    assert "refund 1000" in rows[3]
    # Events under the row that raised them, and webhook tries under the events.
    # The approval raises payment_intent.succeeded and charge.succeeded.
    under_approval = lines[lines.index(rows[2]) + 1 : lines.index(rows[3])]
    raised = [line for line in under_approval if line.strip().startswith("event evt_")]
    assert {"payment_intent.succeeded", "charge.succeeded"} <= {line.split()[2] for line in raised}, under_approval
    assert all(pay_request in line for line in raised)
    assert any("refund.created" in line and refund_request in line for line in lines)
    assert any(line.strip().startswith("webhook to we_") for line in lines)
    assert any(line.strip().startswith("try 1 at") for line in lines)
    assert "4242" not in told.stdout

    # By request id: the intent the refund request changed, its rows marked.
    by_request = trace(node, refund_request)
    assert by_request.returncode == 0, by_request.stderr
    marked = [line for line in by_request.stdout.splitlines() if " * #" in line]
    assert len(marked) == 2 and "RefundCreated" in marked[0] and "RefundUpdated" in marked[1]


def test_trace_refuses_what_is_not_an_id_and_says_when_nothing_is_there(node: NodeProcess) -> None:
    refused = trace(node, "not-an-id")
    assert refused.returncode == 2 and "expected an intent id" in refused.stderr
    unknown = trace(node, "pi_038hrmwqnt0015qrr3pgdd94tvee5")
    assert unknown.returncode == 1 and "nothing in the journal" in unknown.stderr
