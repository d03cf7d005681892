"""The per-query DP mechanism of a PrivateModel (shared by the CRD and the lease protocol)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from dpserve.api.base import ApiModel, Decimal

MechanismType = Literal["none", "pate", "gaussian", "laplace-embedding"]
# Whose privacy one query's noise protects, and so which ledger pays for it (docs/accounting.md,
# "Text models"): a record of the protected dataset (the budget's main ledger) or the query
# text of the tenant asking (that tenant's partition of the budget). The two are different
# people's data: one unit's spend is never debited from the other's ledger.
PrivacyUnit = Literal["training-record", "query-text"]


class Mechanism(ApiModel):
    """How each answered query spends budget.

    - ``none``: the served model was DP-trained; answers are post-processing, free.
    - ``pate``: GNMax over ``teachers`` disjoint-partition teachers; Gaussian noise of
      standard deviation ``noiseMultiplier`` (in votes) on the vote histogram (L2
      sensitivity sqrt(2)); returns the noisy arg-max label.
    - ``gaussian``: output vector clipped to L2 norm ``clipNorm`` plus N(0, (noiseMultiplier *
      clipNorm)^2) per coordinate; ``sensitivity`` is the stated L2 sensitivity of the clipped
      output to one record (for an average of K disjoint-partition teachers: 2*clipNorm/K).
    - ``laplace-embedding``: embedding clipped to L1 norm 1 plus Laplace noise, ``epsilon``
      per query (pure DP); protects the query text of one tenant.

    ``privacyUnit`` states what the noise protects (default: query-text for
    laplace-embedding, training-record otherwise). ``query-text`` makes the mechanism
    tenant-side: its spend is charged to the asking tenant's partition, never to the
    dataset's ledger.
    """

    type: MechanismType = "none"
    teachers: Annotated[int, Field(ge=2, le=10000)] | None = None
    # Ranges (CEL rules on Serving): what the accountant evaluates to a finite ε; see there.
    noise_multiplier: Decimal | None = Field(
        default=None,
        description="pate: vote-noise std; gaussian: noise std / clipNorm. 0.01 <= "
        "noiseMultiplier <= 10000 (the range the accountant evaluates to a finite ε).",
    )
    clip_norm: Decimal | None = Field(
        default=None, description="gaussian: L2 clipping norm of the output, 1e-6 .. 1e6."
    )
    sensitivity: Decimal | None = Field(
        default=None,
        description="gaussian: L2 sensitivity of the clipped output to one privacy unit, "
        "1e-6 .. 1e6.",
    )
    epsilon: Decimal | None = Field(
        default=None, description="laplace-embedding: ε of one query (pure DP), 1e-6 .. 100."
    )
    privacy_unit: PrivacyUnit | None = Field(
        default=None,
        description="What one query's noise protects: training-record (charged to the "
        "budget's main ledger) or query-text (the asking tenant's query; charged to that "
        "tenant's partition). Default: query-text for laplace-embedding, training-record "
        "otherwise.",
    )

    def noise_parameters(self) -> dict[str, object]:
        """The mechanism as the model server needs it: the noise, not whose ledger pays.

        The privacy unit only decides which ledger is charged (the ledger and the sidecar's
        partition header); the noise is calibrated from the other fields alone.
        """
        wire = self.wire()
        wire.pop("privacyUnit", None)
        return wire


def privacy_unit(mechanism: Mechanism) -> PrivacyUnit:
    """What one query's noise protects: the stated unit, else the mechanism's own.

    laplace-embedding noises the tenant's own query embedding (its L1 sensitivity is over the
    query text); pate and none protect the records the teachers or the DP-trained model were
    trained on; gaussian, when not stated, keeps its original meaning (sensitivity to one
    training record).
    """
    if mechanism.privacy_unit is not None:
        return mechanism.privacy_unit
    return "query-text" if mechanism.type == "laplace-embedding" else "training-record"


def is_tenant_side(mechanism: Mechanism) -> bool:
    """Whether a query's spend belongs to the asking tenant's partition (not the dataset)."""
    return mechanism.type != "none" and privacy_unit(mechanism) == "query-text"
