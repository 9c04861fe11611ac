"""The shard actor: the only writer of one partition.

It owns the in-memory state of its partition and applies commands one at a
time from a bounded mailbox, so there are no locks. Each turn of its loop:

1. drains the mailbox into a batch (up to `batch_commands_max`);
2. decides every command of the batch against a working copy (the engine is
   pure, so this is all in memory and cannot fail for infrastructure reasons);
3. writes the batch's events to the journal in one transaction;
4. only then applies the working copy, replies, and starts effects.

A failed commit throws the working copy away: memory never runs ahead of the
disk. Clients then get `StoreUnavailable`; network answers are kept and
committed again on the next turn, because losing one would leave an intent
stuck in `processing` with nobody calling.

Network calls run as child tasks. Their answers come back through the same
mailbox as commands, so deciding them is serialized like everything else.
A confirm's reply is held until the answer to its attempt is durable, which
is what lets a synchronous API report `succeeded` or a decline.
"""

from __future__ import annotations

import contextvars
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
import trio

from engine import intent as machine
from engine import notifications
from engine.intent import Command, NetworkCall, PaymentIntent
from engine.ledger import Ledger
from engine.results import Result
from shards.admission import Admission
from shards.idempotency import Claim
from shards.metrics import Metrics, Tally
from store.errors import Fenced, StoreError, StoreUnavailable
from store.rows import EventRow, IdempotencyRow, JournalRow

log = structlog.get_logger("shards.actor")

# The id of the HTTP request a command comes from, set by the gateway for
# the request's task; the actor's turn runs elsewhere, so a message carries it.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("payments_request_id", default=None)

ANSWER_TYPES = machine.ANSWERS
# How long a measured mailbox wait is taken as the current one.
QUEUE_WAIT_FRESH_S = 1.0
# One log event per journaled transition (at debug level: at thousands a
# second they would cost more than the decision), named in snake_case past tense.
LOG_EVENT_NAMES = {
    machine.IntentCreated: "intent_created",
    machine.AttemptStarted: "attempt_started",
    machine.AttemptApproved: "attempt_approved",
    machine.AttemptDeclined: "attempt_declined",
    machine.AttemptOutcomeUnknown: "attempt_outcome_unknown",
    machine.AttemptNotSent: "attempt_not_sent",
    machine.AttemptActionRequired: "attempt_action_required",
    machine.IntentCanceled: "intent_canceled",
    machine.RefundCreated: "refund_created",
    machine.RefundUpdated: "refund_updated",
    machine.DisputeOpened: "dispute_opened",
    machine.DisputeClosed: "dispute_closed",
}


class Outcome(msgspec.Struct, frozen=True):
    """What a caller learns: a result, the intent as journaled, and the
    attempt its command opened (if any)."""

    result: Result
    intent: PaymentIntent | None = None
    param: str | None = None
    attempt_id: str | None = None
    # (HTTP status, JSON) when the actor already rendered it for the
    # request's idempotency record: the gateway sends those bytes.
    rendered: tuple[int, bytes] | None = None


class Shed(Exception):
    """A client command refused without being decided: it waited in the
    mailbox past its deadline, its caller's time already spent."""


SHED = Shed("the command waited too long for its partition")


class Reply:
    """A one-shot slot a caller waits on; cheaper than a channel per request."""

    __slots__ = ("_done", "value", "journaled", "expired")

    def __init__(self) -> None:
        self._done = trio.Event()
        self.value: Outcome | StoreError | Shed | None = None
        # Set when the command is durable but its reply waits for the network.
        self.journaled = False
        # Set when the caller stopped waiting (the node's reply timeout).
        self.expired = False

    def set(self, value: Outcome | StoreError | Shed) -> None:
        if self._done.is_set():
            return  # the caller gave up waiting; nobody reads this any more
        self.value = value
        self._done.set()

    def expire(self) -> None:
        if not self._done.is_set():
            self.expired = True
            self._done.set()

    async def wait(self) -> Outcome | StoreError | Shed | None:
        """The outcome, or None when the reply expired first."""
        await self._done.wait()
        return self.value


