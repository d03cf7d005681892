"""A loaded huggingface artifact as the text routes use it: generator, classifier, encoder.

Inputs longer than the model's context are refused (``context_length_exceeded``), never
truncated: a truncated input would answer a different question than the one asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from dpserve.api.text import ModelTask
from dpserve_runtime.hfartifact import HfManifest, class_labels, load_hf_artifact
from dpserve_runtime.server.openai_schema import ChatMessage, OpenAIError

FloatArray = npt.NDArray[np.float64]
# tokenizer.model_max_length is a huge sentinel (int(1e30)) when the tokenizer sets none.
_NO_LIMIT = 10**9
# The chat prompt of a tokenizer without a chat template: one "Role: content" line per
# message, then "Assistant:" for the model to continue (the documented fallback).
FALLBACK_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def fallback_chat_prompt(messages: Sequence[ChatMessage]) -> str:
    lines = [f"{FALLBACK_ROLE_NAMES[m.role]}: {m.text()}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def resolve_device(requested: str) -> torch.device:
    """``auto``: CUDA when this process sees a GPU, else CPU; ``cuda`` without one fails."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {requested}: no CUDA device is visible to this process")
    return torch.device(requested)


@dataclass(frozen=True)
class TextModel:
    """Model, tokenizer and manifest of one huggingface artifact, on one device."""

    model: Any
    tokenizer: Any
    manifest: HfManifest
    device: torch.device

    @classmethod
    def load(cls, directory: str | Path, task: ModelTask, device: torch.device) -> TextModel:
        model, tokenizer, manifest = load_hf_artifact(directory, task, device=device)
        loaded = cls(model, tokenizer, manifest, device)
        # A fast tokenizer mutates its Rust state (padding/truncation settings) on the first
        # call that differs from what tokenizer.json set; settle it here, single-threaded, so
        # that the concurrent calls of the serving threads only ever read it ("Already
        # borrowed" otherwise). batch() pads in torch for the same reason.
        loaded.token_ids("warm-up")
        return loaded

    @property
    def task(self) -> ModelTask:
        return self.manifest.task

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def context_length(self) -> int:
        """Most tokens (prompt plus completion) one sequence may hold."""
        limits = [
            int(v)
            for v in (
                getattr(self.model.config, "max_position_embeddings", None),
                getattr(self.tokenizer, "model_max_length", None),
            )
            if isinstance(v, int) and 0 < v < _NO_LIMIT
        ]
        if not limits:
            raise ValueError("neither config.json nor the tokenizer states a context length")
        return min(limits)

    def token_ids(self, text: str, *, special: bool = True) -> list[int]:
        ids: list[int] = self.tokenizer(text, add_special_tokens=special)["input_ids"]
        return ids

    def check_lengths(self, texts: Sequence[str], param: str) -> None:
        """400 context_length_exceeded naming the first input over the context."""
        limit = self.context_length
        for i, text in enumerate(texts):
            count = len(self.token_ids(text))
            if count > limit:
                where = param if len(texts) == 1 else f"{param}.{i}"
                raise OpenAIError(
                    400,
                    f"{where}: {count} tokens, but this model's maximum context length is "
                    f"{limit} tokens",
                    param=where,
                    code="context_length_exceeded",
                )

    def batch(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask``, right-padded (encoders and classifiers)."""
        rows = [self.token_ids(t) for t in texts]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        pad = 0 if pad is None else int(pad)  # masked out: its value does not matter
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}


class TextGenerator:
    """Prompts for a causal LM (the chat template when the tokenizer has one)."""

    def __init__(self, text: TextModel) -> None:
        self.text = text

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.text.tokenizer, "chat_template", None))

    def chat_prompt_ids(self, messages: Sequence[ChatMessage]) -> list[int]:
        if self.has_chat_template:
            from jinja2 import TemplateError

            conversation = [{"role": m.role, "content": m.text()} for m in messages]
            try:
                rendered: str = self.text.tokenizer.apply_chat_template(
                    conversation, add_generation_prompt=True, tokenize=False
                )
            except TemplateError as exc:  # e.g. "roles must alternate user/assistant"
                raise OpenAIError(
                    400, f"messages: the model's chat template refuses them: {exc}",
                    param="messages",
                ) from exc
            # The template writes its own special tokens (BOS etc.); do not add them twice.
            return self.text.token_ids(rendered, special=False)
        return self.text.token_ids(fallback_chat_prompt(messages))


class TextClassifier:
    """Sequence classification: label, label text and class probabilities per input."""

    def __init__(self, text: TextModel) -> None:
        self.text = text
        self.labels = class_labels(text.model)

    def classify(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        with torch.inference_mode():
            logits = self.text.model(**self.text.batch(texts)).logits
        probs = torch.softmax(logits.double(), dim=-1).cpu().numpy()
        if not np.isfinite(probs).all():
            raise ValueError("the classifier returned NaN or infinite logits")
        return [
            {"label": int(np.argmax(row)), "text": self.labels[int(np.argmax(row))],
             "probabilities": row.tolist()}
            for row in probs
        ]


class SentenceEncoder:
    """Pooled, L2-normalised sentence vectors; the mechanisms' target (one member whose
    outputs are unit vectors)."""

    is_ensemble = False
    member_count = 1
    format = "huggingface"
    # Two unit vectors lie at most 2 apart in L2 (opposite directions).
    output_diameter = 2.0

    def __init__(self, text: TextModel) -> None:
        self.text = text
        pooling = text.manifest.pooling
        if pooling is None:  # the manifest validator requires it for feature-extraction
            raise ValueError("pooling: required for feature-extraction")
        self.pooling = pooling
        self.num_outputs: int | None = int(text.model.config.hidden_size)

    def embed(self, texts: Sequence[str]) -> FloatArray:
        """``[n, dim]`` float64 unit vectors."""
        batch = self.text.batch(texts)
        with torch.inference_mode():
            hidden = self.text.model(**batch).last_hidden_state.double()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).double()
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        vectors: FloatArray = pooled.cpu().numpy()
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if not (np.isfinite(vectors).all() and (norms > 0).all()):
            raise ValueError("the encoder returned a zero, NaN or infinite vector")
        unit: FloatArray = vectors / norms
        return unit
