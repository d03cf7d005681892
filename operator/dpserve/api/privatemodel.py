"""PrivateModel: what to serve, how each query spends budget, where it may run."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, StringConstraints

from dpserve.api.base import ApiModel, Condition, Decimal, Name, defaulted
from dpserve.api.cel import CelRule
from dpserve.api.erasurerequest import MembershipAudit
from dpserve.api.mechanism import Mechanism
from dpserve.api.outputfilter import OutputFilter
from dpserve.api.privacybudget import Sampling
from dpserve.api.text import GenerationLimits, ModelTask
from dpserve.api.validation import CelModel
from dpserve.attestation.spec import AttestationSpec

KIND = "PrivateModel"
PLURAL = "privatemodels"
SHORT_NAMES = ["pm"]

ArtifactUri = Annotated[
    str, StringConstraints(pattern=r"^(pvc|oci|file)://[^\s]+$", max_length=512)
]
Quantity = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$", max_length=32),
]
Version = Annotated[str, StringConstraints(pattern=r"^v[0-9]+$", max_length=16)]
# A torch module name as named_modules() spells it: "1", "net.2", "classifier".
ModuleName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$", max_length=128)
]
# huggingface: a transformers save_pretrained directory (config, tokenizer files, safetensors
# weights only; pickled .bin refused, trust_remote_code never), loaded strictly offline.
ModelFormat = Literal["state-dict", "torchscript", "pate-ensemble", "huggingface"]
ConfidentialProfile = Literal[
    "none", "coco-snp", "coco-tdx", "aks-kata-cc", "aks-cvm", "gke-sev", "gke-sev-snp", "gke-tdx"
]
ExhaustionPolicy = Literal["ScaleToZero", "Retrain"]


class BudgetRef(ApiModel):
    name: Name = Field(
        description="The PrivacyBudget this model spends. Mutable until the model has spent "
        "on it (status.accepted.spent): a typo can be fixed. Then fixed: the edit is refused "
        "at admission (the spend is recorded on that budget); retraining moves the model to "
        "spec.retraining.nextBudget, reported in status.budget."
    )


class DeclaredTraining(CelModel):
    """The DP-SGD spend that produced the artifact, charged once per model version."""

    noise_multiplier: Decimal = Field(
        description="DP-SGD noise multiplier z, 0.01 <= z <= 10000 (the range the accountant "
        "evaluates to a finite ε)."
    )
    sample_rate: Decimal = Field(description="Sampling rate q, 1e-9 <= q <= 1.")
    steps: Annotated[int, Field(ge=1, le=100_000_000)]
    sampling: Sampling = "poisson"

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        # Bounds of a decimal the accountant reads: within them RDP and PLD give a finite ε
        # for any q and steps (z**2 neither underflows nor overflows; checked for both
        # accountants in tests/accounting); 1e-300 used to be admitted and then divided by
        # zero in every reconcile.
        CelRule("double(self.noiseMultiplier) >= 0.01 && "
                "double(self.noiseMultiplier) <= 10000.0",
                "noiseMultiplier must be > 0 and within [0.01, 10000]", ".noiseMultiplier"),
        # Below 1e-9 (no dataset is that large) the PLD accountant takes minutes per ε.
        CelRule("double(self.sampleRate) >= 0.000000001 && double(self.sampleRate) <= 1.0",
                "sampleRate must satisfy 0 < sampleRate <= 1 and be >= 1e-9", ".sampleRate"),
    )


class ModelSource(CelModel):
    artifact: ArtifactUri = Field(
        description="pvc://<claim>/<path>, oci://<image reference> (image volume) or "
        "file://<absolute path> (local development only). Mutable until the model has spent; "
        "after that only together with a new version (a new artifact is a new version)."
    )
    format: ModelFormat = Field(
        description="state-dict, torchscript or pate-ensemble (dpserve's tensor models) or "
        "huggingface (a transformers directory: safetensors weights only, loaded offline, "
        "never remote code)."
    )
    task: ModelTask | None = Field(
        default=None,
        description="What a huggingface artifact does (required for huggingface, forbidden "
        "otherwise): text-generation, text-classification or feature-extraction (sentence "
        "embeddings, pooling stated in the artifact).",
    )
    version: Version = Field(
        "v1",
        description="The version the artifact is served as; its declared training is charged "
        "once per version. Mutable until the model has spent; after that a new version "
        "with a new artifact is rolled out on the budget the model spends (status.budget), "
        "its training charged first, the old version kept in status.versions. A version this "
        "model already served is refused.",
    )
    training: DeclaredTraining | None = Field(
        default=None,
        description="The DP-SGD spend that produced the artifact, charged once per version. "
        "Like artifact: after the model has spent, it changes only with a new version.",
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule("self.format != 'huggingface' || has(self.task)",
                "format huggingface requires task: text-generation, text-classification or "
                "feature-extraction", ".task", "FieldValueRequired"),
        CelRule("self.format == 'huggingface' || !has(self.task)",
                "task applies to format huggingface only: tensor formats have no task",
                ".task", "FieldValueForbidden"),
    )


class Resources(ApiModel):
    cpu: Quantity = "500m"
    memory: Quantity = "1Gi"  # requests == limits: a confidential VM's memory is fixed
    gpu: Annotated[int, Field(ge=0, le=16)] | None = Field(
        default=None,
        description="NVIDIA GPUs for the model container (nvidia.com/gpu, requests == "
        "limits); 0 or unset: none. huggingface models only.",
    )


class Serving(CelModel):
    replicas: Annotated[int, Field(ge=0, le=100)] = 1
    mechanism: Mechanism = defaulted(Mechanism)
    resources: Resources = defaulted(Resources)
    generation: GenerationLimits | None = Field(
        default=None,
        description="Bounds on one request (task text-generation only); default maxTokens "
        "256, maxChoices 4.",
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule("self.mechanism.type != 'pate' || "
                "(has(self.mechanism.teachers) && has(self.mechanism.noiseMultiplier))",
                "mechanism pate requires teachers and noiseMultiplier", ".mechanism"),
        CelRule("self.mechanism.type != 'gaussian' || (has(self.mechanism.noiseMultiplier) && "
                "has(self.mechanism.clipNorm) && has(self.mechanism.sensitivity))",
                "mechanism gaussian requires noiseMultiplier, clipNorm and sensitivity",
                ".mechanism"),
        CelRule("self.mechanism.type != 'laplace-embedding' || has(self.mechanism.epsilon)",
                "mechanism laplace-embedding requires epsilon", ".mechanism"),
        CelRule("self.mechanism.type != 'none' || (!has(self.mechanism.teachers) && "
                "!has(self.mechanism.noiseMultiplier) && !has(self.mechanism.clipNorm) && "
                "!has(self.mechanism.sensitivity) && !has(self.mechanism.epsilon) && "
                "!has(self.mechanism.privacyUnit))",
                "mechanism none takes no parameters", ".mechanism"),
        # The privacy unit decides the ledger (docs/accounting.md, "Text models").
        CelRule("self.mechanism.type != 'laplace-embedding' || "
                "!has(self.mechanism.privacyUnit) || "
                "self.mechanism.privacyUnit == 'query-text'",
                "mechanism laplace-embedding noises the tenant's own query: privacyUnit must "
                "be query-text", ".mechanism.privacyUnit"),
        CelRule("self.mechanism.type != 'pate' || !has(self.mechanism.privacyUnit) || "
                "self.mechanism.privacyUnit == 'training-record'",
                "mechanism pate protects the teachers' training records: privacyUnit must be "
                "training-record", ".mechanism.privacyUnit"),
        # One query text can move a clipped output anywhere in the clipNorm ball, whatever
        # the model: replace-one L2 sensitivity 2 * clipNorm (teachers do not divide it).
        CelRule("self.mechanism.type != 'gaussian' || !has(self.mechanism.privacyUnit) || "
                "self.mechanism.privacyUnit != 'query-text' || "
                "!has(self.mechanism.sensitivity) || !has(self.mechanism.clipNorm) || "
                "double(self.mechanism.sensitivity) >= 2.0 * double(self.mechanism.clipNorm)",
                "privacyUnit query-text: one query text moves the clipped output by up to "
                "2 * clipNorm, so sensitivity must be >= 2 * clipNorm",
                ".mechanism.sensitivity"),
        # Bounds the accountant can compute: the gaussian query's effective noise multiplier
        # noiseMultiplier * clipNorm / sensitivity then lies in [1e-14, 1e16], whose square
        # is a normal double, so RDP and PLD give a finite ε (a huge ε is refused as
        # exhausted, never a division by zero). A per-query ε above 100 is no privacy at all;
        # below 1e-6 the Laplace scale 1/ε buries the embedding.
        CelRule("!has(self.mechanism.noiseMultiplier) || "
                "(double(self.mechanism.noiseMultiplier) >= 0.01 && "
                "double(self.mechanism.noiseMultiplier) <= 10000.0)",
                "noiseMultiplier must be > 0 and within [0.01, 10000]",
                ".mechanism.noiseMultiplier"),
        CelRule("!has(self.mechanism.clipNorm) || "
                "(double(self.mechanism.clipNorm) >= 0.000001 && "
                "double(self.mechanism.clipNorm) <= 1000000.0)",
                "clipNorm must be > 0 and within [1e-6, 1e6]", ".mechanism.clipNorm"),
        CelRule("!has(self.mechanism.sensitivity) || "
                "(double(self.mechanism.sensitivity) >= 0.000001 && "
                "double(self.mechanism.sensitivity) <= 1000000.0)",
                "sensitivity must be > 0 and within [1e-6, 1e6]", ".mechanism.sensitivity"),
        CelRule("!has(self.mechanism.epsilon) || "
                "(double(self.mechanism.epsilon) >= 0.000001 && "
                "double(self.mechanism.epsilon) <= 100.0)",
                "epsilon must be > 0 and within [1e-6, 100] per query", ".mechanism.epsilon"),
    )


# Profiles whose TEE is the pod's own VM, with an attestation agent inside it. A node-level
# TEE (aks-cvm, gke-*) attests the node: every pod on it could present the same token.
POD_TEE_PROFILES: tuple[str, ...] = ("coco-snp", "coco-tdx", "aks-kata-cc")
_POD_TEE_CEL = " || ".join(f"self.profile == '{p}'" for p in POD_TEE_PROFILES)


class Confidential(CelModel):
    profile: ConfidentialProfile
    required: bool = True
    attestation: AttestationSpec | None = Field(
        default=None,
        description="No lease of privacy budget without a valid attestation token from this "
        "verifier (docs/attestation.md). Needs a pod-level TEE profile (coco-snp, coco-tdx, "
        "aks-kata-cc) with required: true.",
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule("self.profile != 'none' || !self.required",
                "profile none cannot be required: set required: false or pick a TEE profile",
                ".required"),
        CelRule(f"!has(self.attestation) || {_POD_TEE_CEL}",
                "attestation needs a pod-level TEE profile (coco-snp, coco-tdx, aks-kata-cc): "
                "without a TEE no token can pass, and a node-level TEE's token attests the "
                "node, not the pod", ".attestation"),
        CelRule("!has(self.attestation) || self.required",
                "attestation needs required: true: a pod placed without a TEE (required: "
                "false, no confidential node) could never obtain a lease", ".required"),
    )


class NextBudget(CelModel):
    name: Name | None = None  # default: "<old budget>-<version>"
    epsilon: Decimal
    delta: Decimal

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule("double(self.epsilon) > 0.0 && double(self.epsilon) <= 1000.0",
                "epsilon must satisfy 0 < epsilon <= 1000", ".epsilon"),
        CelRule("double(self.delta) > 0.0 && double(self.delta) < 1.0",
                "delta must satisfy 0 < delta < 1", ".delta"),
    )


class Lora(CelModel):
    """LoRA adapters on a frozen base (DP-PEFT): only the adapters train, with DP-SGD.

    The retraining's ε covers the new data window only: the base is public or an earlier
    DP release (whose ε the lifetime ε already counts), and using it is post-processing.
    The Job writes the merged model, in the base's own architecture and format (state-dict,
    or huggingface for a language model).
    """

    rank: Annotated[int, Field(ge=1, le=256)] = 8
    alpha: Decimal | None = Field(
        default=None,
        description="LoRA alpha (adapter scale alpha/rank), 0 < alpha <= 10000; default "
        "2 * rank.",
    )
    target_modules: Annotated[list[ModuleName], Field(min_length=1, max_length=16)] | None = (
        Field(
            default=None,
            description="Module names to adapt: tensor models e.g. '1', 'features.0', "
            "'head' (default every Linear and Conv2d layer); huggingface models the "
            "transformer's modules as named_modules() spells them or their last component, "
            "e.g. 'c_attn', 'attn.c_proj', 'q_proj' (default the attention projections).",
        )
    )
    base: ArtifactUri | None = Field(
        default=None,
        description="The frozen base (a state-dict artifact, or a huggingface artifact of "
        "the same task for format huggingface); default the version being served when the "
        "retrain starts.",
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule("!has(self.alpha) || (double(self.alpha) > 0.0 && double(self.alpha) <= 10000.0)",
                "alpha must be > 0 and <= 10000", ".alpha"),
    )


class Retraining(CelModel):
    dataset: ArtifactUri = Field(
        description="The new data window: an .npz file (tensor formats) or, for format "
        "huggingface, a JSONL file with one record per line (one record = one privacy "
        'unit): {"text": ...} for text-generation, {"text": ..., "label": ...} for '
        "text-classification."
    )
    mode: Literal["dpsgd", "pate"] = "dpsgd"
    target_epsilon: Decimal
    delta: Decimal | None = None  # default: nextBudget.delta
    epochs: Annotated[int, Field(ge=1, le=1000)] = 10
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 64
    max_grad_norm: Decimal = Field(
        "1.0", description="Per-example clipping norm of DP-SGD, 0 < maxGradNorm <= 1e6."
    )
    learning_rate: Decimal | None = Field(
        default=None,
        description="Adam learning rate of the trainer, 0 < learningRate <= 1; default the "
        "trainer's (1e-2 dpsgd, 1e-3 pate; huggingface 2e-3 for LoRA adapters).",
    )
    max_seq_length: Annotated[int, Field(ge=2, le=8192)] | None = Field(
        default=None,
        description="Format huggingface only: tokens per training record, longer records "
        "are truncated; at most the base model's positions (default 128).",
    )
    teachers: Annotated[int, Field(ge=2, le=10000)] | None = None
    hidden_dims: (
        Annotated[list[Annotated[int, Field(ge=1, le=65536)]], Field(max_length=8)] | None
    ) = Field(
        default=None,
        description="Hidden layer sizes of the MLP a tensor retrain trains from scratch "
        "(default [128]); unused with lora, refused for format huggingface.",
    )
    backoff_limit: Annotated[int, Field(ge=0, le=10)] = 2
    next_budget: NextBudget
    lora: Lora | None = None  # hiddenDims is then unused: the base gives the architecture

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule("double(self.targetEpsilon) > 0.0", "targetEpsilon must be > 0",
                ".targetEpsilon"),
        CelRule("double(self.targetEpsilon) <= double(self.nextBudget.epsilon)",
                "targetEpsilon must not exceed nextBudget.epsilon", ".targetEpsilon"),
        CelRule("self.mode != 'pate' || has(self.teachers)", "mode pate requires teachers",
                ".teachers", "FieldValueRequired"),
        CelRule("double(self.maxGradNorm) > 0.0 && double(self.maxGradNorm) <= 1000000.0",
                "maxGradNorm must be > 0 and <= 1e6", ".maxGradNorm"),
        CelRule("!has(self.delta) || (double(self.delta) > 0.0 && "
                "double(self.delta) <= double(self.nextBudget.delta))",
                "delta must satisfy 0 < delta <= nextBudget.delta", ".delta"),
        CelRule("!has(self.lora) || self.mode == 'dpsgd'",
                "lora adapters are trained with DP-SGD: mode must be dpsgd", ".lora"),
        CelRule("!has(self.learningRate) || (double(self.learningRate) > 0.0 && "
                "double(self.learningRate) <= 1.0)",
                "learningRate must satisfy 0 < learningRate <= 1", ".learningRate"),
    )


# Text models (format huggingface): which task is served with which mechanism, and why.
# The rules come first so that a text model gets the text-specific message.
_TEXT_RULES: tuple[CelRule, ...] = (
    CelRule("self.model.format != 'huggingface' || self.serving.mechanism.type != 'pate'",
            "PATE over transformer classifiers is not served: the model server has no "
            "huggingface teacher ensemble; serve a DP-fine-tuned classifier with mechanism "
            "none", ".serving.mechanism.type"),
    # A generator's or classifier's answers are functions of its weights: their DP spend is
    # the DP fine-tuning (model.training, charged once); per-answer noise is not offered.
    CelRule("!has(self.model.task) || self.model.task == 'feature-extraction' || "
            "self.serving.mechanism.type == 'none'",
            "text-generation and text-classification are served with mechanism none: the "
            "DP fine-tuning (model.training) is what the budget pays",
            ".serving.mechanism.type"),
    CelRule("!has(self.model.task) || self.model.task != 'feature-extraction' || "
            "self.serving.mechanism.type != 'gaussian' || "
            "!has(self.serving.mechanism.sensitivity) || "
            "!has(self.serving.mechanism.clipNorm) || "
            "double(self.serving.mechanism.sensitivity) >= "
            "2.0 * double(self.serving.mechanism.clipNorm)",
            "gaussian on sentence embeddings of one model: any change (one query text, one "
            "training record) moves the clipped vector by up to 2 * clipNorm, so sensitivity "
            "must be >= 2 * clipNorm", ".serving.mechanism.sensitivity"),
    CelRule("!has(self.serving.generation) || "
            "(has(self.model.task) && self.model.task == 'text-generation')",
            "serving.generation applies to task text-generation only",
            ".serving.generation", "FieldValueForbidden"),
    CelRule("!has(self.serving.resources.gpu) || self.serving.resources.gpu == 0 || "
            "self.model.format == 'huggingface'",
            "serving.resources.gpu: only the huggingface model server uses a GPU; tensor "
            "formats run on CPU", ".serving.resources.gpu", "FieldValueForbidden"),
    # Retraining a language model: DP-LoRA on a frozen huggingface base (train/text_run.py).
    CelRule("!has(self.retraining) || self.model.format != 'huggingface' || "
            "!has(self.model.task) || self.model.task != 'feature-extraction'",
            "retraining of feature-extraction models is not supported: the trainer fine-tunes "
            "text-generation and text-classification models", ".retraining",
            "FieldValueForbidden"),
    CelRule("!has(self.retraining) || self.model.format != 'huggingface' || "
            "self.retraining.mode == 'dpsgd'",
            "huggingface models retrain with DP-SGD: retraining.mode must be dpsgd",
            ".retraining.mode"),
    CelRule("!has(self.retraining) || self.model.format != 'huggingface' || "
            "has(self.retraining.lora)",
            "retraining of a huggingface model trains LoRA adapters on a frozen base: "
            "retraining.lora is required", ".retraining.lora", "FieldValueRequired"),
    CelRule("!has(self.retraining) || self.model.format != 'huggingface' || "
            "!has(self.retraining.hiddenDims)",
            "retraining.hiddenDims sizes a tensor MLP: a huggingface base gives the "
            "architecture", ".retraining.hiddenDims", "FieldValueForbidden"),
    CelRule("!has(self.retraining) || self.model.format != 'huggingface' || "
            "!has(self.retraining.teachers)",
            "retraining.teachers applies to mode pate: huggingface models retrain with DP-SGD",
            ".retraining.teachers", "FieldValueForbidden"),
    CelRule("!has(self.retraining) || !has(self.retraining.maxSeqLength) || "
            "self.model.format == 'huggingface'",
            "retraining.maxSeqLength applies to format huggingface only",
            ".retraining.maxSeqLength", "FieldValueForbidden"),
)


class PrivateModelSpec(CelModel):
    budget_ref: BudgetRef
    model: ModelSource
    serving: Serving = defaulted(Serving)
    confidential: Confidential
    output_filter: OutputFilter = defaulted(OutputFilter)
    on_budget_exhausted: ExhaustionPolicy = "ScaleToZero"
    retraining: Retraining | None = None

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        *_TEXT_RULES,
        CelRule("self.onBudgetExhausted != 'Retrain' || has(self.retraining)",
                "onBudgetExhausted Retrain requires a retraining section", ".retraining",
                "FieldValueRequired"),
        CelRule("self.model.format != 'pate-ensemble' || self.serving.mechanism.type == 'pate'"
                " || self.serving.mechanism.type == 'gaussian'",
                "format pate-ensemble is served with mechanism pate or gaussian",
                ".serving.mechanism.type"),
        CelRule("self.serving.mechanism.type != 'pate' || self.model.format == 'pate-ensemble'",
                "mechanism pate needs model.format pate-ensemble", ".model.format"),
        CelRule("!has(self.retraining) || self.serving.mechanism.type != 'pate' || "
                "self.retraining.mode == 'pate'",
                "mechanism pate serves a teacher ensemble: retraining.mode must be pate",
                ".retraining.mode"),
        CelRule("!has(self.retraining) || self.retraining.mode != 'pate' || "
                "self.serving.mechanism.type == 'pate' || "
                "self.serving.mechanism.type == 'gaussian'",
                "retraining.mode pate produces a teacher ensemble: serve it with mechanism pate "
                "or gaussian", ".retraining.mode"),
        CelRule("!has(self.retraining) || self.serving.mechanism.type != 'pate' || "
                "!has(self.retraining.teachers) || "
                "self.retraining.teachers == self.serving.mechanism.teachers",
                "retraining.teachers must equal serving.mechanism.teachers",
                ".retraining.teachers"),
        CelRule("!has(self.retraining) || !has(self.retraining.lora) || "
                "self.model.format == 'state-dict' || self.model.format == 'huggingface'",
                "retraining.lora adapts a single model: model.format must be state-dict or "
                "huggingface", ".retraining.lora"),
        CelRule("self.serving.mechanism.type != 'none' || self.onBudgetExhausted != 'Retrain' "
                "|| (has(self.retraining) && has(self.retraining.lora) && "
                "has(self.retraining.lora.base) && "
                "self.retraining.lora.base != self.model.artifact)",
                "a model served with mechanism none never spends on queries: it is retrained "
                "only when its declared training does not fit its budget, and then from an "
                "explicit retraining.lora.base other than model.artifact (an artifact already "
                "paid for)", ".retraining.lora.base", "FieldValueRequired"),
        CelRule("!has(self.confidential.attestation) || self.serving.mechanism.type != 'none'",
                "confidential.attestation gates leases of privacy budget, and mechanism none "
                "takes no leases: nothing would be attested", ".confidential.attestation",
                "FieldValueForbidden"),
        CelRule("self.serving.mechanism.type != 'none' || has(self.model.training)",
                "mechanism none serves queries for free: declare the DP-SGD training in "
                "model.training", ".model.training", "FieldValueRequired"),
    )


Phase = Literal[
    "Pending", "Progressing", "Serving", "BudgetExhausted", "Retraining", "Blocked", "Failed"
]


StatusText = Annotated[str, StringConstraints(max_length=1024)]
StatusDecimal = Annotated[str, StringConstraints(max_length=64)]
Timestamp = Annotated[str, StringConstraints(max_length=64)]


class VersionRecord(ApiModel):
    version: Version
    budget: Name
    artifact: Annotated[str, StringConstraints(max_length=512)]
    epsilon_spent: StatusDecimal | None = None
    retired_at: Timestamp | None = None


class ErasureApplied(ApiModel):
    """A version trained without the first ``ids`` erased ids of the model's list."""

    version: Version
    ids: Annotated[int, Field(ge=0)]
    training_set_sha256: Annotated[str, StringConstraints(max_length=64)] | None = None
    retrained_teachers: Annotated[int, Field(ge=0)] | None = None
    membership_audit: MembershipAudit | None = None


