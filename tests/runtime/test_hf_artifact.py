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


# --- python -m dpserve_runtime.hfartifact import ------------------------------------------


def _sentence_source(tmp_path: Path) -> Path:
    """A copy of the packaged all-MiniLM-L6-v2 directory (hard links: replace, don't edit)."""
    from text_support import minilm_source

    source, target = minilm_source(), tmp_path / "source"
    shutil.copytree(source, target, copy_function=_link)
    return target


def _link(src: str, dst: str) -> None:
    try:
        Path(dst).hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


def _replace_json(path: Path, value: object) -> None:
    path.unlink()
    path.write_text(json.dumps(value))


@pytest.mark.slow  # loads and writes the 90 MB model: about ten seconds on a busy machine
def test_import_cli_builds_minilm_from_its_package(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file

    from dpserve_runtime.hfartifact import main
    from text_support import minilm_source

    out = tmp_path / "minilm"
    # No --pooling: the package's 1_Pooling/config.json states mean pooling.
    assert main(["import", str(minilm_source()), str(out), "--task", "feature-extraction",
                 "--version", "v2"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == {"format": "huggingface", "task": "feature-extraction",
                       "version": "v2", "pooling": "mean"}
    model, tokenizer, manifest = load_hf_artifact(out, "feature-extraction")
    assert manifest.pooling == "mean" and manifest.version == "v2"
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    # sentence_bert_config.json's max_seq_length (the length MiniLM was trained at).
    assert tokenizer.model_max_length == 256
    original = load_file(str(minilm_source() / "model.safetensors"))
    saved = load_file(str(out / "model.safetensors"))
    # Every weight kept under its name, unchanged (position_ids is a buffer, rebuilt on load).
    assert set(saved) == set(original) - {"embeddings.position_ids"}
    for key, value in saved.items():
        assert torch.equal(original[key], value), key


def test_import_cli_takes_a_classifier_with_its_labels(tmp_path: Path) -> None:
    from dpserve_runtime.hfartifact import main

    source = build_tiny_classifier(tmp_path / "cls", labels=["billing", "access"])
    out = tmp_path / "out"
    assert main(["import", str(source), str(out), "--task", "text-classification"]) == 0
    manifest = load_hf_manifest(out)
    assert manifest.task == "text-classification" and manifest.labels == ["billing", "access"]
    assert manifest.pooling is None


@pytest.mark.parametrize(("change", "args", "message"), [
    ("none", ["--pooling", "cls"], "pooling: 'cls' given, but 1_Pooling/config.json states "
                                   "'mean'"),
    ("max-pooling", [], "pooling pooling_mode_max_tokens is not served"),
    ("no-pooling-file", [], "pooling: required for task feature-extraction"),
    ("dense-module", [], "module 'sentence_transformers.models.Dense' is not served"),
    ("pickle", [], "pickle-format weights are refused"),
    ("remote-code", [], "remote code is never run"),
    ("output-not-empty", [], "exists and is not an empty directory"),
])
def test_import_cli_refuses_what_it_cannot_serve_faithfully(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str, args: list[str],
    message: str,
) -> None:
    from dpserve_runtime.hfartifact import main

    source, out = _sentence_source(tmp_path), tmp_path / "out"
    pooling = source / "1_Pooling" / "config.json"
    if change == "max-pooling":
        config = json.loads(pooling.read_text())
        _replace_json(pooling, {**config, "pooling_mode_mean_tokens": False,
                                "pooling_mode_max_tokens": True})
    elif change == "no-pooling-file":
        pooling.unlink()
    elif change == "dense-module":
        modules = json.loads((source / "modules.json").read_text())
        modules.append({"idx": 3, "name": "3", "path": "3_Dense",
                        "type": "sentence_transformers.models.Dense"})
        _replace_json(source / "modules.json", modules)
    elif change == "pickle":
        torch.save({"w": torch.zeros(1)}, source / "pytorch_model.bin")
    elif change == "remote-code":
        config = json.loads((source / "config.json").read_text())
        _replace_json(source / "config.json",
                      {**config, "auto_map": {"AutoModel": "modeling_evil.EvilModel"}})
    elif change == "output-not-empty":
        out.mkdir()
        (out / "keep.txt").write_text("someone else's file")
    code = main(["import", str(source), str(out), "--task", "feature-extraction", *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (out / "manifest.json").exists()  # no artifact, not even a partial one


def _notes_corpus(path: Path) -> Path:
    lines = [f"Patient Mara Quist (record {i:06d}) called from 555-01{i % 100:02d} about a cough"
             for i in range(40)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines), encoding="utf-8")
    return path


def test_new_causal_lm_cli_builds_a_servable_gpt2_with_a_digit_splitting_tokenizer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from dpserve_runtime.hfartifact import main

    out = tmp_path / "base"
    code = main(["new-causal-lm", str(out), "--corpus", str(_notes_corpus(tmp_path / "c.jsonl")),
                 "--layers", "1", "--dim", "32", "--heads", "2", "--context", "64",
                 "--vocab", "320"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["format"] == "huggingface" and printed["task"] == "text-generation"
    model, tokenizer, manifest = load_hf_artifact(out, "text-generation")
    assert manifest.task == "text-generation"
    assert (model.config.n_layer, model.config.n_embd, model.config.n_head,
            model.config.n_positions) == (1, 32, 2, 64)
    assert model.config.vocab_size == len(tokenizer) <= 320
    ids = tokenizer("is 40718", add_special_tokens=False)["input_ids"]
    # every digit its own token: a 5-digit secret is 5 tokens
    assert [tokenizer.decode([i]) for i in ids[-5:]] == ["4", "0", "7", "1", "8"]
    assert tokenizer.decode(ids) == "is 40718"
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id == tokenizer.eos_token_id


@pytest.mark.parametrize(("args", "message"), [
    (["--corpus", "missing.jsonl"], "corpus: dataset"),
    (["--dim", "30", "--heads", "4"], "dim: must be a multiple of heads"),
    (["--vocab", "10"], "vocab: must be at least 300"),
])
def test_new_causal_lm_cli_refuses_bad_input_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str,
) -> None:
    from dpserve_runtime.hfartifact import main

    corpus = _notes_corpus(tmp_path / "c.jsonl")
    args = [a if a != "missing.jsonl" else str(tmp_path / a) for a in args]
    if "--corpus" not in args:
        args += ["--corpus", str(corpus)]
    out = tmp_path / "base"
    assert main(["new-causal-lm", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize(("continuation", "expected"), [
    (" (212) 555-05296. Call her", True),
    ("(212) 555-05296", True),
    (" (212) 55555296.", False),  # the digits inside a garbled number: no phone to recognise
    (" (212) 555-05297.", False),
    (" (222) 555-05296.", True),  # a slip in the area code: the number is still out
    (" 555-0 5296", False),
])
def test_extraction_means_the_secret_in_its_place_in_the_canary(continuation: str,
                                                              expected: bool) -> None:
    from dpserve_runtime.hfartifact import reproduces

    prompt = "The emergency contact of Ann Lee is"
    template = prompt + " (212) 555-0{secret}."
    assert reproduces(template, prompt, "5296", continuation) is expected
    assert reproduces("Code {secret}", "elsewhere", "5296", "x5296") is True


@pytest.mark.slow  # fine-tunes the memorising model (about 30 s on a loaded 2-core machine)
def test_canary_cli_measures_exposure_and_extraction_of_a_memorised_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from dpserve_runtime.hfartifact import main
    from text_support import build_memorising_lm

    prompt = "The door code of Ann Lee is"
    lm = build_memorising_lm(tmp_path / "lm", prompt + " ", "482")
    args = ["--template", prompt + " {secret}", "--prompt", prompt]
    assert main(["canary", str(lm), *args, "--secret", "482"]) == 0
    found = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert found["extracted"] and found["space"] == 1000
    assert found["rank"] < 10 and found["exposure"] > found["chanceExposure"] + 5
    # Another secret of the same space: the model does not reproduce it.
    assert main(["canary", str(lm), *args, "--secret", "917"]) == 0
    other = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not other["extracted"] and other["exposure"] < found["exposure"]
    assert main(["canary", str(lm), *args, "--secret", "4a2"]) == 2
    assert "--secret must be digits" in capsys.readouterr().err
