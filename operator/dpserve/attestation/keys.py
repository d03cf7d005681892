"""The verifier's public keys (a JWK Set) and the one place JWS signatures are checked.

Keys come from the PrivateModel (inline, or a ConfigMap/Secret the operator reads), never
from the token: a token's own ``jwk``, ``x5c``, ``jku`` or ``x5u`` header (Trustee puts its
key in ``jwk``) is ignored, or anyone could sign a token with a key of their choosing.
Symmetric (``oct``) keys and private key material are refused when the set is loaded.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey, import_key

# A Trustee EAR with annotated evidence (TDX quote fields, parsed init-data with its agent
# policy) is tens of KiB; these bound what one lease request can make the ledger parse.
MAX_TOKEN_BYTES: Final = 64 * 1024
MAX_HEADER_BYTES: Final = 16 * 1024  # the header may hold the issuer's jwk and x5c chain
MAX_KEYS: Final = 32

_ASYMMETRIC: Final = {"RSA", "EC", "OKP"}
_PRIVATE_MEMBERS: Final = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


class JwksError(ValueError):
    """The JWK Set is unusable (the message names the key and the problem)."""


@dataclass(frozen=True)
class Jwks:
    """Public verification keys, in the order the set lists them."""

    keys: tuple[Key, ...]

    def candidates(self, kid: str | None, alg: str) -> list[Key]:
        """Keys that may have signed a token with this ``kid`` and ``alg``.

        With a kid only the key of that kid; without one, every key whose type fits the
        algorithm (Trustee's EAR has no kid; the set is small).
        """
        if kid is not None:
            return [key for key in self.keys if key.kid == kid and key_fits(key, alg)]
        return [key for key in self.keys if key_fits(key, alg)]


def key_fits(key: Key, alg: str) -> bool:
    declared = key.get("alg")
    if declared is not None and declared != alg:
        return False
    if alg.startswith(("RS", "PS")):
        return isinstance(key, RSAKey)
    if alg.startswith("ES"):
        curve = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}.get(alg)
        return isinstance(key, ECKey) and key.curve_name == curve
    if alg in ("EdDSA", "Ed25519"):
        return isinstance(key, OKPKey) and key.curve_name == "Ed25519"
    return False


def public_key(data: Mapping[str, Any], where: str = "key") -> Key:
    """One public asymmetric JWK, imported; :class:`JwksError` otherwise."""
    kty = data.get("kty")
    if kty not in _ASYMMETRIC:
        raise JwksError(f"{where}: kty {kty!r} is not RSA, EC or OKP (symmetric keys are refused)")
    private = [member for member in _PRIVATE_MEMBERS if member in data]
    if private:
        raise JwksError(f"{where}: holds private key material ({', '.join(private)}); "
                        "publish the public key only")
    # The key's intended use and algorithm are kept: key_fits honours "alg".
    try:
        key = import_key(dict(data))
    except (JoseError, ValueError, TypeError) as exc:
        raise JwksError(f"{where}: {exc}") from exc
    if key.is_private:  # pragma: no cover - the member check above already refuses these
        raise JwksError(f"{where}: holds private key material")
    return key


def load_jwks(text: str | bytes) -> Jwks:
    """Parse a JWK Set (``{"keys": [...]}``) of public signing keys."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise JwksError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict) or not isinstance(value.get("keys"), list):
        raise JwksError('not a JWK Set: expected {"keys": [...]}')
    entries = value["keys"]
    if not entries:
        raise JwksError("the set holds no keys")
    if len(entries) > MAX_KEYS:
        raise JwksError(f"the set holds {len(entries)} keys, more than {MAX_KEYS}")
    keys: list[Key] = []
    for index, entry in enumerate(entries):
        where = f"keys[{index}]"
        if not isinstance(entry, dict):
            raise JwksError(f"{where}: not an object")
        if entry.get("use") not in (None, "sig"):
            raise JwksError(f"{where}: use {entry.get('use')!r} is not sig")
        keys.append(public_key(entry, where))
    return Jwks(keys=tuple(keys))


def registry(algorithms: Collection[str]) -> jws.JWSRegistry:
    """A JWS registry that admits only ``algorithms`` and headers of attestation tokens."""
    reg = jws.JWSRegistry(algorithms=list(algorithms), strict_check_header=False)
    reg.max_header_length = MAX_HEADER_BYTES
    reg.max_payload_length = MAX_TOKEN_BYTES
    return reg


def extract(token: str, reg: jws.JWSRegistry) -> jws.CompactSignature:
    """Split and decode a compact JWS without verifying it (JoseError if malformed)."""
    return jws.extract_compact(token.encode("ascii"), registry=reg)


def signature_valid(obj: jws.CompactSignature, key: Key, alg: str, reg: jws.JWSRegistry) -> bool:
    with warnings.catch_warnings():
        # joserfc flags "EdDSA" as superseded by "Ed25519" (RFC 9864); the spec's allow-list,
        # not a warning, decides whether it is accepted.
        warnings.simplefilter("ignore")
        try:
            return jws.validate_compact(obj, key, [alg], reg)
        except (JoseError, ValueError, TypeError):
            return False
