"""The chart's hot-standby and namespace-scoped variants, installed as a user would
(``helm install ... --set``), each on its own cluster: the operator Deployment(s) start
from the chart, under the variant's RBAC, and a model of the examples serves through its
sidecar, leasing from the ledger over the Service."""

from __future__ import annotations

import shlex
from collections.abc import Iterator

import pytest
from install_support import Cluster, Trained, example_cluster, readme_steps, status_of

from dpserve_testkit.demo.traffic import QueryClient
from dpserve_testkit.localkube.waiting import wait_until

NS, MODEL, OPERATOR_NS = "clinical-ml", "triage-classifier", "dpserve-system"
VARIANTS = {
    "standby": ["--set", "standby.enabled=true"],
    "namespaced": ["--set", "watchNamespaces={clinical-ml}"],
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            trained: Trained) -> Iterator[tuple[str, Cluster]]:
    live = example_cluster(tmp_path_factory.mktemp(f"variant-{request.param}"), trained)
    try:
        yield request.param, live
    finally:
        live.stop()


def test_variant_installs_and_serves(variant: tuple[str, Cluster], trained: Trained) -> None:
    name, cluster = variant
    steps = readme_steps()
    # The watched namespace must exist before its Role can be applied into it.
    cluster.kubectl("apply", "-f", "examples/namespace.yaml")
    cluster.run(steps[1][0])
    (install,) = steps[2]
    cluster.run([*install, *VARIANTS[name]])
    active = wait_until(lambda: [p for p in cluster.pods(OPERATOR_NS, "dpserve") if p.ready],
                        120, what=lambda: f"the active operator\n{cluster.diagnostics()}")
    (run,) = active[0].containers
    if name == "standby":
        at = run.argv.index("--peering")
        assert run.argv[at:at + 4] == ["--peering", "dpserve", "--priority", "100"]
        standby = wait_until(lambda: cluster.pods(OPERATOR_NS, "dpserve-standby"), 60,
                             what="the standby's pod")
        assert "--priority" in standby[0].containers[0].argv
        assert all(c.process is not None and c.running for c in standby[0].containers)
    else:
        assert run.argv[run.argv.index("--namespace") + 1] == NS
        assert "--all-namespaces" not in run.argv
    cluster.run(shlex.split("kubectl apply -f examples/budget-rdp.yaml "
                            "-f examples/model-pate-retrain.yaml"))
    assert cluster.kubelet is not None
    kubelet = cluster.kubelet
    wait_until(lambda: len(kubelet.endpoints(NS, MODEL)) == 2, 180,
               what=lambda: f"two ready replicas\n{cluster.diagnostics()}")
    answer = wait_until(lambda: (a := QueryClient(lambda: kubelet.endpoints(NS, MODEL),
                                                  trained.X, trained.y).ask()).answered and a,
                        60, what=lambda: f"an answer\n{cluster.diagnostics()}")
    assert answer.version == "v1"
    budget = status_of(cluster.find(cluster.group(NS, "privacybudgets", "patients-2026q4")))
    assert sum(e["count"] for e in budget["ledger"] if e["kind"] == "query") >= 1
