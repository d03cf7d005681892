"""The subset of Kubernetes JSONPath used by printer columns.

Supported: ``.a.b``, ``.a[0]``, ``.a['key']``, ``.a[*]`` and filters ``[?(@.x=="y")]`` /
``[?(@.x!="y")]``. No maintained Python package implements Kubernetes' JSONPath dialect
(filters included) without pulling a large dependency, and printer columns need only this.
"""

from __future__ import annotations

import re
from typing import Any

_TOKEN = re.compile(
    r"""\.(?P<field>[A-Za-z0-9_$-]+)
      | \[(?P<index>-?\d+)\]
      | \[\*\]
      | \[['"](?P<key>[^'"]+)['"]\]
      | \[\?\(@\.(?P<fpath>[A-Za-z0-9_.-]+)\s*(?P<op>==|!=)\s*['"]?(?P<fval>[^'")]*)['"]?\)\]""",
    re.VERBOSE,
)


def _parse(expr: str) -> list[re.Match[str]]:
    text = expr.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    text = text.removeprefix("$")
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"unsupported JSONPath {expr!r} at {text[pos:]!r}")
        tokens.append(match)
        pos = match.end()
    return tokens


def _get(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def find(obj: Any, expr: str) -> list[Any]:
    """All values that ``expr`` selects in ``obj`` (empty when the path is absent)."""
    nodes = [obj]
    for token in _parse(expr):
        found: list[Any] = []
        for node in nodes:
            if token.group("field") is not None or token.group("key") is not None:
                name = token.group("field") or token.group("key")
                if isinstance(node, dict) and name in node:
                    found.append(node[name])
            elif token.group("index") is not None:
                if isinstance(node, list):
                    index = int(token.group("index"))
                    if -len(node) <= index < len(node):
                        found.append(node[index])
            elif token.group("fpath") is not None:
                if isinstance(node, list):
                    for item in node:
                        value = _get(item, token.group("fpath"))
                        text = "" if value is None else str(value)
                        equal = text == token.group("fval")
                        if equal == (token.group("op") == "=="):
                            found.append(item)
            elif isinstance(node, list):  # [*]
                found.extend(node)
            elif isinstance(node, dict):
                found.extend(node.values())
        nodes = found
    return nodes
