"""Ledger throughput: grants/s, grant latency, API writes per 1,000 answered queries.

Three processes, as in a cluster: the API server (the LocalKube emulator, served over HTTP
in a subprocess), the ledger (``python -m dpserve.ledger``, KubeStore + TokenReview over
HTTP, in a subprocess) and the sidecars (this process). Each sidecar asks for ``--request``
queries, serves what it is granted (instantly: a closed loop that stresses the ledger) and
asks again, until the budget refuses (429) or ``--seconds`` pass. Mechanisms: pate (GNMax,
σ=40) and gaussian (z = 2·1/0.02 = 100); every scenario spends a fresh PrivacyBudget
(ε=8, δ=1e-6).

Scenarios, side by side in one run:
- ``unloaded (1 pod)``: one gaussian sidecar (latency without queueing);
- ``mixed adaptive``: ``--sidecars`` pods, half pate, half gaussian, one budget; leases sized
  by the ledger's 1%-at-risk rule (the product's policy) -- the headline configuration;
- ``gaussian adaptive`` vs ``gaussian per-query``: the same gaussian sidecars asking for
  ``--request`` queries per lease vs for 1 query at a time (a debit per query).

API writes are counted by the API server (status writes, conflicts and Events included).
The last line is ``grants_per_s=<x> api_writes_per_1000_queries=<y>`` of ``mixed adaptive``.

PLD grant decisions (``--pld-only`` runs just these; they also run after the scenarios):
the accountant work of one grant as ``ledger/grant.py`` does it (the fit, ε of the ledger,
the lease size under the at-risk ceiling, ε of the debited ledger) on a ledger holding one
14,063-step DP-SGD run (z=1.1, q=256/60000) and 10,000 gaussian queries (z=100), budget
ε=8 δ=1e-6, accountant ``pld``; each grant debits what it granted, and the pod's previous
lease is outstanding when it asks for the next (the sidecar protocol). Warm: grants in one
process; cold: the first grant in a fresh process (an operator restart). Today's solver
(``tests/accounting/reference_solver.py``, the oracle of the property test) runs the same
grants side by side, its lease size the exact search under the at-risk ceiling; "search" is
our accountant with that exact search, "secant" the ledger's ``leases.size_within_risk``,
"ours" that with the next grant prepared between grants, untimed, as the ledger's worker
does while the pod serves its lease (its fit and its lease check: ``leases.prepare_next``,
``LedgerService._prepare``); the grants run until the budget refuses, so the last ones,
whose fit is a search near the budget's end, count too;
"ledger" is the product's whole decision, ``ledger.state.grant`` on the budget's spec and
status (the status it writes included), prepared the same way. "After a restart": in a
fresh process, the budget's resume reconcile first (``state.compute_status``, as
``LedgerService.recompute`` runs for every budget when the operator starts), then the first
grant. The last line is
``pld_grant_p99_ms=<x> pld_cold_s=<y> ledger_grant_p99_ms=<z> ledger_cold_s=<w>``.

Usage: python bench/ledger.py [--sidecars 20] [--seconds 30] [--request 500] [--pld-only | --no-pld]
       [--pld-cpu-time]  (PLD decisions in process CPU seconds: steadier on a shared machine)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config

from dpserve.ledger.lease_ids import sequenced_id

NS = "bench"
PATE = {"type": "pate", "teachers": 50, "noiseMultiplier": "40"}
GAUSS = {"type": "gaussian", "noiseMultiplier": "2", "clipNorm": "1", "sensitivity": "0.02"}

# The emulator in its own process. stdin commands: "count" prints the number of write requests
# received so far; "pods <json>" creates each [model, pod]'s serving pod, Running, as
# LocalKube's kubelet owns it (tests/pod_support.py: the model's Deployment, controlled by the
# PrivateModel, then the pod; the bench runs no kubelet) and registers the pod's bound token
# "tok-<pod>" for TokenReview: the ledger grants only to a serving pod of the model
# (dpserve.ledger.podcheck).
# kmock logs every request and matches each new one against the whole log (O(n) per request:
# ~7 ms per status write at first, ~17 ms after 120 writes); the bench trims that log so the
# API server's cost per request stays constant, as a real API server's does.
EMULATOR = r"""
import asyncio, json, sys
from dpserve_testkit.localkube import serving
sys.path.insert(0, sys.argv[2])  # the tests' directory: the serving pods as tests make them
from pod_support import kube_serving_pod

