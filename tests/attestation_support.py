"""A test attestation issuer and a fake in-guest attestation agent (no TEE hardware needed).

``TestIssuer`` signs tokens shaped like Confidential Containers' Trustee EAR (the claims its
``ear_broker`` emits for an SEV-SNP or TDX guest behind the KBS) with keys generated in the
test; ``jwks()`` is what a PrivateModel would reference. ``FakeAgent`` serves
``GET /aa/token`` like CoCo's api-server-rest: a fresh TEE key pair per token, the public half
bound in the token's runtime data, ``{"token", "tee_keypair"}`` as the answer.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from joserfc import jws
from joserfc.jwk import ECKey, Key, RSAKey

from dpserve.attestation.spec import TRUSTEE_TEE_KEY_PATH, AttestationSpec

EVIDENCE = "/submods/cpu0/ear.veraison.annotated-evidence"
MEASUREMENT = "9f" * 48  # an SNP launch digest (48 bytes)
OTHER_MEASUREMENT = "a1" * 48
INIT_DATA = "3d" * 32
# runtime-data mode: the fake agent files the runtime data it was asked with here
RUNTIME_DATA_PATH = f"{EVIDENCE}/runtime_data_claims/dpserve"
MODEL = "clinical-ml/triage"


def spec(**overrides: Any) -> AttestationSpec:
    """An attestation spec for the test issuer's SNP tokens (jwks filled by the test)."""
    wire: dict[str, Any] = {
        "jwks": {"inline": overrides.pop("jwks", '{"keys": []}')},
        "claims": {
            "tee": {"path": EVIDENCE, "types": ["snp"]},
            "measurements": [
                {"path": f"{EVIDENCE}/snp/measurement", "values": [MEASUREMENT]},
                {"path": f"{EVIDENCE}/init_data", "values": [INIT_DATA]},
            ],
            "debug": {"path": f"{EVIDENCE}/snp/policy_debug_allowed"},
            "additional": [{"path": "/submods/cpu0/ear.status", "values": ["affirming"]}],
        },
    }
    wire.update(overrides)
    return AttestationSpec.model_validate(wire)


def private_pem(key: Key) -> str:
    """PKCS#1 PEM for RSA (what CoCo's agent sends), traditional PEM for EC."""
    raw: Any = key.raw_value
    return raw.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


def public_jwk(key: Key) -> dict[str, Any]:
    return dict(key.as_dict(private=False))


@dataclass
class TestIssuer:
    """An EAR issuer with its own signing key (ES256 unless ``key`` says otherwise)."""

    __test__ = False  # not a pytest class
    key: Key = field(default_factory=lambda: ECKey.generate_key("P-256", private=True))
    kid: str | None = None
    alg: str = "ES256"

    def jwks(self) -> str:
        entry = public_jwk(self.key)
        if self.kid is not None:
            entry["kid"] = self.kid
        return json.dumps({"keys": [entry]})

    def claims(
        self,
        *,
        now: float | None = None,
        lifetime_s: int = 300,
        tee: str = "snp",
        measurement: str = MEASUREMENT,
        debug: object = False,
        tee_pubkey: Mapping[str, Any] | None = None,
        runtime_data: str | None = None,
        status: str = "affirming",
    ) -> dict[str, Any]:
        issued = int(time.time() if now is None else now)
        runtime: dict[str, Any] = {"nonce": "kbs-challenge-nonce"}
        if tee_pubkey is not None:
            runtime["tee-pubkey"] = dict(tee_pubkey)
        if runtime_data is not None:
            runtime["dpserve"] = runtime_data
        if tee == "tdx":
            tee_claims: dict[str, Any] = {"quote": {"body": {
                "mr_td": measurement, "td_attributes": "0000001000000000"}}}
        else:
            tee_claims = {"measurement": measurement, "policy_debug_allowed": debug,
                          "policy_migrate_ma": False, "reported_tcb_snp": 8}
        return {
            "eat_profile": "tag:github.com,2024:confidential-containers/Trustee",
            "iat": issued,
            "exp": issued + lifetime_s,
            "ear.verifier-id": {"developer": "https://confidentialcontainers.org",
                                "build": "attestation-service test"},
            "submods": {"cpu0": {
                "ear.status": status,
                "ear.appraisal-policy-id": "default",
                "ear.trustworthiness-vector": {"configuration": 2, "executables": 3,
                                               "hardware": 2},
                "ear.veraison.annotated-evidence": {
                    tee: tee_claims,
                    "init_data": INIT_DATA,
                    "init_data_claims": {"aa.toml": "[token_configs.kbs]"},
                    "report_data": "00" * 64,
                    "runtime_data_claims": runtime,
                },
            }},
        }

    def sign(self, claims: Mapping[str, Any], header: Mapping[str, Any] | None = None) -> str:
        # Trustee puts its public key into the header; the verifier must ignore it.
        protected: dict[str, Any] = {"alg": self.alg, "typ": "JWT",
                                     "jwk": public_jwk(self.key)}
        if self.kid is not None:
            protected["kid"] = self.kid
        protected.update(header or {})
        return jws.serialize_compact(protected, json.dumps(claims).encode(), self.key,
                                     algorithms=[protected["alg"]])

    def token(self, **kwargs: Any) -> str:
        return self.sign(self.claims(**kwargs))


