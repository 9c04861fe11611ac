"""SetupIntents over HTTP on a real node: every move of the state machine,
Stripe's errors, the 3-D Secure page, per-merchant isolation, idempotency,
lists, and durability across a restart."""

from __future__ import annotations

import concurrent.futures
import re
import time

import httpx
import pytest

from tests.conftest import NodeProcess, create_merchant_keys
from tests.helpers import wait_until

SETUP_ID = re.compile(r"^seti_[0-9a-z]{29}$")


def http(node: NodeProcess, keys: dict) -> httpx.Client:
    return httpx.Client(base_url=node.url, auth=(keys["secret_key"], ""), timeout=30)


@pytest.fixture
def client(node: NodeProcess, fresh_merchant: dict) -> httpx.Client:
    with http(node, fresh_merchant) as opened:
        yield opened


def created(client: httpx.Client, **data: str) -> dict:
    answer = client.post("/v1/setup_intents", data=data)
    assert answer.status_code == 200, answer.text
    return answer.json()


def error_of(answer: httpx.Response, status: int) -> dict:
    assert answer.status_code == status, answer.text
    return answer.json()["error"]


def test_a_setup_intent_without_a_payment_method_waits_for_one(client: httpx.Client) -> None:
    setup = created(client, description="card for later", **{"metadata[plan]": "pro"})
    assert SETUP_ID.match(setup["id"])
    assert setup["client_secret"].startswith(setup["id"] + "_secret_")
    assert (setup["object"], setup["status"], setup["usage"]) == ("setup_intent", "requires_payment_method", "off_session")
    assert setup["payment_method"] is None and setup["customer"] is None and setup["latest_attempt"] is None
    assert setup["payment_method_types"] == ["card"] and setup["livemode"] is False
    assert (setup["description"], setup["metadata"]) == ("card for later", {"plan": "pro"})
    assert abs(setup["created"] - time.time()) < 60
    assert client.get(f"/v1/setup_intents/{setup['id']}").json() == setup
    on_session = created(client, usage="on_session")
    assert on_session["usage"] == "on_session"


def test_confirm_checks_the_card_and_succeeds_once(client: httpx.Client) -> None:
    setup = created(client, payment_method="pm_card_visa")
    assert setup["status"] == "requires_confirmation" and setup["payment_method"].startswith("pm_")
    done = client.post(f"/v1/setup_intents/{setup['id']}/confirm")
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "succeeded" and done.json()["payment_method"] == setup["payment_method"]
    assert done.json()["next_action"] is None and done.json()["last_setup_error"] is None
    again = error_of(client.post(f"/v1/setup_intents/{setup['id']}/confirm"), 400)
    assert again["code"] == "setup_intent_unexpected_state"
    assert again["message"] == "This SetupIntent's status is succeeded, which does not allow this action."
    assert again["setup_intent"]["status"] == "succeeded"
    canceled = error_of(client.post(f"/v1/setup_intents/{setup['id']}/cancel"), 400)
    assert canceled["code"] == "setup_intent_unexpected_state"
    assert client.get(f"/v1/setup_intents/{setup['id']}").json()["status"] == "succeeded"


def test_create_with_confirm_succeeds_in_one_call(client: httpx.Client) -> None:
    setup = created(client, payment_method="pm_card_mastercard", confirm="true")
    assert setup["status"] == "succeeded"


def test_a_declined_card_needs_another_payment_method(client: httpx.Client) -> None:
    setup = created(client, payment_method="pm_card_chargeDeclined")
    declined = client.post(f"/v1/setup_intents/{setup['id']}/confirm")
    error = error_of(declined, 402)
    assert (error["type"], error["code"], error["decline_code"]) == ("card_error", "card_declined", "generic_decline")
    assert error["message"] == "Your card was declined."
    assert error["payment_method"]["id"] == setup["payment_method"]
    shown = error["setup_intent"]
    assert shown["status"] == "requires_payment_method" and shown["payment_method"] is None
    assert shown["last_setup_error"]["code"] == "card_declined"
    assert shown["last_setup_error"]["payment_method"]["id"] == setup["payment_method"]
    assert client.get(f"/v1/setup_intents/{setup['id']}").json() == shown
    missing = error_of(client.post(f"/v1/setup_intents/{setup['id']}/confirm"), 400)
    assert (missing["code"], missing["param"]) == ("setup_intent_unexpected_state", "payment_method")
    insufficient = error_of(client.post(f"/v1/setup_intents/{setup['id']}/confirm", data={"payment_method": "pm_card_chargeDeclinedInsufficientFunds"}), 402)
    assert insufficient["decline_code"] == "insufficient_funds"
    done = client.post(f"/v1/setup_intents/{setup['id']}/confirm", data={"payment_method": "pm_card_visa"})
    assert done.status_code == 200 and done.json()["status"] == "succeeded"
    assert done.json()["last_setup_error"] is None


