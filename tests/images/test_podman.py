"""The built images as a cluster would run them, with podman (root; CI installs podman).

- The operator image runs ``dpserve run`` (read-only root, non-root, no capabilities)
  against the embedded Kubernetes API on the host, with its ledger on 127.0.0.1.
- A PrivacyBudget and a PrivateModel from examples/ (adapted: a ``file://`` PATE ensemble
  built here, no TEE, one replica) go in; the operator renders the Deployment and the filter
  ConfigMap with the builders of ``dpserve.resources``.
- Those objects, changed only where podman cannot follow them (:func:`for_podman`), run as
  a real pod with ``podman kube play --network=host`` on the inference image: the model
  container and the filter sidecar share localhost; the sidecar leases budget from the
  ledger in the operator container with a token the emulator's TokenReview knows.

With ``--network=host`` the pod has no network namespace of its own: "the model port is
reachable only from inside the pod" cannot be shown here (the host's loopback is the pod's).
What is checked instead is that the model server listens on loopback only.
"""

from __future__ import annotations

import copy
import json
import secrets
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from dpserve.resources.names import (
    FILTER_CONFIG_FILE,
    FILTER_PORT,
    LEDGER_CA_FILE,
    MODEL_PORT,
    TOKEN_AUDIENCE,
    TOKEN_FILE,
    TOKEN_VOLUME,
    deployment_name,
    filter_configmap_name,
    model_key,
    service_account_name,
)
from dpserve_runtime.architectures import build_model
from dpserve_runtime.artifact import save_pate_ensemble
from dpserve_runtime.filter.verbatim import write_fingerprint_file
from dpserve_testkit.localkube import LocalKubeServer, serve
from dpserve_testkit.localkube.client import Client
from dpserve_testkit.localkube.harness import free_port
from pod_support import kube_serving_pod
from podman_support import (
    INFERENCE_IMAGE,
    OPERATOR_IMAGE,
    REPO,
    build_images,
    check_podman,
    exec_in,
    http,
    http_ok,
    logs,
    podman,
    wait_for,
)
from tls_support import CertAuthority

pytestmark = [
    pytest.mark.podman,
    pytest.mark.slow,
    # A cold image build (no layer cache) takes minutes; with the cache, seconds.
    pytest.mark.timeout(1800),
]


@pytest.fixture(autouse=True, scope="module")
def _podman_runs() -> None:
    """Skipped where podman cannot run; a failure where it must (CI after ci-setup.sh)."""
    check_podman()

EXAMPLES = REPO / "examples"
GROUP = "/apis/dpserve.io/v1alpha1/namespaces/{ns}"
TEACHERS = 5
INPUT_DIM = 64
ARCHITECTURE = {"type": "mlp", "inputDim": INPUT_DIM, "hiddenDims": [16], "numClasses": 4}
# Every class label carries an e-mail address: whatever label the noisy vote picks, the
# sidecar's PII filter must redact it.
LABELS = [f"class {i}: follow up with ward-{i}@example.org" for i in range(4)]
RUN_AS = "65532"


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text("utf-8"))
    return doc


@dataclass(frozen=True)
class Cluster:
    server: LocalKubeServer
    api: Client
    kubeconfig: Path
    namespace: str
    budget: str
    model: str

    def budget_status(self) -> dict[str, Any]:
        obj = self.api.get(f"{GROUP.format(ns=self.namespace)}/privacybudgets/{self.budget}")
        status: dict[str, Any] = obj.get("status") or {}
        return status


@dataclass(frozen=True)
class Operator:
    container: str
    ledger_port: int
    liveness_port: int


@dataclass(frozen=True)
class Pod:
    name: str
    containers: dict[str, str]  # container name in the manifest -> podman container name

    def diagnostics(self) -> str:
        return "\n".join(logs(c) for c in self.containers.values())


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def images() -> str:
    """images/build.sh: a no-op when the inputs are unchanged, else a layer-cached build."""
    return build_images(timeout=1500)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("podman")


TLS_DIR = "/etc/dpserve/ledger-tls"


def readable(path: Path) -> None:
    """World-readable files and traversable dirs: the containers run as uid 65532."""
    for item in [path, *path.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)


@pytest.fixture(scope="module")
def artifact(workdir: Path) -> Path:
    """A PATE ensemble on a host directory (the file:// artifact), with the verbatim guard's
    fingerprint file as the trainer writes it."""
    directory = workdir / "models" / "triage" / "v1"
    torch.manual_seed(7)  # weights only; the vote noise comes from OpenDP in the server
    teachers = [build_model(ARCHITECTURE) for _ in range(TEACHERS)]
    save_pate_ensemble(directory, teachers, ARCHITECTURE, labels=LABELS,
                       fingerprints="fingerprints.json")
    write_fingerprint_file(
        ["patient admitted on monday with chest pain and discharged two days later"],
        directory / "fingerprints.json", window_tokens=50,
    )
    readable(directory)
    return directory


