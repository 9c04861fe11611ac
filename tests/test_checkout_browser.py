"""The checkout in a real browser (headless Chromium, driven by Selenium):
the demo shop pays with a test card, a 3-D Secure card passes its
challenge, a declined card says why; and the card number is never in the
shop's page, in the requests the shop's page or backend see, in any
request in clear, or in the node's log. Then what the node answers around
it: headers, CORS, the encrypted card route, the demo refused in live mode.

The node is plain `payments up`, which mounts the checkout.
The shop is opened on `localhost` and the node serves the card field on
127.0.0.1: two origins, as a merchant's site and the node are.
"""

from __future__ import annotations

import asyncio
import base64
import os
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from gateway import checkout
from gateway.app import create_app
from shards.merchants import MerchantKeys
from tests.conftest import NODE_START_TIMEOUT_S, REDIS_URL, NodeProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PAGE_WAIT_S = 30
VISA = "4242424242424242"
THREE_D_SECURE = "4000002500003155"
DECLINED = "4000000000000002"


@dataclass
class ShopNode(NodeProcess):
    publishable_key: str = ""


def start_checkout_node(database_url: str, data_dir: Path) -> ShopNode:
    """A node with the checkout mounted, logging at info, as NodeProcess.start does for `payments up`."""
    node = ShopNode(database_url, data_dir)
    environ = {
        **os.environ,
        "PAYMENTS_DATABASE_URL": database_url,
        "PAYMENTS_REDIS_URL": REDIS_URL,
        "PAYMENTS_REDIS_PREFIX": f"payments-test:checkout-{time.monotonic_ns()}:",
    }
    node.process = subprocess.Popen(
        [sys.executable, "-m", "payments.cli", "up", "--port", "0", "--data-dir", str(data_dir), "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=open(data_dir / "node.log", "ab"), env=environ, text=True, cwd=Path(__file__).parent.parent,
    )
    assert node.process.stdout is not None
    deadline = time.monotonic() + NODE_START_TIMEOUT_S
    while time.monotonic() < deadline and not (node.url and node.secret_key and node.publishable_key):
        line = node.process.stdout.readline()
        if not line:
            break
        if match := re.match(r"payments up: listening on (\S+)", line):
            node.url = match.group(1)
        if match := re.match(r"secret key:\s+(\S+)", line):
            node.secret_key = match.group(1)
        if match := re.match(r"publishable:\s+(\S+)", line):
            node.publishable_key = match.group(1)
    if not (node.url and node.secret_key):
        node.kill()
        raise AssertionError(f"node did not start; its log ends with:\n{(data_dir / 'node.log').read_text()[-3000:]}")
    return node


@pytest.fixture(scope="module")
def shop_node(make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShopNode]:
    node = start_checkout_node(make_database(), tmp_path_factory.mktemp("checkout"))
    yield node
    node.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium from the system's packages, recording every request it sends."""
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "Chromium is missing: apt-get install chromium chromium-driver (.ci/run does)"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1000,1400"):
        options.add_argument(argument)
    # Frames of other sites in the page's own process, so that the driver's
    # log records their requests too (the same-origin policy still holds:
    # the tests check the shop cannot reach into the field).
    options.add_argument("--disable-site-isolation-trials")
    options.add_argument("--disable-features=IsolateOrigins,site-per-process")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # A Service with the driver's path: Selenium never looks for (or downloads) one.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    return WebDriverWait(driver, PAGE_WAIT_S).until(condition, message=f"waiting for {what}")


def sent_requests(driver: WebDriver) -> list[dict[str, str]]:
    """Every request the browser sent since last asked: its URL and body, from any frame."""
    sent = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            request = message["params"]["request"]
            sent.append({"url": request["url"], "body": request.get("postData", ""), "frame": message["params"].get("frameId", "")})
    return sent


def open_shop(driver: WebDriver, node: ShopNode) -> None:
    driver.get(checkout.demo_url(node.url))
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#card-element iframe"), "the card field")


def type_card(driver: WebDriver, number: str) -> None:
    """Type a card into the field's frame as a customer would, then come back to the shop's page."""
    driver.switch_to.frame(driver.find_element(By.CSS_SELECTOR, "#card-element iframe"))
    try:
        wait_for(driver, lambda d: d.find_element(By.ID, "number").is_enabled(), "the card field to be ready")
        for field, value in (("number", number), ("expiry", "1234"), ("cvc", "123"), ("postal", "94107")):
            box = driver.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        # A positive control for the checks below: the number is typed, grouped, in the frame.
        assert driver.find_element(By.ID, "number").get_attribute("value").replace(" ", "") == number
    finally:
        driver.switch_to.default_content()


def pay(driver: WebDriver) -> None:
    button = wait_for(driver, lambda d: d.find_element(By.ID, "pay") if d.find_element(By.ID, "pay").is_enabled() else None, "Pay to be enabled")
    button.click()


def result(driver: WebDriver) -> tuple[str, str]:
    def settled(d: WebDriver) -> tuple[str, str] | None:
        shown = d.find_element(By.ID, "result")
        state = shown.get_attribute("data-state")
        return None if state in ("idle", "working") else (state, shown.text)

    return wait_for(driver, settled, "the payment's result")


def assert_number_not_in_page(driver: WebDriver, node: ShopNode, number: str) -> None:
    """Not in the shop's document (markup, text, any value) but where the
    page as served lists it among its test cards, and not readable through
    the frame: the field is another origin's document."""
    spaced = " ".join(number[i : i + 4] for i in range(0, len(number), 4))
    served = httpx.get(checkout.demo_url(node.url)).text
    listed = served.count(spaced) + served.count(number)
    markup, text, values = driver.execute_script(
        "return [document.documentElement.outerHTML, document.body.innerText,"
        " Array.from(document.querySelectorAll('input, textarea')).map(i => i.value).join(' ')]"
    )
    assert markup.count(spaced) + markup.count(number) == listed
    assert text.count(spaced) + text.count(number) <= listed
    assert number not in values.replace(" ", "")
    assert driver.execute_script("return document.querySelector('#card-element iframe').contentDocument") is None


def assert_number_not_sent(requests: list[dict[str, str]], number: str, node: ShopNode) -> None:
    urls = [request["url"] for request in requests]
    # Positive controls: the log saw the shop's backend call and the field's encrypted card.
    assert any(url.endswith("/demo/checkout/intents") for url in urls), urls
    encrypted = [request for request in requests if request["url"].endswith("/v1/elements/payment_methods")]
    assert encrypted and "encrypted_card=" in encrypted[0]["body"], "\n".join(urls)
    for request in requests:
        assert number not in request["url"] and number not in request["body"], request["url"]
        if "/demo/" in request["url"]:
            assert request["body"] == "", request
    log = (node.data_dir / "node.log").read_text()
    assert "payment_method_created" in log  # the log is being written, at info
    assert number not in log and number[-8:] + "\"" not in log


def intent_of(driver: WebDriver, node: ShopNode, text: str) -> dict:
    intent_id = re.search(r"pi_\w+", text)
    assert intent_id is not None, text
    return httpx.get(f"{node.url}/v1/payment_intents/{intent_id.group(0)}", auth=(node.secret_key, "")).json()


def test_the_demo_shop_pays_with_a_test_card_and_never_holds_the_number(shop_node: ShopNode, browser: WebDriver) -> None:
    sent_requests(browser)
    open_shop(browser, shop_node)
    type_card(browser, VISA)
    pay(browser)
    state, text = result(browser)
    assert state == "succeeded", text
    intent = intent_of(browser, shop_node, text)
    assert (intent["status"], intent["amount"], intent["description"]) == ("succeeded", 2500, checkout.DEMO_PRODUCT)
    assert_number_not_in_page(browser, shop_node, VISA)
    assert_number_not_sent(sent_requests(browser), VISA, shop_node)


def test_a_three_d_secure_card_completes_its_challenge_in_a_modal(shop_node: ShopNode, browser: WebDriver) -> None:
    sent_requests(browser)
    open_shop(browser, shop_node)
    type_card(browser, THREE_D_SECURE)
    pay(browser)
    challenge = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "iframe[title='3-D Secure authentication']"), "the challenge")[0]
    assert browser.find_element(By.CSS_SELECTOR, "[role='dialog']").get_attribute("aria-modal") == "true"
    browser.switch_to.frame(challenge)
    wait_for(browser, lambda d: d.find_element(By.XPATH, "//button[text()='Complete authentication']"), "the challenge page").click()
    browser.switch_to.default_content()
    state, text = result(browser)
    assert state == "succeeded", text
    assert intent_of(browser, shop_node, text)["status"] == "succeeded"
    assert not browser.find_elements(By.CSS_SELECTOR, "[role='dialog']")
    assert_number_not_in_page(browser, shop_node, THREE_D_SECURE)
    assert_number_not_sent(sent_requests(browser), THREE_D_SECURE, shop_node)


