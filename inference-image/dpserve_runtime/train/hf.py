"""DP-SGD for Hugging Face language models: a causal LM or a sequence classifier, fully
fine-tuned or through LoRA adapters (``peft``) on a frozen base (DP-PEFT), with Opacus.

The privacy unit is one record (one line of the JSONL file, see ``train/text.py``): the
loss is computed per record (mean over that record's target tokens) and only then averaged
over the batch, so Opacus' per-sample gradient *is* the record's gradient. Hugging Face's
built-in ``labels=`` loss averages over every token of the batch instead, which makes each
record's gradient depend on the other records' lengths (and the clipped sum's sensitivity
unbounded): it is never used here.

Opacus details that matter:

- GPT-2's projections are ``transformers.pytorch_utils.Conv1D`` (a linear layer with the
  weight stored as [in, out]). Opacus 1.6 has no grad sampler for it and would fall back to
  functorch (slower, and no ghost norm). :func:`register_conv1d_samplers` registers both:
  the per-sample gradient ``a^T b`` and the ghost norm (the Frobenius norm of a transpose
  is the same, so the ``nn.Linear`` formulas apply with the roles of the axes swapped).
- Ghost clipping (``grad_sample_mode="ghost"``) computes per-layer per-sample norms and
  combines them as if each parameter lived in one layer; tied parameters (GPT-2's input
  embedding is its output head) break that. Opacus raises mid-run; this module refuses
  before training (``--fast-clipping`` with trainable tied weights).
- The reported peft + Opacus "silent corruption" (opacus#820, peft#3409) comes from moving
  or materialising parameters after Opacus registered its hooks and the optimiser took its
  parameter references. Here the model is complete and on its device before the adapters
  are added, and nothing moves it afterwards; the tests check that the adapters change and
  the loss falls like the non-private path's.
- Empty Poisson batches: GPT-2 cannot run a forward pass on zero rows, so an empty batch
  becomes an explicit pure-noise step (zero per-sample gradients, then the optimiser's
  noise), which is what Opacus does for an empty batch of a model that can run one; the
  accountant counts it like any other step.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from opacus import PrivacyEngine
from opacus.grad_sample.utils import register_grad_sampler, register_norm_sampler
from torch import nn

from dpserve_runtime.train.dpsgd import (
    ACCOUNTANT,
    DPSGDConfig,
    DPSGDResult,
    PrivacyConfigError,
    ProgressFn,
)
from dpserve_runtime.train.lora import LoraError, LoraSpec, adapter_targets, parameter_counts
from dpserve_runtime.train.text import (
    IGNORE_INDEX,
    TextTask,
    TokenizedText,
    record_loader,
    trim,
)

_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
os.environ.update(_OFFLINE)  # before transformers / huggingface_hub read them

from transformers.pytorch_utils import Conv1D  # noqa: E402

HEAD_NAMES = ("score", "classifier")  # sequence-classification heads of common architectures


class HfTrainingError(ValueError):
    """The base model, its configuration or the adapter settings cannot be used."""


# --- Opacus support for transformers' Conv1D -------------------------------------------------


def _conv1d_grad_sample(layer: Conv1D, activations: list[torch.Tensor],
                        backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of ``y = x @ W + b`` with W [in, out]: sum over positions of
    a_t b_t^T (shape [n, in, out]) and of b_t."""
    a = activations[0].to(backprops.dtype)
    out: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        out[layer.weight] = torch.einsum("n...i,n...j->nij", a, backprops)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = torch.einsum("n...k->nk", backprops)
    return out


