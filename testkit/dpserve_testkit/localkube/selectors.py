"""Label and field selectors as the API server parses them (list, watch, delete-collection)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from dpserve_testkit.localkube import errors

Predicate = Callable[[Mapping[str, Any]], bool]

_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9._/-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9._/-]+)\s*$")


def _split(selector: str) -> list[str]:
    """Split on commas outside parentheses (``a in (x,y),b`` has two requirements)."""
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return [p for p in parts if p.strip()]


def _requirement(text: str) -> Callable[[Mapping[str, str]], bool]:
    if match := _SET_RE.match(text):
        _, key, op, values_text = match.groups()
        values = {v.strip() for v in values_text.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if match := _EQ_RE.match(text):
        key, op, value = match.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _EXISTS_RE.match(text):
        negated, key = match.groups()
        if negated:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise errors.bad_request(f"unable to parse requirement: {text!r}")


def label_selector(selector: str | None) -> Predicate:
    """Predicate over whole objects for a ``labelSelector`` query parameter."""
    if not selector:
        return lambda obj: True
    requirements = [_requirement(part) for part in _split(selector)]

    def check(obj: Mapping[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(req(labels) for req in requirements)

    return check


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return ""
        node = node.get(part)
    return "" if node is None else str(node)


def field_selector(selector: str | None) -> Predicate:
    """Predicate for a ``fieldSelector`` (``=``, ``==``, ``!=`` over dotted field paths)."""
    if not selector:
        return lambda obj: True
    checks: list[Predicate] = []
    for part in _split(selector):
        match = re.match(r"^\s*([A-Za-z0-9._-]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not match:
            raise errors.bad_request(f"invalid field selector: {part!r}")
        path, op, value = match.groups()
        checks.append(_field_check(path, op != "!=", value))
    return lambda obj: all(check(obj) for check in checks)


def _field_check(path: str, equal: bool, value: str) -> Predicate:
    def check(obj: Mapping[str, Any]) -> bool:
        return (_field_value(obj, path) == value) == equal

    return check


def single_name(selector: str | None) -> str | None:
    """The name a ``metadata.name=<x>`` field selector pins (authorised as a request for it)."""
    for part in _split(selector or ""):
        match = re.match(r"^\s*metadata\.name\s*(==|=)\s*(.*?)\s*$", part)
        if match:
            return match.group(2) or None
    return None
