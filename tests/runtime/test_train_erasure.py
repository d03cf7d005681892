"""Record ids, the partition map, and exact unlearning of a PATE ensemble (``dpserve-train``).

Real training in a temporary directory: a PATE run writes which teacher saw which record;
an erasure retrains only the teachers whose partition held an erased id (the others are
byte-identical copies), rebuilds the verbatim guard without the erased texts, and every run
given ``--exclude-ids`` leaves the records out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dpserve_runtime.artifact import load_manifest
from dpserve_runtime.filter.verbatim import VerbatimGuard
from dpserve_runtime.train.__main__ import main
from dpserve_runtime.train.datasets import (
    Dataset,
    DatasetError,
    export_dataset,
    load_dataset,
    save_dataset,
)
from dpserve_runtime.train.recordids import TRAINING_SET_NAME, ids_digest
from dpserve_runtime.train.text import TextDatasetError, load_text_records, without_erased

MLP = json.dumps({"type": "mlp", "inputDim": 64, "hiddenDims": [16], "numClasses": 10})


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    full = export_dataset("digits", root / "full.npz")
    assert full.ids is not None and full.texts is not None
    rows = np.arange(300, dtype=np.int64)
    small = Dataset(X=full.X[rows], y=full.y[rows], texts=full.texts[:300], ids=full.ids[:300])
    save_dataset(small, root / "digits300.npz")
    return root / "digits300.npz"


@pytest.fixture
def termination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(path))
    return path


def _pate(dataset: Path, output: Path, *extra: str) -> list[str]:
    return ["--dataset", str(dataset), "--output", str(output), "--architecture", MLP,
            "--mode", "pate", "--teachers", "5", "--epochs", "3", "--batch-size", "32",
            "--seed", "3", "--fingerprint-window-tokens", "20", *extra]


def _erased_file(tmp_path: Path, ids: list[str]) -> Path:
    path = tmp_path / "erased.json"
    path.write_text(json.dumps(ids), encoding="utf-8")
    return path


def _report(termination: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(termination.read_text())
    return report


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_exported_datasets_carry_unique_ids(dataset: Path) -> None:
    loaded = load_dataset(dataset)
    assert loaded.ids is not None and len(set(loaded.ids)) == len(loaded) == 300
    assert loaded.ids[0] == "digits-00000"
    subset = loaded.subset(np.array([5, 7], dtype=np.int64))
    assert subset.ids == ("digits-00005", "digits-00007")  # ids follow their rows
    kept, removed = loaded.without(frozenset({"digits-00005", "not-in-the-set"}))
    assert removed == 1 and len(kept) == 299 and "digits-00005" not in (kept.ids or ())
    assert kept.texts is not None and len(kept.texts) == 299


def test_bad_ids_are_refused_naming_the_field(tmp_path: Path) -> None:
    X = np.zeros((3, 2), dtype=np.float32)
    y = np.array([0, 1, 0])
    for ids, message in ((["a", "a", "b"], "repeats"), (["a", "b c", "d"], "must match"),
                         (["a", "b"], "ids for 3 rows")):
        path = tmp_path / "bad.npz"
        np.savez(path, X=X, y=y, ids=np.array(ids, dtype=str))
        with pytest.raises(DatasetError, match=rf"field 'ids': .*{message}"):
            load_dataset(path)
    no_ids = Dataset(X=X, y=y)
    with pytest.raises(DatasetError, match="no 'ids' field"):
        no_ids.without(frozenset({"a"}))


def test_jsonl_records_carry_ids_and_erased_ones_are_left_out(tmp_path: Path) -> None:
    path = tmp_path / "notes.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"n{i}", "text": f"note {i}"})
                              for i in range(4)) + "\n", encoding="utf-8")
    records = load_text_records(path, "text-generation")
    assert [r.id for r in records] == ["n0", "n1", "n2", "n3"]
    kept = without_erased(records, frozenset({"n1"}), str(path))
    assert [r.id for r in kept] == ["n0", "n2", "n3"]
    path.write_text(json.dumps({"id": "n0", "text": "a"}) + "\n" + json.dumps({"text": "b"}),
                    encoding="utf-8")
    with pytest.raises(TextDatasetError, match="every record or none"):
        load_text_records(path, "text-generation")


def test_pate_erasure_retrains_only_the_affected_teachers(
    dataset: Path, tmp_path: Path, termination: Path
) -> None:
    v1 = tmp_path / "v1"
    assert main(_pate(dataset, v1)) == 0
    manifest = load_manifest(v1)
    assert manifest.training_set == TRAINING_SET_NAME and manifest.recipe is not None
    document = json.loads((v1 / TRAINING_SET_NAME).read_text())
    partitions: list[list[str]] = document["teachers"]
    assert len(partitions) == 5
    flat = [i for p in partitions for i in p]
    assert len(flat) == len(set(flat))  # disjoint
    assert set(flat) | set(document["heldOut"]) == set(load_dataset(dataset).ids or ())
    assert _report(termination)["trainingSetSha256"] == _sha(v1 / TRAINING_SET_NAME)

    # Erase two records of teacher 1 and one of teacher 3.
    erased = [partitions[1][0], partitions[1][5], partitions[3][2]]
    data = load_dataset(dataset)
    assert data.ids is not None and data.texts is not None
    erased_text = data.texts[data.ids.index(erased[0])]
    guard_v1 = VerbatimGuard.load(v1 / "fingerprints.json")
    assert guard_v1.check(erased_text)

    v2 = tmp_path / "v2"
    code = main(_pate(dataset, v2, "--unlearn-base", str(v1), "--exclude-ids",
                      str(_erased_file(tmp_path, erased)), "--version", "v2"))
    assert code == 0
    report = _report(termination)
    assert report["retrainedTeachers"] == [1, 3]
    assert report["erasedRecords"] == 3 and report["excludedIds"] == 3
    assert report["excludedIdsSha256"] == ids_digest(erased)
    assert report["epsilon"] == 0.0 and report["version"] == "v2"
    # The evidence rides along: the attack on the three records, under teachers 1 and 3.
    audit = report["membershipAudit"]
    assert audit["erasedRecords"] == 3 and audit["nonMembers"] == len(document["heldOut"])
    assert all(0.0 <= float(audit[k]) <= 1.0 for k in ("aucBefore", "aucAfter", "keptAucAfter"))

    m1, m2 = load_manifest(v1), load_manifest(v2)
    assert m1.teachers is not None and m2.teachers is not None and m2.version == "v2"
    for k, (a, b) in enumerate(zip(m1.teachers, m2.teachers, strict=True)):
        same = (v1 / a).read_bytes() == (v2 / b).read_bytes()
        assert same == (k not in (1, 3)), f"teacher {k}"

    after = json.loads((v2 / TRAINING_SET_NAME).read_text())
    assert report["trainingSetSha256"] == _sha(v2 / TRAINING_SET_NAME)
    assert after["excluded"] == {"count": 3, "sha256": ids_digest(erased)}
    assert after["teachers"][0] == partitions[0]
    assert after["teachers"][1] == [i for i in partitions[1] if i not in erased]
    assert not set(erased) & {i for p in after["teachers"] for i in p}

    guard_v2 = VerbatimGuard.load(v2 / "fingerprints.json")
    assert not guard_v2.check(erased_text)  # the erased record's windows are gone
    kept_text = data.texts[data.ids.index(partitions[2][0])]
    assert guard_v2.check(kept_text)

    # A later erasure on v2 keeps excluding the earlier ids (the file only grows).
    v3 = tmp_path / "v3"
    more = [*erased, partitions[4][1]]
    assert main(_pate(dataset, v3, "--unlearn-base", str(v2), "--exclude-ids",
                      str(_erased_file(tmp_path, more)), "--version", "v3")) == 0
    assert _report(termination)["retrainedTeachers"] == [4]
    m3 = load_manifest(v3)
    assert m3.teachers is not None
    for k in (0, 1, 2, 3):
        assert (v2 / m2.teachers[k]).read_bytes() == (v3 / m3.teachers[k]).read_bytes()


def test_retraining_a_teacher_reproduces_it_without_erasures(
    dataset: Path, tmp_path: Path, termination: Path
) -> None:
    """The recipe is exact: a teacher retrained on its unchanged partition is the same model,
    so the retrained teachers of an erasure are what a run without the records trains."""
    from dpserve_runtime.artifact import load_model
    from dpserve_runtime.train.pate import train_teacher

    v1 = tmp_path / "v1"
    assert main(_pate(dataset, v1)) == 0
    manifest = load_manifest(v1)
    assert manifest.recipe is not None and manifest.architecture is not None
    partitions = json.loads((v1 / TRAINING_SET_NAME).read_text())["teachers"]
    data = load_dataset(dataset)
    assert data.ids is not None
    rows = np.array([data.ids.index(i) for i in partitions[2]], dtype=np.int64)
    recipe = manifest.recipe
    again = train_teacher(data.subset(rows), manifest.architecture, 2, epochs=recipe.epochs,
                          batch_size=recipe.batch_size, learning_rate=recipe.learning_rate,
                          seed=recipe.seed)
    served = load_model(v1)
    assert isinstance(served, list)
    for a, b in zip(served[2].state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_dpsgd_run_leaves_erased_records_out(
    dataset: Path, tmp_path: Path, termination: Path
) -> None:
    erased = ["digits-00010", "digits-00011"]
    output = tmp_path / "dpsgd"
    code = main(["--dataset", str(dataset), "--output", str(output), "--architecture", MLP,
                 "--epochs", "1", "--batch-size", "50", "--target-epsilon", "8", "--delta",
                 "1e-5", "--exclude-ids", str(_erased_file(tmp_path, erased))])
    assert code == 0
    report = _report(termination)
    assert report["erasedRecords"] == 2 and report["excludedIds"] == 2
    document = json.loads((output / TRAINING_SET_NAME).read_text())
    trained = set(document["train"]) | set(document["heldOut"])
    assert len(trained) == 298 and not trained & set(erased)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--unlearn-base", "/nonexistent"], "--unlearn-base: needs --exclude-ids"),
        (["--mode", "dpsgd", "--target-epsilon", "1", "--delta", "1e-5", "--unlearn-base",
          "/x", "--exclude-ids", "ERASED"], "exact unlearning applies to PATE"),
    ],
)  # fmt: skip
def test_unlearn_refusals_name_the_flag(
    dataset: Path, tmp_path: Path, termination: Path, extra: list[str], message: str
) -> None:
    erased = _erased_file(tmp_path, ["digits-00001"])
    args = [a.replace("ERASED", str(erased)) for a in _pate(dataset, tmp_path / "o", *extra)]
    assert main(args) == 2
    assert message in _report(termination)["message"]


def test_unlearn_needs_a_partition_map(dataset: Path, tmp_path: Path, termination: Path) -> None:
    plain = tmp_path / "noids.npz"
    data = load_dataset(dataset)
    save_dataset(Dataset(X=data.X, y=data.y, texts=data.texts), plain)
    v1 = tmp_path / "v1"
    assert main(_pate(plain, v1)) == 0
    assert not (v1 / TRAINING_SET_NAME).exists()
    code = main(_pate(dataset, tmp_path / "v2", "--unlearn-base", str(v1), "--exclude-ids",
                      str(_erased_file(tmp_path, ["digits-00001"]))))
    assert code == 2
    assert "no partition map" in _report(termination)["message"]
    bad = tmp_path / "bad.json"
    bad.write_text('["ok", "not ok"]')
    assert main(_pate(dataset, tmp_path / "v3", "--exclude-ids", str(bad))) == 2
    assert "malformed" in _report(termination)["message"]


def test_erased_records_score_like_non_members_after_the_erasure(
    dataset: Path, tmp_path: Path, termination: Path
) -> None:
    """The audit's membership-inference attack on the retrained teachers: the erased
    records look like members before (the teachers overfit their small partitions) and
    like held-out records after, while the records still in those partitions stay
    detectable (the control)."""
    from dpserve_runtime.train.erasure_audit import audit_erasure

    v1 = tmp_path / "v1"
    wide = json.dumps({"type": "mlp", "inputDim": 64, "hiddenDims": [64], "numClasses": 10})
    args = ["--dataset", str(dataset), "--output", str(v1), "--architecture", wide, "--mode",
            "pate", "--teachers", "4", "--epochs", "60", "--batch-size", "16", "--seed", "5",
            "--test-fraction", "0.3"]
    assert main(args) == 0
    partitions = json.loads((v1 / TRAINING_SET_NAME).read_text())["teachers"]
    erased = partitions[0][:25] + partitions[1][:25]
    v2 = tmp_path / "v2"
    assert main([*args[:3], str(v2), *args[4:], "--unlearn-base", str(v1), "--exclude-ids",
                 str(_erased_file(tmp_path, erased)), "--version", "v2"]) == 0
    audit = audit_erasure(v1, v2, dataset, erased)
    # The erasure Job's report carries the same audit (the request's status shows it).
    reported = _report(termination)["membershipAudit"]
    assert reported["aucAfter"] == f"{audit.after.auc:.4f}"
    assert reported["aucBefore"] == f"{audit.before.auc:.4f}" and reported["erasedRecords"] == 50
    assert audit.teachers == [0, 1]
    assert audit.before.positives == 50 and audit.before.negatives == 2 * 90
    # Before: members (measured 0.79). After: within the attack's noise of 0.5 (measured
    # 0.45 ± 0.045), while the records the teachers still hold stay detectable (0.85).
    assert audit.before.auc > 0.7, audit
    assert abs(audit.after.auc - 0.5) < 2.5 * audit.after.standard_error + 0.05, audit
    assert audit.after.auc < audit.before.auc - 0.2, audit
    assert audit.kept.auc > 0.75, audit
