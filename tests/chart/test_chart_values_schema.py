"""values.schema.json accepts the chart's defaults and every scenario, and rejects bad values
both in Helm (the Go SDK's own schema check, as `helm install` runs it) and in jsonschema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml

BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown top-level key": ({"replicas": 2}, "replicas"),
    "unknown nested key": ({"image": {"repository": "x", "pullPolicy": "Always", "tga": "1"}},
                           "tga"),
    "pull policy": ({"image": {"repository": "x", "pullPolicy": "Sometimes"}}, "pullPolicy"),
    "standby flag as string": ({"standby": {"enabled": "yes", "priority": 50}}, "enabled"),
    "namespace not a DNS label": ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
    "duplicate namespaces": ({"watchNamespaces": ["a", "a"]}, "watchNamespaces"),
    "priority zero": ({"priority": 0}, "priority"),
    "log format": ({"logFormat": "xml"}, "logFormat"),
    "threshold above one": ({"prometheusRule": {"budgetThresholds": [
        {"fraction": 1.5, "severity": "warning"}]}}, "fraction"),
    "bad duration": ({"serviceMonitor": {"interval": "30 seconds"}}, "interval"),
    "bad digest": ({"image": {"repository": "x", "pullPolicy": "Always", "digest": "latest"}},
                   "digest"),
    "bad ledger url": ({"ledgerUrl": "ledger:8443"}, "ledgerUrl"),
    "entries beyond the status schema": ({"ledgerMaxEntries": 1025}, "ledgerMaxEntries"),
    "no leases at all": ({"ledgerMaxLeases": 0}, "ledgerMaxLeases"),
}


@pytest.fixture(scope="module")
def schema(chart_dir: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((chart_dir / "values.schema.json").read_text("utf-8"))
    return loaded


def test_schema_is_a_valid_draft7_schema(schema: dict[str, Any]) -> None:
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["additionalProperties"] is False


def test_defaults_and_scenarios_are_accepted(
    chart: helm.Chart, chart_dir: Path, schema: dict[str, Any], scenario_values: dict[str, Any]
) -> None:
    defaults = yaml.safe_load((chart_dir / "values.yaml").read_text("utf-8"))
    jsonschema.validate(defaults, schema)
    chart.validate_schema(defaults)
    merged = chart.merge_values(scenario_values)
    jsonschema.validate(merged, schema)
    chart.validate_schema(merged)


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_are_rejected(
    chart: helm.Chart, schema: dict[str, Any], case: str
) -> None:
    values, field = BAD_VALUES[case]
    with pytest.raises(helm.HelmValuesError, match=field):
        chart.validate_schema(chart.merge_values(values))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(chart.merge_values(values), schema)


def test_render_refuses_bad_values(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmValuesError, match="replicas"):
        chart.render({"replicas": 2}, name="dps", namespace="dpserve-system")
