"""return_url: what an intent may send a customer back to.

The node serves the URL back as a redirect after a 3-D Secure challenge and
as `next_action.redirect_to_url.return_url`, on its own origin."""

from __future__ import annotations

import re

import httpx
import pytest

from engine.urls import RETURN_URL_CHARS_MAX, return_url_allowed
from tests.conftest import NodeProcess

REFUSED = [
    "javascript:alert(document.domain)",
    "JavaScript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "//evil.example/phish",
    "/relative/path",
    "https://shop.example/done\r\nSet-Cookie: session=stolen",
    "https://shop.example/done\nLocation: https://evil.example",
    "https://shop.example/ done",
    "https://shop.example/\tdone",
    "https://user:password@shop.example/done",
    "https:///no-host",
    "https://shop.example:99999/done",
    "https:\\\\evil.example",
    "ftp://shop.example/done",
    "http://shop.example/done",
    "https://shop.example/" + "a" * RETURN_URL_CHARS_MAX,
    "",
]


@pytest.mark.parametrize("url", REFUSED)
def test_return_url_that_could_inject_or_redirect_anywhere_is_refused(url: str) -> None:
    assert not return_url_allowed(url, livemode=False)
    assert not return_url_allowed(url, livemode=True)


@pytest.mark.parametrize("url", ["https://shop.example/done?order=7", "https://127.0.0.1:8443/x", "https://[::1]/x"])
def test_https_return_urls_are_allowed_in_both_modes(url: str) -> None:
    assert return_url_allowed(url, livemode=False)
    assert return_url_allowed(url, livemode=True)


@pytest.mark.parametrize("url", ["http://127.0.0.1:3000/done", "http://localhost/done", "http://[::1]:8000/done", "http://shop.localhost/x"])
def test_plain_http_return_url_only_to_a_local_address_in_test_mode(url: str) -> None:
    assert return_url_allowed(url, livemode=False)
    assert not return_url_allowed(url, livemode=True)


ATTACKS = [
    ("crlf_header_injection", "https://shop.example/done\r\nSet-Cookie: x=1"),
    ("javascript_scheme", "javascript:alert(1)"),
    ("data_scheme", "data:text/html,hi"),
    ("scheme_relative", "//evil.example/"),
    ("plain_http_to_a_remote_host", "http://evil.example/"),
    ("oversized", "https://shop.example/" + "a" * 3000),
]


@pytest.mark.parametrize(("attack", "url"), ATTACKS, ids=[attack for attack, _ in ATTACKS])
def test_return_url_attack_is_a_400_at_create(node: NodeProcess, attack: str, url: str) -> None:
    with httpx.Client(base_url=node.url, auth=(node.secret_key, "")) as client:
        response = client.post(
            "/v1/payment_intents",
            data={"amount": "2000", "currency": "eur", "payment_method": "pm_card_threeDSecure2Required", "confirm": "true", "return_url": url},
        )
    assert response.status_code == 400, attack
    error = response.json()["error"]
    assert error["param"] == "return_url"
    assert error["code"] == "url_invalid"
    assert "\r" not in response.text and "javascript" not in response.text


@pytest.mark.parametrize(("attack", "url"), ATTACKS, ids=[attack for attack, _ in ATTACKS])
def test_return_url_attack_is_a_400_at_confirm_and_changes_nothing(node: NodeProcess, attack: str, url: str) -> None:
    with httpx.Client(base_url=node.url, auth=(node.secret_key, "")) as client:
        intent = client.post("/v1/payment_intents", data={"amount": "2000", "currency": "eur"}).json()
        response = client.post(
            f"/v1/payment_intents/{intent['id']}/confirm", data={"payment_method": "pm_card_threeDSecure2Required", "return_url": url}
        )
        assert response.status_code == 400, attack
        assert response.json()["error"]["param"] == "return_url"
        assert client.get(f"/v1/payment_intents/{intent['id']}").json()["status"] == "requires_payment_method"


def test_the_3ds_challenge_redirects_only_to_the_checked_return_url(node: NodeProcess) -> None:
    with httpx.Client(base_url=node.url, auth=(node.secret_key, "")) as client:
        intent = client.post(
            "/v1/payment_intents",
            data={
                "amount": "2000",
                "currency": "eur",
                "payment_method": "pm_card_threeDSecure2Required",
                "confirm": "true",
                "return_url": "https://shop.example/done?order=7",
            },
        ).json()
        assert intent["status"] == "requires_action"
        challenge = intent["next_action"]["redirect_to_url"]["url"]
        path = re.sub(r"^https?://[^/]+", "", challenge)
        answered = client.post(path, data={"result": "pass"})
    assert answered.status_code == 303
    assert answered.headers["location"] == f"https://shop.example/done?order=7&payment_intent={intent['id']}"
