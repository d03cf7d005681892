"""The local kubelet on its own: path/address mapping, and small real processes on LocalKube."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import wait_until

from dpserve_testkit.localkube import LocalKubeServer
from dpserve_testkit.localkube.client import Client
from dpserve_testkit.localkube.kubelet import (
    KubeletThread,
    LocalKubelet,
    Rewriter,
    ServerTokens,
    cpu_threads,
    expand_references,
    template_hash,
)

PY = Path(sys.executable).name


def test_rewriter_maps_mounts_on_path_boundaries_in_one_pass(tmp_path: Path) -> None:
    rewrite = Rewriter({"/models/current": tmp_path / "tmp" / "m", "/tmp": tmp_path / "t",
                        "/data": tmp_path / "d"}, "127.0.3.4", host_ports=[9443])
    # The replacement contains "/tmp": it is not rewritten a second time.
    assert rewrite("--artifact /models/current") == f"--artifact {tmp_path}/tmp/m"
    assert rewrite('"/models/current/fingerprints.json"') == \
        f'"{tmp_path}/tmp/m/fingerprints.json"'
    assert rewrite("/tmp") == str(tmp_path / "t")
    assert rewrite("/database /x/data /data2 /data") == f"/database /x/data /data2 {tmp_path}/d"
    assert rewrite("http://127.0.0.1:8081") == "http://127.0.3.4:8081"
    assert rewrite('{"listenHost": "0.0.0.0"}') == '{"listenHost": "127.0.3.4"}'
    assert rewrite("localhost:80 127.0.0.10") == "127.0.3.4:80 127.0.0.10"
    # The host's own services (the operator's ledger) keep their address.
    assert rewrite("http://127.0.0.1:9443/v1") == "http://127.0.0.1:9443/v1"


def test_references_threads_and_hashes() -> None:
    env = {"A": "1", "B": "two"}
    assert expand_references("$(A)-$(B)-$(C)-$$(A)", env) == "1-two-$(C)-$(A)"
    cores = os.cpu_count() or 1
    assert [cpu_threads(v) for v in ("500m", "1", "2.5", None, "x")] == [1, 1, min(3, cores), 1, 1]
    assert template_hash({"a": 1}) == template_hash({"a": 1}) != template_hash({"a": 2})
    assert len(template_hash({})) == 10


class Local:
    def __init__(self, server: LocalKubeServer, kubelet: KubeletThread, root: Path) -> None:
        self.server = server
        self.kubelet = kubelet
        self.api = Client(server.url)
        self.root = root

    def pods(self, ns: str) -> list[dict[str, Any]]:
        return self.api.items(f"/api/v1/namespaces/{ns}/pods")


@pytest.fixture()
def local(tmp_path: Path) -> Iterator[Local]:
    server = LocalKubeServer(kubeconfig=tmp_path / "kubeconfig", install_crds=False).start()
    try:
        kubelet = KubeletThread(lambda: LocalKubelet(
            server.url, tmp_path / "pods", tokens=ServerTokens(server),
            pvc_root=tmp_path / "pvc", poll_interval=0.1)).start()
        try:
            Client(server.url).create("/api/v1/namespaces", {"metadata": {"name": "t"}})
            yield Local(server, kubelet, tmp_path)
        finally:
            kubelet.stop()
    finally:
        server.stop()


def _http_server_container(marker: str) -> dict[str, Any]:
    # Serves the config directory: the file shows how the kubelet rewrote it.
    return {
        "name": "web", "command": [PY, "-m", "http.server", "--bind", "127.0.0.1",
                                   "--directory", "/etc/cfg", "8080"],
        "env": [{"name": "MARKER", "value": marker},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"},
                         {"name": "tok", "mountPath": "/var/run/tok"}],
    }


def _deployment(marker: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                     "serviceAccountName": "web-sa",
                     "containers": [_http_server_container(marker)],
                     "volumes": [
                         {"name": "cfg", "configMap": {"name": "cfg"}},
                         {"name": "tok", "projected": {"sources": [{"serviceAccountToken": {
                             "audience": "aud", "path": "token"}}]}},
                     ]}}},
    }


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def test_deployment_runs_rolls_and_scales_to_zero(local: Local) -> None:
    api = local.api
    api.create("/api/v1/namespaces/t/configmaps", {"metadata": {"name": "cfg"}, "data": {
        "conf.json": json.dumps({"token": "/var/run/tok/token",
                                 "upstream": "http://127.0.0.1:8081"})}})
    api.create("/apis/apps/v1/namespaces/t/deployments", _deployment("one"))
    first = wait_until(lambda: local.kubelet.endpoints("t", "web"), what="a ready pod")
    config = json.loads(_get(first[0] + "/conf.json"))
    ip = first[0].split("//")[1].split(":")[0]
    assert ip.startswith("127.0.") and not ip.startswith("127.0.0.")
    assert config["upstream"] == f"http://{ip}:8081"
    token = Path(config["token"]).read_text()
    review = api.create("/apis/authentication.k8s.io/v1/tokenreviews",
                        {"spec": {"token": token, "audiences": ["aud"]}})
    assert review["status"]["authenticated"] is True
    assert review["status"]["user"]["username"] == "system:serviceaccount:t:web-sa"

    status = wait_until(lambda: (d := api.get("/apis/apps/v1/namespaces/t/deployments/web"))
                        .get("status", {}).get("readyReplicas") == 1 and d["status"],
                        what="Deployment status")
    assert status["observedGeneration"] == 1 and status["updatedReplicas"] == 1
    [pod] = local.pods("t")
    assert pod["status"]["podIP"] == ip and pod["status"]["phase"] == "Running"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Deployment"

    # A template change rolls: the new pod is ready before the old one goes.
    api.merge("/apis/apps/v1/namespaces/t/deployments/web", {"spec": {"template": {"spec": {
        "containers": [_http_server_container("two")]}}}})
    # (Both may be ready for a moment; then only the new one is left.)
    wait_until(lambda: (e := local.kubelet.endpoints("t", "web")) and len(e) == 1
               and e != first, what="the rolled pod alone")
    wait_until(lambda: len(local.pods("t")) == 1, what="the old pod gone")
    # Its token went with it.
    gone = api.create("/apis/authentication.k8s.io/v1/tokenreviews", {"spec": {"token": token}})
    assert gone["status"]["authenticated"] is False

    api.merge("/apis/apps/v1/namespaces/t/deployments/web", {"spec": {"replicas": 0}})
    wait_until(lambda: not local.kubelet.endpoints("t", "web") and not local.pods("t"),
               what="scaled to zero")


def test_recreate_stops_the_old_pod_before_starting_the_new_one(local: Local) -> None:
    api = local.api
    api.create("/api/v1/namespaces/t/configmaps", {"metadata": {"name": "cfg"}, "data": {}})
    recreate = _deployment("one")
    recreate["spec"]["strategy"] = {"type": "Recreate"}
    api.create("/apis/apps/v1/namespaces/t/deployments", recreate)
    first = wait_until(lambda: local.kubelet.endpoints("t", "web"), what="a ready pod")
    # The new version takes a while to become ready: a rolling update would overlap then.
    slow = _http_server_container("two")
    slow["command"] = [PY, "-c", "import runpy, sys, time; time.sleep(1.5); sys.argv = "
                       "['http.server', '--bind', '127.0.0.1', '--directory', '/etc/cfg', "
                       "'8080']; runpy.run_module('http.server', run_name='__main__')"]
    api.merge("/apis/apps/v1/namespaces/t/deployments/web", {"spec": {"template": {"spec": {
        "containers": [slow]}}}})
    most = 0

    def rolled() -> bool:
        nonlocal most
        running = local.kubelet.call(lambda k: [
            p for p in k.pods("t", "web") if any(c.running for c in p.containers)])
        most = max(most, len(running))
        endpoints = local.kubelet.endpoints("t", "web")
        return bool(endpoints) and endpoints != first

    wait_until(rolled, what="the recreated pod ready")
    # A RollingUpdate would have run both until the new one was ready.
    assert most == 1


def _job(name: str, code: str, backoff: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": backoff, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "train", "command": [PY, "-c", code],
                            "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "env": [{"name": "TERMINATION_MESSAGE_PATH",
                                     "value": "/dev/termination-log"}]}]}}},
    }


def _condition(obj: dict[str, Any], kind: str) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return str(cond["status"])
    return None


def test_jobs_report_through_termination_messages_and_retry(local: Local) -> None:
    api = local.api
    ok = ("import json, os; open(os.environ['TERMINATION_MESSAGE_PATH'], 'w')"
          ".write(json.dumps({'epsilon': 1.5}))")
    api.create("/apis/batch/v1/namespaces/t/jobs", _job("ok", ok))
    api.create("/apis/batch/v1/namespaces/t/jobs", _job("bad", "print('boom'); raise "
                                                         "SystemExit(4)", backoff=1))
    done = wait_until(lambda: (j := api.get("/apis/batch/v1/namespaces/t/jobs/ok"))
                      and _condition(j, "Complete") == "True" and j, what="Job ok complete")
    assert done["status"]["succeeded"] == 1
    [pod] = api.items("/api/v1/namespaces/t/pods?labelSelector=job-name%3Dok")
    [state] = pod["status"]["containerStatuses"]
    assert state["state"]["terminated"]["exitCode"] == 0
    assert json.loads(state["state"]["terminated"]["message"]) == {"epsilon": 1.5}
    assert pod["status"]["phase"] == "Succeeded"

    failed = wait_until(lambda: (j := api.get("/apis/batch/v1/namespaces/t/jobs/bad"))
                        and _condition(j, "Failed") == "True" and j, what="Job bad failed")
    assert failed["status"]["failed"] == 2  # backoffLimit 1: the first try and one retry
    pods = api.items("/api/v1/namespaces/t/pods?labelSelector=job-name%3Dbad")
    assert len(pods) == 2
    for pod in pods:
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert terminated["exitCode"] == 4 and "boom" in terminated["message"]  # log fallback


def test_crash_looping_container_is_reported(local: Local) -> None:
    api = local.api
    api.create("/apis/apps/v1/namespaces/t/deployments", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "crash"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "c"}},
                 "template": {"metadata": {"labels": {"app": "c"}}, "spec": {"containers": [
                     {"name": "c", "command": [PY, "-c", "raise SystemExit(3)"]}]}}}})
    status = wait_until(
        lambda: (p := local.pods("t")) and (cs := p[0]["status"]["containerStatuses"][0])
        and cs["restartCount"] >= 1 and cs, timeout_s=30, what="a restart")
    assert status["lastState"]["terminated"]["exitCode"] == 3
    waiting = wait_until(
        lambda: local.pods("t")[0]["status"]["containerStatuses"][0]["state"].get("waiting"),
        timeout_s=30, what="back-off")
    assert waiting["reason"] == "CrashLoopBackOff"
    deployment = api.get("/apis/apps/v1/namespaces/t/deployments/crash")
    assert deployment["status"]["readyReplicas"] == 0


# Answers /healthz twice, then 500: a liveness probe sees it fail.
_TIRING_SERVER = """
import http.server
served = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global served
        served += 1
        self.send_response(200 if served <= 2 else 500)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", 8080), H).serve_forever()
