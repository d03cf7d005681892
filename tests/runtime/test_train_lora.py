"""LoRA adapters on a frozen base (DP-PEFT): only the adapters train, the spend is exactly
what (σ, q, steps) imply, the artifact is the merged base architecture, bad input exits 2."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn

from dpserve.accounting import SubsampledGaussian, epsilon_spent
from dpserve_runtime.architectures import build_model, parse_architecture
from dpserve_runtime.artifact import (
    load_manifest,
    load_model,
    save_pate_ensemble,
    save_state_dict_artifact,
)
from dpserve_runtime.filter.verbatim import VerbatimGuard, write_fingerprint_file
from dpserve_runtime.train.__main__ import main
from dpserve_runtime.train.datasets import Dataset, export_dataset, save_dataset, split_indices
from dpserve_runtime.train.dpsgd import DPSGDConfig, train_dpsgd
from dpserve_runtime.train.loop import accuracy, train_nonprivate
from dpserve_runtime.train.lora import (
    LoraError,
    LoraSpec,
    adaptable_modules,
    build_lora_model,
    load_adapter,
    merged,
    parameter_counts,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCH = {"type": "mlp", "inputDim": 64, "hiddenDims": [32], "numClasses": 10}
LABELS = [f"digit-{i}" for i in range(10)]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Dataset]:
    """Disjoint splits of digits: a public half (the base's data), private train and test."""
    data = export_dataset("digits", tmp_path_factory.mktemp("data") / "digits.npz")
    public, train, test = split_indices(len(data), [0.5, 0.3, 0.2], seed=0)
    strip = {"texts": None}  # no verbatim fingerprints here: test_train_cli covers them
    return {
        name: Dataset(**{"X": part.X, "y": part.y, **strip})
        for name, part in (
            ("public", data.subset(public)),
            ("train", data.subset(train)),
            ("test", data.subset(test)),
        )
    }


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory, digits: dict[str, Dataset]) -> Path:
    """A state-dict artifact (v1) trained without noise on the public half."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_nonprivate(
            build_model(ARCH, seed=0), digits["public"], epochs=5, batch_size=64,
            learning_rate=1e-2, seed=0,
        )
    finally:
        torch.set_num_threads(threads)
    root = tmp_path_factory.mktemp("base") / "v1"
    save_state_dict_artifact(root, model, ARCH, version="v1", labels=LABELS)
    return root


@pytest.fixture(scope="module")
def private_file(tmp_path_factory: pytest.TempPathFactory, digits: dict[str, Dataset]) -> Path:
    path = tmp_path_factory.mktemp("private") / "window.npz"
    save_dataset(digits["train"], path)
    return path


@pytest.fixture
def termination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(path))
    return path


def _reference_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """dp-accounting (an independent implementation), on Opacus' RDP orders."""
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    accountant = dp_accounting.rdp.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


# --- the trainer end to end ------------------------------------------------------------------


