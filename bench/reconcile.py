"""Reconcile benchmark: the real operator process against LocalKube with N PrivateModels.

Creates N PrivacyBudgets and N PrivateModels (one budget each), times until every model
reports Ready=True, then counts the API writes during a quiet period (nothing changes:
the count must be 0) and reports the operator's peak RSS.

Nothing runs pods in the emulator, so "Ready" here is what the operator can observe: a
status-only stand-in for the Deployment controller (dpserve_testkit.localkube.simulate) writes each
Deployment's status as "all replicas available" once it sees the Deployment, as a kubelet
and the Deployment controller would. Those status writes go straight to the emulator's
store and are not API requests; every write counted comes from an API client.

Last line: ``models=<n> ready_s=<s> steady_writes_per_min=<w> rss_mib=<m>`` (the operator's peak
resident memory, issue 14 goal 5).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dpserve_testkit.localkube import serve
from dpserve_testkit.localkube.client import Client
from dpserve_testkit.localkube.harness import start_operator

NAMESPACE = "bench"


def budget(name: str) -> dict[str, Any]:
    return {"apiVersion": "dpserve.io/v1alpha1", "kind": "PrivacyBudget",
            "metadata": {"name": name}, "spec": {"epsilon": "8", "delta": "1e-6"}}


def model(name: str, budget_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "dpserve.io/v1alpha1", "kind": "PrivateModel",
        "metadata": {"name": name},
        "spec": {
            "budgetRef": {"name": budget_name},
            "model": {"artifact": f"pvc://models/{name}/v1", "format": "pate-ensemble"},
            "serving": {"replicas": 1, "mechanism": {
                "type": "gaussian", "noiseMultiplier": "8", "clipNorm": "1",
                "sensitivity": "0.1"}},
            "confidential": {"profile": "none", "required": False},
        },
    }


def ready_count(api: Client) -> int:
    count = 0
    for item in api.items(f"/apis/dpserve.io/v1alpha1/namespaces/{NAMESPACE}/privatemodels"):
        for cond in (item.get("status") or {}).get("conditions") or []:
            if cond["type"] == "Ready" and cond["status"] == "True":
                count += 1
    return count


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--quiet-s", type=float, default=60.0,
                        help="length of the steady-state window (default 60 s)")
    parser.add_argument("--timeout-s", type=float, default=600.0)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="dpserve-bench-"))
    server = serve(kubeconfig=workdir / "kubeconfig")
    server.start_simulator()
    operator = start_operator(server.kubeconfig, workdir / "operator.log")
    try:
        operator.wait_ready(60)
        api = Client(server.url, timeout_s=30)
        api.create("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        base = f"/apis/dpserve.io/v1alpha1/namespaces/{NAMESPACE}"
        start = time.monotonic()
        for i in range(args.models):
            api.create(f"{base}/privacybudgets", budget(f"b{i:04d}"))
            api.create(f"{base}/privatemodels", model(f"m{i:04d}", f"b{i:04d}"))
        created_s = time.monotonic() - start
        print(f"created in {created_s:.1f}s", file=sys.stderr, flush=True)
        ready = 0
        while ready < args.models:
            if time.monotonic() - start > args.timeout_s:
                raise SystemExit(f"only {ready}/{args.models} Ready after {args.timeout_s}s; "
                                 f"log: {operator.log_path}")
            time.sleep(0.5)
            ready = ready_count(api)
            print(f"  {time.monotonic() - start:6.1f}s  ready {ready}/{args.models}",
                  file=sys.stderr, flush=True)
        ready_s = time.monotonic() - start
        ramp_writes = server.call(lambda kube: kube.count_writes(0.0))
        operator_writes = server.call(
            lambda kube: kube.count_writes(0.0, user_agent="dpserve-operator"))

        time.sleep(2.0)  # let the last status echoes settle before the window opens
        quiet_start = time.monotonic()
        time.sleep(args.quiet_s)
        steady = server.call(lambda kube: kube.count_writes(quiet_start))
        per_min = steady / args.quiet_s * 60.0
        rss = peak_rss_mib(operator.process.pid)
        requests = server.call(lambda kube: len(list(kube)))
    finally:
        operator.stop()
        server.stop()

    n = args.models
    print(f"created {n} budgets + {n} models in {created_s:.2f}s (client side)")
    print(f"all {n} models Ready after {ready_s:.2f}s: {n / ready_s:.2f} models/s")
    print(f"API writes until Ready: {ramp_writes} ({ramp_writes / n:.2f} per model; "
          f"operator's own client: {operator_writes}, kopf and the ledger make the rest)")
    print(f"API requests served in total: {requests} ({requests / n:.1f} per model)")
    print(f"steady state: {steady} writes in {args.quiet_s:.0f}s quiet")
    print(f"operator peak RSS: {rss:.1f} MiB ({rss / n * 1024:.0f} KiB per model)")
    print(f"models={n} ready_s={ready_s:.2f} steady_writes_per_min={per_min:.2f} "
          f"rss_mib={rss:.1f}")


if __name__ == "__main__":
    main()
