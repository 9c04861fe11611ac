"""A merchant's webhook endpoint, for tests and demos (quart-trio on hypercorn).

Any `POST` outside `/_control/` is a webhook delivery. The receiver checks
its `Stripe-Signature` header the way a merchant following Stripe's guide
would, records what arrived, and answers as its current mode says:

- signature: `t=<unix seconds>,v1=<hex>[,v1=<hex>...]`, where each v1 may be
  the hex HMAC-SHA256, keyed with the endpoint secret (the whole
  `whsec_...` string), of `<t>.<raw body>`. One matching v1 is enough (Stripe
  sends several while a secret is being rolled). `t` must lie within the
  tolerance (300 s by default) of the receiver's clock, in either direction.
- secrets: one per path, falling back to a default secret for every path.
  A path with no secret at all cannot be checked: its deliveries are
  accepted and recorded as unverified (`signature_error: "no_secret"`).
  A delivery that fails a check against a known secret is answered 400,
  as a careful merchant would, unless the mode says otherwise.
- modes (`POST /_control/mode`): `ok` answers 200; `fail` answers a chosen
  status (default 500); `slow` answers 200 after `delay_ms`; `timeout` holds
  the request without answering until the client gives up, or at most
  `TIMEOUT_HOLD_S` (then a 504 frees the connection). A mode may end after
  `count` deliveries or `for_s` seconds (whichever comes first), and the
  receiver returns to `ok`.
- records: every delivery, verified or not, in a ring of the last
  `DELIVERIES_MAX`: when it came, the path, the event's id, type and
  `data.object.id`, whether it verified (and why not), the how-many-th time
  that event id arrived, and what the receiver answered (`status` null for a
  delivery held by the timeout mode). Duplicates are recorded and counted,
  never refused: retried deliveries are exactly what a test wants to see.

Control API (JSON in and out; bad input is a 400 naming the problem):

    POST /_control/mode        {"mode": "fail", "status": 503, "count": 3}
    GET  /_control/mode
    POST /_control/secrets     {"path": "/hooks/a", "secret": "whsec_..."}
                               (no path: the default secret; secret null: forget)
    GET  /_control/deliveries  ?after=N&limit=M&event_id=evt_...
    POST /_control/reset       forget deliveries, back to mode ok and to the
                               secrets the receiver was started with

Bodies are never logged: an event carries the merchant's data.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import itertools
import math
import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
import structlog
import trio
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from gateway.listener import hypercorn_config

log = structlog.get_logger("simulators.receiver")

# Stripe refuses to send events larger than this; so do we accept no more.
BODY_BYTES_MAX = 1024 * 1024
BODY_TIMEOUT_S = 10
CONTROL_BODY_BYTES_MAX = 16 * 1024
SIGNATURE_HEADER_CHARS_MAX = 4096
SIGNATURES_PER_HEADER_MAX = 16
TOLERANCE_S_DEFAULT = 300
# How many deliveries (and distinct event ids, for attempt numbers) are kept.
DELIVERIES_MAX = 100_000
DELIVERIES_PAGE_MAX = 1000
PATHS_WITH_SECRET_MAX = 1000
PATH_CHARS_MAX = 500
SECRET_CHARS_MAX = 200
# Text taken from an event for the record is cut at this length.
FIELD_CHARS_MAX = 255
# The timeout mode never holds a connection longer than this.
TIMEOUT_HOLD_S = 120.0
SLOW_DELAY_MS_MAX = 120_000
MODE_COUNT_MAX = 1_000_000
MODE_FOR_S_MAX = 86_400.0

Mode = Literal["ok", "fail", "timeout", "slow"]


# ------------------------------------------------------------ signatures


def expected_signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 a v1 entry must carry for `body` sent at `timestamp`."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_signature(header: str | None, body: bytes, secret: str, *, now_s: float, tolerance_s: float) -> str | None:
    """Check a `Stripe-Signature` header. None when it verifies, otherwise a
    short reason: missing_signature, malformed_signature, no_v1_signature,
    signature_mismatch or timestamp_outside_tolerance. The signature is
    checked before the time, so a stale but genuine delivery says so."""
    if not header:
        return "missing_signature"
    if len(header) > SIGNATURE_HEADER_CHARS_MAX:
        return "malformed_signature"
    timestamp: int | None = None
    candidates: list[bytes] = []
    for item in header.split(","):
        key, equals, value = item.strip().partition("=")
        if not equals:
            return "malformed_signature"
        if key == "t":
            if not value.isascii() or not value.isdigit() or len(value) > 12 or timestamp is not None:
                return "malformed_signature"
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value.encode("utf-8", "replace"))
    if timestamp is None:
        return "malformed_signature"
    if not candidates:
        return "no_v1_signature"
    if len(candidates) > SIGNATURES_PER_HEADER_MAX:
        return "malformed_signature"
    expected = expected_signature(secret, timestamp, body).encode()
    # compare_digest takes time independent of where the strings differ;
    # every candidate is compared, so timing tells nothing about which.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        return "signature_mismatch"
    if abs(now_s - timestamp) > tolerance_s:
        return "timestamp_outside_tolerance"
    return None


# ---------------------------------------------------------------- state


class Delivery(msgspec.Struct, frozen=True):
    index: int                  # 1, 2, 3... in order of arrival; ?after= pages by it
    received_at_ms: int         # unix time
    path: str
    event_id: str | None
    type: str | None
    object_id: str | None       # data.object.id
    verified: bool
    signature_error: str | None
    attempt: int                # how many deliveries of this event id, this one included (0: no id)
    mode: str                   # the mode that answered it
    status: int | None          # what was answered; None: held without an answer (timeout)


class _EventObject(msgspec.Struct):
    id: str | None = None


class _EventData(msgspec.Struct):
    object: _EventObject | None = None


class _Event(msgspec.Struct):
    """The few fields of a Stripe event the receiver records; the rest is ignored."""

    id: str | None = None
    type: str | None = None
    data: _EventData | None = None


_event_decoder = msgspec.json.Decoder(_Event)


def _event_fields(body: bytes) -> tuple[str | None, str | None, str | None]:
    try:
        event = _event_decoder.decode(body)
    except msgspec.DecodeError:
        return None, None, None
    object_id = event.data.object.id if event.data is not None and event.data.object is not None else None

    def cut(text: str | None) -> str | None:
        return None if text is None else text[:FIELD_CHARS_MAX]

    return cut(event.id), cut(event.type), cut(object_id)


class ModeSetting(msgspec.Struct, frozen=True):
    mode: Mode = "ok"
    status: int = 500
    delay_ms: int = 2000
    remaining: int | None = None   # deliveries left before returning to ok
    until_s: float | None = None   # trio.current_time() when it returns to ok


class Receiver:
    """What the receiver remembers: secrets, mode and the deliveries ring."""

    def __init__(
        self, default_secret: str | None, path_secrets: Mapping[str, str] | None = None, *, tolerance_s: float = TOLERANCE_S_DEFAULT
    ) -> None:
        self.tolerance_s = tolerance_s
        self._initial = (default_secret, dict(path_secrets or {}))
        self.default_secret = default_secret
        self.path_secrets = dict(path_secrets or {})
        self.mode = ModeSetting()
        self.deliveries: collections.deque[Delivery] = collections.deque(maxlen=DELIVERIES_MAX)
        self.last_index = 0
        self._attempts: collections.OrderedDict[str, int] = collections.OrderedDict()

    def reset(self) -> None:
        self.default_secret, path_secrets = self._initial
        self.path_secrets = dict(path_secrets)
        self.mode = ModeSetting()
        self.deliveries.clear()
        self.last_index = 0
        self._attempts.clear()

    def secret_for(self, path: str) -> str | None:
        return self.path_secrets.get(path, self.default_secret)

    def take_mode(self) -> ModeSetting:
        """The mode that answers the delivery arriving now; counts it down."""
        mode = self.mode
        if mode.until_s is not None and trio.current_time() >= mode.until_s:
            mode = self.mode = ModeSetting()
        if mode.remaining is not None:
            left = mode.remaining - 1
            self.mode = ModeSetting() if left <= 0 else msgspec.structs.replace(mode, remaining=left)
        return mode

    def attempt_of(self, event_id: str | None) -> int:
        if event_id is None:
            return 0
        seen = self._attempts.pop(event_id, 0) + 1
        self._attempts[event_id] = seen
        if len(self._attempts) > DELIVERIES_MAX:
            self._attempts.popitem(last=False)
        return seen

    def record(self, **fields: Any) -> Delivery:
        self.last_index += 1
        delivery = Delivery(index=self.last_index, received_at_ms=int(time.time() * 1000), **fields)
        self.deliveries.append(delivery)
        return delivery

    def page(self, after: int, limit: int, event_id: str | None) -> list[Delivery]:
        first_index = self.last_index - len(self.deliveries) + 1
        start = max(after + 1 - first_index, 0)
        found = itertools.islice(self.deliveries, start, None)
        if event_id is not None:
            found = (delivery for delivery in found if delivery.event_id == event_id)
        return list(itertools.islice(found, limit))


# --------------------------------------------------------------- control


PositiveCount = Annotated[int, msgspec.Meta(ge=1, le=MODE_COUNT_MAX)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, le=MODE_FOR_S_MAX)]


class ModeBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mode: Mode
    # Any answer outside 2xx is a failed delivery to a sender.
    status: Annotated[int, msgspec.Meta(ge=300, le=599)] = 500
    delay_ms: Annotated[int, msgspec.Meta(ge=0, le=SLOW_DELAY_MS_MAX)] = 2000
    count: PositiveCount | None = None
    for_s: PositiveSeconds | None = None


class SecretBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    secret: Annotated[str, msgspec.Meta(min_length=1, max_length=SECRET_CHARS_MAX)] | None
    path: Annotated[str, msgspec.Meta(min_length=1, max_length=PATH_CHARS_MAX, pattern="^/")] | None = None


class BadRequest(Exception):
    """Bad control input; the message is safe to show the client."""


_encoder = msgspec.json.Encoder()
_mode_decoder = msgspec.json.Decoder(ModeBody)
_secret_decoder = msgspec.json.Decoder(SecretBody)


def _json(body: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(body), status=status, content_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


async def _control_body(decoder: msgspec.json.Decoder) -> Any:
    data = await request.get_data(as_text=False)
    if len(data) > CONTROL_BODY_BYTES_MAX:
        raise BadRequest(f"control bodies are at most {CONTROL_BODY_BYTES_MAX} bytes")
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as error:
        raise BadRequest(f"invalid body: {error}") from None


def _query_int(name: str, default: int, low: int, high: int) -> int:
    text = request.args.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 18 or not low <= int(text) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}")
    return int(text)


def _mode_view(mode: ModeSetting) -> dict[str, Any]:
    view: dict[str, Any] = {"mode": mode.mode}
    if mode.mode == "fail":
        view["status"] = mode.status
    if mode.mode == "slow":
        view["delay_ms"] = mode.delay_ms
    if mode.remaining is not None:
        view["count_left"] = mode.remaining
    if mode.until_s is not None:
        view["for_s_left"] = round(max(mode.until_s - trio.current_time(), 0.0), 3)
    return view


def create_app(receiver: Receiver) -> QuartTrio:
    """The receiver's routes over `receiver`; see the module docstring."""
    app = QuartTrio("webhook_receiver")
    app.config["MAX_CONTENT_LENGTH"] = BODY_BYTES_MAX
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT_S
    _register_error_handlers(app)
    _register_control(app, receiver)
    _register_delivery(app, receiver)
    return app


