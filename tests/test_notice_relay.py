"""The notice relay keeps up with a burst of network notices: it hands over
every notice already due without a scheduler pass for each (one pass a
notice fell behind at a few hundred a second on a loaded node, and 3-D
Secure payments waited seconds for their answers)."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any

import trio

from engine import ids
from engine.network import NetworkNotice
from shards.effects import NOTICES_PER_PASS, run_notice_relay
from shards.router import Router
from simulators.card_network import CardNetwork

PARTITION = 3
BURST = 1000


def _id(prefix: str) -> str:
    return ids.make_id(prefix, PARTITION, time.time_ns() // 1_000_000, os.urandom(ids.RANDOM_BYTES))


async def test_a_burst_of_due_notices_is_handed_over_in_a_few_scheduler_passes() -> None:
    network = CardNetwork(seed=0)
    send, receive = trio.open_memory_channel[Any](float("inf"))
    intent_id = _id("pi")
    references = [_id("att") for _ in range(BURST)]
    # What the relay uses of an actor: the references it knows, its mailbox.
    actor = SimpleNamespace(state=SimpleNamespace(references=dict.fromkeys(references, intent_id)), mailbox_send=send)
    router = Router(os.urandom)
    router.serve(PARTITION, actor)  # type: ignore[arg-type]
    for reference in references:
        await network.return_notice(NetworkNotice(reference=reference, kind="authorization_completed"))
    received: list[Any] = []
    passes = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(run_notice_relay, network, router)
        # This task runs once a scheduler pass, as the relay does.
        while len(received) < BURST and passes < 10 * BURST:
            await trio.lowlevel.checkpoint()
            passes += 1
            while True:
                try:
                    received.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
        nursery.cancel_scope.cancel()
    # Each notice became its command, once (a returned notice goes out
    # first, so the burst comes back last in first).
    assert [message.command.attempt_id for message in received] == references[::-1]
    assert all(message.command.intent_id == intent_id and message.reply is None for message in received)
    # A pass per NOTICES_PER_PASS notices, and a few more for the start.
    assert passes <= BURST // NOTICES_PER_PASS + 5, passes