class Message(msgspec.Struct):
    command: Command
    reply: Reply | None
    claim: Claim | None = None  # the idempotency key the request came with
    # The HTTP request behind the command, or behind the command whose
    # network call this answers: the transition logs carry it.
    request_id: str | None = None
    # What the caller is told, when it was rendered for an idempotency record.
    rendered: Outcome | None = None
    # When a client command entered the mailbox (trio clock).
    enqueued_at: float = 0.0


def waits_on(decision: machine.Decision) -> str | None:
    """The attempt whose answer a client's reply waits for, if any. A cancel
    answers at once: its void only tidies up at the network."""
    if decision.result is not Result.ok:
        return None
    return next((effect.attempt_id for effect in decision.effects if effect.kind != "void"), None)


def immediate_outcome(decision: machine.Decision, current: PaymentIntent | None) -> Outcome:
    if decision.result is not Result.ok:
        return Outcome(decision.result, current, decision.param)
    return Outcome(Result.ok, current)


class ShardConfig(msgspec.Struct, frozen=True):
    mailbox_commands_max: int = 4096
    batch_commands_max: int = 512
    network_calls_max: int = 512
    commit_retry_s: float = 0.2
    # Uncaptured authorizations are canceled (and their holds released) at
    # this age; Stripe's figure for cards is 7 days.
    authorization_expiry_s: int = 7 * 86_400
    expiry_check_s: float = 1.0
    # Overload. A client command that waited longer than this in the
    # mailbox is refused (503) without being decided: its caller's time is
    # spent, and deciding it would only make the next ones wait longer.
    queue_wait_max_s: float = 0.5
    # New intents are refused while this partition's commands wait longer
    # than this: past capacity, finish the payments already started rather
    # than start new ones that would crowd them out. The node's admission
    # bound (shards.admission) does this for the node as a whole; this is
    # for one partition busier than the rest, so it is set above what a
    # loaded machine's loop stalls give (50 ms refused payments at 20/s on a
    # machine running other work).
    create_wait_max_s: float = 0.2


