"""The erasure decisions as tables: the erased-id list, when a retrain is due, the request's
status and the outcomes it counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dpserve.api.erasurerequest import ErasureRequestStatus
from dpserve.api.privatemodel import ErasureApplied, ErasureStatus
from dpserve.controllers import erasurestate as es
from dpserve.ledger.conditions import rfc3339

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _list(*requests: tuple[str, list[str], str, datetime]) -> es.ErasureList:
    lst = es.ErasureList()
    for name, ids, mode, deadline in requests:
        lst = es.add_request(lst, request=name, uid=f"uid-{name}", ids=ids, mode=mode,  # type: ignore[arg-type]
                             deadline=rfc3339(deadline))
    return lst


def test_the_list_only_appends_and_round_trips() -> None:
    lst = _list(("a", ["r1", "r2"], "Immediate", T0), ("b", ["r2", "r3"], "NextRetrain", T0))
    assert lst.ids == ("r1", "r2", "r3")
    entry_a, entry_b = lst.requests
    assert (entry_a.up_to, entry_b.up_to) == (2, 3)
    # Idempotent by uid: listing a request twice changes nothing.
    again = es.add_request(lst, request="a", uid="uid-a", ids=["r9"], mode="Immediate",
                           deadline=rfc3339(T0))
    assert again == lst
    # A request whose ids are all listed already is covered by their positions.
    covered = es.add_request(lst, request="c", uid="uid-c", ids=["r1"], mode="Immediate",
                             deadline=rfc3339(T0))
    assert covered.ids == lst.ids and covered.entry("uid-c") is not None
    assert covered.entry("uid-c").up_to == 1  # type: ignore[union-attr]
    assert es.parse_list(es.render_list(lst)) == lst
    assert es.parse_list(None) == es.ErasureList()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"ids.json": "{", "requests.json": "[]"}, "not JSON"),
        ({"ids.json": '["a", "a"]', "requests.json": "[]"}, "repeats an id"),
        ({"ids.json": '[1]', "requests.json": "[]"}, "list of strings"),
        ({"ids.json": '["a"]', "requests.json": '[{"request": "x"}]'}, "malformed entry"),
        ({"ids.json": '["a"]', "requests.json":
          '[{"request": "x", "uid": "u", "mode": "Immediate", "deadline": "d", "upTo": 2,'
          ' "idsSha256": ""}]'},
         "inconsistent"),
    ],
)
def test_a_malformed_list_is_refused(data: dict[str, str], message: str) -> None:
    with pytest.raises(es.ErasureListError, match=message):
        es.parse_list(data)


def test_the_model_list_is_bounded() -> None:
    big = es.ErasureList(tuple(f"r{i}" for i in range(es.MAX_MODEL_IDS)))
    with pytest.raises(es.ErasureListError, match="more than"):
        es.add_request(big, request="x", uid="u", ids=["new"], mode="Immediate",
                       deadline=rfc3339(T0))


def test_a_list_that_lost_or_reordered_ids_is_refused() -> None:
    lst = _list(("a", ["r1", "r2", "r3"], "Immediate", T0))
    status = es.with_listing(None, lst)
    assert status.listed == 3 and es.check_grown(lst, status) is None
    grown = es.add_request(lst, request="b", uid="u-b", ids=["r4"], mode="Immediate",
                           deadline=rfc3339(T0))
    assert es.check_grown(grown, status) is None  # appending is fine
    shrunk = es.ErasureList(("r1", "r2"))
    assert "ids were removed" in (es.check_grown(shrunk, status) or "")
    reordered = es.ErasureList(("r2", "r1", "r3"))
    assert "no longer starts" in (es.check_grown(reordered, status) or "")


@pytest.mark.parametrize(
    ("mode", "deadline", "pate", "applied", "due"),
    [
        ("Immediate", T0 + timedelta(days=30), False, 0, True),
        ("NextRetrain", T0 + timedelta(days=30), False, 0, False),
        ("NextRetrain", T0 - timedelta(seconds=1), False, 0, True),  # deadline came
        ("NextRetrain", T0 + timedelta(days=30), True, 0, True),  # PATE: always now
        ("Immediate", T0 + timedelta(days=30), False, 2, False),  # already removed
    ],
)
def test_when_an_erasure_retrain_is_due(
    mode: str, deadline: datetime, pate: bool, applied: int, due: bool
) -> None:
    lst = _list(("a", ["r1", "r2"], mode, deadline))
    assert es.due_now(lst, applied, pate=pate, now=T0) is due


def test_next_deadline_and_applied_counts() -> None:
    lst = _list(("a", ["r1"], "NextRetrain", T0 + timedelta(hours=2)),
                ("b", ["r2"], "Immediate", T0 + timedelta(hours=1)))
    assert es.seconds_to_next_deadline(lst, 0, T0) == 7200.0
    status = es.record_applied(ErasureStatus(listed=2, job="j", attempts=1, message="m"),
                               "v2", 1, training_set_sha256="ab", retrained_teachers=2)
    assert es.applied_count(status) == 1 and status.job is None and status.attempts is None
    assert es.record_applied(status, "v3", 1, training_set_sha256=None,
                             retrained_teachers=None) == status  # nothing new removed
    assert es.given_ids({"metadata": {"annotations": {"dpserve.io/erased-ids": "7"}}}) == 7
    assert es.given_ids({"metadata": {"annotations": {"dpserve.io/erased-ids": "x"}}}) == 0
    assert es.given_ids({"metadata": {}}) == 0


def _facts(**kw: object) -> es.RequestFacts:
    base: dict[str, object] = {"record_ids": 2, "mode": "Immediate", "created": T0,
                               "deadline_days": 30, "now": T0 + timedelta(hours=1),
                               "generation": 1}
    base.update(kw)
    return es.RequestFacts(**base)  # type: ignore[arg-type]


LISTED = es.Listed(request="a", uid="u", mode="Immediate", deadline=rfc3339(T0), up_to=2,
                   ids_sha256=es.ids_sha256(["r1", "r2"]))


def _cond(status: ErasureRequestStatus, kind: str) -> tuple[str, str]:
    found = next(c for c in status.conditions if c.type == kind)
    return found.status, found.reason


@pytest.mark.parametrize(
    ("facts", "phase", "complete", "outcomes"),
    [
        (_facts(model_problem="PrivateModel m does not exist", model_missing=True),
         "Pending", ("False", "ModelNotFound"), ()),
        (_facts(model_problem="no spec.retraining"), "Failed", ("False", "NotErasable"),
         ("failed",)),
        (_facts(), "Pending", ("False", "NotListed"), ()),
        (_facts(listed=LISTED, erasure=ErasureStatus(listed=2, job="m-erase-v2")),
         "Retraining", ("False", "Retraining"), ()),
        (_facts(listed=LISTED, mode="NextRetrain", erasure=ErasureStatus(listed=2)),
         "Scheduled", ("False", "Scheduled"), ()),
        # A PATE model never waits for a scheduled retrain.
        (_facts(listed=LISTED, mode="NextRetrain", teachers=5, erasure=ErasureStatus(listed=2)),
         "Retraining", ("False", "WaitingForRetrain"), ()),
        (_facts(listed=LISTED, erasure=ErasureStatus(listed=2, gave_up=True, message="boom")),
         "Failed", ("False", "RetrainFailed"), ("failed",)),
        # v2 removed only the first id: not yet complete; v3 removed both.
        (_facts(listed=LISTED, erasure=ErasureStatus(listed=2, applied=[
            ErasureApplied(version="v2", ids=1)])), "Retraining",
         ("False", "WaitingForRetrain"), ()),
        (_facts(listed=LISTED, teachers=5, erasure=ErasureStatus(listed=2, applied=[
            ErasureApplied(version="v2", ids=1),
            ErasureApplied(version="v3", ids=2, training_set_sha256="ab" * 32,
                           retrained_teachers=2)])),
         "Completed", ("True", "RecordsRemoved"), ("completed",)),
    ],
)
def test_request_status(
    facts: es.RequestFacts, phase: str, complete: tuple[str, str], outcomes: tuple[str, ...]
) -> None:
    decision = es.decide_request(facts, ErasureRequestStatus())
    status = decision.status
    assert status.phase == phase
    assert _cond(status, es.COMPLETE) == complete
    assert _cond(status, es.OVERDUE) == ("False", "InTime")
    assert decision.outcomes == outcomes
    assert status.deadline == rfc3339(T0 + timedelta(days=30))
    if phase == "Completed":
        assert status.removed_in_version == "v3" and status.training_set_sha256 == "ab" * 32
        assert status.completion_time == rfc3339(facts.now)
        assert status.progress is not None and status.progress.teachers_affected == 2
        assert decision.requeue_after_s is None
        # Counted once: the same facts again reach no new outcome, keep the completion time.
        later = es.decide_request(
            es.RequestFacts(**{**facts.__dict__, "now": facts.now + timedelta(days=40)}),
            status)
        assert later.outcomes == () and later.status.completion_time == status.completion_time
        assert _cond(later.status, es.OVERDUE)[0] == "False"


def test_overdue_is_counted_once_and_the_request_can_still_complete() -> None:
    late = T0 + timedelta(days=31)
    first = es.decide_request(_facts(listed=LISTED, mode="NextRetrain", now=late,
                                     erasure=ErasureStatus(listed=2)), ErasureRequestStatus())
    assert first.status.phase == "Retraining"  # the deadline came: no longer just scheduled
    assert _cond(first.status, es.OVERDUE) == ("True", "DeadlinePassed")
    assert first.outcomes == ("overdue",) and first.requeue_after_s is None
    again = es.decide_request(_facts(listed=LISTED, mode="NextRetrain", now=late,
                                     erasure=ErasureStatus(listed=2)), first.status)
    assert again.outcomes == ()
    done = es.decide_request(_facts(listed=LISTED, now=late, erasure=ErasureStatus(
        listed=2, applied=[ErasureApplied(version="v2", ids=2)])), again.status)
    assert done.outcomes == ("completed",) and done.status.phase == "Completed"
    assert _cond(done.status, es.OVERDUE)[0] == "False"


def test_an_edited_spec_is_refused_with_a_condition() -> None:
    same = es.decide_request(_facts(listed=LISTED, spec_ids_sha256=es.ids_sha256(["r2", "r1"]),
                                    erasure=ErasureStatus(listed=2)), ErasureRequestStatus())
    assert _cond(same.status, es.ACCEPTED) == ("True", "Listed")
    edited = es.decide_request(_facts(listed=LISTED, spec_ids_sha256=es.ids_sha256(["r9"]),
                                      erasure=ErasureStatus(listed=2)), ErasureRequestStatus())
    assert _cond(edited.status, es.ACCEPTED) == ("False", "SpecEditRefused")


AUDIT = {"erasedRecords": 3, "nonMembers": 90, "aucBefore": "0.7900", "aucAfter": "0.4500",
         "aucAfterStandardError": "0.0450", "keptAucAfter": "0.8500"}


@pytest.mark.parametrize(("report", "expected"), [
    ({"membershipAudit": AUDIT}, AUDIT),
    ({}, None),  # no retrained teacher held an erased record: no audit ran
    ({"membershipAudit": None}, None),
    ({"membershipAudit": {**AUDIT, "aucAfter": "1.7"}}, None),  # garbled: not evidence
    ({"membershipAudit": "0.45"}, None),
])
def test_the_membership_audit_comes_from_the_erasure_report(
        report: dict[str, object], expected: dict[str, object] | None) -> None:
    audit = es.membership_audit(report)
    assert (audit.model_dump(by_alias=True) if audit is not None else None) == expected


def test_a_completed_request_shows_the_audit_of_its_version() -> None:
    audit = es.membership_audit({"membershipAudit": AUDIT})
    erasure = ErasureStatus(listed=2, applied=[ErasureApplied(
        version="v2", ids=2, retrained_teachers=2, membership_audit=audit)])
    status = es.decide_request(_facts(listed=LISTED, teachers=5, erasure=erasure),
                               ErasureRequestStatus()).status
    assert status.phase == "Completed" and status.membership_audit == audit
    message = next(c.message for c in status.conditions if c.type == es.COMPLETE)
    assert "AUC of the 3 erased record(s) 0.7900 before, 0.4500 ± 0.0450 after" in message
    # Kept on the model's record of the version (the request may be read much later).
    recorded = es.record_applied(ErasureStatus(listed=3), "v3", 3, training_set_sha256=None,
                                 retrained_teachers=1, membership_audit=audit)
    assert recorded.applied[-1].membership_audit == audit