def three_d_secure(client: httpx.Client, return_url: str = "https://shop.test/saved") -> tuple[dict, str]:
    setup = created(client, payment_method="pm_card_threeDSecure2Required", confirm="true", return_url=return_url)
    assert setup["status"] == "requires_action"
    action = setup["next_action"]
    assert action["type"] == "redirect_to_url" and action["redirect_to_url"]["return_url"] == return_url
    return setup, action["redirect_to_url"]["url"]


def test_three_d_secure_passed_on_the_simulator_page_succeeds(client: httpx.Client) -> None:
    setup, url = three_d_secure(client, "https://shop.test/saved?step=2")
    assert "/simulator/3ds/setatt_" in url
    assert client.get(f"/v1/setup_intents/{setup['id']}").json()["status"] == "requires_action"
    page = httpx.get(url)
    assert page.status_code == 200 and "Complete authentication" in page.text
    answered = httpx.post(url, data={"result": "pass"})
    assert answered.status_code == 303
    assert answered.headers["location"] == f"https://shop.test/saved?step=2&setup_intent={setup['id']}"
    done = client.get(f"/v1/setup_intents/{setup['id']}").json()
    assert done["status"] == "succeeded" and done["next_action"] is None
    assert httpx.post(url, data={"result": "pass"}).status_code == 404  # answered once
    assert error_of(client.post(f"/v1/setup_intents/{setup['id']}/confirm"), 400)["code"] == "setup_intent_unexpected_state"


def test_three_d_secure_failed_is_an_authentication_failure(client: httpx.Client) -> None:
    setup, url = three_d_secure(client)
    assert httpx.post(url, data={"result": "fail"}).status_code == 303
    failed = client.get(f"/v1/setup_intents/{setup['id']}").json()
    assert failed["status"] == "requires_payment_method" and failed["payment_method"] is None
    assert failed["last_setup_error"]["code"] == "setup_intent_authentication_failure"
    retried = client.post(f"/v1/setup_intents/{setup['id']}/confirm", data={"payment_method": "pm_card_visa"})
    assert retried.json()["status"] == "succeeded"


def test_cancel_while_three_d_secure_waits(client: httpx.Client) -> None:
    setup, url = three_d_secure(client)
    canceled = client.post(f"/v1/setup_intents/{setup['id']}/cancel", data={"cancellation_reason": "abandoned"})
    assert canceled.status_code == 200, canceled.text
    assert (canceled.json()["status"], canceled.json()["cancellation_reason"]) == ("canceled", "abandoned")
    assert canceled.json()["next_action"] is None
    # A late answer to the challenge changes nothing.
    httpx.post(url, data={"result": "pass"})
    assert client.get(f"/v1/setup_intents/{setup['id']}").json()["status"] == "canceled"


def test_cancel_before_a_confirm_and_its_refusals(client: httpx.Client) -> None:
    setup = created(client)
    canceled = client.post(f"/v1/setup_intents/{setup['id']}/cancel", data={"cancellation_reason": "requested_by_customer"})
    assert (canceled.json()["status"], canceled.json()["cancellation_reason"]) == ("canceled", "requested_by_customer")
    again = error_of(client.post(f"/v1/setup_intents/{setup['id']}/cancel"), 400)
    assert again["message"] == "This SetupIntent's status is canceled, which does not allow this action."
    confirm = error_of(client.post(f"/v1/setup_intents/{setup['id']}/confirm", data={"payment_method": "pm_card_visa"}), 400)
    assert confirm["code"] == "setup_intent_unexpected_state"
    reason = error_of(client.post(f"/v1/setup_intents/{created(client)['id']}/cancel", data={"cancellation_reason": "fraudulent"}), 400)
    assert reason["param"] == "cancellation_reason"
    plain = client.post(f"/v1/setup_intents/{created(client, payment_method='pm_card_visa')['id']}/cancel")
    assert plain.json()["status"] == "canceled" and plain.json()["cancellation_reason"] is None


