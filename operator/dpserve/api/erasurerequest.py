"""ErasureRequest: remove records (by opaque id) from a PrivateModel by retraining what saw them.

A request names one PrivateModel of its namespace and the ids of the records to erase (the
ids the data set files carry, see docs/training.md). The operator lists the ids for the
model (they are excluded from every later training run of it) and rolls version N+1
trained without them: for a PATE ensemble only the teachers whose partition held a record
are retrained, immediately; a DP-SGD or DP-LoRA model retrains without them immediately or
with its next scheduled retrain, at the latest at the deadline. No ε is refunded
(docs/erasure.md, docs/accounting.md).

The spec is immutable: a request is a record of what a person asked for; a correction is a
new request.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, StringConstraints

from dpserve.api.base import ApiModel, Condition, Name
from dpserve.api.cel import CelRule
from dpserve.api.validation import CelModel

KIND = "ErasureRequest"
PLURAL = "erasurerequests"
SHORT_NAMES = ["er"]

# Opaque: whatever the data owner keys records by (a UUID, a hashed subject id, a row key).
# No whitespace or commas (they separate ids in logs and messages); bounded for the CRD's
# CEL cost and for the ConfigMap that keeps a model's erased ids.
RECORD_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+=-]*$"
RECORD_ID_MAX = 128
MAX_RECORD_IDS = 1000
RecordId = Annotated[
    str, StringConstraints(pattern=RECORD_ID_PATTERN, min_length=1, max_length=RECORD_ID_MAX)
]
ErasureMode = Literal["Immediate", "NextRetrain"]
DEFAULT_DEADLINE_DAYS = 30  # GDPR Art. 12(3): without undue delay, within one month


class ModelRef(ApiModel):
    name: Name = Field(description="The PrivateModel (same namespace) trained on the records.")


class ErasureRequestSpec(CelModel):
    model_ref: ModelRef
    record_ids: Annotated[list[RecordId], Field(min_length=1, max_length=MAX_RECORD_IDS)] = Field(
        description="Opaque ids of the records to erase, as the data set files carry them "
        "(the npz field 'ids', the JSONL key 'id'); at most 1000 per request, 128 characters "
        "each, no duplicates."
    )
    reason: Annotated[str, StringConstraints(min_length=1, max_length=1024)] = Field(
        description="Why the records are erased (e.g. 'GDPR Art. 17 request #4711'); kept for "
        "the audit trail, never interpreted."
    )
    mode: ErasureMode = Field(
        "Immediate",
        description="Immediate: retrain now (a PATE ensemble always retrains now, only the "
        "affected teachers). NextRetrain: fold the erasure into the model's next scheduled "
        "retrain (DP-SGD / DP-LoRA models), started anyway when deadlineDays pass.",
    )
    deadline_days: Annotated[int, Field(ge=1, le=90)] = Field(
        DEFAULT_DEADLINE_DAYS,
        description="Days after creation by which the records must be out of the served "
        "model; a request still open then is Overdue (condition, metric, alert).",
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule("self.recordIds.all(i, self.recordIds.exists_one(j, j == i))",
                "recordIds must not repeat an id", ".recordIds"),
    )


ErasurePhase = Literal["Pending", "Scheduled", "Retraining", "Completed", "Failed"]
Timestamp = Annotated[str, StringConstraints(max_length=64)]


class ErasureProgress(ApiModel):
    """How far the erasure got: ids listed for the model, and teachers retrained (PATE)."""

    records_listed: Annotated[int, Field(ge=0)] = 0
    records_total: Annotated[int, Field(ge=0)] = 0
    teachers_affected: Annotated[int, Field(ge=0)] | None = None
    teachers_total: Annotated[int, Field(ge=0)] | None = None


AucText = Annotated[str, StringConstraints(pattern=r"^(0(\.[0-9]+)?|1(\.0+)?)$",
                                            max_length=16)]


class MembershipAudit(ApiModel):
    """The membership-inference audit of a PATE erasure (the training audit's loss-threshold
    attack, Yeom et al. 2018): each erased record scored by the teacher whose partition held
    it, before and after, against held-out records those teachers never saw. AUC 0.5: the
    attack cannot tell the erased records from non-members."""

    erased_records: Annotated[int, Field(ge=0)] = Field(
        description="Erased records that a retrained teacher had held (the attack's members).")
    non_members: Annotated[int, Field(ge=0)] = Field(
        description="Held-out records scored as the non-members, per retrained teacher.")
    auc_before: AucText = Field(description="Attack AUC on the erased records, old teachers.")
    auc_after: AucText = Field(description="The same records under the retrained teachers.")
    auc_after_standard_error: Annotated[str, StringConstraints(max_length=16)] = Field(
        description="Hanley-McNeil standard error of aucAfter (few records: a wide one).")
    kept_auc_after: AucText = Field(
        description="Control: the retrained teachers' remaining members against the same "
        "non-members (the attack must still find them, else it shows nothing).")


class ErasureRequestStatus(ApiModel):
    observed_generation: int | None = None
    phase: ErasurePhase | None = None
    deadline: Timestamp | None = Field(
        default=None, description="creationTimestamp + spec.deadlineDays."
    )
    progress: ErasureProgress | None = None
    removed_in_version: Annotated[str, StringConstraints(max_length=16)] | None = Field(
        default=None, description="The first model version trained without the records."
    )
    training_set_sha256: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        default=None, description="SHA-256 of that version's training-set manifest "
        "(training-set.json in the artifact: the record ids each teacher or the model was "
        "trained on, and the erased ids excluded)."
    )
    membership_audit: MembershipAudit | None = Field(
        default=None, description="PATE models: the membership-inference audit of every "
        "record that removedInVersion removed (this request's and any erased with them)."
    )
    completion_time: Timestamp | None = None
    conditions: Annotated[list[Condition], Field(max_length=8)] = Field(default_factory=list)


# The request is a record of what was asked: no edit is admitted once created.
OBJECT_RULES: tuple[CelRule, ...] = (
    CelRule("self.spec == oldSelf.spec",
            "spec is immutable: an ErasureRequest records what was asked; create a new request "
            "to erase other records", ".spec"),
)


class ErasureRequest(ApiModel):
    api_version: str = "dpserve.io/v1alpha1"
    kind: Literal["ErasureRequest"] = "ErasureRequest"
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: ErasureRequestSpec
    status: ErasureRequestStatus | None = None
