"""SetupIntents on two nodes with the simulator service (`payments up
--nodes 2`): any node serves any SetupIntent (they are rows, not an actor's),
and a 3-D Secure challenge answered on the service's own page reaches
whichever node is asked next, through the network's record of the check."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import REDIS_URL


def test_two_nodes_share_setup_intents_and_the_service_s_challenge(make_database: Callable[[], str], tmp_path: Path) -> None:
    environ = {
        **os.environ,
        "PAYMENTS_DATABASE_URL": make_database(),
        "PAYMENTS_REDIS_URL": REDIS_URL,
        "PAYMENTS_REDIS_PREFIX": f"payments-test:{secrets.token_hex(6)}:",
        "PAYMENTS_ARCHIVE_EVERY_S": "0",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "payments.cli", "up", "--nodes", "2", "--port", "0", "--lease-ttl-s", "3", "--data-dir", str(tmp_path),
         "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environ,
    )
    try:
        assert process.stdout is not None
        urls: list[str] = []
        secret = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (urls and secret):
            line = process.stdout.readline()
            assert line, "up --nodes 2 exited before it was ready"
            if match := re.match(r"payments up: 2 nodes sharing \d+ partitions: (.+)", line):
                urls = [url.strip() for url in match.group(1).split(",")]
            if match := re.match(r"secret key:\s+(\S+)", line):
                secret = match.group(1)
        assert len(urls) == 2 and secret
        with httpx.Client(headers={"Authorization": f"Bearer {secret}"}, timeout=30) as http:
            plain = http.post(f"{urls[0]}/v1/setup_intents", data={"payment_method": "pm_card_visa"}).json()
            assert plain["status"] == "requires_confirmation", plain
            confirmed = http.post(f"{urls[1]}/v1/setup_intents/{plain['id']}/confirm")
            assert confirmed.status_code == 200 and confirmed.json()["status"] == "succeeded", confirmed.text
            assert http.get(f"{urls[0]}/v1/setup_intents/{plain['id']}").json()["status"] == "succeeded"
            listed = [http.get(f"{url}/v1/setup_intents").json()["data"] for url in urls]
            assert [item["id"] for item in listed[0]] == [item["id"] for item in listed[1]] == [plain["id"]]

            challenged = http.post(
                f"{urls[0]}/v1/setup_intents",
                data={"payment_method": "pm_card_threeDSecure2Required", "confirm": "true", "return_url": "https://shop.example/saved"},
            ).json()
            assert challenged["status"] == "requires_action", challenged
            page = challenged["next_action"]["redirect_to_url"]["url"]
            assert "/3ds/setatt_" in page and not page.startswith(tuple(urls)), page
            assert http.get(page).status_code == 200
            assert http.get(f"{urls[1]}/v1/setup_intents/{challenged['id']}").json()["status"] == "requires_action"
            answered = http.post(page, data={"result": "pass"})
            assert answered.status_code == 303
            assert answered.headers["location"] == f"https://shop.example/saved?setup_intent={challenged['id']}"
            done = http.get(f"{urls[1]}/v1/setup_intents/{challenged['id']}").json()
            assert done["status"] == "succeeded" and done["next_action"] is None, done
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
