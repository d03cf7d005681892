"""The process runtime's pod network and API access: Service names in the hosts file, the
``podnet`` hook in a real Python process, and the ServiceAccount token volume."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

from dpserve_testkit.localkube.kubelet.apiaccess import MOUNT_PATH, automounts, with_api_access
from dpserve_testkit.localkube.kubelet.podnet import HOOK_DIR
from dpserve_testkit.localkube.kubelet.pods import ContainerRun, LocalPod
from dpserve_testkit.localkube.kubelet.services import hosts_file


def pod(name: str, ip: str, ready: bool, labels: dict[str, str]) -> LocalPod:
    local = LocalPod(name=name, namespace="ops", ip=ip, owner_kind="Deployment",
                     owner_name="op", owner_uid="u", template_hash="h", labels=labels,
                     annotations={}, directory=Path("/nonexistent"), restart_policy="Always",
                     service_account="default", grace_s=1, spec={})
    local.containers.append(ContainerRun(
        name="c", argv=[], env={}, log_path=Path("/dev/null"),
        termination_path=Path("/dev/null"), fallback_to_logs=False, readiness=None,
        ports={"ledger": 8443}, ready=ready))
    return local


def service(name: str, *, target: object = "ledger", port: int = 8443,
            publish: bool = False) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "ops"},
            "spec": {"selector": {"app": "op"}, "publishNotReadyAddresses": publish,
                     "ports": [{"port": port, "targetPort": target}]}}


def test_hosts_file_lists_ready_endpoints_only() -> None:
    pods = [pod("a", "127.0.1.2", True, {"app": "op"}),
            pod("b", "127.0.1.3", False, {"app": "op"}),
            pod("c", "127.0.1.4", True, {"app": "other"})]
    hosts = hosts_file([service("ledger"), service("metrics", publish=True)], pods)
    lines = hosts.text.splitlines()
    assert "127.0.1.2 ledger.ops.svc.cluster.local ledger.ops.svc ledger.ops" in lines
    assert not any(line.startswith("127.0.1.3 ledger") for line in lines)
    assert sum(line.startswith(("127.0.1.2 metrics", "127.0.1.3 metrics")) for line in lines) == 2
    assert not hosts.problems


def test_a_service_whose_port_differs_from_its_target_is_left_out_and_reported() -> None:
    hosts = hosts_file([service("web", port=80)], [pod("a", "127.0.1.2", True, {"app": "op"})])
    assert hosts.text == "- web.ops.svc.cluster.local web.ops.svc web.ops\n"
    assert "port 80->ledger" in hosts.problems[0]


def run_hooked(code: str, hosts: Path) -> str:
    env = {**os.environ, "LOCALKUBE_POD_IP": "127.0.77.9", "LOCALKUBE_HOSTS": str(hosts),
           "LOCALKUBE_POD_NAMESPACE": "ops",
           "PYTHONPATH": os.pathsep.join([str(HOOK_DIR), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_hook_resolves_service_names_and_binds_the_pod_address(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.1.2 ledger.ops.svc.cluster.local ledger.ops.svc ledger.ops\n"
                     "- empty.ops.svc.cluster.local empty.ops.svc empty.ops\n")
    out = run_hooked(
        "import socket\n"
        "def ip(h):\n"
        "    try: return socket.getaddrinfo(h, 1, type=socket.SOCK_STREAM)[0][4][0]\n"
        "    except socket.gaierror: return 'NXDOMAIN'\n"
        "print(ip('ledger.ops.svc'), ip('ledger'), ip('ledger.ops.svc.cluster.local.'),"
        " ip('empty.ops.svc'), ip('127.0.0.1'))\n"
        "s = socket.socket(); s.bind(('0.0.0.0', 0)); print(s.getsockname()[0])\n",
        hosts)
    resolved, bound = out.splitlines()
    assert resolved.split() == ["127.0.1.2", "127.0.1.2", "127.0.1.2", "NXDOMAIN",
                                "127.0.0.1"]
    assert bound == "127.0.77.9"


def test_outgoing_connections_leave_from_the_pod_address(tmp_path: Path) -> None:
    """As from a pod's interface: the ledger judges a lease request by its source address."""
    hosts = tmp_path / "hosts"
    hosts.write_text("")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    loops = "asyncio.new_event_loop()"
    if importlib.util.find_spec("uvloop") is not None:
        loops += ", __import__('uvloop').new_event_loop()"
    try:
        out = run_hooked(
            "import asyncio, socket\n"
            f"s = socket.socket(); s.connect(('127.0.0.1', {port})); print(s.getsockname()[0])\n"
            "e = socket.socket(); e.bind(('127.0.0.1', 0));"
            f" e.connect(('127.0.0.1', {port})); print(e.getsockname()[0])\n"
            f"for loop in ({loops},):\n"
            f"    _, w = loop.run_until_complete(asyncio.open_connection('127.0.0.1', {port}))\n"
            "    print(w.get_extra_info('sockname')[0]); w.close(); loop.close()\n",
            hosts)
    finally:
        listener.close()
    plain, explicit, *looped = out.splitlines()
    assert plain == "127.0.77.9"
    assert explicit == "127.0.0.1"  # a socket bound on purpose keeps its address
    assert looped and all(address == "127.0.77.9" for address in looped), looped


def test_the_token_volume_is_added_as_the_admission_plugin_does() -> None:
    spec = {"containers": [{"name": "a"}, {"name": "b"}]}
    assert automounts(spec, {"metadata": {"name": "default"}})
    assert not automounts(spec, {"automountServiceAccountToken": False})
    assert not automounts({**spec, "automountServiceAccountToken": False}, None)
    mounted = with_api_access(spec)
    (volume,) = mounted["volumes"]
    assert volume["name"].startswith("kube-api-access-")
    assert {"serviceAccountToken", "downwardAPI"} == {
        k for source in volume["projected"]["sources"] for k in source}
    assert all(c["volumeMounts"] == [{"name": volume["name"], "mountPath": MOUNT_PATH,
                                      "readOnly": True}] for c in mounted["containers"])
    assert spec == {"containers": [{"name": "a"}, {"name": "b"}]}  # not modified in place
