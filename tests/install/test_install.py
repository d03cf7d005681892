"""README's cluster section, run as written: install, examples, drain, upgrade, uninstall.

One cluster per module; each phase is a fixture that runs the README step(s) and records
what the tests then check (a later phase builds on the earlier ones). See install_support
for how the chart's Deployment runs under the local kubelet and what is adapted.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from install_support import (
    BUDGET,
    MODEL,
    NS,
    OPERATOR_NS,
    RELEASE,
    Cluster,
    Drained,
    Trained,
    assert_drained,
    client,
    drain,
    readme_steps,
    status_of,
)

from dpserve_testkit.demo.traffic import Answer
from dpserve_testkit.localkube.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@dataclass
class Installed:
    pod: Any  # the operator's LocalPod
    pod_object: dict[str, Any]


@dataclass
class Upgraded:
    before: Any  # the operator pod before
    after: Any
    spend_before: dict[str, Any]
    spend_after: dict[str, Any]
    answer: Answer  # through v2's sidecar, leasing from the upgraded operator
    ca_before: str
    ca_after: str
    model_pods_before: set[str]
    model_pods_after: set[str]


def steps() -> dict[int, list[list[str]]]:
    return readme_steps()


def spend(cluster: Cluster) -> dict[str, Any]:
    """Every budget's recorded spend: ε spent and the ledger's entries (leases excluded)."""
    out = {}
    for budget in cluster.api.items(cluster.group(NS, "privacybudgets")):
        status = status_of(budget)
        out[budget["metadata"]["name"]] = (status.get("epsilonSpent"), status.get("ledger"))
    return out


def keeps(after: dict[str, Any], before: dict[str, Any]) -> bool:
    """Every budget of ``before`` is in ``after`` with at least its ε spent, and each of its
    ledger entries is there with at least its count (entries aggregate counts)."""
    def identity(entry: dict[str, Any]) -> str:
        return repr(sorted((k, v) for k, v in entry.items() if k not in ("count", "at")))

    for name, (epsilon, ledger) in before.items():
        if name not in after or Decimal(after[name][0] or "0") < Decimal(epsilon or "0"):
            return False
        now = {identity(e): e.get("count", 0) for e in after[name][1] or []}
        if any(now.get(identity(e), -1) < e.get("count", 0) for e in ledger or []):
            return False
    return True


@pytest.fixture(scope="module")
def installed(cluster: Cluster) -> Installed:
    for command in steps()[1] + steps()[2]:
        cluster.run(command)
    pod = cluster.operator_pod(RELEASE, OPERATOR_NS)
    obj = cluster.api.get(f"/api/v1/namespaces/{OPERATOR_NS}/pods/{pod.name}")
    return Installed(pod, obj)


@pytest.fixture(scope="module")
def drained(cluster: Cluster, trained: Trained, installed: Installed) -> Drained:
    return drain(cluster, trained)


@pytest.fixture(scope="module")
def upgraded(cluster: Cluster, trained: Trained, installed: Installed,
             drained: Drained) -> Upgraded:
    before = cluster.operator_pod(RELEASE, OPERATOR_NS)
    spend_before = spend(cluster)
    ca_before = ledger_ca(cluster)
    pods_before = {p.name for p in cluster.pods(NS, MODEL)}
    for command in steps()[4]:
        cluster.run(command)
    after = wait_until(lambda: (p := cluster.operator_pod(RELEASE, OPERATOR_NS)).name
                       != before.name and p, 120, what="the operator restarted")
    spend_after = spend(cluster)
    # The new CA and the new inference image both change the model's pod template.
    wait_until(lambda: {p.name for p in cluster.pods(NS, MODEL) if p.ready}.isdisjoint(
        pods_before) and len(cluster.kubelet.endpoints(NS, MODEL)) == 2, 180,  # type: ignore[union-attr]
        what=lambda: f"the model's pods replaced\n{cluster.diagnostics()}")
    pods_after = {p.name for p in cluster.pods(NS, MODEL)}
    answer = wait_until(lambda: (a := client(cluster, trained).ask()).answered and a, 120,
                        what=lambda: f"an answer after the upgrade\n{cluster.diagnostics()}")
    return Upgraded(before, after, spend_before, spend_after, answer, ca_before,
                    ledger_ca(cluster), pods_before, pods_after)


def ledger_ca(cluster: Cluster) -> str:
    secret = cluster.api.get(f"/api/v1/namespaces/{OPERATOR_NS}/secrets/dpserve-ledger-tls")
    return str(secret["data"]["ca.crt"])


def test_operator_runs_from_the_charts_deployment(cluster: Cluster,
                                                  installed: Installed) -> None:
    (run,) = installed.pod.containers
    assert run.argv[0].endswith("/dpserve") and run.argv[1:3] == ["run", "--liveness-port"]
    assert "--standalone" in run.argv and "--all-namespaces" in run.argv
    env = run.env
    assert env["DPSERVE_LEDGER_URL"] == "https://dpserve-ledger.dpserve-system.svc:8443"
    assert env["POD_ID"] == installed.pod.name and env["POD_NAMESPACE"] == OPERATOR_NS
    assert env["DPSERVE_INFERENCE_IMAGE"] == "registry.example.com/dpserve/inference:0.1.0"
    # The ledger's TLS files come from the chart's Secret volume.
    assert env["DPSERVE_LEDGER_TLS_CERT"].endswith("/volumes/ledger-tls/tls.crt")
    spec = installed.pod_object["spec"]
    assert spec["serviceAccountName"] == "dpserve"
    api_access = [v for v in spec["volumes"] if v["name"].startswith("kube-api-access-")]
    assert api_access, spec["volumes"]
    # The ServiceAccount's token, not the admin's, is what the operator talks to the API with.
    kubeconfig = Path(env["KUBECONFIG"]).read_text(encoding="utf-8")
    assert "system:serviceaccount:dpserve-system:dpserve" in kubeconfig
    log = (installed.pod.directory / "operator.log").read_text(errors="replace")
    assert "ledger service listening" in log and "(TLS)" in log
    assert installed.pod.ready  # the chart's HTTPS readiness probe on /readyz


def test_examples_drain_the_budget_through_the_sidecar(cluster: Cluster,
                                                       drained: Drained) -> None:
    assert_drained(cluster, drained)


def test_upgrade_restarts_the_operator_and_keeps_the_spend(upgraded: Upgraded) -> None:
    assert upgraded.after.name != upgraded.before.name
    (run,) = upgraded.after.containers
    assert run.env["DPSERVE_INFERENCE_IMAGE"].endswith(":0.2.0")
    # Nothing recorded is lost or lowered. (Sidecars may still be granted the leases they
    # prefetch around the upgrade: entries grow, they are never dropped.)
    assert keeps(upgraded.spend_after, upgraded.spend_before)
    assert upgraded.answer.answered and upgraded.answer.version == "v2"


def test_a_rendered_upgrade_rotates_the_ledger_ca_and_rolls_the_models(
        upgraded: Upgraded) -> None:
    """Rendered offline (as Argo CD and Flux do, and this test), ``lookup`` finds nothing, so
    the chart's generate mode makes a new CA on every render: the new operator writes it
    into the filter ConfigMap, whose hash rolls the model's pods; they answer again, each
    sidecar verifying the ledger with the new CA (docs/install.md)."""
    assert upgraded.ca_after != upgraded.ca_before
    assert upgraded.model_pods_before.isdisjoint(upgraded.model_pods_after)


@pytest.fixture(scope="module")
def uninstalled(cluster: Cluster, trained: Trained, upgraded: Upgraded) -> dict[str, Any]:
    """``helm uninstall`` with the models in place, then the README's order."""
    (uninstall,) = [c for c in steps()[5] if c[0] == "helm"]
    kept = spend(cluster)
    cluster.run(uninstall)
    wait_until(lambda: not cluster.pods(OPERATOR_NS), 60, what="the operator gone")
    seen: dict[str, Any] = {"spend_kept": kept, "spend_without_operator": spend(cluster)}
    # A sidecar answers from the leases it holds (paid for in the ledger before they were
    # granted) until they run out or expire; then it refuses: there is no ledger to ask.
    queries = client(cluster, trained)
    seen["answer_without_operator"] = wait_until(
        lambda: (a := queries.ask()) and not a.answered and a, 60, what="a refusal")
    seen["spend_after_query"] = spend(cluster)
    cluster.kubectl("delete", "pm", MODEL, "-n", NS, "--wait=false")
    seen["terminating"] = cluster.find(cluster.group(NS, "privatemodels", MODEL))
    # Installing again: the operator finishes the deletion it finalizes.
    for command in steps()[2]:
        cluster.run(command)
    cluster.operator_pod(RELEASE, OPERATOR_NS)
    wait_until(lambda: cluster.find(cluster.group(NS, "privatemodels", MODEL)) is None, 60,
               what="the model's deletion completed")
    seen["spend_after_reinstall"] = spend(cluster)
    for command in steps()[5]:
        cluster.run(command)
    wait_until(lambda: cluster.find(cluster.group(NS, "privacybudgets", BUDGET)) is None, 60,
               what="the budget deleted")
    wait_until(lambda: not cluster.pods(OPERATOR_NS), 60, what="the operator gone")
    seen["left"] = {
        "budgets": cluster.api.items(cluster.group(NS, "privacybudgets")),
        "models": cluster.api.items(cluster.group(NS, "privatemodels")),
        "release": [o for o in cluster.api.items(f"/api/v1/namespaces/{OPERATOR_NS}/secrets")],
    }
    return seen


