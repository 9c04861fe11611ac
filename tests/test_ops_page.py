"""The operations page (gateway/ops_page.py) in a real browser: the
system's headless Chromium, driven by Selenium through the system's
chromedriver (nothing is downloaded), against a running node.

The page loads with the operator token in its address's fragment and shows
the figures /metrics serves; they move when payments are made; a dead
letter shows up with a Retry button that queues it again; without the
token, or with another one, the page shows an error and no data."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from gateway import ops_page
from shards.metrics import Metrics
from tests.conftest import NodeProcess
from workers.errors import WorkerErrors

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PAY = {"amount": "1500", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}
# One try and one retry 0.2 s later: a delivery nobody answers is dead within a second.
FAST_DEATH = {"PAYMENTS_WEBHOOK_RETRY_SCHEDULE": "0.2"}
# The page asks for its data every 3 s; a figure may take two rounds to move.
PAGE_WAIT_S = 20


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless Chromium from the system's packages (.ci/run installs them)."""
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "Chromium is missing: apt-get install chromium chromium-driver (.ci/run does)"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,2400"):
        options.add_argument(argument)
    # A Service with the driver's path: Selenium never looks for (or downloads) one.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def ops_page_url(node: NodeProcess) -> str:
    """The 'ops page:' line `payments up` prints after the operator line."""
    assert node.process is not None and node.process.stdout is not None
    for _ in range(20):
        line = node.process.stdout.readline()
        if match := re.match(r"ops page:\s+(\S+)$", line.strip()):
            return match.group(1)
    raise AssertionError("payments up printed no ops page")


def token_of(url: str) -> str:
    token = url.partition("#")[2]
    assert re.fullmatch(r"op_[A-Za-z0-9_-]{20,}", token), url
    return token


