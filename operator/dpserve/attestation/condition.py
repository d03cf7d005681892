"""The PrivateModel's ``Attested`` condition from the ledger's latest verdict (pure).

The ledger remembers, per model, its latest verdict and when; the status controller turns
that into a metav1.Condition (status, reason, message).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dpserve.attestation.verifier import Verdict

ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class LastVerdict:
    verdict: Verdict
    at: float  # wall time of the lease request it answered
    pod: str


def attested_condition(
    configured: bool, last: LastVerdict | None, *, now: float, max_age_s: float,
    jwks_problem: str | None = None,
) -> tuple[ConditionStatus, str, str]:
    """(status, reason, message) of the ``Attested`` condition."""
    if not configured:
        return ("False", "AttestationNotConfigured",
                "spec.confidential.attestation is not set: leases need no attestation")
    if jwks_problem is not None:
        return "False", "InvalidJwks", f"spec.confidential.attestation.jwks: {jwks_problem}"
    if last is None:
        return "Unknown", "NoTokenYet", "no pod has presented an attestation token yet"
    if not last.verdict.ok:
        return "False", "AttestationFailed", f"pod {last.pod}: {last.verdict.message}"
    if now - last.at > max_age_s:
        return ("Unknown", "NoRecentToken",
                f"the last verified token (pod {last.pod}) is older than {max_age_s:g} s")
    return "True", "TokenVerified", f"pod {last.pod} presented a valid attestation token"
