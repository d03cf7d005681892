"""The ledger's attestation gate: ``spec.confidential.attestation`` checked before any grant.

For a model with attestation configured, every lease request (a retry with the same lease
id included) must carry a token that :func:`dpserve.attestation.verify` accepts for this
model, pod and lease id, or it is refused with 403 ``AttestationFailed`` naming the claim,
counted in ``ml_enclave_attestation_failure_total{model, reason}``. This runs before the
lease-id lookup and the debit: a refused request learns nothing about earlier grants.

The verifier's keys come from the spec (inline) or a ConfigMap of the model's namespace,
cached ``cache_s`` seconds (the ledger's model cache time), so a rotated key set is used
within that time. A key set that cannot be loaded answers 503 (nothing granted; the
sidecar retries) and is reported on the model's ``Attested`` condition.

The gate also remembers, per model, its latest verdict and key-set problem (in memory: the
ledger runs in the operator process, whose model controller turns them into the
``Attested`` condition; after a restart the condition says no token was seen yet). A change
(ok <-> refused, another refusal reason, a key-set problem appearing or going) calls
``on_change(namespace, name)`` so the controller re-reconciles the model.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from dpserve.api.lease import LeaseRequest
from dpserve.attestation import Jwks, JwksError, LeaseContext, load_jwks, verify
from dpserve.attestation.condition import LastVerdict
from dpserve.attestation.metrics import attestation_failures, count_refusal
from dpserve.attestation.spec import AttestationSpec
from dpserve.ledger.modelview import ModelView
from dpserve.ledger.store import NotFound, Store, Unavailable
from dpserve.ledger.wire import LeaseFailure

MAX_MODELS = 4096  # verdicts remembered; the oldest is forgotten beyond this
MAX_KEY_SETS = 1024
JWKS_FIELD = "spec.confidential.attestation.jwks"


@dataclass(frozen=True)
class Evidence:
    """What a lease request carried: the token and, in tee-key mode, the proof."""

    token: str | None = None
    proof: str | None = None


@dataclass(frozen=True)
class ModelAttestation:
    """What the ledger saw of one model: its latest verdict and key-set problem."""

    last: LastVerdict | None = None
    jwks_problem: str | None = None


class JwksUnusable(Exception):
    """The model's key set cannot be loaded (its message names the source)."""


class AttestationGate:
    def __init__(
        self,
        store: Store,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float],
        cache_s: float,
        on_change: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.failures = attestation_failures(registry)
        self.clock = clock
        self.cache_s = cache_s
        self.on_change = on_change
        self._keys: OrderedDict[tuple[str, ...], tuple[float, Jwks]] = OrderedDict()
        self._seen: OrderedDict[str, ModelAttestation] = OrderedDict()

    def seen(self, model: str) -> ModelAttestation:
        """What the ledger last saw of ``model`` (``<namespace>/<name>``)."""
        return self._seen.get(model) or ModelAttestation()

    async def check(self, model: ModelView, request: LeaseRequest, evidence: Evidence) -> None:
        """Return if the model needs no attestation or the token passes; raise otherwise."""
        spec = model.spec.confidential.attestation
        if spec is None:
            return
        try:
            jwks = await self.jwks(model.namespace, spec)
        except JwksUnusable as exc:
            self._remember(model, self.seen(model.consumer).last, str(exc))
            raise LeaseFailure(
                "Unavailable", f"{exc}; nothing granted until the key set can be loaded"
            ) from exc
        now = self.clock()
        verdict = verify(
            evidence.token, spec, jwks, now=now,
            lease=LeaseContext(model=request.model, pod=request.pod,
                               lease_id=request.lease_id, proof=evidence.proof),
        )
        self._remember(model, LastVerdict(verdict=verdict, at=now, pod=request.pod), None)
        if not verdict.ok:
            count_refusal(self.failures, model.consumer, verdict)
            raise LeaseFailure("AttestationFailed", verdict.message, claim=verdict.claim)

    async def jwks(self, namespace: str, spec: AttestationSpec) -> Jwks:
        """The verifier's keys (cached); :class:`JwksUnusable` naming the problem."""
        source = spec.jwks
        ref = source.config_map_key_ref
        if ref is None:
            assert source.inline is not None  # the spec's rule: exactly one source
            key: tuple[str, ...] = ("inline", hashlib.sha256(source.inline.encode()).hexdigest())
        else:
            key = ("configmap", namespace, ref.name, ref.key)
        now = time.monotonic()
        cached = self._keys.get(key)
        if cached is not None and (ref is None or cached[0] > now):
            return cached[1]
        if ref is None:
            text = source.inline or ""
            where = f"{JWKS_FIELD}.inline"
        else:
            where = f"{JWKS_FIELD}.configMapKeyRef: ConfigMap {namespace}/{ref.name}"
            try:
                config_map = await self.store.get_config_map(namespace, ref.name)
            except NotFound as exc:
                raise JwksUnusable(f"{where} does not exist") from exc
            except Unavailable as exc:
                # Not the spec's fault: 503 without reporting the key set as broken.
                raise LeaseFailure(
                    "Unavailable", f"{where}: cannot be read: {exc}; nothing granted"
                ) from exc
            value = (config_map.get("data") or {}).get(ref.key)
            if not isinstance(value, str):
                raise JwksUnusable(f"{where} has no key {ref.key!r}")
            text = value
        try:
            jwks = load_jwks(text)
        except JwksError as exc:
            raise JwksUnusable(f"{where}: {exc}") from exc
        self._keys[key] = (now + self.cache_s, jwks)
        self._keys.move_to_end(key)
        while len(self._keys) > MAX_KEY_SETS:
            self._keys.popitem(last=False)
        return jwks

    def _remember(self, model: ModelView, last: LastVerdict | None,
                  jwks_problem: str | None) -> None:
        before = self._seen.pop(model.consumer, None) or ModelAttestation()
        self._seen[model.consumer] = ModelAttestation(last=last, jwks_problem=jwks_problem)
        while len(self._seen) > MAX_MODELS:
            self._seen.popitem(last=False)
        if self.on_change is not None and _summary(before) != _summary(self._seen[model.consumer]):
            self.on_change(model.namespace, model.name)


def _summary(seen: ModelAttestation) -> tuple[object, ...]:
    """What the Attested condition's status and reason depend on (not the pod or time)."""
    last = seen.last
    return (None if last is None else (last.verdict.ok, last.verdict.reason, last.verdict.claim),
            seen.jwks_problem)
