"""A real kubectl's ordinary commands against LocalKube (the kubectl the demo ships).

kubectl's typed generators send protobuf bodies; ``get -o yaml``, patches of every type,
``delete`` and ``get --watch`` must behave as on a cluster.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dpserve_testkit.localkube import LocalKubeServer, serve

KUBECTL = Path(sys.executable).parent / "kubectl"
pytestmark = pytest.mark.skipif(not KUBECTL.exists(), reason="the demo's kubectl is not installed")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKubeServer]:
    srv = serve(kubeconfig=tmp_path_factory.mktemp("kube") / "kubeconfig")
    yield srv
    srv.stop()


def kubectl(server: LocalKubeServer, *args: str, check: bool = True) -> str:
    env = {**os.environ, "KUBECONFIG": str(server.kubeconfig)}
    done = subprocess.run([str(KUBECTL), *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    if check:
        assert done.returncode == 0, done.stderr
    return done.stdout


def test_create_get_patch_delete_namespace_and_configmap(server: LocalKubeServer) -> None:
    assert "namespace/kc created" in kubectl(server, "create", "namespace", "kc")
    ns = yaml.safe_load(kubectl(server, "get", "namespace", "kc", "-o", "yaml"))
    assert ns["metadata"]["name"] == "kc" and ns["status"]["phase"] == "Active"
    assert "generateName" not in ns["metadata"]

    kubectl(server, "create", "configmap", "c", "-n", "kc", "--from-literal=a=1")
    kubectl(server, "create", "secret", "generic", "s", "-n", "kc", "--from-literal=k=v")
    kubectl(server, "create", "serviceaccount", "sa", "-n", "kc")
    kubectl(server, "patch", "configmap", "c", "-n", "kc", "-p", '{"data":{"b":"2"}}')
    kubectl(server, "patch", "configmap", "c", "-n", "kc", "--type=merge",
            "-p", '{"data":{"m":"3"}}')
    kubectl(server, "patch", "configmap", "c", "-n", "kc", "--type=json",
            "-p", '[{"op":"add","path":"/data/j","value":"4"}]')
    kubectl(server, "label", "configmap", "c", "-n", "kc", "team=x")
    cm = yaml.safe_load(kubectl(server, "get", "configmap", "c", "-n", "kc", "-o", "yaml"))
    assert cm["data"] == {"a": "1", "b": "2", "m": "3", "j": "4"}
    assert cm["metadata"]["labels"] == {"team": "x"}
    secret = yaml.safe_load(kubectl(server, "get", "secret", "s", "-n", "kc", "-o", "yaml"))
    assert secret["data"] == {"k": "dg=="}
    assert "sa" in kubectl(server, "get", "serviceaccounts", "-n", "kc", "-o", "name")

    kubectl(server, "delete", "configmap", "c", "-n", "kc")
    gone = subprocess.run(
        [str(KUBECTL), "get", "configmap", "c", "-n", "kc"], capture_output=True, text=True,
        env={**os.environ, "KUBECONFIG": str(server.kubeconfig)}, timeout=60, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    kubectl(server, "delete", "namespace", "kc")


def test_get_watch_streams_new_objects(server: LocalKubeServer) -> None:
    kubectl(server, "create", "namespace", "kw")
    env = {**os.environ, "KUBECONFIG": str(server.kubeconfig)}
    watch = subprocess.Popen(
        [str(KUBECTL), "get", "configmaps", "-n", "kw", "--watch", "-o", "name"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert watch.stdout is not None
    stdout = watch.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        # Create repeatedly until the watch reports one: the watch may start after the first.
        for i in range(20):
            kubectl(server, "create", "configmap", f"w{i}", "-n", "kw")
            try:
                line = lines.get(timeout=3)
            except queue.Empty:
                continue
            assert line.strip().startswith("configmap/w")
            break
        else:
            pytest.fail("kubectl get --watch reported nothing")
    finally:
        watch.terminate()
        watch.wait(timeout=10)
