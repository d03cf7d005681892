"""README's install path with every container a podman container of the built images: the
operator started from the chart's Deployment as ``localhost/dpserve-operator``, the models'
pods and the retraining Job as ``localhost/dpserve-inference``.

The same steps as test_install.py (process runtime), with what the images change:

- ``helm install`` gets the local images (``--set image.repository=localhost/...``, the tag
  ``images/build.sh`` gave them), as a user points the chart at their registry;
- the chart's securityContext is enforced by the kernel (user 65532, read-only root, no
  capabilities), the ledger's TLS files are a real Secret mount, the operator talks to the
  API with its ServiceAccount token (``KUBECONFIG`` beside the mounted token: LocalKube serves
  plain HTTP on loopback);
- the containers share the host's network (podman here has no CNI): each pod keeps a
  loopback address of its own, the chart's ``bindAddress`` (0.0.0.0) is mapped to it, and the
  ledger's pinned ClusterIP is reached through the kubelet's userspace proxy
  (``kubelet/serviceproxy.py``). Through a proxy the ledger sees connections from the host's
  side, not from the sidecar's pod address, as in a cluster that masquerades pod traffic;
  so this install sets ``ledgerCheckSourceAddress=false``, the chart's switch for such
  clusters. The process-runtime install keeps the check on.

Skipped where podman cannot run; a failure where it must (CI after images/ci-setup.sh).
Upgrade to a new version string is not run here: that would need a second build of the
images under the new tag (test_install.py covers it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from install_support import (
    MODEL,
    NS,
    OPERATOR_NS,
    RELEASE,
    Cluster,
    Drained,
    Trained,
    assert_drained,
    drain,
    example_cluster,
    readme_steps,
)

from dpserve_testkit.localkube.kubelet.apiaccess import MOUNT_PATH
from dpserve_testkit.localkube.kubelet.serviceproxy import is_cluster_ip
from dpserve_testkit.localkube.waiting import wait_until
from podman_support import (
    INFERENCE_IMAGE,
    OPERATOR_IMAGE,
    TAG,
    build_images,
    check_podman,
    podman,
)

LEDGER_HOST = "dpserve-ledger.dpserve-system.svc"

pytestmark = [pytest.mark.slow, pytest.mark.podman,
              # The first podman test may build the images (minutes without the layer cache).
              pytest.mark.timeout(1800)]


def local_images() -> list[str]:
    return ["--set", f"image.repository={OPERATOR_IMAGE.rsplit(':', 1)[0]}",
            "--set", f"image.tag={TAG}",
            "--set", f"inferenceImage.repository={INFERENCE_IMAGE.rsplit(':', 1)[0]}",
            "--set", f"inferenceImage.tag={TAG}",
            "--set", "ledgerCheckSourceAddress=false"]


def flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def env_of(argv: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in flag_values(argv, "--env"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, trained: Trained) -> Iterator[Cluster]:
    check_podman()
    build_images(timeout=1500)  # seconds when the images are current (layer cache)
    live = example_cluster(tmp_path_factory.mktemp("install-podman"), trained, "podman")
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def operator_argv(cluster: Cluster) -> list[str]:
    steps = readme_steps()
    for command in steps[1]:
        cluster.run(command)
    (install,) = steps[2]
    cluster.run([*install, *local_images()])
    (run,) = cluster.operator_pod(RELEASE, OPERATOR_NS).containers
    argv: list[str] = run.argv
    return argv


@pytest.fixture(scope="module")
def drained(cluster: Cluster, trained: Trained, operator_argv: list[str]) -> Drained:
    return drain(cluster, trained)


def test_the_operator_runs_as_its_image_from_the_charts_deployment(
        cluster: Cluster, operator_argv: list[str]) -> None:
    argv = operator_argv
    assert argv[:2] == ["podman", "run"] and OPERATOR_IMAGE in argv
    assert json.loads(flag_values(argv, "--entrypoint")[0]) == ["dpserve", "run"]
    assert "--standalone" in argv and "--all-namespaces" in argv
    # The chart's restricted securityContext, enforced by the container runtime.
    assert flag_values(argv, "--user") == ["65532:65532"]
    assert {"--read-only", "--cap-drop=all", "--security-opt=no-new-privileges"} <= set(argv)
    env = env_of(argv)
    assert env["KUBECONFIG"] == f"{MOUNT_PATH}/kubeconfig"
    assert env["DPSERVE_INFERENCE_IMAGE"] == INFERENCE_IMAGE
    assert env["DPSERVE_LEDGER_TLS_CERT"] == "/etc/dpserve/ledger-tls/tls.crt"
    assert any(v.endswith(":/etc/dpserve/ledger-tls:ro") for v in flag_values(argv, "-v"))
    pod = cluster.operator_pod(RELEASE, OPERATOR_NS)
    assert env["DPSERVE_BIND_ADDRESS"] == pod.ip  # the chart's 0.0.0.0, the pod's own
    log = (pod.directory / "operator.log").read_text(errors="replace")
    assert "ledger service listening" in log and "(TLS)" in log
    assert pod.ready  # the chart's HTTPS readiness probe on /readyz


def test_examples_drain_the_budget_through_podman_sidecars(cluster: Cluster,
                                                          drained: Drained) -> None:
    assert_drained(cluster, drained)
    pods = [p for p in cluster.pods(NS, MODEL) if p.ready]
    assert pods
    for pod in pods:
        for run in pod.containers:
            assert run.argv[:2] == ["podman", "run"] and INFERENCE_IMAGE in run.argv
        (sidecar,) = [r for r in pod.containers if r.name == "filter"]
        # The operator pinned the ledger Service's ClusterIP; the container reaches it
        # through the kubelet's proxy address for it.
        hosts = dict(h.split(":", 1) for h in flag_values(sidecar.argv, "--add-host"))
        assert LEDGER_HOST in hosts and not is_cluster_ip(hosts[LEDGER_HOST])
        pinned = [a for a in pod.spec.get("hostAliases") or [] if LEDGER_HOST in a["hostnames"]]
        assert pinned and is_cluster_ip(pinned[0]["ip"])


def test_uninstall_stops_the_operators_container(cluster: Cluster, drained: Drained) -> None:
    (uninstall,) = [c for c in readme_steps()[5] if c[0] == "helm"]
    cluster.run(uninstall)
    wait_until(lambda: not cluster.pods(OPERATOR_NS), 60, what="the operator gone")

    def operator_containers() -> list[str]:
        names = podman("ps", "-a", "--format", "{{.Names}}").stdout.split()
        return [n for n in names if n.startswith(f"lk-{OPERATOR_NS}-")]

    wait_until(lambda: not operator_containers(), 60,
               what=lambda: f"the operator's container removed: {operator_containers()}")
