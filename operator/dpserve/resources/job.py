"""The retraining Job: ``dpserve-train`` writes version N+1 of the artifact.

- Name ``<model>-train-<next version>``: deterministic, so a retried reconcile finds the
  Job it already created instead of starting a second training run (which would spend the
  budget twice).
- Input: ``spec.retraining.dataset`` (an ``.npz`` file; a JSONL file for format huggingface)
  mounted read-only at /data.
- Output: next to the current artifact (see :func:`dpserve.resources.uris.next_artifact_location`:
  ``pvc://models/triage/v1`` -> ``pvc://models/triage/v2``, ``file:///m/triage`` ->
  ``file:///m/triage-v2``); the directory holding it is mounted read-write at /output.
- With ``retraining.lora`` (DP-PEFT): the frozen base (``lora.base``, default the version
  being served) is mounted read-only at /base and passed as ``--lora-base``; the trainer
  takes the architecture from it, so ``--architecture`` is not passed.
- Format huggingface (DP-LoRA of a language model, ``train/text_run.py``): ``--format
  huggingface --task <spec.model.task> --max-seq-len N`` and the LoRA flags on the /base
  mount; no ``--architecture`` (the base's config.json is the architecture).
- Volumes: one per PersistentVolumeClaim. Two pod volumes naming the same claim can leave
  the pod stuck in ContainerCreating (the kubelet attaches a claim once per pod), so the
  dataset, output and base mounts of one claim share a volume, each with its own subPath
  and read-only flag.
- ``--max-epsilon`` is the next budget's ε: the trainer refuses a target it cannot pay for.
- The report (σ, q, steps, ε, accuracy) comes back as the container's termination message;
  ``ttlSecondsAfterFinished`` is left unset so the Job stays until the operator read it.
- Same Restricted securityContext and confidential placement as the serving pods: training
  reads the protected dataset, so it runs in the same kind of TEE.
- Pods use the namespace's default ServiceAccount with no token mounted: the trainer needs no
  API access and must not hold the ``<model>-dpserve`` identity that leases budget.
- Erasures: when the model has erased record ids, every training Job mounts the
  ``<model>-erasure`` ConfigMap at /erasure and passes ``--exclude-ids``; the annotation
  ``dpserve.io/erased-ids`` says how many ids it was given. :func:`build_unlearn_job` is the
  PATE erasure (``<model>-erase-<next version>``): the served ensemble mounted at /base,
  ``--unlearn-base``, only the teachers that saw an erased record are retrained.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from dpserve.api.privatemodel import Lora, PrivateModel, Retraining
from dpserve.resources import confidential
from dpserve.resources.context import BuildContext, model_name, next_version
from dpserve.resources.deployment import base_env, tmp_volume
from dpserve.resources.labels import ERASED_IDS, MODEL_VERSION, TRAINING, object_labels
from dpserve.resources.meta import finalize, object_meta
from dpserve.resources.names import (
    DATASET_DIR,
    DATASET_VOLUME,
    ERASED_IDS_KEY,
    ERASED_IDS_PATH,
    ERASURE_DIR,
    ERASURE_VOLUME,
    LORA_BASE_DIR,
    LORA_BASE_VOLUME,
    OCI_DATASET_FILE,
    OUTPUT_DIR,
    OUTPUT_VOLUME,
    TERMINATION_MESSAGE_PATH,
    TMP_DIR,
    TRAIN_CONTAINER,
    TRAIN_TMP_VOLUME,
    UNLEARN_BASE_DIR,
    erase_job_name,
    erasure_configmap_name,
    train_job_name,
)
from dpserve.resources.render import Manifest, canonical_json
from dpserve.resources.security import (
    ResourceSpec,
    container_security_context,
    pod_security_context,
)
from dpserve.resources.uris import Location, next_artifact_location, volume, volume_mount

# The trainer's own defaults, rendered explicitly so the pod spec says what trains.
DEFAULT_HIDDEN_DIMS = (128,)
DEFAULT_MAX_SEQ_LENGTH = 128


@dataclass(frozen=True)
class TrainingPlan:
    """What the Job will produce: the controller records it before creating the Job."""

    job_name: str
    version: str  # the version the Job trains
    output: Location  # where the new artifact lands
    dataset: Location
    lora_base: Location | None = None  # the frozen base of a LoRA retrain
    erased_ids: int = 0  # ids of the model's erased-id list the Job leaves out

    @property
    def artifact(self) -> str:
        """The new version's artifact URI (status.artifact once the Job succeeded)."""
        return self.output.uri


