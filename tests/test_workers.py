"""Workers beside the actors (workers/): each logs and counts the errors it
goes on after, and the node's workers stop with the node.

The failures are injected into small stand-ins for the store and the card
network; the settlement check and the stop run beside a real node on the
real PostgreSQL journal.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any

import trio
from structlog.testing import capture_logs

from engine import intent as machine
from engine.network import AuthorizationRequest, NetworkRefused
from shards.node import NodeConfig
from shards.vault import Vault
from simulators.card_network import CardNetwork
from store.errors import StoreUnavailable
from store.rows import DeliveryRow, EventRow, WebhookEndpointRow
from tests.helpers import wait_until_async
from tests.test_actor import create_command, new_payment_method, running_node, seed_merchant
from workers.errors import WorkerErrors
from workers.node_workers import run_node_workers
from workers.purge import PurgeBounds, run_idempotency_purge
from workers.reconciliation import reconcile_once
from workers.settlement import SettlementBounds, run_settlement_check
from workers.webhook_delivery import DispatchConfig, Dispatcher, run_webhook_delivery
from workers.webhook_endpoints import EndpointCache

DOWN = "database unavailable: injected"


def events_named(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


class FailingPurge:
    """`store.purge` whose first `failures` calls find the database away."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def idempotency_records(self, now_s: int, rows_max: int = 10_000) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise StoreUnavailable(DOWN)
        return 3


async def test_a_failing_purge_is_logged_and_counted(autojump_clock: Any) -> None:
    """Regression: the purge swallowed a database error without a word."""
    purge = FailingPurge(failures=1)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            errors = await nursery.start(run_idempotency_purge, SimpleNamespace(purge=purge), PurgeBounds(every_s=60))
            while purge.calls < 2:
                await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert errors.counts == {"idempotency_purge_failed": 1}
    failed = [entry for entry in logs if entry["event"] == "idempotency_purge_failed"]
    assert failed == [{"event": "idempotency_purge_failed", "error": DOWN, "log_level": "warning"}]
    assert [entry["count"] for entry in logs if entry["event"] == "idempotency_keys_purged"] == [3]


class UnreachableNetwork:
    """A network whose inspection endpoints cannot be reached."""

    async def settlement(self) -> list[dict[str, Any]]:
        raise NetworkRefused("could not reach the network: ConnectError")

    async def inquire(self, reference: str) -> Any:
        raise NetworkRefused("could not reach the network: ConnectError")


async def test_a_settlement_report_that_cannot_be_read_is_logged_and_counted(autojump_clock: Any) -> None:
    """Regression: the settlement check skipped an unreachable network
    without a word, so a check that never ran looked like one that passed."""
    node = SimpleNamespace(network=UnreachableNetwork(), shards={})
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            errors = await nursery.start(run_settlement_check, node, SettlementBounds(every_s=10))
            await trio.sleep(25)
            nursery.cancel_scope.cancel()
    assert errors.counts == {"settlement_report_unavailable": 2}
    failed = [entry for entry in logs if entry["event"] == "settlement_report_unavailable"]
    assert failed[0]["error"] == "could not reach the network: ConnectError"
    assert not any(entry["event"] == "settlement_compared" for entry in logs)


async def test_a_failed_inquiry_is_logged_with_its_operation_and_counted() -> None:
    shard = SimpleNamespace(state=SimpleNamespace(partition=3, unknown={("pi_unknown", "att_unknown")}))
    node = SimpleNamespace(shards={3: shard}, network=UnreachableNetwork(), config=NodeConfig())
    errors = WorkerErrors("reconciliation")
    due: dict[str, tuple[float, float]] = {}
    with capture_logs() as logs:
        summary = await reconcile_once(node, due=due, errors=errors)
    assert (summary.unknown, summary.deferred, summary.resolved) == (1, 1, 0)
    assert errors.counts == {"reconciliation_inquiry_failed": 1}
    [failed] = [entry for entry in logs if entry["event"] == "reconciliation_inquiry_failed"]
    assert (failed["partition"], failed["intent_id"], failed["reference"]) == (3, "pi_unknown", "att_unknown")
    assert due["att_unknown"][1] == 1.0, "asked again after a delay"


