"""A lease is granted only to a serving pod of the model, asking from its own address
(issue 13, items 1 and 10): the bound token's pod must exist (the same pod, by uid), carry the
model's serving labels, be controlled by the model's Deployment (through its ReplicaSet), and
the connection must come from one of the pod's IPs.

The LocalKube tests run the ledger over HTTP on loopback against the LocalKube API server;
a client binds its source address to play a pod (LocalKube pods live on 127.0.<n>.<m>).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from kubernetes_asyncio import client, config
from ledger_helpers import (
    NS,
    PATE,
    FakeReviewer,
    add_serving_pod,
    budget_spec,
    kube_serving_pod,
    lease_body,
    make_service,
    model_spec,
)
from prometheus_client import CollectorRegistry

from dpserve.ledger.auth import AUDIENCE, KubeTokenReviewer
from dpserve.ledger.service import LeaseFailure, LedgerService
from dpserve.ledger.settings import LedgerSettings
from dpserve.ledger.store import KubeStore
from dpserve.resources.names import deployment_name
from dpserve_testkit.localkube import LocalKube, serving
from dpserve_testkit.memory_store import MemoryStore

POD_IP = "127.0.0.7"  # the pod's address; a client bound to it plays the pod
OTHER_IP = "127.0.0.9"


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[tuple[LocalKube, client.ApiClient]]:
    kubeconfig = tmp_path / "kubeconfig"
    async with serving(kubeconfig=kubeconfig) as (emulator, _url):
        emulator.store.create(emulator.kind("v1", "namespaces"), None, {"metadata": {"name": NS}})
        pb = emulator.kind("dpserve.io/v1alpha1", "privacybudgets")
        emulator.store.create(pb, NS, {"metadata": {"name": "patients"}, "spec": budget_spec()})
        pm = emulator.kind("dpserve.io/v1alpha1", "privatemodels")
        emulator.store.create(pm, NS, {"metadata": {"name": "triage"}, "spec": model_spec(PATE)})
        emulator.store.create(pm, NS, {"metadata": {"name": "other"}, "spec": model_spec(PATE)})
        configuration = client.Configuration()
        await config.load_kube_config(config_file=str(kubeconfig),
                                      client_configuration=configuration)
        async with client.ApiClient(configuration=configuration) as api:
            yield emulator, api


@pytest.fixture
async def ledger(kube: tuple[LocalKube, client.ApiClient]) -> AsyncIterator[str]:
    _, api = kube
    service = LedgerService(KubeStore(api), KubeTokenReviewer(api), settings=LedgerSettings(),
                            registry=CollectorRegistry())
    server = TestServer(service.app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url(""))
    await server.close()
    await service.stop()


def _token(emulator: LocalKube, token: str, pod: str, pod_uid: str | None) -> str:
    emulator.tokens.register(token, namespace=NS, service_account="triage-dpserve",
                             pod_name=pod, pod_uid=pod_uid, audiences=[AUDIENCE])
    return token


async def _lease(url: str, token: str, pod: str, lease_id: str,
                 source: str = POD_IP) -> tuple[int, dict[str, Any]]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session, session.post(
        f"{url}/v1/leases", data=json.dumps(lease_body(lease_id, pod=pod)).encode(),
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        return response.status, await response.json()


async def test_the_serving_pod_leases_from_its_own_address_only(
    kube: tuple[LocalKube, client.ApiClient], ledger: str,
) -> None:
    emulator, _ = kube
    token = _token(emulator, "tok-0", "triage-0",
                   kube_serving_pod(emulator, "triage", "triage-0", namespace=NS, ip=POD_IP))
    status, body = await _lease(ledger, token, "triage-0", "lease-own-0001")
    assert status == 200, body
    # The same token from another address: a sniffed token is no use elsewhere.
    status, body = await _lease(ledger, token, "triage-0", "lease-own-0002", source=OTHER_IP)
    assert status == 403 and body["reason"] == "Forbidden", body
    assert body["message"].startswith(f"source: the request comes from {OTHER_IP}"), body


async def test_a_token_whose_pod_does_not_exist_is_refused(
    kube: tuple[LocalKube, client.ApiClient], ledger: str,
) -> None:
    emulator, _ = kube
    token = _token(emulator, "tok-ghost", "triage-ghost", "0000-ghost")
    status, body = await _lease(ledger, token, "triage-ghost", "lease-ghost-0001")
    assert status == 403, body
    assert body["message"] == f"pod: 'triage-ghost' does not exist in namespace {NS}"


async def test_a_token_of_an_earlier_pod_of_the_same_name_is_refused(
    kube: tuple[LocalKube, client.ApiClient], ledger: str,
) -> None:
    emulator, _ = kube
    kube_serving_pod(emulator, "triage", "triage-0", namespace=NS, ip=POD_IP)
    token = _token(emulator, "tok-old", "triage-0", "uid-of-a-deleted-pod")
    status, body = await _lease(ledger, token, "triage-0", "lease-old-0001")
    assert status == 403, body
    assert body["message"].startswith(
        "pod: the token was issued for pod 'triage-0' uid uid-of-a-deleted-pod"), body


async def test_a_pod_of_another_model_or_of_nobody_is_refused(
    kube: tuple[LocalKube, client.ApiClient], ledger: str,
) -> None:
    emulator, _ = kube
    # A pod of another model's Deployment, labelled as triage's: the chain tells.
    uid = kube_serving_pod(emulator, "other", "intruder-0", namespace=NS, ip=POD_IP)
    pods = emulator.kind("v1", "pods")
    pod = emulator.store.get(pods, NS, "intruder-0")
    pod["metadata"]["labels"]["dpserve.io/model"] = "triage"
    pod["metadata"]["labels"]["app.kubernetes.io/instance"] = "triage"
    emulator.store.update(pods, NS, "intruder-0", pod)
    token = _token(emulator, "tok-intruder", "intruder-0", uid)
    status, body = await _lease(ledger, token, "intruder-0", "lease-intr-0001")
    assert status == 403, body
    assert body["message"] == (
        f"pod: 'intruder-0' is controlled by Deployment {deployment_name('other')!r}, not by "
        f"the model's Deployment {deployment_name('triage')!r}"), body
    # A bare pod under the model's ServiceAccount, with the labels but no owner.
    bare = emulator.store.create(pods, NS, {
        "metadata": {"name": "bare-0", "labels": {"dpserve.io/model": "triage",
                                                  "app.kubernetes.io/component": "inference"}},
        "spec": {"containers": [{"name": "m", "image": "x"}]},
        "status": {"phase": "Running", "podIP": POD_IP},
    })
    token = _token(emulator, "tok-bare", "bare-0", bare["metadata"]["uid"])
    status, body = await _lease(ledger, token, "bare-0", "lease-bare-0001")
    assert status == 403, body
    assert "is controlled by nothing, not by the model's Deployment" in body["message"], body


# --------------------------------------------------------------------- on MemoryStore


async def test_the_replica_set_chain_is_followed_and_verified_pods_are_cached(
    store: MemoryStore,
) -> None:
    reviewer = FakeReviewer(store=store)
    reviewer.add("tok-a", "triage", pod="triage-a")  # pod -> ReplicaSet -> Deployment
    service = make_service(store, reviewer)
    reads: list[str] = []
    inner = store.get_pod

    async def counted(namespace: str, name: str) -> Any:
        reads.append(name)
        return await inner(namespace, name)

    store.get_pod = counted  # type: ignore[method-assign]
    for index in range(3):
        body = json.dumps(lease_body(f"lease-rs-{index:04d}", pod="triage-a")).encode()
        assert (await service.lease(body, "Bearer tok-a")).granted >= 1
    assert reads == ["triage-a"]  # one read, then the cache


async def test_a_gone_replica_set_or_a_foreign_deployment_is_refused(
    store: MemoryStore,
) -> None:
    reviewer = FakeReviewer(store=store)
    reviewer.add("tok-b", "triage", pod="triage-b")
    store.delete_raw("replicasets", NS, f"{deployment_name('triage')}-5d8f7c")
    service = make_service(store, reviewer)
    body = json.dumps(lease_body("lease-gone-0001", pod="triage-b")).encode()
    with pytest.raises(LeaseFailure) as info:
        await service.lease(body, "Bearer tok-b")
    assert info.value.http_status == 403
    assert (f"ReplicaSet '{deployment_name('triage')}-5d8f7c', which is gone"
            in info.value.error.message)
    # The Deployment of that name is somebody else's, not the PrivateModel's.
    add_serving_pod(store, "triage", "triage-c", via_replica_set=False)
    deployment = store.objects[("deployments", NS, deployment_name("triage"))]
    deployment["metadata"]["ownerReferences"] = []
    reviewer.add("tok-c", "triage", pod="triage-c")
    body = json.dumps(lease_body("lease-foreign-0001", pod="triage-c")).encode()
    with pytest.raises(LeaseFailure) as info:
        await service.lease(body, "Bearer tok-c")
    assert info.value.error.message == (
        f"pod: Deployment {deployment_name('triage')!r} is not controlled by PrivateModel "
        f"{NS}/triage")


async def test_a_terminated_pod_is_refused(store: MemoryStore) -> None:
    reviewer = FakeReviewer(store=store)
    reviewer.add("tok-d", "triage", pod="triage-d")
    store.objects[("pods", NS, "triage-d")]["status"]["phase"] = "Failed"
    service = make_service(store, reviewer)
    body = json.dumps(lease_body("lease-dead-0001", pod="triage-d")).encode()
    with pytest.raises(LeaseFailure) as info:
        await service.lease(body, "Bearer tok-d")
    assert info.value.error.message == "pod: 'triage-d' has terminated (phase Failed)"


def test_the_source_check_can_be_turned_off_and_a_bad_value_is_named() -> None:
    assert LedgerSettings.from_env({}).check_source_address is True
    off = LedgerSettings.from_env({"DPSERVE_LEDGER_CHECK_SOURCE_ADDRESS": "false"})
    assert off.check_source_address is False
    with pytest.raises(ValueError, match="DPSERVE_LEDGER_CHECK_SOURCE_ADDRESS"):
        LedgerSettings.from_env({"DPSERVE_LEDGER_CHECK_SOURCE_ADDRESS": "maybe"})