def _retraining(model: PrivateModel) -> Retraining:
    if model.spec.retraining is None:
        raise ValueError("spec.retraining: a retraining Job needs a retraining section")
    return model.spec.retraining


def _dataset(model: PrivateModel, ctx: BuildContext) -> Location:
    retraining = _retraining(model)
    dataset = ctx.location(retraining.dataset, "spec.retraining.dataset")
    if dataset.scheme != "oci" and not dataset.name:
        kind = "a JSONL" if model.spec.model.format == "huggingface" else "an .npz"
        raise ValueError(f"spec.retraining.dataset: {retraining.dataset!r} must name {kind} file")
    return dataset


def unlearn_plan(model: PrivateModel, ctx: BuildContext) -> TrainingPlan:
    """The PATE erasure of the served version: same data set, version N+1 next to it."""
    version = next_version(ctx.model_version)
    current = ctx.location(ctx.artifact, "spec.model.artifact")
    return TrainingPlan(
        job_name=erase_job_name(model_name(model), version),
        version=version,
        output=next_artifact_location(current, version),
        dataset=_dataset(model, ctx),
        lora_base=current,  # mounted at /base like a LoRA base: the ensemble to start from
    )


def training_plan(model: PrivateModel, ctx: BuildContext) -> TrainingPlan:
    retraining = _retraining(model)
    version = next_version(ctx.model_version)
    dataset = _dataset(model, ctx)
    current = ctx.location(ctx.artifact, "spec.model.artifact")
    lora_base: Location | None = None
    if retraining.lora is not None:
        lora_base = (
            ctx.location(retraining.lora.base, "spec.retraining.lora.base")
            if retraining.lora.base is not None
            else current  # the version being served, which this retrain replaces
        )
    return TrainingPlan(
        job_name=train_job_name(model_name(model), version),
        version=version,
        output=next_artifact_location(current, version),
        dataset=dataset,
        lora_base=lora_base,
    )


class _Volumes:
    """The pod's volumes, one per PersistentVolumeClaim however many mounts use it."""

    def __init__(self, image_pull_policy: str) -> None:
        self.items: list[dict[str, Any]] = []
        self._pull = image_pull_policy

    def mount(
        self,
        name: str,
        location: Location,
        mount_path: str,
        *,
        read_only: bool,
        host_path_type: str = "Directory",
    ) -> dict[str, Any]:
        """A volume mount of ``location`` at ``mount_path``, adding the volume if needed."""
        shared = self._claim_volume(location)
        if shared is not None:
            claim = shared["persistentVolumeClaim"]
            if not read_only:  # a writable mount needs a writable volume
                claim.pop("readOnly", None)
            name = str(shared["name"])
        else:
            self.items.append(
                volume(
                    name,
                    location,
                    read_only=read_only,
                    host_path_type=host_path_type,
                    image_pull_policy=self._pull,
                )
            )
        return volume_mount(name, location, mount_path, read_only=read_only)

    def _claim_volume(self, location: Location) -> dict[str, Any] | None:
        if location.scheme != "pvc":
            return None
        for item in self.items:
            claim = item.get("persistentVolumeClaim")
            if claim is not None and claim["claimName"] == location.claim:
                return item
        return None


def _dataset_mount(plan: TrainingPlan, volumes: _Volumes) -> tuple[dict[str, Any], str]:
    dataset = plan.dataset
    if dataset.scheme == "oci":
        # An image carries the dataset at its root under a fixed name.
        mount = volumes.mount(DATASET_VOLUME, dataset, DATASET_DIR, read_only=True)
        return mount, f"{DATASET_DIR}/{OCI_DATASET_FILE}"
    directory = dataset.parent()
    mount = volumes.mount(DATASET_VOLUME, directory, DATASET_DIR, read_only=True)
    return mount, f"{DATASET_DIR}/{dataset.name}"