def test_a_failed_challenge_is_not_paid_and_says_so(shop_node: ShopNode, browser: WebDriver) -> None:
    open_shop(browser, shop_node)
    type_card(browser, THREE_D_SECURE)
    pay(browser)
    challenge = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "iframe[title='3-D Secure authentication']"), "the challenge")[0]
    browser.switch_to.frame(challenge)
    wait_for(browser, lambda d: d.find_element(By.XPATH, "//button[text()='Fail authentication']"), "the challenge page").click()
    browser.switch_to.default_content()
    state, text = result(browser)
    intent = intent_of(browser, shop_node, browser.execute_script("return document.querySelector('#result').dataset.intent || ''") or text)
    assert (state, text) == ("declined", "Declined: " + intent["last_payment_error"]["message"])
    assert intent["status"] == "requires_payment_method"


def test_a_declined_card_shows_the_decline(shop_node: ShopNode, browser: WebDriver) -> None:
    sent_requests(browser)
    open_shop(browser, shop_node)
    type_card(browser, DECLINED)
    pay(browser)
    assert result(browser) == ("declined", "Declined: Your card was declined.")
    assert_number_not_in_page(browser, shop_node, DECLINED)
    assert_number_not_sent(sent_requests(browser), DECLINED, shop_node)


def test_the_field_checks_the_number_as_it_is_typed(shop_node: ShopNode, browser: WebDriver) -> None:
    open_shop(browser, shop_node)
    browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, "#card-element iframe"))
    try:
        number = wait_for(browser, lambda d: d.find_element(By.ID, "number"), "the number box")
        number.send_keys("3782")
        assert browser.find_element(By.ID, "brand").text == "American Express"
        number.clear()
        number.send_keys("4242424242424241")
        assert number.get_attribute("value") == "4242 4242 4242 4241"
        assert browser.find_element(By.ID, "brand").text == "Visa"
        assert number.get_attribute("aria-invalid") == "true"
        assert browser.find_element(By.ID, "error").text == "Your card number is invalid."
        assert browser.find_element(By.ID, "error").get_attribute("role") == "alert"
        assert browser.find_element(By.CSS_SELECTOR, "label[for='number']").text.startswith("Card number")
    finally:
        browser.switch_to.default_content()
    assert not browser.find_element(By.ID, "pay").is_enabled()


