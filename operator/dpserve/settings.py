"""The operator's configuration from environment variables, read in one place.

Command-line flags of ``dpserve run`` override the matching variables. The ledger service
reads its own ``DPSERVE_LEDGER_*`` variables (:mod:`dpserve.ledger.settings`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from dpserve.resources.labels import DEFAULT_OPERATOR_POD_LABELS
from dpserve.resources.ledgerhost import classify

LogFormat = Literal["json", "text"]
DEFAULT_IMAGE = "ghcr.io/dpserve/inference:0.1.0"
DEFAULT_LEDGER_URL = "https://dpserve-ledger.dpserve-system.svc:8443"


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError as exc:
        raise ValueError(f"{name}: not a number: {text!r}") from exc
    if value < 0:
        raise ValueError(f"{name}: must be >= 0, got {text!r}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    text = (env.get(name) or "false").strip().lower()
    if text not in ("true", "false"):
        raise ValueError(f"{name}: must be true or false, got {env.get(name)!r}")
    return text == "true"


def _labels(env: Mapping[str, str], name: str) -> dict[str, str]:
    """``k=v,k=v`` (a label selector of equalities, as ``kubectl -l`` takes it)."""
    text = env.get(name, "")
    if not text.strip():
        return dict(DEFAULT_OPERATOR_POD_LABELS)
    labels: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            raise ValueError(f"{name}: {item!r} is not key=value")
        labels[key] = value
    return labels


@dataclass(frozen=True)
class OperatorSettings:
    inference_image: str = DEFAULT_IMAGE
    ledger_url: str = DEFAULT_LEDGER_URL
    operator_namespace: str = "dpserve-system"
    watch_namespaces: tuple[str, ...] = ()  # empty: all namespaces
    log_format: LogFormat = "json"
    bind_address: str = "0.0.0.0"  # liveness, ledger and metrics listeners
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    # Debounce of the event-driven reconcile queue (owned objects, budget status changes).
    requeue_delay_s: float = 0.2
    # Cache of RuntimeClasses / Node labels for the confidential feasibility check.
    cluster_cache_s: float = 10.0
    # Retraining: attempts and the first back-off delay (doubled per failed attempt).
    retrain_max_attempts: int = 3
    retrain_backoff_s: float = 30.0
    # Peering (hot standby): how long a peer's heartbeat counts; the standby takes over
    # this long after the active replica's last one.
    peering_lifetime_s: float = 60.0
    # The labels of the operator's pods (the ledger): models' NetworkPolicies allow egress to
    # them. The chart sets them from its own selector labels, so nameOverride keeps working.
    operator_pod_labels: Mapping[str, str] = field(
        default_factory=lambda: dict(DEFAULT_OPERATOR_POD_LABELS))
    # file:// artifacts and datasets (hostPath volumes): local development only.
    allow_host_path_artifacts: bool = False
    # The ledger serves TLS from these files (a Secret's tls.crt / tls.key / ca.crt); the CA
    # goes to every sidecar. Plain HTTP only with ledger_insecure (LocalKube), never silently.
    ledger_tls_cert: str | None = None
    ledger_tls_key: str | None = None
    ledger_tls_ca: str | None = None
    ledger_insecure: bool = False
    # Serving pods get no DNS (their NetworkPolicy is pod-wide: DNS for the sidecar would be
    # a channel out for the model container too); they reach the ledger by its Service's
    # pinned ClusterIP. True keeps DNS egress, for a ledger URL naming a host outside the
    # cluster (resources/ledgerhost.py).
    serving_dns_egress: bool = False

    def __post_init__(self) -> None:
        self._check_tls()
        self._check_ledger_host()

    def _check_tls(self) -> None:
        tls = (self.ledger_tls_cert, self.ledger_tls_key, self.ledger_tls_ca)
        scheme = self.ledger_url.partition("://")[0]
        if self.ledger_insecure:
            if any(tls):
                raise ValueError("DPSERVE_LEDGER_INSECURE: set together with "
                                 "DPSERVE_LEDGER_TLS_*; choose one")
            if scheme != "http":
                raise ValueError(f"DPSERVE_LEDGER_URL: {self.ledger_url!r} must be http:// "
                                 "when DPSERVE_LEDGER_INSECURE=true")
            return
        if not all(tls):
            raise ValueError(
                "DPSERVE_LEDGER_TLS_CERT, DPSERVE_LEDGER_TLS_KEY and DPSERVE_LEDGER_TLS_CA: the "
                "ledger serves TLS (bearer tokens cross the network); give all three (the "
                "chart mounts them from its Secret), or DPSERVE_LEDGER_INSECURE=true for a "
                "local test cluster only")
        if scheme != "https":
            raise ValueError(f"DPSERVE_LEDGER_URL: {self.ledger_url!r} must be https:// "
                             "(the ledger serves TLS)")

    def _check_ledger_host(self) -> None:
        host = classify(self.ledger_url, self.operator_namespace)
        if host.kind == "external" and not self.serving_dns_egress:
            raise ValueError(
                f"DPSERVE_LEDGER_URL: host {host.host!r} is neither an IP address nor the "
                f"ledger Service of the operator namespace (<service>.{self.operator_namespace}"
                ".svc): serving pods have no DNS to resolve it. Use the Service name, or set "
                "DPSERVE_SERVING_DNS_EGRESS=true (chart value servingDnsEgress) to give every "
                "serving pod DNS egress")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        log_format = env.get("DPSERVE_LOG_FORMAT", "json") or "json"
        if log_format not in ("json", "text"):
            raise ValueError(f"DPSERVE_LOG_FORMAT: must be json or text, got {log_format!r}")
        pull = env.get("DPSERVE_IMAGE_PULL_POLICY", "IfNotPresent") or "IfNotPresent"
        if pull not in ("Always", "IfNotPresent", "Never"):
            raise ValueError(
                f"DPSERVE_IMAGE_PULL_POLICY: must be Always, IfNotPresent or Never, got {pull!r}"
            )
        namespaces = tuple(
            ns.strip() for ns in env.get("DPSERVE_WATCH_NAMESPACES", "").split(",") if ns.strip()
        )
        return cls(
            inference_image=env.get("DPSERVE_INFERENCE_IMAGE") or DEFAULT_IMAGE,
            ledger_url=env.get("DPSERVE_LEDGER_URL") or DEFAULT_LEDGER_URL,
            operator_namespace=env.get("DPSERVE_OPERATOR_NAMESPACE")
            or env.get("POD_NAMESPACE") or "dpserve-system",
            watch_namespaces=namespaces,
            log_format=log_format,  # type: ignore[arg-type]
            bind_address=env.get("DPSERVE_BIND_ADDRESS") or "0.0.0.0",
            image_pull_policy=pull,  # type: ignore[arg-type]
            requeue_delay_s=_number(env, "DPSERVE_REQUEUE_DELAY_S", 0.2),
            cluster_cache_s=_number(env, "DPSERVE_CLUSTER_CACHE_S", 10.0),
            retrain_max_attempts=int(_number(env, "DPSERVE_RETRAIN_MAX_ATTEMPTS", 3)),
            retrain_backoff_s=_number(env, "DPSERVE_RETRAIN_BACKOFF_S", 30.0),
            peering_lifetime_s=max(1.0, _number(env, "DPSERVE_PEERING_LIFETIME_S", 60.0)),
            operator_pod_labels=_labels(env, "DPSERVE_OPERATOR_POD_LABELS"),
            allow_host_path_artifacts=_flag(env, "DPSERVE_ALLOW_HOST_PATH_ARTIFACTS"),
            ledger_tls_cert=env.get("DPSERVE_LEDGER_TLS_CERT") or None,
            ledger_tls_key=env.get("DPSERVE_LEDGER_TLS_KEY") or None,
            ledger_tls_ca=env.get("DPSERVE_LEDGER_TLS_CA") or None,
            ledger_insecure=_flag(env, "DPSERVE_LEDGER_INSECURE"),
            serving_dns_egress=_flag(env, "DPSERVE_SERVING_DNS_EGRESS"),
        )
