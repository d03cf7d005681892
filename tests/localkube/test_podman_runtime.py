"""The podman runtime of the local kubelet: the ``podman run`` a container spec becomes.

No podman needed: these check the command line (the end-to-end scenarios run it for real,
tests/e2e with the ``podman`` parameter).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from dpserve.resources.security import (
    FILTER_RESOURCES,
    container_security_context,
    pod_security_context,
)
from dpserve_testkit.localkube.kubelet import LocalPod
from dpserve_testkit.localkube.kubelet.containers import ContainerError
from dpserve_testkit.localkube.kubelet.podman import (
    PodmanRuntime,
    resource_flags,
    security_context,
    security_flags,
    share_with_group,
)
from dpserve_testkit.localkube.kubelet.volumes import Volume

IMAGE = "localhost/dpserve-inference:dev"
LEDGER_PORT = 18443


def flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def test_the_restricted_profile_becomes_podman_flags() -> None:
    pod_spec = {"securityContext": pod_security_context()}
    container = {"securityContext": container_security_context()}
    context = security_context(pod_spec, container)
    assert security_flags(context, 65532, "model") == [
        "--user", "65532:65532", "--group-add", "65532", "--read-only", "--cap-drop=all",
        "--security-opt=no-new-privileges",
    ]
    # The pod's fields apply where the container states none.
    inherited = security_context({"securityContext": {"runAsUser": 1000}}, {})
    assert security_flags(inherited, None, "x") == ["--user", "1000:1000"]


def test_what_podman_cannot_honour_is_refused_with_the_container_named() -> None:
    with pytest.raises(ContainerError, match="container model: privileged"):
        security_flags({"privileged": True}, None, "model")
    with pytest.raises(ContainerError, match="container filter: runAsNonRoot needs runAsUser"):
        security_flags({"runAsNonRoot": True}, None, "filter")


def test_limits_become_a_memory_cgroup_limit_and_a_cpu_quota() -> None:
    assert resource_flags({"resources": FILTER_RESOURCES.render()}) == [
        "--memory", str(512 * 2**20), "--cpus", "0.25"]
    assert resource_flags({"resources": {"limits": {"memory": "2G", "cpu": "2"}}}) == [
        "--memory", "2000000000", "--cpus", "2"]
    assert resource_flags({}) == []


def make_pod(tmp_path: Path) -> LocalPod:
    spec: dict[str, Any] = {"securityContext": pod_security_context()}
    directory = tmp_path / "pods" / "ns" / "triage-abc"
    directory.mkdir(parents=True)
    return LocalPod(
        name="triage-abc", namespace="ns", ip="127.0.4.7", owner_kind="Deployment",
        owner_name="triage", owner_uid="u", template_hash="h", labels={}, annotations={},
        directory=directory, restart_policy="Always", service_account="triage-dpserve",
        grace_s=1.0, spec=spec,
    )


def filter_container() -> dict[str, Any]:
    return {
        "name": "filter", "image": IMAGE, "command": ["dpserve-filter"],
        "args": ["--config", "/etc/dpserve/filter/filter.json", "--pod", "$(POD_NAME)"],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "DPSERVE_LEDGER_URL", "value": f"http://127.0.0.1:{LEDGER_PORT}"},
            {"name": "UPSTREAM", "value": "http://127.0.0.1:8081"},
        ],
        "volumeMounts": [
            {"name": "filter-config", "mountPath": "/etc/dpserve/filter", "readOnly": True},
            {"name": "models", "mountPath": "/output", "subPath": "triage"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": container_security_context(),
        "resources": FILTER_RESOURCES.render(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def test_a_container_becomes_podman_run_of_its_image(tmp_path: Path) -> None:
    pod = make_pod(tmp_path)
    claim = tmp_path / "pvc" / "models"
    claim.mkdir(parents=True)
    empty = pod.directory / "volumes" / "tmp"
    empty.mkdir(parents=True)
    config = json.dumps({"listenHost": "0.0.0.0", "listenPort": 8080,
                         "upstream": "http://127.0.0.1:8081",
                         "ledgerUrl": f"http://127.0.0.1:{LEDGER_PORT}"})
    volumes = {
        "filter-config": Volume(tmp_path / "unused", {"filter.json": config}, per_container=True),
        "models": Volume(claim, owned=True),
        "tmp": Volume(empty, owned=True),
    }
    runtime = PodmanRuntime(host_ports=[LEDGER_PORT], containers_conf=tmp_path / "c.conf")
    run = runtime.prepare(pod, filter_container(), volumes)
    argv = run.argv

    assert argv[:3] == ["podman", "run", "--rm"]
    assert run.env["CONTAINERS_CONF"] == str(tmp_path / "c.conf")
    assert run.image == IMAGE and run.runtime_id == "lk-ns-triage-abc-filter"
    assert flag_values(argv, "--name") == [run.runtime_id]
    assert {"--pull=never", "--network=host", "--read-only", "--cap-drop=all",
            "--security-opt=no-new-privileges"} <= set(argv)
    assert flag_values(argv, "--user") == ["65532:65532"]
    assert flag_values(argv, "--memory") == [str(512 * 2**20)]
    # The manifest's command is the entrypoint; image, then the args ($(VAR) expanded).
    assert flag_values(argv, "--entrypoint") == ['["dpserve-filter"]']
    assert argv[-5:] == [IMAGE, "--config", "/etc/dpserve/filter/filter.json", "--pod",
                         "triage-abc"]
    # Real mounts at the manifest's paths; configMap files read-only and, like the env,
    # with localhost mapped to the pod's own address (the ledger on the host kept).
    config_dir = pod.directory / "containers" / "filter" / "volumes" / "filter-config"
    assert set(flag_values(argv, "-v")) == {
        f"{config_dir}:/etc/dpserve/filter:ro",
        f"{claim / 'triage'}:/output:rw",
        f"{empty}:/tmp:rw",
        f"{pod.directory / 'filter.termination-log'}:/dev/termination-log",
    }
    written = json.loads((config_dir / "filter.json").read_text("utf-8"))
    assert written["listenHost"] == "127.0.4.7"
    assert written["upstream"] == "http://127.0.4.7:8081"
    assert written["ledgerUrl"] == f"http://127.0.0.1:{LEDGER_PORT}"
    env = dict(e.split("=", 1) for e in flag_values(argv, "--env"))
    assert env["POD_NAME"] == "triage-abc" and env["HOSTNAME"] == "triage-abc"
    assert env["UPSTREAM"] == "http://127.0.4.7:8081"
    assert env["DPSERVE_LEDGER_URL"] == f"http://127.0.0.1:{LEDGER_PORT}"
    assert env["OMP_NUM_THREADS"] == "1"
    assert "PYTHONPATH" not in env  # the image's own environment, not this machine's
    if os.geteuid() == 0:  # fsGroup: the writable PVC and emptyDir now belong to the group
        assert (claim / "triage").stat().st_gid == 65532
        assert empty.stat().st_gid == 65532
        assert (pod.directory / "filter.termination-log").stat().st_uid == 65532


def test_a_container_without_an_image_does_not_start(tmp_path: Path) -> None:
    container = {**filter_container(), "image": ""}
    container.pop("volumeMounts")
    with pytest.raises(ContainerError, match="no image"):
        PodmanRuntime().prepare(make_pod(tmp_path), container, {})


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's group needs root")
def test_fs_group_reowns_a_volume_once(tmp_path: Path) -> None:
    volume = tmp_path / "v"
    (volume / "sub").mkdir(parents=True)
    (volume / "sub" / "f").write_text("x")
    share_with_group(volume, 65532)
    for item in (volume, volume / "sub", volume / "sub" / "f"):
        assert item.stat().st_gid == 65532
        assert item.stat().st_mode & 0o060 == 0o060
    assert volume.stat().st_mode & 0o2000  # new files inherit the group
    # OnRootMismatch: a root that already matches is not walked again.
    (volume / "sub" / "g").write_text("y")
    os.chown(volume / "sub" / "g", -1, 0)
    share_with_group(volume, 65532)
    assert (volume / "sub" / "g").stat().st_gid == 0


def test_host_aliases_and_the_api_token_reach_the_container(tmp_path: Path) -> None:
    pod = make_pod(tmp_path)
    pod.host_aliases = [("127.0.9.3", ["dpserve-ledger.dpserve-system.svc", "ledger"])]
    token = Volume(tmp_path / "unused", {"token": "t", "kubeconfig": "apiVersion: v1\n"},
                   per_container=True)
    container = {"name": "operator", "image": IMAGE, "command": ["dpserve", "run"],
                 "env": [{"name": "DPSERVE_BIND_ADDRESS", "value": "0.0.0.0"},
                         {"name": "IMAGE", "value": "localhost/dpserve-inference:dev"},
                         {"name": "PAGE", "value": "http://localhost/docs"}],
                 "volumeMounts": [{"name": "kube-api-access-x", "readOnly": True,
                                   "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}
    argv = PodmanRuntime().prepare(pod, container, {"kube-api-access-x": token}).argv
    assert flag_values(argv, "--add-host") == ["dpserve-ledger.dpserve-system.svc:127.0.9.3",
                                               "ledger:127.0.9.3"]
    env = dict(e.split("=", 1) for e in flag_values(argv, "--env"))
    assert env["KUBECONFIG"] == "/var/run/secrets/kubernetes.io/serviceaccount/kubeconfig"
    # A wildcard named in the manifest is the pod's own address (its containers share it).
    assert env["DPSERVE_BIND_ADDRESS"] == "127.0.4.7"
    # A local image reference is not an address; a URL's host is.
    assert env["IMAGE"] == "localhost/dpserve-inference:dev"
    assert env["PAGE"] == "http://127.0.4.7/docs"
    # A container that names its own KUBECONFIG keeps it; without a token there is none.
    own = {**container, "env": [{"name": "KUBECONFIG", "value": "/etc/kc"}]}
    argv = PodmanRuntime().prepare(pod, own, {"kube-api-access-x": token}).argv
    assert dict(e.split("=", 1) for e in flag_values(argv, "--env"))["KUBECONFIG"] == "/etc/kc"
    bare = {k: v for k, v in container.items() if k != "volumeMounts"}
    argv = PodmanRuntime().prepare(pod, bare, {}).argv
    assert "KUBECONFIG" not in dict(e.split("=", 1) for e in flag_values(argv, "--env"))
