"""Verify one attestation token for one lease request: a pure function, a precise verdict.

Order of the checks (the first failure is the verdict): size and shape, ``alg`` against the
spec's allow-list (never ``none`` or HMAC), a key of the JWKS for the token's ``kid``/``alg``,
the signature, ``iss``, ``aud``, ``exp``/``nbf``/``iat`` freshness, the TEE type, each
measurement, debug disabled, each additional claim, and last the binding to the requesting
pod. No I/O and no clock: the caller passes ``now`` and the keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from joserfc.errors import JoseError

from dpserve.attestation import binding
from dpserve.attestation.claims import ClaimMissing, first_failure, resolve
from dpserve.attestation.keys import MAX_TOKEN_BYTES, Jwks, extract, registry, signature_valid
from dpserve.attestation.spec import AttestationSpec

# The label of ml_enclave_attestation_failure_total: a small closed set.
FailureReason = Literal[
    "missing", "malformed", "algorithm", "key", "signature", "issuer", "audience", "expired",
    "not-yet-valid", "stale", "tee", "measurement", "debug", "claim", "binding",
]
FAILURE_REASONS: Final[tuple[str, ...]] = FailureReason.__args__  # type: ignore[attr-defined]
_NEVER: Final = frozenset({"none", "HS256", "HS384", "HS512"})


@dataclass(frozen=True)
class LeaseContext:
    """What the token must be bound to: the authenticated request."""

    model: str  # "<namespace>/<PrivateModel name>"
    pod: str  # the pod name the ServiceAccount token was bound to
    lease_id: str
    proof: str | None = None  # the request's proof of the TEE key (tee-key mode)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: FailureReason | None = None
    claim: str | None = None  # "alg", "signature", "exp", or the JSON Pointer of a claim
    message: str = ""
    claims: Mapping[str, Any] = field(default_factory=dict)  # the verified payload when ok

    def body(self) -> dict[str, str]:
        """The 403 body: {"reason": "AttestationFailed", "claim", "message"}."""
        return {"reason": "AttestationFailed", "claim": self.claim or "",
                "message": self.message}


def _refuse(reason: FailureReason, claim: str, message: str) -> Verdict:
    return Verdict(ok=False, reason=reason, claim=claim, message=f"{claim}: {message}")


def verify(
    token: str | None,
    spec: AttestationSpec,
    jwks: Jwks,
    *,
    now: float,
    lease: LeaseContext,
) -> Verdict:
    """Decide whether ``token`` entitles the pod of ``lease`` to a lease."""
    if not token:
        return _refuse("missing", "token", "the lease request carries no attestation token")
    if len(token) > MAX_TOKEN_BYTES:
        return _refuse("malformed", "token", f"over {MAX_TOKEN_BYTES} bytes")
    reg = registry(spec.algorithms)
    try:
        obj = extract(token, reg)
    except (JoseError, ValueError, UnicodeError) as exc:
        return _refuse("malformed", "token", f"not a compact JWS: {exc}")
    header = obj.headers()
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in spec.algorithms:
        why = "is never accepted" if alg in _NEVER else "is not in the allowed algorithms"
        return _refuse("algorithm", "alg", f"{alg!r} {why} {list(spec.algorithms)}")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        return _refuse("malformed", "kid", "is not a string")
    keys = jwks.candidates(kid, alg)
    if not keys:
        which = f"kid {kid!r} and " if kid is not None else ""
        return _refuse("key", "kid", f"no key of the JWKS fits {which}alg {alg}")
    if not any(signature_valid(obj, key, alg, reg) for key in keys):
        return _refuse("signature", "signature", f"does not verify with the JWKS ({alg})")
    try:
        payload: Any = json.loads(obj.payload)
    except (ValueError, RecursionError):
        return _refuse("malformed", "payload", "is not JSON")
    if not isinstance(payload, dict):
        return _refuse("malformed", "payload", "is not a JSON object")
    verdict = (
        _check_registered(payload, spec, now)
        or _check_required(payload, spec)
        or _check_binding(payload, spec, now, lease)
    )
    return verdict or Verdict(ok=True, claims=payload)


def _number(payload: Mapping[str, Any], name: str) -> float | str | None:
    """The numeric date ``name``, None if absent, a message if it is not a number."""
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"is {type(value).__name__}, not a NumericDate"
    return float(value)


def _check_registered(
    payload: Mapping[str, Any], spec: AttestationSpec, now: float
) -> Verdict | None:
    if spec.issuer is not None and payload.get("iss") != spec.issuer:
        return _refuse("issuer", "iss", f"{payload.get('iss')!r} is not {spec.issuer!r}")
    if spec.audience is not None:
        aud = payload.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if spec.audience not in audiences:
            return _refuse("audience", "aud", f"{aud!r} does not name {spec.audience!r}")
    skew = spec.clock_skew_seconds
    exp, nbf, iat = _number(payload, "exp"), _number(payload, "nbf"), _number(payload, "iat")
    for name, value in (("exp", exp), ("nbf", nbf), ("iat", iat)):
        if isinstance(value, str):
            return _refuse("malformed", name, value)
    if exp is None:
        return _refuse("expired", "exp", "missing: a token without an expiry is refused")
    assert not isinstance(exp, str) and not isinstance(nbf, str) and not isinstance(iat, str)
    if now >= exp + skew:
        return _refuse("expired", "exp", f"expired {int(now - exp)} s ago")
    if nbf is not None and now < nbf - skew:
        return _refuse("not-yet-valid", "nbf", f"valid only in {int(nbf - now)} s")
    if iat is None:
        return _refuse("stale", "iat", "missing: the token's age cannot be known")
    if iat > now + skew:
        return _refuse("not-yet-valid", "iat", f"issued {int(iat - now)} s in the future")
    if now - iat > spec.max_age_seconds + skew:
        return _refuse("stale", "iat",
                       f"issued {int(now - iat)} s ago, over maxAgeSeconds {spec.max_age_seconds}")
    return None


def _check_required(payload: Mapping[str, Any], spec: AttestationSpec) -> Verdict | None:
    claims = spec.claims
    groups: tuple[tuple[FailureReason, list[tuple[str, object]]], ...] = (
        ("tee", [(claims.tee.path, claims.tee)]),
        ("measurement", [(m.path, m) for m in claims.measurements]),
        ("debug", [(claims.debug.path, claims.debug)]),
        ("claim", [(c.path, c) for c in claims.additional]),
    )
    for reason, checks in groups:
        failed = first_failure(payload, checks)
        if failed is not None:
            return _refuse(reason, *failed)
    return None


def _check_binding(
    payload: Mapping[str, Any], spec: AttestationSpec, now: float, lease: LeaseContext
) -> Verdict | None:
    path = spec.binding.path
    try:
        bound = resolve(payload, path)
    except ClaimMissing:
        return _refuse("binding", path, "claim is missing: the token is bound to no pod")
    if spec.binding.mode == "runtime-data":
        expected = binding.binding_digest(lease.model, lease.pod)
        if bound != expected:
            return _refuse("binding", path,
                           f"the token is bound to another pod or model, not {lease.pod!r}")
        return None
    try:
        key = binding.tee_key(bound)
        binding.check_proof(
            lease.proof, key, model=lease.model, pod=lease.pod, lease_id=lease.lease_id,
            now=now, max_age_s=spec.binding.proof_max_age_seconds,
            skew_s=spec.clock_skew_seconds,
        )
    except binding.ProofError as exc:
        return _refuse("binding", path, str(exc))
    return None