def _output_mount(plan: TrainingPlan, volumes: _Volumes) -> tuple[dict[str, Any], str]:
    directory = plan.output.parent()
    mount = volumes.mount(
        OUTPUT_VOLUME, directory, OUTPUT_DIR, read_only=False, host_path_type="DirectoryOrCreate"
    )
    return mount, f"{OUTPUT_DIR}/{plan.output.name}"


def _lora_args(lora: Lora) -> list[str]:
    # alpha is always explicit (2 * rank by default), so the pod spec says what trains.
    alpha = lora.alpha if lora.alpha is not None else str(2 * lora.rank)
    args = ["--lora-base", LORA_BASE_DIR, "--lora-rank", str(lora.rank), "--lora-alpha", alpha]
    if lora.target_modules is not None:
        args += ["--lora-targets", ",".join(lora.target_modules)]
    return args


def _text_args(model: PrivateModel, retraining: Retraining) -> list[str]:
    """A language model's run: its task, its sequence length (always explicit, so the pod
    spec says what trains); the LoRA flags follow like a tensor model's."""
    task = model.spec.model.task
    if task not in ("text-generation", "text-classification"):
        # The CRD refuses it; a builder never renders a Job the trainer cannot run.
        raise ValueError(f"spec.model.task: retraining of {task} models is not supported")
    if retraining.lora is None:
        raise ValueError("spec.retraining.lora: a huggingface retrain trains LoRA adapters")
    seq = retraining.max_seq_length or DEFAULT_MAX_SEQ_LENGTH
    return ["--format", "huggingface", "--task", task, "--max-seq-len", str(seq)]


def trainer_args(
    model: PrivateModel, plan: TrainingPlan, dataset_path: str, output_path: str
) -> list[str]:
    retraining = _retraining(model)
    delta = retraining.delta or retraining.next_budget.delta
    args = [
        "--dataset", dataset_path,
        "--output", output_path,
        "--target-epsilon", retraining.target_epsilon,
        "--delta", delta,
        "--epochs", str(retraining.epochs),
        "--batch-size", str(retraining.batch_size),
        "--max-grad-norm", retraining.max_grad_norm,
    ]  # fmt: skip
    if retraining.learning_rate is not None:
        args += ["--learning-rate", retraining.learning_rate]
    if model.spec.model.format == "huggingface":
        args += _text_args(model, retraining)
    elif retraining.lora is None:
        # The trainer completes the architecture (inputDim, numClasses) from the dataset.
        hidden = (retraining.hidden_dims if retraining.hidden_dims is not None
                  else DEFAULT_HIDDEN_DIMS)
        architecture = {"type": "mlp", "hiddenDims": list(hidden)}
        args += ["--architecture", canonical_json(architecture)]
    args += ["--mode", retraining.mode]
    if retraining.lora is not None:
        # The base gives the architecture; the data must fit it.
        args += _lora_args(retraining.lora)
    if retraining.mode == "pate" and retraining.teachers is not None:
        args += ["--teachers", str(retraining.teachers)]
    args += ["--max-epsilon", retraining.next_budget.epsilon, "--version", plan.version]
    # The verbatim guard of the new version compares windows of the spec's size (the
    # sidecar reads the size from the fingerprint file the trainer writes).
    window = model.spec.output_filter.verbatim_guard.window_tokens
    args += ["--fingerprint-window-tokens", str(window)]
    if plan.erased_ids > 0:
        args += ["--exclude-ids", ERASED_IDS_PATH]
    return args


def unlearn_args(
    model: PrivateModel, plan: TrainingPlan, dataset_path: str, output_path: str
) -> list[str]:
    """The PATE erasure: the recipe comes from the served artifact, not from the spec."""
    window = model.spec.output_filter.verbatim_guard.window_tokens
    return [
        "--dataset", dataset_path,
        "--output", output_path,
        "--mode", "pate",
        "--unlearn-base", UNLEARN_BASE_DIR,
        "--exclude-ids", ERASED_IDS_PATH,
        "--version", plan.version,
        "--fingerprint-window-tokens", str(window),
    ]  # fmt: skip