def tee_keypair(kind: str = "RSA") -> Key:
    """A TEE key pair as the guest generates one for the KBS handshake."""
    if kind == "RSA":
        return RSAKey.generate_key(2048, private=True)
    return ECKey.generate_key("P-256", private=True)


def with_path(claims: dict[str, Any], pointer: str, value: object) -> dict[str, Any]:
    """A copy of ``claims`` with the JSON Pointer's member set (parents must exist)."""
    out = copy.deepcopy(claims)
    *parents, last = pointer[1:].split("/")
    node = out
    for part in parents:
        node = node[part]
    node[last] = value
    return out


@dataclass
class AgentRequest:
    path: str
    query: dict[str, str]


class FakeAgent:
    """CoCo's attestation-agent REST endpoint, served by aiohttp on 127.0.0.1."""

    def __init__(self, issuer: TestIssuer, *, key_kind: str = "RSA") -> None:
        self.issuer = issuer
        self.key_kind = key_kind
        self.requests: list[AgentRequest] = []
        self.fail_status: int | None = None
        self.send_keypair = True
        self.bare_token = False
        self.lifetime_s = 300
        self.clock = time.time
        self.keys: list[Key] = []  # the TEE key pairs handed out, in order
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/aa/token", self._token)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/aa/token?token_type=kbs"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _token(self, request: web.Request) -> web.Response:
        self.requests.append(AgentRequest(request.path, dict(request.query)))
        if self.fail_status is not None:
            return web.Response(status=self.fail_status, text="attestation failed")
        if request.query.get("token_type") != "kbs":
            return web.Response(status=400, text="token_type")
        key = tee_keypair(self.key_kind)
        self.keys.append(key)
        bound = public_jwk(key)
        if self.key_kind == "RSA":
            bound["alg"] = "RSA1_5"  # as the KBS protocol declares the TEE key
        token = self.issuer.token(
            now=self.clock(), lifetime_s=self.lifetime_s, tee_pubkey=bound,
            runtime_data=request.query.get("runtime_data"),
        )
        if self.bare_token:
            return web.Response(body=token.encode(), content_type="application/octet-stream")
        body: dict[str, Any] = {"token": token}
        if self.send_keypair:
            body["tee_keypair"] = private_pem(key)
        return web.Response(body=json.dumps(body).encode(),
                            content_type="application/octet-stream")


__all__ = [
    "EVIDENCE", "INIT_DATA", "MEASUREMENT", "MODEL", "OTHER_MEASUREMENT", "RUNTIME_DATA_PATH",
    "TRUSTEE_TEE_KEY_PATH", "FakeAgent", "TestIssuer", "private_pem", "public_jwk", "spec",
    "tee_keypair", "with_path",
]
