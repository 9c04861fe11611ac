"""Shard actors on a real PostgreSQL journal (pytest-trio).

Commands on one intent apply one at a time with no lock; a batch is
journaled before anyone hears of it; a failed commit changes nothing; a
restart recovers the journal and marks attempts left pending as unknown.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest
import trio
import trio.testing

from engine import intent as machine
from engine import ledger
from engine.results import Result
from shards.actor import ShardConfig
from shards.node import Node, NodeConfig, Overloaded, run_node
from shards.vault import Vault
from simulators.card_network import CardNetwork
from store.errors import StoreUnavailable
from tests.helpers import wait_until_async

VAULT_KEY = bytes(range(32))


class FaultyJournal:
    """The real journal, with faults injected into its appends on request."""

    def __init__(self, journal: Any) -> None:
        self._journal = journal
        self.fail_appends = 0
        # Appends let through before `fail_appends` takes effect, so a test
        # can fail a later commit without watching for the earlier ones.
        self.pass_appends = 0
        self.lose_commit_answers = 0
        self.hold_appends: trio.Event | None = None
        self.appends = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._journal, name)

    async def append_many(self, batches: list) -> None:
        """The node's group commit writes through here (one call, one write)."""
        self.appends += 1
        if self.hold_appends is not None:
            await self.hold_appends.wait()
        if self.pass_appends:
            self.pass_appends -= 1
        elif self.fail_appends:
            self.fail_appends -= 1
            raise StoreUnavailable("injected commit failure")
        await self._journal.append_many(batches)
        if self.lose_commit_answers:
            # Committed, but the answer never reaches us (a server restart).
            self.lose_commit_answers -= 1
            raise StoreUnavailable("injected loss of a commit's answer")


