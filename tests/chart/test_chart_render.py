"""The chart lints clean, renders in every scenario, and every object it renders is valid:
built-in kinds against Kubernetes' own schemas (kubernetes-validate, strict, newest minor),
the peering objects against the peering CRDs the chart ships, the Prometheus Operator objects
against their structure, with every alert expression parsed as PromQL."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import promql_parser
import yaml

from dpserve_testkit.localkube.crdvalidation import validate

Objects = list[dict[str, Any]]
# Kinds kubernetes-validate has no schema for: checked below instead.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "KopfPeering", "ClusterKopfPeering"}
REPO = Path(__file__).resolve().parents[2]


def test_chart_metadata(chart: helm.Chart) -> None:
    meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "dpserve"
    assert meta["appVersion"] == "0.1.0"
    assert [d["name"] for d in chart.dependencies] == ["kopf-peering"]


def test_chart_crds_are_the_generated_crds(chart_dir: Path) -> None:
    generated = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    shipped = {p.name: p.read_bytes() for p in (chart_dir / "crds").glob("*")}
    assert shipped == generated


def test_lint_is_clean(chart_dir: Path, scenario_values: dict[str, Any]) -> None:
    report = helm.lint(chart_dir, scenario_values, strict=True, with_subcharts=True,
                       namespace="dpserve-system")
    assert report["errors"] == []
    # Severity 1 is informational (e.g. "icon is recommended"); 2 warning, 3 error.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_every_builtin_object_validates(scenario_objects: Objects) -> None:
    newest = kubernetes_validate.latest_version()
    for obj in scenario_objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, newest, strict=True)


def test_every_object_has_the_recommended_labels(
    scenario_objects: Objects, release_name: str
) -> None:
    for obj in scenario_objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "dpserve"
        assert labels["app.kubernetes.io/instance"] == release_name
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "dpserve"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["helm.sh/chart"] == "dpserve-0.1.0"


def _shipped_crds(chart: helm.Chart) -> dict[str, dict[str, Any]]:
    crds = {}
    for entry in chart.crds:
        for doc in yaml.safe_load_all(entry["data"]):
            if doc:
                crds[doc["spec"]["names"]["kind"]] = doc
    return crds


def test_shipped_crds_validate(chart: helm.Chart) -> None:
    crds = _shipped_crds(chart)
    assert set(crds) == {"ErasureRequest", "PrivacyBudget", "PrivateModel", "KopfPeering",
                         "ClusterKopfPeering"}
    for crd in crds.values():
        kubernetes_validate.validate(crd, kubernetes_validate.latest_version(), strict=True)
    # Kopf patches the peering object's main resource, not a status subresource.
    for kind in ("KopfPeering", "ClusterKopfPeering"):
        assert "subresources" not in crds[kind]["spec"]["versions"][0]


def test_peering_objects_validate_against_the_shipped_crds(
    chart: helm.Chart, scenario_objects: Objects
) -> None:
    crds = _shipped_crds(chart)
    for obj in scenario_objects:
        if obj["kind"] in ("KopfPeering", "ClusterKopfPeering"):
            crd = crds[obj["kind"]]
            assert obj["apiVersion"] == f"{crd['spec']['group']}/v1"
            assert ("namespace" in obj["metadata"]) == (crd["spec"]["scope"] == "Namespaced")
            assert validate(obj, crd)[1] == []


_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace", "labels"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
}
# The parts of the Prometheus Operator CRDs (monitoring.coreos.com/v1) this chart uses.
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object",
                                                   "additionalProperties": {"type": "string"}}},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                        },
                    },
                },
            },
        },
    },
}
PROMETHEUS_RULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["alert", "expr", "labels", "annotations"],
                                    "properties": {
                                        "alert": {"type": "string",
                                                  "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                                        "expr": {"type": "string"},
                                        "for": _DURATION,
                                        "labels": {
                                            "type": "object",
                                            "required": ["severity"],
                                            "additionalProperties": {"type": "string"},
                                        },
                                        "annotations": {
                                            "type": "object",
                                            "required": ["summary", "description"],
                                            "additionalProperties": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def _rules(objects: Objects) -> list[dict[str, Any]]:
    return [
        rule
        for obj in objects
        if obj["kind"] == "PrometheusRule"
        for group in obj["spec"]["groups"]
        for rule in group["rules"]
    ]


def test_monitoring_objects_are_well_formed(scenario_objects: Objects) -> None:
    for obj in scenario_objects:
        if obj["kind"] == "ServiceMonitor":
            jsonschema.validate(obj, SERVICE_MONITOR)
        elif obj["kind"] == "PrometheusRule":
            jsonschema.validate(obj, PROMETHEUS_RULE)
    for rule in _rules(scenario_objects):
        promql_parser.parse(rule["expr"])  # raises ValueError on invalid PromQL
        # Prometheus templates survive Helm's rendering.
        assert "{{ $labels." in rule["annotations"]["description"] or "{{ $value" in rule[
            "annotations"]["description"] or rule["alert"] == "DpserveOperatorDown"


_METRIC = re.compile(r"\b(ml_[a-z_]+|dpserve_[a-z_]+|up)\b")


def test_alerts_cover_the_budget_the_guard_and_the_operator(
    render: Callable[[dict[str, Any]], Objects], release_name: str
) -> None:
    values = {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
    rules = _rules(render(values))
    alerts = {rule["alert"] for rule in rules}
    assert alerts == {
        "DpservePrivacyBudgetThreshold",
        "DpservePrivacyBudgetExhausted",
        "DpserveVerbatimReproductionBlocked",
        "DpserveAttestationFailed",
        "DpserveErasureRequestOverdue",
        "DpserveOperatorDown",
    }
    thresholds = sorted(
        float(r["labels"]["threshold"]) for r in rules
        if r["alert"] == "DpservePrivacyBudgetThreshold"
    )
    assert thresholds == [0.8, 0.95]
    metrics = {m for rule in rules for m in _METRIC.findall(rule["expr"])}
    assert metrics == {
        "dpserve_budget_epsilon_spent",
        "dpserve_budget_epsilon_limit",
        "dpserve_budget_exhausted",
        "ml_verbatim_reproduction_blocked_total",
        "ml_enclave_attestation_failure_total",
        "dpserve_erasure_request_overdue",
        "up",
    }
    # Every metric an alert reads is exported by our code (an alert on a metric nobody
    # exports can never fire).
    sources = "".join(
        p.read_text("utf-8")
        for root in ("operator", "inference-image")
        for p in (REPO / root).rglob("*.py")
    )
    assert {m for m in metrics - {"up"} if f'"{m}"' not in sources} == set()
    down = next(r for r in rules if r["alert"] == "DpserveOperatorDown")
    assert f'job="{release_name}-dpserve-metrics"' in down["expr"]


def test_operator_down_needs_the_service_monitor(
    render: Callable[[dict[str, Any]], Objects],
) -> None:
    rules = _rules(render({"prometheusRule": {"enabled": True}}))
    assert "DpserveOperatorDown" not in {r["alert"] for r in rules}


def test_monitoring_is_off_by_default(render: Callable[[dict[str, Any]], Objects]) -> None:
    kinds = {o["kind"] for o in render({})}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "KopfPeering", "ClusterKopfPeering"}


def test_packaged_chart_keeps_crds_and_subchart(chart_dir: Path, tmp_path: Path) -> None:
    archive = helm.package(chart_dir, destination=tmp_path)
    with helm.Chart.load(archive) as packaged:
        names = sorted(Path(c["filename"]).name for c in packaged.crds)
        assert names == ["dpserve.io_erasurerequests.yaml", "dpserve.io_privacybudgets.yaml",
                         "dpserve.io_privatemodels.yaml", "kopf-peering.yaml"]
        rendered = packaged.render({"standby": {"enabled": True}}, name="dps", namespace="ns")
    assert "kind: ClusterKopfPeering" in rendered["dpserve/templates/peering.yaml"]
