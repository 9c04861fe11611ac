"""The node's card network over HTTP: a client of simulators/service.py.

Every call ends in one of three ways, and telling them apart is the whole
job of this module, because the double-charge protocol (DESIGN.md section 5)
rests on it:

- an answer (approved or declined): the network decided, and said what;
- `NetworkRefused`: the network did not perform the operation, for certain.
  Either it said so (503 with `"performed": false`), or no connection was
  ever made, so not a byte of the request left this process, or the circuit
  breaker is open and the call was not even tried;
- `NetworkOutcomeUnknown`: the request may have reached the network and we
  never heard back (timeout, reset after sending, an unreadable answer).
  The attempt stays unknown until reconciliation asks by reference.

Retries resend the very same request, same reference, so the network's
idempotency makes a retry harmless; they happen only after a timeout or a
connection failure, never after an answer, and at most `retries` times.

A circuit breaker per card brand stops a failing network from eating every
call's full timeout budget: while it is open, calls fail fast with
`NetworkRefused` and nothing is sent. Time is `trio.current_time()`, so
tests can drive it with the autojump clock.

Card numbers: an AuthorizationRequest's repr hides the number, and this
module logs references, kinds and error types only.
"""

from __future__ import annotations

import collections
import math
from types import TracebackType
from collections.abc import Collection
from typing import Any, Self
from urllib.parse import quote, urlencode

import httpx
import msgspec
import structlog
import trio

from engine import cards
from engine import network as engine_network
from engine.network import (
    AuthorizationRequest,
    CaptureRequest,
    IncrementRequest,
    NetworkAnswer,
    NetworkNotice,
    NetworkRefused,
    RefundRequest,
    VoidRequest,
)

log = structlog.get_logger("shards.network_client")

# Retries back off 50 ms, 100 ms, ... and never wait longer than this.
RETRY_BACKOFF_S_FIRST = 0.05
RETRY_BACKOFF_S_MAX = 1.0
RETRIES_MAX = 10
# Connections held open to the network; a call waits for a free one at most
# its own timeout, then fails without having sent anything.
CONNECTIONS_MAX = 100
# How long one long poll for notices asks the server to wait, and how much
# longer we wait for its answer before calling the poll failed. Each poll
# names the partitions the node serves then: short polls follow handoffs.
NOTICE_POLL_S = 2.0
NOTICE_POLL_MARGIN_S = 5.0
# After a failed poll, wait before polling again rather than spin.
NOTICE_ERROR_BACKOFF_S = 1.0
# Timeout for the inspection and admin calls, which do not retry.
INSPECTION_TIMEOUT_S = 10.0
# The breaker key for every call whose brand the request does not name.
DEFAULT_BREAKER = "default"


class NetworkOutcomeUnknown(engine_network.NetworkOutcomeUnknown):
    """No answer came, and the network may have performed the operation.

    A subclass of the engine's own, so the node that catches that one
    catches this one too.
    """


