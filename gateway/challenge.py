"""The card-network simulator's 3-D Secure challenge page.

A real issuer shows the cardholder its own page; the simulator's is served by
the node, at the `next_action.redirect_to_url.url` of an intent waiting in
`requires_action`. The cardholder passes or fails the challenge there; the
network then sends its final answer for the attempt, and the intent moves on
by itself. No API key: the unguessable attempt id in the path is the secret,
as it is for a real issuer's page.
"""

from __future__ import annotations

import html
from urllib.parse import urlencode

from quart import Response, redirect, request
from quart_trio import QuartTrio

from engine.urls import return_url_allowed
from shards.node import Node

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


def _page(body: str, status: int = 200) -> Response:
    return Response(body, status=status, content_type="text/html; charset=utf-8")


def register(app: QuartTrio, node: Node) -> None:
    def challenge_pending(reference: str) -> bool:
        pending = getattr(node.network, "challenge_pending", None)
        return pending is not None and len(reference) <= 64 and pending(reference)

    @app.get("/simulator/3ds/<reference>")
    async def show_challenge(reference: str) -> Response:
        if not challenge_pending(reference):
            return _page(DONE.format(title="No authentication is waiting here"), 404)
        return _page(PAGE)

    @app.post("/simulator/3ds/<reference>")
    async def answer_challenge(reference: str) -> Response:
        form = await request.form
        result = form.get("result")
        if result not in ("pass", "fail"):
            return _page(DONE.format(title="Choose pass or fail"), 400)
        if not challenge_pending(reference) or not node.network.complete_challenge(reference, result == "pass"):
            return _page(DONE.format(title="No authentication is waiting here"), 404)
        intent_id = node.intent_of_reference(reference)
        intent = None if intent_id is None else node.intent(intent_id)
        # Checked again here: an intent journaled before return URLs were
        # checked may hold one that must not become a redirect.
        if intent is not None and intent.return_url and return_url_allowed(intent.return_url, intent.livemode):
            separator = "&" if "?" in intent.return_url else "?"
            return redirect(intent.return_url + separator + urlencode({"payment_intent": intent.id}), 303)
        title = "Authentication complete" if result == "pass" else "Authentication failed"
        return _page(DONE.format(title=html.escape(title)))
