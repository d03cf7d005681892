"""The CRDs in crds/ and charts/dpserve/crds/ are exactly what `dpserve crds` generates, and
they are valid, structural, cost-bounded CustomResourceDefinitions."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import kubernetes_validate
import pytest
import yaml

from dpserve.api.crdgen import all_crds
from dpserve.cli import main
from dpserve_testkit.localkube.crdvalidation import crd_schema, schema_errors

REPO = Path(__file__).resolve().parents[2]
COPIES = [REPO / "crds", REPO / "charts" / "dpserve" / "crds"]
Schema = dict[str, Any]


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.yaml"))}


def _assert_same_as_copies(generated: Path) -> None:
    produced = _files(generated)
    assert set(produced) == set(all_crds()), "dpserve crds wrote an unexpected set of files"
    for copy in COPIES:
        assert _files(copy) == produced, (
            f"{copy.relative_to(REPO)} is out of date: run "
            f"`dpserve crds --output-dir {copy.relative_to(REPO)}`"
        )


def test_cli_output_is_byte_identical_to_checked_in_crds(tmp_path: Path) -> None:
    assert main(["crds", "--output-dir", str(tmp_path)]) == 0
    _assert_same_as_copies(tmp_path)


def test_cli_as_a_subprocess_writes_the_same_crds(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dpserve.cli", "crds", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    _assert_same_as_copies(tmp_path)


def test_cli_stdout_is_the_same_crds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds"]) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert documents == list(all_crds().values())


@pytest.fixture(params=sorted(all_crds()), scope="module")
def crd(request: pytest.FixtureRequest) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load((REPO / "crds" / request.param).read_text("utf-8"))
    return crd


def test_crd_validates_with_kubernetes_validate_strict(crd: dict[str, Any]) -> None:
    newest = kubernetes_validate.latest_version()
    assert kubernetes_validate.validate(crd, newest, strict=True) == ".".join(
        newest.split(".")[:2]
    )


def _nodes(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}.<key>")


def test_schema_is_structural(crd: dict[str, Any]) -> None:
    schema = crd_schema(crd)
    assert schema["properties"]["metadata"] == {"type": "object"}
    for path, node in _nodes(schema):
        for forbidden in ("$ref", "$defs", "definitions", "anyOf", "oneOf", "allOf", "not"):
            assert forbidden not in node, f"{path}: {forbidden} is not structural"
        if not (node.get("x-kubernetes-preserve-unknown-fields")
                or node.get("x-kubernetes-int-or-string")):
            assert "type" in node, f"{path}: every structural node has a type"
        assert not ("properties" in node and "additionalProperties" in node), (
            f"{path}: properties and additionalProperties are mutually exclusive"
        )
        for name in node.get("required", []):
            assert name in node.get("properties", {}), f"{path}: required {name} undeclared"


def test_defaults_are_valid_against_their_own_schema(crd: dict[str, Any]) -> None:
    checked = 0
    for path, node in _nodes(crd_schema(crd)):
        if "default" in node:
            assert schema_errors(node["default"], node) == [], f"{path}: invalid default"
            checked += 1
    assert checked > 0


# Set by the API server to the CRD's group/version and kind, never free text.
_SERVER_SET = {".apiVersion", ".kind"}


def _unbounded(schema: Schema, path: str) -> Iterator[str]:
    """Strings, lists and maps below a CEL rule without the bound its cost estimate needs."""
    for where, node in _nodes(schema, path):
        if where in _SERVER_SET:
            continue
        kind = node.get("type")
        if kind == "string" and "enum" not in node and "maxLength" not in node:
            yield f"{where} (string without maxLength)"
        if kind == "array" and "maxItems" not in node:
            yield f"{where} (list without maxItems)"
        if isinstance(node.get("additionalProperties"), dict) and "maxProperties" not in node:
            yield f"{where} (map without maxProperties)"


def test_every_cel_bearing_node_is_bounded(crd: dict[str, Any]) -> None:
    bearing = [(p, n) for p, n in _nodes(crd_schema(crd)) if n.get("x-kubernetes-validations")]
    assert bearing, "the CRD carries no CEL rule"
    problems = [u for path, node in bearing for u in _unbounded(node, path)]
    assert problems == []


def _resolve(schema: Schema, field_path: str) -> Schema:
    """The schema of ``.a.b`` (list items and the [?(...)] filter of a JSONPath are stepped
    through)."""
    node = schema
    for part in re.sub(r"\[\?\(.*?\)\]", "", field_path).strip(".").split("."):
        while node.get("type") == "array":
            node = node["items"]
        assert part in node.get("properties", {}), f"{field_path}: no field {part!r}"
        node = node["properties"][part]
    return node


def test_cel_rules_compile_and_report_on_existing_fields(crd: dict[str, Any]) -> None:
    env = celpy.Environment()
    for path, node in _nodes(crd_schema(crd)):
        for rule in node.get("x-kubernetes-validations", []):
            env.compile(rule["rule"])  # raises on a syntax error
            assert rule.get("message"), f"{path}: rule without a message"
            if "fieldPath" in rule:
                _resolve(node, rule["fieldPath"])
            if "reason" in rule:
                assert rule["reason"] in {
                    "FieldValueInvalid", "FieldValueRequired", "FieldValueForbidden",
                    "FieldValueDuplicate",
                }


EXPECTED_COLUMNS = {
    "ErasureRequest": ["Model", "Phase", "Complete", "Removed In", "Deadline", "Age"],
    "PrivacyBudget": [
        "Ready", "Epsilon Spent", "Epsilon Limit", "Epsilon Remaining", "Exhausted", "Age"
    ],
    "PrivateModel": [
        "Ready", "Phase", "Epsilon Spent", "Epsilon Limit", "Replicas", "Version", "Age"
    ],
}
_COLUMN_TYPES = {"string": "string", "integer": "integer", "number": "number",
                 "boolean": "boolean"}


def test_printer_columns_present_and_resolvable(crd: dict[str, Any]) -> None:
    kind = crd["spec"]["names"]["kind"]
    version = crd["spec"]["versions"][0]
    columns = version["additionalPrinterColumns"]
    default_view = [c["name"] for c in columns if not c.get("priority")]
    assert default_view == EXPECTED_COLUMNS[kind]
    assert any(c.get("priority") == 1 for c in columns), "extras belong at priority 1"
    schema = version["schema"]["openAPIV3Schema"]
    for column in columns:
        if column["jsonPath"].startswith(".metadata."):
            assert column["type"] == "date"
            continue
        target = _resolve(schema, column["jsonPath"])
        assert _COLUMN_TYPES[target["type"]] == column["type"], column


def test_subresources_names_and_scale_paths(crd: dict[str, Any]) -> None:
    names = crd["spec"]["names"]
    assert names["shortNames"] and names["categories"] == ["dpserve"]
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    subresources = version["subresources"]
    assert subresources["status"] == {}
    if names["kind"] != "PrivateModel":
        assert "scale" not in subresources
        return
    scale = subresources["scale"]
    assert _resolve(schema, scale["specReplicasPath"])["type"] == "integer"
    assert _resolve(schema, scale["statusReplicasPath"])["type"] == "integer"
    assert _resolve(schema, scale["labelSelectorPath"])["type"] == "string"
