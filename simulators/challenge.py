"""The 3-D Secure test page: what a cardholder sees at an intent's
`next_action.redirect_to_url.url`, standing in for the issuer's
authentication. Served by the node beside an in-process simulator
(simulators/routes.py) and by the simulator service (simulators/service.py)
for nodes that use it. No API key: the unguessable attempt id in the path
is the secret, as it is for a real issuer's page."""

from __future__ import annotations

from typing import Protocol

from quart import Response, request

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>3-D Secure test page</title></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 3em auto">
<h1>3-D Secure test payment</h1>
<p>This page stands in for the card issuer's authentication. Choose an outcome.</p>
<form method="post"><input type="hidden" name="result" value="pass">
<button type="submit">Complete authentication</button></form>
<form method="post" style="margin-top: 1em"><input type="hidden" name="result" value="fail">
<button type="submit">Fail authentication</button></form>
</body></html>
"""

DONE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>3-D Secure test page</title></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 3em auto">
<h1>{title}</h1><p>You can close this page.</p></body></html>
"""


REFERENCE_CHARS_MAX = 64


class Challenges(Protocol):
    def challenge_pending(self, reference: str) -> bool: ...

    def complete_challenge(self, reference: str, passed: bool) -> bool: ...


def page(body: str, status: int = 200) -> Response:
    return Response(body, status=status, content_type="text/html; charset=utf-8")


def _pending(network: Challenges, reference: str) -> bool:
    return len(reference) <= REFERENCE_CHARS_MAX and network.challenge_pending(reference)


def show(network: Challenges, reference: str) -> Response:
    """The page, while the challenge waits."""
    if not _pending(network, reference):
        return page(DONE.format(title="No authentication is waiting here"), 404)
    return page(PAGE)


async def answer(network: Challenges, reference: str) -> tuple[Response | None, bool]:
    """Complete the challenge as the posted form says: (None, passed) when
    done, else (the page saying why not, False)."""
    result = (await request.form).get("result")
    if result not in ("pass", "fail"):
        return page(DONE.format(title="Choose pass or fail"), 400), False
    if not _pending(network, reference) or not network.complete_challenge(reference, result == "pass"):
        return page(DONE.format(title="No authentication is waiting here"), 404), False
    return None, result == "pass"


def finished(passed: bool) -> Response:
    """The page after the challenge, when there is nowhere to go back to."""
    return page(DONE.format(title="Authentication complete" if passed else "Authentication failed"))
