"""CEL rules declared once on the API models, emitted into the CRDs and evaluated in Python.

The same rule text goes to ``x-kubernetes-validations`` (the API server enforces it) and is
evaluated with cel-python when the operator parses an object, so a cluster that skipped CRD
validation (or the test emulator) cannot feed the handlers an object the CRD would refuse.
"""

from __future__ import annotations

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


def evaluate(rule: CelRule, obj: object, old: object = NO_OLD) -> bool:
    """True when ``obj`` (the JSON form of the node the rule sits on) satisfies the rule.

    ``old`` is the same node before an update; a transition rule (one reading ``oldSelf``)
    holds trivially without it, as the API server skips it on a create. An evaluation
    error (say ``double()`` of a malformed decimal) counts as a violation, as it does in
    the API server.
    """
    activation: dict[str, Any] = {"self": json_to_cel(obj)}  # type: ignore[arg-type]
    if is_transition_rule(rule):
        if isinstance(old, _Missing):
            return True
        activation["oldSelf"] = json_to_cel(old)  # type: ignore[arg-type]
    try:
        result = _program(rule.rule).evaluate(activation)
    except Exception:
        return False
    return bool(result) and not isinstance(result, CELEvalError)
