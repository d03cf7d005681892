"""The chart's RBAC rules, generated from :data:`dpserve.resources.access.ACCESS`.

``python -m dpserve.resources.rbacrules --output charts/dpserve/templates/_rbac_rules.tpl``
writes one named template per (when, scope) block; ``templates/rbac.yaml`` (hand-written
Helm) decides which blocks go into the ClusterRole and the per-namespace Roles. A test keeps
the file byte-identical to this output, as for the CRDs.

Why a generated partial and not rules rendered from values: the chart stays a plain Helm
chart (no Python at install time, the rules are readable YAML with their justification
next to each), and the rules are not values a user could widen by accident.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from dpserve.resources.access import ACCESS, Access, When

Scope = Literal["namespaced", "cluster"]
BLOCKS: tuple[tuple[When, Scope], ...] = (
    ("always", "namespaced"),
    ("always", "cluster"),
    ("namespacedMode", "cluster"),
    ("standby", "cluster"),
    ("standby", "namespaced"),
    ("operatorNamespace", "namespaced"),
)
DEFAULT_OUTPUT = Path("charts/dpserve/templates/_rbac_rules.tpl")
HEADER = """\
{{/*
GENERATED from dpserve.resources.access (the operator's table of what it reads, watches and
writes) by: python -m dpserve.resources.rbacrules --output charts/dpserve/templates/_rbac_rules.tpl
Do not edit: tests/chart/test_chart_rbac.py fails when this file and the table differ.
templates/rbac.yaml chooses which blocks go into the ClusterRole and the Roles.
*/}}
"""


def block_name(when: When, scope: Scope) -> str:
    return f"dpserve.rbac.{when}.{scope}"


def _scope(access: Access) -> Scope:
    return "namespaced" if access.res.namespaced else "cluster"


def rule(access: Access) -> dict[str, Any]:
    """The PolicyRule granting ``access``."""
    return {"apiGroups": [access.res.group], "resources": [access.resource],
            "verbs": list(access.verbs)}


def rules(accesses: Iterable[Access]) -> list[dict[str, Any]]:
    return [rule(a) for a in accesses]


def _flow(items: Sequence[str]) -> str:
    return "[" + ", ".join(i or '""' for i in items) + "]"


def _comment(text: str) -> list[str]:
    return ["# " + line for line in textwrap.wrap(text, width=92)]


def render_block(when: When, scope: Scope) -> str:
    lines = [f'{{{{- define "{block_name(when, scope)}" -}}}}']
    for access in ACCESS:
        if access.when != when or _scope(access) != scope:
            continue
        lines += _comment(access.why)
        lines += [f"- apiGroups: {_flow([access.res.group])}",
                  f"  resources: {_flow([access.resource])}",
                  f"  verbs: {_flow(access.verbs)}"]
    lines.append("{{- end }}")
    return "\n".join(lines) + "\n"


def render_template() -> str:
    return HEADER + "".join("\n" + render_block(when, scope) for when, scope in BLOCKS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpserve.resources.rbacrules",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=None,
                        help=f"write here (e.g. {DEFAULT_OUTPUT}); default: standard output")
    args = parser.parse_args(argv)
    text = render_template()
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
