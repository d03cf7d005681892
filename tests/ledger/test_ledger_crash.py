"""Crash between persist and reply, with real processes and a real (emulated) API server.

The ledger runs as ``python -m dpserve.ledger`` against the LocalKube API server over HTTP
(the KubeStore and KubeTokenReviewer code paths). A test hook makes it stop right after the
status write with the grant has landed and before it answers; the process is then killed
with SIGKILL. A restarted ledger answers the retried lease id with the same grant, the ledger
is not debited twice, and draining the budget afterwards never over-spends.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ledger_helpers import NS, PATE, budget_spec, kube_serving_pod, model_spec, seq_id

from dpserve.accounting import GNMaxQuery, epsilon_spent
from dpserve.ledger.auth import AUDIENCE, service_account_name
from dpserve_testkit.localkube import LocalKubeServer

pytestmark = pytest.mark.slow  # two ledger processes start (~2-3 s each)

TOKEN = "crash-test-token"
POD = "triage-0"


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[LocalKubeServer]:
    server = LocalKubeServer(kubeconfig=tmp_path / "kubeconfig").start()

    def setup(k: Any) -> None:
        k.store.create(k.kind("v1", "namespaces"), None, {"metadata": {"name": NS}})
        pb = k.kind("dpserve.io/v1alpha1", "privacybudgets")
        k.store.create(pb, NS, {"metadata": {"name": "patients"}, "spec": budget_spec("2")})
        pm = k.kind("dpserve.io/v1alpha1", "privatemodels")
        k.store.create(pm, NS, {"metadata": {"name": "triage"}, "spec": model_spec(PATE)})
        k.tokens.register(
            TOKEN,
            namespace=NS,
            service_account=service_account_name("triage"),
            pod_name=POD,
            pod_uid=kube_serving_pod(k, "triage", POD, namespace=NS),
            audiences=[AUDIENCE],
        )

    server.call(setup)
    try:
        yield server
    finally:
        server.stop()


def budget_status(kube: LocalKubeServer) -> dict[str, Any]:
    def get(k: Any) -> dict[str, Any]:
        obj = k.store.get(k.kind("dpserve.io/v1alpha1", "privacybudgets"), NS, "patients")
        return dict(obj.get("status") or {})

    return kube.call(get)


def debited(kube: LocalKubeServer) -> int:
    return sum(e["count"] for e in budget_status(kube).get("ledger", []) if e["kind"] == "query")


class Ledger:
    """``python -m dpserve.ledger`` in a subprocess (via dpserve_testkit.crash if ``crash``)."""

    def __init__(self, kubeconfig: Path, crash: str | None = None) -> None:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        # The crash hook is the testkit's wrapper around the real ledger entry point.
        entry = (["dpserve.ledger"] if crash is None
                 else ["dpserve_testkit.crash", crash, "ledger"])
        self.process = subprocess.Popen(
            [sys.executable, "-m", *entry, "--port", "0", "--log-level", "WARNING"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        found = re.search(r"listening on [\d.]+:(\d+)", line)
        assert found, f"ledger did not start: {line}{self.process.stdout.read()}"
        self.url = f"http://127.0.0.1:{found.group(1)}"

    def kill(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        return self.process.wait(timeout=10)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def ask(http: aiohttp.ClientSession, url: str, lease_id: str, requested: int = 50) -> Any:
    body = {
        "leaseId": seq_id(lease_id, POD),
        "model": f"{NS}/triage",
        "modelVersion": "v1",
        "pod": POD,
        "mechanism": PATE,
        "requested": requested,
    }
    async with http.post(
        f"{url}/v1/leases", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as response:
        return response.status, await response.json()


async def wait_for_debit(kube: LocalKubeServer, at_least: int) -> None:
    for _ in range(200):
        if debited(kube) >= at_least:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the grant was never persisted")


@pytest.mark.parametrize("hook", ["hang", "kill"])
async def test_kill_between_persist_and_reply_then_retry(
    kube: LocalKubeServer, http: aiohttp.ClientSession, hook: str
) -> None:
    first = Ledger(kube.kubeconfig, crash=hook)
    try:
        call = asyncio.ensure_future(ask(http, first.url, "lease-crash-0001"))
        await wait_for_debit(kube, 1)  # the grant is in PrivacyBudget.status ...
        if hook == "hang":
            assert not call.done()  # ... and nobody has been answered
        assert first.kill() == -signal.SIGKILL  # kill -9 between persist and reply
        with pytest.raises(aiohttp.ClientError):
            await call
    finally:
        first.kill()

    persisted = budget_status(kube)
    (record,) = persisted["leases"]
    assert record["leaseId"] == seq_id("lease-crash-0001", POD)
    assert debited(kube) == record["granted"]

    second = Ledger(kube.kubeconfig)
    try:
        status, grant = await ask(http, second.url, "lease-crash-0001")
        assert status == 200
        assert grant["granted"] == record["granted"]  # same grant ...
        assert grant["expiresAt"] == record["expiresAt"]
        assert debited(kube) == record["granted"]  # ... not debited twice

        answered = record["granted"]
        for i in range(2, 400):
            status, grant = await ask(http, second.url, f"lease-crash-{i:04d}")
            if status == 429:
                assert grant["reason"] == "BudgetExhausted"
                break
            assert status == 200, grant
            answered += grant["granted"]
        else:
            raise AssertionError("the budget never ran out")
    finally:
        second.kill()

    assert debited(kube) == answered
    assert epsilon_spent([(GNMaxQuery(40.0), answered)], 1e-6, "rdp") <= 2.0
    exhausted = [c for c in budget_status(kube)["conditions"] if c["type"] == "Exhausted"]
    assert exhausted[0]["status"] == "True"
