"""A corpus of invalid custom resources (tests/api/invalid/*.yaml): each is refused by the CRD
(as the API server would) with a message naming the field, and by the pydantic model with an
error on the same field. The two validators must agree on every case.

Each file starts with comment lines ``# expect-path: spec.x.y`` (the field the error is
about) and ``# expect-message: fragment`` (text the CRD's message must contain).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from dpserve_testkit.localkube.crdvalidation import validate

CORPUS = Path(__file__).resolve().parent / "invalid"
CASES = sorted(CORPUS.glob("*.yaml"))
_HEADER = re.compile(r"^# expect-(path|message): (.+)$", re.MULTILINE)
_CEL_FIELD = re.compile(r"^Value error, ([A-Za-z0-9_.\[\]]+): ")


def _case(path: Path) -> tuple[dict[str, Any], str, str]:
    text = path.read_text("utf-8")
    header = {key: value.strip() for key, value in _HEADER.findall(text)}
    assert set(header) == {"path", "message"}, f"{path.name}: expect-path/expect-message missing"
    return yaml.safe_load(text), header["path"], header["message"]


def _pydantic_paths(error: ValidationError) -> list[str]:
    """The field of each pydantic error, in the CRD's notation (spec.a.b[0]): its location,
    plus the rule's field path that a CEL message raised by a model validator starts with."""
    paths = []
    for item in error.errors():
        path = ""
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        match = _CEL_FIELD.match(item["msg"])
        if match:
            path += "." + match.group(1)
        paths.append(path)
    return paths


def _names(field: str, candidate: str) -> bool:
    """True when ``candidate`` is ``field`` or a path inside it (a map key, a list item)."""
    return candidate == field or candidate.startswith((field + ".", field + "["))


def test_corpus_is_large_and_covers_both_kinds() -> None:
    assert len(CASES) >= 25
    kinds = {_case(path)[0]["kind"] for path in CASES}
    assert kinds == {"PrivacyBudget", "PrivateModel"}


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_crd_refuses_naming_the_field(
    path: Path, crds_by_kind: dict[str, dict[str, Any]]
) -> None:
    obj, field, fragment = _case(path)
    _, errors = validate(obj, crds_by_kind[obj["kind"]])
    assert errors, f"{path.name}: the CRD admitted an invalid object"
    assert any(e.startswith(f"{field}:") and fragment in e for e in errors), errors


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_pydantic_model_refuses_the_same_field(
    path: Path, models_by_kind: dict[str, type[BaseModel]]
) -> None:
    obj, field, _ = _case(path)
    with pytest.raises(ValidationError) as caught:
        models_by_kind[obj["kind"]].model_validate(obj)
    paths = _pydantic_paths(caught.value)
    assert any(_names(field, p) for p in paths), f"pydantic blamed {paths}, not {field}"