async def test_the_settlement_check_logs_each_mismatch(store: Any) -> None:
    await seed_merchant(store)
    network = CardNetwork(seed=17, latency_ms=(1, 2))
    with capture_logs() as logs:
        async with running_node(store, network) as node, trio.open_nursery() as workers:
            method = await new_payment_method(node)
            paid = await node.submit(create_command(node, payment_method_id=method, confirm=True))
            assert paid.intent.status == machine.Status.succeeded
            # Started after the payment, so its first comparison sees it. The
            # real clock: the journal is a real PostgreSQL (see tests/helpers.py).
            errors = await workers.start(run_settlement_check, node, SettlementBounds(every_s=0.2))
            await wait_until_async(lambda: events_named(logs, "settlement_compared"), 10, "a first comparison")
            # A charge at the network that our journal knows nothing of.
            stray = AuthorizationRequest("att_stray", "4242424242424242", 12, 2040, 999, "usd", True)
            await network.authorize(stray)
            await wait_until_async(lambda: events_named(logs, "settlement_mismatch"), 10, "a comparison that finds the stray charge")
            workers.cancel_scope.cancel()
    compared = events_named(logs, "settlement_compared")
    assert compared and compared[0]["mismatches"] == 0 and compared[0]["entries"] == 1
    mismatches = events_named(logs, "settlement_mismatch")
    assert mismatches and mismatches[0]["detail"] == "att_stray: ours None, network 999"
    assert errors.total == 0


async def test_the_node_workers_stop_when_the_node_stops(store: Any) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with running_node(store) as node:
                errors = await nursery.start(run_node_workers, node)
                assert sorted(errors) == ["card_rewrap", "idempotency_purge", "reconciliation", "settlement_check"]
            # running_node stopped the node; the workers' task returns by itself.


# ------------------------------------------------------------ webhooks

ENDPOINT_ID = "we_test"
VAULT = Vault(bytes(range(32)))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Webhooks:
    """`store.webhooks` and `store.events` for one endpoint and one event;
    the first `lost_records` attempts cannot be recorded."""

    def __init__(self, lost_records: int) -> None:
        self.lost_records = lost_records
        self.endpoint = WebhookEndpointRow(
            ENDPOINT_ID, "acct_test", False, f"http://127.0.0.1:{closed_port()}/hooks", ("*",), None, {}, "enabled",
            VAULT.seal("whsec_test", ENDPOINT_ID), 0,
        )
        self.event = EventRow("evt_test", 0, 1, 0, "acct_test", False, "payment_intent.succeeded", "pi_test", "pi_test", 0, b"{}")
        self.delivery = DeliveryRow(ENDPOINT_ID, "evt_test", 0, 1, 0, "pi_test", "pending", 0, 0, 0)
        self.recorded: list[DeliveryRow] = []
        self.dead = trio.Event()

    async def list_endpoints(self, merchant_id: Any) -> list[WebhookEndpointRow]:
        return [self.endpoint]

    async def endpoints_with_pending(self) -> list[str]:
        return [ENDPOINT_ID] if self.delivery.status == "pending" else []

    async def pending_deliveries(self, endpoint_id: str, rows_max: int) -> list[DeliveryRow]:
        return [self.delivery] if self.delivery.status == "pending" else []

    async def get_many(self, event_ids: list[str]) -> list[EventRow]:
        return [self.event]

    async def record_attempt(self, moved: DeliveryRow, attempt: Any) -> None:
        if self.lost_records:
            self.lost_records -= 1
            raise StoreUnavailable(DOWN)
        self.delivery = moved
        self.recorded.append(moved)
        if moved.status == "dead":
            self.dead.set()


async def test_a_failed_webhook_delivery_is_logged_and_counted_and_a_lost_record_does_not_end_it() -> None:
    """Regression: a delivery whose attempt could not be recorded raised out
    of its endpoint's nursery as an exception group, past the handler for
    StoreUnavailable, and took the node down; failed tries were counted
    nowhere."""
    webhooks = Webhooks(lost_records=1)
    store = SimpleNamespace(webhooks=webhooks, events=webhooks)
    config = DispatchConfig(schedule_s=(0.05,), timeout_s=2, poll_s=0.05, allow_private=True)
    dispatcher = Dispatcher(store, VAULT, EndpointCache(store), lambda event: b"{}", config)
    # The real clock: each try really connects to a closed local port, and
    # the dispatcher reads due times from the wall clock, which the mock
    # clock does not move (it would spin on to the deadline).
    with capture_logs() as logs, trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_webhook_delivery, dispatcher)
            dispatcher.wake([ENDPOINT_ID])
            await webhooks.dead.wait()
            nursery.cancel_scope.cancel()
    assert [row.status for row in webhooks.recorded] == ["pending", "dead"]
    assert dispatcher.errors.counts == {"webhook_delivery_failed": 3, "webhook_dispatch_waiting": 1}
    waiting = [entry for entry in logs if entry["event"] == "webhook_dispatch_waiting"]
    assert waiting == [{"event": "webhook_dispatch_waiting", "endpoint_id": ENDPOINT_ID, "error": DOWN, "log_level": "warning"}]
    failed = [entry for entry in logs if entry["event"] == "webhook_delivery_failed"]
    assert {(entry["endpoint_id"], entry["event_id"]) for entry in failed} == {(ENDPOINT_ID, "evt_test")}
    assert [entry["outcome"] for entry in failed] == ["pending", "pending", "dead"]
