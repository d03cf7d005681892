"""Membership-inference audit: the attack's arithmetic and a small end-to-end run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dpserve_runtime.train.audit import (
    AuditConfig,
    AuditRow,
    auc_standard_error,
    format_table,
    membership_auc,
    run_audit,
    summarise,
)
from dpserve_runtime.train.datasets import Dataset, export_dataset
from dpserve_runtime.train.pate import gnmax_epsilon

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Lookup(nn.Module):
    """A 'model' that is confident on the first ``known`` inputs only (by feature 0)."""

    def __init__(self, known: int) -> None:
        super().__init__()
        self.known = known

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        confident = (x[:, 0] < self.known).float()
        logits = torch.zeros(x.shape[0], 2)
        logits[:, 0] = 5.0 * confident  # the true label is 0 for everyone
        return logits


def _indexed(start: int, stop: int) -> Dataset:
    X = np.arange(start, stop, dtype=np.float32).reshape(-1, 1)
    return Dataset(X=X, y=np.zeros(stop - start, dtype=np.int64))


def test_membership_auc_separates_memorised_members() -> None:
    model = _Lookup(known=50)
    auc, stderr = membership_auc(model, _indexed(0, 50), _indexed(50, 150))
    assert auc == 1.0 and stderr == 0.0
    # A model that treats everyone alike reveals nothing.
    auc, _ = membership_auc(_Lookup(known=0), _indexed(0, 50), _indexed(50, 150))
    assert auc == 0.5


def test_auc_standard_error_matches_hanley_mcneil() -> None:
    # AUC 0.5 with 100 + 100 samples: sqrt((0.25 + 99/12 + 99/12) / 10^4).
    assert auc_standard_error(0.5, 100, 100) == pytest.approx(math.sqrt(16.75e-4))
    assert auc_standard_error(0.8, 1000, 1000) < auc_standard_error(0.8, 100, 100)


def test_summarise_and_table() -> None:
    trials = [
        [AuditRow("non-private", None, 0.9, 0.6, 0.02, {"x": 1.0})],
        [AuditRow("non-private", None, 0.8, 0.7, 0.02, {"x": 3.0})],
    ]
    (summary,) = summarise(trials)
    assert summary.accuracy_mean == pytest.approx(0.85)
    assert summary.auc_std == pytest.approx(np.std([0.6, 0.7], ddof=1))
    assert summary.details == {"x": 2.0} and summary.trials == 2
    table = format_table([summary], delta=1e-5)
    assert "non-private" in table and "∞" in table and "0.650 ± 0.071" in table
    with pytest.raises(ValueError, match="disagree"):
        summarise([[trials[0][0]], [AuditRow("other", 1.0, 0.5, 0.5, 0.0)]])


def test_small_audit_end_to_end(tmp_path_factory: pytest.TempPathFactory) -> None:
    data = export_dataset("digits", tmp_path_factory.mktemp("data") / "digits.npz")
    config = AuditConfig(
        private_fraction=0.1,
        public_fraction=0.3,
        hidden_dims=(64,),
        nonprivate_epochs=150,
        epsilons=(2.0,),
        dpsgd_epochs=5,
        pate_teachers=5,
        pate_sigmas=(2.0,),
        pate_queries=40,
        teacher_epochs=60,
        student_epochs=60,
        lora_epsilons=(2.0,),
        lora_rank=4,
    )
    events: list[dict[str, object]] = []
    rows = run_audit(config, data=data, progress=events.append)
    methods = [row.method for row in rows]
    assert methods == [
        "non-private",
        "null control",
        "DP-SGD (target ε=2)",
        "public base alone",
        "DP-LoRA r=4 (target ε=2)",
        "PATE student (σ=2)",
    ]
    assert len(events) == len(rows)
    by_method = {row.method: row for row in rows}
    baseline = by_method["non-private"]
    # Deterministic (seeded, no noise): an overfit model on 180 records leaks membership,
    # visibly more than the null control of the same model on two non-member halves.
    assert baseline.epsilon is None and baseline.test_accuracy > 0.85
    assert baseline.mia_auc > 0.6
    control = by_method["null control"]
    assert abs(control.mia_auc - 0.5) < 4 * control.mia_auc_stderr
    assert baseline.mia_auc - control.mia_auc > 2 * baseline.mia_auc_stderr
    dp = by_method["DP-SGD (target ε=2)"]
    assert dp.epsilon is not None and dp.epsilon <= 2.0
    assert dp.details["steps"] > 0 and dp.details["noiseMultiplier"] > 0
    base = by_method["public base alone"]
    # The base never saw a private record: no membership signal beyond sampling error.
    assert abs(base.mia_auc - 0.5) < 4 * base.mia_auc_stderr
    lora = by_method["DP-LoRA r=4 (target ε=2)"]
    assert lora.epsilon is not None and 0 < lora.epsilon <= 2.0
    assert lora.details["steps"] == dp.details["steps"]  # same data size, epochs, batch
    pate = by_method["PATE student (σ=2)"]
    assert pate.epsilon == pytest.approx(gnmax_epsilon(2.0, 40, config.delta))
    assert pate.details["queries"] == 40 and pate.details["teachers"] == 5
    for row in rows:
        assert 0.0 <= row.test_accuracy <= 1.0 and 0.0 <= row.mia_auc <= 1.0
