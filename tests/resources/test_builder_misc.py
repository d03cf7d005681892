"""ConfigMap, Service, ServiceAccount, NetworkPolicies, PodDisruptionBudget, ownership."""

from __future__ import annotations

import json

import pytest

from dpserve.api.filterconfig import FilterConfig
from dpserve.resources.configmap import build_configmap
from dpserve.resources.deployment import build_deployment
from dpserve.resources.job import build_job
from dpserve.resources.networkpolicy import build_networkpolicy, build_training_networkpolicy
from dpserve.resources.poddisruptionbudget import build_poddisruptionbudget
from dpserve.resources.service import build_service, endpoint
from dpserve.resources.serviceaccount import build_serviceaccount


def filter_json(model, ctx) -> dict:
    return json.loads(build_configmap(model, ctx)["data"]["filter.json"])


def test_filter_config_fields(make_model, make_ctx):
    model = make_model()
    ctx = make_ctx(model)
    cm = build_configmap(model, ctx)
    assert cm["metadata"]["name"] == "triage-filter"
    assert list(cm["data"]) == ["filter.json"]
    config = filter_json(model, ctx)
    FilterConfig.model_validate(config)  # the sidecar's own model accepts it
    assert config["model"] == "clinical-ml/triage"
    assert config["modelVersion"] == "v1"
    assert config["mechanism"] == {"type": "pate", "teachers": 50, "noiseMultiplier": "40"}
    assert config["upstream"] == "http://127.0.0.1:8081"
    assert config["listenPort"] == 8080
    assert config["ledgerUrl"] == ctx.ledger_url
    assert config["tokenPath"] == "/var/run/secrets/dpserve/token"
    assert config["fingerprintPath"] == "/models/current/fingerprints.json"
    assert config["outputFilter"]["action"] == "redact"
    assert config["outputFilter"]["entities"] == sorted(
        ["EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN", "CREDIT_CARD"]
    )
    assert config["lease"] == {"initialSize": 64, "maxSize": 4096, "prefetchFraction": 0.25}
    assert "partitionHeader" not in config


def test_filter_config_names_the_served_version(make_model, make_ctx):
    # After a retrain the sidecar asks for leases of the new version (charged to its budget).
    v2 = make_model(status={"modelVersion": "v2", "artifact": "pvc://models/triage/v2",
                            "budget": "patients-v2"})
    ctx = make_ctx(v2)
    assert ctx.model_version == "v2"
    assert filter_json(v2, ctx)["modelVersion"] == "v2"
    v1 = make_model()
    assert filter_json(v1, make_ctx(v1))["modelVersion"] == "v1"


def test_fingerprint_path_only_with_the_verbatim_guard(make_model, make_ctx):
    model = make_model(spec={"outputFilter": {"verbatimGuard": {"enabled": False}}})
    assert "fingerprintPath" not in filter_json(model, make_ctx(model))


def test_partition_header_only_for_laplace_embedding(make_model, make_ctx):
    laplace = make_model(
        spec={
            "model": {"format": "state-dict"},
            "serving": {
                "mechanism": {
                    "type": "laplace-embedding",
                    "epsilon": "0.5",
                    "teachers": None,
                    "noiseMultiplier": None,
                }
            },
            "retraining": {"mode": "dpsgd", "teachers": None},
        }
    )
    assert (
        filter_json(laplace, make_ctx(laplace, partition_header="X-Tenant"))["partitionHeader"]
        == "X-Tenant"
    )
    pate = make_model()
    assert "partitionHeader" not in filter_json(pate, make_ctx(pate, partition_header="X-Tenant"))


def test_service_exposes_only_the_sidecar(make_model, make_ctx):
    model = make_model()
    ctx = make_ctx(model)
    svc = build_service(model, ctx)
    assert svc["metadata"]["name"] == "triage"
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    assert (
        svc["spec"]["selector"] == build_deployment(model, ctx)["spec"]["selector"]["matchLabels"]
    )
    assert endpoint(model) == "http://triage.clinical-ml.svc:8080"