class ErasureStatus(ApiModel):
    """Where the model stands with the record ids erased from it (the ids themselves are in
    the ConfigMap <model>-erasure, which every training Job of the model reads)."""

    listed: Annotated[int, Field(ge=0)] = Field(
        0, description="Ids in the model's erased-id list (it only grows)."
    )
    listed_sha256: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        default=None, description="SHA-256 of the list as last read: a list that lost ids "
        "since is refused (no training Job starts) instead of silently un-erasing them."
    )
    applied: Annotated[list[ErasureApplied], Field(max_length=64)] = Field(
        default_factory=list, description="Versions that removed erased ids, oldest first "
        "(the latest 64)."
    )
    job: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        default=None, description="The training Job now removing listed ids."
    )
    attempts: Annotated[int, Field(ge=0)] | None = None
    message: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None, description="Why the last erasure retrain failed, or why none starts."
    )
    gave_up: bool | None = Field(
        default=None, description="The erasure retrain failed its attempts; a new "
        "ErasureRequest for the model tries again."
    )


class AcceptedSpec(ApiModel):
    """The declared model the operator acts on, and whether the model has spent on it.

    Until ``spent``, edits of spec.budgetRef.name, spec.model.artifact, .version and
    .training are followed. Once the model has spent (a ledger entry of it on its budget,
    or a retrained version), spec.budgetRef.name is fixed, and a new artifact or training
    needs a new spec.model.version, rolled out on the budget the model spends
    (docs/gitops.md, "Editing specs").
    """

    budget_ref: Name
    artifact: Annotated[str, StringConstraints(max_length=512)]
    version: Version
    training: DeclaredTraining | None = None
    spent: bool = False


