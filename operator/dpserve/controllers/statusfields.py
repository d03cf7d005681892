"""Reading and writing a PrivateModel status across operator and CRD versions (pure).

The wire models forbid unknown fields, and the status carries what cannot be recomputed:
the retired versions, their budgets, the lifetime ε. So a status is never reset:

- *upgrade* (the CRD, or an operator that wrote the status, is newer than this operator):
  fields this operator does not know are set aside and written back verbatim (top-level
  keys, and keys of each ``versions[]`` record and ``conditions[]`` entry);
- a status that still does not parse is *unreadable*: the reconcile fails closed (no child
  changed, no retrain advanced, nothing rewritten) and only ``Ready=False`` with reason
  ``StatusUnreadable`` is set on the raw status, every other field kept as it was;
- *rollback* (the CRD is older than this operator): the API server prunes fields the old
  schema lacks; :func:`missing_paths` finds them in the written object, so the operator
  reports them once and stops rewriting them (a write loop otherwise).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from dpserve.api.base import Condition
from dpserve.api.privatemodel import PrivateModelStatus, VersionRecord
from dpserve.controllers.parse import describe
from dpserve.ledger.conditions import rfc3339

Obj = dict[str, Any]
Path = tuple[str | int, ...]
STATUS_UNREADABLE = "StatusUnreadable"

# Lists of sub-models whose items keep their unknown keys, and the key naming each item.
_ITEMS: dict[str, tuple[type[BaseModel], str]] = {
    "versions": (VersionRecord, "version"),
    "conditions": (Condition, "type"),
}


@dataclass
class StatusRead:
    status: PrivateModelStatus
    extras: Obj = field(default_factory=dict)  # unknown top-level keys, verbatim
    item_extras: dict[str, dict[str, Obj]] = field(default_factory=dict)  # list -> key -> keys
    problem: str | None = None  # set: the status is unreadable (status is then empty)

    @property
    def unknown_fields(self) -> list[str]:
        names = [f"status.{k}" for k in self.extras]
        for list_name, items in self.item_extras.items():
            names += [f"status.{list_name}[{key}].{k}" for key, extra in items.items()
                      for k in extra]
        return names


def _known(model: type[BaseModel]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def read_model_status(raw: Any) -> StatusRead:
    """The status this operator can read, what it does not know, or why it cannot."""
    if raw is None:
        return StatusRead(PrivateModelStatus())
    if not isinstance(raw, dict):
        return StatusRead(PrivateModelStatus(), problem="status: not an object")
    known = _known(PrivateModelStatus)
    data = {k: v for k, v in raw.items() if k in known}
    read = StatusRead(PrivateModelStatus(),
                      extras={k: copy.deepcopy(v) for k, v in raw.items() if k not in known})
    for list_name, (model, key) in _ITEMS.items():
        items = data.get(list_name)
        if not isinstance(items, list):
            continue
        item_known = _known(model)
        cleaned: list[Any] = []
        for item in items:
            if isinstance(item, dict):
                extra = {k: copy.deepcopy(v) for k, v in item.items() if k not in item_known}
                if extra:
                    read.item_extras.setdefault(list_name, {})[str(item.get(key))] = extra
                item = {k: v for k, v in item.items() if k in item_known}
            cleaned.append(item)
        data[list_name] = cleaned
    try:
        read.status = PrivateModelStatus.model_validate(data)
    except ValidationError as exc:
        read.problem = describe(exc, "status.")
    return read


def with_extras(wire: Obj, read: StatusRead) -> Obj:
    """``wire`` (this operator's status) with the fields it does not know put back."""
    out = {**copy.deepcopy(read.extras), **wire}
    for list_name, extras in read.item_extras.items():
        _, key = _ITEMS[list_name]
        for item in out.get(list_name) or []:
            extra = extras.get(str(item.get(key)))
            if extra:
                for k, v in extra.items():
                    item.setdefault(k, copy.deepcopy(v))
    return out


def unreadable(
    raw_status: Obj, message: str, generation: int | None, now: datetime
) -> Obj | None:
    """The raw status, untouched but for ``Ready=False StatusUnreadable`` (and the kstatus
    pair GitOps tools read: ``Stalled=True``, ``Reconciling=False``, same reason).

    None when ``conditions`` itself is what cannot be read: nothing is then written (an
    Event alone says why), since replacing the list would lose it.
    """
    conditions = raw_status.get("conditions")
    if conditions is None:
        conditions = []
    if not isinstance(conditions, list):
        return None
    text = ("the operator cannot read this status and changes nothing until it can "
            f"(it is kept as it is): {message}")[:32768]
    wanted = (("Ready", "False", STATUS_UNREADABLE), ("Stalled", "True", STATUS_UNREADABLE),
              ("Reconciling", "False", "Stalled"))
    replaced = {kind for kind, _, _ in wanted}
    out = copy.deepcopy(raw_status)
    kept = [c for c in conditions if not (isinstance(c, dict) and c.get("type") in replaced)]
    for kind, status, reason in wanted:
        before = next((c for c in conditions
                       if isinstance(c, dict) and c.get("type") == kind), None)
        same = before is not None and before.get("status") == status
        cond: Obj = {
            "type": kind, "status": status, "reason": reason, "message": text,
            "lastTransitionTime": before.get("lastTransitionTime", rfc3339(now))
            if same and before is not None else rfc3339(now),
        }
        if generation is not None:
            cond["observedGeneration"] = generation
        kept.append(cond)
    out["conditions"] = kept
    return out


def missing_paths(sent: Any, got: Any, prefix: Path = ()) -> list[Path]:
    """Paths present in ``sent`` and absent from ``got``: what the API server pruned."""
    if isinstance(sent, dict) and isinstance(got, dict):
        out: list[Path] = []
        for k, v in sent.items():
            if k not in got:
                out.append((*prefix, k))
            else:
                out += missing_paths(v, got[k], (*prefix, k))
        return out
    if isinstance(sent, list) and isinstance(got, list) and len(sent) == len(got):
        return [p for i, (a, b) in enumerate(zip(sent, got, strict=True))
                for p in missing_paths(a, b, (*prefix, i))]
    return []


def without_paths(obj: Obj, paths: list[Path] | set[Path]) -> Obj:
    """``obj`` without the given paths (list indices in a path match any item)."""
    out = copy.deepcopy(obj)
    for path in paths:
        _drop(out, list(path))
    return out


def _drop(node: Any, path: list[str | int]) -> None:
    if not path:
        return
    head, rest = path[0], path[1:]
    if isinstance(node, dict) and isinstance(head, str) and head in node:
        if rest:
            _drop(node[head], rest)
        else:
            del node[head]
    elif isinstance(node, list) and isinstance(head, int):
        for item in node:  # the same field of every item (items share one schema)
            _drop(item, rest)


def generic(path: Path) -> Path:
    """``path`` with list indices replaced by 0: one entry per schema field, not per item."""
    return tuple(0 if isinstance(p, int) else p for p in path)


def dotted(path: Path) -> str:
    return "status" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