def serving_pods(kube, pairs) -> None:
    for model, pod in pairs:
        uid = kube_serving_pod(kube, model, pod, namespace="bench")
        kube.tokens.register(f"tok-{pod}", namespace="bench",
                             service_account=f"{model}-dpserve", pod_name=pod, pod_uid=uid,
                             audiences=["dpserve-ledger"])

async def trim(kube) -> None:
    while True:
        await asyncio.sleep(0.1)
        kube._requests.clear()

async def main() -> None:
    async with serving(kubeconfig=sys.argv[1]) as (kube, url):
        trimmer = asyncio.create_task(trim(kube))
        print("ready", url, flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or line.strip() == "quit":
                return
            if line.startswith("pods "):
                serving_pods(kube, json.loads(line[5:]))
                print("ok", flush=True)
                continue
            print(kube.count_writes(), flush=True)

asyncio.run(main())
"""


@dataclass(frozen=True)
class Scenario:
    name: str
    budget: str
    sidecars: int
    mechanisms: tuple[str, ...]  # cycled over the sidecars: "pate" / "gaussian"
    request: int

    def pods(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(model, pod, mechanism) of each sidecar."""
        out = []
        for i in range(self.sidecars):
            kind = self.mechanisms[i % len(self.mechanisms)]
            model, mech = ("triage", PATE) if kind == "pate" else ("ensemble", GAUSS)
            out.append((f"{model}-{self.budget}", f"{model}-{self.budget}-{i}", mech))
        return out


@dataclass
class Run:
    scenario: Scenario
    grants: int = 0
    queries: int = 0
    refusals: int = 0
    errors: int = 0
    first_error: str = ""  # the first failed request's status and body
    latencies: list[float] = field(default_factory=list)
    lease_sizes: list[int] = field(default_factory=list)
    seconds: float = 0.0
    writes: int = 0
    exhausted: bool = False

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    @property
    def grants_per_s(self) -> float:
        return self.grants / self.seconds if self.seconds else 0.0

    @property
    def queries_per_s(self) -> float:
        return self.queries / self.seconds if self.seconds else 0.0

    @property
    def writes_per_1000(self) -> float:
        return 1000 * self.writes / self.queries if self.queries else float("nan")


async def create_objects(kubeconfig: Path, budgets: list[str]) -> None:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration=configuration) as api:
        await client.CoreV1Api(api).create_namespace({"metadata": {"name": NS}})
        custom = client.CustomObjectsApi(api)
        for budget in budgets:
            await custom.create_namespaced_custom_object(
                "dpserve.io",
                "v1alpha1",
                NS,
                "privacybudgets",
                {
                    "apiVersion": "dpserve.io/v1alpha1",
                    "kind": "PrivacyBudget",
                    "metadata": {"name": budget},
                    "spec": {"epsilon": "8", "delta": "1e-6"},
                },
            )
            for model, mech in (("triage", PATE), ("ensemble", GAUSS)):
                await custom.create_namespaced_custom_object(
                    "dpserve.io",
                    "v1alpha1",
                    NS,
                    "privatemodels",
                    {
                        "apiVersion": "dpserve.io/v1alpha1",
                        "kind": "PrivateModel",
                        "metadata": {"name": f"{model}-{budget}"},
                        "spec": {
                            "budgetRef": {"name": budget},
                            "model": {"artifact": "pvc://models/x", "format": "pate-ensemble"},
                            "serving": {"mechanism": mech},
                            "confidential": {"profile": "none", "required": False},
                        },
                    },
                )


