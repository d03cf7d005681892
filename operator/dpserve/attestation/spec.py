"""spec.confidential.attestation of a PrivateModel: which attestation results buy a lease.

A pod proves it runs in the expected TEE by presenting an attestation token (a JWT; the EAR
of Confidential Containers' Trustee, or another verifier's) with each lease request. This
model says whose tokens count (the verifier's public keys, optionally its iss and an
aud), which claims they must carry (TEE type, measurements or policy hashes, debug
disabled, anything else), how fresh they must be, how a token is bound to the pod that
presents it, and where the sidecar gets its token from (the in-guest attestation agent).

Paths into the token are JSON Pointers (RFC 6901), because EAR claim names contain dots
(ear.veraison.annotated-evidence): /submods/cpu0/ear.veraison.annotated-evidence/snp/
measurement.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, StringConstraints

from dpserve.api.base import ApiModel, Name, defaulted
from dpserve.api.cel import CelRule
from dpserve.api.validation import CelModel

# Asymmetric JWS algorithms only. "none" and the HMAC family (HS*) are not expressible: with
# a public JWKS an HMAC "signature" could be forged by anyone holding the public key.
SigningAlgorithm = Literal[
    "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "EdDSA", "Ed25519",
]
SIGNING_ALGORITHMS: tuple[str, ...] = SigningAlgorithm.__args__  # type: ignore[attr-defined]
# What Trustee (ES256 EAR, RS384 simple tokens) and the common cloud verifiers sign with.
DEFAULT_ALGORITHMS: tuple[SigningAlgorithm, ...] = ("ES256", "ES384", "RS256", "RS384", "PS256")

JsonPointer = Annotated[
    str, StringConstraints(pattern=r"^(/([^/~]|~[01])*)+$", min_length=2, max_length=512)
]
ClaimValue = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
TeeType = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=63)]
ConfigKey = Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)]

# CoCo's guest components: the api-server-rest of the pod VM serves the attestation agent on
# loopback; token_type=kbs runs the KBS (Trustee) handshake and answers {"token", "tee_keypair"}.
DEFAULT_AGENT_URL = "http://127.0.0.1:8006/aa/token?token_type=kbs"
LOOPBACK_URL = r"^https?://(127\.0\.0\.1|\[::1\]|localhost)(:[0-9]{1,5})?(/[^\s]*)?$"
# Trustee's KBS token: the TEE public key the guest generated is in the runtime data the
# hardware report binds, and Trustee copies it into the annotated evidence.
TRUSTEE_TEE_KEY_PATH = (
    "/submods/cpu0/ear.veraison.annotated-evidence/runtime_data_claims/tee-pubkey"
)


class KeyRef(ApiModel):
    """A key of a ConfigMap or Secret in the PrivateModel's namespace."""

    name: Name
    key: ConfigKey


class JwksSource(CelModel):
    """The verifier's public signing keys (a JWK Set, RFC 7517): exactly one source.

    No Secret source: the keys are public, and reading Secrets in every namespace would
    grant the operator far more than a public key needs.
    """

    inline: Annotated[str, StringConstraints(min_length=2, max_length=65536)] | None = Field(
        default=None, description="The JWK Set as JSON text: {\"keys\": [...]}, public keys only."
    )
    config_map_key_ref: KeyRef | None = Field(
        default=None, description="A key of a ConfigMap in the PrivateModel's namespace holding "
        "the JWK Set; re-read by the ledger within its model cache time when it changes."
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule("has(self.inline) != has(self.configMapKeyRef)",
                "set exactly one of inline, configMapKeyRef"),
    )


class ClaimRequirement(ApiModel):
    """The claim at path must be present and equal one of values.

    Strings compare exactly (case matters: write hex as the verifier emits it), booleans as
    "true"/"false", integers as their decimal text. Objects, lists, floats and null
    never match.
    """

    path: JsonPointer
    values: Annotated[list[ClaimValue], Field(min_length=1, max_length=256)]


