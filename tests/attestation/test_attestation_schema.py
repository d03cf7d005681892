"""spec.confidential.attestation as the CRD will carry it: structural, bounded, valid defaults.

PrivateModel carries it as spec.confidential.attestation (tests/api checks the generated
CRDs as a whole); these checks hold the sub-schema to the rules on its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from attestation_support import spec
from dpserve.api.crdgen import structural_schema
from dpserve.attestation.spec import AttestationSpec
from dpserve_testkit.localkube.crdvalidation import schema_errors

Schema = dict[str, Any]


def _nodes(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")


SCHEMA = structural_schema(AttestationSpec)


def test_schema_is_structural_and_bounded() -> None:
    for path, node in _nodes(SCHEMA):
        for forbidden in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "not"):
            assert forbidden not in node, f"{path}: {forbidden}"
        assert "type" in node, f"{path}: no type"
        # every string and list is bounded, so CEL rules anywhere above stay cost-bounded
        if node["type"] == "string" and "enum" not in node:
            assert "maxLength" in node, f"{path}: string without maxLength"
        if node["type"] == "array":
            assert "maxItems" in node, f"{path}: list without maxItems"


def test_defaults_are_valid_against_their_own_schema() -> None:
    defaults = [(p, n) for p, n in _nodes(SCHEMA) if "default" in n]
    assert {p for p, _ in defaults} >= {".algorithms", ".binding", ".agent", ".maxAgeSeconds"}
    for path, node in defaults:
        assert schema_errors(node["default"], node) == [], path


def test_a_full_spec_round_trips_and_validates_against_the_schema() -> None:
    wire = spec(jwks='{"keys": [{"kty": "EC"}]}').wire()
    assert schema_errors(wire, SCHEMA) == []
    assert AttestationSpec.model_validate(wire).wire() == wire
    assert "HS256" not in SCHEMA["properties"]["algorithms"]["items"]["enum"]