class ShardState:
    """The committed state of one partition. Read freely; written only by its actor."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.intents: dict[str, PaymentIntent] = {}
        # Network reference (attempt or refund id) -> intent id, so that what
        # the network reports later finds its intent.
        self.references: dict[str, str] = {}
        # Operations whose outcome is unknown, as (intent id, reference):
        # what reconciliation has to ask the network about.
        self.unknown: set[tuple[str, str]] = set()
        self.ledger = Ledger()
        # Intents holding an uncaptured authorization, for the expiry check
        # (which must not scan every intent ever made).
        self.holds: set[str] = set()
        self.next_seq = 1
        self.accepting = False

    def put(self, intent: PaymentIntent) -> None:
        self.intents[intent.id] = intent
        if intent.status is machine.Status.requires_capture:
            self.holds.add(intent.id)
        else:
            self.holds.discard(intent.id)

    def apply(self, event: machine.Event) -> None:
        """Apply one committed event to memory: the intent, then the rest."""
        entity_id = machine.entity_id_of(event)
        self.put(machine.evolve(self.intents.get(entity_id), event))
        self.index(event)

    def index(self, event: machine.Event) -> None:
        """Apply what an event changes besides its intent: the reference index and the ledger."""
        if isinstance(event, machine.RefundCreated):
            self.references[event.refund.id] = event.intent_id
        elif isinstance(event, machine.AttemptStarted):
            self.references[event.attempt.id] = event.intent_id
        elif isinstance(event, machine.DisputeOpened):
            self.references[event.dispute.id] = event.intent_id
        elif isinstance(event, machine.AttemptOutcomeUnknown):
            self.unknown.add((event.intent_id, event.attempt_id))
        elif isinstance(event, (machine.AttemptApproved, machine.AttemptDeclined)):
            self.unknown.discard((event.intent_id, event.attempt_id))
        elif isinstance(event, machine.RefundUpdated):
            if event.outcome_unknown:
                self.unknown.add((event.intent_id, event.refund_id))
            else:
                self.unknown.discard((event.intent_id, event.refund_id))
        for transfer in machine.transfers_of(event):
            self.ledger.apply(transfer)

    def replay(self, rows: list[JournalRow]) -> None:
        for row in rows:
            assert row.seq == self.next_seq, (self.partition, row.seq, self.next_seq)
            self.apply(machine.event_decoder.decode(row.body))
            self.next_seq += 1


Performer = Callable[[NetworkCall], Awaitable[Command]]
Journal = Callable[[int, list[JournalRow], list[IdempotencyRow], list[EventRow]], Awaitable[None]]


class ShardActor:
    def __init__(
        self,
        state: ShardState,
        append: Journal,
        perform: Performer,
        config: ShardConfig,
        new_id: Callable[[str], str],
        journal_position: Callable[[int], Awaitable[int]],
    ) -> None:
        self.state = state
        # Makes a new id with the given prefix in this partition.
        self._new_id = new_id
        self._journal_position = journal_position
        self.config = config
        self._append = append
        self._perform = perform
        # The bound applies to clients' commands only (see submit_nowait):
        # network answers and notices always get in, so that under overload
        # work already started still finishes instead of waiting behind new
        # work that cannot start (which is how goodput collapses). Internal
        # messages are bounded by their sources (network_calls_max calls in
        # flight; bounded reconciliation and expiry passes).
        self.mailbox_send, self._mailbox_receive = trio.open_memory_channel[Message](math.inf)
        self._client_queued = 0
        # Client replies (and their idempotency claims) held until the answer
        # to an attempt is journaled.
        self._awaiting_answer: dict[str, tuple[Reply, Claim | None]] = {}
        self._network_limiter = trio.CapacityLimiter(config.network_calls_max)
        self._retry: list[Message] = []
        self.commits_total = 0
        self.commands_total = 0
        self.shed_total = 0
        # How long the client commands of the last batch waited, and when.
        self._queue_wait = (0.0, -math.inf)
        # Set when a write was refused because the partition's lease moved
        # on: the actor stops at once and its node drops the partition.
        self.fenced: Fenced | None = None
        self._closed = trio.Event()
        # Called after a commit that wrote events: wakes the outbox relay.
        self.on_events: Callable[[], None] = lambda: None
        # The node's metrics and the tally its actors share (shards.metrics).
        self.metrics: Metrics | None = None
        self.tally: Tally | None = None
        # The node's bound on new payments, told how long each turn kept
        # its client commands (shards.admission).
        self.admission: Admission | None = None

    def submit_nowait(self, command: Command, claim: Claim | None = None) -> Reply:
        """Queue a client command. Raises trio.WouldBlock when the mailbox is full
        or the actor is not accepting (starting up or shutting down)."""
        if not self.state.accepting or self._client_queued >= self.config.mailbox_commands_max:
            raise trio.WouldBlock
        reply = Reply()
        self.mailbox_send.send_nowait(Message(command, reply, claim, REQUEST_ID.get(), enqueued_at=trio.current_time()))
        self._client_queued += 1
        return reply

    def close(self) -> None:
        """Stop taking client commands; `run` drains what is queued and returns."""
        self.state.accepting = False
        self.mailbox_send.close()
        self._closed.set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until the mailbox is closed, then finish open network calls,
        journal their answers and return."""
        async with trio.open_nursery() as calls:
            self._calls = calls
            self._recover_open_attempts()
            self.state.accepting = True
            task_status.started()
            calls.start_soon(self._expire_authorizations)
            await self._serve()
            # Shutting down: wait for the answers of calls in flight.
            while not self.fenced and (self._retry or calls.child_tasks):
                await self._serve_answers_after_close()
            if self.fenced:
                self._abandon(self.fenced)
                calls.cancel_scope.cancel()

    def _abandon(self, error: Fenced) -> None:
        """After a fenced write: nothing more can be journaled here. Callers
        still waiting are told (their commands were not written; a retry
        reaches the new owner); network answers not journaled are left to
        the new owner, which finds their attempts pending and has them
        reconciled (DESIGN section 5, step 5)."""
        self.close()
        while True:
            try:
                message = self._mailbox_receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if message.reply is not None:
                message.reply.set(error)
        for reply, _ in self._awaiting_answer.values():
            reply.set(error)
        self._awaiting_answer.clear()
        self._retry.clear()

    def _recover_open_attempts(self) -> None:
        """A pending attempt or refund found at start has no call behind it any
        more: record its outcome as unknown (DESIGN section 5, step 5)."""
        now_s = int(time.time())
        for intent in self.state.intents.values():
            pending = [attempt.id for attempt in intent.attempts if attempt.status is machine.AttemptStatus.pending]
            pending += [
                refund.id
                for refund in intent.refunds
                if refund.status is machine.RefundStatus.pending and not refund.outcome_unknown
            ]
            for reference in pending:
                command = machine.RecordUnknownOutcome(intent_id=intent.id, attempt_id=reference, at_s=now_s)
                self._retry.append(Message(command, None))

    async def _expire_authorizations(self) -> None:
        """Cancel authorizations left uncaptured past their age limit."""
        while self.state.accepting:
            now_s = int(time.time())
            intents = self.state.intents
            due = [
                intent.id
                for intent in (intents[intent_id] for intent_id in self.state.holds)
                if (authorization := intent.authorization()) is not None
                and authorization.created_s + self.config.authorization_expiry_s <= now_s
            ]
            for intent_id in due:
                command = machine.ExpireAuthorization(
                    intent_id=intent_id,
                    attempt_id=self._new_id("att"),
                    at_s=now_s,
                )
                try:
                    await self.mailbox_send.send(Message(command, None))
                except trio.ClosedResourceError:
                    return
            with trio.move_on_after(self.config.expiry_check_s):
                await self._closed.wait()

    async def _serve(self) -> None:
        receive = self._mailbox_receive
        while not self.fenced:
            if self._retry:
                batch, self._retry = self._retry, []
            else:
                try:
                    batch = [await receive.receive()]
                except trio.EndOfChannel:
                    return
            while len(batch) < self.config.batch_commands_max:
                try:
                    batch.append(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            self._client_queued -= sum(1 for message in batch if message.reply is not None)
            batch, oldest = self._past_deadline_shed(batch)
            if batch:
                await self._turn(batch)
                if oldest is not None and self.admission is not None:
                    now = trio.current_time()
                    self.admission.observe(now - oldest, now)

    def _past_deadline_shed(self, batch: list[Message]) -> tuple[list[Message], float | None]:
        """The batch without the client commands that waited past their
        deadline (answered Shed), and when the oldest client command kept
        was queued (None if it has none); notes how long they waited."""
        now = trio.current_time()
        kept = []
        oldest: float | None = None
        waited_max = 0.0
        for message in batch:
            if message.reply is not None:
                waited = now - message.enqueued_at
                waited_max = max(waited_max, waited)
                if waited > self.config.queue_wait_max_s:
                    message.reply.set(SHED)
                    self.shed_total += 1
                    continue
                if oldest is None or message.enqueued_at < oldest:
                    oldest = message.enqueued_at
            kept.append(message)
        self._queue_wait = (waited_max, now)
        return kept, oldest

    def queue_wait_s(self) -> float:
        """How long client commands waited for this actor lately (0 when
        it has not taken any for a second)."""
        waited, at = self._queue_wait
        return waited if trio.current_time() - at < QUEUE_WAIT_FRESH_S else 0.0

    async def _serve_answers_after_close(self) -> None:
        if not self._retry:
            # Answers of calls still in flight arrive through _report, which
            # appends to _retry once the mailbox is closed.
            await trio.sleep(0.01)
            return
        batch, self._retry = self._retry, []
        await self._turn(batch)

    async def _turn(self, batch: list[Message]) -> None:
        """Decide, commit, then apply, reply and start effects."""
        working: dict[str, PaymentIntent] = {}
        intents = self.state.intents
        rows: list[JournalRow] = []
        events: list[machine.Event] = []
        seq = self.state.next_seq
        outcomes: list[tuple[Message, machine.Decision, PaymentIntent | None]] = []
        raised: list[EventRow] = []
        now_s = int(time.time())
        entered: list[str] = []
        for message in batch:
            command = message.command
            intent_id = command.intent_id
            current = working.get(intent_id) or intents.get(intent_id)
            decision = machine.decide(current, command)
            for event in decision.events:
                before, current = current, machine.evolve(current, event)
                rows.append(
                    JournalRow(seq, intent_id, type(event).__name__, machine.event_encoder.encode(event), machine.transfers_of(event), message.request_id)
                )
                events.append(event)
                if before is None or before.status is not current.status:
                    entered.append(current.status)
                self._raise_events(raised, seq, before, event, current, now_s, message.request_id)
                seq += 1
            if decision.events:
                assert current is not None
                working[intent_id] = current
            outcomes.append((message, decision, current))
        idempotency = self._idempotency_rows(outcomes)
        if rows or idempotency:
            try:
                await self._append(self.state.partition, rows, idempotency, raised)
            except Fenced as error:
                log.warning("partition_fenced", partition=self.state.partition, commands=len(outcomes))
                self.fenced = error
                for message, _, _ in outcomes:
                    if message.reply is not None:
                        message.reply.set(error)
                return
            except StoreUnavailable as error:
                # The commit may have happened with only its answer lost:
                # find out before telling anyone anything.
                if not rows or not await self._committed_after_all(rows[-1].seq):
                    self._fail_batch(outcomes, error)
                    await trio.sleep(self.config.commit_retry_s)
                    return
                log.warning("journal_commit_found_after_error", partition=self.state.partition, error=str(error))
            self.state.next_seq = seq
            for intent in working.values():
                self.state.put(intent)
            for event in events:
                self.state.index(event)
            self.commits_total += 1
            if self.tally is not None:
                self.tally.committed([row.kind for row in rows], entered)
            if raised:
                self.on_events()
        self.commands_total += len(batch)
        if self.metrics is not None:
            self.metrics.turn_commands.observe(len(batch))
        for message, decision, current in outcomes:
            self._settle(message, decision, current)

    def _raise_events(
        self,
        raised: list[EventRow],
        seq: int,
        before: PaymentIntent | None,
        event: machine.Event,
        after: PaymentIntent,
        now_s: int,
        request_id: str | None,
    ) -> None:
        """The Stripe events one journal row raises, as outbox rows of its
        batch, each naming the request behind it (Stripe's `request.id`)."""
        notices = notifications.notices(before, event, after)
        if not notices:
            return
        snapshot = machine.event_encoder.encode(after)
        for idx, (event_type, object_id) in enumerate(notices):
            raised.append(
                EventRow(
                    id=self._new_id("evt"),
                    partition=self.state.partition,
                    seq=seq,
                    idx=idx,
                    merchant_id=after.merchant_id,
                    livemode=after.livemode,
                    type=event_type,
                    intent_id=after.id,
                    object_id=object_id,
                    created_s=now_s,
                    intent=snapshot,
                    request_id=request_id,
                )
            )

    async def _committed_after_all(self, last_seq: int) -> bool:
        """Whether a batch whose commit raised is in the journal anyway.

        Asks until the database answers: until then nothing in this
        partition can commit, and guessing either way would be wrong (a
        retried batch would collide with itself; a committed one treated as
        failed would leave its attempts pending with no call behind them).
        """
        while True:
            try:
                return await self._journal_position(self.state.partition) >= last_seq
            except StoreUnavailable:
                await trio.sleep(self.config.commit_retry_s)

    def _idempotency_rows(self, outcomes: list[tuple[Message, machine.Decision, PaymentIntent | None]]) -> list[IdempotencyRow]:
        """The idempotency records this batch completes or starts, written in
        its transaction."""
        rows = []
        for message, decision, current in outcomes:
            if message.claim is not None:
                object_id = None if current is None else current.id
                if waits_on(decision) is not None:
                    rows.append(message.claim.started(object_id))
                else:
                    rows.append(self._completed(message, message.claim, immediate_outcome(decision, current), object_id))
            command = message.command
            if isinstance(command, ANSWER_TYPES) and decision.result is Result.ok:
                waiting = self._awaiting_answer.get(command.attempt_id)
                # An attempt that never left answers a retryable 503: its key
                # keeps only its "started" mark, so a retry runs again.
                if waiting is not None and waiting[1] is not None and not isinstance(command, machine.RecordNotSent):
                    outcome = Outcome(Result.ok, current, attempt_id=command.attempt_id)
                    rows.append(self._completed(message, waiting[1], outcome, command.intent_id))
        return rows

    @staticmethod
    def _completed(message: Message, claim: Claim, outcome: Outcome, object_id: str | None) -> IdempotencyRow:
        """The idempotency record of an outcome; the outcome, with the bytes
        rendered for the record, is kept on the message for the reply."""
        row = claim.completed(outcome, object_id)
        assert row.status_code is not None and row.body is not None
        message.rendered = msgspec.structs.replace(outcome, rendered=(row.status_code, row.body))
        return row

    def _fail_batch(self, outcomes: list[tuple[Message, machine.Decision, PaymentIntent | None]], error: StoreUnavailable) -> None:
        log.warning("journal_commit_failed", partition=self.state.partition, error=str(error), commands=len(outcomes))
        for message, _, _ in outcomes:
            if message.reply is not None:
                message.reply.set(error)
            else:
                # Network answers and notices exist nowhere else: keep them.
                self._retry.append(message)

    def _settle(self, message: Message, decision: machine.Decision, current: PaymentIntent | None) -> None:
        command = message.command
        if decision.result is not Result.ok:
            if message.reply is not None:
                message.reply.set(message.rendered or Outcome(decision.result, current, decision.param))
            else:
                # Late or repeated internal commands (an answer after a crash
                # marked it unknown, an expiry after a capture) change nothing.
                log.info(
                    "internal_command_refused",
                    partition=self.state.partition,
                    result=str(decision.result),
                    command=type(command).__name__,
                    intent_id=command.intent_id,
                    request_id=message.request_id,
                )
            return
        assert current is not None
        if log.is_enabled_for(logging.DEBUG):
            self._log_transitions(message, decision, current)
        awaited = waits_on(decision) if message.reply is not None else None
        if awaited is not None:
            assert message.reply is not None
            message.reply.journaled = True
            self._awaiting_answer[awaited] = (message.reply, message.claim)
        for effect in decision.effects:
            self._calls.start_soon(self._call_network, effect, message.request_id)
        if isinstance(command, ANSWER_TYPES):
            waiting = self._awaiting_answer.pop(command.attempt_id, None)
            if waiting is not None:
                waiting[0].set(message.rendered or Outcome(Result.ok, current, attempt_id=command.attempt_id))
        elif awaited is None and message.reply is not None:
            message.reply.set(message.rendered or Outcome(Result.ok, current))

    def _log_transitions(self, message: Message, decision: machine.Decision, current: PaymentIntent) -> None:
        for event in decision.events:
            if isinstance(event, machine.IntentCreated):
                status = event.intent.status
            elif isinstance(event, machine.RefundCreated):
                status = event.refund.status
            elif isinstance(event, machine.DisputeOpened):
                status = event.dispute.status
            else:
                # An event that changes no status (an increment's request,
                # a charge's or a refund's update) logs the intent's.
                status = getattr(event, "status", current.status)
            log.debug(
                LOG_EVENT_NAMES.get(type(event), type(event).__name__), partition=self.state.partition, intent_id=current.id, status=str(status), request_id=message.request_id
            )

    async def _call_network(self, effect: NetworkCall, request_id: str | None = None) -> None:
        async with self._network_limiter:
            answer = await self._perform(effect)
        message = Message(answer, None, request_id=request_id)
        try:
            await self.mailbox_send.send(message)
        except trio.ClosedResourceError:
            # The mailbox closed for shutdown; the run loop journals these.
            self._retry.append(message)