def _conv1d_norm_sample(layer: Conv1D, activations: list[torch.Tensor],
                        backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradient norms without the gradients (ghost norm): for a sequence,
    ||Σ_t a_t b_t^T||_F² = Σ_{s,t} (a_s·a_t)(b_s·b_t)."""
    a = activations[0].to(backprops.dtype)
    out: dict[nn.Parameter, torch.Tensor] = {}
    if a.dim() == 2:
        a, backprops = a.unsqueeze(1), backprops.unsqueeze(1)
    a = a.reshape(a.shape[0], -1, a.shape[-1])
    b = backprops.reshape(backprops.shape[0], -1, backprops.shape[-1])
    ggT = torch.einsum("nik,njk->nij", b, b)
    if layer.weight.requires_grad:
        aaT = torch.einsum("nik,njk->nij", a, a)
        out[layer.weight] = torch.sqrt(torch.einsum("nij,nij->n", ggT, aaT).clamp(min=0))
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = torch.sqrt(torch.einsum("nij->n", ggT).clamp(min=0))
    return out


def register_conv1d_samplers() -> None:
    """Register the Conv1D grad and norm samplers with Opacus (idempotent)."""
    register_grad_sampler(Conv1D)(_conv1d_grad_sample)
    register_norm_sampler(Conv1D)(_conv1d_norm_sample)


register_conv1d_samplers()


# --- the base model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HfBase:
    """A huggingface artifact loaded as a training base."""

    directory: Path
    model: Any  # a transformers PreTrainedModel (an nn.Module)
    tokenizer: Any
    task: TextTask
    version: str
    weights_sha256: str
    fingerprints: Path | None = None  # the base's verbatim-guard file, if it has one

    @property
    def labels(self) -> list[str] | None:
        if self.task != "text-classification":
            return None
        config = getattr(self.model, "config", None)
        id2label = getattr(config, "id2label", None) or {}
        return [str(id2label[i]) for i in sorted(id2label)]

    def reference(self) -> dict[str, str]:
        """The manifest's ``lora.base`` block: which base, byte for byte."""
        return {"version": self.version, "sha256": self.weights_sha256}


def weights_sha256(directory: Path) -> str:
    """SHA-256 over the directory's ``*.safetensors`` files, in name order."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise HfTrainingError(f"{directory}: no *.safetensors weights (other formats are refused)")
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load_base(directory: str | Path, task: TextTask) -> HfBase:
    """Load a huggingface artifact of ``task`` as a base: offline, safetensors only, never
    remote code (``dpserve_runtime.hfartifact``)."""
    from dpserve_runtime.artifact import ArtifactError
    from dpserve_runtime.hfartifact import load_hf_artifact

    root = Path(directory)
    try:
        model, tokenizer, manifest = load_hf_artifact(root, task)
    except ArtifactError as exc:
        raise HfTrainingError(str(exc)) from exc
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token  # right padding, masked out of the loss
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # classifiers find the last token
    return HfBase(directory=root, model=model, tokenizer=tokenizer, task=task,
                  version=manifest.version, weights_sha256=weights_sha256(root),
                  fingerprints=root / manifest.fingerprints if manifest.fingerprints else None)


# --- adapters ---------------------------------------------------------------------------------


def adaptable_modules(model: nn.Module) -> list[str]:
    """Linear / Conv1D layers LoRA can adapt, heads and embeddings excluded, module order."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | Conv1D):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("lm_head", *HEAD_NAMES):
            continue  # the output head: tied to the embedding (LM) or trained whole (classifier)
        names.append(name)
    return names


def resolve_targets(model: nn.Module, targets: Sequence[str] | None) -> list[str]:
    """Full module names for ``targets`` (exact names or suffixes such as ``c_attn``)."""
    candidates = adaptable_modules(model)
    if not candidates:
        raise LoraError("the base has no Linear or Conv1D layer to adapt")
    if targets is None:
        return candidates
    chosen: list[str] = []
    unknown = []
    for target in targets:
        hits = [n for n in candidates if n == target or n.endswith("." + target)]
        if not hits:
            unknown.append(target)
        chosen.extend(h for h in hits if h not in chosen)
    if unknown:
        suffixes = sorted({n.rsplit(".", 1)[-1] for n in candidates})
        raise LoraError(
            f"{', '.join(repr(n) for n in unknown)} matches no adaptable layer of the base; "
            f"adaptable layers (by suffix): {', '.join(suffixes)}")
    modules = dict(model.named_modules())
    kinds = {type(modules[n]) for n in chosen}
    if len(kinds) > 1:
        raise LoraError("targets mix Linear and Conv1D layers; adapt one kind per run")
    return chosen


def head_modules(model: nn.Module) -> list[str]:
    """The classification head's module name(s), trained whole in a LoRA classifier run."""
    return [n for n, _ in model.named_children() if n in HEAD_NAMES] or [
        n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in HEAD_NAMES]


def build_lora_model(base: nn.Module, spec: LoraSpec, task: TextTask, *,
                     seed: int = 0) -> nn.Module:
    """A peft model of ``base`` (deep-copied) with adapters on the targets; only they (and a
    classifier's head) train. The base must already be on its final device."""
    from dpserve_runtime.train.lora import _peft

    peft = _peft()
    targets = resolve_targets(base, spec.targets)
    modules = dict(base.named_modules())
    conv1d = isinstance(modules[targets[0]], Conv1D)
    save = head_modules(base) if task == "text-classification" else None
    if task == "text-classification" and not save:
        raise LoraError("the classifier has no recognised head (score / classifier) to train")
    config = peft.LoraConfig(
        r=spec.rank, lora_alpha=spec.scale_alpha, target_modules=targets, lora_dropout=0.0,
        bias="none", fan_in_fan_out=conv1d, modules_to_save=save,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # adapter initialisation only, never the DP noise
        model: nn.Module = peft.get_peft_model(copy.deepcopy(base), config)
    adapted = adapter_targets(model)
    if set(adapted) != set(targets):
        raise LoraError(f"peft adapted {adapted}, expected exactly {targets}")
    wrong = [n for n, p in model.named_parameters() if p.requires_grad
             and ".lora_" not in n and ".modules_to_save." not in n]
    if wrong:
        raise LoraError(f"base parameters left trainable: {wrong}")
    return model


def lora_summary(model: nn.Module, spec: LoraSpec, base: HfBase,
                 *, adapter: str = "adapter") -> dict[str, Any]:
    """The ``lora`` block of the manifest's training section and of the report."""
    trainable, total = parameter_counts(model)
    return {
        "rank": spec.rank, "alpha": spec.scale_alpha, "targets": adapter_targets(model),
        "trainableParams": trainable, "totalParams": total, "base": base.reference(),
        "adapter": adapter,
    }


def tied_trainable_parameters(model: nn.Module) -> list[str]:
    """Names of trainable parameters that more than one module uses (e.g. tied embeddings)."""
    owners: dict[int, list[str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad:
                owners.setdefault(id(param), []).append(f"{module_name}.{name}")
    return sorted(names[0] for names in owners.values() if len(set(names)) > 1)


# --- the loss ---------------------------------------------------------------------------------


class RecordLoss(nn.Module):
    """Cross-entropy per record, reduced over the batch by ``reduction``.

    Generation: mean over the record's next-token targets (padding ignored). Classification:
    the record's cross-entropy. ``reduction = "none"`` returns one loss per record, which is
    how Opacus' ghost-clipping wrapper calls it.
    """

    def __init__(self, task: TextTask, reduction: str = "mean") -> None:
        super().__init__()
        self.task = task
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_record = record_losses(logits, labels, self.task)
        if self.reduction == "none":
            return per_record
        if self.reduction == "sum":
            return per_record.sum()
        return per_record.mean()


def record_losses(logits: torch.Tensor, labels: torch.Tensor, task: TextTask) -> torch.Tensor:
    """One loss per record (see :class:`RecordLoss`)."""
    if task == "text-classification":
        return nn.functional.cross_entropy(logits.float(), labels, reduction="none")
    targets = labels[:, 1:]
    scores = logits[:, :-1].float()
    token = nn.functional.cross_entropy(
        scores.reshape(-1, scores.shape[-1]), targets.reshape(-1), reduction="none",
        ignore_index=IGNORE_INDEX,
    ).view(targets.shape)
    counts = (targets != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return token.sum(dim=1) / counts


def takes_position_ids(model: nn.Module) -> bool:
    """Whether the (unwrapped) transformers model's forward accepts ``position_ids``."""
    inner: Any = model
    while True:
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()  # peft
        elif isinstance(getattr(inner, "_module", None), nn.Module):
            inner = inner._module  # Opacus' GradSampleModule
        else:
            break
    return "position_ids" in inspect.signature(inner.forward).parameters


def _forward(model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor,
             positions: bool = False) -> torch.Tensor:
    kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": mask}
    if positions:
        # Per-row position ids: by default GPT-2 broadcasts one [1, T] row over the batch,
        # and Opacus would then see the position embedding used by "one sample" and compute
        # a per-sample gradient of the wrong batch size.
        kwargs["position_ids"] = torch.arange(input_ids.shape[1]).repeat(input_ids.shape[0], 1)
    logits: torch.Tensor = model(**kwargs).logits
    return logits


# --- training ---------------------------------------------------------------------------------


def _empty_step(optimizer: Any, ghost: bool) -> None:
    """A pure-noise DP step for an empty Poisson batch (the model cannot run zero rows)."""
    for p in optimizer.params:
        if ghost:
            p.grad = torch.zeros_like(p)  # the clipped sum over no records
        else:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
    optimizer.step()


def train_text_dpsgd(model: nn.Module, data: TokenizedText, task: TextTask, config: DPSGDConfig,
                     *, progress: ProgressFn | None = None,
                     noise_multiplier: float | None = None) -> DPSGDResult:
    """DP-SGD to (config.target_epsilon, config.delta) over records; Poisson sampling.

    ``noise_multiplier`` (tests and benchmarks only) fixes σ instead of searching it for the
    target ε; the spend is read back from the accountant either way.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise PrivacyConfigError("model has no trainable parameters")
    if config.fast_clipping and (tied := tied_trainable_parameters(model)):
        raise PrivacyConfigError(
            f"--fast-clipping: ghost clipping cannot clip tied parameters ({', '.join(tied)}); "
            "train LoRA adapters, or run without --fast-clipping")
    model.train()  # Opacus refuses a module in eval mode (a loaded base is in eval mode)
    optimizer = torch.optim.Adam(trainable, lr=config.learning_rate)
    criterion = RecordLoss(task)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=ACCOUNTANT, secure_mode=False)
    common: dict[str, Any] = {
        "module": model, "optimizer": optimizer, "criterion": criterion,
        "data_loader": record_loader(data, batch_size=config.batch_size),
        "max_grad_norm": config.max_grad_norm, "poisson_sampling": True,
        "grad_sample_mode": "ghost" if config.fast_clipping else "hooks",
    }
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            if noise_multiplier is None:
                prepared = engine.make_private_with_epsilon(
                    target_epsilon=config.target_epsilon, target_delta=config.delta,
                    epochs=config.epochs, **common)
            else:
                prepared = engine.make_private(noise_multiplier=noise_multiplier, **common)
    except ValueError as exc:
        raise PrivacyConfigError(f"cannot reach ε={config.target_epsilon}: {exc}") from exc
    if len(prepared) == 4:
        private_model, dp_optimizer, loss_fn, dp_loader = prepared
    else:
        private_model, dp_optimizer, dp_loader = prepared
        loss_fn = criterion
    positions = takes_position_ids(model)
    private_model.train()
    for epoch in range(config.epochs):
        total, count = 0.0, 0
        for batch in dp_loader:
            input_ids, mask, labels = trim(batch)
            dp_optimizer.zero_grad()
            if input_ids.shape[0] == 0:
                _empty_step(dp_optimizer, config.fast_clipping)
                continue
            loss = loss_fn(_forward(private_model, input_ids, mask, positions), labels)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            dp_optimizer.step()
            total += float(loss.item()) * input_ids.shape[0]
            count += input_ids.shape[0]
        if progress is not None:
            progress({"event": "epoch", "epoch": epoch + 1, "epochs": config.epochs,
                      "loss": total / count if count else None,
                      "epsilon": float(engine.get_epsilon(config.delta))})
    history = engine.accountant.history
    if len(history) != 1:
        raise RuntimeError(f"expected one (σ, q) in the accountant history, got {history}")
    sigma, q, steps = history[0]
    cleanup = getattr(private_model, "cleanup", None)
    if callable(cleanup):
        cleanup()
    inner = getattr(private_model, "_module", private_model)
    trained = cast(nn.Module, inner).eval()
    for p in trained.parameters():
        for attr in ("grad_sample", "_forward_counter", "_current_grad_sample", "_norm_sample",
                     "summed_grad"):
            if hasattr(p, attr):
                delattr(p, attr)
    return DPSGDResult(model=trained, noise_multiplier=float(sigma), sample_rate=float(q),
                       steps=int(steps), epsilon=float(engine.get_epsilon(config.delta)),
                       delta=config.delta)


def train_text_nonprivate(model: nn.Module, data: TokenizedText, task: TextTask, *,
                          epochs: int, batch_size: int, learning_rate: float,
                          seed: int) -> tuple[nn.Module, list[float]]:
    """Ordinary Adam training with the same per-record loss (baselines, audits).

    Returns the model and the mean training loss of each epoch."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)  # data order only
    losses = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        total = 0.0
        for start in range(0, len(data), batch_size):
            idx = order[start : start + batch_size]
            input_ids, mask, labels = trim(
                (data.input_ids[idx], data.attention_mask[idx], data.labels[idx]))
            optimizer.zero_grad()
            loss = record_losses(_forward(model, input_ids, mask), labels, task).mean()
            torch.autograd.backward(loss)
            optimizer.step()
            total += float(loss.item()) * len(idx)
        losses.append(total / len(data))
    return model.eval(), losses


@torch.no_grad()
def evaluate(model: nn.Module, data: TokenizedText, task: TextTask, *,
             batch_size: int = 64) -> dict[str, float]:
    """Mean per-record loss (and accuracy for a classifier) on ``data``; eval mode."""
    model.eval()
    losses, correct = [], 0
    for start in range(0, len(data), batch_size):
        input_ids, mask, labels = trim((data.input_ids[start : start + batch_size],
                                        data.attention_mask[start : start + batch_size],
                                        data.labels[start : start + batch_size]))
        logits = _forward(model, input_ids, mask)
        losses.append(record_losses(logits, labels, task))
        if task == "text-classification":
            correct += int((logits.argmax(dim=-1) == labels).sum())
    loss = float(torch.cat(losses).mean())
    result = {"loss": loss}
    if task == "text-classification":
        result["accuracy"] = correct / len(data)
    else:
        result["perplexity"] = math.exp(min(loss, 50.0))
    return result


def merged(model: nn.Module) -> nn.Module:
    """The base architecture with the adapters folded in (W + alpha/r·B·A); works on a copy."""
    from dpserve_runtime.train.lora import merged as merge_copy

    return merge_copy(model)


def check_finite(model: nn.Module) -> None:
    """Refuse to write a model with NaN/inf weights (a diverged run)."""
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise RuntimeError(f"non-finite weights after training: {bad[:5]}")
