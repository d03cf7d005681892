"""The serving Deployment: model container (localhost only) + filter sidecar (the only port).

Pod shape (see DESIGN.md, "The pod"):

- ``model``: ``dpserve-server`` on 127.0.0.1:8081, no containerPort: nothing outside the pod
  reaches it; the artifact is mounted read-only at /models/current.
- ``filter``: ``dpserve-filter`` on :8080 (``http``), readiness /readyz, liveness /healthz;
  leases budget from the ledger with a projected ServiceAccount token (audience
  ``dpserve-ledger``), never the default API token (``automountServiceAccountToken: false``).
- Restricted Pod Security on every container, requests == limits, memory-backed /tmp per
  container (inside a confidential VM the guest memory is encrypted, a host disk is not),
  service links off (the environment must not depend on which Services exist: pod-level
  TEE policies pin the container environment).
- ``hostAliases``: the ledger host name mapped to its Service's ClusterIPs when the operator
  pinned them (``ctx.ledger_ips``): the pod's NetworkPolicy allows no DNS by default.
- ``format: huggingface``: the model server gets ``--task`` (and, for text-generation, the
  request bounds ``--max-tokens`` / ``--max-choices`` of ``spec.serving.generation``) and the
  Hugging Face libraries are told to stay offline (air-gapped clusters: a hub lookup must fail
  at once, never hang or download); ``spec.serving.resources.gpu`` renders
  ``nvidia.com/gpu`` in requests and limits.
"""

from __future__ import annotations

from typing import Any

from dpserve.api.privatemodel import PrivateModel
from dpserve.api.text import GenerationLimits
from dpserve.resources import confidential
from dpserve.resources.configmap import filter_config_hash
from dpserve.resources.context import BuildContext, model_name
from dpserve.resources.labels import (
    FILTER_CONFIG_HASH,
    INFERENCE,
    MODEL_VERSION,
    object_labels,
    selector_labels,
)
from dpserve.resources.ledgerhost import host_aliases
from dpserve.resources.meta import finalize, object_meta
from dpserve.resources.names import (
    ARTIFACT_MOUNT,
    ARTIFACT_VOLUME,
    FILTER_CONFIG_DIR,
    FILTER_CONFIG_PATH,
    FILTER_CONFIG_VOLUME,
    FILTER_CONTAINER,
    FILTER_PORT,
    FILTER_PORT_NAME,
    FILTER_TMP_VOLUME,
    MODEL_CONTAINER,
    MODEL_HOST,
    MODEL_PORT,
    MODEL_TMP_VOLUME,
    TMP_DIR,
    TOKEN_AUDIENCE,
    TOKEN_DIR,
    TOKEN_EXPIRATION_SECONDS,
    TOKEN_FILE,
    TOKEN_VOLUME,
    deployment_name,
    filter_configmap_name,
    service_account_name,
)
from dpserve.resources.render import Manifest, canonical_json, compact
from dpserve.resources.security import (
    ResourceSpec,
    container_security_context,
    pod_security_context,
)
from dpserve.resources.uris import volume, volume_mount

TMP_SIZE_LIMIT = "64Mi"
GPU_RESOURCE = "nvidia.com/gpu"
# Set for huggingface models: transformers / huggingface_hub never reach the network (the
# server also loads with local_files_only; these make any other code path fail fast too).
HF_OFFLINE_ENV = (
    ("HF_HUB_OFFLINE", "1"),
    ("HF_HUB_DISABLE_TELEMETRY", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
)


def tmp_volume(name: str) -> dict[str, Any]:
    return {"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": TMP_SIZE_LIMIT}}


def base_env() -> list[dict[str, Any]]:
    # Libraries that cache under $HOME must not try the read-only root file system.
    return [{"name": "HOME", "value": TMP_DIR}]


def text_args(model: PrivateModel) -> list[str]:
    """The model server's text flags: only for huggingface artifacts (tensor models have no
    task), the generation bounds only for text-generation (the one task they apply to)."""
    source = model.spec.model
    if source.format != "huggingface":
        return []
    if source.task is None:  # the CRD and the model's CEL rule make this unreachable
        raise ValueError("spec.model.task: required for format huggingface")
    args = ["--task", source.task]
    if source.task == "text-generation":
        limits = model.spec.serving.generation or GenerationLimits()
        args += ["--max-tokens", str(limits.max_tokens),
                 "--max-choices", str(limits.max_choices)]
    return args


def model_env(model: PrivateModel) -> list[dict[str, Any]]:
    env = base_env()
    if model.spec.model.format == "huggingface":
        env += [{"name": name, "value": value} for name, value in HF_OFFLINE_ENV]
    return env


def model_resources(model: PrivateModel, ctx: BuildContext) -> dict[str, Any]:
    """requests == limits: cpu, memory, GPUs when asked for, the profile's device plugins.

    A profile that itself needs ``nvidia.com/gpu`` (a confidential-GPU pool) and a spec
    asking for GPUs would each claim the same key: refused rather than one silently winning.
    """
    resources = model.spec.serving.resources
    extra = confidential.extra_resources(ctx.confidential)
    if resources.gpu:
        if GPU_RESOURCE in extra:
            raise ValueError(
                f"spec.serving.resources.gpu: confidential profile {ctx.confidential.profile} "
                f"already sets {GPU_RESOURCE}"
            )
        extra = {**extra, GPU_RESOURCE: str(resources.gpu)}
    return ResourceSpec(cpu=resources.cpu, memory=resources.memory).render(extra)


