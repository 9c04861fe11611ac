"""An in-process card network: answers authorizations after a seeded delay.

The network is the party that actually moves money, so it must never charge
twice for one reference, whatever the engine does (retry after a timeout,
two shards racing). It therefore decides and records an authorization the
moment the call arrives, before any await: a second call with the same
reference, whether later or overlapping, finds the record and gets the
first answer back. A caller cancelled during the delay has still been
charged, which is exactly the lost-reply case the engine must survive.

Every distinct operation is kept so that tests can check invariants against
what the network believes happened. The store grows without bound; this is
a test double, and a run holds at most a benchmark's worth of payments.
"""

import random
import time
from collections.abc import Callable

import msgspec
import trio

from engine import cards
from engine.network import AuthorizationRequest, NetworkAnswer

__all__ = ["AuthorizationRequest", "CardNetwork", "NetworkAnswer", "Operation"]


class Operation(msgspec.Struct, frozen=True):
    """The network's own record of one distinct authorization.

    `sequence` counts first arrivals from 0; repeats do not advance it.
    """

    reference: str
    network: str
    last4: str
    amount_minor: int
    currency: str
    capture: bool
    approved: bool
    code: str | None
    decline_code: str | None
    sequence: int


def _today_utc() -> tuple[int, int]:
    now = time.gmtime()
    return now.tm_year, now.tm_mon


class CardNetwork:
    def __init__(
        self,
        *,
        seed: int = 0,
        latency_ms: tuple[int, int] = (1, 5),
        today: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        latency_ms_min, latency_ms_max = latency_ms
        assert 0 <= latency_ms_min <= latency_ms_max
        self._latency_us_range = (latency_ms_min * 1000, latency_ms_max * 1000)
        self._random = random.Random(seed)
        self._today = today if today is not None else _today_utc
        self._operations: dict[str, Operation] = {}
        self._calls_total = 0

    async def authorize(self, request: AuthorizationRequest) -> NetworkAnswer:
        """Answer after a seeded delay; a known reference gets its first answer."""
        self._calls_total += 1
        operation = self._operations.get(request.reference)
        if operation is None:
            operation = self._record(request)
        # Drawn on every call, repeats included, so that the sequence of
        # delays depends only on the seed and the order of calls.
        latency_us = self._random.randint(*self._latency_us_range)
        await trio.sleep(latency_us / 1_000_000)
        return NetworkAnswer(
            reference=operation.reference,
            approved=operation.approved,
            code=operation.code,
            decline_code=operation.decline_code,
            network=operation.network,
        )

    def _record(self, request: AuthorizationRequest) -> Operation:
        today_year, today_month = self._today()
        outcome = cards.outcome_for(
            request.card_number, request.exp_month, request.exp_year, today_year, today_month
        )
        operation = Operation(
            reference=request.reference,
            network=cards.brand_of(request.card_number),
            last4=request._last4_or_blank(),
            amount_minor=request.amount_minor,
            currency=request.currency,
            capture=request.capture,
            approved=outcome.approved,
            code=outcome.code,
            decline_code=outcome.decline_code,
            sequence=len(self._operations),
        )
        self._operations[request.reference] = operation
        return operation

    def operations(self) -> list[Operation]:
        """Every distinct operation, in order of first arrival."""
        # dicts keep insertion order, which is arrival order here.
        return list(self._operations.values())

    def lookup(self, reference: str) -> Operation | None:
        return self._operations.get(reference)

    def calls_total(self) -> int:
        """Number of authorize() calls, repeats included."""
        return self._calls_total
