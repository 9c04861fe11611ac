"""The router: from an id to the partition it names, and from a partition
to the local actor that owns it.

Every id the node mints carries its partition (engine/ids.py): a new intent
goes to the next partition this node serves, in turn, and everything made
for an intent later (attempts, refunds) lands in the intent's partition, so
a later request finds its actor from the id alone. The router also answers
reads of committed state across the node's actors; rendering them is the
gateway's business.
"""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Callable

import trio

from engine import ids, ledger
from engine.intent import Command, Dispute, PaymentIntent, Refund
from engine.ledger import Transfer, TransferKind
from shards.actor import Message, ShardActor


class Overloaded(Exception):
    """The owning actor's mailbox is full, or it is not serving: try again later."""


class NotServed(Overloaded):
    """The id names a partition this node does not serve (now): its owner,
    if another node, can take the request."""

    def __init__(self, partition: int | None) -> None:
        super().__init__(f"partition {partition} is not served by this node")
        self.partition = partition


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Router:
    def __init__(self, random_bytes: Callable[[int], bytes]) -> None:
        # Where ids and secrets get their randomness: the OS, except in the
        # deterministic simulation, which passes a seeded source.
        self.random_bytes = random_bytes
        self.shards: dict[int, ShardActor] = {}
        self._turn = itertools.count()

    def serve(self, partition: int, shard: ShardActor) -> None:
        """Route the partition's ids to this actor from now on."""
        assert partition not in self.shards, partition
        self.shards[partition] = shard

    def unserve(self, partition: int, shard: ShardActor) -> None:
        """Stop routing to this actor (if it still has the partition)."""
        if self.shards.get(partition) is shard:
            del self.shards[partition]

    def next_partition(self) -> int:
        """The partition a new intent goes to: the served ones in turn.
        Raises NotServed when none is served (yet)."""
        served = list(self.shards)
        if not served:
            raise NotServed(None)
        return served[next(self._turn) % len(served)]

    # ------------------------------------------------------------------ ids

    def new_id(self, prefix: str, partition: int | None = None) -> str:
        if partition is None:
            partition = self.next_partition()
        return ids.make_id(prefix, partition, now_ms(), self.random_bytes(ids.RANDOM_BYTES))

    @staticmethod
    def partition_of_intent(intent_id: str) -> int:
        partition = ids.partition_of(intent_id, "pi")
        assert partition is not None, intent_id
        return partition

    def client_secret(self, intent_id: str) -> str:
        return f"{intent_id}_secret_{base64.urlsafe_b64encode(self.random_bytes(18)).decode()}"

    # --------------------------------------------------------------- actors

    def actor_of_intent(self, intent_id: str) -> tuple[int | None, ShardActor | None]:
        """The partition an intent id names (None: not an intent id) and the
        actor serving it here (None: not this node's)."""
        partition = ids.partition_of(intent_id, "pi")
        return partition, None if partition is None else self.shards.get(partition)

    async def send(self, intent_id: str, command: Command) -> bool:
        """Hand an internal command (a network answer or notice) to the
        intent's actor; such commands are not bounded by the mailbox limit.
        False when the actor no longer takes messages (shutting down), or
        the partition is not served here any more (handed off or lost
        since the caller looked)."""
        await trio.lowlevel.checkpoint()
        return self.send_nowait(intent_id, command)

    def send_nowait(self, intent_id: str, command: Command) -> bool:
        """`send` without a checkpoint: an actor's mailbox takes internal
        commands without bound, so this never waits."""
        shard = self.shards.get(self.partition_of_intent(intent_id))
        if shard is None:
            return False
        try:
            shard.mailbox_send.send_nowait(Message(command, None))
        except trio.ClosedResourceError:
            return False
        return True

    # ---------------------------------------------------------------- reads

    def _served(self, object_id: str, prefix: str) -> ShardActor | None:
        """The actor of the partition an id names; None for an id that names
        none. Raises NotServed for a partition served elsewhere."""
        partition = ids.partition_of(object_id, prefix)
        if partition is None:
            return None
        shard = self.shards.get(partition)
        if shard is None:
            raise NotServed(partition)
        return shard

    def intent(self, intent_id: str) -> PaymentIntent | None:
        """The committed state of an intent, or None for an id that is not
        one of ours. Raises NotServed when another node serves its partition."""
        shard = self._served(intent_id, "pi")
        return None if shard is None else shard.state.intents.get(intent_id)

    def refund(self, refund_id: str) -> tuple[PaymentIntent, Refund] | None:
        """Raises NotServed when another node serves its partition."""
        shard = self._served(refund_id, "re")
        intent_id = None if shard is None else shard.state.references.get(refund_id)
        if intent_id is None:
            return None
        intent = self.intent(intent_id)
        refund = None if intent is None else intent.refund(refund_id)
        return None if intent is None or refund is None else (intent, refund)

    def dispute(self, dispute_id: str) -> tuple[PaymentIntent, Dispute] | None:
        """A dispute by id. Dispute ids come from the network and carry no
        partition, so every shard's index is asked."""
        for shard in self.shards.values():
            intent_id = shard.state.references.get(dispute_id)
            if intent_id is not None:
                intent = shard.state.intents[intent_id]
                dispute = intent.dispute(dispute_id)
                if dispute is not None:
                    return intent, dispute
        return None

    def intent_of_reference(self, reference: str) -> str | None:
        """The intent an attempt or refund id belongs to, if this node has it."""
        partition = ids.partition_of_reference(reference)
        shard = None if partition is None else self.shards.get(partition)
        return None if shard is None else shard.state.references.get(reference)

    def merchant_intents(self, merchant_id: str, livemode: bool) -> list[PaymentIntent]:
        """Every intent of a merchant in memory. A scan: fine while everything
        is in memory; an index comes with eviction."""
        return [
            intent
            for shard in self.shards.values()
            for intent in shard.state.intents.values()
            if intent.merchant_id == merchant_id and intent.livemode == livemode
        ]

    def merchant_funds(self, merchant_id: str, now_s: int) -> dict[str, tuple[int, int]]:
        """(available, pending) per currency, summed over this node's partitions."""
        funds: dict[str, tuple[int, int]] = {}
        for shard in self.shards.values():
            for currency in shard.state.ledger.currencies(merchant_id):
                available, pending = shard.state.ledger.merchant_funds(merchant_id, currency, now_s)
                before = funds.get(currency, (0, 0))
                funds[currency] = (before[0] + available, before[1] + pending)
        return funds

    def merchant_transfers(self, merchant_id: str) -> list[Transfer]:
        """Posted movements of a merchant's balance (holds are not movements)."""
        balance = ledger.account_id(merchant_id, ledger.MERCHANT_BALANCE)
        return [
            transfer
            for shard in self.shards.values()
            for transfer in shard.state.ledger.transfers()
            if balance in (transfer.debit_account_id, transfer.credit_account_id)
            and transfer.kind in (TransferKind.single, TransferKind.post_pending)
        ]
