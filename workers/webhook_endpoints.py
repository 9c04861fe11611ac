"""The endpoint cache the webhook workers share, and the delivery rows an
event gets: one per endpoint it matches."""

from __future__ import annotations

import time

import trio

from store.postgres import Store
from store.rows import DeliveryRow, EventRow, WebhookEndpointRow

REFRESH_S_DEFAULT = 2.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class EndpointCache:
    """Every endpoint of every merchant, reloaded now and then and whenever
    the API changes one on this node."""

    def __init__(self, store: Store, refresh_s: float = REFRESH_S_DEFAULT) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._by_id: dict[str, WebhookEndpointRow] = {}
        self._by_merchant: dict[tuple[str, bool], list[WebhookEndpointRow]] = {}
        self._loaded_at = float("-inf")

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")

    async def refresh(self, *, force: bool = False) -> None:
        """Reload when older than `refresh_s` (or forced). Raises
        StoreUnavailable, keeping the endpoints it had."""
        if not force and trio.current_time() - self._loaded_at < self.refresh_s:
            return
        rows = await self.store.webhooks.list_endpoints(None)
        by_merchant: dict[tuple[str, bool], list[WebhookEndpointRow]] = {}
        for row in rows:
            by_merchant.setdefault((row.merchant_id, row.livemode), []).append(row)
        self._by_id = {row.id: row for row in rows}
        self._by_merchant = by_merchant
        self._loaded_at = trio.current_time()

    def get(self, endpoint_id: str) -> WebhookEndpointRow | None:
        return self._by_id.get(endpoint_id)

    def matching(self, event: EventRow) -> list[WebhookEndpointRow]:
        return [
            endpoint
            for endpoint in self._by_merchant.get((event.merchant_id, event.livemode), ())
            if "*" in endpoint.enabled_events or event.type in endpoint.enabled_events
        ]


def new_deliveries(event: EventRow, endpoints: list[WebhookEndpointRow], now_ms: int) -> list[DeliveryRow]:
    return [
        DeliveryRow(
            endpoint_id=endpoint.id,
            event_id=event.id,
            partition=event.partition,
            seq=event.seq,
            idx=event.idx,
            intent_id=event.intent_id,
            status="pending",
            attempts=0,
            next_attempt_ms=now_ms,
            updated_s=now_ms // 1000,
        )
        for endpoint in endpoints
    ]