@pytest.fixture(scope="module")
def cluster(workdir: Path, artifact: Path) -> Iterator[Cluster]:
    """The embedded API on 127.0.0.1 with a budget and a model from examples/, adapted."""
    kubeconfig = workdir / "kube" / "config"
    server = serve(kubeconfig=kubeconfig)
    try:
        readable(kubeconfig.parent)
        api = Client(server.url)
        namespace = example("namespace.yaml")
        budget = example("budget-rdp.yaml")
        model = example("model-pate-retrain.yaml")
        ns = namespace["metadata"]["name"]
        spec = model["spec"]
        # Adapted to this machine: the artifact is the ensemble built above (file://, a
        # hostPath volume), no TEE (podman runs no confidential VM), one replica (podman
        # runs one pod per Deployment), no retraining (no dataset claim here), and redact
        # instead of block so the test reads the filtered answer.
        spec["model"]["artifact"] = f"file://{artifact}"
        spec["serving"]["replicas"] = 1
        spec["serving"]["mechanism"]["teachers"] = TEACHERS
        spec["confidential"] = {"profile": "none", "required": False}
        spec["outputFilter"]["action"] = "redact"
        spec["onBudgetExhausted"] = "ScaleToZero"
        spec.pop("retraining")
        api.create("/api/v1/namespaces", namespace)
        api.create(f"{GROUP.format(ns=ns)}/privacybudgets", budget)
        api.create(f"{GROUP.format(ns=ns)}/privatemodels", model)
        yield Cluster(server, api, kubeconfig, ns, budget["metadata"]["name"],
                      model["metadata"]["name"])
    finally:
        server.stop()


@pytest.fixture(scope="module")
def operator(images: str, cluster: Cluster, workdir: Path) -> Iterator[Operator]:
    """``dpserve run`` from the operator image, on the host network, against the emulator;
    its ledger serves TLS from a Secret-like directory (a test CA here, the chart's Secret in
    a cluster), and the sidecar verifies it with the CA the operator puts in its ConfigMap."""
    name = f"dpserve-test-operator-{uuid.uuid4().hex[:8]}"
    liveness, ledger, metrics = free_port(), free_port(), free_port()
    tls = workdir / "ledger-tls"
    CertAuthority.create().issue(tls, hosts=("127.0.0.1",))
    readable(tls)
    podman(
        "run", "-d", "--name", name, "--network=host",
        # The chart's securityContext, as podman flags: read-only root (podman mounts a
        # tmpfs on /tmp, the chart an emptyDir), no capabilities, no privilege escalation.
        "--read-only", "--cap-drop=all", "--security-opt=no-new-privileges",
        "-v", f"{cluster.kubeconfig}:/etc/dpserve/kubeconfig:ro",
        "-e", "KUBECONFIG=/etc/dpserve/kubeconfig",
        "-e", "DPSERVE_BIND_ADDRESS=127.0.0.1",
        # The operator's own settings, not adaptations: where its pods find the ledger (in a
        # cluster, the ledger Service) and which inference image they run.
        "-e", f"DPSERVE_LEDGER_URL=https://127.0.0.1:{ledger}",
        "-v", f"{tls}:{TLS_DIR}:ro",
        "-e", f"DPSERVE_LEDGER_TLS_CERT={TLS_DIR}/tls.crt",
        "-e", f"DPSERVE_LEDGER_TLS_KEY={TLS_DIR}/tls.key",
        "-e", f"DPSERVE_LEDGER_TLS_CA={TLS_DIR}/ca.crt",
        "-e", f"DPSERVE_INFERENCE_IMAGE={INFERENCE_IMAGE}",
        # The artifact is a host directory here (single-node development): host paths on.
        "-e", "DPSERVE_ALLOW_HOST_PATH_ARTIFACTS=true",
        OPERATOR_IMAGE,
        "--standalone", "--namespace", cluster.namespace,
        "--liveness-port", str(liveness), "--ledger-port", str(ledger),
        "--metrics-port", str(metrics),
    )
    try:
        wait_for("the operator's liveness endpoint",
                 http_ok(f"http://127.0.0.1:{liveness}/healthz"), 90, lambda: logs(name))
        yield Operator(name, ledger, liveness)
    finally:
        podman("rm", "-f", "-t", "5", name, check=False)