def _register_error_handlers(app: QuartTrio) -> None:
    """Every failure answers JSON: bad control input 400, a bug 500."""

    @app.errorhandler(BadRequest)
    async def bad_request(error: BadRequest) -> Response:
        return _error(400, str(error))

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        return _error(error.code or 500, error.description or error.name)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.error("receiver_request_failed", path=request.path[:200], error_type=type(error).__name__)
        return _error(500, "internal error")


def _register_control(app: QuartTrio, receiver: Receiver) -> None:
    """The control API under /_control/; see the module docstring."""

    @app.get("/_control/mode")
    async def mode_report() -> Response:
        return _json(_mode_view(receiver.mode))

    @app.post("/_control/mode")
    async def set_mode() -> Response:
        body: ModeBody = await _control_body(_mode_decoder)
        if body.mode == "ok" and (body.count is not None or body.for_s is not None):
            raise BadRequest("count and for_s end a mode that is not ok; ok lasts until changed")
        receiver.mode = ModeSetting(
            mode=body.mode,
            status=body.status,
            delay_ms=body.delay_ms,
            remaining=body.count,
            until_s=None if body.for_s is None else trio.current_time() + body.for_s,
        )
        log.info("receiver_mode_set", **_mode_view(receiver.mode))
        return _json(_mode_view(receiver.mode))

    @app.post("/_control/secrets")
    async def set_secret() -> Response:
        body: SecretBody = await _control_body(_secret_decoder)
        if body.path is not None and body.path.startswith("/_control"):
            raise BadRequest("control paths take no webhooks")
        if body.path is None:
            receiver.default_secret = body.secret
        elif body.secret is None:
            receiver.path_secrets.pop(body.path, None)
        elif body.path not in receiver.path_secrets and len(receiver.path_secrets) >= PATHS_WITH_SECRET_MAX:
            raise BadRequest(f"at most {PATHS_WITH_SECRET_MAX} paths may have their own secret")
        else:
            receiver.path_secrets[body.path] = body.secret
        return _json({"path": body.path, "secret_set": body.secret is not None})

    @app.get("/_control/deliveries")
    async def deliveries() -> Response:
        after = _query_int("after", 0, 0, 10**18)
        limit = _query_int("limit", DELIVERIES_PAGE_MAX, 1, DELIVERIES_PAGE_MAX)
        event_id = request.args.get("event_id")
        if event_id is not None and not 1 <= len(event_id) <= FIELD_CHARS_MAX:
            raise BadRequest(f"event_id must be 1 to {FIELD_CHARS_MAX} characters")
        page = receiver.page(after, limit, event_id)
        return _json(
            {
                "deliveries": page,
                "next_after": page[-1].index if page else max(after, receiver.last_index - len(receiver.deliveries)),
                "last_index": receiver.last_index,
                "dropped": receiver.last_index - len(receiver.deliveries),
            }
        )

    @app.post("/_control/reset")
    async def reset() -> Response:
        receiver.reset()
        log.info("receiver_reset")
        return _json({"reset": True})

    @app.route("/_control/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def unknown_control(rest: str) -> Response:
        return _error(404, "no such control route")


def _register_delivery(app: QuartTrio, receiver: Receiver) -> None:
    """Any other POST: a webhook delivery, checked, recorded and answered
    as the current mode says."""

    @app.post("/")
    @app.post("/<path:rest>")
    async def delivery(rest: str = "") -> Response:
        body = await request.get_data(as_text=False)
        path = request.path[:PATH_CHARS_MAX]
        secret = receiver.secret_for(request.path)
        if secret is None:
            signature_error: str | None = "no_secret"
        else:
            signature_error = verify_signature(
                request.headers.get("Stripe-Signature"), body, secret, now_s=time.time(), tolerance_s=receiver.tolerance_s
            )
        event_id, event_type, object_id = _event_fields(body)
        mode = receiver.take_mode()
        status = _status_for(mode, signature_error, secret)
        delivery = receiver.record(
            path=path,
            event_id=event_id,
            type=event_type,
            object_id=object_id,
            verified=signature_error is None,
            signature_error=signature_error,
            attempt=receiver.attempt_of(event_id),
            mode=mode.mode,
            status=status,
        )
        log.debug(
            "webhook_received", index=delivery.index, path=path, event_id=event_id, verified=delivery.verified, status=status
        )
        if mode.mode == "timeout":
            # Cancelled as soon as the client goes (quart-trio cancels the
            # handler on disconnect); otherwise free the connection at last.
            await trio.sleep(TIMEOUT_HOLD_S)
            return _error(504, "held by the timeout mode")
        if mode.mode == "slow":
            await trio.sleep(mode.delay_ms / 1000)
        if status == 200:
            return _json({"received": True})
        assert status is not None
        return _error(status, signature_error if status == 400 and signature_error else f"answered {status} by the {mode.mode} mode")


def _status_for(mode: ModeSetting, signature_error: str | None, secret: str | None) -> int | None:
    """What a delivery is answered: the mode's failure status, None when the
    timeout mode holds it, 400 when it fails a check against a known secret,
    otherwise 200."""
    if mode.mode == "fail":
        return mode.status
    if mode.mode == "timeout":
        return None
    if signature_error is not None and secret is not None:
        return 400
    return 200


async def run_receiver(
    host: str,
    port: int,
    secret: str | None = None,
    *,
    path_secrets: Mapping[str, str] | None = None,
    tolerance_s: float = TOLERANCE_S_DEFAULT,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve a webhook receiver until cancelled; task_status.started(base URL).

    `secret` is the default for every path, `path_secrets` maps paths to
    their own. Port 0 picks a free port; the URL names the real one.
    """
    if not (math.isfinite(tolerance_s) and tolerance_s >= 0):
        raise ValueError("tolerance_s must be a finite number of seconds, 0 or more")
    receiver = Receiver(secret, path_secrets, tolerance_s=tolerance_s)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, create_app(receiver), hypercorn_config(host, port))
        log.info("receiver_started", url=binds[0])
        task_status.started(binds[0])


if __name__ == "__main__":
    import sys

    from simulators import receiver_cli

    sys.exit(receiver_cli.main())
