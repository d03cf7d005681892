"""Tying an attestation token to the pod that presents it, so a copied token is worthless.

Two ways, one per :class:`~dpserve.attestation.spec.PodBinding` mode:

- ``tee-key`` (proof of possession): the token names a public key whose private half only
  the attested guest holds. Trustee's KBS handshake does exactly this: the guest generates a
  key pair, the hardware report binds a hash of the runtime data holding the public key and
  the KBS nonce, and the token carries the key (``runtime_data_claims.tee-pubkey``); the
  in-guest agent hands the private key to the pod's containers with the token. The sidecar
  signs each lease request's :func:`proof` (model, pod, lease id, time) with it; the ledger
  checks it with the key from the token.
- ``runtime-data``: the sidecar asks the agent for a token over runtime data equal to
  :func:`binding_digest` of its model and pod, and the token must carry that digest.

Both bind to the pod *name* that the ledger has already authenticated (the pod-bound
ServiceAccount token names it), so a token taken from pod A and presented by pod B fails.
Shared by the ledger (verify) and the sidecar (create): one definition of the bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, Final

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from dpserve.attestation.keys import public_key, registry, signature_valid

DIGEST_DOMAIN: Final = b"dpserve-attestation-v1"
PROOF_TYPE: Final = "dpserve-lease-proof+jwt"
MAX_PROOF_BYTES: Final = 4096
# Members of a JWK that define the key itself; "alg"/"use" of the TEE key are dropped: the
# KBS protocol declares it as an encryption key (RSA1_5), while here it proves possession.
_KEY_MEMBERS: Final = ("kty", "crv", "n", "e", "x", "y")


class ProofError(Exception):
    """The lease proof is missing, malformed, not signed by the token's key, or not ours."""


def binding_digest(model: str, pod: str) -> str:
    """Lower-case hex SHA-256 over the domain, the model key and the pod name."""
    data = b"\x00".join((DIGEST_DOMAIN, model.encode(), pod.encode()))
    return hashlib.sha256(data).hexdigest()


def proof_algorithm(key: Key) -> str:
    """The JWS algorithm a TEE key signs proofs with."""
    if isinstance(key, RSAKey):
        return "PS256"
    if isinstance(key, ECKey):
        by_curve = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
        if key.curve_name in by_curve:
            return by_curve[key.curve_name]
    if isinstance(key, OKPKey) and key.curve_name == "Ed25519":
        return "Ed25519"
    raise ProofError(f"a {type(key).__name__} cannot sign lease proofs")


def _proof_payload(model: str, pod: str, lease_id: str, issued_at: int) -> bytes:
    claims = {"iat": issued_at, "leaseId": lease_id, "model": model, "pod": pod}
    return json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()


def proof(private_key: Key, *, model: str, pod: str, lease_id: str, now: float) -> str:
    """The compact JWS the sidecar sends with one lease request (tee-key mode)."""
    alg = proof_algorithm(private_key)
    payload = _proof_payload(model, pod, lease_id, math.floor(now))
    return jws.serialize_compact(
        {"alg": alg, "typ": PROOF_TYPE}, payload, private_key, algorithms=[alg]
    )


def tee_key(value: object) -> Key:
    """The public key the token binds (the JWK at the binding path)."""
    if not isinstance(value, Mapping):
        raise ProofError(f"is {type(value).__name__}, not a JWK")
    members = {name: value[name] for name in _KEY_MEMBERS if name in value}
    try:
        return public_key(members, "the bound TEE key")
    except ValueError as exc:
        raise ProofError(str(exc)) from exc


def check_proof(
    token_proof: str | None,
    key: Key,
    *,
    model: str,
    pod: str,
    lease_id: str,
    now: float,
    max_age_s: float,
    skew_s: float,
) -> None:
    """Raise :class:`ProofError` unless ``token_proof`` is a fresh proof for this request."""
    if not token_proof:
        raise ProofError("the lease request carries no proof of the TEE key")
    if len(token_proof) > MAX_PROOF_BYTES:
        raise ProofError(f"the proof is over {MAX_PROOF_BYTES} bytes")
    alg = proof_algorithm(key)
    reg = registry([alg])
    try:
        obj = jws.extract_compact(token_proof.encode("ascii"), registry=reg)
    except (JoseError, ValueError, UnicodeError) as exc:
        raise ProofError(f"the proof is not a compact JWS: {exc}") from exc
    header = obj.headers()
    if header.get("alg") != alg:
        raise ProofError(f"the proof's alg {header.get('alg')!r} is not {alg} for this key")
    if header.get("typ") != PROOF_TYPE:
        raise ProofError(f"the proof's typ is not {PROOF_TYPE}")
    if not signature_valid(obj, key, alg, reg):
        raise ProofError("the proof is not signed by the TEE key the token binds")
    try:
        claims: Any = json.loads(obj.payload)
    except (ValueError, RecursionError) as exc:
        raise ProofError("the proof's payload is not JSON") from exc
    if not isinstance(claims, dict):
        raise ProofError("the proof's payload is not an object")
    for name, expected in (("model", model), ("pod", pod), ("leaseId", lease_id)):
        if claims.get(name) != expected:
            raise ProofError(
                f"the proof is for {name} {claims.get(name)!r}, not this request's {expected!r}"
            )
    issued = claims.get("iat")
    if not isinstance(issued, int) or isinstance(issued, bool):
        raise ProofError("the proof has no integer iat")
    if issued > now + skew_s:
        raise ProofError("the proof is issued in the future")
    if now - issued > max_age_s + skew_s:
        raise ProofError(f"the proof is {int(now - issued)} s old, over {max_age_s:g} s")


def private_key_from_pem(pem: str) -> Key:
    """The TEE private key as the agent hands it over (CoCo: PKCS#1 RSA PEM; PKCS#8 too)."""
    data = pem.encode()
    for kind in (RSAKey, ECKey, OKPKey):
        try:
            key: Key = kind.import_key(data)
        except (JoseError, ValueError, TypeError):
            continue
        if not key.is_private:
            raise ProofError("the agent handed over a public key, not the key pair")
        proof_algorithm(key)  # refuses key types that cannot sign (X25519)
        return key
    raise ProofError("the agent's key pair is not an RSA, EC or Ed25519 private key in PEM")
