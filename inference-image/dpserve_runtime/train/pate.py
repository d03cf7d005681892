"""PATE: teachers on disjoint partitions, GNMax-labelled votes, and their data-independent ε.

Teachers are trained without privacy: one record lives in exactly one partition, so it can
change one teacher's vote, i.e. two counts of a vote histogram by one each (L2 sensitivity
sqrt(2)). GNMax adds Gaussian noise of standard deviation ``sigma`` (in votes) to every
count and releases the arg-max. Per query that is RDP ε(α) = α/σ² (Papernot et al. 2018),
the data-independent bound a ledger may use for refusals (the smaller published PATE ε
values are data-dependent and are not used here).

Noise: the model server's sampler (``dpserve_runtime.noise.discrete_gaussian_votes``):
OpenDP's exact discrete Gaussian on the integer histogram, CSPRNG bits, no floating-point
attack surface; it satisfies the same zCDP/RDP bound as the continuous Gaussian (Canonne,
Kamath and Steinke 2020).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from torch import nn

from dpserve.accounting import GNMaxQuery, epsilon_spent
from dpserve_runtime.architectures import CnnArchitecture, MlpArchitecture, build_model
from dpserve_runtime.noise import discrete_gaussian_votes
from dpserve_runtime.postprocess import argmax_uniform_ties
from dpserve_runtime.train.datasets import Dataset, partition_indices
from dpserve_runtime.train.loop import predict, train_nonprivate

ArchitectureLike = dict[str, Any] | MlpArchitecture | CnnArchitecture


def train_teachers(
    dataset: Dataset,
    architecture: ArchitectureLike,
    teachers: int,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> tuple[list[nn.Module], list[npt.NDArray[np.int64]]]:
    """Train ``teachers`` models, each on its own disjoint partition of ``dataset``.

    Returns the teachers and the row indices of each partition (disjoint by construction).
    """
    if teachers < 2:
        raise ValueError(f"PATE needs at least 2 teachers, got {teachers}")
    if teachers > len(dataset):
        raise ValueError(f"{teachers} teachers but only {len(dataset)} training records")
    partitions = partition_indices(len(dataset), teachers, seed=seed)
    models = [
        train_teacher(dataset.subset(rows), architecture, k, epochs=epochs,
                      batch_size=batch_size, learning_rate=learning_rate, seed=seed)
        for k, rows in enumerate(partitions)
    ]
    return models, partitions


def train_teacher(
    partition: Dataset,
    architecture: ArchitectureLike,
    index: int,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> nn.Module:
    """Teacher ``index`` on its partition, seeded ``seed + index``: the same recipe whether
    the whole ensemble trains or an erasure retrains this one teacher."""
    model = build_model(architecture, seed=seed + index)
    return train_nonprivate(model, partition, epochs=epochs, batch_size=batch_size,
                            learning_rate=learning_rate, seed=seed + index)


def vote_histograms(
    teachers: Sequence[nn.Module], X: npt.NDArray[np.float32], num_classes: int
) -> npt.NDArray[np.int64]:
    """Per query, how many teachers predict each class: shape [n, num_classes]."""
    votes = np.stack([predict(t, X) for t in teachers])  # [teachers, n]
    hist = np.zeros((X.shape[0], num_classes), dtype=np.int64)
    for teacher_votes in votes:
        hist[np.arange(X.shape[0]), teacher_votes] += 1
    return hist


def plurality_accuracy(teachers: Sequence[nn.Module], dataset: Dataset, num_classes: int) -> float:
    """Accuracy of the noise-free plurality vote (an upper reference for GNMax answers)."""
    hist = vote_histograms(teachers, dataset.X, num_classes)
    return float(np.mean(hist.argmax(axis=1) == dataset.y))


class GNMax:
    """Noisy arg-max of vote histograms: the server's discrete Gaussian vote sampler."""

    def __init__(self, sigma: float, num_classes: int) -> None:
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma = sigma
        self._sampler = discrete_gaussian_votes(num_classes, sigma)

    def label(self, histogram: npt.NDArray[np.int64]) -> int:
        noisy = self._sampler(histogram)
        return argmax_uniform_ties(noisy)

    def labels(self, histograms: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return np.array([self.label(h) for h in histograms], dtype=np.int64)


def gnmax_epsilon(sigma: float, queries: int, delta: float) -> float:
    """Data-independent (ε, δ) of ``queries`` GNMax answers at noise ``sigma``.

    Computed by the ledger's own accountant (``dpserve.accounting``, RDP α/σ² per answer),
    so the audit reports exactly what the budget would be charged.
    """
    if queries < 0:
        raise ValueError(f"queries must be >= 0, got {queries}")
    return float(epsilon_spent([(GNMaxQuery(sigma), queries)], delta, "rdp"))