def test_update_before_and_after_the_confirm(client: httpx.Client) -> None:
    setup = created(client, description="first", **{"metadata[a]": "1", "metadata[b]": "2"})
    updated = client.post(
        f"/v1/setup_intents/{setup['id']}", data={"payment_method": "pm_card_visa", "description": "", "metadata[b]": "", "metadata[c]": "3"}
    )
    assert updated.status_code == 200, updated.text
    body = updated.json()
    assert body["status"] == "requires_confirmation" and body["payment_method"].startswith("pm_")
    assert body["description"] is None and body["metadata"] == {"a": "1", "c": "3"}
    assert client.post(f"/v1/setup_intents/{setup['id']}/confirm").json()["status"] == "succeeded"
    late = error_of(client.post(f"/v1/setup_intents/{setup['id']}", data={"payment_method": "pm_card_visa"}), 400)
    assert late["code"] == "setup_intent_unexpected_state"
    relabelled = client.post(f"/v1/setup_intents/{setup['id']}", data={"metadata[shipped]": "yes"})
    assert relabelled.json()["metadata"] == {"a": "1", "c": "3", "shipped": "yes"} and relabelled.json()["status"] == "succeeded"


def test_bad_input_is_a_clear_400(client: httpx.Client) -> None:
    cases = [
        ({"amount": "100"}, "amount", "parameter_unknown"),
        ({"usage": "sometimes"}, "usage", "parameter_invalid"),
        ({"payment_method_types[0]": "sepa_debit"}, "payment_method_types[0]", "parameter_invalid"),
        ({"return_url": "http://shop.test/x"}, "return_url", "url_invalid"),
        ({"customer": "cus_nobody"}, "customer", "resource_missing"),
        ({"payment_method": "pm_nothing"}, "payment_method", "resource_missing"),
        ({"confirm": "true"}, "payment_method", "setup_intent_unexpected_state"),
        ({"expand[0]": "status"}, "expand", None),
        ({**{f"metadata[k{n}]": "v" for n in range(51)}}, "metadata", "parameter_invalid"),
    ]
    for data, param, code in cases:
        error = error_of(client.post("/v1/setup_intents", data=data), 400)
        assert (error["type"], error["param"], error.get("code")) == ("invalid_request_error", param, code), data
    listed = client.get("/v1/setup_intents").json()
    assert listed["data"] == []  # nothing refused was stored
    assert error_of(client.get("/v1/setup_intents/seti_nothing"), 404)["code"] == "resource_missing"
    assert error_of(client.get("/v1/setup_intents/pi_nothing"), 404)["code"] == "resource_missing"
    assert error_of(client.get("/v1/setup_intents?limit=101"), 400)["param"] == "limit"
    unserved = error_of(client.post(f"/v1/setup_intents/{created(client)['id']}/verify_microdeposits"), 404)
    assert unserved["message"].startswith("Verifying microdeposits is not supported by this server")


def test_expand_payment_method(client: httpx.Client) -> None:
    setup = created(client, payment_method="pm_card_amex", confirm="true", **{"expand[]": "payment_method"})
    assert setup["payment_method"]["object"] == "payment_method" and setup["payment_method"]["card"]["brand"] == "amex"
    shown = client.get(f"/v1/setup_intents/{setup['id']}", params={"expand[]": "payment_method"}).json()
    assert shown["payment_method"]["id"] == setup["payment_method"]["id"]
    listed = client.get("/v1/setup_intents", params={"expand[]": "data.payment_method"}).json()
    assert listed["data"][0]["payment_method"]["card"]["last4"] == "0005"
    assert client.get(f"/v1/setup_intents/{setup['id']}", params={"expand[]": "customer"}).json()["customer"] is None


