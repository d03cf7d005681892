"""The attestation verifier: each way a token can be wrong is refused, naming the claim."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, OctKey, RSAKey
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from attestation_support import (
    EVIDENCE,
    MEASUREMENT,
    MODEL,
    OTHER_MEASUREMENT,
    RUNTIME_DATA_PATH,
    TRUSTEE_TEE_KEY_PATH,
    TestIssuer,
    public_jwk,
    spec,
    tee_keypair,
    with_path,
)
from dpserve.attestation import (
    FAILURE_REASONS,
    AttestationSpec,
    JwksError,
    LeaseContext,
    Verdict,
    binding_digest,
    load_jwks,
    verify,
)
from dpserve.attestation.binding import proof
from dpserve.attestation.metrics import attestation_failures, count_refusal

NOW = 1_800_000_000.0
POD = "triage-7c9-x2"
OTHER_POD = "triage-7c9-q8"
LEASE = "3f2c0d9e1a7b4c55"


@pytest.fixture
def issuer() -> TestIssuer:
    return TestIssuer()


def _check(signer: TestIssuer, token: str | None, *, lease: LeaseContext,
           **spec_overrides: Any) -> Verdict:
    attestation = spec(jwks=signer.jwks(), **spec_overrides)
    return verify(token, attestation, load_jwks(signer.jwks()), now=NOW, lease=lease)


def _bound(issuer: TestIssuer, pod: str = POD, **claims: Any) -> tuple[str, LeaseContext]:
    """A tee-key token of ``pod`` and a lease request of that pod with its proof."""
    key = tee_keypair()
    token = issuer.token(now=NOW, tee_pubkey=public_jwk(key), **claims)
    signed = proof(key, model=MODEL, pod=pod, lease_id=LEASE, now=NOW)
    return token, LeaseContext(model=MODEL, pod=pod, lease_id=LEASE, proof=signed)


def _refused(verdict: Verdict, reason: str, claim: str) -> None:
    assert not verdict.ok
    assert (verdict.reason, verdict.claim) == (reason, claim), verdict.message
    assert verdict.message.startswith(f"{claim}: ")
    assert verdict.body() == {"reason": "AttestationFailed", "claim": claim,
                              "message": verdict.message}


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


# --- accepted --------------------------------------------------------------------------------

def test_valid_trustee_ear_with_tee_key_proof_is_accepted(issuer: TestIssuer) -> None:
    token, lease = _bound(issuer)
    verdict = _check(issuer, token, lease=lease)
    assert verdict.ok, verdict.message
    assert verdict.reason is None and verdict.claim is None
    assert verdict.claims["submods"]["cpu0"]["ear.status"] == "affirming"


@pytest.mark.parametrize("alg,key", [
    ("ES384", ECKey.generate_key("P-384", private=True)),
    ("RS384", RSAKey.generate_key(2048, private=True)),  # Trustee's "simple" token
    ("PS256", RSAKey.generate_key(2048, private=True)),
])
def test_other_asymmetric_algorithms_verify(alg: str, key: Any) -> None:
    issuer = TestIssuer(key=key, alg=alg, kid="as-1")
    token, lease = _bound(issuer)
    assert _check(issuer, token, lease=lease).ok


def test_runtime_data_binding_accepts_the_pod_it_names(issuer: TestIssuer) -> None:
    token = issuer.token(now=NOW, runtime_data=binding_digest(MODEL, POD))
    lease = LeaseContext(model=MODEL, pod=POD, lease_id=LEASE)
    verdict = _check(issuer, token, lease=lease,
                     binding={"mode": "runtime-data", "path": RUNTIME_DATA_PATH})
    assert verdict.ok, verdict.message


# --- signature, algorithm, keys ---------------------------------------------------------------

def test_wrong_signature_is_refused(issuer: TestIssuer) -> None:
    forger = TestIssuer()  # same shape, another key (and its own jwk in the header)
    token, lease = _bound(forger)
    _refused(_check(issuer, token, lease=lease), "signature", "signature")


def test_header_jwk_is_never_trusted(issuer: TestIssuer) -> None:
    # Trustee sends its key in the header; an attacker can put *their* key there.
    forger = TestIssuer()
    key = tee_keypair()
    token = forger.sign(forger.claims(now=NOW, tee_pubkey=public_jwk(key)),
                        header={"jwk": public_jwk(forger.key)})
    lease = LeaseContext(model=MODEL, pod=POD, lease_id=LEASE,
                         proof=proof(key, model=MODEL, pod=POD, lease_id=LEASE, now=NOW))
    _refused(_check(issuer, token, lease=lease), "signature", "signature")


def test_tampered_payload_is_refused(issuer: TestIssuer) -> None:
    token, lease = _bound(issuer)
    header, _, signature = token.split(".")
    claims = issuer.claims(now=NOW, tee_pubkey={"kty": "RSA"})
    forged = ".".join((header, _b64(with_path(claims, f"{EVIDENCE}/snp/measurement",
                                              MEASUREMENT)), signature))
    _refused(_check(issuer, forged, lease=lease), "signature", "signature")


def test_alg_none_is_refused(issuer: TestIssuer) -> None:
    token, lease = _bound(issuer)
    header = _b64({"alg": "none", "typ": "JWT"})
    unsigned = f"{header}.{token.split('.')[1]}."
    verdict = _check(issuer, unsigned, lease=lease)
    _refused(verdict, "algorithm", "alg")
    assert "never accepted" in verdict.message


def test_hs256_key_confusion_is_refused(issuer: TestIssuer) -> None:
    # The classic attack: HMAC "signed" with the verifier's *public* key as the secret.
    token, lease = _bound(issuer)
    secret = OctKey.import_key(issuer.jwks().encode())
    forged = jws.serialize_compact({"alg": "HS256", "typ": "JWT"},
                                   token.split(".")[1].encode(), secret, algorithms=["HS256"])
    verdict = _check(issuer, forged, lease=lease)
    _refused(verdict, "algorithm", "alg")
    assert "never accepted" in verdict.message


def test_alg_outside_the_allow_list_is_refused() -> None:
    issuer = TestIssuer(key=RSAKey.generate_key(2048, private=True), alg="RS512")
    token, lease = _bound(issuer)
    _refused(_check(issuer, token, lease=lease), "algorithm", "alg")


def test_no_key_for_the_kid_or_type_is_refused(issuer: TestIssuer) -> None:
    other = TestIssuer(kid="rotated-out")
    token, lease = _bound(other)
    _refused(_check(issuer, token, lease=lease), "key", "kid")
    rsa_issuer = TestIssuer(key=RSAKey.generate_key(2048, private=True), alg="RS256")
    token, lease = _bound(rsa_issuer)
    _refused(_check(issuer, token, lease=lease), "key", "kid")  # ES256 key, RS256 token


@pytest.mark.parametrize("token", ["", None, "a.b", "not a token at all", "x" * 70_000])
def test_missing_or_malformed_token_is_refused(issuer: TestIssuer, token: str | None) -> None:
    verdict = _check(issuer, token, lease=LeaseContext(model=MODEL, pod=POD, lease_id=LEASE))
    assert not verdict.ok and verdict.claim == "token"
    assert verdict.reason in ("missing", "malformed")


# --- iss, aud, freshness --------------------------------------------------------------------------

def test_wrong_issuer_is_refused_when_configured(issuer: TestIssuer) -> None:
    token, lease = _bound(issuer)  # Trustee's EAR has no iss at all
    _refused(_check(issuer, token, lease=lease, issuer="https://as.example"), "issuer", "iss")
    claims = issuer.claims(now=NOW, tee_pubkey={"kty": "RSA"})
    key = tee_keypair()
    claims = with_path(claims, TRUSTEE_TEE_KEY_PATH, public_jwk(key))
    token = issuer.sign({**claims, "iss": "https://as.example"})
    assert _check(issuer, token, lease=lease, issuer="https://evil.example").reason == "issuer"
    lease = LeaseContext(model=MODEL, pod=POD, lease_id=LEASE,
                         proof=proof(key, model=MODEL, pod=POD, lease_id=LEASE, now=NOW))
    assert _check(issuer, token, lease=lease, issuer="https://as.example").ok


def test_wrong_audience_is_refused_when_configured(issuer: TestIssuer) -> None:
    key = tee_keypair()
    claims = with_path(issuer.claims(now=NOW, tee_pubkey={"kty": "RSA"}),
                       TRUSTEE_TEE_KEY_PATH, public_jwk(key))
    lease = LeaseContext(model=MODEL, pod=POD, lease_id=LEASE,
                         proof=proof(key, model=MODEL, pod=POD, lease_id=LEASE, now=NOW))
    for aud, ok in (("dpserve-ledger", True), (["kbs", "dpserve-ledger"], True),
                    ("kbs", False), (None, False)):
        token = issuer.sign({**claims, "aud": aud} if aud is not None else claims)
        verdict = _check(issuer, token, lease=lease, audience="dpserve-ledger")
        assert verdict.ok is ok, (aud, verdict.message)
        if not ok:
            _refused(verdict, "audience", "aud")


def test_expired_token_is_refused(issuer: TestIssuer) -> None:
    key = tee_keypair()
    old = issuer.token(now=NOW - 400, lifetime_s=300, tee_pubkey=public_jwk(key))
    lease = LeaseContext(model=MODEL, pod=POD, lease_id=LEASE,
                         proof=proof(key, model=MODEL, pod=POD, lease_id=LEASE, now=NOW))
    _refused(_check(issuer, old, lease=lease), "expired", "exp")
    # within the clock skew it still counts
    grace = issuer.token(now=NOW - 310, lifetime_s=300, tee_pubkey=public_jwk(key))
    assert _check(issuer, grace, lease=lease).ok


def test_token_without_exp_is_refused(issuer: TestIssuer) -> None:
    key = tee_keypair()
    claims = issuer.claims(now=NOW, tee_pubkey=public_jwk(key))
    del claims["exp"]
    lease = LeaseContext(model=MODEL, pod=POD, lease_id=LEASE,
                         proof=proof(key, model=MODEL, pod=POD, lease_id=LEASE, now=NOW))
    _refused(_check(issuer, issuer.sign(claims), lease=lease), "expired", "exp")


def test_not_yet_valid_token_is_refused(issuer: TestIssuer) -> None:
    key = tee_keypair()
    lease = LeaseContext(model=MODEL, pod=POD, lease_id=LEASE,
                         proof=proof(key, model=MODEL, pod=POD, lease_id=LEASE, now=NOW))
    claims = issuer.claims(now=NOW, tee_pubkey=public_jwk(key))
    _refused(_check(issuer, issuer.sign({**claims, "nbf": NOW + 120}), lease=lease),
             "not-yet-valid", "nbf")
    future = issuer.token(now=NOW + 120, tee_pubkey=public_jwk(key))
    _refused(_check(issuer, future, lease=lease), "not-yet-valid", "iat")


def test_token_older_than_max_age_is_refused(issuer: TestIssuer) -> None:
    key = tee_keypair()
    lease = LeaseContext(model=MODEL, pod=POD, lease_id=LEASE,
                         proof=proof(key, model=MODEL, pod=POD, lease_id=LEASE, now=NOW))
    # still unexpired (a 1 h token), but issued 20 minutes ago
    old = issuer.token(now=NOW - 1200, lifetime_s=3600, tee_pubkey=public_jwk(key))
    _refused(_check(issuer, old, lease=lease), "stale", "iat")
    assert _check(issuer, old, lease=lease, maxAgeSeconds=1800).ok


# --- required claims -----------------------------------------------------------------------------

def test_wrong_measurement_is_refused(issuer: TestIssuer) -> None:
    token, lease = _bound(issuer, measurement=OTHER_MEASUREMENT)
    verdict = _check(issuer, token, lease=lease)
    _refused(verdict, "measurement", f"{EVIDENCE}/snp/measurement")
    assert "not among the 1 allowed" in verdict.message


def test_measurement_allow_list_admits_each_listed_value(issuer: TestIssuer) -> None:
    token, lease = _bound(issuer, measurement=OTHER_MEASUREMENT)
    measurements = [
        {"path": f"{EVIDENCE}/snp/measurement", "values": [MEASUREMENT, OTHER_MEASUREMENT]},
    ]
    claims = spec().claims.model_dump(by_alias=True, mode="json")
    assert _check(issuer, token, lease=lease,
                  claims={**claims, "measurements": measurements}).ok


def test_missing_policy_hash_claim_is_refused(issuer: TestIssuer) -> None:
    key = tee_keypair()
    claims = issuer.claims(now=NOW, tee_pubkey=public_jwk(key))
    del claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["init_data"]
    lease = LeaseContext(model=MODEL, pod=POD, lease_id=LEASE,
                         proof=proof(key, model=MODEL, pod=POD, lease_id=LEASE, now=NOW))
    verdict = _check(issuer, issuer.sign(claims), lease=lease)
    _refused(verdict, "measurement", f"{EVIDENCE}/init_data")
    assert verdict.message.endswith("claim is missing")


@pytest.mark.parametrize("debug", [True, 1, "1", "true"])
def test_debug_enabled_is_refused(issuer: TestIssuer, debug: object) -> None:
    token, lease = _bound(issuer, debug=debug)
    verdict = _check(issuer, token, lease=lease)
    _refused(verdict, "debug", f"{EVIDENCE}/snp/policy_debug_allowed")
    assert "debug is enabled" in verdict.message


@pytest.mark.parametrize("debug", [False, 0, "0", "false"])
def test_debug_disabled_spellings_are_accepted(issuer: TestIssuer, debug: object) -> None:
    token, lease = _bound(issuer, debug=debug)
    assert _check(issuer, token, lease=lease).ok


@pytest.mark.parametrize("debug", [None, "no", 0.0, 2, {"enabled": False}])
def test_unclear_debug_claim_is_refused(issuer: TestIssuer, debug: object) -> None:
    token, lease = _bound(issuer, debug=debug)
    verdict = _check(issuer, token, lease=lease)
    _refused(verdict, "debug", f"{EVIDENCE}/snp/policy_debug_allowed")


def test_tdx_debug_bit_and_mr_td(issuer: TestIssuer) -> None:
    tdx_claims = {
        "tee": {"path": EVIDENCE, "types": ["tdx"]},
        "measurements": [{"path": f"{EVIDENCE}/tdx/quote/body/mr_td", "values": [MEASUREMENT]}],
        "debug": {"path": f"{EVIDENCE}/tdx/quote/body/td_attributes",
                  "encoding": "tdx-td-attributes"},
    }
    key = tee_keypair()
    lease = LeaseContext(model=MODEL, pod=POD, lease_id=LEASE,
                         proof=proof(key, model=MODEL, pod=POD, lease_id=LEASE, now=NOW))
    claims = issuer.claims(now=NOW, tee="tdx", tee_pubkey=public_jwk(key))
    assert _check(issuer, issuer.sign(claims), lease=lease, claims=tdx_claims).ok
    debug_td = with_path(claims, f"{EVIDENCE}/tdx/quote/body/td_attributes", "0100001000000000")
    verdict = _check(issuer, issuer.sign(debug_td), lease=lease, claims=tdx_claims)
    _refused(verdict, "debug", f"{EVIDENCE}/tdx/quote/body/td_attributes")
    # an SNP token does not pass a TDX spec
    snp = issuer.claims(now=NOW, tee_pubkey=public_jwk(key))
    _refused(_check(issuer, issuer.sign(snp), lease=lease, claims=tdx_claims), "tee", EVIDENCE)


def test_wrong_tee_type_is_refused(issuer: TestIssuer) -> None:
    token, lease = _bound(issuer, tee="tdx")
    verdict = _check(issuer, token, lease=lease)
    _refused(verdict, "tee", EVIDENCE)
    # a simple token names its TEE as a string claim
    key = tee_keypair()
    claims = with_path(issuer.claims(now=NOW, tee_pubkey=public_jwk(key)), "/tee", "sample")
    lease = LeaseContext(model=MODEL, pod=POD, lease_id=LEASE,
                         proof=proof(key, model=MODEL, pod=POD, lease_id=LEASE, now=NOW))
    base = spec().claims.model_dump(by_alias=True, mode="json")
    verdict = _check(issuer, issuer.sign(claims), lease=lease,
                     claims={**base, "tee": {"path": "/tee", "types": ["snp", "tdx"]}})
    _refused(verdict, "tee", "/tee")


def test_ear_status_other_than_affirming_is_refused(issuer: TestIssuer) -> None:
    token, lease = _bound(issuer, status="contraindicated")
    _refused(_check(issuer, token, lease=lease), "claim", "/submods/cpu0/ear.status")


# --- binding to the pod: replay across pods -------------------------------------------------

def test_token_and_proof_of_pod_a_replayed_by_pod_b_are_refused(issuer: TestIssuer) -> None:
    token, lease_a = _bound(issuer, pod=POD)
    assert _check(issuer, token, lease=lease_a).ok
    replay = LeaseContext(model=MODEL, pod=OTHER_POD, lease_id=LEASE, proof=lease_a.proof)
    verdict = _check(issuer, token, lease=replay)
    _refused(verdict, "binding", TRUSTEE_TEE_KEY_PATH)
    assert OTHER_POD in verdict.message


def test_copied_token_with_pod_b_own_key_is_refused(issuer: TestIssuer) -> None:
    token, _ = _bound(issuer, pod=POD)
    thief_key = tee_keypair()  # pod B holds a TEE key, but not the one A's token binds
    replay = LeaseContext(model=MODEL, pod=OTHER_POD, lease_id=LEASE, proof=proof(
        thief_key, model=MODEL, pod=OTHER_POD, lease_id=LEASE, now=NOW))
    verdict = _check(issuer, token, lease=replay)
    _refused(verdict, "binding", TRUSTEE_TEE_KEY_PATH)
    assert "not signed by the TEE key" in verdict.message


def test_runtime_data_token_of_pod_a_replayed_by_pod_b_is_refused(issuer: TestIssuer) -> None:
    token = issuer.token(now=NOW, runtime_data=binding_digest(MODEL, POD))
    binding = {"mode": "runtime-data", "path": RUNTIME_DATA_PATH}
    replay = LeaseContext(model=MODEL, pod=OTHER_POD, lease_id=LEASE)
    _refused(_check(issuer, token, lease=replay, binding=binding), "binding", RUNTIME_DATA_PATH)
    other_model = LeaseContext(model="clinical-ml/other", pod=POD, lease_id=LEASE)
    _refused(_check(issuer, token, lease=other_model, binding=binding),
             "binding", RUNTIME_DATA_PATH)
    unbound = issuer.token(now=NOW)
    lease = LeaseContext(model=MODEL, pod=POD, lease_id=LEASE)
    _refused(_check(issuer, unbound, lease=lease, binding=binding), "binding", RUNTIME_DATA_PATH)


@pytest.mark.parametrize("problem", ["missing", "other-lease", "stale", "future", "garbage"])
def test_bad_proof_is_refused(issuer: TestIssuer, problem: str) -> None:
    key = tee_keypair("EC")
    token = issuer.token(now=NOW, tee_pubkey=public_jwk(key))
    signed: str | None = {
        "missing": None,
        "other-lease": proof(key, model=MODEL, pod=POD, lease_id="0000000000000000", now=NOW),
        "stale": proof(key, model=MODEL, pod=POD, lease_id=LEASE, now=NOW - 600),
        "future": proof(key, model=MODEL, pod=POD, lease_id=LEASE, now=NOW + 600),
        "garbage": "e30.e30.AAAA",
    }[problem]
    lease = LeaseContext(model=MODEL, pod=POD, lease_id=LEASE, proof=signed)
    _refused(_check(issuer, token, lease=lease), "binding", TRUSTEE_TEE_KEY_PATH)


def test_token_binding_no_key_is_refused(issuer: TestIssuer) -> None:
    token = issuer.token(now=NOW)  # runtime data without a tee-pubkey
    lease = LeaseContext(model=MODEL, pod=POD, lease_id=LEASE, proof="x.y.z")
    verdict = _check(issuer, token, lease=lease)
    _refused(verdict, "binding", TRUSTEE_TEE_KEY_PATH)
    assert "missing" in verdict.message


# --- the JWK Set and the spec -------------------------------------------------------------------

@pytest.mark.parametrize("text,problem", [
    ("not json", "not JSON"),
    ('{"keys": []}', "no keys"),
    ('[]', "not a JWK Set"),
    ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "symmetric"),
    ('{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "use": "enc"}]}', "use 'enc'"),
    ('{"keys": [7]}', "not an object"),
])
def test_unusable_jwks_is_refused(text: str, problem: str) -> None:
    with pytest.raises(JwksError, match=problem):
        load_jwks(text)


def test_jwks_with_private_key_material_is_refused() -> None:
    private = ECKey.generate_key("P-256", private=True).as_dict(private=True)
    with pytest.raises(JwksError, match="private key material"):
        load_jwks(json.dumps({"keys": [private]}))


@pytest.mark.parametrize("alg", ["none", "HS256", "HS512", "RSA1_5"])
def test_spec_cannot_allow_none_or_hmac(alg: str) -> None:
    with pytest.raises(ValidationError):
        spec(algorithms=[alg])


def test_spec_needs_exactly_one_jwks_source() -> None:
    base = spec().model_dump(by_alias=True, mode="json", exclude_none=True)
    for jwks in ({}, {"inline": "{}", "configMapKeyRef": {"name": "as-keys", "key": "jwks"}}):
        with pytest.raises(ValidationError, match="exactly one of inline"):
            AttestationSpec.model_validate({**base, "jwks": jwks})
    ref = AttestationSpec.model_validate(
        {**base, "jwks": {"configMapKeyRef": {"name": "as-keys", "key": "jwks.json"}}})
    assert ref.jwks.config_map_key_ref is not None
    # public keys need no Secret (and the operator is granted none): refused, not ignored
    with pytest.raises(ValidationError, match="secretKeyRef"):
        AttestationSpec.model_validate(
            {**base, "jwks": {"secretKeyRef": {"name": "as-keys", "key": "jwks.json"}}})


@pytest.mark.parametrize("url", ["http://10.0.0.5:8006/aa/token", "http://agent.svc/aa/token",
                                 "http://127.0.0.1.example/aa/token", "file:///etc/passwd"])
def test_the_agent_is_on_loopback_only(url: str) -> None:
    with pytest.raises(ValidationError, match=r"agent\.url"):
        spec(agent={"url": url})
    assert spec(agent={"url": "http://[::1]:8006/aa/token"}).agent.url.startswith("http://[")


@pytest.mark.parametrize("path", ["submods/cpu0", "", "/a/~2"])
def test_claim_paths_are_json_pointers(path: str) -> None:
    base = spec().claims.model_dump(by_alias=True, mode="json")
    with pytest.raises(ValidationError):
        spec(claims={**base, "debug": {"path": path}})


def test_pointer_escapes_reach_members_with_slashes(issuer: TestIssuer) -> None:
    key = tee_keypair()
    claims = issuer.claims(now=NOW, tee_pubkey=public_jwk(key))
    claims["x/y~z"] = "ok"
    lease = LeaseContext(model=MODEL, pod=POD, lease_id=LEASE,
                         proof=proof(key, model=MODEL, pod=POD, lease_id=LEASE, now=NOW))
    base = spec().claims.model_dump(by_alias=True, mode="json")
    extra = {**base, "additional": [{"path": "/x~1y~0z", "values": ["ok"]}]}
    assert _check(issuer, issuer.sign(claims), lease=lease, claims=extra).ok


def test_every_refusal_reason_is_a_metric_label() -> None:
    assert set(FAILURE_REASONS) == {
        "missing", "malformed", "algorithm", "key", "signature", "issuer", "audience",
        "expired", "not-yet-valid", "stale", "tee", "measurement", "debug", "claim", "binding",
    }


def test_refusals_are_counted_by_reason(issuer: TestIssuer) -> None:
    registry = CollectorRegistry()
    counter = attestation_failures(registry)
    token, lease = _bound(issuer, debug=True)
    count_refusal(counter, MODEL, _check(issuer, token, lease=lease))
    token, lease = _bound(issuer)
    count_refusal(counter, MODEL, _check(issuer, token, lease=lease))  # accepted: not counted
    value = registry.get_sample_value(
        "ml_enclave_attestation_failure_total", {"model": MODEL, "reason": "debug"})
    assert value == 1.0
    assert registry.get_sample_value(
        "ml_enclave_attestation_failure_total", {"model": MODEL, "reason": "binding"}) is None
