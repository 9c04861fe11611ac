"""A route module's table of views, added to the app when it is made.

A view is a module-level function, published with `@api(...)`, whose
parameters are the app's `Calls`, the caller's API key, then its path
parameters. `Routes.register` adds each view to the app under the view's own
name (the route's endpoint, and so its operation id in /openapi.json),
bound to the app's `Calls`: the bound view authenticates the caller first,
letting a publishable key in where `@api(..., publishable=True)` says so, so
the document and the check cannot disagree. A view without `@api` is not
published (gateway/routes/unsupported.py) and takes secret keys only; one
view declared on several rules gets an endpoint name per rule.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from quart import Response
from quart_trio import QuartTrio

from gateway.calls import Calls

View = Callable[..., Awaitable[Response]]


class Routes:
    """The views of one route module, in the order they are declared."""

    def __init__(self) -> None:
        self.views: list[tuple[str, str, View, str | None]] = []

    def get(self, rule: str) -> Callable[[View], View]:
        return self.route("GET", rule)

    def post(self, rule: str) -> Callable[[View], View]:
        return self.route("POST", rule)

    def delete(self, rule: str) -> Callable[[View], View]:
        return self.route("DELETE", rule)

    def route(self, method: str, rule: str, *, endpoint: str | None = None) -> Callable[[View], View]:
        """Declare the decorated view as the handler of `method` on `rule`,
        under the view's name or `endpoint`."""

        def declare(view: View) -> View:
            self.views.append((method, rule, view, endpoint))
            return view

        return declare

    def register(self, app: QuartTrio, calls: Calls) -> None:
        """Add every view to `app`, in declaration order, bound to `calls`."""
        for method, rule, view, endpoint in self.views:
            app.add_url_rule(rule, endpoint=endpoint, view_func=_bound(view, calls), methods=[method])


def _bound(view: View, calls: Calls) -> View:
    """`view` as the app calls it: with path parameters only."""
    api = getattr(view, "__api__", None)
    publishable = api is not None and api.publishable

    # functools.wraps keeps the view's name (the endpoint) and its __api__.
    @functools.wraps(view)
    async def bound(**path: Any) -> Response:
        key = await calls.authenticate(publishable_allowed=publishable)
        return await view(calls, key, **path)

    return bound