def _erasure_volume(model: PrivateModel) -> dict[str, Any]:
    return {
        "name": ERASURE_VOLUME,
        "configMap": {
            "name": erasure_configmap_name(model_name(model)),
            "items": [{"key": ERASED_IDS_KEY, "path": ERASED_IDS_KEY}],
            # A Job must never train without the erasures it was started for.
            "optional": False,
        },
    }


def build_job(model: PrivateModel, ctx: BuildContext) -> Manifest:
    """The retraining Job of version N+1 (onBudgetExhausted: Retrain, or an erasure of a
    DP-SGD model)."""
    return _job(model, ctx, training_plan(model, ctx), unlearn=False)


def build_unlearn_job(model: PrivateModel, ctx: BuildContext) -> Manifest:
    """The PATE erasure Job of version N+1 (only the affected teachers retrain)."""
    if model.spec.model.format != "pate-ensemble":
        raise ValueError("spec.model.format: exact unlearning applies to pate-ensemble models")
    if ctx.erased_ids <= 0:
        raise ValueError("an erasure Job needs erased ids")
    return _job(model, ctx, unlearn_plan(model, ctx), unlearn=True)


def _job(model: PrivateModel, ctx: BuildContext, plan: TrainingPlan, *, unlearn: bool
         ) -> Manifest:
    plan = replace(plan, erased_ids=ctx.erased_ids)
    name = model_name(model)
    volumes = _Volumes(ctx.image_pull_policy)
    dataset_mount, dataset_path = _dataset_mount(plan, volumes)
    output_mount, output_path = _output_mount(plan, volumes)
    mounts = [dataset_mount, output_mount]
    if plan.lora_base is not None:
        base_dir = UNLEARN_BASE_DIR if unlearn else LORA_BASE_DIR
        mounts.append(volumes.mount(LORA_BASE_VOLUME, plan.lora_base, base_dir, read_only=True))
    extra_volumes: list[dict[str, Any]] = []
    if plan.erased_ids > 0:
        mounts.append({"name": ERASURE_VOLUME, "mountPath": ERASURE_DIR, "readOnly": True})
        extra_volumes.append(_erasure_volume(model))
    mounts.append({"name": TRAIN_TMP_VOLUME, "mountPath": TMP_DIR})
    args = (unlearn_args if unlearn else trainer_args)(model, plan, dataset_path, output_path)
    annotations = {MODEL_VERSION: plan.version}
    if plan.erased_ids > 0:
        annotations[ERASED_IDS] = str(plan.erased_ids)
    serving = model.spec.serving.resources
    resources = ctx.training_resources or ResourceSpec(cpu=serving.cpu, memory=serving.memory)
    container = {
        "name": TRAIN_CONTAINER,
        "image": ctx.image,
        "imagePullPolicy": ctx.image_pull_policy,
        "command": ["dpserve-train"],
        "args": args,
        "env": [
            *base_env(),
            {"name": "TERMINATION_MESSAGE_PATH", "value": TERMINATION_MESSAGE_PATH},
        ],
        "resources": resources.render(confidential.extra_resources(ctx.confidential)),
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    pod_spec = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [*volumes.items, *extra_volumes, tmp_volume(TRAIN_TMP_VOLUME)],
        **confidential.pod_placement(ctx.confidential),
    }
    return finalize(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": object_meta(
                model,
                ctx,
                plan.job_name,
                TRAINING,
                version=plan.version,
                annotations=annotations,
            ),
            "spec": {
                "backoffLimit": _retraining(model).backoff_limit,
                "completions": 1,
                "parallelism": 1,
                # An evicted or preempted pod is not a training failure: do not count it.
                "podFailurePolicy": {
                    "rules": [
                        {
                            "action": "Ignore",
                            "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                        }
                    ]
                },
                "template": {
                    "metadata": {
                        "labels": object_labels(name, plan.version, TRAINING),
                        "annotations": {MODEL_VERSION: plan.version},
                    },
                    "spec": pod_spec,
                },
            },
        }
    )