async def sidecar(
    http: aiohttp.ClientSession,
    url: str,
    run: Run,
    model: str,
    pod: str,
    mech: dict[str, Any],
    deadline: float,
) -> None:
    counter = 0
    while time.perf_counter() < deadline:
        counter += 1
        body = {
            "leaseId": sequenced_id(pod, None, counter),
            "model": f"{NS}/{model}",
            "pod": pod,
            "mechanism": mech,
            "modelVersion": "v1",
            "requested": run.scenario.request,
        }
        started = time.perf_counter()
        async with http.post(
            f"{url}/v1/leases", json=body, headers={"Authorization": f"Bearer tok-{pod}"}
        ) as response:
            payload = await response.json()
        elapsed = time.perf_counter() - started
        if response.status == 200:
            run.grants += 1
            run.queries += payload["granted"]
            run.lease_sizes.append(payload["granted"])
            run.latencies.append(elapsed)
        elif response.status == 429:
            run.refusals += 1
            run.exhausted = True
            return
        else:
            run.errors += 1
            run.first_error = run.first_error or f"{response.status} {payload}"
            await asyncio.sleep(0.05)


def create_pods(emulator: subprocess.Popen[str], pods: list[tuple[str, str]]) -> None:
    """Each (model, pod)'s serving pod, in the emulator's process ("pods" above)."""
    assert emulator.stdin is not None and emulator.stdout is not None
    emulator.stdin.write(f"pods {json.dumps(pods)}\n")
    emulator.stdin.flush()
    assert emulator.stdout.readline().strip() == "ok"


def count_writes(emulator: subprocess.Popen[str]) -> int:
    assert emulator.stdin is not None and emulator.stdout is not None
    emulator.stdin.write("count\n")
    emulator.stdin.flush()
    return int(emulator.stdout.readline())


async def measure(
    scenario: Scenario, url: str, emulator: subprocess.Popen[str], seconds: float
) -> Run:
    run = Run(scenario)
    before = count_writes(emulator)
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30),
        connector=aiohttp.TCPConnector(limit=scenario.sidecars + 4),
    ) as http:
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(
            *(
                sidecar(http, url, run, model, pod, mech, deadline)
                for model, pod, mech in scenario.pods()
            )
        )
        run.seconds = time.perf_counter() - started
    run.writes = count_writes(emulator) - before
    return run


def report(run: Run) -> str:
    sizes = run.lease_sizes or [0]
    return (
        f"{run.scenario.name:>18}: {run.grants:5d} grants {run.queries:6d} queries in "
        f"{run.seconds:4.1f} s ({'exhausted' if run.exhausted else 'time limit'}): "
        f"{run.grants_per_s:6.1f} grants/s {run.queries_per_s:7.1f} queries/s; "
        f"latency p50 {1000 * run.percentile(0.5):6.1f} ms p99 "
        f"{1000 * run.percentile(0.99):6.1f} ms; lease size median "
        f"{statistics.median(sizes):.0f} max {max(sizes)}; API writes {run.writes} = "
        f"{run.writes_per_1000:.1f} per 1000 queries; errors {run.errors}"
    )


async def run_scenarios(
    scenarios: list[Scenario], url: str, emulator: subprocess.Popen[str], seconds: float
) -> dict[str, Run]:
    results: dict[str, Run] = {}
    for scenario in scenarios:
        limit = min(seconds, 8.0) if scenario.sidecars == 1 else seconds
        run = await measure(scenario, url, emulator, limit)
        results[scenario.name] = run
        print(report(run), flush=True)
    return results


