"""The three PATCH flavours an API server accepts, applied to plain JSON objects."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

from dpserve_testkit.localkube import errors

MERGE = "application/merge-patch+json"
JSON = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"

# Lists that strategic merge patch merges by a key instead of replacing (the ones the
# operator's owned kinds use); everything else is replaced as in a JSON merge patch.
_STRATEGIC_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "finalizers": "",
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, ``null`` deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, field: str = "") -> Any:
    """A subset of strategic merge patch: known lists merge by key, ``$patch: delete`` drops.

    Server-side this needs the Go type's patch strategy per field; the emulator knows the
    strategies of the few lists its clients touch (see ``_STRATEGIC_KEYS``).
    """
    if isinstance(patch, dict):
        result = copy.deepcopy(target) if isinstance(target, dict) else {}
        for key, value in patch.items():
            if key.startswith("$"):
                continue
            if value is None:
                result.pop(key, None)
            else:
                result[key] = strategic_merge_patch(result.get(key), value, key)
        return result
    if isinstance(patch, list) and field in _STRATEGIC_KEYS and isinstance(target, list):
        merge_key = _STRATEGIC_KEYS[field]
        if not merge_key:  # a set of scalars (finalizers): union
            return list(target) + [item for item in patch if item not in target]
        merged = copy.deepcopy(target)
        for item in patch:
            if not isinstance(item, dict) or merge_key not in item:
                merged.append(copy.deepcopy(item))
                continue
            index = next(
                (i for i, old in enumerate(merged)
                 if isinstance(old, dict) and old.get(merge_key) == item[merge_key]),
                None,
            )
            if item.get("$patch") == "delete":
                if index is not None:
                    merged.pop(index)
            elif index is None:
                merged.append(strategic_merge_patch({}, item))
            else:
                merged[index] = strategic_merge_patch(merged[index], item)
        return merged
    return copy.deepcopy(patch)


def _prune(live: Any, previous: Any, current: Any, field: str = "") -> Any:
    """``live`` without what ``previous`` applied and ``current`` no longer applies."""
    if isinstance(previous, dict) and isinstance(live, dict):
        current = current if isinstance(current, dict) else {}
        out = dict(live)
        for key, before in previous.items():
            if key not in current:
                out.pop(key, None)
            elif key in out:
                out[key] = _prune(out[key], before, current[key], key)
        return out
    merge_key = _STRATEGIC_KEYS.get(field)
    if merge_key and isinstance(previous, list) and isinstance(live, list):
        now = {item.get(merge_key): item for item in current or []
               if isinstance(item, dict)}
        gone = {item.get(merge_key) for item in previous
                if isinstance(item, dict) and item.get(merge_key) not in now}
        before = {item.get(merge_key): item for item in previous if isinstance(item, dict)}
        return [_prune(item, before[item.get(merge_key)], now[item.get(merge_key)])
                if isinstance(item, dict) and item.get(merge_key) in before
                and item.get(merge_key) in now else item
                for item in live
                if not (isinstance(item, dict) and item.get(merge_key) in gone)]
    return live


def server_side_apply(live: dict[str, Any], previous: Any, applied: dict[str, Any]
                      ) -> dict[str, Any]:
    """A server-side apply of ``applied`` by a field manager whose last applied
    configuration was ``previous`` (None: its first apply).

    The subset the emulator implements: the manager's fields are set as ``applied`` says
    (maps merge, the lists of ``_STRATEGIC_KEYS`` merge by key, other lists are atomic),
    fields it applied before and now omits are removed, fields only other writers set are
    kept. Not emulated: ``managedFields``, and conflicts with fields another manager owns
    (every apply wins, as with ``--force-conflicts``).
    """
    base = _prune(live, previous, applied) if previous is not None else live
    result: dict[str, Any] = strategic_merge_patch(base, applied)
    return result


class TestFailed(Exception):
    """A JSON patch ``test`` operation did not hold (the API server answers 422)."""


def json_patch(target: dict[str, Any], operations: Any) -> dict[str, Any]:
    if not isinstance(operations, list):
        raise errors.bad_request("a JSON patch must be a list of operations")
    try:
        result: dict[str, Any] = jsonpatch.apply_patch(target, operations, in_place=False)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise TestFailed(str(exc)) from exc
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise TestFailed(str(exc)) from exc
    return result


def apply_patch(target: dict[str, Any], patch: Any, content_type: str) -> dict[str, Any]:
    """Apply ``patch`` of the given media type to a copy of ``target``."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == MERGE:
        if not isinstance(patch, dict):
            raise errors.bad_request("a merge patch must be a JSON object")
        result: dict[str, Any] = merge_patch(target, patch)
        return result
    if kind == STRATEGIC:
        if not isinstance(patch, dict):
            raise errors.bad_request("a strategic merge patch must be a JSON object")
        result = strategic_merge_patch(target, patch)
        return result
    if kind == JSON:
        return json_patch(target, patch)
    raise errors.unsupported_media_type(content_type)