def for_podman(
    deployment: dict[str, Any], configmap: dict[str, Any], token_dir: Path
) -> list[dict[str, Any]]:
    """The operator's Deployment and ConfigMap, changed only where podman cannot follow.

    1. Only the manifest goes in: the API server's metadata (uid, resourceVersion,
       generation, managedFields, owner references) and ``status`` are dropped.
    2. The projected ServiceAccount token volume (podman has no token issuer) becomes a
       hostPath directory holding a token registered with the emulator's TokenReview for
       the model's ServiceAccount, the pod's name and the ledger audience.
    3. The filter's ``ports`` go: with ``--network=host`` podman refuses port mappings, and
       the sidecar's port is the host's port anyway.
    4. The probes go: podman turns httpGet probes into ``curl`` healthchecks run by systemd
       timers; the image ships no curl and CI runs no systemd. The test polls the same
       /healthz and /readyz endpoints itself.
    5. The filter listens on 127.0.0.1 instead of 0.0.0.0: the pod's interfaces are the
       host's here, and 0.0.0.0 would open the sidecar on the CI machine's network. (The
       pod template's filter-config hash annotation is left as rendered.)
    """
    keep = ("name", "namespace", "labels", "annotations")
    deployment = copy.deepcopy(deployment)
    configmap = copy.deepcopy(configmap)
    for obj in (deployment, configmap):
        obj["metadata"] = {k: v for k, v in obj["metadata"].items() if k in keep}
        obj.pop("status", None)
    pod = deployment["spec"]["template"]["spec"]
    (token,) = [v for v in pod["volumes"] if v["name"] == TOKEN_VOLUME]
    assert "projected" in token, token
    token.pop("projected")
    token["hostPath"] = {"path": str(token_dir), "type": "Directory"}
    for container in pod["containers"]:
        container.pop("ports", None)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            container.pop(probe, None)
    config = json.loads(configmap["data"][FILTER_CONFIG_FILE])
    assert config["listenHost"] == "0.0.0.0", config
    config["listenHost"] = "127.0.0.1"
    configmap["data"][FILTER_CONFIG_FILE] = json.dumps(config, indent=2, sort_keys=True)
    return [configmap, deployment]


@pytest.fixture(scope="module")
def pod(cluster: Cluster, operator: Operator, workdir: Path) -> Iterator[Pod]:
    """The operator's Deployment as a real pod: ``podman kube play --network=host``."""
    ns, name = cluster.namespace, cluster.model
    pod_name = f"{deployment_name(name)}-pod-0"  # podman's name for a Deployment's pod
    podman("pod", "rm", "-f", pod_name, check=False)  # left over by an interrupted run
    for port in (FILTER_PORT, MODEL_PORT):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(f"port {port} is taken on this host: the pod's ports are the "
                            "host's with --network=host")
    deployment = wait_for(
        "the operator's Deployment",
        lambda: cluster.api.find(f"/apis/apps/v1/namespaces/{ns}/deployments/"
                                 f"{deployment_name(name)}"),
        60, lambda: logs(operator.container),
    )
    configmap = cluster.api.get(f"/api/v1/namespaces/{ns}/configmaps/"
                                f"{filter_configmap_name(name)}")
    assert configmap["data"][LEDGER_CA_FILE] == (workdir / "ledger-tls" / "ca.crt").read_text()
    token = secrets.token_urlsafe(32)
    # The ledger grants only to a serving pod of the model: the pod's object must exist.
    cluster.server.call(lambda kube: kube.tokens.register(
        token, namespace=ns, service_account=service_account_name(name), pod_name=pod_name,
        pod_uid=kube_serving_pod(kube, name, pod_name, namespace=ns),
        audiences=[TOKEN_AUDIENCE]))
    token_dir = workdir / "token"
    token_dir.mkdir()
    (token_dir / TOKEN_FILE).write_text(token, encoding="utf-8")
    readable(token_dir)
    manifest = workdir / "pod.yaml"
    manifest.write_text(yaml.safe_dump_all(for_podman(deployment, configmap, token_dir)),
                        encoding="utf-8")
    containers = {c: f"{pod_name}-{c}" for c in ("model", "filter")}
    result = Pod(pod_name, containers)
    try:
        podman("kube", "play", "--network=host", "--replace", str(manifest))
        wait_for("the sidecar's /readyz (model loaded, PII analyzer built)",
                 http_ok(f"http://127.0.0.1:{FILTER_PORT}/readyz"), 180, result.diagnostics)
        yield result
    finally:
        podman("kube", "down", str(manifest), check=False)
        podman("pod", "rm", "-f", pod_name, check=False)
        # kube play keeps a ConfigMap's content in a named volume; kube down leaves it.
        podman("volume", "rm", "-f", filter_configmap_name(name), check=False)