class FaultyStore:
    """The real store, whose journal fails on request (`faulty.journal`)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.journal = FaultyJournal(store.journal)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class SilentNetwork:
    """A card network that never answers, like one that died mid-call."""

    def __init__(self) -> None:
        self.calls = 0
        self.called = trio.Event()

    async def authorize(self, request: Any) -> Any:
        self.calls += 1
        self.called.set()
        await trio.sleep_forever()


@contextlib.asynccontextmanager
async def running_node(store: Any, network: Any = None, **config: Any):
    config.setdefault("partitions", 4)
    network = network or CardNetwork(seed=3, latency_ms=(1, 3))
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(run_node, store, Vault(VAULT_KEY), network, NodeConfig(**config))
        yield node
        node.stop_accepting()


async def new_payment_method(node: Node, number: str = "4242424242424242") -> str:
    row = await node.create_payment_method("acct_test", False, number, 12, 2040, "visa")
    return row.id


def create_command(node: Node, **overrides: Any) -> machine.CreateIntent:
    intent_id = node.new_id("pi")
    fields: dict[str, Any] = dict(
        intent_id=intent_id,
        merchant_id="acct_test",
        livemode=False,
        amount=1000,
        currency="usd",
        capture_method=machine.CaptureMethod.automatic,
        client_secret=node.client_secret(intent_id),
        at_s=int(time.time()),
        attempt_id=node.new_id("att", node.partition_of_intent(intent_id)),
    )
    fields.update(overrides)
    return machine.CreateIntent(**fields)


def confirm_command(node: Node, intent_id: str) -> machine.ConfirmIntent:
    return machine.ConfirmIntent(
        intent_id=intent_id,
        merchant_id="acct_test",
        livemode=False,
        attempt_id=node.new_id("att", node.partition_of_intent(intent_id)),
        at_s=int(time.time()),
    )


async def seed_merchant(store: Any) -> None:
    await store.merchants.create("acct_test", "Actor tests", [])


async def journal_kinds(store: Any, node: Node, intent_id: str) -> list[str]:
    rows = await store.journal.load(node.partition_of_intent(intent_id))
    return [row.kind for row in rows if row.entity_id == intent_id]


async def test_concurrent_confirms_on_one_intent_charge_once(store) -> None:
    await seed_merchant(store)
    network = CardNetwork(seed=5, latency_ms=(2, 4))
    async with running_node(store, network) as node:
        method = await new_payment_method(node)
        created = await node.submit(create_command(node, payment_method_id=method))
        assert created.result is Result.ok
        intent_id = created.intent.id
        outcomes = []

        async def confirm() -> None:
            outcomes.append(await node.submit(confirm_command(node, intent_id)))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(confirm)
        winners = [outcome for outcome in outcomes if outcome.result is Result.ok]
        assert len(winners) == 1
        assert winners[0].intent.status == machine.Status.succeeded
        assert sorted({outcome.result for outcome in outcomes if outcome.result is not Result.ok}) == [Result.intent_unexpected_state]
        assert len([op for op in network.operations() if op.reference == winners[0].attempt_id]) == 1
        assert network.calls_total() == 1
        assert node.intent(intent_id).amount_received == 1000
        assert await journal_kinds(store, node, intent_id) == ["IntentCreated", "AttemptStarted", "AttemptApproved"]


async def test_many_intents_at_once_lose_no_update_and_share_commits(store) -> None:
    await seed_merchant(store)
    async with running_node(store) as node:
        method = await new_payment_method(node)
        results: dict[str, machine.PaymentIntent] = {}

        async def pay(index: int) -> None:
            capture = machine.CaptureMethod.manual if index % 2 else machine.CaptureMethod.automatic
            outcome = await node.submit(create_command(node, payment_method_id=method, confirm=True, amount=100 + index, capture_method=capture))
            assert outcome.result is Result.ok
            results[outcome.intent.id] = outcome.intent

        async with trio.open_nursery() as nursery:
            for index in range(400):
                nursery.start_soon(pay, index)
        assert len(results) == 400
        for intent in results.values():
            expected = machine.Status.requires_capture if intent.amount % 2 else machine.Status.succeeded
            assert intent.status == expected, intent
            assert node.intent(intent.id) == intent
        commits = sum(shard.commits_total for shard in node.shards.values())
        commands = sum(shard.commands_total for shard in node.shards.values())
        # 400 creates + 400 answers; group commit must have shared transactions.
        assert commands == 800
        assert commits < commands
        for partition in range(4):
            rows = await store.journal.load(partition)
            assert [row.seq for row in rows] == list(range(1, len(rows) + 1))


async def test_failed_commit_changes_nothing_and_is_reported(store) -> None:
    await seed_merchant(store)
    faulty = FaultyStore(store)
    async with running_node(faulty) as node:
        command = create_command(node)
        faulty.journal.fail_appends = 1
        with pytest.raises(StoreUnavailable, match=r"^injected commit failure$"):
            await node.submit(command)
        assert node.intent(command.intent_id) is None
        assert await journal_kinds(store, node, command.intent_id) == []
        retried = await node.submit(command)
        assert retried.result is Result.ok
        assert node.intent(command.intent_id).status == machine.Status.requires_payment_method


async def test_network_answer_survives_a_failed_commit(store) -> None:
    await seed_merchant(store)
    faulty = FaultyStore(store)
    network = CardNetwork(seed=9, latency_ms=(20, 20))
    async with running_node(faulty, network) as node:
        method = await new_payment_method(node)
        command = create_command(node, payment_method_id=method, confirm=True)
        # The batch that journals the attempt goes through, and the network
        # call is made; the commit of its answer fails once.
        faulty.journal.pass_appends, faulty.journal.fail_appends = 1, 1
        outcome = await node.submit(command)
        assert faulty.journal.fail_appends == 0, "the answer's commit failed once"
        assert outcome.result is Result.ok
        assert outcome.intent.status == machine.Status.succeeded
        assert network.calls_total() == 1
        assert await journal_kinds(store, node, command.intent_id) == ["IntentCreated", "AttemptStarted", "AttemptApproved"]


async def test_full_mailbox_is_refused_not_queued(store) -> None:
    await seed_merchant(store)
    faulty = FaultyStore(store)
    faulty.journal.hold_appends = trio.Event()
    shard = ShardConfig(mailbox_commands_max=4, batch_commands_max=2)
    async with running_node(faulty, partitions=1, shard=shard) as node:
        async with trio.open_nursery() as nursery:
            # One command is stuck in its commit; four more fill the mailbox.
            nursery.start_soon(node.submit, create_command(node))
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(4):
                nursery.start_soon(node.submit, create_command(node))
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(Overloaded, match=r"^partition 0 is busy$"):
                await node.submit(create_command(node))
            faulty.journal.hold_appends.set()
        assert len(node.shards[0].state.intents) == 5


async def test_restart_recovers_state_and_marks_pending_attempts_unknown(store) -> None:
    await seed_merchant(store)
    network = SilentNetwork()
    with trio.move_on_after(5):
        async with trio.open_nursery() as crash:
            node: Node = await crash.start(run_node, store, Vault(VAULT_KEY), network, NodeConfig(partitions=4, network_timeout_s=60))
            method = await new_payment_method(node)
            settled = await node.submit(create_command(node, payment_method_id=method))
            pending = create_command(node, payment_method_id=method, confirm=True)
            crash.start_soon(node.submit, pending)
            await network.called.wait()
            # The attempt is journaled as pending and the call is in flight: crash.
            crash.cancel_scope.cancel()
    assert await journal_kinds(store, node, pending.intent_id) == ["IntentCreated", "AttemptStarted"]
    async with running_node(store) as recovered:
        assert recovered.intent(settled.intent.id) == settled.intent
        # Recovery marks the attempt in its own batch, soon after the start.
        await wait_until_async(
            lambda: recovered.intent(pending.intent_id).attempts[0].status is not machine.AttemptStatus.pending,
            10,
            "the recovered attempt to leave pending",
        )
        intent = recovered.intent(pending.intent_id)
        assert intent.status == machine.Status.processing
        assert intent.attempts[0].status is machine.AttemptStatus.unknown
        # Never a second attempt while the first is not known to have failed.
        refused = await recovered.submit(confirm_command(recovered, pending.intent_id))
        assert refused.result is Result.intent_unexpected_state
    assert await journal_kinds(store, node, pending.intent_id) == ["IntentCreated", "AttemptStarted", "AttemptOutcomeUnknown"]


async def test_shutdown_drains_mailboxes_and_journals_answers(store) -> None:
    await seed_merchant(store)
    network = CardNetwork(seed=11, latency_ms=(30, 50))
    outcomes: list = []
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(run_node, store, Vault(VAULT_KEY), network, NodeConfig(partitions=2))
        method = await new_payment_method(node)

        async def pay() -> None:
            outcomes.append(await node.submit(create_command(node, payment_method_id=method, confirm=True)))

        async with trio.open_nursery() as clients:
            for _ in range(20):
                clients.start_soon(pay)
            await trio.testing.wait_all_tasks_blocked()
            node.stop_accepting()
    # run_node returned: every caller was answered, after the answer was journaled.
    assert len(outcomes) == 20
    assert all(outcome.intent.status == machine.Status.succeeded for outcome in outcomes)
    for outcome in outcomes:
        assert await journal_kinds(store, node, outcome.intent.id) == ["IntentCreated", "AttemptStarted", "AttemptApproved"]


async def test_uncaptured_authorization_expires_and_releases_the_hold(store) -> None:
    await seed_merchant(store)
    network = CardNetwork(seed=13, latency_ms=(1, 2))
    shard = ShardConfig(authorization_expiry_s=1, expiry_check_s=0.05)
    async with running_node(store, network, shard=shard) as node:
        method = await new_payment_method(node)
        held = await node.submit(create_command(node, payment_method_id=method, confirm=True, capture_method=machine.CaptureMethod.manual))
        assert held.intent.status == machine.Status.requires_capture
        intent_id = held.intent.id
        shard_ledger = node.shards[node.partition_of_intent(intent_id)].state.ledger
        receivable = ledger.account_id("acct_test", ledger.NETWORK_RECEIVABLE)
        assert shard_ledger.balance(receivable, "usd").debits_pending == 1000
        # The real clock: the expiry is the behaviour under test, and the
        # journal is a real PostgreSQL (see tests/helpers.py).
        def expired_and_voided() -> machine.PaymentIntent | None:
            intent = node.intent(intent_id)
            voided = intent.status == machine.Status.canceled and intent.attempts[-1].status is not machine.AttemptStatus.pending
            return intent if voided else None

        expired = await wait_until_async(expired_and_voided, 10, "the authorization to expire and its void to be answered")
        assert expired.cancellation_reason == "automatic"
        assert expired.amount_capturable == 0
        assert shard_ledger.balance(receivable, "usd").debits_pending == 0
        assert shard_ledger.verify() == []
        void = expired.attempts[-1]
        assert void.kind is machine.AttemptKind.void and void.status is machine.AttemptStatus.succeeded
        assert network.lookup(void.id).kind == "void" and network.lookup(void.id).approved
    kinds = await journal_kinds(store, node, intent_id)
    assert kinds == ["IntentCreated", "AttemptStarted", "AttemptApproved", "IntentCanceled", "AttemptApproved"]


async def test_a_commit_whose_answer_was_lost_is_found_and_acknowledged(store) -> None:
    """Regression: a PostgreSQL restart lost the answer to a commit that had
    happened; the actor took it for a failure, reused its journal positions
    on the next batch, hit the journal's key and took the node down."""
    await seed_merchant(store)
    faulty = FaultyStore(store)
    network = CardNetwork(seed=19, latency_ms=(1, 2))
    async with running_node(faulty, network) as node:
        method = await new_payment_method(node)
        faulty.journal.lose_commit_answers = 1
        paid = await node.submit(create_command(node, payment_method_id=method, confirm=True))
        assert paid.result is Result.ok and paid.intent.status == machine.Status.succeeded
        after = await node.submit(create_command(node))  # the next batch of the same partitions
        assert after.result is Result.ok
    assert network.calls_total() == 1
    assert await journal_kinds(store, node, paid.intent.id) == ["IntentCreated", "AttemptStarted", "AttemptApproved"]


async def test_a_command_not_journaled_in_time_is_refused_not_guessed(store) -> None:
    """Regression: past the reply timeout, a create whose commit was still
    stuck returned the intent as None (a 500 in the gateway)."""
    await seed_merchant(store)
    faulty = FaultyStore(store)
    faulty.journal.hold_appends = trio.Event()
    async with running_node(faulty, reply_timeout_s=0.5) as node:
        with pytest.raises(StoreUnavailable, match=r"^the command could not be journaled in time$"):
            await node.submit(create_command(node))
        faulty.journal.hold_appends.set()
