"""The cluster from the command line: `payments up --nodes N` starts a
simulator service and N node processes that share the partitions and take
any request; `payments cluster status` shows them; Ctrl-C stops them all;
`payments node` refuses what it cannot serve, with a clear message."""

from __future__ import annotations

import json
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
from tests.helpers import wait_until

PAY = {"amount": "2500", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}


def _environ(database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "PAYMENTS_DATABASE_URL": database_url,
        "PAYMENTS_REDIS_URL": REDIS_URL,
        "PAYMENTS_REDIS_PREFIX": f"payments-test:{secrets.token_hex(6)}:",
        "PAYMENTS_ARCHIVE_EVERY_S": "0",
    }


def _cli(*arguments: str, environ: dict[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "payments.cli", *arguments], capture_output=True, text=True, env=environ, timeout=timeout_s)


def test_up_with_two_nodes_serves_any_request_anywhere_and_stops_on_ctrl_c(make_database: Callable[[], str], tmp_path: Path) -> None:
    environ = _environ(make_database())
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
            if match := re.match(r"payments up: 2 nodes sharing 16 partitions: (.+)", line):
                urls = [url.strip() for url in match.group(1).split(",")]
            if match := re.match(r"secret key:\s+(\S+)", line):
                secret = match.group(1)
        assert len(urls) == 2 and secret
        status = _cli("cluster", "status", "--json", "--data-dir", str(tmp_path), environ=environ)
        assert status.returncode == 0, status.stderr

        def spread() -> bool:
            view = json.loads(_cli("cluster", "status", "--json", "--data-dir", str(tmp_path), environ=environ).stdout)
            owners = [lease["owner"] for lease in view["leases"] if lease["expires_in_s"] > 0]
            return sorted(owners.count(node) for node in ("node-0", "node-1")) == [8, 8]

        wait_until(spread, 30, "eight partitions on each node")
        with httpx.Client(headers={"Authorization": f"Bearer {secret}"}, timeout=30) as http:
            paid = [http.post(f"{urls[n % 2]}/v1/payment_intents", data=PAY).json() for n in range(10)]
            assert {intent.get("status") for intent in paid} == {"succeeded"}, paid
            for intent in paid:
                for url in urls:
                    answer = http.get(f"{url}/v1/payment_intents/{intent['id']}")
                    assert answer.status_code == 200 and answer.json()["amount"] == 2500
            # 3-D Secure: the challenge page is the simulator service's own,
            # and the answer reaches whichever node owns the intent.
            challenged = http.post(
                f"{urls[0]}/v1/payment_intents",
                data={**PAY, "payment_method": "pm_card_threeDSecure2Required", "return_url": "https://shop.example/done"},
            ).json()
            assert challenged["status"] == "requires_action", challenged
            page = challenged["next_action"]["redirect_to_url"]["url"]
            assert "/3ds/" in page and http.get(page).status_code == 200
            answered = http.post(page, data={"result": "pass"})
            assert answered.status_code == 303
            assert answered.headers["location"] == f"https://shop.example/done?payment_intent={challenged['id']}"

            def succeeded() -> bool:
                return http.get(f"{urls[1]}/v1/payment_intents/{challenged['id']}").json()["status"] == "succeeded"

            wait_until(succeeded, 30, "the challenged payment succeeding")
        table = _cli("cluster", "status", "--data-dir", str(tmp_path), environ=environ).stdout
        assert "node-0" in table and "node-1" in table and "16 partitions, 0 without a live owner" in table
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
        # Every node handed off and left; no lease is held.
        view = json.loads(_cli("cluster", "status", "--json", "--data-dir", str(tmp_path), environ=environ).stdout)
        assert view["members"] == [] and all(lease["owner"] is None for lease in view["leases"])
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_node_refuses_without_its_servers_and_with_another_partition_count(make_database: Callable[[], str], tmp_path: Path) -> None:
    bare = {name: value for name, value in os.environ.items() if not name.startswith("PAYMENTS_")}
    refused = _cli("node", "--port", "0", "--data-dir", str(tmp_path), environ=bare)
    assert refused.returncode == 2
    assert "payments node needs PAYMENTS_DATABASE_URL, PAYMENTS_REDIS_URL, PAYMENTS_SIMULATOR_URL" in refused.stderr
    environ = _environ(make_database())
    assert _cli("migrate", "--partitions", "8", "--data-dir", str(tmp_path), environ=environ).returncode == 0
    environ["PAYMENTS_SIMULATOR_URL"] = "http://127.0.0.1:9"
    mismatch = _cli("node", "--port", "0", "--partitions", "4", "--data-dir", str(tmp_path), environ=environ)
    assert mismatch.returncode == 2
    assert "the database has 8 partitions and this node was started with --partitions 4" in mismatch.stderr
    assert "Traceback" not in mismatch.stderr
