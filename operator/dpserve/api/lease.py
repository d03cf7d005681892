"""Lease wire protocol between the filter sidecar and the operator's ledger service.

``POST /v1/leases`` with ``Authorization: Bearer <projected ServiceAccount token>`` and a
:class:`LeaseRequest` body. Answers:

- 200 :class:`LeaseGrant` (``granted`` >= 1, at most ``requested``)
- 429 :class:`LeaseError` reason ``BudgetExhausted``: not even one more query fits
- 400 ``BadRequest`` (malformed JSON or fields), 401 ``Unauthenticated``, 403 ``Forbidden``
  (token does not belong to the model's ServiceAccount), 404 ``NotFound`` (unknown model or
  budget), 409 ``MechanismMismatch`` (request's mechanism differs from the model's spec),
  409 ``VersionMismatch`` (the model lists no such version: neither its current one nor a
  retired one in ``status.versions``),
  403 ``AttestationFailed`` (the model has ``spec.confidential.attestation`` and the
  request's attestation token fails verification; ``claim`` names the failing claim,
  docs/attestation.md), 409 ``LeaseIdUsed`` (a sequenced lease id at or below
  its pool's high-water mark, ``highWater``: granted before, never charged again; a new
  lease needs a higher sequence), 413 ``TooLarge`` (body over the limit),
  503 ``Unavailable`` (API server unreachable or the ledger could not persist: nothing was
  granted; retry with the same ``leaseId``)

A lease id makes retries idempotent: the same id returns the same grant and never debits twice.
``leaseId`` is sequenced, ``s<16 hex: sequence>-<16 hex: pool tag>``
(:mod:`dpserve.ledger.lease_ids`); any other form is refused (400 naming ``leaseId``).
The ledger persists the debit to PrivacyBudget.status *before* it answers 200.

``modelVersion`` is the version the requesting pod serves (from its filter config). Each
version spends the budget it was bound to: the current version ``status.budget`` (or
``spec.budgetRef``), a retired one the budget of its ``status.versions`` record. Without it a
pod of the retired version, still serving during the rollout after a retrain, would be charged
to the new version's budget, so its dataset would answer queries its own budget never paid
for. The field is required: the filter sidecar and the ledger ship together (one release of
this package), so the ledger never has to accept requests without it from older sidecars.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from dpserve.api.base import ApiModel
from dpserve.api.mechanism import Mechanism

LEASE_PATH = "/v1/leases"
MAX_LEASE_BODY_BYTES = 16 * 1024
MAX_REQUESTED = 1_000_000
PARTITION_HEADER_DEFAULT = "X-Dpserve-Tenant"

# Sequenced ids only (dpserve.ledger.lease_ids): bound to the pod and partition that formed
# them and idempotent for as long as the ledger remembers the pool's high-water mark. A
# random id would be idempotent only while its own record is on the status.
LeaseId = Annotated[str, StringConstraints(pattern=r"^s[0-9a-f]{16}-[0-9a-f]{16}$")]
# A model version as in PrivateModel spec.model.version / status.modelVersion.
ModelVersion = Annotated[str, StringConstraints(pattern=r"^v[0-9]+$", max_length=16)]
ModelKey = Annotated[
    str,
    StringConstraints(
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=127,
    ),
]


class LeaseRequest(ApiModel):
    lease_id: LeaseId
    model: ModelKey  # "<namespace>/<PrivateModel name>"
    model_version: ModelVersion  # the version the requesting pod serves
    pod: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    mechanism: Mechanism
    partition: Annotated[str, StringConstraints(min_length=1, max_length=63)] | None = None
    requested: Annotated[int, Field(ge=1, le=MAX_REQUESTED)]


class LeaseGrant(ApiModel):
    lease_id: str
    granted: Annotated[int, Field(ge=1)]
    epsilon_spent: float
    epsilon_remaining: float
    expires_at: str  # RFC 3339; the sidecar stops serving from a lease after this time
    partition: str | None = None


LeaseErrorReason = Literal[
    "BadRequest",
    "Unauthenticated",
    "Forbidden",
    "NotFound",
    "MechanismMismatch",
    "VersionMismatch",
    "LeaseIdUsed",
    "TooLarge",
    "BudgetExhausted",
    "Unavailable",
    "AttestationFailed",
]


class LeaseError(ApiModel):
    reason: LeaseErrorReason
    message: str
    # AttestationFailed only: "alg", "signature", "exp", ... or the JSON Pointer of a claim
    claim: Annotated[str, StringConstraints(max_length=512)] | None = None
    epsilon_spent: float | None = None
    epsilon_remaining: float | None = None
    # LeaseIdUsed: the pool's last granted sequence (16 hex digits, as in the id).
    high_water: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")] | None = None
