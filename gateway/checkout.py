"""Checkout in the browser: `payments.js`, the card field it frames, the
route that takes the field's encrypted card, and the demo shop.

Theory of operation (docs/checkout.md has the whole of it). A merchant's
page loads `/checkout/payments.js` from the node and mounts a card element:
an iframe of `/checkout/card`, on the node's origin, so the page's own
scripts cannot read what the customer types. The two talk only through
`postMessage`, each checking the other's origin and window. To pay, the
page hands the field an intent's client secret; the field encrypts the card
with WebCrypto to the node's public key (`/checkout/encryption-key`,
shards/checkout_keys.py), creates the payment method with the publishable
key (`POST /v1/elements/payment_methods`, the one place the card is opened,
to be sealed into the vault at once) and confirms the intent with the
client secret. A 3-D Secure challenge opens in a modal frame of the page;
its return URL, `/checkout/challenge-complete`, tells the page it is over.

Headers are set here by what each answer is (`HEADERS_BY_KIND`): the card
field and the challenge's return page may be framed by any http(s) origin
and run only the node's own scripts; the demo shop may not be framed at
all; the API answers CORS for browsers as Stripe's does (any origin, no
credentials: keys travel in the Authorization header, never in cookies).
An intent answered to a publishable key is cut down to the fields Stripe
shows such a key (`PUBLISHABLE_INTENT_FIELDS`).

The demo shop (`/demo/checkout`) is a merchant of its own on the node: its
page never sees the card, and its tiny backend route creates the intent
with the local test merchant's secret key and hands the page only the
client secret. It is served in test mode only.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import structlog
from quart import Response, g, request
from quart_trio import QuartTrio

from engine import cards
from gateway import errors, params
from gateway.app import Mount
from gateway.errors import ApiError
from gateway.responses import json_response, raw_response
from gateway.routes.payment_methods import checked_card, render_payment_method
from shards.checkout_keys import CardUnreadable, CheckoutKeys, KeyUnknown
from shards.merchants import MerchantKeys
from shards.node import Node
from store.checkout_keys import EncryptionKeys

log = structlog.get_logger("gateway.checkout")

# The files of gateway/checkout_static/ served, by name: nothing else can be asked for.
STATIC_FILES = {
    "/checkout/static/": {"card.js": "text/javascript; charset=utf-8", "card.css": "text/css; charset=utf-8", "complete.js": "text/javascript; charset=utf-8"},
    "/demo/static/": {"demo.js": "text/javascript; charset=utf-8", "demo.css": "text/css; charset=utf-8"},
}
SCRIPT_TYPE = "text/javascript; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"

# The demo shop's one product: its price is the server's, never the page's.
DEMO_PRODUCT = "Field notebook, dot grid"
DEMO_AMOUNT_MINOR = 2500
DEMO_CURRENCY = "usd"
DEMO_TIMEOUT_S = 10.0
# An RSA-2048 ciphertext is 256 bytes, 344 characters of base64.
ENCRYPTED_CARD_CHARS_MAX = 1024

_FRAMED_ANYWHERE = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self';"
    " base-uri 'none'; form-action 'none'; frame-ancestors http: https:"
)
HEADERS_BY_KIND: dict[str, dict[str, str]] = {
    # The card field: framed by any merchant's page over http(s).
    "frame": {
        "Content-Security-Policy": _FRAMED_ANYWHERE,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    },
    # payments.js and the field's own files: loaded by any page.
    "script": {
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Resource-Policy": "cross-origin",
        "Access-Control-Allow-Origin": "*",
        "Cache-Control": "public, max-age=300",
    },
    # The demo shop: never framed (a shop's pay button under someone else's page is clickjacking).
    "demo": {
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    },
}
# CORS for the API, as Stripe's API answers it: any origin may call with a
# key it holds (a publishable key in a page); no cookie is ever read, so no
# credentials are allowed.
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Request-Id, Stripe-Version, Idempotent-Replayed, Retry-After",
}
CORS_PREFLIGHT_HEADERS = {
    **CORS_HEADERS,
    "Access-Control-Allow-Methods": "GET, POST, DELETE",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Idempotency-Key, Stripe-Version",
    "Access-Control-Max-Age": "600",
}


# What Stripe shows of a PaymentIntent to a publishable key (its object
# reference marks these "retrievable with publishable key"): a page sees how
# its payment stands, not the merchant's metadata, amounts received or fees.
PUBLISHABLE_INTENT_FIELDS = frozenset({
    "id", "object", "amount", "automatic_payment_methods", "canceled_at", "cancellation_reason", "capture_method",
    "client_secret", "confirmation_method", "created", "currency", "description", "last_payment_error", "livemode",
    "next_action", "payment_method", "payment_method_types", "processing", "receipt_email", "setup_future_usage",
    "shipping", "status",
})
# The same for a SetupIntent: not its customer or the merchant's metadata.
PUBLISHABLE_SETUP_INTENT_FIELDS = frozenset({
    "id", "object", "cancellation_reason", "client_secret", "created", "description", "last_setup_error", "livemode",
    "next_action", "payment_method", "payment_method_types", "status", "usage",
})
# By the path an answer is for: the object it carries, and what of it a publishable key sees.
PUBLISHABLE_SUBSETS = {
    "/v1/payment_intents/": ("payment_intent", PUBLISHABLE_INTENT_FIELDS),
    "/v1/setup_intents/": ("setup_intent", PUBLISHABLE_SETUP_INTENT_FIELDS),
}
_json = msgspec.json.Encoder()


class ElementsPaymentMethod(msgspec.Struct, forbid_unknown_fields=True):
    """What the card field sends: the card, encrypted to one of the node's keys."""

    encryption_key: str
    encrypted_card: str


