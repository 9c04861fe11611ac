"""The node's bound on new payments follows its own delay (shards.admission):
it shrinks while turns keep their commands past the target, grows while the
node is busy and quick, and refuses only new payments: the commands of a
payment already started are taken however full the bound is."""

from __future__ import annotations

import functools
import random
import time
from typing import Any

import pytest
import trio

from engine import intent as machine
from shards.admission import Admission, AdmissionConfig
from shards.node import Node, NodeConfig, Overloaded, run_node
from shards.vault import Vault
from simulators.card_network import CardNetwork
from store.memory import MemoryStore

CONFIG = AdmissionConfig(target_s=0.1, window_s=0.1, limit_initial=100, limit_min=10, limit_max=200, decrease=0.5, increase=0.1)


def windows(admission: Admission, kept_s: float, in_flight: int, count: int, start: float = 0.0) -> float:
    """`count` windows, each with one admission check at `in_flight` and
    one turn that kept its commands `kept_s`; returns the time after them."""
    now = start
    for _ in range(count):
        admission.admits(in_flight)
        admission.observe(kept_s, now)
        now += CONFIG.window_s
    return now


def test_slow_turns_halve_the_bound_down_to_its_floor() -> None:
    admission = Admission(CONFIG)
    windows(admission, 0.3, 5, 1)
    assert admission.limit == 50
    windows(admission, 0.3, 5, 1, start=1.0)
    assert admission.limit == 25
    windows(admission, 0.3, 5, 10, start=2.0)
    assert admission.limit == CONFIG.limit_min
    assert not admission.admits(CONFIG.limit_min) and admission.admits(CONFIG.limit_min - 1)


def test_a_busy_quick_node_grows_its_bound_up_to_the_ceiling() -> None:
    admission = Admission(CONFIG)
    windows(admission, 0.01, 95, 1)
    assert admission.limit == 110
    windows(admission, 0.01, 200, 30, start=1.0)
    assert admission.limit == CONFIG.limit_max


def test_a_quick_node_that_does_not_fill_its_bound_keeps_it() -> None:
    admission = Admission(CONFIG)
    windows(admission, 0.01, 20, 10)
    assert admission.limit == 100
    # Between half the target and the target: neither congested nor clearly quick.
    windows(admission, 0.07, 100, 10, start=5.0)
    assert admission.limit == 100


def test_the_bound_moves_once_a_window() -> None:
    admission = Admission(CONFIG)
    admission.observe(0.5, 0.0)
    for step in range(1, 10):
        admission.observe(0.5, step * 0.001)
    assert admission.limit == 50 and admission.decreases == 1


COMMIT_S = 0.3  # every journal write takes this long (mock time)


def create(node: Node) -> machine.CreateIntent:
    intent_id = node.new_id("pi")
    return machine.CreateIntent(
        intent_id=intent_id, merchant_id="acct_busy", livemode=False, amount=1000, currency="usd",
        capture_method=machine.CaptureMethod.automatic, client_secret=node.client_secret(intent_id), at_s=int(time.time()),
        attempt_id=node.new_id("att", node.partition_of_intent(intent_id)),
    )


def cancel(node: Node, intent_id: str) -> machine.CancelIntent:
    return machine.CancelIntent(
        intent_id=intent_id, merchant_id="acct_busy", livemode=False, attempt_id=node.new_id("att", 0), at_s=int(time.time()),
        cancellation_reason=None,
    )


async def test_past_its_bound_the_node_refuses_new_payments_and_finishes_started_ones(autojump_clock: Any) -> None:
    store = MemoryStore()
    append_many = store.journal.append_many

    async def slow_append_many(batches: Any) -> None:
        await trio.sleep(COMMIT_S)
        await append_many(batches)

    store.journal.append_many = slow_append_many  # type: ignore[method-assign]
    await store.migrate(1)
    config = NodeConfig(partitions=1, group_commit=False, admission=AdmissionConfig(target_s=0.1, limit_initial=8, limit_min=4))
    async with trio.open_nursery() as nursery:
        node = await nursery.start(functools.partial(run_node, random_bytes=random.Random(1).randbytes), store, Vault(bytes(32)), CardNetwork(seed=1), config)
        started = [(await node.submit(create(node))).intent.id for _ in range(6)]
        # Each of those turns kept its command 0.3 s, past the 0.1 s target.
        assert node.admission.limit < 8 and node.admission.decreases >= 1
        limit = node.admission.limit
        refused: list[str] = []
        done: list[str] = []

        async def submit(command: machine.Command) -> None:
            try:
                await node.submit(command)
                done.append(type(command).__name__)
            except Overloaded as error:
                refused.append(f"{type(command).__name__}: {error}")

        async with trio.open_nursery() as clients:
            # Fill the bound with cancels of started payments, then more.
            for intent_id in started:
                clients.start_soon(submit, cancel(node, intent_id))
            await trio.sleep(0.01)
            assert node.replies.waiting == len(started) > limit
            assert node.saturated(0), "the cheap check before building a payment agrees"
            clients.start_soon(submit, create(node))
        shard = node.shards[0]
        node.stop_accepting()
    assert done.count("CancelIntent") == len(started), refused
    assert refused == ["CreateIntent: the node has as many commands in flight as it admits now; new payments are refused for now"]
    statuses = {shard.state.intents[i].status for i in started}
    assert statuses == {machine.Status.canceled}
