"""A node: the shard actors of the partitions this process owns, and the
router from an id to the actor that owns it.

The node is also the shell that performs the engine's effects: it resolves a
payment method, opens its sealed card number, and calls the card network with
the attempt id as the reference.
"""

from __future__ import annotations

import base64
import functools
import gc
import hashlib
import itertools
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
import structlog
import trio

from engine import ids, ledger
from engine.ledger import Transfer, TransferKind
from engine import intent as machine
from engine.intent import Command, Dispute, NetworkCall, PaymentIntent, Refund
from engine.network import CaptureRequest, NetworkNotice, NetworkOutcomeUnknown, NetworkRefused, RefundRequest, VoidRequest
from shards import checks
from shards.actor import Message, Outcome, ShardActor, ShardConfig, ShardState
from shards.group_commit import GroupCommit
from shards.idempotency import TTL_S_DEFAULT, Claim, IdempotencyRecords
from shards.vault import Vault
from engine.network import AuthorizationRequest, NetworkAnswer
from store.errors import StoreUnavailable
from store.postgres import Store
from store.redis_link import RedisLink
from store.rows import ApiKeyRow, PaymentMethodRow

log = structlog.get_logger("shards.node")

DECLINE_MESSAGES = {
    "payment_intent_authentication_failure": "We are unable to authenticate your payment method. Please choose a different payment method and try again.",
    "card_declined": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
    "incorrect_cvc": "Your card's security code is incorrect.",
    "incorrect_number": "Your card number is incorrect.",
    "processing_error": "An error occurred while processing your card. Try again in a little bit.",
}


class CardNetwork(Protocol):
    async def authorize(self, request: AuthorizationRequest) -> NetworkAnswer: ...
    async def capture(self, request: CaptureRequest) -> NetworkAnswer: ...
    async def void(self, request: VoidRequest) -> NetworkAnswer: ...
    async def refund(self, request: RefundRequest) -> NetworkAnswer: ...
    async def next_notice(self) -> NetworkNotice: ...
    async def inquire(self, reference: str) -> NetworkAnswer: ...


class ReconcileSummary(msgspec.Struct):
    unknown: int = 0
    resolved: int = 0
    approved: int = 0
    deferred: int = 0


class Overloaded(Exception):
    """The owning actor's mailbox is full, or it is not serving: try again later."""


class NodeConfig(msgspec.Struct, frozen=True):
    partitions: int = 16
    shard: ShardConfig = ShardConfig()
    network_timeout_s: float = 10.0
    reply_timeout_s: float = 30.0
    # Commands in flight on the node past which new ones are refused at once
    # (503): past capacity a queue only adds latency until everything times out.
    in_flight_max: int = 8192
    cache_entries_max: int = 100_000
    # Terms given to new intents; fees come from each merchant's row.
    settlement_delay_s: int = 2 * 86_400
    dispute_fee_minor: int = 1500
    idempotency_ttl_s: int = TTL_S_DEFAULT
    key_cache_s: float = 5.0
    reconcile_every_s: float = 1.0
    reconcile_batch_max: int = 1000
    settlement_check_every_s: float = 300.0
    # Requests without a working key are limited per client address.
    anonymous_rate_per_s: int = 20
    anonymous_burst: int = 40
    # The partitions this node serves (None: all). Nodes sharing a database
    # are given disjoint sets, fixed at start.
    owned_partitions: tuple[int, ...] | None = None
    # One write for the batches of all the node's actors (shards.group_commit).
    group_commit: bool = True

    def served_partitions(self) -> tuple[int, ...]:
        return tuple(range(self.partitions)) if self.owned_partitions is None else self.owned_partitions


class BoundedCache(OrderedDict):
    """A dict that forgets its oldest entries past a size bound."""

    def __init__(self, entries_max: int) -> None:
        super().__init__()
        self.entries_max = entries_max

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.entries_max:
            self.popitem(last=False)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def hash_key(secret: str) -> bytes:
    """API keys carry 190+ random bits, so one SHA-256 is enough to store them."""
    return hashlib.sha256(secret.encode()).digest()