class PrivateModelStatus(ApiModel):
    observed_generation: int | None = None
    phase: Phase | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    selector: StatusText | None = None
    model_version: Annotated[str, StringConstraints(max_length=16)] | None = None
    artifact: Annotated[str, StringConstraints(max_length=512)] | None = None
    # the budget the current version spends (changes on retrain)
    budget: Annotated[str, StringConstraints(max_length=63)] | None = None
    endpoint: StatusText | None = None
    epsilon_spent: StatusDecimal | None = None
    epsilon_limit: StatusDecimal | None = None
    lifetime_epsilon: StatusDecimal | None = None
    restore_replicas: int | None = None  # replicas to restore after a ScaleToZero
    retrain_job: Annotated[str, StringConstraints(max_length=253)] | None = None
    retrain_attempts: int | None = None
    accepted: AcceptedSpec | None = Field(
        default=None, description="The declared budgetRef.name, model.artifact, .version and "
        ".training the operator acts on; spent: the model has spent on its budget, and "
        "admission then refuses a new budgetRef.name, and a new artifact or training "
        "without a new version."
    )
    versions: Annotated[list[VersionRecord], Field(max_length=64)] = Field(default_factory=list)
    dropped_versions: int | None = Field(
        default=None, description="Retired versions no longer listed in versions (it keeps "
        "the latest 64)."
    )
    dropped_versions_epsilon: StatusDecimal | None = Field(
        default=None, description="ε the budgets of the dropped versions spent, each budget "
        "once; part of lifetimeEpsilon."
    )
    erasure: ErasureStatus | None = None
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(default_factory=list)