class TeeRequirement(ApiModel):
    """The TEE type: the claim at path is one of types.

    Either a string claim (a simple token's /tee), or an object with exactly one of
    types among its member names (Trustee's EAR files the evidence claims under the TEE's
    name: /submods/cpu0/ear.veraison.annotated-evidence holds snp or tdx).
    """

    path: JsonPointer
    types: Annotated[list[TeeType], Field(min_length=1, max_length=16)]


class DebugRequirement(ApiModel):
    """The claim at path must say that the TEE's debug mode is off.

    boolean: false, 0, "0" or "false" is off (SEV-SNP
    policy_debug_allowed, as Trustee's versions emit it); true/1 is on; anything
    else is refused. tdx-td-attributes: the TDX TDATTRIBUTES as 16 hex digits (the
    quote's byte order); bit 0 of the first byte (DEBUG) must be clear.
    """

    path: JsonPointer
    encoding: Literal["boolean", "tdx-td-attributes"] = "boolean"


class AttestationClaims(ApiModel):
    tee: TeeRequirement
    measurements: Annotated[list[ClaimRequirement], Field(min_length=1, max_length=16)] = Field(
        description="Launch measurements, init-data digests, policy hashes: each listed claim "
        "must equal one of its values."
    )
    debug: DebugRequirement
    additional: Annotated[list[ClaimRequirement], Field(max_length=32)] = Field(
        default_factory=list,
        description="Further claims, e.g. the EAR status: "
        "{path: /submods/cpu0/ear.status, values: [affirming]}.",
    )


class PodBinding(ApiModel):
    """How a token is tied to the pod that presents it (a token copied elsewhere is refused).

    tee-key: the token carries, at path, a public JWK whose private key only the
    attested guest holds (Trustee's KBS token: the tee-pubkey of the runtime data); each
    lease request carries a proof signed with it over the pod, model and lease id.
    runtime-data: the sidecar asks the agent for a token over runtime data that is the
    pod's binding digest, and the claim at path must equal that digest.
    """

    mode: Literal["tee-key", "runtime-data"] = "tee-key"
    path: JsonPointer = TRUSTEE_TEE_KEY_PATH
    proof_max_age_seconds: Annotated[int, Field(ge=5, le=600)] = 60


class AgentSettings(ApiModel):
    """Where the sidecar obtains its token: the attestation agent inside the pod's TEE."""

    # Loopback only: the agent runs inside the pod's TEE, and the model's NetworkPolicy lets
    # its pods reach nothing but the ledger (no DNS), so any other host could never answer.
    url: Annotated[str, StringConstraints(pattern=LOOPBACK_URL, max_length=512)] = Field(
        default=DEFAULT_AGENT_URL,
        description="The in-guest attestation agent's token endpoint, on loopback "
        "(127.0.0.1, [::1] or localhost).",
    )
    timeout_seconds: Annotated[int, Field(ge=1, le=120)] = 10


class AttestationSpec(CelModel):
    """spec.confidential.attestation: no lease without a valid, fresh, bound token."""

    jwks: JwksSource
    issuer: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = Field(
        default=None,
        description="The token's iss must equal this. Trustee's EAR carries no iss: leave it "
        "unset; the JWKS alone then identifies the verifier.",
    )
    audience: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = Field(
        default=None, description="The token's aud must be or contain this."
    )
    algorithms: Annotated[list[SigningAlgorithm], Field(min_length=1, max_length=11)] = Field(
        default_factory=lambda: list(DEFAULT_ALGORITHMS),
        json_schema_extra={"default": list(DEFAULT_ALGORITHMS)},
    )
    max_age_seconds: Annotated[int, Field(ge=10, le=86400)] = Field(
        default=600, description="A token issued (iat) longer ago than this is refused."
    )
    clock_skew_seconds: Annotated[int, Field(ge=0, le=300)] = 30
    claims: AttestationClaims
    binding: PodBinding = defaulted(PodBinding)
    agent: AgentSettings = defaulted(AgentSettings)

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule("self.clockSkewSeconds < self.maxAgeSeconds",
                "clockSkewSeconds must be below maxAgeSeconds", ".clockSkewSeconds"),
    )