def test_service_selector_never_matches_training_pods(make_model, make_ctx):
    model = make_model()
    ctx = make_ctx(model)
    selector = build_service(model, ctx)["spec"]["selector"]
    train_labels = build_job(model, ctx)["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= train_labels.items()


def test_serviceaccount(make_model, make_ctx):
    model = make_model()
    sa = build_serviceaccount(model, make_ctx(model))
    assert sa["metadata"]["name"] == "triage-dpserve"
    assert sa["automountServiceAccountToken"] is False


def test_networkpolicy_shape(make_model, make_ctx):
    model = make_model()
    ctx = make_ctx(model)
    np = build_networkpolicy(model, ctx)
    spec = np["spec"]
    assert (
        spec["podSelector"]["matchLabels"]
        == build_deployment(model, ctx)["spec"]["selector"]["matchLabels"]
    )
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8080}]}]
    # No DNS by default: the ledger is reached through its pinned ClusterIP (hostAliases).
    (ledger,) = spec["egress"]
    assert ledger == {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "dpserve-system"}
                },
                "podSelector": {"matchLabels": dict(ctx.operator_pod_labels)},
            }
        ],
        "ports": [{"protocol": "TCP", "port": 8443}],
    }


def test_networkpolicy_dns_only_when_the_operator_allows_it(make_model, make_ctx):
    model = make_model()
    spec = build_networkpolicy(model, make_ctx(model, dns_egress=True))["spec"]
    ledger, dns = spec["egress"]
    assert ledger["ports"] == [{"protocol": "TCP", "port": 8443}]
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert sorted((p["protocol"], p["port"]) for p in dns["ports"]) == [("TCP", 53), ("UDP", 53)]


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("https://ledger.ops.svc", 443),
        ("http://ledger.ops.svc", 80),
        ("https://ledger.ops.svc:9443/v1", 9443),
    ],
)
def test_networkpolicy_ledger_port_follows_the_url(make_model, make_ctx, url, port):
    model = make_model()
    np = build_networkpolicy(model, make_ctx(model, ledger_url=url))
    assert np["spec"]["egress"][0]["ports"] == [{"protocol": "TCP", "port": port}]


def test_training_pods_get_no_network(make_model, make_ctx):
    model = make_model()
    ctx = make_ctx(model)
    np = build_training_networkpolicy(model, ctx)
    assert np["metadata"]["name"] == "triage-train"
    assert np["spec"] == {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "dpserve-model",
                "app.kubernetes.io/instance": "triage",
                "app.kubernetes.io/component": "training",
                "dpserve.io/model": "triage",
            }
        },
        "policyTypes": ["Ingress", "Egress"],
    }
    labels = build_job(model, ctx)["spec"]["template"]["metadata"]["labels"]
    assert np["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def test_pdb_only_above_one_replica(make_model, make_ctx):
    model = make_model()
    pdb = build_poddisruptionbudget(model, make_ctx(model, replicas=3))
    assert pdb is not None
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "inference"
    assert "minAvailable" not in pdb["spec"]
    assert build_poddisruptionbudget(model, make_ctx(model, replicas=1)) is None
    assert build_poddisruptionbudget(model, make_ctx(model, replicas=0)) is None


def test_every_object_is_owned_by_the_model(make_model, make_ctx):
    model = make_model()
    ctx = make_ctx(model)
    objects = [
        build_deployment(model, ctx),
        build_service(model, ctx),
        build_configmap(model, ctx),
        build_serviceaccount(model, ctx),
        build_networkpolicy(model, ctx),
        build_training_networkpolicy(model, ctx),
        build_poddisruptionbudget(model, ctx),
        build_job(model, ctx),
    ]
    for obj in objects:
        assert obj is not None
        assert obj["metadata"]["namespace"] == "clinical-ml"
        assert obj["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "dpserve.io/v1alpha1",
                "kind": "PrivateModel",
                "name": "triage",
                "uid": model.metadata["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


def test_owner_without_uid_is_refused(make_model, make_ctx):
    model = make_model(metadata={"uid": None})
    with pytest.raises(ValueError, match=r"metadata\.uid"):
        make_ctx(model)
