"""The Attested condition from the ledger's latest verdict."""

from __future__ import annotations

from dpserve.attestation.condition import LastVerdict, attested_condition
from dpserve.attestation.verifier import Verdict

NOW = 1_800_000_000.0


def test_condition_follows_the_latest_verdict() -> None:
    ok = LastVerdict(Verdict(ok=True), at=NOW - 10, pod="p-1")
    bad = LastVerdict(Verdict(ok=False, reason="debug", claim="/d",
                              message="/d: debug is enabled"), at=NOW, pod="p-2")
    cases = [
        ((False, None), ("False", "AttestationNotConfigured")),
        ((True, None), ("Unknown", "NoTokenYet")),
        ((True, ok), ("True", "TokenVerified")),
        ((True, bad), ("False", "AttestationFailed")),
    ]
    for (configured, last), expected in cases:
        assert attested_condition(configured, last, now=NOW, max_age_s=600)[:2] == expected
    assert "debug is enabled" in attested_condition(True, bad, now=NOW, max_age_s=600)[2]
    assert attested_condition(True, ok, now=NOW + 1000, max_age_s=600)[1] == "NoRecentToken"
    assert attested_condition(True, ok, now=NOW, max_age_s=600,
                              jwks_problem="not JSON")[:2] == ("False", "InvalidJwks")
