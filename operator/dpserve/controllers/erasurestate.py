"""The erasure decisions, as pure functions (no API calls): tested as tables.

The erased ids of a model live in its ConfigMap ``<model>-erasure`` (owned by the
PrivateModel, so deleting the model deletes them with it, and only then):

- ``ids.json``: the ids, in the order they were listed, each once. It only grows: every
  training Job of the model mounts it and leaves the ids out, so an erased record never
  comes back in a later retrain, whatever the trigger.
- ``requests.json``: which request listed up to which position, its mode and deadline.

Why a ConfigMap and not the PrivateModel's status: the Job reads it as a file (no API access
for the trainer), it holds up to 1 MiB (thousands of ids) where the status is bounded and is
rewritten on every reconcile, and an ErasureRequest deleted after completion must not take
its ids with it. The model's status keeps the list's count and the SHA-256 of that prefix:
a list that lost ids (edited or recreated by hand) is refused before any Job starts.

A version's erasure coverage is one number: the Job was given the first ``n`` ids (its
annotation), so the version removed them; a request is complete once a version covers the
position of its last id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from dpserve.api.base import ConditionStatus
from dpserve.api.erasurerequest import (
    ErasureMode,
    ErasurePhase,
    ErasureProgress,
    ErasureRequestStatus,
    MembershipAudit,
)
from dpserve.api.privatemodel import ErasureApplied, ErasureStatus
from dpserve.ledger.conditions import parse_rfc3339, rfc3339, set_condition
from dpserve.resources.labels import ERASED_IDS
from dpserve.resources.names import ERASED_IDS_KEY, ERASURE_REQUESTS_KEY

# ids.json must fit a ConfigMap (1 MiB) with room for requests.json: 5000 ids of at most
# 128 characters plus JSON quoting stay under 700 KB.
MAX_MODEL_IDS = 5000
COMPLETE = "Complete"
OVERDUE = "Overdue"
ACCEPTED = "Accepted"
APPLIED_KEPT = 64


class ErasureListError(ValueError):
    """The model's erased-id ConfigMap is malformed or lost ids (message says which)."""


@dataclass(frozen=True)
class Listed:
    """One request's entry: its ids are among the first ``up_to`` of the list."""

    request: str
    uid: str
    mode: ErasureMode
    deadline: str
    up_to: int
    ids_sha256: str  # of the ids the request named when listed (an edit is detected)

    def wire(self) -> dict[str, Any]:
        return {"request": self.request, "uid": self.uid, "mode": self.mode,
                "deadline": self.deadline, "upTo": self.up_to, "idsSha256": self.ids_sha256}


@dataclass(frozen=True)
class ErasureList:
    ids: tuple[str, ...] = ()
    requests: tuple[Listed, ...] = field(default_factory=tuple)

    def entry(self, uid: str) -> Listed | None:
        return next((r for r in self.requests if r.uid == uid), None)


def prefix_digest(ids: Sequence[str], count: int) -> str:
    """SHA-256 of the first ``count`` ids (one per line): what the model's status keeps."""
    return hashlib.sha256("".join(f"{i}\n" for i in ids[:count]).encode("utf-8")).hexdigest()


def ids_sha256(ids: Sequence[str]) -> str:
    """SHA-256 of a request's ids, sorted, one per line."""
    return prefix_digest(sorted(ids), len(ids))