"""


def _probed(name: str, code: str, **probes: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {
                     "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "command": [PY, "-c", code],
                                     "ports": [{"name": "http", "containerPort": 8080}],
                                     **probes}]}}}}


def test_a_container_failing_its_liveness_probe_is_killed_and_restarted(local: Local) -> None:
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1,
             "failureThreshold": 2, "timeoutSeconds": 1}
    local.api.create("/apis/apps/v1/namespaces/t/deployments",
                     _probed("tiring", _TIRING_SERVER, livenessProbe=probe))
    status = wait_until(
        lambda: (p := local.pods("t")) and (cs := p[0]["status"]["containerStatuses"][0])
        and cs["restartCount"] >= 1 and cs, timeout_s=60, what="a restart after liveness")
    # Killed by the kubelet (SIGTERM), not exited on its own.
    assert status["lastState"]["terminated"]["exitCode"] != 0, status
    wait_until(lambda: "running" in local.pods("t")[0]["status"]["containerStatuses"][0]
               ["state"], timeout_s=60, what="running again")


def test_a_container_never_passing_its_startup_probe_is_killed(local: Local) -> None:
    # Never listens: the startup probe's budget (1 s x 2) runs out; liveness never starts.
    probes = {"startupProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1,
                               "failureThreshold": 2},
              "livenessProbe": {"httpGet": {"path": "/", "port": "http"}}}
    local.api.create("/apis/apps/v1/namespaces/t/deployments",
                     _probed("mute", "import time; time.sleep(3600)", **probes))
    status = wait_until(
        lambda: (p := local.pods("t")) and (cs := p[0]["status"]["containerStatuses"][0])
        and cs["restartCount"] >= 1 and cs, timeout_s=60, what="a restart after startup")
    assert status["lastState"]["terminated"]["exitCode"] != 0, status
    assert status["ready"] is False


def test_unsupported_volume_is_a_container_error_not_a_crash(local: Local) -> None:
    api = local.api
    api.create("/apis/apps/v1/namespaces/t/deployments", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "img"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "i"}},
                 "template": {"metadata": {"labels": {"app": "i"}}, "spec": {
                     "containers": [{"name": "c", "command": [PY, "-c", "pass"]}],
                     "volumes": [{"name": "m", "image": {"reference": "r/x:1"}}]}}}})
    waiting = wait_until(
        lambda: (p := local.pods("t")) and p[0]["status"]["containerStatuses"][0]["state"]
        .get("waiting"), timeout_s=15, what="a waiting container")
    assert waiting["reason"] == "CreateContainerConfigError"
    assert "image volumes are not supported" in waiting["message"]
    syncs = local.kubelet.call(lambda k: k.syncs)
    wait_until(lambda: local.kubelet.call(lambda k: k.syncs) > syncs + 2,
               what="the kubelet syncing on")  # a container error does not stop it