def bench(args: argparse.Namespace) -> int:
    n = args.sidecars
    scenarios = [
        Scenario("unloaded (1 pod)", "pb-single", 1, ("gaussian",), args.request),
        Scenario("mixed adaptive", "pb-mixed", n, ("pate", "gaussian"), args.request),
        Scenario("gaussian adaptive", "pb-gauss", n, ("gaussian",), args.request),
        Scenario("gaussian per-query", "pb-per-query", n, ("gaussian",), 1),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = Path(tmp) / "kubeconfig"
        emulator = subprocess.Popen(
            [sys.executable, "-c", EMULATOR, str(kubeconfig),
             str(Path(__file__).resolve().parents[1] / "tests")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ledger: subprocess.Popen[str] | None = None
        try:
            assert emulator.stdout is not None
            ready = emulator.stdout.readline()
            assert ready.startswith("ready"), ready
            asyncio.run(create_objects(kubeconfig, [s.budget for s in scenarios]))
            create_pods(emulator, [(model, pod) for scenario in scenarios
                                   for model, pod, _ in scenario.pods()])
            env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
            env.pop("KUBERNETES_SERVICE_HOST", None)
            ledger = subprocess.Popen(
                [sys.executable, "-m", "dpserve.ledger", "--port", "0", "--log-level", "ERROR"],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert ledger.stdout is not None
            found = re.search(r":(\d+)$", ledger.stdout.readline().strip())
            assert found, "the ledger did not start"
            url = f"http://127.0.0.1:{found.group(1)}"
            print(
                f"ledger bench: pate σ=40 / gaussian z=2·1/0.02=100 sidecars, each scenario "
                f"on a fresh budget ε=8 δ=1e-6, lease request {args.request}; API server = "
                "LocalKube over HTTP (subprocess), ledger = python -m dpserve.ledger "
                "(subprocess)",
                flush=True,
            )
            results = asyncio.run(run_scenarios(scenarios, url, emulator, args.seconds))
        finally:
            if ledger is not None:
                ledger.terminate()
                ledger.wait(timeout=10)
            if emulator.stdin is not None:
                emulator.stdin.write("quit\n")
                emulator.stdin.close()
            emulator.wait(timeout=10)
    failed = [run for run in results.values() if run.errors or not run.grants]
    for run in failed:  # a bench whose requests are refused measures nothing: fail
        print(f"{run.scenario.name}: {run.errors} failed requests, the first: "
              f"{run.first_error or 'none granted'}", flush=True)
    if failed:
        return 1
    mixed = results["mixed adaptive"]
    adaptive, per_query = results["gaussian adaptive"], results["gaussian per-query"]
    print(
        f"gaussian, side by side: adaptive leases use "
        f"{per_query.writes_per_1000 / adaptive.writes_per_1000:.1f}x fewer API writes per "
        f"answered query than a lease of 1 query and serve "
        f"{adaptive.queries_per_s / per_query.queries_per_s:.1f}x the queries/s"
    )
    print(
        f"grants_per_s={mixed.grants_per_s:.1f} "
        f"api_writes_per_1000_queries={mixed.writes_per_1000:.1f}"
    )
    return 0


PLD_RUN = (1.1, 256 / 60000, 14063)
PLD_QUERY_Z = 100.0
PLD_BUDGET, PLD_DELTA, PLD_REQUEST = 8.0, 1e-6, 500
PLD_AT_RISK = 0.01  # LeasePolicy's default at_risk_fraction


Solver = tuple[Callable[[Any], float], Callable[[Any, Any, float, int], int],
               Callable[[Any, Any, Any, int], int], Callable[[Any, Any, Any], None]]


def _pld_solvers(which: str) -> Solver:
    """(epsilon(spends), max_additional(spends, event, eps, limit), lease size(spends,
    remaining, event, fit)) of ours or today's. Today's lease size is the exact search under
    the at-risk ceiling; ours is the ledger's own ``leases.size_within_risk``."""
    if which in ("ours", "secant", "search"):
        from dpserve.ledger.accountant import LedgerAccounting
        from dpserve.ledger.leases import prepare_next, size_within_risk
        from dpserve.ledger.outcomes import Prefetch

        accounting = LedgerAccounting()

        def ours_epsilon(spends: Any) -> float:
            return accounting.epsilon(spends, PLD_DELTA, "pld")

        def ours_max_additional(spends: Any, event: Any, eps: float, limit: int) -> int:
            return accounting.max_additional(spends, event, eps, PLD_DELTA, "pld", limit)

        def ours_size(spends: Any, remaining: Any, event: Any, fit: int) -> int:
            if which == "search":  # this solver with the lease sizing before the secant
                ceiling = _ceiling(ours_epsilon(remaining), ours_epsilon(spends))
                return min(fit, max(1, ours_max_additional(spends, event, ceiling, fit)))
            return size_within_risk(spends, remaining, event, fit, PLD_BUDGET, PLD_DELTA,
                                    "pld", PLD_AT_RISK, accounting)

        def ours_prepare(before: Any, debited: Any, event: Any) -> None:
            # What the ledger's worker does after answering (LedgerService._prepare).
            if which == "ours":
                prepare_next(Prefetch(tuple(before), tuple(debited), event, PLD_REQUEST,
                                      PLD_BUDGET, PLD_DELTA, PLD_AT_RISK), accounting)

        return ours_epsilon, ours_max_additional, ours_size, ours_prepare
    # By path: bench/accounting.py would shadow the tests' accounting directory.
    path = Path(__file__).resolve().parents[1] / "tests" / "accounting" / "reference_solver.py"
    spec = importlib.util.spec_from_file_location("reference_solver", path)
    assert spec is not None and spec.loader is not None
    reference = importlib.util.module_from_spec(spec)
    sys.modules["reference_solver"] = reference  # its dataclass looks itself up there
    spec.loader.exec_module(reference)
    reference_epsilon, reference_max_additional = (
        reference.reference_epsilon, reference.reference_max_additional
    )

    cache: dict[Any, float] = {}  # today's ledger also memoised ε per exact spends

    def epsilon(spends: Any) -> float:
        key = tuple(spends)
        if key not in cache:
            cache[key] = reference_epsilon(spends, PLD_DELTA, "pld")
        return cache[key]

    def max_additional(spends: Any, event: Any, eps: float, limit: int) -> int:
        return int(reference_max_additional(spends, event, eps, PLD_DELTA, "pld", limit))

    def size(spends: Any, remaining: Any, event: Any, fit: int) -> int:
        ceiling = _ceiling(epsilon(remaining), epsilon(spends))
        return min(fit, max(1, max_additional(spends, event, ceiling, fit)))

    return epsilon, max_additional, size, lambda before, debited, event: None


def _ceiling(base: float, current: float) -> float:
    """The ledger's at-risk ceiling of a lease, for the exact-search solvers."""
    from dpserve.ledger.leases import risk_ceiling

    return risk_ceiling(base, current, PLD_BUDGET, PLD_AT_RISK)


def _ordered(spends: list[tuple[Any, int]]) -> list[tuple[Any, int]]:
    """Spends in the ledger's order (``ledger.events.spends``: sorted by the event's repr)."""
    return sorted(((e, n) for e, n in spends if n > 0), key=lambda item: repr(item[0]))


def pld_grants(which: str, grants: int, cpu: bool = False
               ) -> list[tuple[float, int, float]]:
    """(seconds, granted, seconds preparing the next) of each of ``grants`` successive grant
    decisions of one pod (see the docstring); with ``cpu`` the process's CPU seconds (less
    moved by other load on a shared machine). As the sidecar protocol has it, the pod asks
    for its next lease once the current one is in use, so the previous lease is outstanding
    at each request."""
    clock = time.process_time if cpu else time.perf_counter
    from dpserve.accounting import GaussianQuery, SubsampledGaussian, pld

    for cached in (pld._component_pld, pld._composed_pld, pld.pld_epsilon):
        cached.cache_clear()  # each solver starts cold: no PLD composed by the one before
    pld._SPECTRA.clear()
    if which == "ledger":
        return _ledger_grants(grants, cpu)
    epsilon, max_additional, size, prepare = _pld_solvers(which)
    run, query = SubsampledGaussian(*PLD_RUN), GaussianQuery(PLD_QUERY_Z)
    count, outstanding, out = 10_000, 0, []
    for _ in range(grants):
        spends = _ordered([(run, 1), (query, count)])
        remaining = _ordered([(run, 1), (query, count - outstanding)])
        started = clock()
        fit = max_additional(spends, query, PLD_BUDGET, PLD_REQUEST)
        if fit < 1:
            break
        granted = size(spends, remaining, query, fit)
        debited = _ordered([(run, 1), (query, count + granted)])
        epsilon(debited)  # the debited ledger's status
        decided = clock()
        # Not in the decision's time: the ledger's worker prepares the next check while the
        # pod serves the lease (ours only; a lease lasts seconds, the preparation one PLD).
        prepare(spends, debited, query)
        out.append((decided - started, granted, clock() - decided))
        count, outstanding = count + granted, granted
    return out


def _ledger_grants(grants: int, cpu: bool) -> list[tuple[float, int, float]]:
    """``pld_grants`` through the product's own decision, ``dpserve.ledger.state.grant``: the
    budget's spec and status (the run and the queries as ledger entries, the lease records),
    the status it writes included, and the next check prepared between grants as
    ``LedgerService._prepare`` does."""
    from dpserve.ledger import state
    from dpserve.ledger.accountant import LedgerAccounting
    from dpserve.ledger.leases import prepare_next

    clock = time.process_time if cpu else time.perf_counter
    spec, status, request_of = _pld_budget()
    accounting, now, out = LedgerAccounting(), datetime.now(UTC), []
    for sequence in range(1, grants + 1):
        request = request_of(sequence)
        started = clock()
        result = state.grant(spec, 1, status, request, now, accounting=accounting)
        decided = clock()
        if not isinstance(result, state.Grant):
            break
        status, prefetch = result.status, result.prefetch
        if prefetch is not None:
            prepare_next(prefetch, accounting)
        out.append((decided - started, result.granted, clock() - decided))
    return out


def _pld_budget() -> tuple[Any, Any, Any]:
    """The PLD bench's budget: its spec, its status (the run and the 10,000 queries as
    ledger entries) and the pod's ``sequence``-th lease request."""
    from dpserve.api.mechanism import Mechanism
    from dpserve.api.privacybudget import (
        LedgerEntry,
        PrivacyBudgetSpec,
        PrivacyBudgetStatus,
        TrainingSpend,
    )
    from dpserve.ledger import state

    z, rate, steps = PLD_RUN
    spec = PrivacyBudgetSpec.model_validate(
        {"epsilon": str(PLD_BUDGET), "delta": str(PLD_DELTA), "accountant": "pld"})
    mechanism = Mechanism.model_validate(GAUSS)  # z = 2 * 1 / 0.02 = PLD_QUERY_Z
    status = PrivacyBudgetStatus(ledger=[
        LedgerEntry(consumer=f"{NS}/m", kind="training", count=1, training=TrainingSpend(
            noise_multiplier=str(z), sample_rate=str(rate), steps=steps)),
        LedgerEntry(consumer=f"{NS}/m", kind="query", mechanism=mechanism, count=10_000),
    ])

    def request_of(sequence: int) -> state.GrantRequest:
        return state.GrantRequest(
            consumer=f"{NS}/m", model_version="v1", mechanism=mechanism,
            requested=PLD_REQUEST, lease_id=sequenced_id("m-0", None, sequence), pod="m-0")

    return spec, status, request_of


def ledger_after_restart(cpu: bool = False) -> tuple[float, float]:
    """Seconds of the budget's resume reconcile and of the first grant after it, in this
    (fresh) process: what an operator restart costs the first pod that asks."""
    from dpserve.ledger import state
    from dpserve.ledger.accountant import LedgerAccounting

    clock = time.process_time if cpu else time.perf_counter
    spec, status, request_of = _pld_budget()
    accounting, now = LedgerAccounting(), datetime.now(UTC)
    started = clock()
    status = state.compute_status(spec, 1, status, now, accounting=accounting).status
    resumed = clock()
    result = state.grant(spec, 1, status, request_of(1), now, accounting=accounting)
    granted = clock()
    if not isinstance(result, state.Grant):
        raise SystemExit(f"ledger after a restart: the first grant was refused: {result}")
    return resumed - started, granted - resumed


def in_fresh_process(call: str) -> list[float]:
    """The numbers ``call`` (an expression on this module, ``ledger``) returns, evaluated in a
    fresh interpreter: no PLD cached, as after an operator restart."""
    code = f"import sys; sys.path.insert(0, sys.argv[1]); import ledger; print(*{call})"
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).resolve().parent)],
        capture_output=True, text=True, check=True,
    ).stdout
    return [float(value) for value in out.strip().splitlines()[-1].split()]