def test_uninstall_keeps_the_ledger_and_fails_closed(uninstalled: dict[str, Any]) -> None:
    assert keeps(uninstalled["spend_without_operator"], uninstalled["spend_kept"])
    answer = uninstalled["answer_without_operator"]
    assert not answer.answered and answer.status == 503, answer  # LedgerUnavailable
    # No operator, no grant: answering from held leases changed nothing recorded.
    assert uninstalled["spend_after_query"] == uninstalled["spend_without_operator"]
    terminating = uninstalled["terminating"]
    assert terminating is not None and terminating["metadata"].get("deletionTimestamp")
    assert "dpserve.io/finalizer" in terminating["metadata"]["finalizers"]
    # The reinstalled operator finished the deletion; every budget kept its record.
    assert keeps(uninstalled["spend_after_reinstall"], uninstalled["spend_without_operator"])


def test_readme_order_removes_everything_without_hanging(uninstalled: dict[str, Any]) -> None:
    left = uninstalled["left"]
    assert not left["models"]
    assert all(not b["metadata"].get("deletionTimestamp") for b in left["budgets"])
    # The retrained version's budget outlives the model: its ledger is not dropped silently.
    assert [b["metadata"]["name"] for b in left["budgets"]] == [f"{BUDGET}-v2"]
    # Helm keeps the ledger's TLS Secret (resource-policy: keep).
    assert [s["metadata"]["name"] for s in left["release"]] == ["dpserve-ledger-tls"]