class CircuitBreaker:
    """One network's breaker: closed, open, or half open with one probe out.

    It opens when, over the last `window` outcomes recorded while closed,
    the share of failures exceeds `error_ratio`, once at least `window // 2`
    outcomes were seen (so that two early failures cannot open it). Open, it
    refuses every call until `cooldown_s` has passed; then it lets one probe
    through (half open) and refuses the rest until the probe's outcome:
    success closes it with a clean window, failure opens it again.
    """

    def __init__(self, *, window: int, error_ratio: float, cooldown_s: float) -> None:
        assert window >= 1 and 0.0 <= error_ratio < 1.0 and cooldown_s >= 0
        self._outcomes: collections.deque[bool] = collections.deque(maxlen=window)
        self._window = window
        self._error_ratio = error_ratio
        self._cooldown_s = cooldown_s
        self._opened_at = -math.inf
        self._state = "closed"
        self._probe_out = False

    def state(self) -> str:
        """One of "closed", "open" or "half_open". An open breaker whose
        cooldown has passed reports "half_open", as the next call finds it."""
        if self._state == "open" and trio.current_time() - self._opened_at >= self._cooldown_s:
            return "half_open"
        return self._state

    def allow(self) -> bool:
        """Whether a call may go out now. A True in half-open state makes that
        call the probe, whose outcome must be recorded."""
        state = self.state()
        if state == "closed":
            return True
        if state == "open" or self._probe_out:
            return False
        self._state = "half_open"
        self._probe_out = True
        return True

    def record(self, *, failed: bool) -> None:
        if self._state == "half_open":
            self._probe_out = False
            if failed:
                self._open()
            else:
                self._state = "closed"
                self._outcomes.clear()
            return
        if self._state == "open":
            # A call let through before the breaker opened, ending late: the
            # decision to open already stands on enough evidence.
            return
        self._outcomes.append(failed)
        seen = len(self._outcomes)
        if seen >= max(1, self._window // 2) and sum(self._outcomes) / seen > self._error_ratio:
            self._open()

    def _open(self) -> None:
        self._state = "open"
        self._opened_at = trio.current_time()
        self._outcomes.clear()


class _Attempt(Exception):
    """One try failed before an answer; `delivered` says whether the request
    may have reached the network. Internal to the retry loop."""

    def __init__(self, reason: str, *, delivered: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delivered = delivered


class HttpCardNetwork:
    """The node's `CardNetwork` protocol over HTTP; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        *,
        call_timeout_s: float = 2.0,
        retries: int = 2,
        breaker_window: int = 20,
        breaker_error_ratio: float = 0.5,
        breaker_cooldown_s: float = 5.0,
    ) -> None:
        assert call_timeout_s > 0 and 0 <= retries <= RETRIES_MAX
        self._call_timeout_s = call_timeout_s
        self._retries = retries
        self._breaker_settings = {
            "window": breaker_window,
            "error_ratio": breaker_error_ratio,
            "cooldown_s": breaker_cooldown_s,
        }
        self._breakers: dict[str, CircuitBreaker] = {}
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(call_timeout_s),
            limits=httpx.Limits(max_connections=CONNECTIONS_MAX, max_keepalive_connections=CONNECTIONS_MAX),
            # The simulator never redirects; following one could resend a body.
            follow_redirects=False,
        )
        self._encoder = msgspec.json.Encoder()
        self._answer_decoder = msgspec.json.Decoder(NetworkAnswer)
        self._notice_decoder = msgspec.json.Decoder(NetworkNotice)
        self._list_decoder = msgspec.json.Decoder(list[dict[str, Any]])

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the protocol the node calls --------------------------------------------

    async def authorize(self, request: AuthorizationRequest) -> NetworkAnswer:
        return await self._perform("/v1/authorize", request, request.reference, cards.brand_of(request.card_number))

    async def capture(self, request: CaptureRequest) -> NetworkAnswer:
        return await self._perform("/v1/capture", request, request.reference, DEFAULT_BREAKER)

    async def increment(self, request: IncrementRequest) -> NetworkAnswer:
        return await self._perform("/v1/increment", request, request.reference, DEFAULT_BREAKER)

    async def void(self, request: VoidRequest) -> NetworkAnswer:
        return await self._perform("/v1/void", request, request.reference, DEFAULT_BREAKER)

    async def refund(self, request: RefundRequest) -> NetworkAnswer:
        return await self._perform("/v1/refund", request, request.reference, DEFAULT_BREAKER)

    async def inquire(self, reference: str) -> NetworkAnswer:
        """The network's answer for `reference`. An unknown reference is
        closed by the network (a tombstone) and comes back declined, so a
        late arrival of the original call can no longer be performed."""
        return await self._perform("/v1/inquire", {"reference": reference}, reference, DEFAULT_BREAKER)

    async def return_notice(self, notice: NetworkNotice) -> None:
        """Give back a notice about a partition this node no longer serves
        (it asked just before a handoff), for its owner to take. Raises
        NetworkRefused when the simulator cannot be reached."""
        try:
            response = await self._client.post("/v1/notices/return", content=self._encoder.encode(notice))
        except httpx.HTTPError as error:
            raise NetworkRefused(f"the notice could not be returned: {type(error).__name__}") from error
        if response.status_code != 200:
            raise NetworkRefused(f"the notice could not be returned: status {response.status_code}")

    def challenge_page(self, reference: str, return_to: str | None) -> str:
        """Where a cardholder answers the 3-D Secure challenge of
        `reference`: the simulator's own page, which sends them on to
        `return_to` afterwards."""
        query = "" if return_to is None else "?" + urlencode({"return_to": return_to})
        return f"{self.base_url}/3ds/{quote(reference, safe='')}{query}"

    async def next_notice(self, partitions: Collection[int] | None = None) -> NetworkNotice:
        """Wait for the network's next notice (with `partitions`, one about
        an operation in them), however long it takes.

        Polls the server (NOTICE_POLL_S per poll); a failed poll is logged
        and retried after NOTICE_ERROR_BACKOFF_S, so this never returns
        without a notice. Cancelled mid-poll, a notice the server was just
        sending is lost (see simulators/service.py).
        """
        timeout = httpx.Timeout(NOTICE_POLL_S + NOTICE_POLL_MARGIN_S, connect=self._call_timeout_s)
        while True:
            try:
                params: dict[str, Any] = {"timeout_s": NOTICE_POLL_S}
                if partitions is not None:
                    params["partitions"] = ",".join(str(partition) for partition in sorted(partitions))
                response = await self._client.get("/v1/notices/next", params=params, timeout=timeout)
                if response.status_code == 200:
                    return self._notice_decoder.decode(response.content)
                if response.status_code == 204:
                    continue
                log.warning("network_notice_poll_failed", status=response.status_code)
            except (httpx.HTTPError, msgspec.DecodeError) as error:
                log.warning("network_notice_poll_failed", error_type=type(error).__name__)
            await trio.sleep(NOTICE_ERROR_BACKOFF_S)

    # -- inspection, for checks and tests -----------------------------------------

    async def operations(self) -> list[dict[str, Any]]:
        """Every operation the network recorded, as JSON objects."""
        return self._list_decoder.decode(await self._inspect("GET", "/v1/operations"))

    async def settlement(self) -> list[dict[str, Any]]:
        """The network's settlement report, as JSON objects."""
        return self._list_decoder.decode(await self._inspect("GET", "/v1/settlement"))

    async def set_faults(self, spec: str) -> dict[str, Any]:
        """Put fault spec text in force; ValueError with the server's message
        when the spec does not parse."""
        response = await self._inspect_response("POST", "/admin/faults", {"spec": spec})
        if response.status_code == 400:
            raise ValueError(msgspec.json.decode(response.content).get("error", "bad fault spec"))
        self._check(response)
        return msgspec.json.decode(response.content)

    async def faults(self) -> dict[str, Any]:
        """{"spec", "counts", "calls_total"} as the simulator reports them."""
        return msgspec.json.decode(await self._inspect("GET", "/admin/faults"))

    def breaker_state(self, network: str) -> str:
        """The breaker state ("closed", "open", "half_open") of a brand or "default"."""
        breaker = self._breakers.get(network)
        return "closed" if breaker is None else breaker.state()

    # -- one call, with retries and the breaker -------------------------------------

    def _breaker(self, network: str) -> CircuitBreaker:
        breaker = self._breakers.get(network)
        if breaker is None:
            breaker = self._breakers[network] = CircuitBreaker(**self._breaker_settings)
        return breaker

    async def _perform(self, path: str, body: Any, reference: str, network: str) -> NetworkAnswer:
        breaker = self._breaker(network)
        if not breaker.allow():
            raise NetworkRefused(f"circuit open for network {network}")
        failed = True
        try:
            answer = await self._with_retries(path, self._encoder.encode(body), reference)
            failed = False
            return answer
        finally:
            # Also on cancellation (the node's own deadline): a call that
            # could not finish in time counts against the network, and a
            # probe must always be accounted for or the breaker would stay
            # half open forever.
            breaker.record(failed=failed)

    async def _with_retries(self, path: str, content: bytes, reference: str) -> NetworkAnswer:
        delivered_ever = False
        last_reason = ""
        for try_number in range(self._retries + 1):
            if try_number > 0:
                backoff_s = min(RETRY_BACKOFF_S_FIRST * 2 ** (try_number - 1), RETRY_BACKOFF_S_MAX)
                await trio.sleep(backoff_s)
            try:
                return await self._try_once(path, content)
            except NetworkRefused:
                if delivered_ever:
                    # "Not performed" speaks for this try only: an earlier
                    # one may have reached the network and acted.
                    raise NetworkOutcomeUnknown(f"refused after an earlier try of {reference} may have arrived") from None
                raise
            except _Attempt as attempt:
                delivered_ever = delivered_ever or attempt.delivered
                last_reason = attempt.reason
                log.warning(
                    "network_call_failed",
                    path=path,
                    reference=reference,
                    try_number=try_number,
                    reason=attempt.reason,
                    delivered=attempt.delivered,
                )
        if delivered_ever:
            raise NetworkOutcomeUnknown(f"no answer for {reference} after {self._retries + 1} tries: {last_reason}")
        raise NetworkRefused(f"could not reach the network for {reference}: {last_reason}")

    async def _try_once(self, path: str, content: bytes) -> NetworkAnswer:
        """One POST. Returns the answer, raises NetworkRefused or
        NetworkOutcomeUnknown for a final verdict, or _Attempt for a failure
        that may be retried."""
        response: httpx.Response | None = None
        with trio.move_on_after(self._call_timeout_s):
            try:
                response = await self._client.post(
                    path, content=content, headers={"Content-Type": "application/json"}
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
                # No connection was ever made for this request, so not a byte
                # of it reached the network.
                raise _Attempt(type(error).__name__, delivered=False) from None
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as error:
                raise _Attempt(type(error).__name__, delivered=True) from None
        if response is None:
            # Our own deadline; it may have struck at any point, sending included.
            raise _Attempt("timeout", delivered=True)
        # From here on the network answered: whatever it said, never retry.
        status = response.status_code
        if status == 200:
            try:
                return self._answer_decoder.decode(response.content)
            except msgspec.DecodeError:
                raise NetworkOutcomeUnknown(f"unreadable answer from the network ({path})") from None
        if status == 503 and _performed_false(response.content):
            raise NetworkRefused(f"the network refused the call ({path})")
        if 400 <= status < 500:
            # The simulator rejected the request before performing it; a bug
            # on our side, but a certain one.
            raise NetworkRefused(f"the network rejected the request with {status} ({path})")
        raise NetworkOutcomeUnknown(f"the network answered {status} ({path})")

    # -- inspection plumbing -------------------------------------------------------

    async def _inspect_response(self, method: str, path: str, body: Any = None) -> httpx.Response:
        content = None if body is None else self._encoder.encode(body)
        try:
            return await self._client.request(
                method,
                path,
                content=content,
                headers={"Content-Type": "application/json"},
                timeout=INSPECTION_TIMEOUT_S,
            )
        except httpx.HTTPError as error:
            # Inspection changes nothing, so "not performed" is the truth.
            raise NetworkRefused(f"could not reach the network: {type(error).__name__}") from None

    async def _inspect(self, method: str, path: str, body: Any = None) -> bytes:
        response = await self._inspect_response(method, path, body)
        self._check(response)
        return response.content

    @staticmethod
    def _check(response: httpx.Response) -> None:
        if response.status_code != 200:
            raise NetworkRefused(f"the network answered {response.status_code} ({response.url.path})")


def _performed_false(content: bytes) -> bool:
    try:
        body = msgspec.json.decode(content)
    except msgspec.DecodeError:
        return False
    return isinstance(body, dict) and body.get("performed") is False
