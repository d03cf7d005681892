"""Ledger scale in one operator process: grants/s, API writes per 1,000 queries, status size.

``python bench/ledger_scale.py [--seconds 5] [--latency-ms 2]``

200 sidecar pods (4 per model) over 50 PrivacyBudgets (one model each, gaussian z=100 on
ε=8) lease in a closed loop against one ``LedgerService`` on a ``MemoryStore`` whose every
API call takes ``--latency-ms`` (an API server round trip), calling the service's lease logic
directly (TokenReview cached, no HTTP: the figure is the ledger's own ceiling), with sequenced
lease ids (``lease_ids``, what the sidecar sends and the only form the ledger accepts). Then
the JSON size of a status at the documented limits (1,024
outstanding leases, 1,024 ledger entries, plus 1,024 remembered sequenced records).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry

from dpserve.api.mechanism import Mechanism
from dpserve.api.privacybudget import LeaseRecord, LedgerEntry, PrivacyBudgetStatus
from dpserve.ledger.accountant import LedgerAccounting
from dpserve.ledger.auth import Identity, service_account_user
from dpserve.ledger.lease_ids import sequenced_id
from dpserve.ledger.service import LeaseFailure, LedgerService
from dpserve.ledger.settings import LedgerSettings
from dpserve.resources.labels import selector_labels
from dpserve.resources.names import deployment_name
from dpserve_testkit.memory_store import MemoryStore

NS = "bench"
BUDGETS = 50
PODS_PER_MODEL = 4
GAUSS = {"type": "gaussian", "noiseMultiplier": "100", "clipNorm": "1", "sensitivity": "1"}


class Reviewer:
    """Bound tokens: token ``<model>/<pod>`` is that pod of the model's ServiceAccount."""

    async def review(self, token: str) -> Identity | None:
        model, pod = token.split("/", 1)
        return Identity(username=service_account_user(NS, model), pod_name=pod)


@dataclass
class Tally:
    grants: int = 0
    queries: int = 0
    refusals: int = 0


def _store(latency_s: float) -> MemoryStore:
    store = MemoryStore()
    store.latency_s = latency_s
    for index in range(BUDGETS):
        store.put_budget(NS, f"b{index}", {"epsilon": "8", "delta": "1e-6"})
        store.put_model(NS, f"m{index}", {
            "budgetRef": {"name": f"b{index}"},
            "model": {"artifact": "pvc://models/m/v1", "format": "pate-ensemble"},
            "serving": {"mechanism": GAUSS},
            "confidential": {"profile": "none", "required": False},
        })
        _serving_pods(store, f"m{index}")
    return store


def _serving_pods(store: MemoryStore, model: str) -> None:
    """The model's Deployment and pods, as the ledger requires of a leasing pod."""
    owner = store.objects[("privatemodels", NS, model)]["metadata"]
    deployment = store.put_raw("deployments", {"metadata": {
        "name": deployment_name(model), "namespace": NS,
        "ownerReferences": [{"apiVersion": "dpserve.io/v1alpha1", "kind": "PrivateModel",
                             "name": model, "uid": owner["uid"], "controller": True}]}})
    for index in range(PODS_PER_MODEL):
        store.put_raw("pods", {
            "metadata": {"name": f"{model}-pod-{index}", "namespace": NS,
                         "labels": selector_labels(model, "inference"),
                         "ownerReferences": [{
                             "apiVersion": "apps/v1", "kind": "Deployment",
                             "name": deployment["metadata"]["name"],
                             "uid": deployment["metadata"]["uid"], "controller": True}]},
            "status": {"phase": "Running"}})


async def _pod(service: LedgerService, model: str, pod: str, until: float, tally: Tally
               ) -> None:
    token = f"Bearer {model}/{pod}"
    sequence = 0
    while time.perf_counter() < until:
        sequence += 1
        body = json.dumps({"leaseId": sequenced_id(pod, None, sequence),
                           "model": f"{NS}/{model}", "modelVersion": "v1", "pod": pod,
                           "mechanism": GAUSS, "requested": 100}).encode()
        try:
            grant = await service.lease(body, token)
        except LeaseFailure:
            tally.refusals += 1
            continue
        tally.grants += 1
        tally.queries += grant.granted


async def _scenario(seconds: float, latency_s: float) -> dict[str, float]:
    store = _store(latency_s)
    service = LedgerService(store, Reviewer(), settings=LedgerSettings(),
                            accounting=LedgerAccounting(), registry=CollectorRegistry())
    tally = Tally()
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(*(
        _pod(service, f"m{m}", f"m{m}-pod-{p}", until, tally)
        for m in range(BUDGETS) for p in range(PODS_PER_MODEL)
    ))
    elapsed = time.perf_counter() - started
    await service.stop()
    sizes = [len(json.dumps(store.budget(NS, f"b{i}").get("status") or {}))
             for i in range(BUDGETS)]
    return {
        "grants/s": tally.grants / elapsed,
        "queries/s": tally.queries / elapsed,
        "writes/1000q": 1000 * store.status_writes / max(1, tally.queries),
        "refusals": tally.refusals,
        "largest status KiB": max(sizes) / 1024,
    }


def _status_at_limits() -> dict[str, float]:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    mech = Mechanism.model_validate(GAUSS)
    entries = [LedgerEntry(consumer=f"{NS}/model-{i:04d}", model_version="v12", kind="query",
                           mechanism=mech, count=123456) for i in range(1024)]

    def record(i: int, lease_id: str, expires: datetime) -> LeaseRecord:
        return LeaseRecord(lease_id=lease_id, consumer=f"{NS}/model-{i % 512:04d}",
                           model_version="v12", pod=f"model-{i % 512:04d}-7c9d5b8f4-x2k{i:04d}",
                           granted=100, expires_at=expires.strftime("%Y-%m-%dT%H:%M:%SZ"))

    outstanding = [record(i, sequenced_id(f"o{i}", None, i + 1), now + timedelta(minutes=5))
                   for i in range(1024)]
    remembered = [record(i, sequenced_id(f"p{i}", None, i + 1), now - timedelta(hours=1))
                  for i in range(1024)]
    plain = PrivacyBudgetStatus(ledger=entries, leases=outstanding)
    full = PrivacyBudgetStatus(ledger=entries, leases=[*outstanding, *remembered])
    return {"1024 leases + 1024 entries KiB": len(json.dumps(plain.wire())) / 1024,
            "+1024 remembered KiB": len(json.dumps(full.wire())) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--latency-ms", type=float, default=2.0)
    parser.add_argument("--warmup-s", type=float, default=1.0,
                        help="an uncounted run first (default 1 s)")
    args = parser.parse_args()
    print(f"{BUDGETS} budgets, {BUDGETS * PODS_PER_MODEL} pods, API latency "
          f"{args.latency_ms:g} ms, {args.seconds:g} s per scenario")
    # One-time costs (imports, compiling the CRDs' CEL rules, the first validation of each
    # spec) would fall on the measured run; a warm-up run takes them off it.
    asyncio.run(_scenario(args.warmup_s, args.latency_ms / 1000))
    figures = asyncio.run(_scenario(args.seconds, args.latency_ms / 1000))
    print("sequenced ids", "  ".join(f"{k} {v:,.1f}" for k, v in figures.items()))
    limits = _status_at_limits()
    print("status at the limits:", "  ".join(f"{k} {v:,.1f}" for k, v in limits.items()))


if __name__ == "__main__":
    main()
