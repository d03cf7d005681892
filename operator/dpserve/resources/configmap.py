"""The filter sidecar's ConfigMap (``<model>-filter``: ``filter.json`` and, when the ledger
serves TLS, ``ledger-ca.crt``, the CA the sidecar verifies the ledger with).

The JSON is :class:`dpserve.api.filterconfig.FilterConfig`, rendered with sorted keys so the
same spec always gives the same bytes; its hash is a pod template annotation, so a changed
filter config rolls the pods (the sidecar reads the file once, at start). The config names
the model version the pods serve, so the sidecar's leases are charged to that version's budget
and a retrain (a new version) rolls the pods through the hash as well.

A tenant-side mechanism (its noise protects the asking tenant's query text: laplace-embedding,
gaussian with ``privacyUnit: query-text``) gets the budget's partition header, so each query is
charged to the tenant's own partition. Without partitions on the budget it is refused here:
charging the tenants' spend to the dataset's ledger would debit one privacy unit's spend from
another's ledger (docs/accounting.md, "Text models").
"""

from __future__ import annotations

import json

from dpserve.api.filterconfig import AttestationSettings, FilterConfig
from dpserve.api.mechanism import is_tenant_side
from dpserve.api.privatemodel import PrivateModel
from dpserve.api.text import GenerationLimits
from dpserve.resources.context import BuildContext, model_name, model_namespace
from dpserve.resources.labels import Component
from dpserve.resources.meta import finalize, object_meta
from dpserve.resources.names import (
    FILTER_CONFIG_FILE,
    FILTER_PORT,
    FINGERPRINT_PATH,
    LEDGER_CA_FILE,
    LEDGER_CA_PATH,
    TOKEN_PATH,
    UPSTREAM_URL,
    filter_configmap_name,
    model_key,
)
from dpserve.resources.render import Manifest, content_hash

COMPONENT: Component = "filter-config"


def filter_config(model: PrivateModel, ctx: BuildContext) -> FilterConfig:
    """The sidecar's configuration for ``model``."""
    spec = model.spec
    output_filter = spec.output_filter.model_copy(
        # Order of the entity list carries no meaning: sort it so equal specs render equal.
        update={"entities": sorted(set(spec.output_filter.entities))}
    )
    mechanism = spec.serving.mechanism
    tenant_side = is_tenant_side(mechanism)
    partition_header = ctx.partition_header if tenant_side else None
    if tenant_side and partition_header is None:
        raise ValueError(
            f"spec.serving.mechanism: {mechanism.type} protects the asking tenant's query "
            "text, so each query is charged to that tenant's partition, never to the "
            f"dataset's ledger; PrivacyBudget {ctx.budget_name} has no spec.partitions "
            "(or could not be read): add partitions with a header and a per-tenant epsilon"
        )
    name = model_name(model)
    attested = spec.confidential.attestation
    attestation = None if attested is None else AttestationSettings(
        agent=attested.agent, binding=attested.binding,
        max_age_seconds=attested.max_age_seconds,
    )
    return FilterConfig(
        model=model_key(model_namespace(model), name),
        model_version=ctx.model_version,
        mechanism=spec.serving.mechanism,
        upstream=UPSTREAM_URL,
        listen_host="0.0.0.0",
        listen_port=FILTER_PORT,
        ledger_url=ctx.ledger_url,
        ledger_ca_path=LEDGER_CA_PATH if ctx.ledger_ca_pem else None,
        token_path=TOKEN_PATH,
        output_filter=output_filter,
        fingerprint_path=FINGERPRINT_PATH if output_filter.verbatim_guard.enabled else None,
        partition_header=partition_header,
        task=spec.model.task,
        served_model_name=name,
        generation=spec.serving.generation or GenerationLimits(),
        attestation=attestation,
    )


def filter_config_json(model: PrivateModel, ctx: BuildContext) -> str:
    """``filter.json`` exactly as stored in the ConfigMap (sorted keys, 2-space indent)."""
    wire = filter_config(model, ctx).model_dump(by_alias=True, mode="json", exclude_none=True)
    return json.dumps(wire, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def filter_config_hash(model: PrivateModel, ctx: BuildContext) -> str:
    """SHA-256 of the ConfigMap's files: the pod template annotation that rolls pods on
    change (of filter.json or of the ledger's CA)."""
    return content_hash(filter_config_json(model, ctx) + (ctx.ledger_ca_pem or ""))


def build_configmap(model: PrivateModel, ctx: BuildContext) -> Manifest:
    return finalize(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": object_meta(
                model, ctx, filter_configmap_name(model_name(model)), COMPONENT
            ),
            "data": {
                FILTER_CONFIG_FILE: filter_config_json(model, ctx),
                **({LEDGER_CA_FILE: ctx.ledger_ca_pem} if ctx.ledger_ca_pem else {}),
            },
        }
    )