# ----------------------------------------------------------------------------- tests


def test_images_run_as_non_root_without_the_other_plane(images: str) -> None:
    for image in (OPERATOR_IMAGE, INFERENCE_IMAGE):
        config = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
        assert config["User"] == f"{RUN_AS}:{RUN_AS}", image
    # The control plane ships no ML runtime; the data plane no Kubernetes client; neither the
    # test kit (dpserve_testkit) nor its emulator (kmock).
    absent = podman("run", "--rm", "--network=none", "--entrypoint", "python", OPERATOR_IMAGE,
                    "-c", "import importlib.util as u; print([m for m in ('torch', 'opacus', "
                    "'dpserve_runtime', 'dpserve_testkit', 'kmock') if u.find_spec(m)])"
                    ).stdout.strip()
    assert absent == "[]"
    absent = podman("run", "--rm", "--network=none", "--entrypoint", "python", INFERENCE_IMAGE,
                    "-c", "import importlib.util as u; print([m for m in ('kopf', "
                    "'kubernetes_asyncio', 'pip', 'dpserve_testkit', 'kmock') "
                    "if u.find_spec(m)])").stdout.strip()
    assert absent == "[]"


def test_neither_image_holds_test_infrastructure(images: str) -> None:
    """images/smoke.py's scan, inside each finished image, over what it installed of dpserve
    and dpserve_runtime: no localkube, demo, fakes, in-memory store, crash hook."""
    smoke = REPO / "images" / "smoke.py"
    expected = {OPERATOR_IMAGE: {"dpserve"}, INFERENCE_IMAGE: {"dpserve", "dpserve_runtime"}}
    for image, packages in expected.items():
        out = podman("run", "--rm", "--network=none", "-v", f"{smoke}:/check/smoke.py:ro",
                     "--entrypoint", "python", image, "/check/smoke.py", "shipped").stdout
        report = json.loads(out)
        # The scan covered the image's own packages (an empty scan would prove nothing).
        assert set(report["scanned"]) == packages, (image, report["scanned"])
        assert all(count > 20 for count in report["scanned"].values()), (image, report)
        assert report["found"] == [], (image, report["found"])


def test_operator_image_runs_restricted_and_reconciles(
    cluster: Cluster, operator: Operator
) -> None:
    check_restricted(operator.container)
    status = wait_for("the budget's status from the operator", lambda: (
        cluster.budget_status() or None), 30, lambda: logs(operator.container))
    ready = {c["type"]: c["status"] for c in status["conditions"]}
    assert ready["Ready"] == "True", status
    assert status["epsilonRemaining"] == example("budget-rdp.yaml")["spec"]["epsilon"]


def check_restricted(container: str) -> None:
    """The Restricted securityContext as the kernel sees it inside ``container``."""
    assert exec_in(container, "id -u", check=True).stdout.strip() == RUN_AS
    assert exec_in(container, "id -g", check=True).stdout.strip() == RUN_AS
    root = exec_in(container, "touch /dpserve-probe")
    assert root.returncode != 0 and "Read-only file system" in root.stderr, root
    tmp = exec_in(container, "touch /tmp/dpserve-probe && rm /tmp/dpserve-probe")
    assert tmp.returncode == 0, tmp
    status = dict(
        line.split(":\t", 1)
        for line in exec_in(container, "cat /proc/self/status", check=True).stdout.splitlines()
        if ":\t" in line
    )
    assert int(status["CapEff"], 16) == 0, "capabilities: drop ALL"
    assert int(status["CapBnd"], 16) == 0, "capabilities: drop ALL (bounding set)"
    assert status["NoNewPrivs"].strip() == "1", "allowPrivilegeEscalation: false"
    assert status["Seccomp"].strip() == "2", "seccompProfile: a filter is loaded"


def test_both_containers_of_the_pod_run(pod: Pod) -> None:
    inspected = json.loads(podman("pod", "inspect", pod.name).stdout)
    states = {c["Name"]: c["State"] for c in inspected["Containers"]}
    for container in pod.containers.values():
        assert states.get(container) == "running", states
    for container in pod.containers.values():
        image = podman("container", "inspect", "--format", "{{.ImageName}}", container)
        assert image.stdout.strip() == INFERENCE_IMAGE


@pytest.mark.parametrize("container", ["model", "filter"])
def test_restricted_security_context_holds_in_the_pod(pod: Pod, container: str) -> None:
    check_restricted(pod.containers[container])