def test_the_card_field_refuses_to_work_unframed(shop_node: ShopNode, browser: WebDriver) -> None:
    browser.get(f"{shop_node.url}/checkout/card#key={shop_node.publishable_key}&origin=http%3A%2F%2Fevil.test")
    error = wait_for(browser, lambda d: d.find_element(By.ID, "error").text, "the field's refusal")
    assert error == "This card field works only inside a page that mounted it with payments.js."
    assert not browser.find_element(By.ID, "number").is_enabled()


def test_the_card_field_refuses_a_page_that_claims_another_origin(shop_node: ShopNode, browser: WebDriver) -> None:
    open_shop(browser, shop_node)
    # The shop's page frames a field that was told its parent is another site.
    browser.execute_script(
        "const frame = document.createElement('iframe'); frame.id = 'liar';"
        " frame.src = arguments[0] + '/checkout/card#key=' + document.body.dataset.publishableKey + '&origin=https%3A%2F%2Fshop.example';"
        " document.body.appendChild(frame);",
        shop_node.url,
    )
    browser.switch_to.frame(wait_for(browser, lambda d: d.find_element(By.ID, "liar"), "the second field"))
    try:
        error = wait_for(browser, lambda d: d.find_element(By.ID, "error").text, "the field's refusal")
        assert error == "This card field works only inside a page that mounted it with payments.js."
        assert not browser.find_element(By.ID, "number").is_enabled()
    finally:
        browser.switch_to.default_content()
    # The honest field beside it works.
    browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, "#card-element iframe"))
    try:
        assert browser.find_element(By.ID, "number").is_enabled() and browser.find_element(By.ID, "error").text == ""
    finally:
        browser.switch_to.default_content()