def read_static(name: str) -> bytes:
    """A file of gateway/checkout_static/, from the source tree or an installed package."""
    return resources.files("gateway").joinpath("checkout_static", name).read_bytes()


def demo_url(node_url: str) -> str:
    """Where to open the demo shop: on `localhost` when the node listens on
    127.0.0.1, so that the shop's page and the card field are on two
    origins, as a real merchant's page and the node are."""
    parts = urlsplit(node_url)
    host = "localhost" if parts.hostname == "127.0.0.1" else parts.netloc.rsplit(":", 1)[0]
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/demo/checkout"


def mount(merchant: MerchantKeys | None) -> Mount:
    """The routes above (a `gateway.app.Mount`); the demo shop sells as
    `merchant`, the local test merchant (None: no demo shop)."""

    def register(app: QuartTrio, node: Node, authenticate: Callable[..., Awaitable[Any]], read_body: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        keys = CheckoutKeys(EncryptionKeys(node.store.database), node.vault)
        _register_headers(app)
        _register_files(app)
        _register_card_route(app, node, keys, authenticate, read_body)
        _register_demo(app, node, merchant)

    return register


def _register_headers(app: QuartTrio) -> None:
    @app.before_request
    async def answer_preflight() -> Response | None:
        # A browser asks before sending an Authorization header across
        # origins; the answer carries no API object and needs no key.
        if request.method == "OPTIONS" and request.path.startswith("/v1/"):
            return Response(b"", status=204, headers=CORS_PREFLIGHT_HEADERS)
        return None

    @app.after_request
    async def set_headers(response: Response) -> Response:
        kind = g.get("checkout_kind")
        for name, value in HEADERS_BY_KIND.get(kind, {}).items():
            response.headers[name] = value
        if kind == "demo":
            response.headers["Content-Security-Policy"] = g.demo_policy
        if request.path.startswith("/v1/"):
            for name, value in CORS_HEADERS.items():
                response.headers.setdefault(name, value)
            for prefix, (kind, fields) in PUBLISHABLE_SUBSETS.items():
                if g.get("api_key_kind") == "publishable" and request.path.startswith(prefix):
                    await _show_publishable_subset(response, kind, fields)
        return response


async def _show_publishable_subset(response: Response, kind: str, fields: frozenset[str]) -> None:
    """Cut the PaymentIntent or SetupIntent (`kind`) an answer to a
    publishable key carries (itself, or inside a card error) down to what
    Stripe shows such a key (`fields`)."""
    if response.mimetype != "application/json":
        return
    body = msgspec.json.decode(await response.get_data())
    error = body.get("error") if isinstance(body, dict) else None
    holder, name = (error, kind) if isinstance(error, dict) else ({"intent": body}, "intent")
    intent = holder.get(name)
    if not isinstance(intent, dict) or intent.get("object") != kind:
        return
    holder[name] = {field: value for field, value in intent.items() if field in fields}
    response.set_data(_json.encode(body if error is not None else holder[name]))


def _register_files(app: QuartTrio) -> None:
    files = {prefix + name: (read_static(name), content_type) for prefix, named in STATIC_FILES.items() for name, content_type in named.items()}
    script = read_static("payments.js")
    card_page = read_static("card.html")
    complete_page = read_static("complete.html")

    @app.get("/checkout/payments.js")
    async def payments_script() -> Response:
        g.checkout_kind = "script"
        return Response(script, content_type=SCRIPT_TYPE)

    @app.get("/checkout/static/<name>")
    @app.get("/demo/static/<name>")
    async def checkout_static(name: str) -> Response:
        found = files.get(request.path)
        if found is None:
            raise errors.invalid_request(f"Unrecognized request URL (GET: {request.path[:200]}).", status=404)
        g.checkout_kind = "script"
        return Response(found[0], content_type=found[1])

    @app.get("/checkout/card")
    async def card_frame() -> Response:
        g.checkout_kind = "frame"
        return Response(card_page, content_type=HTML_TYPE)

    @app.get("/checkout/challenge-complete")
    async def challenge_complete() -> Response:
        g.checkout_kind = "frame"
        return Response(complete_page, content_type=HTML_TYPE)


def _register_card_route(
    app: QuartTrio, node: Node, keys: CheckoutKeys, authenticate: Callable[..., Awaitable[Any]], read_body: Callable[[], Awaitable[dict[str, Any]]]
) -> None:
    @app.get("/checkout/encryption-key")
    async def encryption_key() -> Response:
        key_id, jwk = await keys.current()
        return json_response({"id": key_id, "algorithm": "RSA-OAEP-256", "jwk": jwk}, headers={"Access-Control-Allow-Origin": "*"})

    @app.post("/v1/elements/payment_methods")
    async def create_encrypted_payment_method() -> Response:
        """A card payment method from the card field's encrypted card: the
        answer is the one `POST /v1/payment_methods` gives."""
        key = await authenticate(publishable_allowed=True)
        values = params.convert(await read_body(), ElementsPaymentMethod)
        if len(values.encrypted_card) > ENCRYPTED_CARD_CHARS_MAX:
            raise errors.invalid_request("The encrypted card is too long.", param="encrypted_card")
        try:
            card = await keys.decrypt_browser_card(values.encryption_key, values.encrypted_card)
        except KeyUnknown:
            raise errors.invalid_request(
                "No such encryption key: fetch /checkout/encryption-key again.", param="encryption_key", code="resource_missing"
            ) from None
        except CardUnreadable:
            raise errors.invalid_request("The encrypted card could not be read.", param="encrypted_card", code="encrypted_card_invalid") from None
        if card.postal_code is not None and not 1 <= len(card.postal_code.strip()) <= 16:
            raise errors.invalid_request("Your postal code is incomplete.", param="billing_details[address][postal_code]", code="incomplete_zip")
        number, exp_year = checked_card(params.CardParams(card.number, card.exp_month, card.exp_year, card.cvc))
        row = await node.create_payment_method(key.merchant_id, key.livemode, number, card.exp_month, exp_year, cards.brand_of(number))
        log.info("payment_method_created", payment_method_id=row.id, brand=row.brand, last4=row.last4, encrypted=True)
        return raw_response(*render_payment_method(row))


def _register_demo(app: QuartTrio, node: Node, merchant: MerchantKeys | None) -> None:
    page = read_static("demo.html").decode()

    def demo_keys() -> MerchantKeys:
        if merchant is None or not merchant.secret_key.startswith("sk_test_"):
            raise ApiError(403, "invalid_request_error", "The demo shop runs in test mode only, with the node's local test merchant.")
        return merchant

    @app.get("/demo/checkout")
    async def demo_page() -> Response:
        keys = demo_keys()
        node_origin = _origin(node.url or request.host_url)
        g.checkout_kind = "demo"
        g.demo_policy = (
            f"default-src 'none'; script-src 'self' {node_origin}; style-src 'self'; connect-src 'self' {node_origin};"
            f" frame-src {node_origin} 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        filled = page.replace("{{publishable_key}}", html.escape(keys.publishable_key)).replace("{{node_origin}}", html.escape(node_origin))
        return Response(filled, content_type=HTML_TYPE)

    @app.post("/demo/checkout/intents")
    async def demo_intent() -> Response:
        """The demo shop's backend: an intent for its one product, made
        with the secret key as a merchant's server would; the page gets
        its client secret only."""
        keys = demo_keys()
        g.checkout_kind = "demo"
        g.demo_policy = "default-src 'none'; frame-ancestors 'none'"
        body = {"amount": str(DEMO_AMOUNT_MINOR), "currency": DEMO_CURRENCY, "description": DEMO_PRODUCT}
        try:
            async with httpx.AsyncClient(base_url=node.url or request.host_url, timeout=DEMO_TIMEOUT_S) as client:
                answer = await client.post("/v1/payment_intents", data=body, auth=(keys.secret_key, ""))
        except httpx.HTTPError:
            raise errors.unavailable("The demo shop could not reach its node. Retry shortly.") from None
        if answer.status_code != 200:
            return raw_response(answer.status_code, answer.content)
        intent = answer.json()
        return json_response({"client_secret": intent["client_secret"], "amount": intent["amount"], "currency": intent["currency"]})


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
