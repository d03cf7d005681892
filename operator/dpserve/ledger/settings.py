"""The ledger service's configuration, read from the environment in one place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from dpserve.ledger.limits import (
    DEFAULT_LEASE_TTL_S,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_LEASES,
    MAX_LEASE_RECORDS,
    MAX_LEDGER_ENTRIES,
    LeasePolicy,
)


@dataclass(frozen=True)
class LedgerSettings:
    policy: LeasePolicy = field(default_factory=LeasePolicy)
    token_cache_s: float = 30.0
    model_cache_s: float = 2.0
    # A pod verified as the model's serving pod (dpserve.ledger.podcheck) is trusted this
    # long; the request's source address is compared with the pod's IPs unless turned off.
    pod_cache_s: float = 30.0
    check_source_address: bool = True
    max_write_attempts: int = 8
    # Slow clients (docs/ledger.md, "Connections"): a request's headers must arrive within
    # header_timeout_s of the connection opening (or of its previous answer; this is also the
    # keep-alive idle time), its body within body_timeout_s; each peer address may hold at
    # most max_connections_per_client connections.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    max_connections_per_client: int = 32

    def __post_init__(self) -> None:
        if not self.header_timeout_s > 0 or not self.body_timeout_s > 0:
            raise ValueError("LedgerSettings: header_timeout_s and body_timeout_s must be > 0")
        if self.max_connections_per_client < 1:
            raise ValueError("LedgerSettings: max_connections_per_client must be >= 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LedgerSettings:
        """Settings from ``DPSERVE_LEDGER_*`` variables; a bad value raises naming it."""
        env = os.environ if env is None else env

        def number(name: str, default: float) -> float:
            text = env.get(name)
            if text is None or text == "":
                return default
            try:
                return float(text)
            except ValueError as exc:
                raise ValueError(f"{name}: not a number: {text!r}") from exc

        def count(name: str, default: int, most: int) -> int:
            value = float(number(name, default))
            if not value.is_integer() or not 1 <= value <= most:
                raise ValueError(f"{name}: must be an integer in [1, {most}] (the status "
                                 f"schema's bound), got {env.get(name)!r}")
            return int(value)

        source = (env.get("DPSERVE_LEDGER_CHECK_SOURCE_ADDRESS") or "true").lower()
        if source not in ("true", "false"):
            raise ValueError("DPSERVE_LEDGER_CHECK_SOURCE_ADDRESS: must be 'true' or 'false', "
                             f"got {source!r}")
        policy = LeasePolicy(
            ttl=timedelta(seconds=number("DPSERVE_LEDGER_LEASE_TTL_S", DEFAULT_LEASE_TTL_S)),
            at_risk_fraction=number("DPSERVE_LEDGER_AT_RISK_FRACTION", 0.01),
            max_leases=count("DPSERVE_LEDGER_MAX_LEASES", DEFAULT_MAX_LEASES, MAX_LEASE_RECORDS),
            max_entries=count(
                "DPSERVE_LEDGER_MAX_ENTRIES", DEFAULT_MAX_ENTRIES, MAX_LEDGER_ENTRIES
            ),
        )
        return cls(
            policy=policy,
            token_cache_s=number("DPSERVE_LEDGER_TOKEN_CACHE_S", 30.0),
            model_cache_s=number("DPSERVE_LEDGER_MODEL_CACHE_S", 2.0),
            pod_cache_s=number("DPSERVE_LEDGER_POD_CACHE_S", 30.0),
            check_source_address=source == "true",
            max_write_attempts=int(number("DPSERVE_LEDGER_MAX_WRITE_ATTEMPTS", 8)),
            header_timeout_s=number("DPSERVE_LEDGER_HEADER_TIMEOUT_S", 10.0),
            body_timeout_s=number("DPSERVE_LEDGER_BODY_TIMEOUT_S", 10.0),
            max_connections_per_client=int(
                number("DPSERVE_LEDGER_MAX_CONNECTIONS_PER_CLIENT", 32)
            ),
        )