def pld_cold(which: str, cpu: bool = False) -> float:
    """The first grant decision in a fresh interpreter (no cache), in seconds."""
    return in_fresh_process(f"ledger.pld_grants({which!r}, 1, {cpu})[0][:1]")[0]


def pld_bench(grants: int, today_grants: int, cpu: bool = False) -> None:
    def p99(values: list[float]) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    print(
        "pld grant decisions: ledger = one 14,063-step DP-SGD run + 10,000 gaussian queries "
        f"(z={PLD_QUERY_Z:g}), budget ε={PLD_BUDGET:g} δ={PLD_DELTA:g}, lease request "
        f"{PLD_REQUEST}",
        flush=True,
    )
    results = {}
    for which, count in (("today", today_grants), ("search", grants), ("secant", grants),
                         ("ours", grants), ("ledger", grants)):
        cold = pld_cold(which, cpu)
        timed = pld_grants(which, count + 1, cpu)[1:]  # the first one is the cold start
        warm = [seconds for seconds, _, _ in timed]
        granted = [n for _, n, _ in timed]
        prepared = [seconds for _, _, seconds in timed]
        results[which] = (p99(warm), cold)
        print(
            f"{which:>6}: cold {cold:6.2f} s; warm over {len(warm)} grants: median "
            f"{1000 * statistics.median(warm):8.1f} ms p99 {1000 * p99(warm):8.1f} ms; "
            f"queries granted {sum(granted)} (mean lease {statistics.mean(granted):.0f})"
            + (f"; preparing the next, median {1000 * statistics.median(prepared):.1f} ms "
               "(off the grant path)" if which in ("ours", "ledger") else ""),
            flush=True,
        )
    resume, first = in_fresh_process(f"ledger.ledger_after_restart({cpu})")
    print(f"ledger after a restart: resume reconcile {resume:.2f} s, then the first grant "
          f"{first:.2f} s", flush=True)
    (ours_p99, ours_cold), (today_p99, today_cold) = results["ours"], results["today"]
    ledger_p99, ledger_cold = results["ledger"]
    print(
        f"today_pld_grant_p99_ms={1000 * today_p99:.1f} today_pld_cold_s={today_cold:.2f}"
    )
    print(f"pld_grant_p99_ms={1000 * ours_p99:.1f} pld_cold_s={ours_cold:.2f} "
          f"ledger_grant_p99_ms={1000 * ledger_p99:.1f} ledger_cold_s={ledger_cold:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sidecars", type=int, default=20)
    parser.add_argument(
        "--seconds",
        type=float,
        default=30.0,
        help="time limit per run (a run also ends when the budget refuses)",
    )
    parser.add_argument("--request", type=int, default=500, help="queries asked per lease")
    parser.add_argument("--pld-only", action="store_true", help="only the PLD decisions")
    parser.add_argument("--no-pld", action="store_true", help="only the HTTP scenarios")
    parser.add_argument("--pld-grants", type=int, default=100, help="warm grants measured")
    parser.add_argument(
        "--pld-today-grants", type=int, default=8, help="warm grants of today's solver"
    )
    parser.add_argument(
        "--pld-cpu-time", action="store_true",
        help="time the PLD decisions in process CPU seconds instead of wall-clock",
    )
    args = parser.parse_args(argv)
    status = 0 if args.pld_only else bench(args)
    if not args.no_pld:
        pld_bench(args.pld_grants, args.pld_today_grants, args.pld_cpu_time)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
