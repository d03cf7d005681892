"""Exact unlearning of a PATE ensemble: retrain only the teachers that saw an erased record.

A PATE teacher is trained on its own partition and nothing else, so the ensemble a run
without the erased records would have produced differs from the served one only in the
teachers whose partition held one (given the same partition of the remaining records, which
the partition map in ``training-set.json`` fixes). Those teachers are retrained from the
recorded recipe (seed ``seed + k``, same epochs, batch size, learning rate) on their
partition minus the erased ids; every other teacher file is copied byte for byte. The
verbatim guard's fingerprints are rebuilt from the remaining records' texts, so no window of
an erased record's text stays fingerprinted unless another record contains it too.

Teachers are noise-free and never released, so this run spends no ε: the new version's
answers are GNMax releases charged per query like the old one's, on the same budget (same
data, minus the erased records). Nothing already released is refunded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from dpserve_runtime.artifact import (
    ArtifactError,
    load_manifest,
    load_model,
    save_pate_ensemble,
    teacher_files,
)
from dpserve_runtime.filter.verbatim import VerbatimGuard, write_fingerprint_file
from dpserve_runtime.train.datasets import Dataset, DatasetError, load_dataset
from dpserve_runtime.train.erasure_audit import audit_erasure
from dpserve_runtime.train.pate import plurality_accuracy, train_teacher
from dpserve_runtime.train.recordids import (
    TRAINING_SET_NAME,
    RecordIdError,
    file_sha256,
    ids_digest,
    load_training_set,
    training_set_document,
    write_training_set,
)

FINGERPRINTS_NAME = "fingerprints.json"


class UnlearnError(ValueError):
    """The base or the data set cannot support an exact erasure (message says why)."""


@dataclass(frozen=True)
class UnlearnJob:
    base: Path  # the served pate-ensemble artifact
    dataset: Path  # the data set its teachers were trained from (records found by id)
    excluded: frozenset[str]  # every id erased from this model so far
    output: Path
    version: str
    window_tokens: int


def _partition_map(base: Path, teachers: int) -> tuple[list[list[str]], list[str]]:
    try:
        document = load_training_set(base)
    except RecordIdError as exc:
        raise UnlearnError(str(exc)) from exc
    partitions = document.get("teachers")
    held_out = document.get("heldOut", [])
    if (not isinstance(partitions, list) or len(partitions) != teachers
            or not all(isinstance(p, list) for p in partitions)):
        raise UnlearnError(f"{base}/{TRAINING_SET_NAME}: 'teachers' must list the record ids "
                           f"of each of the {teachers} teachers")
    return [[str(i) for i in p] for p in partitions], [str(i) for i in held_out]


def _rows(dataset: Dataset, ids: list[str], row_of: dict[str, int], what: str) -> np.ndarray:
    missing = [i for i in ids if i not in row_of]
    if missing:
        raise UnlearnError(
            f"{what}: {len(missing)} record id(s) of the partition map are not in the data set "
            f"(first: {', '.join(missing[:3])}); the erasure must read the data set the "
            "served version was trained from")
    return np.array([row_of[i] for i in ids], dtype=np.int64)


def unlearn_pate(job: UnlearnJob, progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Write ``job.output``: the base ensemble with the affected teachers retrained."""
    try:
        manifest = load_manifest(job.base)
        files = teacher_files(job.base, manifest)
    except ArtifactError as exc:
        raise UnlearnError(f"--unlearn-base: {exc}") from exc
    if manifest.recipe is None or manifest.training_set is None:
        raise UnlearnError(f"--unlearn-base {job.base}: the artifact has no partition map "
                           "(training-set.json) or teacher recipe: it was trained from a data "
                           "set without record ids; retrain it fully instead")
    assert manifest.architecture is not None
    partitions, held_out = _partition_map(job.base, len(files))
    try:
        dataset = load_dataset(job.dataset)
    except DatasetError as exc:
        raise UnlearnError(str(exc)) from exc
    if dataset.ids is None:
        raise UnlearnError(f"dataset {job.dataset}: no 'ids' field: records cannot be "
                           "matched to the partition map")
    row_of = {rid: row for row, rid in enumerate(dataset.ids)}
    recipe = manifest.recipe
    teachers: list[nn.Module | Path] = []
    kept_partitions: list[list[str]] = []
    retrained: list[int] = []
    erased_found = 0
    for k, ids in enumerate(partitions):
        kept = [i for i in ids if i not in job.excluded]
        kept_partitions.append(kept)
        if len(kept) == len(ids):
            teachers.append(files[k])  # never saw an erased record: kept byte for byte
            continue
        erased_found += len(ids) - len(kept)
        if not kept:
            raise UnlearnError(f"teacher {k}: every record of its partition is erased; an "
                               "ensemble without it needs a full retrain")
        rows = _rows(dataset, kept, row_of, f"teacher {k}")
        teachers.append(train_teacher(
            dataset.subset(rows), manifest.architecture, k, epochs=recipe.epochs,
            batch_size=recipe.batch_size, learning_rate=recipe.learning_rate, seed=recipe.seed))
        retrained.append(k)
        progress({"event": "teacher-retrained", "teacher": k, "records": len(kept),
                  "erased": len(ids) - len(kept)})
    held = [i for i in held_out if i not in job.excluded]
    erased_found += len(held_out) - len(held)

    job.output.mkdir(parents=True, exist_ok=True)
    fingerprints = _fingerprints(job, manifest.fingerprints, dataset)
    accuracy = None
    if held:
        test = dataset.subset(_rows(dataset, held, row_of, "held-out records"))
        modules = [t if isinstance(t, nn.Module) else None for t in teachers]
        if any(m is None for m in modules):
            loaded = load_model(job.base)
            assert isinstance(loaded, list)
            modules = [m if m is not None else loaded[k] for k, m in enumerate(modules)]
        accuracy = plurality_accuracy([m for m in modules if m is not None], test,
                                      manifest.architecture.num_classes)
    document = training_set_document(
        dataset=job.dataset, dataset_sha256=file_sha256(job.dataset), excluded=job.excluded,
        teachers=kept_partitions, held_out=held)
    training_set_sha = write_training_set(job.output, document)
    training = manifest.training.model_copy(update={"accuracy": accuracy}) \
        if manifest.training is not None else None
    save_pate_ensemble(
        job.output, teachers, manifest.architecture, version=job.version,
        labels=manifest.labels, training=training, fingerprints=fingerprints,
        training_set=TRAINING_SET_NAME, recipe=recipe)
    return {
        "noiseMultiplier": None, "sampleRate": None, "steps": 0, "sampling": "poisson",
        "epsilon": 0.0, "delta": manifest.training.delta if manifest.training else None,
        "teachers": len(teachers), "retrainedTeachers": retrained,
        "erasedRecords": erased_found, "excludedIds": len(job.excluded),
        "excludedIdsSha256": ids_digest(job.excluded), "trainingSetSha256": training_set_sha,
        "accuracy": accuracy,
        "membershipAudit": _membership_audit(job) if retrained and held else None,
    }