def test_headers_frame_the_field_anywhere_and_the_shop_nowhere_and_the_api_answers_cors(shop_node: ShopNode) -> None:
    field = httpx.get(f"{shop_node.url}/checkout/card")
    policy = field.headers["Content-Security-Policy"]
    assert "frame-ancestors http: https:" in policy and "script-src 'self';" in policy and "X-Frame-Options" not in field.headers
    shop = httpx.get(checkout.demo_url(shop_node.url))
    assert "frame-ancestors 'none'" in shop.headers["Content-Security-Policy"] and shop.headers["X-Frame-Options"] == "DENY"
    script = httpx.get(f"{shop_node.url}/checkout/payments.js")
    assert script.headers["Content-Type"].startswith("text/javascript") and script.headers["X-Content-Type-Options"] == "nosniff"
    preflight = httpx.options(
        f"{shop_node.url}/v1/payment_intents/pi_x", headers={"Origin": "https://shop.test", "Access-Control-Request-Headers": "authorization"}
    )
    assert preflight.status_code == 204 and preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in preflight.headers
    refused = httpx.get(f"{shop_node.url}/v1/payment_intents", headers={"Origin": "https://shop.test"}, auth=(shop_node.publishable_key, ""))
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == "*"
    assert "Request-Id" in refused.headers["Access-Control-Expose-Headers"]