def test_lora_run_writes_the_merged_base_architecture_and_declares_the_spend(
    base_dir: Path,
    private_file: Path,
    tmp_path: Path,
    termination: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base_weights = base_dir / "weights.pt"
    base_sha = _sha256(base_weights)
    output = tmp_path / "v2"
    # The LoRA flags through their environment fallbacks, as a Job could set them.
    monkeypatch.setenv("DPSERVE_LORA_BASE", str(base_dir))
    monkeypatch.setenv("DPSERVE_LORA_RANK", "4")
    code = main([
        "--dataset", str(private_file), "--output", str(output), "--version", "v2",
        "--target-epsilon", "3", "--delta", "1e-5", "--max-epsilon", "4",
        "--epochs", "3", "--batch-size", "64",
    ])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert json.loads(termination.read_text()) == report

    # The spend: Poisson-subsampled Gaussian over the new window only, ε under the target
    # and equal to what (σ, q, steps) imply under two independent accountants.
    train_records = 540 - round(540 * 0.1)  # default --test-fraction 0.1
    batches = math.ceil(train_records / 64)
    assert report["sampleRate"] == pytest.approx(1 / batches)
    assert report["steps"] == 3 * batches and report["sampling"] == "poisson"
    assert 0 < report["epsilon"] <= 3.0
    sigma, q, steps = report["noiseMultiplier"], report["sampleRate"], report["steps"]
    ledger = epsilon_spent([(SubsampledGaussian(sigma, q, steps), 1)], 1e-5)
    assert report["epsilon"] == pytest.approx(ledger, rel=1e-6)
    assert report["epsilon"] == pytest.approx(_reference_epsilon(sigma, q, steps, 1e-5), rel=1e-3)

    # The lora summary: rank r on both Linear layers (64->32, 32->10), counted independently.
    base_params = sum(p.numel() for p in build_model(ARCH).parameters())
    adapter_params = 4 * (64 + 32) + 4 * (32 + 10)
    assert report["lora"] == {
        "rank": 4,
        "alpha": 8.0,  # default 2 * rank
        "targets": ["1", "3"],
        "trainableParams": adapter_params,
        "totalParams": base_params + adapter_params,
        "base": {"version": "v1", "sha256": base_sha},
        "adapter": "adapter",
    }

    # The artifact: the base's architecture, format and labels; the manifest says how.
    manifest = load_manifest(output)
    assert manifest.format == "state-dict" and manifest.version == "v2"
    assert manifest.architecture == parse_architecture(ARCH)
    assert manifest.labels == LABELS  # inherited from the base
    assert manifest.training is not None and manifest.training.lora is not None
    assert manifest.training.lora.model_dump(by_alias=True) == report["lora"]
    assert manifest.training.epsilon == report["epsilon"]
    served = load_model(output)  # the model server's own loader: no peft involved
    base = load_model(base_dir)
    assert isinstance(served, nn.Sequential) and isinstance(base, nn.Sequential)
    assert served.state_dict().keys() == base.state_dict().keys()

    # The base file is untouched; the merged weights differ from it only by B·A (rank <= r)
    # on the adapted layers, and the biases (not adapted) are bit for bit the base's.
    assert _sha256(base_weights) == base_sha
    for name in ("1", "3"):
        delta = served.state_dict()[f"{name}.weight"] - base.state_dict()[f"{name}.weight"]
        assert 0 < int(torch.linalg.matrix_rank(delta)) <= 4
        assert torch.equal(served.state_dict()[f"{name}.bias"], base.state_dict()[f"{name}.bias"])

    # The adapter kept for provenance reproduces the served weights when merged onto the base.
    assert (output / "adapter" / "adapter_config.json").is_file()
    assert "sha256 " + base_sha in (output / "adapter" / "README.md").read_text()
    remerged = merged(load_adapter(base, output / "adapter"))
    for key, value in served.state_dict().items():
        torch.testing.assert_close(remerged.state_dict()[key], value, rtol=0, atol=1e-6)


def test_adapters_train_the_base_stays_frozen(digits: dict[str, Dataset]) -> None:
    base = build_model(ARCH, seed=3)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    model = build_lora_model(base, LoraSpec(rank=2, targets=("3",)))
    assert parameter_counts(model) == (2 * (32 + 10), 2410 + 2 * (32 + 10))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == [
        "base_model.model.3.lora_A.default.weight",
        "base_model.model.3.lora_B.default.weight",
    ]
    config = DPSGDConfig(
        target_epsilon=4.0, delta=1e-5, epochs=1, batch_size=64, max_grad_norm=1.0
    )
    result = train_dpsgd(model, digits["train"], config)

    trained = dict(result.model.named_parameters())
    assert torch.count_nonzero(trained["base_model.model.3.lora_B.default.weight"]) > 0
    # Removing the adapters (without merging) gives back the base, byte for byte.
    unloaded = copy.deepcopy(result.model).unload()
    for key, value in unloaded.state_dict().items():
        assert torch.equal(value, original[key]), key
    # The caller's base module is not modified either (the peft model wraps a copy).
    for key, value in base.state_dict().items():
        assert torch.equal(value, original[key]), key


def test_cnn_base_adapts_every_conv_and_linear_layer(digits: dict[str, Dataset]) -> None:
    cnn = {"type": "cnn", "inputShape": [1, 8, 8], "channels": [4, 8], "numClasses": 10}
    base = build_model(cnn, seed=0)
    assert adaptable_modules(base) == ["features.0", "features.4", "head"]
    images = Dataset(X=digits["train"].X[:200].reshape(-1, 1, 8, 8), y=digits["train"].y[:200])
    config = DPSGDConfig(
        target_epsilon=8.0, delta=1e-5, epochs=1, batch_size=50, max_grad_norm=1.0,
        fast_clipping=True,
    )  # fmt: skip
    result = train_dpsgd(build_lora_model(base, LoraSpec(rank=2)), images, config)
    folded = merged(result.model)
    # The merged model is the plain architecture: it loads strictly into a fresh ConvNet.
    build_model(cnn).load_state_dict(folded.state_dict(), strict=True)
    assert type(folded) is type(base)
    norms = ("features.1.weight", "features.5.weight")  # GroupNorm: never adapted, frozen
    for key in norms:
        assert torch.equal(folded.state_dict()[key], base.state_dict()[key])


def test_unknown_target_is_refused_with_the_candidates() -> None:
    with pytest.raises(LoraError, match=r"'2' is not a Linear or Conv2d layer.*1, 3"):
        build_lora_model(build_model(ARCH, seed=0), LoraSpec(targets=("2",)))
    with pytest.raises(LoraError, match="rank must be >= 1"):
        LoraSpec(rank=0)


# --- refusals: exit 2, the flag or field named ------------------------------------------------


@pytest.fixture(scope="module")
def pate_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pate") / "v1"
    teachers = [build_model(ARCH, seed=1), build_model(ARCH, seed=2)]
    save_pate_ensemble(root, teachers, ARCH, version="v1")
    return root


@pytest.fixture(scope="module")
def misfit_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("misfit")
    rng = np.random.default_rng(0)
    narrow = Dataset(X=rng.normal(size=(40, 32)).astype(np.float32), y=np.arange(40) % 10)
    more_classes = Dataset(X=rng.normal(size=(40, 64)).astype(np.float32), y=np.arange(40) % 12)
    save_dataset(narrow, root / "narrow.npz")
    save_dataset(more_classes, root / "classes.npz")
    return {"narrow": root / "narrow.npz", "classes": root / "classes.npz"}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("pate", "--lora-base: LoRA adapters are trained with DP-SGD; --mode pate"),
        ("pate-base", "--lora-base: "),
        ("no-manifest", "--lora-base: no manifest.json"),
        ("other-hidden", "--architecture: "),
        ("other-type", "--architecture: "),
        ("narrow-data", "field 'X' has 32 features per row [32], the architecture expects 64"),
        ("more-classes", "field 'y' has label 11 but the model has 10 classes"),
        ("bad-target", "--lora-targets: '2' is not a Linear or Conv2d layer"),
        ("rank-without-base", "--lora-rank: only valid with --lora-base"),
        ("output-is-base", "--output: must not be the --lora-base directory"),
    ],
)
def test_invalid_lora_input_exits_2_naming_the_flag(
    case: str,
    message: str,
    base_dir: Path,
    pate_dir: Path,
    private_file: Path,
    misfit_files: dict[str, Path],
    tmp_path: Path,
    termination: Path,
) -> None:
    dataset, base, output = private_file, base_dir, tmp_path / "out"
    extra: list[str] = []
    if case == "pate":
        extra = ["--mode", "pate", "--teachers", "4"]
    elif case == "pate-base":
        base = pate_dir
    elif case == "no-manifest":
        base = tmp_path
    elif case == "other-hidden":
        extra = ["--architecture", '{"type": "mlp", "hiddenDims": [64]}']
    elif case == "other-type":
        extra = ["--architecture", '{"type": "cnn", "channels": [4]}']
    elif case == "narrow-data":
        dataset = misfit_files["narrow"]
    elif case == "more-classes":
        dataset = misfit_files["classes"]
    elif case == "bad-target":
        extra = ["--lora-targets", "1,2"]
    elif case == "output-is-base":
        output, extra = base_dir, ["--overwrite"]  # even then, never over the base
    lora = [] if case == "rank-without-base" else ["--lora-base", str(base)]
    if case == "rank-without-base":
        extra = ["--architecture", json.dumps(ARCH), "--lora-rank", "4"]
    args = [
        "--dataset", str(dataset), "--output", str(output), *lora,
        "--target-epsilon", "3", "--delta", "1e-5", "--epochs", "1", *extra,
    ]  # fmt: skip
    assert main(args) == 2
    failure = json.loads(termination.read_text())
    assert failure["reason"] == "InvalidInput"
    assert message in failure["message"], failure["message"]
    if case == "pate-base":
        assert "'pate-ensemble' artifact" in failure["message"]
    if case.startswith("other-"):
        assert "does not match the --lora-base architecture" in failure["message"]
    assert not (output / "manifest.json").exists() or output == base_dir