def parse_list(data: dict[str, str] | None) -> ErasureList:
    """The ConfigMap's data; an empty list when there is none."""
    if not data:
        return ErasureList()
    try:
        ids = json.loads(data.get(ERASED_IDS_KEY, "[]"))
        requests = json.loads(data.get(ERASURE_REQUESTS_KEY, "[]"))
    except json.JSONDecodeError as exc:
        raise ErasureListError(f"not JSON: {exc}") from exc
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ErasureListError(f"{ERASED_IDS_KEY} must be a JSON list of strings")
    if len(set(ids)) != len(ids):
        raise ErasureListError(f"{ERASED_IDS_KEY} repeats an id")
    listed: list[Listed] = []
    if not isinstance(requests, list):
        raise ErasureListError(f"{ERASURE_REQUESTS_KEY} must be a JSON list")
    for item in requests:
        try:
            entry = Listed(request=str(item["request"]), uid=str(item["uid"]),
                           mode=item["mode"], deadline=str(item["deadline"]),
                           up_to=int(item["upTo"]), ids_sha256=str(item["idsSha256"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ErasureListError(f"{ERASURE_REQUESTS_KEY}: malformed entry: {exc}") from exc
        if entry.mode not in ("Immediate", "NextRetrain") or not 0 < entry.up_to <= len(ids):
            raise ErasureListError(f"{ERASURE_REQUESTS_KEY}: entry of {entry.request} is "
                                   "inconsistent with the id list")
        listed.append(entry)
    return ErasureList(tuple(ids), tuple(listed))


def render_list(lst: ErasureList) -> dict[str, str]:
    return {
        ERASED_IDS_KEY: json.dumps(list(lst.ids), separators=(",", ":")),
        ERASURE_REQUESTS_KEY: json.dumps([r.wire() for r in lst.requests],
                                         separators=(",", ":")),
    }


def add_request(
    lst: ErasureList, *, request: str, uid: str, ids: Sequence[str], mode: ErasureMode,
    deadline: str,
) -> ErasureList:
    """The list with ``ids`` appended (those not yet listed) and the request's entry.

    Idempotent: a request already listed (by uid) changes nothing. Raises when the model's
    list would exceed MAX_MODEL_IDS.
    """
    if lst.entry(uid) is not None:
        return lst
    known = set(lst.ids)
    new = [i for i in ids if i not in known]
    if len(lst.ids) + len(new) > MAX_MODEL_IDS:
        raise ErasureListError(
            f"the model's erased-id list would hold {len(lst.ids) + len(new)} ids, more than "
            f"{MAX_MODEL_IDS}: retrain the model on a data set without these records instead")
    all_ids = (*lst.ids, *new)
    position = {rid: n for n, rid in enumerate(all_ids)}
    up_to = max(position[i] for i in ids) + 1
    entry = Listed(request=request, uid=uid, mode=mode, deadline=deadline, up_to=up_to,
                   ids_sha256=ids_sha256(ids))
    return ErasureList(all_ids, (*lst.requests, entry))


def check_grown(lst: ErasureList, status: ErasureStatus | None) -> str | None:
    """Why ``lst`` must not be used (it lost or reordered ids since last read), or None."""
    if status is None or status.listed == 0 or status.listed_sha256 is None:
        return None
    if len(lst.ids) < status.listed:
        return (f"the erased-id list holds {len(lst.ids)} ids but held {status.listed}: ids "
                "were removed; no training Job starts until it is restored")
    if prefix_digest(lst.ids, status.listed) != status.listed_sha256:
        return ("the erased-id list no longer starts with the ids it held (edited by hand?); "
                "no training Job starts until it is restored")
    return None


def applied_count(status: ErasureStatus | None) -> int:
    """How many ids of the list the serving version (or an earlier one) removed."""
    if status is None or not status.applied:
        return 0
    return max(a.ids for a in status.applied)


def pending(lst: ErasureList, applied: int) -> list[Listed]:
    return [r for r in lst.requests if r.up_to > applied]


def due_now(lst: ErasureList, applied: int, *, pate: bool, now: datetime) -> bool:
    """Whether an erasure retrain must start now: a PATE ensemble retrains only the affected
    teachers (cheap, no ε), so always; a DP-SGD model for an Immediate request or once a
    NextRetrain request's deadline came."""
    return any(pate or r.mode == "Immediate" or parse_rfc3339(r.deadline) <= now
               for r in pending(lst, applied))


def seconds_to_next_deadline(lst: ErasureList, applied: int, now: datetime) -> float | None:
    waits = [(parse_rfc3339(r.deadline) - now).total_seconds()
             for r in pending(lst, applied) if r.mode == "NextRetrain"]
    future = [w for w in waits if w > 0]
    return min(future) if future else None


def given_ids(job: dict[str, Any]) -> int:
    """How many ids of the list a training Job was given (its annotation; 0 without)."""
    text = ((job.get("metadata") or {}).get("annotations") or {}).get(ERASED_IDS, "0")
    try:
        return max(int(text), 0)
    except (TypeError, ValueError):
        return 0


def record_applied(
    status: ErasureStatus, version: str, ids: int, *, training_set_sha256: str | None,
    retrained_teachers: int | None, membership_audit: MembershipAudit | None = None,
) -> ErasureStatus:
    """The model's erasure status once ``version`` (trained without the first ``ids``) rolled."""
    if ids <= applied_count(status):
        return status
    entry = ErasureApplied(version=version, ids=ids, training_set_sha256=training_set_sha256,
                           retrained_teachers=retrained_teachers,
                           membership_audit=membership_audit)
    applied = [*status.applied, entry][-APPLIED_KEPT:]
    return status.model_copy(update={"applied": applied, "job": None, "attempts": None,
                                     "message": None, "gave_up": None})


def membership_audit(report: dict[str, Any]) -> MembershipAudit | None:
    """The PATE erasure Job's membership-inference audit (``membershipAudit`` of its report);
    None where it ran none (no teacher held an erased record, no held-out records). An audit
    the report garbled is None too: the erasure itself is exact, the audit is its evidence."""
    raw = report.get("membershipAudit")
    if not isinstance(raw, dict):
        return None
    try:
        return MembershipAudit.model_validate(raw)
    except ValueError:
        return None


def audit_summary(audit: MembershipAudit | None) -> str:
    """The audit for the Complete condition's message ("" without one)."""
    if audit is None:
        return ""
    return (f"; membership-inference AUC of the {audit.erased_records} erased record(s) "
            f"{audit.auc_before} before, {audit.auc_after} ± {audit.auc_after_standard_error} "
            f"after (0.5: like records never trained on; remaining members {audit.kept_auc_after})")


# ------------------------------------------------------------------ the request's status

Outcome = Literal["completed", "failed", "overdue"]


@dataclass(frozen=True)
class RequestFacts:
    """What the request controller read, for one request."""

    record_ids: int
    mode: ErasureMode
    created: datetime
    deadline_days: int
    now: datetime
    generation: int | None
    model_problem: str | None = None  # the model is missing or cannot be retrained
    model_missing: bool = False
    listed: Listed | None = None
    erasure: ErasureStatus | None = None
    teachers: int | None = None  # PATE ensembles: the teacher count
    spec_ids_sha256: str | None = None  # of spec.recordIds now (None: not compared)


@dataclass(frozen=True)
class RequestDecision:
    status: ErasureRequestStatus
    outcomes: tuple[Outcome, ...] = ()  # newly reached: counted once each
    requeue_after_s: float | None = None


def deadline_of(created: datetime, days: int) -> datetime:
    return created + timedelta(days=days)


@dataclass(frozen=True)
class _Verdict:
    """A condition's status, reason and message."""

    status: ConditionStatus
    reason: str
    message: str


def _phase(facts: RequestFacts, covering: ErasureApplied | None, deadline: datetime
           ) -> tuple[ErasurePhase, _Verdict]:
    """The request's phase and its ``Complete`` condition (first matching case wins)."""
    erasure = facts.erasure
    if covering is not None:
        teachers = (f" ({covering.retrained_teachers} teacher(s) retrained)"
                    if covering.retrained_teachers is not None else "")
        return "Completed", _Verdict(
            "True", "RecordsRemoved", f"version {covering.version} was trained without the "
            f"records{teachers}; they are excluded from every later training run of the model"
            + audit_summary(covering.membership_audit))
    if facts.model_problem is not None:
        missing = facts.model_missing
        return ("Pending" if missing else "Failed"), _Verdict(
            "False", "ModelNotFound" if missing else "NotErasable", facts.model_problem)
    if facts.listed is None:
        return "Pending", _Verdict("False", "NotListed",
                                   "the ids are not yet listed for the model")
    if erasure is not None and erasure.gave_up:  # the model's status says why
        return "Failed", _Verdict("False", "RetrainFailed",
                                  erasure.message or "the model's erasure retrain failed")
    if erasure is not None and erasure.job is not None:
        last = f"; last attempt: {erasure.message}" if erasure.message else ""
        return "Retraining", _Verdict(
            "False", "Retraining", f"Job {erasure.job} trains the model without the records"
            + last)
    if facts.mode == "NextRetrain" and facts.now < deadline and facts.teachers is None:
        return "Scheduled", _Verdict(
            "False", "Scheduled", "folded into the model's next retrain; started by "
            f"{rfc3339(deadline)} at the latest")
    return "Retraining", _Verdict("False", "WaitingForRetrain", "listed; the model's "
                                  "reconcile starts the retrain without the records")


def _accepted(facts: RequestFacts) -> _Verdict:
    listed = facts.listed
    if listed is None:
        return _Verdict("Unknown", "NotListed", "not listed yet")
    if facts.spec_ids_sha256 not in (None, listed.ids_sha256):
        # Only where the API server skipped the CRD's immutability rule (CEL transition
        # rules): the listed ids are the ones erased, and the edit is said, never dropped.
        return _Verdict("False", "SpecEditRefused",
                        "spec is immutable: this request erases the ids it named when it "
                        "was listed; create a new ErasureRequest for other records")
    return _Verdict("True", "Listed", f"{facts.record_ids} id(s) listed for the model")


def _outcomes(phase: ErasurePhase | None, previous: ErasureRequestStatus, overdue: bool
              ) -> tuple[Outcome, ...]:
    """Outcomes newly reached (each counted once by the metric)."""
    was_overdue = any(c.type == OVERDUE and c.status == "True" for c in previous.conditions)
    reached: list[Outcome] = []
    if phase == "Completed" and previous.phase != "Completed":
        reached.append("completed")
    if phase == "Failed" and previous.phase != "Failed":
        reached.append("failed")
    if overdue and not was_overdue:
        reached.append("overdue")
    return tuple(reached)


def decide_request(facts: RequestFacts, previous: ErasureRequestStatus) -> RequestDecision:
    """The request's status from the facts; outcomes newly reached (for the metric)."""
    deadline = deadline_of(facts.created, facts.deadline_days)
    status = previous.model_copy(deep=True)
    status.observed_generation = facts.generation
    status.deadline = rfc3339(deadline)
    covering = None
    if facts.listed is not None and facts.erasure is not None:
        covering = next((a for a in facts.erasure.applied if a.ids >= facts.listed.up_to), None)
    status.progress = ErasureProgress(
        records_listed=facts.record_ids if facts.listed is not None else 0,
        records_total=facts.record_ids,
        teachers_affected=covering.retrained_teachers if covering is not None else None,
        teachers_total=facts.teachers,
    )

    def cond(kind: str, verdict: _Verdict) -> None:
        status.conditions = set_condition(
            status.conditions, type=kind, status=verdict.status, reason=verdict.reason,
            message=verdict.message, generation=facts.generation, now=facts.now)

    status.phase, complete = _phase(facts, covering, deadline)
    if covering is not None:
        status.removed_in_version = covering.version
        status.training_set_sha256 = covering.training_set_sha256
        status.membership_audit = covering.membership_audit
        status.completion_time = previous.completion_time or rfc3339(facts.now)
    cond(COMPLETE, complete)
    cond(ACCEPTED, _accepted(facts))
    overdue = status.phase != "Completed" and facts.now >= deadline
    cond(OVERDUE, _Verdict(
        "True" if overdue else "False", "DeadlinePassed" if overdue else "InTime",
        f"deadline {rfc3339(deadline)} " + ("passed" if overdue else "not passed")
        + ("" if status.phase != "Completed" else f"; completed {status.completion_time}")))
    requeue = None
    if status.phase not in ("Completed", "Failed") and not overdue:
        requeue = max((deadline - facts.now).total_seconds(), 1.0)
    return RequestDecision(status, _outcomes(status.phase, previous, overdue), requeue)


def with_listing(status: ErasureStatus | None, lst: ErasureList) -> ErasureStatus:
    """The model's erasure status after reading ``lst`` (count and prefix digest)."""
    base = status or ErasureStatus()
    if base.listed == len(lst.ids):
        return base
    return replace_status(base, listed=len(lst.ids),
                          listed_sha256=prefix_digest(lst.ids, len(lst.ids)))


def replace_status(status: ErasureStatus, **changes: Any) -> ErasureStatus:
    return status.model_copy(update=changes)

