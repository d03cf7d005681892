"""huggingface artifacts: save/load per task, strictly offline, safetensors only, no remote
code, and the manifest's own rules."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dpserve_runtime.artifact import ArtifactError
from dpserve_runtime.hfartifact import (
    load_hf_artifact,
    load_hf_manifest,
    read_format,
    save_hf_artifact,
    validate_hf_artifact,
)
from text_support import build_tiny_causal_lm, build_tiny_classifier, minilm_artifact


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, one_torch_thread: None) -> Iterator[None]:
    # Any hub access would fail at once instead of downloading.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    yield


def test_causal_lm_round_trip(tmp_path: Path) -> None:
    root = build_tiny_causal_lm(tmp_path / "lm")
    assert read_format(root) == "huggingface"
    names = {p.name for p in root.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "manifest.json"} <= names
    model, tokenizer, manifest = load_hf_artifact(root, "text-generation")
    assert manifest.task == "text-generation" and manifest.pooling is None
    assert type(model).__name__ == "GPT2LMHeadModel" and not model.training
    ids = tokenizer("The patient was stable.")["input_ids"]
    assert tokenizer.decode(ids) == "The patient was stable."


def test_saved_weights_equal_the_model(tmp_path: Path) -> None:
    root = build_tiny_causal_lm(tmp_path / "lm")
    model, tokenizer, _ = load_hf_artifact(root, "text-generation")
    copy = tmp_path / "copy"
    save_hf_artifact(copy, model, tokenizer, task="text-generation", version="v3",
                     training={"noiseMultiplier": 1.1, "sampleRate": 0.01, "steps": 10,
                               "epsilon": 2.0, "delta": 1e-5})
    again, _, manifest = load_hf_artifact(copy, "text-generation")
    assert manifest.version == "v3" and manifest.training is not None
    assert manifest.training.epsilon == 2.0
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


def test_classifier_labels_come_from_id2label(tmp_path: Path) -> None:
    root = build_tiny_classifier(tmp_path / "cls", labels=["billing", "clinical", "access"])
    model, _, manifest = load_hf_artifact(root, "text-classification")
    assert manifest.task == "text-classification"
    assert [model.config.id2label[i] for i in range(3)] == ["billing", "clinical", "access"]


def test_minilm_is_the_packaged_model_with_mean_pooling(tmp_path: Path) -> None:
    root = minilm_artifact(tmp_path / "minilm")
    model, _, manifest = load_hf_artifact(root, "feature-extraction")
    assert manifest.pooling == "mean"
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6


def test_the_manifest_task_must_match(tmp_path: Path) -> None:
    root = build_tiny_causal_lm(tmp_path / "lm")
    with pytest.raises(ArtifactError, match="task: the artifact was saved for 'text-generation'"):
        load_hf_artifact(root, "feature-extraction")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "training_args.bin", "weights.pt",
                                  "sub/model.ckpt"])
def test_pickled_weights_are_refused(tmp_path: Path, name: str) -> None:
    root = build_tiny_causal_lm(tmp_path / "lm")
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.zeros(1)}, root / name)
    with pytest.raises(ArtifactError, match="pickle-format weights are refused"):
        load_hf_artifact(root, "text-generation")


def test_remote_code_is_refused(tmp_path: Path) -> None:
    root = build_tiny_causal_lm(tmp_path / "lm")
    config = json.loads((root / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (root / "config.json").unlink()  # the copy's files are hard links to the session cache
    (root / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="remote code is never run"):
        validate_hf_artifact(root)


def test_weights_must_be_safetensors(tmp_path: Path) -> None:
    root = build_tiny_causal_lm(tmp_path / "lm")
    (root / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"no \*\.safetensors"):
        load_hf_artifact(root, "text-generation")


def test_links_out_of_the_artifact_are_refused(tmp_path: Path) -> None:
    root = build_tiny_causal_lm(tmp_path / "lm")
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    (root / "extra.json").symlink_to(outside)
    with pytest.raises(ArtifactError, match="resolves outside"):
        validate_hf_artifact(root)


def test_pooling_rules(tmp_path: Path) -> None:
    root = build_tiny_causal_lm(tmp_path / "lm")
    model, tokenizer, _ = load_hf_artifact(root, "text-generation")
    with pytest.raises(ArtifactError, match="pooling: required for task feature-extraction"):
        save_hf_artifact(tmp_path / "a", model, tokenizer, task="feature-extraction")
    with pytest.raises(ArtifactError, match="pooling: only valid for task feature-extraction"):
        save_hf_artifact(tmp_path / "b", model, tokenizer, task="text-generation",
                         pooling="mean")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_manifest_labels_must_match_id2label(tmp_path: Path) -> None:
    root = build_tiny_classifier(tmp_path / "cls", labels=["no", "yes"])
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["labels"] = ["yes", "no"]
    (root / "manifest.json").unlink()
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="labels: the manifest lists"):
        load_hf_artifact(root, "text-classification")


def test_unknown_manifest_fields_are_refused(tmp_path: Path) -> None:
    root = build_tiny_causal_lm(tmp_path / "lm")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["trustRemoteCode"] = True
    (root / "manifest.json").unlink()
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="trustRemoteCode"):
        load_hf_manifest(root)


def test_a_copied_artifact_without_manifest_is_incomplete(tmp_path: Path) -> None:
    root = build_tiny_causal_lm(tmp_path / "lm")
    target = tmp_path / "partial"
    shutil.copytree(root, target)
    (target / "manifest.json").unlink()
    assert read_format(target) is None
    with pytest.raises(ArtifactError, match=r"no manifest\.json"):
        load_hf_artifact(target, "text-generation")
