"""GET /metrics (gateway/operations.py, shards/metrics.py) on a real node:
the operator token, and figures that move with what the node did, parsed
with prometheus_client's own parser."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import trio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from shards.metrics import Metrics, NodeCollector, Tally
from tests.conftest import NodeProcess

DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations"

PAY = {"amount": "1500", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}
DECLINE = {**PAY, "payment_method": "pm_card_chargeDeclined"}


def operator_token(node: NodeProcess) -> str:
    """The operator line `payments up` prints after the keys."""
    assert node.process is not None and node.process.stdout is not None
    for _ in range(20):
        line = node.process.stdout.readline()
        if match := re.match(r"operator:\s+(op_\S+)", line):
            return match.group(1)
    raise AssertionError("payments up printed no operator token")


def scrape(node: NodeProcess, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    response = httpx.get(node.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_answer_only_the_operator_token(new_node: Callable[..., NodeProcess]) -> None:
    node = new_node()
    token = operator_token(node)
    assert token.startswith("op_") and len(token) > 20
    for header in ({}, {"Authorization": f"Bearer {node.secret_key}"}, {"Authorization": f"Bearer {token[:-1]}x"}):
        refused = httpx.get(node.url + "/metrics", headers=header)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "operator_token_required"
        assert "payments_" not in refused.text
    # And the operator token is no API key.
    assert httpx.get(node.url + "/v1/balance", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_the_figures_move_with_payments_requests_commits_and_webhooks(new_node: Callable[..., NodeProcess]) -> None:
    node = new_node(None, None, "--allow-private-webhooks")
    token = operator_token(node)
    before = scrape(node, token)
    assert value(before, "payments_intents_total", status="succeeded") == 0
    auth = (node.secret_key, "")
    # An endpoint nobody answers: its deliveries fail and are retried.
    endpoint = httpx.post(
        node.url + "/v1/webhook_endpoints", auth=auth, data={"url": "http://127.0.0.1:9/hook", "enabled_events[]": "payment_intent.succeeded"}
    )
    assert endpoint.status_code == 200, endpoint.text
    payments = 6
    for _ in range(payments):
        assert httpx.post(node.url + "/v1/payment_intents", auth=auth, data=PAY).json()["status"] == "succeeded"
    declined = httpx.post(node.url + "/v1/payment_intents", auth=auth, data=DECLINE)
    assert declined.status_code == 402
    deadline = time.monotonic() + 20
    while True:
        after = scrape(node, token)
        if value(after, "payments_webhook_deliveries_total", outcome="failed") >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert value(after, "payments_intents_total", status="succeeded") >= payments
    assert value(after, "payments_journal_events_total", type="AttemptApproved") >= payments
    assert value(after, "payments_journal_events_total", type="AttemptDeclined") >= 1
    route = {"route": "/v1/payment_intents", "method": "POST"}
    assert value(after, "payments_http_request_duration_seconds_count", status="200", **route) >= payments
    assert value(after, "payments_http_request_duration_seconds_count", status="402", **route) == 1
    assert value(after, "payments_http_request_duration_seconds_bucket", status="200", le="+Inf", **route) >= payments
    assert value(after, "payments_journal_commit_seconds_count") >= payments
    assert value(after, "payments_journal_commit_rows_sum") >= 3 * payments
    assert value(after, "payments_actor_turn_commands_count") >= payments
    assert value(after, "payments_outbox_published_total") >= payments
    depths = [labels for (name, labels) in after if name == "payments_actor_mailbox_depth"]
    assert len(depths) == value(after, "payments_partitions_served") == 16
    assert sum(value(after, "payments_actor_commands_total", **dict(labels)) for labels in depths) >= 2 * payments
    assert value(after, "payments_unknown_operations") == 0
    assert value(after, "payments_webhook_deliveries_total", outcome="failed") >= 1
    assert ("payments_webhook_queue", (("state", "pending"),)) in after
    # Bounded labels: no ids, amounts or card data anywhere in a label.
    for name, labels in after:
        for _, label in labels:
            assert not re.search(r"(pi|pm|evt|att|re|we|acct)_[0-9a-z]{20}|4242|1500", label), (name, label)


def test_requests_refused_at_the_door_are_counted(new_node: Callable[..., NodeProcess]) -> None:
    node = new_node(None, None, "--requests-in-flight-max", "4")
    token = operator_token(node)
    codes: list[int] = []

    async def flood() -> None:
        async with httpx.AsyncClient(base_url=node.url, auth=(node.secret_key, ""), timeout=30, limits=httpx.Limits(max_connections=40)) as client:

            async def one() -> None:
                codes.append((await client.post("/v1/payment_intents", data=PAY)).status_code)

            async with trio.open_nursery() as nursery:
                for _ in range(40):
                    nursery.start_soon(one)

    trio.run(flood)
    assert codes.count(503) >= 1, codes
    samples = scrape(node, token)
    assert value(samples, "payments_http_refused_at_door_total", kind="new_payment") == codes.count(503)


def test_the_dashboard_and_the_alert_rules_name_only_metrics_a_node_exposes() -> None:
    metrics = Metrics()
    tally = Tally()
    tally.committed(["AttemptApproved"], ["succeeded"])
    metrics.registry.register(NodeCollector(tally, dict, lambda: {0: 1}))
    # Every family the node declares, with the sample names its type makes
    # (a labelled family with no sample yet still declares itself).
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    exposed = {
        family.name + suffix
        for family in text_string_to_metric_families(metrics.render().decode())
        for suffix in suffixes[family.type]
    }
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    rules = yaml.safe_load((DOCS / "alerts.yml").read_text())
    expressions += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert len(expressions) >= 20
    named = {name for expression in expressions for name in re.findall(r"\bpayments_[a-z_]+", expression)}
    assert named, expressions
    assert named <= exposed, named - exposed
