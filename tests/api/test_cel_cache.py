"""The CEL verdict cache (dpserve.api.cel): same answers as evaluating each node afresh."""

from __future__ import annotations

from typing import Any

import pytest

from dpserve.api import cel
from dpserve.api.cel import CelRule, evaluate

RANGE = CelRule("double(self.epsilon) > 0.0 && double(self.epsilon) <= 1000.0", "range")
HAS = CelRule("!has(self.task) || self.format == 'huggingface'", "task")
LIST = CelRule("self.all(t, double(t) > 0.0)", "fractions")
TRANSITION = CelRule("self.version == oldSelf.version || !has(oldSelf.spent)", "frozen")


def fresh(rule: CelRule, obj: Any, old: Any = cel.NO_OLD) -> bool:
    """The verdict of the rule evaluated on the whole node, bypassing every cache."""
    if cel.is_transition_rule(rule) and isinstance(old, type(cel.NO_OLD)):
        return True
    return cel._verdict(rule.rule, obj, old if cel.is_transition_rule(rule) else cel.NO_OLD)


NESTED = CelRule("!has(self.model.task) || self.model.format == 'huggingface'", "nested")
METHOD = CelRule("!has(self.spec.thresholds) || self.spec.thresholds.all(t, t > 0)", "method")


def test_paths_read_are_the_chains_named_after_self() -> None:
    assert cel._paths_read(RANGE.rule) == (("epsilon",),)
    assert set(cel._paths_read(HAS.rule) or ()) == {("task",), ("format",)}
    assert set(cel._paths_read(TRANSITION.rule) or ()) == {("version",), ("spent",)}
    assert set(cel._paths_read(NESTED.rule) or ()) == {("model", "task"), ("model", "format")}
    # a method call reads its receiver whole
    assert cel._paths_read(METHOD.rule) == (("spec", "thresholds"),)
    # a method on self, or self alone: the rule may read anything, nothing is projected
    assert cel._paths_read(LIST.rule) is None
    assert cel._paths_read("size(self) > 0") is None


def test_projection_keeps_the_maps_along_each_path() -> None:
    node = {"model": {"artifact": "pvc://m/1", "format": "onnx"}, "name": "x"}
    assert cel._projection(NESTED.rule, node) == {"model": {"format": "onnx"}}
    assert cel._projection(NESTED.rule, {"model": "text"}) == {"model": "text"}
    assert cel._projection(NESTED.rule, {"name": "x"}) == {}
    both = "has(self.a) && self.a.b == 1"  # a whole, so not narrowed to a.b
    assert cel._projection(both, {"a": {"b": 1, "c": 2}}) == {"a": {"b": 1, "c": 2}}


@pytest.mark.parametrize(("rule", "obj", "old"), [
    (RANGE, {"epsilon": "8", "delta": "1e-6"}, cel.NO_OLD),
    (RANGE, {"epsilon": "0", "delta": "1e-6"}, cel.NO_OLD),
    (RANGE, {"epsilon": "eight"}, cel.NO_OLD),  # evaluation error: a violation
    (RANGE, {"delta": "1e-6"}, cel.NO_OLD),  # no such field: an error, a violation
    (HAS, {"format": "onnx", "artifact": "pvc://a"}, cel.NO_OLD),
    (HAS, {"format": "onnx", "task": "text-generation"}, cel.NO_OLD),
    (HAS, {"format": "huggingface", "task": "text-generation"}, cel.NO_OLD),
    (NESTED, {"model": {"format": "onnx", "artifact": "pvc://a"}}, cel.NO_OLD),
    (NESTED, {"model": {"format": "onnx", "task": "text-generation"}}, cel.NO_OLD),
    (NESTED, {"model": {"format": "huggingface", "task": "t"}}, cel.NO_OLD),
    (NESTED, {"model": "not a map"}, cel.NO_OLD),
    (NESTED, {"other": 1}, cel.NO_OLD),
    (METHOD, {"spec": {"thresholds": [1, 2], "x": 1}}, cel.NO_OLD),
    (METHOD, {"spec": {"thresholds": [1, -2]}}, cel.NO_OLD),
    (METHOD, {"spec": {}}, cel.NO_OLD),
    (LIST, ["0.5", "0.9"], cel.NO_OLD),
    (LIST, ["0.5", "-1"], cel.NO_OLD),
    (TRANSITION, {"version": "v2"}, cel.NO_OLD),
    (TRANSITION, {"version": "v2"}, {"version": "v1"}),
    (TRANSITION, {"version": "v2"}, {"version": "v1", "spent": "1"}),
    (TRANSITION, {"version": "v1", "x": 1}, {"version": "v1", "spent": "1"}),
])
def test_cached_verdict_equals_a_fresh_evaluation(rule: CelRule, obj: Any, old: Any) -> None:
    expected = fresh(rule, obj, old)
    assert evaluate(rule, obj, old) is expected
    assert evaluate(rule, obj, old) is expected  # the second answer comes from the cache


def test_a_change_to_a_read_field_is_judged_again() -> None:
    assert evaluate(RANGE, {"epsilon": "8", "name": "a"})
    assert not evaluate(RANGE, {"epsilon": "8000", "name": "a"})
    assert evaluate(HAS, {"format": "onnx"})
    assert not evaluate(HAS, {"format": "onnx", "task": "text-generation"})


def test_fields_the_rule_does_not_read_share_one_verdict() -> None:
    cel._cached_verdict.cache_clear()
    for index in range(20):
        node = {"model": {"format": "onnx", "artifact": f"pvc://models/m{index}/v1"}}
        assert evaluate(NESTED, node)
    info = cel._cached_verdict.cache_info()
    assert (info.misses, info.hits) == (1, 19)

