"""CEL rules declared once on the API models, emitted into the CRDs and evaluated in Python.

The same rule text goes to ``x-kubernetes-validations`` (the API server enforces it) and is
evaluated with cel-python when the operator parses an object, so a cluster that skipped CRD
validation (or the test emulator) cannot feed the handlers an object the CRD would refuse.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import celpy
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError


@dataclass(frozen=True)
class CelRule:
    rule: str
    message: str
    field_path: str | None = None  # e.g. ".retraining": the field the message is about
    reason: str | None = None  # FieldValueInvalid | FieldValueRequired | FieldValueForbidden

    def as_validation(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


_ENV = celpy.Environment()
_OLD_SELF = re.compile(r"\boldSelf\b")
# ``self.a.b`` / ``oldSelf.a.b`` (the longest such chain), and whether a call follows it
_CHAIN = re.compile(r"\b(?:self|oldSelf)((?:\.[A-Za-z_][A-Za-z0-9_]*)+)(\s*\()?")
_ANY_REF = re.compile(r"\b(?:self|oldSelf)\b")
RESULTS_CACHED = 8192


class _Missing:
    """No old object: a create, or a node that did not exist before the update."""


NO_OLD: Final = _Missing()


def is_transition_rule(rule: CelRule | str) -> bool:
    """A rule that reads ``oldSelf`` compares an update with the object it replaces; the
    API server evaluates it only on an update where the node existed before."""
    return _OLD_SELF.search(rule.rule if isinstance(rule, CelRule) else rule) is not None


@lru_cache(maxsize=512)
def _program(rule: str) -> Any:
    return _ENV.program(_ENV.compile(rule))


@lru_cache(maxsize=512)
def _paths_read(rule: str) -> tuple[tuple[str, ...], ...] | None:
    """The field paths of ``self``/``oldSelf`` the rule reads, shortest first; None when it
    reaches the node another way (``self`` alone, ``self.all(...)``, ``self[...]``).

    Each path ends where the rule stops naming fields (``has(self.a.b)``, ``self.a.b == x``,
    ``self.a.b.all(...)`` reads ``a.b`` whole): whatever the rule does next only sees the
    value at the end of the chain."""
    chains = _CHAIN.findall(rule)
    if len(chains) != len(_ANY_REF.findall(rule)):
        return None
    paths = set()
    for dotted, call in chains:
        path = tuple(dotted.lstrip(".").split("."))
        if call:
            path = path[:-1]  # ``self.a.f(...)``: f is a method of a
        if not path:
            return None
        paths.add(path)
    return tuple(sorted(paths, key=len))


def _projection(rule: str, node: object) -> object:
    """What the rule can read of ``node`` (its result depends on nothing else): along each
    path, the maps as present (so ``has()`` answers the same) and the value at its end."""
    paths = _paths_read(rule)
    if paths is None or not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for path in paths:  # shortest first: a value taken whole is never narrowed later
        source, target = node, out
        for depth, key in enumerate(path):
            if key not in source:
                break
            value = source[key]
            if depth == len(path) - 1 or not isinstance(value, dict):
                target[key] = value
                break
            if target.get(key) is value:
                break  # already taken whole
            source, target = value, target.setdefault(key, {})
    return out


def _key(node: object) -> str:
    return json.dumps(node, sort_keys=True, separators=(",", ":"))


@lru_cache(maxsize=RESULTS_CACHED)
def _cached_verdict(rule: str, self_json: str, old_json: str | None) -> bool:
    return _verdict(rule, json.loads(self_json),
                    NO_OLD if old_json is None else json.loads(old_json))


def _verdict(rule: str, node: object, old: object) -> bool:
    activation: dict[str, Any] = {"self": json_to_cel(node)}  # type: ignore[arg-type]
    if not isinstance(old, _Missing):
        activation["oldSelf"] = json_to_cel(old)  # type: ignore[arg-type]
    try:
        result = _program(rule).evaluate(activation)
    except Exception:
        return False
    return bool(result) and not isinstance(result, CELEvalError)


def evaluate(rule: CelRule, obj: object, old: object = NO_OLD) -> bool:
    """True when ``obj`` (the JSON form of the node the rule sits on) satisfies the rule.

    ``old`` is the same node before an update; a transition rule (one reading ``oldSelf``)
    holds trivially without it, as the API server skips it on a create. An evaluation
    error (say ``double()`` of a malformed decimal) counts as a violation, as it does in
    the API server.

    cel-python interprets the rule's parse tree: most of a millisecond per rule and node,
    so validating one PrivateModel and its budget used to cost 25-35 ms. The verdict is a
    pure function of the rule and the field paths it reads, so it is cached on those (most
    objects repeat them: the same mechanism, the same epsilon and delta), evaluated on
    exactly that projection of the node.
    """
    if not is_transition_rule(rule):
        old = NO_OLD
    elif isinstance(old, _Missing):
        return True
    before = None if isinstance(old, _Missing) else _key(_projection(rule.rule, old))
    return _cached_verdict(rule.rule, _key(_projection(rule.rule, obj)), before)
