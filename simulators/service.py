"""The card-network simulator as an HTTP service (quart-trio on hypercorn).

The routes are a thin JSON shell over one in-process `CardNetwork`: every
body is decoded into the same msgspec Struct the engine would hand the
network directly, and every answer is the Struct the network returned,
encoded as JSON. The shell adds nothing to the network's promises and takes
nothing away:

- a call the network refused for certain (`NetworkRefused`, an injected
  error fault) is a 503 with `{"performed": false}`, which is the one answer
  a client may read as "nothing happened";
- a call the network leaves hanging (a timeout fault) hangs here too; only
  the client's own timeout ends it, exactly as with a real acquirer;
- a body that does not decode is a 400 naming the problem, and a bug is a
  plain 500 JSON body: a traceback never reaches the client.

Card numbers: the only route that receives one is /v1/authorize. Hypercorn's
access log is off (it would not carry bodies, but a log line per call is
noise at benchmark rates) and so is its error log, whose tracebacks would
carry request objects' reprs; our own error log names only the exception
type. The network keeps only brand and last four digits, so no route ever
returns a card number either.

Notices are handed out at most once: `/v1/notices/next` takes a notice off
the network's queue and sends it in the response. If the connection dies
between the two, that notice is lost. The simulator offers no acknowledged
delivery; reconciliation by reference is what catches such a loss.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import structlog
import trio
from hypercorn.trio import serve
from quart import Response, redirect, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from engine.network import (
    AuthorizationRequest,
    CaptureRequest,
    IncrementRequest,
    NetworkNotice,
    NetworkRefused,
    RefundRequest,
    VoidRequest,
)
from engine.urls import return_url_allowed
from gateway.listener import hypercorn_config
from simulators import challenge
from simulators import faults as fault_specs
from simulators.card_network import CardNetwork

log = structlog.get_logger("simulators.service")

# Every body the simulator accepts is a handful of short fields; an
# authorization is about 250 bytes.
BODY_BYTES_MAX = 16 * 1024
BODY_TIMEOUT_S = 10
# A long poll holds a connection and a task; past this a client polls again.
NOTICE_POLL_S_MAX = 25.0
NOTICE_POLL_S_DEFAULT = 10.0
# Fault spec text is a short list of name=value pairs.
FAULT_SPEC_CHARS_MAX = 1000


class InquiryBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reference: str


class ChallengeBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    passed: bool


class DisputeBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    charge_reference: str


class DisputeCloseBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    won: bool


class FaultsBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    spec: str


class BadRequest(Exception):
    """The request could not be decoded; the message is safe to show the client."""


_encoder = msgspec.json.Encoder()
_decoders: dict[type, msgspec.json.Decoder] = {
    body_type: msgspec.json.Decoder(body_type)
    for body_type in (
        AuthorizationRequest,
        CaptureRequest,
        IncrementRequest,
        VoidRequest,
        RefundRequest,
        InquiryBody,
        ChallengeBody,
        DisputeBody,
        DisputeCloseBody,
        FaultsBody,
    )
}


def _json(body: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(body), status=status, content_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


async def _decoded(body_type: type) -> Any:
    data = await request.get_data(as_text=False)
    try:
        return _decoders[body_type].decode(data)
    except msgspec.DecodeError as error:
        # msgspec's messages name the path and the expected type, never the
        # value found there, so a card number in a bad body is not echoed.
        raise BadRequest(f"invalid body: {error}") from None


def create_app(network: CardNetwork, *, faults: fault_specs.FaultSpec | None = None) -> QuartTrio:
    """The simulator's routes over `network`; see the module docstring.

    `faults` is the spec `network` was built with, shown by GET /admin/faults
    until one is set through POST (the network has no way to tell it back).
    """
    app = QuartTrio("card_network_simulator")
    app.config["MAX_CONTENT_LENGTH"] = BODY_BYTES_MAX
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT_S
    _register_error_handlers(app)
    _register_calls(app, network)
    _register_inspection(app, network)
    _register_cardholder_and_issuer(app, network)
    _register_fault_controls(app, network, faults if faults is not None else fault_specs.FaultSpec())
    return app


def _register_error_handlers(app: QuartTrio) -> None:
    """Every failure answers JSON: a refusal 503, bad input 400, a bug 500."""

    @app.errorhandler(BadRequest)
    async def bad_request(error: BadRequest) -> Response:
        return _error(400, str(error))

    @app.errorhandler(NetworkRefused)
    async def refused(error: NetworkRefused) -> Response:
        return _json({"performed": False, "error": str(error) or "refused"}, 503)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        # Werkzeug's own pages are HTML; clients of this service read JSON.
        status = error.code or 500
        return _error(status, error.description or error.name)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        # A bug in the simulator. Only the type is logged: a message or a
        # traceback could carry a request body with a card number in it.
        log.error("simulator_request_failed", path=request.path[:200], error_type=type(error).__name__)
        return _error(500, "internal error")


def _register_calls(app: QuartTrio, network: CardNetwork) -> None:
    """The operations the engine performs, the inquiry and the notice poll."""

    @app.post("/v1/authorize")
    async def authorize() -> Response:
        return _json(await network.authorize(await _decoded(AuthorizationRequest)))

    @app.post("/v1/capture")
    async def capture() -> Response:
        return _json(await network.capture(await _decoded(CaptureRequest)))

    @app.post("/v1/increment")
    async def increment() -> Response:
        return _json(await network.increment(await _decoded(IncrementRequest)))

    @app.post("/v1/void")
    async def void() -> Response:
        return _json(await network.void(await _decoded(VoidRequest)))

    @app.post("/v1/refund")
    async def refund() -> Response:
        return _json(await network.refund(await _decoded(RefundRequest)))

    @app.post("/v1/inquire")
    async def inquire() -> Response:
        body: InquiryBody = await _decoded(InquiryBody)
        return _json(await network.inquire(body.reference))

    @app.post("/v1/notices/return")
    async def return_notice() -> Response:
        await network.return_notice(await _decoded(NetworkNotice))
        return _json({"returned": True})

    @app.get("/v1/notices/next")
    async def next_notice() -> Response:
        text = request.args.get("timeout_s", str(NOTICE_POLL_S_DEFAULT))
        try:
            timeout_s = float(text[:32])
        except ValueError:
            raise BadRequest("timeout_s must be a number of seconds") from None
        if not math.isfinite(timeout_s) or timeout_s < 0:
            raise BadRequest("timeout_s must be a number of seconds, 0 or more")
        partitions = _partitions_arg(request.args.get("partitions"))
        with trio.move_on_after(min(timeout_s, NOTICE_POLL_S_MAX)):
            # next_notice loses nothing when cancelled while waiting.
            return _json(await network.next_notice(partitions))
        return Response(b"", status=204)


def _partitions_arg(text: str | None) -> frozenset[int] | None:
    """`partitions=0,3,7` (a node asking only for its partitions' notices)."""
    if text is None:
        return None
    try:
        partitions = frozenset(int(part) for part in text[:8192].split(",") if part)
    except ValueError:
        raise BadRequest("partitions must be whole numbers separated by commas") from None
    if any(not 0 <= partition < 65536 for partition in partitions):
        raise BadRequest("partitions must be from 0 to 65535")
    return partitions


def _register_inspection(app: QuartTrio, network: CardNetwork) -> None:
    """The network's own record, for checks and tests."""

    @app.get("/v1/operations")
    async def operations() -> Response:
        return _json(network.operations())

    @app.get("/v1/operations/<reference>")
    async def operation(reference: str) -> Response:
        found = network.lookup(reference)
        if found is None:
            return _error(404, "no such operation")
        return _json(found)

    @app.get("/v1/settlement")
    async def settlement() -> Response:
        return _json(network.settlement_report())


def _register_cardholder_and_issuer(app: QuartTrio, network: CardNetwork) -> None:
    """What cardholders and issuers do: answer 3-D Secure challenges (by API,
    or on the test page a node's `next_action` sends them to), open and
    decide disputes."""

    @app.get("/v1/challenges/<reference>")
    async def challenge_pending(reference: str) -> Response:
        return _json({"pending": network.challenge_pending(reference)})

    @app.post("/v1/challenges/<reference>")
    async def complete_challenge(reference: str) -> Response:
        body: ChallengeBody = await _decoded(ChallengeBody)
        if not network.complete_challenge(reference, body.passed):
            return _json({"completed": False, "error": "no challenge pending"}, 404)
        return _json({"completed": True})

    @app.get("/3ds/<reference>")
    async def show_challenge(reference: str) -> Response:
        return challenge.show(network, reference)

    @app.post("/3ds/<reference>")
    async def answer_challenge(reference: str) -> Response:
        """The cardholder's answer; then back to `return_to` (the merchant's
        return URL, as the node built it) when there is one."""
        refused, passed = await challenge.answer(network, reference)
        if refused is not None:
            return refused
        return_to = request.args.get("return_to", "")
        if return_to and return_url_allowed(return_to, livemode=False):
            return redirect(return_to, 303)
        return challenge.finished(passed)

    @app.post("/v1/disputes")
    async def open_dispute() -> Response:
        body: DisputeBody = await _decoded(DisputeBody)
        reference = network.open_dispute(body.charge_reference)
        if reference is None:
            return _json({"reference": None, "error": "no captured charge to dispute"}, 404)
        return _json({"reference": reference})

    @app.post("/v1/disputes/<reference>/close")
    async def close_dispute(reference: str) -> Response:
        body: DisputeCloseBody = await _decoded(DisputeCloseBody)
        if not network.close_dispute(reference, body.won):
            return _json({"closed": False, "error": "no open dispute"}, 404)
        return _json({"closed": True})


def _register_fault_controls(app: QuartTrio, network: CardNetwork, initial_spec: fault_specs.FaultSpec) -> None:
    """Chaos: show and set the faults the network injects."""
    # The spec most recently set through /admin/faults, or the one the
    # network was built with, so that GET can show what is in force.
    current_spec: list[fault_specs.FaultSpec] = [initial_spec]

    @app.get("/admin/faults")
    async def faults_report() -> Response:
        return _json(
            {
                "spec": fault_specs.format(current_spec[0]),
                "counts": network.fault_counts(),
                "calls_total": network.calls_total(),
            }
        )

    @app.post("/admin/faults")
    async def set_faults() -> Response:
        body: FaultsBody = await _decoded(FaultsBody)
        if len(body.spec) > FAULT_SPEC_CHARS_MAX:
            raise BadRequest(f"spec is longer than {FAULT_SPEC_CHARS_MAX} characters")
        try:
            spec = fault_specs.parse(body.spec)
        except ValueError as error:
            raise BadRequest(str(error)) from None
        network.set_faults(spec)
        current_spec[0] = spec
        return _json({"spec": fault_specs.format(spec), "counts": network.fault_counts()})


async def serve_network(
    network: CardNetwork,
    host: str,
    port: int,
    *,
    faults: fault_specs.FaultSpec | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `network` over HTTP until cancelled; task_status.started(base URL).

    Port 0 picks a free port; the URL given to started() names the real one.
    """
    # hypercorn reports its bound addresses through its own task_status; we
    # pass on only the first as the base URL.
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, create_app(network, faults=faults), hypercorn_config(host, port))
        log.info("simulator_started", url=binds[0])
        task_status.started(binds[0])


async def run_sim(
    host: str,
    port: int,
    *,
    seed: int,
    faults: fault_specs.FaultSpec,
    latency_ms: tuple[int, int] = (1, 5),
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Build a CardNetwork from `seed`, `faults` and `latency_ms` and serve it
    until cancelled; task_status.started(base URL, e.g. "http://127.0.0.1:8123")."""
    network = CardNetwork(seed=seed, latency_ms=latency_ms, faults=faults)
    await serve_network(network, host, port, faults=faults, task_status=task_status)
