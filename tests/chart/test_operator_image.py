"""operator/Dockerfile builds the image the chart runs: multi-stage on a python slim base,
non-root 65532 (the chart's runAsUser), entrypoint `dpserve run` (the chart's command), the
chart's ports, and the `dpserve` distribution WITHOUT the runtime extra, whose base
dependencies must then carry every third-party import of the control plane."""

from __future__ import annotations

import ast
import json
import re
import sys
import tomllib
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "operator" / "Dockerfile"
CONTROL_PLANE = REPO / "operator" / "dpserve"

Objects = list[dict[str, Any]]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text("utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def _deployment(render: Callable[[dict[str, Any]], Objects]) -> dict[str, Any]:
    return next(o for o in render({}) if o["kind"] == "Deployment")


def test_multi_stage_on_a_python_slim_base_argument() -> None:
    instructions = _instructions()
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for word, rest in instructions
            if word == "ARG" and "=" in rest}
    assert "slim" in args["BASE_IMAGE"] and "python" in args["BASE_IMAGE"]
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    assert any(w == "COPY" and r.startswith("--from=build") for w, r in _final_stage())


def test_installs_the_distribution_without_the_runtime_extra() -> None:
    runs = " ".join(rest for word, rest in _instructions() if word == "RUN")
    # Exactly one install: the project itself, no extra ("/src[runtime]"), nothing else.
    installs = [args.strip() for args in re.findall(r"pip install ([^&;]*)", runs)]
    assert installs == ["/src"]
    copies = [rest for word, rest in _instructions() if word == "COPY"]
    assert not any("inference-image" in c for c in copies), "the data plane stays out"


def test_non_root_read_only_friendly_and_matches_the_chart(
    render: Callable[[dict[str, Any]], Objects],
) -> None:
    final = _final_stage()
    (user,) = [rest for word, rest in final if word == "USER"]
    assert user == "65532:65532"
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/tmp" in env
    pod = _deployment(render)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(user.split(":")[0])
    assert pod["securityContext"]["runAsGroup"] == int(user.split(":")[1])


def test_entrypoint_and_ports_match_the_chart(
    render: Callable[[dict[str, Any]], Objects],
) -> None:
    final = _final_stage()
    (entrypoint,) = [json.loads(rest) for word, rest in final if word == "ENTRYPOINT"]
    (exposed,) = [sorted(int(p) for p in rest.split()) for word, rest in final
                  if word == "EXPOSE"]
    container = _deployment(render)["spec"]["template"]["spec"]["containers"][0]
    assert entrypoint == container["command"] == ["dpserve", "run"]
    assert exposed == sorted(p["containerPort"] for p in container["ports"])


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[str]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]
        yield from _imports(node)


def _closure(names: set[NormalizedName]) -> set[str]:
    """The distributions the base dependencies install (their own requirements included)."""
    seen: set[str] = set()
    todo: list[str] = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return seen


def test_base_dependencies_cover_every_control_plane_import() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]
    base = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    assert not base & {"torch", "opacus", "opendp", "presidio-analyzer", "spacy"}
    installed = _closure(base)
    providers = metadata.packages_distributions()
    missing = {}
    for path in CONTROL_PLANE.rglob("*.py"):
        for module in _imports(ast.parse(path.read_text("utf-8"))):
            if module in sys.stdlib_module_names or module == "dpserve":
                continue
            dists = {canonicalize_name(d) for d in providers.get(module, [module])}
            if not dists & installed:
                missing[module] = str(path.relative_to(REPO))
    assert missing == {}, (
        "imported by the control plane but not installed by pyproject's base dependencies "
        f"(the operator image has no extras): {missing}"
    )
