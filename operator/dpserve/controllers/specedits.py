"""What an edit of spec.budgetRef / spec.model means for a PrivateModel, as a pure function.

The operator acts on ``status.accepted``: the declared budget, artifact, version and
training it last accepted, and whether the model has spent on them. Until it has spent,
every edit is followed (a typo in budgetRef can be fixed). Once it has spent:

- ``spec.budgetRef.name`` is fixed: the spend is recorded on that budget, and moving would
  start the model on a fresh ε;
- a new artifact or declared training needs a new ``spec.model.version``: a version's
  training is charged once, so new weights under an old version would be served unpaid;
- a new version is rolled out on the budget the model spends (``status.budget``), its
  declared training charged first; a version the model already served is refused.

The API server refuses the same edits at admission (transition rules in
:data:`dpserve.api.privatemodel.OBJECT_RULES`); this decision is what the operator does
where a cluster did not enforce them, and how it follows the edits that are allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dpserve.api.privatemodel import AcceptedSpec, PrivateModelSpec

FOLLOW = "follow"
ROLL = "roll"
KEEP = "keep"


@dataclass(frozen=True)
class EditDecision:
    action: str  # follow | roll | keep
    accepted: AcceptedSpec  # what the operator acts on after this reconcile
    refusals: tuple[str, ...] = ()  # one message per refused edit, naming the field
    changed: tuple[str, ...] = field(default=())  # the spec fields that changed

    @property
    def refused(self) -> str | None:
        return "; ".join(self.refusals) if self.refusals else None


def declared(spec: PrivateModelSpec, spent: bool = False) -> AcceptedSpec:
    return AcceptedSpec(budget_ref=spec.budget_ref.name, artifact=spec.model.artifact,
                        version=spec.model.version, training=spec.model.training, spent=spent)


def _changed(spec: PrivateModelSpec, accepted: AcceptedSpec) -> tuple[str, ...]:
    out = []
    if spec.budget_ref.name != accepted.budget_ref:
        out.append("spec.budgetRef.name")
    if spec.model.artifact != accepted.artifact:
        out.append("spec.model.artifact")
    if spec.model.version != accepted.version:
        out.append("spec.model.version")
    if spec.model.training != accepted.training:
        out.append("spec.model.training")
    return tuple(out)


def decide(
    spec: PrivateModelSpec, accepted: AcceptedSpec | None, *, current_version: str | None,
    served_versions: Sequence[str],
) -> EditDecision:
    """Follow, roll out or refuse the spec's declared model, given what was accepted."""
    if accepted is None:
        return EditDecision(KEEP, declared(spec))
    changed = _changed(spec, accepted)
    if not changed:
        return EditDecision(KEEP, accepted)
    if not accepted.spent:
        return EditDecision(FOLLOW, declared(spec), changed=changed)
    refusals: list[str] = []
    if "spec.budgetRef.name" in changed:
        refusals.append(
            f"spec.budgetRef.name: cannot change from {accepted.budget_ref} to "
            f"{spec.budget_ref.name} once the model has spent on {accepted.budget_ref} (its "
            "spend is recorded there); serve from a new budget with "
            "spec.retraining.nextBudget, or create a new PrivateModel")
    new_version = spec.model.version != accepted.version
    if not new_version and ("spec.model.artifact" in changed or
                            "spec.model.training" in changed):
        fields = " and ".join(f for f in ("spec.model.artifact", "spec.model.training")
                              if f in changed)
        refusals.append(
            f"{fields}: changed without a new spec.model.version once the model has spent: "
            f"version {accepted.version}'s training was charged once, so a new artifact is "
            "a new version")
    if new_version and (spec.model.version == current_version
                        or spec.model.version in served_versions):
        refusals.append(
            f"spec.model.version: {spec.model.version} was already served by this model "
            "(the ledger keys spend by version); name a new version")
    if refusals:
        return EditDecision(KEEP, accepted, tuple(refusals), changed)
    # Spent and nothing refused: only the version (with its artifact / training) changed.
    return EditDecision(ROLL, declared(spec, spent=True), changed=changed)
