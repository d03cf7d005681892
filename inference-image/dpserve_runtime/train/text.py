"""Text data sets for language-model training: a JSONL file of records, one record per line.

One record is one privacy unit. DP-SGD's guarantee (ε, δ) is about adding or removing one
*line* of the file: a record is tokenised into exactly one training sequence (truncated to
``max_seq_len`` tokens, never split into several), Poisson sampling picks records, and
clipping bounds each record's gradient. A person with several records is protected only by
group privacy (roughly k·ε for k records): put everything about one person into one record.

Record shapes (unknown keys are refused, so nothing a file says is silently ignored):

- ``text-generation``:     ``{"text": "..."}``
- ``text-classification``: ``{"text": "...", "label": "name"}`` (a label of the base model,
  or an integer class index)
- either may carry ``"id": "..."``: the record's opaque id (unique in the file), what an
  ErasureRequest names; a Job given erased ids leaves those records out.

The raw texts also feed the verbatim guard's fingerprint file (hashes only).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from dpserve_runtime.train.recordids import RecordIdError, check_record_ids

TextTask = Literal["text-generation", "text-classification"]
IGNORE_INDEX = -100  # cross-entropy target that contributes nothing (padding, prompt)
MAX_LINE_BYTES = 1 << 20
_KEYS: dict[str, frozenset[str]] = {
    "text-generation": frozenset({"text", "id"}),
    "text-classification": frozenset({"text", "label", "id"}),
}


class TextDatasetError(ValueError):
    """The JSONL file is missing, unreadable or a record does not follow the format."""


class Tokenizer(Protocol):
    """What this module needs of a Hugging Face tokenizer."""

    pad_token_id: int | None
    eos_token_id: int | None

    def __call__(self, text: str, **kwargs: Any) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class TextRecord:
    """One line of the file: the privacy unit."""

    text: str
    label: str | int | None = None
    id: str | None = None


def load_text_records(path: str | Path, task: TextTask) -> list[TextRecord]:
    """Read and validate a JSONL file; every error names the line and the field."""
    source = Path(path)
    if not source.is_file():
        raise TextDatasetError(f"dataset {source}: no such file")
    allowed = _KEYS[task]
    records: list[TextRecord] = []
    try:
        with source.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if len(raw) > MAX_LINE_BYTES:
                    raise TextDatasetError(
                        f"dataset {source} line {number}: longer than {MAX_LINE_BYTES} bytes")
                if not raw.strip():
                    continue  # blank lines (e.g. a trailing newline) hold no record
                records.append(_record(raw, number, source, task, allowed))
    except OSError as exc:
        raise TextDatasetError(f"dataset {source}: cannot read: {exc}") from exc
    if not records:
        raise TextDatasetError(f"dataset {source}: no records")
    ids = [r.id for r in records if r.id is not None]
    if ids:
        if len(ids) != len(records):
            raise TextDatasetError(f"dataset {source}: {len(records) - len(ids)} record(s) "
                                   "lack an 'id' while others have one: every record or none")
        try:
            check_record_ids(ids)
        except RecordIdError as exc:
            raise TextDatasetError(f"dataset {source}: field 'id': {exc}") from exc
    return records


def without_erased(records: list[TextRecord], erased: frozenset[str],
                   source: str) -> list[TextRecord]:
    """The records whose id is not erased (all of them when nothing is erased)."""
    if not erased:
        return records
    if any(r.id is None for r in records):
        raise TextDatasetError(f"dataset {source}: records carry no 'id': erased records "
                               "cannot be left out by id")
    kept = [r for r in records if r.id not in erased]
    if not kept:
        raise TextDatasetError(f"dataset {source}: every record is erased")
    return kept


def _record(raw: bytes, number: int, source: Path, task: TextTask,
            allowed: frozenset[str]) -> TextRecord:
    where = f"dataset {source} line {number}"
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TextDatasetError(f"{where}: not a JSON object: {exc}") from exc
    if not isinstance(obj, dict):
        raise TextDatasetError(f"{where}: not a JSON object")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise TextDatasetError(
            f"{where}: unknown field(s) {', '.join(repr(k) for k in unknown)} for task {task} "
            f"(allowed: {', '.join(sorted(allowed))})")
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        raise TextDatasetError(f"{where}: field 'text' must be a non-empty string")
    label = obj.get("label")
    if task == "text-classification" and (
        label is None or isinstance(label, bool) or not isinstance(label, str | int)
    ):
        raise TextDatasetError(f"{where}: field 'label' must be a string or an integer")
    rid = obj.get("id")
    if rid is not None and not isinstance(rid, str):
        raise TextDatasetError(f"{where}: field 'id' must be a string")
    return TextRecord(text=text, label=label, id=rid)


def resolve_labels(records: Sequence[TextRecord], names: Sequence[str],
                   source: str) -> list[int]:
    """Class indices of the records' labels: a name from ``names`` or an index below it."""
    index = {name: i for i, name in enumerate(names)}
    out: list[int] = []
    for number, record in enumerate(records, start=1):
        label = record.label
        if isinstance(label, str) and label in index:
            out.append(index[label])
        elif isinstance(label, int) and 0 <= label < len(names):
            out.append(label)
        else:
            raise TextDatasetError(
                f"dataset {source} record {number}: field 'label' is {label!r}, not one of "
                f"the model's labels {list(names)} (or an index below {len(names)})")
    return out