class Node:
    def __init__(
        self,
        store: Store,
        vault: Vault,
        network: CardNetwork,
        config: NodeConfig,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        # Where ids and secrets get their randomness: the OS, except in the
        # deterministic simulation, which passes a seeded source.
        self.random_bytes = random_bytes
        self.store = store
        self.vault = vault
        self.network = network
        self.config = config
        self.shards: dict[int, ShardActor] = {}
        self._next_partition = itertools.cycle(config.served_partitions())
        self._payment_methods = BoundedCache(config.cache_entries_max)
        self._api_keys = BoundedCache(config.cache_entries_max)
        self.stop_relay: Any = lambda: None
        self.idempotency = IdempotencyRecords(store, vault, ttl_s=config.idempotency_ttl_s)
        # Rate-limit buckets and signature nonces; None runs without both.
        self.redis: RedisLink | None = None
        # The outbox relays and webhook workers (shards.webhooks.EventWorkers),
        # when the node runs with Redis.
        self.events: Any = None
        self.group_commit: GroupCommit | None = None
        # Replies callers wait for, oldest first, with their deadlines.
        self._waiting: dict[Any, float] = {}
        # The address cardholders reach this node at (for 3-D Secure pages);
        # set once the HTTP server is listening.
        self.public_url = "http://127.0.0.1"

    # ---------------------------------------------------------------- ids

    def new_id(self, prefix: str, partition: int | None = None) -> str:
        if partition is None:
            partition = next(self._next_partition)
        return ids.make_id(prefix, partition, now_ms(), self.random_bytes(ids.RANDOM_BYTES))

    @staticmethod
    def partition_of_intent(intent_id: str) -> int:
        partition = ids.partition_of(intent_id, "pi")
        assert partition is not None, intent_id
        return partition

    def client_secret(self, intent_id: str) -> str:
        return f"{intent_id}_secret_{base64.urlsafe_b64encode(self.random_bytes(18)).decode()}"

    # -------------------------------------------------------------- intents

    def intent(self, intent_id: str) -> PaymentIntent | None:
        """The committed state of an intent, or None for an id that is not ours."""
        partition = ids.partition_of(intent_id, "pi")
        shard = None if partition is None else self.shards.get(partition)
        return None if shard is None else shard.state.intents.get(intent_id)

    def refund(self, refund_id: str) -> tuple[PaymentIntent, Refund] | None:
        partition = ids.partition_of(refund_id, "re")
        shard = None if partition is None else self.shards.get(partition)
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

    async def submit(self, command: Command, claim: Claim | None = None) -> Outcome:
        """Run a command on the owning actor and wait until it is journaled.

        Raises Overloaded (mailbox full) or StoreUnavailable (not journaled,
        or not journaled within `reply_timeout_s`). A confirm whose network
        answer does not come back within `reply_timeout_s` returns the intent
        as it is journaled now.
        """
        partition = ids.partition_of(command.intent_id, "pi")
        shard = None if partition is None else self.shards.get(partition)
        if shard is None:
            raise Overloaded(f"partition {partition} is not served by this node")
        if len(self._waiting) >= self.config.in_flight_max:
            raise Overloaded("too many commands in flight on this node")
        try:
            reply = shard.submit_nowait(command, claim)
        except (trio.WouldBlock, trio.ClosedResourceError) as error:
            raise Overloaded(f"partition {partition} is busy") from error
        # One timer task expires late replies (expire_replies_forever): a
        # cancel scope per command cost more than the command's decision.
        self._waiting[reply] = trio.current_time() + self.config.reply_timeout_s
        try:
            value = await reply.wait()
        finally:
            self._waiting.pop(reply, None)
        if isinstance(value, StoreUnavailable):
            raise value
        if value is not None:
            return value
        if not reply.journaled:
            # Still not committed (the database is away): say nothing about
            # an outcome that may yet happen; a retry with the same
            # idempotency key will find it.
            raise StoreUnavailable("the command could not be journaled in time")
        # Journaled and waiting for the network: the intent as it is on disk.
        return Outcome(machine.Result.ok, self.intent(command.intent_id))

    # ------------------------------------------------------ payment methods

    async def create_payment_method(
        self,
        merchant_id: str,
        livemode: bool,
        number: str,
        exp_month: int,
        exp_year: int,
        brand: str,
        claim: Claim | None = None,
    ) -> PaymentMethodRow:
        payment_method_id = self.new_id("pm")
        row = PaymentMethodRow(
            id=payment_method_id,
            merchant_id=merchant_id,
            livemode=livemode,
            brand=brand,
            last4=number[-4:],
            exp_month=exp_month,
            exp_year=exp_year,
            fingerprint=self.vault.fingerprint(number),
            sealed_number=self.vault.seal(number, payment_method_id),
            created_s=int(time.time()),
        )
        await self.store.merchants.insert_payment_method(row, None if claim is None else claim.completed(row, row.id))
        self._payment_methods.put(row.id, row)
        return row

    async def payment_method(self, payment_method_id: str) -> PaymentMethodRow | None:
        row = self._payment_methods.get(payment_method_id)
        if row is None:
            if ids.parse_id(payment_method_id, "pm") is None:
                return None
            row = await self.store.merchants.get_payment_method(payment_method_id)
            if row is not None:
                self._payment_methods.put(row.id, row)
        return row

    # ------------------------------------------------------------------ keys

    async def authenticate(self, secret: str) -> ApiKeyRow | None:
        """The key's row, if the key works now. Rows are kept for a short
        while, so a key rolled elsewhere stops working here soon after its
        grace period ends, not only at restart."""
        key_hash = hash_key(secret)
        now_s = time.time()
        cached = self._api_keys.get(key_hash)
        if cached is not None and cached[1] > now_s:
            row = cached[0]
        else:
            row = await self.store.merchants.find_api_key(key_hash)
            if row is not None:
                self._api_keys.put(key_hash, (row, now_s + self.config.key_cache_s))
        if row is not None and row.expires_at_s is not None and row.expires_at_s <= now_s:
            return None
        return row

    def signing_secret(self, key: ApiKeyRow) -> str | None:
        if key.signing_secret_sealed is None:
            return None
        return self.vault.unseal(key.signing_secret_sealed, key.merchant_id)

    # -------------------------------------------------------------- effects

    async def perform(self, effect: NetworkCall) -> Command:
        """Call the card network once and turn its answer into a command."""
        try:
            answer = await self._call_network(effect)
        except NetworkRefused:
            # Nothing happened at the network, for certain: the attempt failed.
            return self._decline(effect, "processing_error", "processing_error")
        at_s = int(time.time())
        if answer is None:
            log.warning("network_outcome_unknown", intent_id=effect.intent_id, attempt_id=effect.attempt_id, kind=effect.kind)
            return machine.RecordUnknownOutcome(intent_id=effect.intent_id, attempt_id=effect.attempt_id, at_s=at_s)
        return self._command_for(effect.intent_id, effect.attempt_id, answer)

    async def _call_network(self, effect: NetworkCall) -> NetworkAnswer | None:
        """The network's answer, or None when it is unknown (no answer in
        time, or an ambiguous failure). Raises NetworkRefused when the
        network did not act."""
        answer: NetworkAnswer | None = None
        if effect.kind in ("authorize", "charge"):
            request = await self._authorization_request(effect)
            if request is None:
                raise NetworkRefused("the payment method could not be read, so the network was not called")
            with trio.move_on_after(self.config.network_timeout_s):
                try:
                    answer = await self.network.authorize(request)
                except NetworkOutcomeUnknown:
                    return None
        else:
            assert effect.parent_id is not None, effect
            with trio.move_on_after(self.config.network_timeout_s):
                try:
                    answer = await self._call_other(effect)
                except NetworkOutcomeUnknown:
                    return None
        return answer

    async def _call_other(self, effect: NetworkCall) -> NetworkAnswer:
        assert effect.parent_id is not None
        if effect.kind == "capture":
            return await self.network.capture(CaptureRequest(effect.attempt_id, effect.parent_id, effect.amount, effect.currency))
        if effect.kind == "void":
            return await self.network.void(VoidRequest(effect.attempt_id, effect.parent_id))
        assert effect.kind == "refund", effect
        return await self.network.refund(RefundRequest(effect.attempt_id, effect.parent_id, effect.amount, effect.currency))

    def _command_for(self, intent_id: str, reference: str, answer: NetworkAnswer) -> Command:
        at_s = int(time.time())
        if answer.approved:
            return machine.RecordApproval(intent_id=intent_id, attempt_id=reference, at_s=at_s)
        if answer.code == "authentication_required":
            url = f"{self.public_url}/simulator/3ds/{reference}"
            return machine.RecordActionRequired(intent_id=intent_id, attempt_id=reference, at_s=at_s, url=url)
        code = answer.code or "card_declined"
        return machine.RecordDecline(
            intent_id=intent_id,
            attempt_id=reference,
            at_s=at_s,
            code=code,
            decline_code=answer.decline_code,
            message=DECLINE_MESSAGES.get(code, DECLINE_MESSAGES["card_declined"]),
        )

    async def _authorization_request(self, effect: NetworkCall) -> AuthorizationRequest | None:
        try:
            method = await self.payment_method(effect.payment_method_id)
        except StoreUnavailable:
            return None
        if method is None:
            return None
        return AuthorizationRequest(
            reference=effect.attempt_id,
            card_number=self.vault.unseal(method.sealed_number, method.id),
            exp_month=method.exp_month,
            exp_year=method.exp_year,
            amount_minor=effect.amount,
            currency=effect.currency,
            capture=effect.kind == "charge",
        )

    @staticmethod
    def _decline(effect: NetworkCall, code: str, decline_code: str | None) -> Command:
        return machine.RecordDecline(
            intent_id=effect.intent_id,
            attempt_id=effect.attempt_id,
            at_s=int(time.time()),
            code=code,
            decline_code=decline_code,
            message=DECLINE_MESSAGES.get(code, DECLINE_MESSAGES["card_declined"]),
        )

    async def relay_notices(self) -> None:
        """Turn the network's later reports into commands for the owning actors:
        a refund that failed after it was accepted, or the final answer to an
        authorization that waited for the cardholder's 3-D Secure challenge."""
        next_notice = getattr(self.network, "next_notice", None)
        if next_notice is None:
            return
        while True:
            notice = await next_notice()
            # A dispute is new to us: it finds its intent by the charge it names.
            named = notice.parent_reference if notice.kind.startswith("dispute_") else notice.reference
            intent_id = None if named is None else self.intent_of_reference(named)
            if intent_id is None:
                log.error("network_notice_unmatched", reference=notice.reference, kind=notice.kind)
                continue
            at_s = int(time.time())
            command: Command
            if notice.kind == "dispute_opened":
                command = machine.RecordDisputeOpened(
                    intent_id=intent_id, dispute_id=notice.reference, amount=notice.amount_minor, at_s=at_s
                )
            elif notice.kind == "dispute_closed":
                command = machine.RecordDisputeClosed(
                    intent_id=intent_id, dispute_id=notice.reference, won=bool(notice.won), at_s=at_s
                )
            elif notice.kind == "refund_failed":
                command = machine.RecordRefundFailure(
                    intent_id=intent_id, refund_id=notice.reference, at_s=at_s, failure_reason=notice.code or "unknown"
                )
            elif notice.kind == "authorization_completed" and notice.code is None:
                command = machine.RecordApproval(intent_id=intent_id, attempt_id=notice.reference, at_s=at_s)
            elif notice.kind == "authorization_completed":
                command = machine.RecordDecline(
                    intent_id=intent_id,
                    attempt_id=notice.reference,
                    at_s=at_s,
                    code=notice.code,
                    decline_code=None,
                    message=DECLINE_MESSAGES.get(notice.code, DECLINE_MESSAGES["card_declined"]),
                )
            else:
                log.error("network_notice_unknown", reference=notice.reference, kind=notice.kind)
                continue
            shard = self.shards[self.partition_of_intent(intent_id)]
            try:
                await shard.mailbox_send.send(Message(command, None))
            except trio.ClosedResourceError:
                return

    async def reconcile_forever(self) -> None:
        """Resolve every operation whose outcome is unknown by asking the
        network by reference (DESIGN section 5, step 5), with backoff."""
        due: dict[str, tuple[float, float]] = {}  # reference -> (next try, delay)
        while True:
            await self.reconcile_once(due)
            await trio.sleep(self.config.reconcile_every_s)

    async def reconcile_once(self, due: dict[str, tuple[float, float]] | None = None) -> ReconcileSummary:
        """One pass over the unknown operations: ask, then journal the answer
        through the owning actor. Bounded per pass."""
        summary = ReconcileSummary()
        now = trio.current_time()
        unknown = [item for shard in self.shards.values() for item in sorted(shard.state.unknown)]
        for intent_id, reference in unknown[: self.config.reconcile_batch_max]:
            summary.unknown += 1
            if due is not None and due.get(reference, (0.0, 0.0))[0] > now:
                continue
            answer = None
            with trio.move_on_after(self.config.network_timeout_s):
                try:
                    answer = await self.network.inquire(reference)
                except (NetworkRefused, NetworkOutcomeUnknown):
                    answer = None
            if answer is None or answer.code == "authentication_required":
                # Unreachable, or still waiting for the cardholder: ask later.
                if due is not None:
                    delay = min(60.0, 2 * due.get(reference, (0.0, 0.5))[1])
                    due[reference] = (now + delay, delay)
                summary.deferred += 1
                continue
            if due is not None:
                due.pop(reference, None)
            shard = self.shards[self.partition_of_intent(intent_id)]
            try:
                await shard.mailbox_send.send(Message(self._command_for(intent_id, reference, answer), None))
            except trio.ClosedResourceError:
                break
            summary.resolved += 1
            summary.approved += answer.approved
        if summary.resolved:
            log.info("reconciliation_pass", unknown=summary.unknown, resolved=summary.resolved, deferred=summary.deferred)
        return summary

    async def compare_settlement_forever(self) -> None:
        """Now and then, compare our captures and refunds with the network's
        settlement report and log every mismatch (reconciliation's full pass)."""
        while True:
            await trio.sleep(self.config.settlement_check_every_s)
            report = await self.settlement_report()
            if report is None:
                continue
            problems = checks.settlement_mismatches([shard.state for shard in self.shards.values()], report)
            for problem in problems[:100]:
                log.warning("settlement_mismatch", detail=problem)
            log.info("settlement_compared", entries=len(report), mismatches=len(problems))

    async def settlement_report(self) -> list[dict[str, Any]] | None:
        """The network's settlement report as dicts, or None when unreachable."""
        if hasattr(self.network, "settlement"):
            try:
                return await self.network.settlement()
            except (NetworkRefused, NetworkOutcomeUnknown):
                return None
        report = getattr(self.network, "settlement_report", None)
        return None if report is None else [msgspec.structs.asdict(operation) for operation in report()]

    async def purge_idempotency(self, every_s: float = 600) -> None:
        """Forget idempotency records past their lifetime, now and then."""
        while True:
            try:
                purged = await self.store.purge.idempotency_records(int(time.time()))
            except StoreUnavailable:
                purged = 0
            if purged:
                log.info("idempotency_keys_purged", count=purged)
            await trio.sleep(every_s)

    async def expire_replies_forever(self, every_s: float = 0.25) -> None:
        """Stop callers waiting past `reply_timeout_s`. Replies are kept in
        the order they were asked for, all with the same timeout, so only
        the front of the queue is ever looked at."""
        waiting = self._waiting
        while True:
            await trio.sleep(every_s)
            now = trio.current_time()
            while waiting:
                reply, deadline = next(iter(waiting.items()))
                if deadline > now:
                    break
                del waiting[reply]
                reply.expire()

    def intent_of_reference(self, reference: str) -> str | None:
        """The intent an attempt or refund id belongs to, if this node has it."""
        prefix = reference.partition("_")[0]
        partition = ids.partition_of(reference, prefix) if prefix in ("att", "re") else None
        shard = None if partition is None else self.shards.get(partition)
        return None if shard is None else shard.state.references.get(reference)

    # ------------------------------------------------------------- lifecycle

    def stop_accepting(self) -> None:
        """Begin a clean shutdown: actors drain their mailboxes and finish
        their network calls, then `run_node` returns."""
        self.stop_relay()
        if self.events is not None:
            self.events.stop()
        for shard in self.shards.values():
            shard.close()


async def run_node(
    store: Store,
    vault: Vault,
    network: CardNetwork,
    config: NodeConfig,
    *,
    random_bytes: Callable[[int], bytes] = os.urandom,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Recover every partition from the journal, then serve until `stop_accepting`."""
    node = Node(store, vault, network, config, random_bytes)
    async with trio.open_nursery() as writing:
        append = store.journal.append
        if config.group_commit:
            node.group_commit = GroupCommit(store.journal.append_many)
            await writing.start(node.group_commit.run)
            append = node.group_commit.append
        await _serve_partitions(node, append, tune_garbage_collection, task_status)
        # Every actor has drained and journaled its last answers.
        writing.cancel_scope.cancel()
    log.info("node_stopped")


def tune_garbage_collection() -> None:
    """After recovery: keep the recovered state out of every later
    collection, and collect the young generation less often. Under load the
    node allocates and drops many short-lived objects (tasks, messages,
    replies); with the default thresholds full collections over a large
    heap took a third of a worker's CPU once it fell behind."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def _serve_partitions(node: Node, append: Any, after_recovery: Callable[[], None], task_status: Any) -> None:
    store, config = node.store, node.config
    async with trio.open_nursery() as nursery:
        for partition in config.served_partitions():
            state = ShardState(partition)
            state.replay(await store.journal.load(partition))
            shard = ShardActor(
                state, append, node.perform, config.shard, functools.partial(node.new_id, partition=partition), store.journal.position
            )
            node.shards[partition] = shard
            await nursery.start(shard.run)
        after_recovery()
        notices = trio.CancelScope()

        async def background() -> None:
            with notices:
                async with trio.open_nursery() as tasks:
                    tasks.start_soon(node.relay_notices)
                    tasks.start_soon(node.expire_replies_forever)
                    tasks.start_soon(node.purge_idempotency)
                    tasks.start_soon(node.reconcile_forever)
                    tasks.start_soon(node.compare_settlement_forever)

        nursery.start_soon(background)
        node.stop_relay = notices.cancel
        log.info("node_started", partitions=config.partitions, intents=sum(len(s.state.intents) for s in node.shards.values()))
        task_status.started(node)