def test_another_merchant_sees_nothing(node: NodeProcess, client: httpx.Client, merchant_keys: dict, fresh_merchant: dict) -> None:
    setup = created(client, payment_method="pm_card_visa")
    with http(node, merchant_keys) as other:
        for method, path in (
            ("GET", f"/v1/setup_intents/{setup['id']}"),
            ("POST", f"/v1/setup_intents/{setup['id']}"),
            ("POST", f"/v1/setup_intents/{setup['id']}/confirm"),
            ("POST", f"/v1/setup_intents/{setup['id']}/cancel"),
        ):
            error = error_of(other.request(method, path), 404)
            assert error["message"] == f"No such setup_intent: '{setup['id']}'"
        assert setup["id"] not in [item["id"] for item in other.get("/v1/setup_intents").json()["data"]]
        assert error_of(other.get("/v1/setup_intents", params={"starting_after": setup["id"]}), 400)["param"] == "starting_after"
        # Its payment method is not the other merchant's to use either.
        assert error_of(other.post("/v1/setup_intents", data={"payment_method": setup["payment_method"]}), 400)["param"] == "payment_method"
    assert client.get(f"/v1/setup_intents/{setup['id']}").json()["status"] == "requires_confirmation"
    browser = httpx.Client(base_url=node.url, auth=(fresh_merchant["publishable_key"], ""), timeout=30)
    with browser:
        assert browser.get(f"/v1/setup_intents/{setup['id']}").status_code == 404
        assert browser.get(f"/v1/setup_intents/{setup['id']}", params={"client_secret": setup["id"] + "_secret_x"}).status_code == 404
        seen = browser.get(f"/v1/setup_intents/{setup['id']}", params={"client_secret": setup["client_secret"]})
        assert seen.status_code == 200 and seen.json()["id"] == setup["id"]
        assert browser.post(f"/v1/setup_intents/{setup['id']}/confirm").status_code == 404
        assert browser.post(f"/v1/setup_intents/{setup['id']}/cancel", data={"client_secret": setup["client_secret"]}).status_code == 401
        confirmed = browser.post(f"/v1/setup_intents/{setup['id']}/confirm", data={"client_secret": setup["client_secret"]})
        assert confirmed.status_code == 200 and confirmed.json()["status"] == "succeeded"
        assert browser.get("/v1/setup_intents").status_code == 401


def test_idempotency_keys_replay_and_refuse(client: httpx.Client) -> None:
    first = client.post("/v1/setup_intents", data={"payment_method": "pm_card_visa"}, headers={"Idempotency-Key": "seti-create-1"})
    again = client.post("/v1/setup_intents", data={"payment_method": "pm_card_visa"}, headers={"Idempotency-Key": "seti-create-1"})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers.get("Idempotent-Replayed") == "true"
    assert len(client.get("/v1/setup_intents").json()["data"]) == 1
    other = error_of(client.post("/v1/setup_intents", data={"usage": "on_session"}, headers={"Idempotency-Key": "seti-create-1"}), 400)
    assert (other["type"], other["code"]) == ("idempotency_error", "idempotency_key_reused")

    url = f"/v1/setup_intents/{first.json()['id']}/confirm"
    confirmed = client.post(url, headers={"Idempotency-Key": "seti-confirm-1"})
    replayed = client.post(url, headers={"Idempotency-Key": "seti-confirm-1"})
    assert confirmed.status_code == replayed.status_code == 200 and confirmed.json()["status"] == "succeeded"
    assert replayed.content == confirmed.content and replayed.headers.get("Idempotent-Replayed") == "true"
    # Without the key it is a second confirm, which Stripe refuses.
    assert error_of(client.post(url), 400)["code"] == "setup_intent_unexpected_state"

    declining = created(client, payment_method="pm_card_chargeDeclined")
    url = f"/v1/setup_intents/{declining['id']}/confirm"
    declined = client.post(url, headers={"Idempotency-Key": "seti-confirm-2"})
    replayed = client.post(url, headers={"Idempotency-Key": "seti-confirm-2"})
    assert declined.status_code == replayed.status_code == 402 and replayed.content == declined.content


def test_two_confirms_at_once_check_the_card_once(client: httpx.Client) -> None:
    for _ in range(3):
        setup = created(client, payment_method="pm_card_visa")
        url = f"/v1/setup_intents/{setup['id']}/confirm"
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: client.post(url), range(4)))
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses.count(200) == 1, [answer.text for answer in answers]
        for answer in answers:
            if answer.status_code != 200:
                assert answer.status_code in (400, 409) and answer.json()["error"]["code"] in ("setup_intent_unexpected_state", "lock_timeout")