# Transition rules on the whole object (they read the status: whether the model has spent).
# The API server evaluates them on updates only; the operator refuses the same edits itself
# (Ready=False, Stalled=True, reason SpecEditRefused) where a cluster did not enforce them.
_SPENT = ("has(oldSelf.status) && has(oldSelf.status.accepted) && "
          "has(oldSelf.status.accepted.spent) && oldSelf.status.accepted.spent")
OBJECT_RULES: tuple[CelRule, ...] = (
    CelRule(f"!({_SPENT}) || self.spec.budgetRef.name == oldSelf.spec.budgetRef.name",
            "spec.budgetRef.name cannot change once the model has spent on its budget "
            "(status.accepted.spent): its spend is recorded there; serve from a new budget "
            "with spec.retraining.nextBudget, or create a new PrivateModel",
            ".spec.budgetRef.name"),
    CelRule(f"!({_SPENT}) || self.spec.model.version != oldSelf.spec.model.version || "
            "(self.spec.model.artifact == oldSelf.spec.model.artifact && "
            "has(self.spec.model.training) == has(oldSelf.spec.model.training) && "
            "(!has(self.spec.model.training) || "
            "self.spec.model.training == oldSelf.spec.model.training))",
            "spec.model.artifact and spec.model.training change only with a new "
            "spec.model.version once the model has spent: a version's training is charged "
            "once, so a new artifact is a new version", ".spec.model.artifact"),
    CelRule("self.spec.model.version == oldSelf.spec.model.version || !has(oldSelf.status) || "
            "((!has(oldSelf.status.modelVersion) || "
            "oldSelf.status.modelVersion != self.spec.model.version) && "
            "(!has(oldSelf.status.versions) || "
            "!oldSelf.status.versions.exists(v, v.version == self.spec.model.version)))",
            "spec.model.version must name a version this model has not served yet: the "
            "ledger keys spend by version", ".spec.model.version"),
)


class PrivateModel(ApiModel):
    api_version: str = "dpserve.io/v1alpha1"
    kind: Literal["PrivateModel"] = "PrivateModel"
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: PrivateModelSpec
    status: PrivateModelStatus | None = None