@dataclass(frozen=True)
class TokenizedText:
    """Right-padded token tensors, one row per record.

    ``labels`` is ``[n, T]`` next-token targets (``IGNORE_INDEX`` on padding) for
    generation, ``[n]`` class indices for classification. ``truncated`` counts records
    longer than ``max_seq_len`` whose tail was dropped.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    truncated: int

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())

    def subset(self, indices: np.ndarray[Any, np.dtype[np.int64]]) -> TokenizedText:
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        truncated = self.truncated if len(idx) == len(self) else -1
        return TokenizedText(self.input_ids[idx], self.attention_mask[idx], self.labels[idx],
                             truncated)


def tokenize(records: Sequence[TextRecord], tokenizer: Tokenizer, *, task: TextTask,
             max_seq_len: int, label_ids: Sequence[int] | None = None) -> TokenizedText:
    """Tokenise each record into exactly one sequence of at most ``max_seq_len`` tokens.

    Generation appends the end-of-text token when there is room, so the model learns where a
    record ends (and the server's generations stop).
    """
    if max_seq_len < 2:
        raise ValueError(f"max_seq_len must be >= 2, got {max_seq_len}")
    if task == "text-classification" and (label_ids is None or len(label_ids) != len(records)):
        raise ValueError("classification needs one label id per record")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an end-of-text token")
    sequences: list[list[int]] = []
    truncated = 0
    for record in records:
        if task == "text-generation":
            ids = list(tokenizer(record.text, add_special_tokens=False)["input_ids"])
            if tokenizer.eos_token_id is not None:
                ids.append(int(tokenizer.eos_token_id))
            if len(ids) > max_seq_len:
                truncated += 1
                ids = ids[:max_seq_len]
        else:
            # Classifiers keep their framing tokens (BERT's [CLS] ... [SEP]) when truncated.
            ids = list(tokenizer(record.text)["input_ids"])
            if len(ids) > max_seq_len:
                truncated += 1
                ids = list(tokenizer(record.text, truncation=True,
                                     max_length=max_seq_len)["input_ids"])
        if not ids:
            ids = [pad]
        sequences.append(ids)
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    if task == "text-generation":
        labels = input_ids.masked_fill(mask == 0, IGNORE_INDEX)
    else:
        assert label_ids is not None
        labels = torch.tensor(list(label_ids), dtype=torch.long)
    return TokenizedText(input_ids, mask, labels, truncated)


def record_dataset(data: TokenizedText) -> TensorDataset:
    """(input_ids, attention_mask, labels, record index): one row per record.

    The record index lets a test check that a sampled batch holds whole, distinct records.
    """
    return TensorDataset(data.input_ids, data.attention_mask, data.labels,
                         torch.arange(len(data), dtype=torch.long))


def record_loader(data: TokenizedText, *, batch_size: int) -> DataLoader[tuple[torch.Tensor, ...]]:
    """A plain loader over the records; DP-SGD replaces it with Poisson sampling
    (``DPDataLoader``: every record joins each batch independently with q = 1/ceil(n/B))."""
    return DataLoader(record_dataset(data), batch_size=min(batch_size, len(data)), shuffle=False)


def trim(batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop padding columns no row of this batch uses (right padding: trailing columns)."""
    input_ids, mask, labels = batch[0], batch[1], batch[2]
    if input_ids.shape[0] == 0:
        return input_ids, mask, labels
    width = int(mask.sum(dim=1).max())
    width = max(width, 1)
    if labels.dim() == 2:
        labels = labels[:, :width]
    return input_ids[:, :width], mask[:, :width], labels