def test_predict_is_answered_under_a_lease_from_the_host_ledger(
    cluster: Cluster, operator: Operator, pod: Pod
) -> None:
    inputs = [[i / 7.0] * INPUT_DIM for i in range(3)]
    status, answer = http("POST", f"http://127.0.0.1:{FILTER_PORT}/v1/predict",
                          {"inputs": inputs}, timeout=30)
    assert status == 200, f"{answer}\n{pod.diagnostics()}"
    assert answer["queries"] == len(inputs)
    assert len(answer["outputs"]) == len(inputs)
    for output in answer["outputs"]:
        assert 0 <= output["label"] < len(LABELS)
        # Presidio ran offline in the read-only sidecar: the address is gone.
        assert "@example.org" not in output["text"], output
        assert "<EMAIL_ADDRESS>" in output["text"], output
    ledger = cluster.budget_status()
    consumer = model_key(cluster.namespace, cluster.model)
    leases = [lease for lease in ledger["leases"] if lease["consumer"] == consumer]
    assert leases and {lease["pod"] for lease in leases} == {pod.name}, ledger["leases"]
    (entry,) = [e for e in ledger["ledger"] if e["consumer"] == consumer and e["kind"] == "query"]
    # Debit before grant: every answered query was covered by a lease already on the ledger
    # (the status keeps recent lease records for idempotent retries, the count keeps all).
    granted = sum(lease["granted"] for lease in leases)
    assert entry["count"] >= max(granted, len(inputs)), json.dumps(ledger, indent=1)
    assert float(ledger["epsilonSpent"]) > 0.0
    assert float(ledger["epsilonRemaining"]) < float(
        example("budget-rdp.yaml")["spec"]["epsilon"])


def listening_addresses(container: str, port: int) -> set[str]:
    """Local addresses (hex, as /proc writes them) of the TCP sockets on which the
    container's main process listens on ``port``.

    /proc/net/tcp lists every socket of the network namespace, the host's with
    --network=host; the process's own sockets are told apart by inode (its fds).
    """
    fds = exec_in(container, "for fd in /proc/1/fd/*; do readlink $fd; done", check=True)
    inodes = {line[len("socket:["):-1] for line in fds.stdout.split()
              if line.startswith("socket:[")}
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        text = exec_in(container, f"cat {table} 2>/dev/null || true").stdout
        for line in text.splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            listening = fields[3] == "0A"  # TCP_LISTEN
            if listening and int(port_hex, 16) == port and fields[9] in inodes:
                addresses.add(address)
    return addresses


def test_model_server_listens_on_loopback_only(pod: Pod) -> None:
    # 0100007F is 127.0.0.1 in /proc's byte order. With --network=host the pod's loopback is
    # the host's, so "reachable only from inside the pod" is not testable here; that the
    # model server binds loopback and nothing else is.
    assert listening_addresses(pod.containers["model"], MODEL_PORT) == {"0100007F"}
    assert listening_addresses(pod.containers["filter"], MODEL_PORT) == set()
    status, _ = http("GET", f"http://127.0.0.1:{MODEL_PORT}/readyz")
    assert status == 200


def test_trainer_runs_in_the_read_only_image(images: str, workdir: Path) -> None:
    """The retraining Job's container (``dpserve-train``) under the same restrictions, as a
    plain container: podman 4.3's kube play does not run Jobs. Data come from scikit-learn's
    bundled digits (no download); the artifact goes to a host directory."""
    output = workdir / "train-output"
    output.mkdir()
    output.chmod(0o777)  # written by uid 65532, as a PVC with fsGroup would allow
    architecture = json.dumps({"type": "mlp", "inputDim": INPUT_DIM, "hiddenDims": [16],
                               "numClasses": 10})
    result = podman(
        "run", "--rm", "--network=none", "--read-only", "--cap-drop=all",
        "--security-opt=no-new-privileges", "-v", f"{output}:/output",
        "--entrypoint", "sh", INFERENCE_IMAGE, "-c",
        "python -m dpserve_runtime.train.datasets export digits /tmp/digits.npz >/dev/null"
        " && dpserve-train --dataset /tmp/digits.npz --output /output/v2 --target-epsilon 3"
        " --delta 1e-5 --epochs 1 --batch-size 128 --max-grad-norm 1.0 --version v2"
        f" --architecture '{architecture}'",
        timeout=300,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["sampling"] == "poisson" and report["version"] == "v2"
    assert 0 < report["epsilon"] <= 3.0
    manifest = json.loads((output / "v2" / "manifest.json").read_text("utf-8"))
    assert manifest["version"] == "v2" and manifest["training"]["steps"] == report["steps"]
    assert (output / "v2" / "fingerprints.json").is_file()