def _membership_audit(job: UnlearnJob) -> dict[str, Any] | None:
    """The evidence of the erasure (``erasure_audit``), as the report carries it; None when
    no retrained teacher held an erased record (only held-out records were erased)."""
    try:
        audit = audit_erasure(job.base, job.output, job.dataset, job.excluded)
    except ValueError:
        return None
    return {
        "erasedRecords": audit.after.positives,
        "nonMembers": audit.after.negatives // max(len(audit.teachers), 1),
        "aucBefore": f"{audit.before.auc:.4f}", "aucAfter": f"{audit.after.auc:.4f}",
        "aucAfterStandardError": f"{audit.after.standard_error:.4f}",
        "keptAucAfter": f"{audit.kept.auc:.4f}",
    }


def _fingerprints(job: UnlearnJob, base_name: str | None, dataset: Dataset) -> str | None:
    """Rebuilt from the remaining records' texts (never inherited: the base's hashes include
    the erased records' windows, and hashes cannot be attributed to records)."""
    if base_name is None:
        return None
    try:
        base_guard = VerbatimGuard.load(job.base / base_name)
    except ValueError as exc:
        raise UnlearnError(f"--unlearn-base: {exc}") from exc
    if dataset.texts is None:
        raise UnlearnError(f"dataset {job.dataset}: the served version has fingerprints but "
                           "the data set has no 'texts' to rebuild them from")
    try:
        kept, _ = dataset.without(job.excluded)
    except DatasetError as exc:
        raise UnlearnError(str(exc)) from exc
    assert kept.texts is not None
    window = base_guard.window_tokens if job.window_tokens <= 0 else job.window_tokens
    write_fingerprint_file(kept.texts, job.output / FINGERPRINTS_NAME, window)
    (job.output / FINGERPRINTS_NAME).chmod(0o644)
    return FINGERPRINTS_NAME
