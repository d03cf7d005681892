"""Evidence for an erasure: do the erased records score like non-members afterwards?

The loss-threshold membership-inference attack of the training audit (``audit.py``, Yeom
et al. 2018), pointed at the teachers an erasure retrained: each erased record is scored
(negative cross-entropy) by the teacher whose partition held it, in the version before the
erasure and in the version after; the held-out records (never trained on) are scored by the
same teachers as the non-members. AUC 0.5 means the attack cannot tell the erased records
from records the teacher never saw. The records still in those teachers' partitions are
the control: the attack must still find *them* (else it shows nothing).

Only teachers matter: the ensemble's answers are GNMax votes, and every teacher that did
not hold an erased record is byte-identical before and after.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sklearn.metrics import roc_auc_score
from torch import nn

from dpserve_runtime.artifact import load_model
from dpserve_runtime.train.audit import auc_standard_error
from dpserve_runtime.train.datasets import Dataset, load_dataset
from dpserve_runtime.train.loop import per_sample_loss
from dpserve_runtime.train.recordids import TRAINING_SET_NAME


@dataclass(frozen=True)
class AttackAuc:
    auc: float
    standard_error: float
    positives: int
    negatives: int


@dataclass(frozen=True)
class ErasureAudit:
    teachers: list[int]  # the retrained teachers (those that held an erased record)
    before: AttackAuc  # erased records vs held-out, under the teachers that held them
    after: AttackAuc  # the same records under the retrained teachers
    kept: AttackAuc  # the control: remaining members of those teachers, after


def _auc(positives: list[npt.NDArray[np.float64]],
         negatives: list[npt.NDArray[np.float64]]) -> AttackAuc:
    pos, neg = np.concatenate(positives), np.concatenate(negatives)
    truth = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    auc = float(roc_auc_score(truth, -np.concatenate([pos, neg])))  # score = -loss
    return AttackAuc(auc, auc_standard_error(auc, len(pos), len(neg)), len(pos), len(neg))


def _rows(dataset: Dataset, row_of: dict[str, int], ids: Iterable[str]) -> Dataset:
    return dataset.subset(np.array([row_of[i] for i in ids], dtype=np.int64))


def audit_erasure(before: Path, after: Path, dataset_path: Path,
                  erased: Iterable[str]) -> ErasureAudit:
    """Score the erased records under the teachers that held them, before and after."""
    gone = set(erased)
    old = json.loads((before / TRAINING_SET_NAME).read_text(encoding="utf-8"))
    new = json.loads((after / TRAINING_SET_NAME).read_text(encoding="utf-8"))
    dataset = load_dataset(dataset_path)
    if dataset.ids is None:
        raise ValueError(f"dataset {dataset_path}: no 'ids' field")
    row_of = {rid: row for row, rid in enumerate(dataset.ids)}
    held_out = _rows(dataset, row_of, new["heldOut"])
    teachers_before, teachers_after = load_model(before), load_model(after)
    assert isinstance(teachers_before, list) and isinstance(teachers_after, list)
    affected = [k for k, ids in enumerate(old["teachers"]) if gone & set(ids)]
    if not affected:
        raise ValueError("no teacher held an erased record")
    erased_before: list[npt.NDArray[np.float64]] = []
    erased_after: list[npt.NDArray[np.float64]] = []
    kept_after: list[npt.NDArray[np.float64]] = []
    others_before: list[npt.NDArray[np.float64]] = []
    others_after: list[npt.NDArray[np.float64]] = []
    for k in affected:
        records = _rows(dataset, row_of, [i for i in old["teachers"][k] if i in gone])
        kept = _rows(dataset, row_of, new["teachers"][k])
        t_old: nn.Module = teachers_before[k]
        t_new: nn.Module = teachers_after[k]
        erased_before.append(per_sample_loss(t_old, records))
        erased_after.append(per_sample_loss(t_new, records))
        kept_after.append(per_sample_loss(t_new, kept))
        others_before.append(per_sample_loss(t_old, held_out))
        others_after.append(per_sample_loss(t_new, held_out))
    return ErasureAudit(
        teachers=affected,
        before=_auc(erased_before, others_before),
        after=_auc(erased_after, others_after),
        kept=_auc(kept_after, others_after),
    )