def test_list_pages_and_filters(client: httpx.Client) -> None:
    made = [created(client, payment_method="pm_card_visa") for _ in range(3)] + [created(client)]
    newest_first = [setup["id"] for setup in reversed(made)]
    everything = client.get("/v1/setup_intents", params={"limit": 100}).json()
    assert [item["id"] for item in everything["data"]] == newest_first and everything["has_more"] is False
    assert everything["url"] == "/v1/setup_intents"
    first = client.get("/v1/setup_intents", params={"limit": 2}).json()
    assert [item["id"] for item in first["data"]] == newest_first[:2] and first["has_more"] is True
    rest = client.get("/v1/setup_intents", params={"limit": 2, "starting_after": newest_first[1]}).json()
    assert [item["id"] for item in rest["data"]] == newest_first[2:] and rest["has_more"] is False
    back = client.get("/v1/setup_intents", params={"limit": 1, "ending_before": newest_first[2]}).json()
    assert [item["id"] for item in back["data"]] == [newest_first[1]] and back["has_more"] is True
    method = made[1]["payment_method"]
    assert [item["id"] for item in client.get("/v1/setup_intents", params={"payment_method": method}).json()["data"]] == [made[1]["id"]]
    assert client.get("/v1/setup_intents", params={"customer": "cus_nobody"}).json()["data"] == []
    oldest = made[0]["created"]
    assert len(client.get("/v1/setup_intents", params={"created[gte]": oldest}).json()["data"]) == 4
    assert client.get("/v1/setup_intents", params={"created[lt]": oldest}).json()["data"] == []
    both = error_of(client.get("/v1/setup_intents", params={"starting_after": made[0]["id"], "ending_before": made[1]["id"]}), 400)
    assert both["param"] == "ending_before"


def test_what_was_answered_survives_a_restart(new_node, tmp_path) -> None:
    first = new_node(None, tmp_path)
    keys = create_merchant_keys(first, "Restart shop")
    with http(first, keys) as client:
        done = created(client, payment_method="pm_card_visa", confirm="true")
        waiting, url = three_d_secure(client)
        open_one = created(client, **{"metadata[k]": "v"})
    assert first.stop() == 0
    second = new_node(first.database_url, tmp_path)
    with http(second, keys) as client:
        assert client.get(f"/v1/setup_intents/{done['id']}").json()["status"] == "succeeded"
        assert client.get(f"/v1/setup_intents/{open_one['id']}").json() == open_one
        # The challenge lived in the first node's simulator, which is gone:
        # the SetupIntent still waits, and may be canceled.
        assert client.get(f"/v1/setup_intents/{waiting['id']}").json()["status"] == "requires_action"
        assert client.post(f"/v1/setup_intents/{waiting['id']}/cancel").json()["status"] == "canceled"
        listed = wait_until(lambda: client.get("/v1/setup_intents").json()["data"], 10, "the list")
        assert {item["id"] for item in listed} == {done["id"], waiting["id"], open_one["id"]}


def test_a_check_whose_answer_is_lost_is_asked_about_by_reference(new_node, tmp_path) -> None:
    # Every call to the network is performed there, and its answer lost.
    node = new_node(None, tmp_path, "--faults", "timeout_after=1")
    keys = create_merchant_keys(node, "Lost answers")
    with httpx.Client(base_url=node.url, auth=(keys["secret_key"], ""), timeout=60) as client:
        setup = created(client, payment_method="pm_card_visa")
        url = f"/v1/setup_intents/{setup['id']}/confirm"
        first = client.post(url, headers={"Idempotency-Key": "lost-1"})
        assert first.status_code == 200 and first.json()["status"] == "processing", first.text
        # One check at a time: a second confirm meanwhile is refused.
        assert error_of(client.post(url), 400)["code"] == "setup_intent_unexpected_state"
        assert client.get(f"/v1/setup_intents/{setup['id']}").json()["status"] == "processing"
        # Once no call could still be answering, the network is asked by the
        # check's reference: it had approved.
        wait_until(lambda: client.get(f"/v1/setup_intents/{setup['id']}").json()["status"] == "succeeded", 40, "the check to be resolved", interval_s=1)
        replayed = client.post(url, headers={"Idempotency-Key": "lost-1"})
        assert replayed.status_code == 200 and replayed.json()["status"] == "succeeded"