def encrypt_to_node(node: ShopNode, card: dict) -> dict[str, str]:
    """What the card field sends, made here with the key the node serves."""
    served = httpx.get(f"{node.url}/checkout/encryption-key").json()
    assert served["algorithm"] == "RSA-OAEP-256" and served["jwk"]["kty"] == "RSA"

    def number(text: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")

    public = rsa.RSAPublicNumbers(number(served["jwk"]["e"]), number(served["jwk"]["n"])).public_key()
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    ciphertext = public.encrypt(json.dumps(card).encode(), oaep)
    return {"encryption_key": served["id"], "encrypted_card": base64.b64encode(ciphertext).decode()}


def test_the_encrypted_card_route_makes_a_payment_method_and_refuses_what_it_cannot_read(shop_node: ShopNode) -> None:
    page = httpx.Client(base_url=shop_node.url, auth=(shop_node.publishable_key, ""))
    card = {"number": "5555555555554444", "exp_month": 3, "exp_year": 2035, "cvc": "321", "postal_code": "10001"}
    created = page.post("/v1/elements/payment_methods", data=encrypt_to_node(shop_node, card))
    assert created.status_code == 200, created.text
    assert (created.json()["card"]["brand"], created.json()["card"]["last4"], created.json()["card"]["exp_year"]) == ("mastercard", "4444", 2035)
    sealed = encrypt_to_node(shop_node, card)
    unknown = page.post("/v1/elements/payment_methods", data={**sealed, "encryption_key": "ek_nothere"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "encryption_key"
    garbled = page.post("/v1/elements/payment_methods", data={**sealed, "encrypted_card": base64.b64encode(b"x" * 256).decode()})
    assert garbled.status_code == 400 and garbled.json()["error"]["code"] == "encrypted_card_invalid"
    bad_number = page.post("/v1/elements/payment_methods", data=encrypt_to_node(shop_node, {**card, "number": "5555555555554445"}))
    assert bad_number.status_code == 402 and bad_number.json()["error"]["code"] == "incorrect_number"
    assert "5555555555554445" not in bad_number.text
    anonymous = httpx.post(f"{shop_node.url}/v1/elements/payment_methods", data=sealed)
    assert anonymous.status_code == 401


def test_the_private_key_is_kept_sealed(shop_node: ShopNode) -> None:
    httpx.get(f"{shop_node.url}/checkout/encryption-key").raise_for_status()

    async def rows() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(shop_node.database_url)
        try:
            return await connection.fetch("SELECT id, public_key, private_key_sealed FROM checkout_encryption_keys")
        finally:
            await connection.close()

    found = asyncio.run(rows())
    assert len(found) == 1
    public = serialization.load_der_public_key(found[0]["public_key"])
    assert isinstance(public, rsa.RSAPublicKey)
    with pytest.raises(ValueError):
        serialization.load_der_private_key(found[0]["private_key_sealed"], None)
    with pytest.raises(ValueError):
        serialization.load_der_private_key(base64.b64decode(found[0]["private_key_sealed"] + b"=="), None)


async def test_the_demo_shop_is_refused_in_live_mode() -> None:
    live = MerchantKeys("acct_live", "sk_live_" + "x" * 24, "pk_live_" + "y" * 24)
    fake_node = SimpleNamespace(store=SimpleNamespace(database=None), vault=None, url="http://127.0.0.1:9")
    app = create_app(fake_node, mounts=[checkout.mount(live)])  # type: ignore[arg-type]
    client = app.test_client()
    for method, path in (("GET", "/demo/checkout"), ("POST", "/demo/checkout/intents")):
        answer = await client.open(path, method=method)
        assert answer.status_code == 403
        assert (await answer.get_json())["error"]["message"] == "The demo shop runs in test mode only, with the node's local test merchant."
    assert (await client.get("/checkout/payments.js")).status_code == 200


def test_a_publishable_key_sees_the_subset_of_an_intent_stripe_shows_it(shop_node: ShopNode) -> None:
    server = httpx.Client(base_url=shop_node.url, auth=(shop_node.secret_key, ""))
    page = httpx.Client(base_url=shop_node.url, auth=(shop_node.publishable_key, ""))
    intent = server.post("/v1/payment_intents", data={"amount": "900", "currency": "usd", "metadata[order]": "7"}).json()
    secret = {"client_secret": intent["client_secret"]}
    seen = page.get(f"/v1/payment_intents/{intent['id']}", params=secret).json()
    assert set(seen) <= checkout.PUBLISHABLE_INTENT_FIELDS and (seen["id"], seen["amount"], seen["status"]) == (intent["id"], 900, intent["status"])
    assert "metadata" in intent and "metadata" not in seen and "amount_received" not in seen
    method = page.post("/v1/payment_methods", data={"type": "card", "card[number]": DECLINED, "card[exp_month]": "2", "card[exp_year]": "2041"}).json()
    declined = page.post(f"/v1/payment_intents/{intent['id']}/confirm", data={"payment_method": method["id"], **secret})
    assert declined.status_code == 402 and declined.json()["error"]["code"] == "card_declined"
    shown = declined.json()["error"]["payment_intent"]
    assert set(shown) <= checkout.PUBLISHABLE_INTENT_FIELDS and shown["last_payment_error"]["code"] == "card_declined"
    assert "metadata" in server.get(f"/v1/payment_intents/{intent['id']}").json()


def test_the_shops_page_reads_an_intent_across_origins_with_its_client_secret(shop_node: ShopNode, browser: WebDriver) -> None:
    intent = httpx.post(f"{shop_node.url}/v1/payment_intents", data={"amount": "1200", "currency": "usd"}, auth=(shop_node.secret_key, "")).json()
    open_shop(browser, shop_node)
    assert not browser.current_url.startswith(shop_node.url)  # the page is on another origin than the API
    read = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        " Payments(document.body.dataset.publishableKey).retrievePaymentIntent(arguments[0]).then(done);",
        intent["client_secret"],
    )
    assert read["paymentIntent"]["id"] == intent["id"] and read["paymentIntent"]["amount"] == 1200
    refused = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        " Payments(document.body.dataset.publishableKey).retrievePaymentIntent(arguments[0]).then(done);",
        intent["id"] + "_secret_notthisone",
    )
    assert refused["error"]["code"] == "resource_missing"
