"""The API's routes, one module per kind of object. Each module declares
its views in a table, `ROUTES` (gateway/routing.py), added to the app here.
"""

from __future__ import annotations

from quart_trio import QuartTrio

from gateway.calls import Calls
from gateway.routes import balance, charges, disputes, events, payment_intents, payment_methods, refunds, unsupported, webhook_endpoints
from gateway.routes import setup_intents
from gateway.routes import customers
from gateway.routes import search

# In this order the URL map, and so /openapi.json, lists routes as it always
# has; the unserved ones last, and never in /openapi.json.
MODULES = (events, webhook_endpoints, payment_methods, search, payment_intents, charges, refunds, balance, disputes, setup_intents, customers, unsupported)


def register(app: QuartTrio, calls: Calls) -> None:
    """Add every API route to `app`, bound to `calls`."""
    for module in MODULES:
        module.ROUTES.register(app, calls)
