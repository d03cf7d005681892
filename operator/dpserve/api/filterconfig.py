"""Configuration of the output-filter sidecar (``dpserve-filter --config filter.json``).

The operator renders it into a ConfigMap from the PrivateModel; the sidecar reads it at start.
Torch-free: the control plane imports this module to build the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, StringConstraints, model_validator

from dpserve.api.base import ApiModel, Name
from dpserve.api.lease import MAX_REQUESTED, ModelKey, ModelVersion
from dpserve.api.mechanism import Mechanism
from dpserve.api.outputfilter import OutputFilter
from dpserve.api.text import GenerationLimits, ModelTask
from dpserve.attestation.spec import AgentSettings, PodBinding

HttpUrl = Annotated[str, StringConstraints(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
                                           max_length=2048)]
# An HTTP header name (RFC 9110 token).
HeaderName = Annotated[
    str, StringConstraints(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
]


class LeaseSettings(ApiModel):
    """How the sidecar sizes the query leases it asks the ledger for."""

    initial_size: Annotated[int, Field(ge=1, le=MAX_REQUESTED)] = 64
    max_size: Annotated[int, Field(ge=1, le=MAX_REQUESTED)] = 4096
    # Prefetch the next lease when the remainder falls below this fraction of the last grant.
    prefetch_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.25

    @model_validator(mode="after")
    def _initial_within_max(self) -> Self:
        if self.initial_size > self.max_size:
            raise ValueError(
                f"lease.initialSize ({self.initial_size}) must not exceed "
                f"lease.maxSize ({self.max_size})"
            )
        return self


class AttestationSettings(ApiModel):
    """What the sidecar needs of ``spec.confidential.attestation``: where its token comes
    from, how it is bound to the pod, and how long the ledger accepts one."""

    agent: AgentSettings
    binding: PodBinding
    max_age_seconds: Annotated[int, Field(ge=10, le=86400)]


class FilterConfig(ApiModel):
    """Everything the sidecar needs; camelCase on the wire like the CRDs."""

    model: ModelKey  # "<namespace>/<PrivateModel name>"
    # The version this pod serves: its leases are charged to that version's budget. Required,
    # never defaulted: a wrong default would charge another version's budget.
    model_version: ModelVersion
    mechanism: Mechanism
    upstream: HttpUrl = "http://127.0.0.1:8081"
    listen_host: Annotated[str, StringConstraints(min_length=1, max_length=253)] = "0.0.0.0"
    listen_port: Annotated[int, Field(ge=1, le=65535)] = 8080
    ledger_url: HttpUrl
    # CA bundle to verify the ledger's TLS certificate; None: the system trust store.
    ledger_ca_path: str | None = None
    token_path: Annotated[str, StringConstraints(min_length=1)] = (
        "/var/run/secrets/dpserve/token"
    )
    # Empty: taken from env POD_NAME (which always overrides) or the host name.
    pod_name: Annotated[str, StringConstraints(max_length=253)] = ""
    output_filter: OutputFilter = Field(default_factory=OutputFilter)
    fingerprint_path: str | None = None
    partition_header: HeaderName | None = None
    lease: LeaseSettings = Field(default_factory=LeaseSettings)
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    upstream_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 10.0
    ledger_timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 5.0
    # Longest time a client may take to send its request body.
    client_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    # What a huggingface artifact does; None: a tensor model (state-dict, torchscript,
    # pate-ensemble). Decides which protocol routes the sidecar serves (see filter/app.py).
    task: ModelTask | None = None
    # The name clients pass as ``model`` (OpenAI) or in the URL (Open Inference Protocol);
    # None: the PrivateModel name, the part of ``model`` after the slash.
    served_model_name: Name | None = None
    # Bounds on max_tokens and n, checked before anything is forwarded or charged.
    generation: GenerationLimits = Field(default_factory=GenerationLimits)
    # spec.confidential.attestation: every lease request carries a token from the in-guest
    # agent (and a proof in tee-key mode). None: no attestation headers are sent.
    attestation: AttestationSettings | None = None

    @property
    def served_name(self) -> str:
        """The model name requests must carry."""
        return self.served_model_name or self.model.split("/", 1)[1]

    @model_validator(mode="after")
    def _generation_is_free(self) -> Self:
        # A generator's privacy was paid for by its DP training run; a per-answer mechanism
        # would charge a ledger for releases that no noise protects (a stream has no
        # "queries" count the sidecar could check either).
        if self.task == "text-generation" and self.mechanism.type != "none":
            raise ValueError(
                f"task text-generation is served with mechanism 'none' (its DP training is "
                f"the spend), not {self.mechanism.type!r}"
            )
        return self

    @model_validator(mode="after")
    def _attestation_needs_leases(self) -> Self:
        # Tokens travel with lease requests; a model served free never sends one.
        if self.attestation is not None and self.mechanism.type == "none":
            raise ValueError("attestation: mechanism 'none' takes no leases, so no token "
                             "would ever be presented")
        return self

    @classmethod
    def load(cls, path: str | Path) -> FilterConfig:
        """Read and validate a config file; errors name the file and the field."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read filter config {path}: {exc}") from exc
        return cls.model_validate(raw)