def scrape(node: NodeProcess, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(node.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def wait_for(driver: WebDriver, condition: Callable[[], Any], what: str, timeout_s: float = PAGE_WAIT_S) -> Any:
    """The first true value of `condition` (the page may be redrawn while read)."""

    def attempt(_: WebDriver) -> Any:
        try:
            return condition()
        except StaleElementReferenceException:
            return False

    return WebDriverWait(driver, timeout_s, poll_frequency=0.2).until(attempt, f"waited {timeout_s} s for {what}")


def text(driver: WebDriver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text.strip()


def figure(driver: WebDriver, element_id: str) -> int:
    shown = text(driver, element_id)
    assert re.fullmatch(r"[0-9,]+", shown), (element_id, shown)
    return int(shown.replace(",", ""))


def number(driver: WebDriver, element_id: str) -> float | None:
    """A figure as a number; None while it shows none ("none yet")."""
    try:
        return float(text(driver, element_id).replace(",", ""))
    except ValueError:
        return None


def state(driver: WebDriver) -> str | None:
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def open_page(driver: WebDriver, url: str) -> None:
    driver.get("about:blank")
    driver.get(url)


def assert_no_data(driver: WebDriver) -> None:
    """The figures are hidden and empty: no number, no row, no chart."""
    assert not driver.find_element(By.ID, "figures").is_displayed()
    for element in driver.find_elements(By.CSS_SELECTOR, "#figures .value"):
        assert element.get_attribute("textContent") == "", element.get_attribute("id")
    assert driver.find_elements(By.CSS_SELECTOR, "#figures tbody tr") == []
    assert driver.find_elements(By.CSS_SELECTOR, "#figures svg *") == []
    assert text(driver, "node-id") == ""


def test_without_the_operator_token_the_page_shows_an_error_and_no_data(new_node: Callable[..., NodeProcess], browser: WebDriver) -> None:
    node = new_node()
    url = ops_page_url(node)
    token = token_of(url)
    assert url == f"{node.url}/ops#{token}"
    # The page itself carries no data and no secret, and may not be framed or run inline script.
    page = httpx.get(node.url + "/ops")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "op_" not in page.text and "<script src=\"/ops/static/ops.js\"" in page.text and "<script>" not in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert httpx.get(node.url + "/ops/static/ops.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(node.url + "/ops/static/..%2Fops_page.py").status_code == 404
    # Its endpoints refuse everything but the operator token, a merchant's key included.
    for header in ({}, {"Authorization": f"Bearer {node.secret_key}"}, {"Authorization": f"Bearer {token[:-1]}x"}):
        for method, path in (("GET", "/ops/data"), ("POST", "/ops/dead-letters/evt_x/retry")):
            refused = httpx.request(method, node.url + path, headers=header)
            assert refused.status_code == 401, (method, path, refused.text)
            assert refused.json()["error"]["code"] == "operator_token_required"
            assert refused.headers["x-frame-options"] == "DENY"
    assert httpx.get(node.url + "/ops/data", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    for address, expected in (
        (node.url + "/ops", "no-token"),
        (f"{node.url}/ops#{token[:-1]}x", "refused"),
        (f"{node.url}/ops#{node.secret_key}", "no-token"),
    ):
        open_page(browser, address)
        wait_for(browser, lambda: state(browser) == expected, f"the page to say {expected} at {address.partition('#')[0]}")
        assert "operator token" in text(browser, "status").lower()
        assert "error" in (browser.find_element(By.ID, "status").get_attribute("class") or "")
        assert_no_data(browser)
    # The token in the fragment never reached the server's log.
    assert token not in (node.data_dir / "node.log").read_text()


def test_the_page_shows_the_metrics_figures_and_they_move_with_payments(new_node: Callable[..., NodeProcess], browser: WebDriver) -> None:
    node = new_node()
    url = ops_page_url(node)
    token = token_of(url)
    open_page(browser, url)
    wait_for(browser, lambda: state(browser) == "live", "the page to load its data")
    assert text(browser, "payments-succeeded") == "0"
    requests_before = figure(browser, "requests-total")
    assert figure(browser, "unknown-count") == 0
    assert figure(browser, "partitions-served") == 16
    rows = browser.find_elements(By.CSS_SELECTOR, "#partitions tbody tr")
    assert [row.get_attribute("data-partition") for row in rows] == [str(p) for p in range(16)]
    node_id = text(browser, "node-id").removeprefix("node ")
    owners = {row.find_elements(By.TAG_NAME, "td")[1].text for row in rows}
    assert node_id and owners == {node_id}, (node_id, owners)
    depths = [row.find_elements(By.TAG_NAME, "td")[4].text for row in rows]
    assert all(depth.isdigit() for depth in depths), depths
    assert [row.find_element(By.TAG_NAME, "td").text for row in browser.find_elements(By.CSS_SELECTOR, "#nodes tbody tr")] == [node_id]

    auth = (node.secret_key, "")
    payments = 5
    for _ in range(payments):
        assert httpx.post(node.url + "/v1/payment_intents", auth=auth, data=PAY).json()["status"] == "succeeded"
    # The page asks again by itself: the counters move without a reload.
    wait_for(browser, lambda: (number(browser, "payments-succeeded") or 0) >= payments, "the payments counter to move")
    assert figure(browser, "requests-total") >= requests_before + payments
    metrics = scrape(node, token)
    # The same numbers /metrics serves (nothing was paid since the page's last answer).
    assert figure(browser, "payments-succeeded") == metrics[("payments_intents_total", (("status", "succeeded"),))] == payments
    # The rates and the latency of the last minute, and a chart with points.
    wait_for(browser, lambda: (number(browser, "payments-per-s") or 0) > 0, "a payment rate above zero")
    assert (number(browser, "requests-per-s") or 0) > 0
    assert re.fullmatch(r"[0-9.]+ ms", text(browser, "latency-p50")), text(browser, "latency-p50")
    assert re.fullmatch(r"[0-9.]+ ms", text(browser, "latency-p99")), text(browser, "latency-p99")
    chart = browser.find_element(By.ID, "throughput-chart")
    assert int(chart.get_attribute("data-points") or 0) >= 1
    assert chart.find_elements(By.CSS_SELECTOR, "polyline, circle")
    assert int(browser.find_element(By.ID, "latency-chart").get_attribute("data-points") or 0) >= 1
    # The browser's own view: a screenshot shows something was drawn.
    assert len(browser.get_screenshot_as_png()) > 10_000


class Receiver:
    """An HTTP server on a given port that answers 200 and keeps the bodies."""

    def __init__(self, port: int) -> None:
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                bodies.append(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                """Quiet: the test reads the bodies."""

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A local port nothing listens on (until the test opens it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def deliveries(database_url: str, event_id: str) -> list[tuple[str, int]]:
    """(status, attempts) of the event's deliveries, read from PostgreSQL."""

    async def read() -> list[tuple[str, int]]:
        connection = await asyncpg.connect(database_url)
        try:
            rows = await connection.fetch("SELECT status, attempts FROM webhook_deliveries WHERE event_id = $1", event_id)
        finally:
            await connection.close()
        return [(row["status"], row["attempts"]) for row in rows]

    return asyncio.run(read())


def test_a_dead_letter_shows_and_its_retry_button_queues_it_again(new_node: Callable[..., NodeProcess], browser: WebDriver) -> None:
    node = new_node(None, None, "--allow-private-webhooks", environ=FAST_DEATH)
    url = ops_page_url(node)
    open_page(browser, url)
    wait_for(browser, lambda: state(browser) == "live", "the page to load its data")
    assert browser.find_elements(By.CSS_SELECTOR, "#dead-letters tbody tr[data-event-id]") == []
    port = closed_port()
    auth = (node.secret_key, "")
    endpoint = httpx.post(
        node.url + "/v1/webhook_endpoints", auth=auth, data={"url": f"http://127.0.0.1:{port}/hook", "enabled_events[]": "payment_intent.succeeded"}
    )
    assert endpoint.status_code == 200, endpoint.text
    endpoint_id = endpoint.json()["id"]
    paid = httpx.post(node.url + "/v1/payment_intents", auth=auth, data=PAY).json()
    assert paid["status"] == "succeeded"

    rows = wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#dead-letters tbody tr[data-event-id]"), "the dead letter on the page")
    assert len(rows) == 1 and figure(browser, "dead-count") == 1
    event_id = rows[0].get_attribute("data-event-id") or ""
    cells = [cell.text for cell in rows[0].find_elements(By.TAG_NAME, "td")]
    assert cells[:4] == [event_id, endpoint_id, paid["id"], "2"], cells
    assert deliveries(node.database_url, event_id) == [("dead", 2)]
    assert "dead 1" in text(browser, "webhook-outcomes")

    # Something answers at the endpoint's address now; the retry reaches it.
    receiver = Receiver(port)
    try:
        rows[0].find_element(By.CSS_SELECTOR, "button.retry").click()
        wait_for(browser, lambda: browser.find_element(By.ID, "retry-result").get_attribute("data-event-id") == event_id, "the retry's answer")
        assert text(browser, "retry-result") == f"Queued again: {event_id} to 1 endpoint ({endpoint_id})."
        wait_for(browser, lambda: deliveries(node.database_url, event_id) == [("delivered", 1)], "the delivery to be made again", timeout_s=20)
        assert any(event_id.encode() in body for body in receiver.bodies)
    finally:
        receiver.close()
    # The page shows it: no dead letter left, and one delivery made.
    wait_for(browser, lambda: not browser.find_elements(By.CSS_SELECTOR, "#dead-letters tbody tr[data-event-id]"), "the dead letter to leave the page")
    wait_for(browser, lambda: "delivered 1" in text(browser, "webhook-outcomes"), "the delivery on the page")
    # And the API agrees: the event is no longer among the undelivered ones.
    undelivered = httpx.get(node.url + "/v1/events", auth=auth, params={"delivery_success": "false"}).json()["data"]
    assert event_id not in [event["id"] for event in undelivered]


def test_the_page_shows_the_partitions_of_two_nodes_and_their_owners(
    new_node: Callable[..., NodeProcess], make_database: Callable[[], str], tmp_path: Path, browser: WebDriver
) -> None:
    database = make_database()
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    ttl = ("--lease-ttl-s", "3", "--node-id")
    first = new_node(database, first_dir, *ttl, "node-a")
    first_url = ops_page_url(first)
    # The same master key: the cards of one database are sealed under one key.
    (second_dir / "card.key").write_bytes((first_dir / "card.key").read_bytes())
    (second_dir / "card.key").chmod(0o600)
    second = new_node(database, second_dir, *ttl, "node-b")
    second_url = ops_page_url(second)
    # One cluster, one operator token, whichever node prints it.
    assert token_of(first_url) == token_of(second_url)
    open_page(browser, first_url)

    def owners() -> dict[str, list[str]]:
        table: dict[str, list[str]] = {}
        for row in browser.find_elements(By.CSS_SELECTOR, "#partitions tbody tr[data-partition]"):
            cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
            table.setdefault(cells[1], []).append(cells[4])
        return table

    wait_for(browser, lambda: sorted((owner, len(depths)) for owner, depths in owners().items()) == [("node-a", 8), ("node-b", 8)],
             "eight partitions owned by each node", timeout_s=40)
    # Read again through wait_for: the page redraws its tables every 3 s.
    spread = wait_for(browser, owners, "the partitions table")
    # The mailbox depths are this node's: its own partitions have one, the others are served elsewhere.
    assert all(depth.isdigit() for depth in spread["node-a"]) and set(spread["node-b"]) == {"elsewhere"}
    wait_for(browser, lambda: number(browser, "partitions-served") == 8, "eight partitions served here")
    nodes = wait_for(
        browser, lambda: [row.find_element(By.TAG_NAME, "td").text for row in browser.find_elements(By.CSS_SELECTOR, "#nodes tbody tr")], "the nodes table"
    )
    assert nodes == ["node-a", "node-b"]
    epochs = wait_for(
        browser,
        lambda: [row.find_elements(By.TAG_NAME, "td")[2].text for row in browser.find_elements(By.CSS_SELECTOR, "#partitions tbody tr")],
        "the partitions table",
    )
    assert all(epoch.isdigit() and int(epoch) >= 1 for epoch in epochs), epochs


def test_the_workers_errors_show_while_redis_is_away(new_node: Callable[..., NodeProcess], browser: WebDriver) -> None:
    # Redis at a port nothing listens on: payments go on, the outbox relays
    # and the webhook ingest wait, counting each failure.
    node = new_node(redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    open_page(browser, ops_page_url(node))
    wait_for(browser, lambda: state(browser) == "live", "the page to load its data")
    assert httpx.post(node.url + "/v1/payment_intents", auth=(node.secret_key, ""), data=PAY).json()["status"] == "succeeded"

    def rows(table: str) -> list[list[str]]:
        found = browser.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")
        return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in found if not row.find_elements(By.CSS_SELECTOR, "td.empty")]

    recent = wait_for(browser, lambda: [row for row in rows("recent-errors") if row[1:3] == ["outbox_relay", "outbox_relay_waiting"]],
                      "the relay's errors among the recent ones")
    assert int(recent[0][3].replace(",", "")) >= 1 and re.fullmatch(r"\d\d:\d\d:\d\d", recent[0][0]), recent
    # What the relay said, from its log line's context: which service it waits for.
    assert "waiting_for=redis" in recent[0][4], recent
    counted = {(row[0], row[1]): int(row[2].replace(",", "")) for row in rows("error-counts")}
    assert counted.get(("outbox_relay", "outbox_relay_waiting"), 0) >= 1, counted
    assert counted.get(("webhook_ingest", "webhook_ingest_waiting"), 0) >= 1, counted


# ---------------------------------------------------------------- the arithmetic behind the charts


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # No observation: no percentile.
        (0.5, [(0.1, 0.0), (float("inf"), 0.0)], None),
        # Linear inside the bucket the rank falls in, from the bucket below's bound.
        (0.5, [(0.01, 0.0), (0.02, 10.0), (float("inf"), 10.0)], 0.015),
        (0.99, [(0.01, 50.0), (0.1, 100.0), (float("inf"), 100.0)], 0.01 + 0.09 * 49 / 50),
        # In the first bucket, from zero.
        (0.5, [(0.004, 4.0), (float("inf"), 4.0)], 0.002),
        # Past the last finite bound: that bound.
        (0.99, [(0.5, 1.0), (float("inf"), 10.0)], 0.5),
    ],
)
def test_a_percentile_is_interpolated_in_its_bucket_as_histogram_quantile_does(q: float, buckets: list, expected: float | None) -> None:
    found = ops_page.quantile(q, buckets)
    assert found == pytest.approx(expected) if expected is not None else found is None


def test_the_history_keeps_a_bounded_ring_and_leaves_the_operator_routes_out() -> None:
    metrics = Metrics()
    relay = WorkerErrors("outbox_relay")
    history = ops_page.OpsHistory(metrics.registry, {"outbox_relay": relay}, samples_max=3, recent_errors_max=2)
    for second in range(5):
        metrics.requests.labels("/v1/payment_intents", "POST", "200").observe(0.003)
        metrics.requests.labels("/ops/data", "GET", "200").observe(2.0)
        metrics.requests.labels("/metrics", "GET", "200").observe(2.0)
        history.sample(1000.0 + second)
    assert [sample.at_s for sample in history.samples] == [1002.0, 1003.0, 1004.0]
    assert [sample.requests for sample in history.samples] == [3.0, 4.0, 5.0]
    live = ops_page.take_sample(ops_page.read_registry(metrics.registry), 1009.0)
    points = history.points(live)
    assert [(p.at_s, p.requests_per_s) for p in points] == [(1003.0, 1.0), (1004.0, 1.0), (1009.0, 0.0)]
    # The operator routes' 2 s never count: p99 stays in the API's bucket.
    assert points[0].p99_ms is not None and points[0].p99_ms <= 5.0
    assert points[-1].p50_ms is None
    # Errors are noted as they rise, and only the newest are kept.
    relay.record("outbox_publish_failed", partition=1)
    history.sample(1010.0)
    history.sample(1011.0)
    relay.record("outbox_publish_failed", partition=1)
    relay.record("outbox_read_failed", partition=2)
    history.sample(1012.0)
    assert [(e.at_s, e.event, e.count) for e in history.recent_errors] == [(1012.0, "outbox_publish_failed", 1), (1012.0, "outbox_read_failed", 1)]
    # Each says what the newest of its kind said.
    assert [e.detail for e in history.recent_errors] == ["partition=1", "partition=2"]
    assert [(e.worker, e.event, e.count) for e in history.error_counts()] == [
        ("outbox_relay", "outbox_publish_failed", 2),
        ("outbox_relay", "outbox_read_failed", 1),
    ]
