"""What the engine sends a card network and what it gets back.

Plain data shared by the shell that calls a network (shards/) and the
networks themselves (simulators/, later real acquirers), so neither has to
import the other.
"""

import msgspec

from engine import cards, ids


class AuthorizationRequest(msgspec.Struct, frozen=True):
    """One authorization, as the engine sends it to the network.

    `reference` is our attempt id and doubles as the network's idempotency
    key. `capture` True authorizes and captures in one step; False only
    authorizes.
    """

    reference: str
    card_number: str
    exp_month: int
    exp_year: int
    amount_minor: int
    currency: str
    capture: bool

    # The default repr of a Struct lists every field, card number included,
    # and reprs end up in logs, tracebacks and pytest failure output.
    def __repr__(self) -> str:
        return (
            f"AuthorizationRequest(reference={self.reference!r}, "
            f"card={cards.brand_of(self.card_number)} ****{self._last4_or_blank()}, "
            f"exp_month={self.exp_month!r}, exp_year={self.exp_year!r}, "
            f"amount_minor={self.amount_minor!r}, currency={self.currency!r}, "
            f"capture={self.capture!r})"
        )

    # rich and some debuggers prefer this hook over __repr__; msgspec's
    # default one would yield the card number.
    def __rich_repr__(self):
        yield "reference", self.reference
        yield "card", f"{cards.brand_of(self.card_number)} ****{self._last4_or_blank()}"
        yield "amount_minor", self.amount_minor
        yield "currency", self.currency
        yield "capture", self.capture

    def _last4_or_blank(self) -> str:
        # A repr must not raise, even for a malformed request.
        if len(self.card_number) < 4:
            return ""
        return cards.last4(self.card_number)


class NetworkAnswer(msgspec.Struct, frozen=True):
    reference: str
    approved: bool
    code: str | None
    decline_code: str | None
    network: str


class CaptureRequest(msgspec.Struct, frozen=True):
    """Capture part or all of an authorization made with capture=False.

    `reference` is the capture's own idempotency key, distinct from the
    authorization's.
    """

    reference: str
    authorization_reference: str
    amount_minor: int
    currency: str


class IncrementRequest(msgspec.Struct, frozen=True):
    """Raise an uncaptured authorization to `amount_minor`, its new total
    (above what it holds). `reference` is the increment's own idempotency
    key."""

    reference: str
    authorization_reference: str
    amount_minor: int
    currency: str


class VoidRequest(msgspec.Struct, frozen=True):
    """Release an uncaptured authorization; no money moves."""

    reference: str
    authorization_reference: str


class RefundRequest(msgspec.Struct, frozen=True):
    """Return part or all of a captured charge.

    `charge_reference` is always the reference of the authorization the
    charge began with, whether it was captured at once or by a later capture,
    so that one rule finds the charge.
    """

    reference: str
    charge_reference: str
    amount_minor: int
    currency: str


class NetworkNotice(msgspec.Struct, frozen=True):
    """Something the network tells us later, unasked.

    `reference` is the operation it concerns. Kinds: "refund_failed" (a
    refund approved at the time has since failed and its money stayed with
    the merchant); "authorization_completed" (the final answer to an
    authorization that waited for 3-D Secure; `code` None means approved);
    "dispute_opened" and "dispute_closed" (a cardholder disputes the charge
    `parent_reference`; the dispute's reference is `reference`).
    """

    reference: str
    kind: str
    code: str | None = None
    # For disputes: the charge disputed, the amount, and whether it was won.
    parent_reference: str | None = None
    amount_minor: int = 0
    won: bool | None = None
    # For a dispute opened: Stripe's category, when the network names one.
    reason: str | None = None

    @property
    def named(self) -> str | None:
        """The operation of ours it is about: for a dispute, the charge."""
        return self.parent_reference if self.kind.startswith("dispute_") else self.reference

    def partition(self) -> int | None:
        """The partition of the operation it is about, from the engine's
        id; None for an id that names none."""
        named = self.named
        return None if named is None else ids.partition_of_reference(named)


class NetworkRefused(Exception):
    """The network did not perform the operation (an error answer or an outage): nothing happened, for certain."""


class NetworkOutcomeUnknown(Exception):
    """The call ended without an answer in a way that leaves open whether the
    network performed the operation (a connection reset after sending, say).

    The caller must treat it like a timeout: the attempt is unknown until
    reconciliation asks the network by reference.
    """