def model_container(model: PrivateModel, ctx: BuildContext) -> dict[str, Any]:
    location = ctx.location(ctx.artifact, "spec.model.artifact")
    return {
        "name": MODEL_CONTAINER,
        "image": ctx.image,
        "imagePullPolicy": ctx.image_pull_policy,
        "command": ["dpserve-server"],
        "args": [
            "--artifact",
            ARTIFACT_MOUNT,
            "--mechanism",
            # The noise only: which ledger pays (privacyUnit) is the sidecar's and ledger's.
            canonical_json(model.spec.serving.mechanism.noise_parameters()),
            "--host",
            MODEL_HOST,
            "--port",
            str(MODEL_PORT),
            *text_args(model),
        ],
        "env": model_env(model),
        "resources": model_resources(model, ctx),
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            volume_mount(ARTIFACT_VOLUME, location, ARTIFACT_MOUNT, read_only=True),
            {"name": MODEL_TMP_VOLUME, "mountPath": TMP_DIR},
        ],
    }


def _http_probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": FILTER_PORT_NAME, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
        "successThreshold": 1,
    }


def filter_container(model: PrivateModel, ctx: BuildContext) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [
        {"name": FILTER_CONFIG_VOLUME, "mountPath": FILTER_CONFIG_DIR, "readOnly": True},
        {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
        {"name": FILTER_TMP_VOLUME, "mountPath": TMP_DIR},
    ]
    if model.spec.output_filter.verbatim_guard.enabled:
        # The fingerprint file ships with the artifact (hashes only, never raw text).
        location = ctx.location(ctx.artifact, "spec.model.artifact")
        mounts.append(volume_mount(ARTIFACT_VOLUME, location, ARTIFACT_MOUNT, read_only=True))
    return {
        "name": FILTER_CONTAINER,
        "image": ctx.image,
        "imagePullPolicy": ctx.image_pull_policy,
        "command": ["dpserve-filter"],
        "args": ["--config", FILTER_CONFIG_PATH],
        "env": [
            *base_env(),
            {
                "name": "POD_NAME",
                "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
            },
        ],
        "ports": [{"name": FILTER_PORT_NAME, "containerPort": FILTER_PORT, "protocol": "TCP"}],
        # Startup covers the one-time PII analyzer build; liveness/readiness then take over.
        "startupProbe": _http_probe("/healthz", period=2, failures=60),
        "livenessProbe": _http_probe("/healthz", period=10, failures=3),
        "readinessProbe": _http_probe("/readyz", period=5, failures=2),
        "resources": ctx.filter_resources.render(),
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }


def pod_volumes(model: PrivateModel, ctx: BuildContext) -> list[dict[str, Any]]:
    location = ctx.location(ctx.artifact, "spec.model.artifact")
    volumes: list[dict[str, Any]] = [
        volume(ARTIFACT_VOLUME, location, read_only=True, image_pull_policy=ctx.image_pull_policy),
        {
            "name": FILTER_CONFIG_VOLUME,
            "configMap": {"name": filter_configmap_name(model_name(model))},
        },
        {
            "name": TOKEN_VOLUME,
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": TOKEN_AUDIENCE,
                            "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
                            "path": TOKEN_FILE,
                        }
                    }
                ]
            },
        },
        tmp_volume(MODEL_TMP_VOLUME),
        tmp_volume(FILTER_TMP_VOLUME),
    ]
    return volumes


def pod_template(model: PrivateModel, ctx: BuildContext) -> dict[str, Any]:
    name = model_name(model)
    annotations = {
        FILTER_CONFIG_HASH: filter_config_hash(model, ctx),
        MODEL_VERSION: ctx.model_version,
        **confidential.pod_annotations(ctx.confidential),
    }
    spec = {
        "serviceAccountName": service_account_name(name),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [model_container(model, ctx), filter_container(model, ctx)],
        "volumes": pod_volumes(model, ctx),
        **confidential.pod_placement(ctx.confidential),
    }
    if ctx.ledger_ips:  # the ledger by name without DNS (resources/ledgerhost.py)
        spec["hostAliases"] = host_aliases(ctx.ledger_host, ctx.ledger_ips)
    return {
        "metadata": {
            "labels": object_labels(name, ctx.model_version, INFERENCE),
            "annotations": annotations,
        },
        "spec": spec,
    }


def build_deployment(model: PrivateModel, ctx: BuildContext) -> Manifest:
    name = model_name(model)
    return finalize(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": object_meta(
                model,
                ctx,
                deployment_name(name),
                INFERENCE,
                annotations={MODEL_VERSION: ctx.model_version},
            ),
            "spec": compact(
                {
                    "replicas": ctx.replicas,
                    "revisionHistoryLimit": ctx.revision_history_limit,
                    "selector": {"matchLabels": selector_labels(name, INFERENCE)},
                    # Never below the desired count during a roll: a new pod (new version,
                    # new filter config) must be Ready before an old one goes.
                    "strategy": {
                        "type": "RollingUpdate",
                        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
                    },
                    "template": pod_template(model, ctx),
                }
            ),
        }
    )
