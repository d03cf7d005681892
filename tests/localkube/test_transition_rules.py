"""LocalKube evaluates the CRDs' transition rules (``oldSelf``) on update, as an API server
does: the PrivateModel's immutability rules refuse an edit over HTTP with 422 and the rule's
message, and admit it while the model has not spent (issue 12, item 3)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dpserve_testkit.localkube import LocalKubeServer, serve
from dpserve_testkit.localkube.client import ApiFailure, Client

PM = "/apis/dpserve.io/v1alpha1/namespaces/{ns}/privatemodels"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKubeServer]:
    srv = serve(kubeconfig=tmp_path_factory.mktemp("kube") / "kubeconfig")
    yield srv
    srv.stop()


@pytest.fixture
def api(server: LocalKubeServer) -> Client:
    return Client(server.url)


_counter = iter(range(10_000))


@pytest.fixture
def ns(api: Client) -> str:
    name = f"tr{next(_counter)}"
    api.create("/api/v1/namespaces", {"metadata": {"name": name}})
    return name


def _model(name: str) -> dict[str, Any]:
    return {"apiVersion": "dpserve.io/v1alpha1", "kind": "PrivateModel",
            "metadata": {"name": name},
            "spec": {"budgetRef": {"name": "b"},
                     "model": {"artifact": "pvc://models/m/v1", "format": "state-dict",
                               "version": "v1"},
                     "serving": {"mechanism": {"type": "laplace-embedding", "epsilon": "0.5"}},
                     "confidential": {"profile": "none", "required": False}}}


def _accept(api: Client, path: str, *, spent: bool) -> None:
    """The operator's status write: what it acts on, and whether the model has spent."""
    obj = api.get(path)
    obj["status"] = {"accepted": {"budgetRef": "b", "artifact": "pvc://models/m/v1",
                                  "version": "v1", "spent": spent},
                     "modelVersion": "v1"}
    api.replace(path + "/status", obj)


def test_budget_ref_is_editable_until_the_model_spends(api: Client, ns: str) -> None:
    path = PM.format(ns=ns) + "/m"
    api.create(PM.format(ns=ns), _model("m"))
    _accept(api, path, spent=False)
    api.merge(path, {"spec": {"budgetRef": {"name": "typo-fixed"}}})  # not spent: admitted
    _accept(api, path, spent=True)
    with pytest.raises(ApiFailure) as info:
        api.merge(path, {"spec": {"budgetRef": {"name": "another"}}})
    assert info.value.status == 422, info.value.body
    assert "spec.budgetRef.name cannot change once the model has spent" in (
        info.value.body["message"])
    assert api.get(path)["spec"]["budgetRef"]["name"] == "typo-fixed"


def test_a_spent_model_needs_a_new_version_for_a_new_artifact(api: Client, ns: str) -> None:
    path = PM.format(ns=ns) + "/m"
    api.create(PM.format(ns=ns), _model("m"))
    _accept(api, path, spent=True)
    with pytest.raises(ApiFailure) as info:
        api.merge(path, {"spec": {"model": {"artifact": "pvc://models/m/v2"}}})
    assert info.value.status == 422
    assert "change only with a new spec.model.version" in info.value.body["message"]
    # With a new version, the same edit is admitted; going back to a served version is not.
    api.merge(path, {"spec": {"model": {"artifact": "pvc://models/m/v2", "version": "v2"}}})
    with pytest.raises(ApiFailure) as info:
        api.merge(path, {"spec": {"model": {"version": "v1"}}})
    assert "must name a version this model has not served yet" in info.value.body["message"]


def test_create_is_not_judged_by_transition_rules(api: Client, ns: str) -> None:
    created = api.create(PM.format(ns=ns), _model("fresh"))
    assert created["metadata"]["generation"] == 1