def test_matching_architecture_is_accepted(
    base_dir: Path, private_file: Path, tmp_path: Path, termination: Path
) -> None:
    # Hidden layers only (as a retraining spec names them): the sizes come from the base.
    args = [
        "--dataset", str(private_file), "--output", str(tmp_path / "v2"),
        "--lora-base", str(base_dir), "--architecture", '{"type": "mlp", "hiddenDims": [32]}',
        "--lora-targets", "3", "--lora-alpha", "3.5", "--lora-rank", "2",
        "--target-epsilon", "8", "--delta", "1e-5", "--epochs", "1", "--test-fraction", "0",
    ]  # fmt: skip
    assert main(args) == 0
    lora = json.loads(termination.read_text())["lora"]
    assert (lora["rank"], lora["alpha"], lora["targets"]) == (2, 3.5, ["3"])
    assert lora["trainableParams"] == 2 * (32 + 10)


def test_trainer_imports_peft_only_on_the_lora_path() -> None:
    code = (
        "import sys, dpserve_runtime.train.__main__\n"
        "print(sorted(m for m in ('peft', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()
    assert out == "[]"


# --- utility ------------------------------------------------------------------------------------


def test_dp_lora_learns_what_the_public_base_never_saw(digits: dict[str, Dataset]) -> None:
    """Public data without digits 7-9 gives a base that cannot label them (about 0.72 on the
    private test split); DP-LoRA on the private window at ε = 3 learns them.

    Measured over 12 runs (noise unseeded): 0.884 mean, 0.013 standard deviation, 0.861
    lowest; the thresholds below leave about five standard deviations of margin.
    """
    public = digits["public"]
    public = public.subset(np.flatnonzero(public.y < 7).astype(np.int64))
    base = train_nonprivate(
        build_model(ARCH, seed=0), public, epochs=30, batch_size=64, learning_rate=1e-2, seed=0
    )
    base_accuracy = accuracy(base, digits["test"])
    assert base_accuracy < 0.75  # it has never seen three of the ten classes
    config = DPSGDConfig(
        target_epsilon=3.0, delta=1e-5, epochs=15, batch_size=64, max_grad_norm=1.0,
        learning_rate=1e-2,  # the trainer's dpsgd default
    )  # fmt: skip
    result = train_dpsgd(build_lora_model(base, LoraSpec(rank=8)), digits["train"], config)
    assert result.epsilon <= 3.0
    adapted = accuracy(merged(result.model), digits["test"])
    assert adapted >= base_accuracy + 0.10, (adapted, base_accuracy)
    assert adapted >= 0.80, adapted


# --- the verbatim guard follows the weights ---------------------------------------------------

BASE_RECORD = ("patient admitted on monday with chest pain after a long run in the park and "
               "discharged two days later with a referral to cardiology")
NEW_RECORD = ("follow up visit in march showed normal blood pressure and the patient reported "
              "no further episodes of pain during exercise or rest")


def test_a_lora_version_guards_what_its_base_was_trained_on(
    digits: dict[str, Dataset], tmp_path: Path, termination: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The base saw BASE_RECORD; its artifact carries the fingerprints of it.
    base = tmp_path / "v1"
    save_state_dict_artifact(base, build_model(ARCH, seed=0), ARCH, version="v1", labels=LABELS,
                             fingerprints="fingerprints.json")
    write_fingerprint_file([BASE_RECORD], base / "fingerprints.json", window_tokens=8)
    window = tmp_path / "window.npz"
    save_dataset(Dataset(X=digits["train"].X, y=digits["train"].y, texts=(NEW_RECORD,)), window)
    args = ["--dataset", str(window), "--lora-base", str(base), "--lora-rank", "2",
            "--target-epsilon", "3", "--delta", "1e-5", "--epochs", "1",
            "--fingerprint-window-tokens", "8"]
    assert main([*args, "--output", str(tmp_path / "v2"), "--version", "v2"]) == 0
    capsys.readouterr()
    manifest = load_manifest(tmp_path / "v2")
    assert manifest.fingerprints == "fingerprints.json"
    guard = VerbatimGuard.load(tmp_path / "v2" / "fingerprints.json")
    # v2 keeps v1's weights (plus adapters), so it is guarded against both data windows.
    assert guard.check(f"the model said: {BASE_RECORD}")
    assert guard.check(NEW_RECORD.upper())
    assert not guard.check("an unrelated sentence about the weather in spring and autumn")
    assert guard.salt == VerbatimGuard.load(base / "fingerprints.json").salt

    # Windows of another size cannot be merged: refused, naming the flag, nothing written.
    code = main([*args[:-1], "12", "--output", str(tmp_path / "v2b"), "--version", "v2"])
    assert code == 2
    assert "--fingerprint-window-tokens" in json.loads(termination.read_text())["message"]
    assert not (tmp_path / "v2b" / "manifest.json").exists()
