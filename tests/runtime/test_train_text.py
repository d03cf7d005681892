"""DP fine-tuning of Hugging Face language models (``dpserve-train --format huggingface``).

The Opacus + peft hazard (adapters that silently do not learn), record-level Poisson
sampling, the spend recomputed independently, full fine-tuning, the classifier, the
Conv1D samplers, and bad input refused with exit 2 naming the flag.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp
from opacus.data_loader import DPDataLoader
from torch import nn

from dpserve.accounting import SubsampledGaussian, epsilon_spent
from dpserve_runtime.filter.verbatim import VerbatimGuard
from dpserve_runtime.hfartifact import load_hf_manifest, save_hf_artifact
from dpserve_runtime.train.__main__ import main
from dpserve_runtime.train.dpsgd import DPSGDConfig
from dpserve_runtime.train.hf import (
    build_lora_model,
    evaluate,
    load_base,
    merged,
    record_losses,
    train_text_dpsgd,
    train_text_nonprivate,
)
from dpserve_runtime.train.lora import LoraSpec, load_adapter
from dpserve_runtime.train.text import (
    IGNORE_INDEX,
    TextRecord,
    load_text_records,
    record_loader,
    tokenize,
)
from text_support import build_tiny_causal_lm, build_tiny_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GEN = "text-generation"
CLS = "text-classification"
SYMPTOMS = ["cough", "fever", "rash", "headache", "nausea", "fatigue"]
TREATMENTS = ["rest", "fluids", "antibiotics", "an inhaler", "a cream"]
NAMES = ["Ada", "Bela", "Cyril", "Dora", "Emil", "Fenna", "Gus", "Hild", "Ivo", "Juna"]


def _notes(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)  # synthetic records: no real person behind them
    return [
        f"Patient {rng.choice(NAMES)} came in on day {rng.randint(1, 28)} with "
        f"{rng.choice(SYMPTOMS)} and was sent home with {rng.choice(TREATMENTS)}."
        for _ in range(count)
    ]


def _letters(count: int, seed: int) -> list[str]:
    """Another kind of record than the base saw: something for the adapters to learn."""
    rng = random.Random(seed)
    return [
        f"Dear {rng.choice(NAMES)}, your test from day {rng.randint(1, 28)} shows no sign of "
        f"{rng.choice(SYMPTOMS)}; keep taking {rng.choice(TREATMENTS)}."
        for _ in range(count)
    ]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lm_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GPT-2 of tests/text_support.py, pre-trained without noise on public notes
    (a random LM is a poor base: LoRA on it barely moves the loss)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = build_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "raw")
        base = load_base(root, GEN)
        data = tokenize([TextRecord(t) for t in _notes(300, seed=1)], base.tokenizer, task=GEN,
                        max_seq_len=48)
        model = base.model.requires_grad_(True)
        train_text_nonprivate(model, data, GEN, epochs=3, batch_size=16, learning_rate=3e-3,
                              seed=0)
        out = tmp_path_factory.mktemp("lm") / "base"
        save_hf_artifact(out, model.eval(), base.tokenizer, task=GEN, version="v1")
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def notes_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "notes.jsonl"
    return _write_jsonl(path, [{"text": t} for t in _notes(120, seed=2)])


@pytest.fixture
def termination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(path))
    return path


def _report(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def _reference_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """dp-accounting (an independent implementation), on Opacus' RDP orders."""
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    accountant = dp_accounting.rdp.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def _logits(model: nn.Module, data: Any) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model(input_ids=data.input_ids,
                                  attention_mask=data.attention_mask).logits
    return out


# --- the Opacus + peft hazard ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("ghost", [False, True], ids=["hooks", "ghost"])
def test_dp_lora_adapters_learn_like_the_nonprivate_path(lm_base: Path, ghost: bool) -> None:
    """At a huge ε (σ = 0.05) DP-LoRA must train like plain LoRA: the adapters change, the
    loss falls comparably, and the merged model computes what the adapters compute."""
    base = load_base(lm_base, GEN)
    data = tokenize([TextRecord(t) for t in _letters(160, seed=3)], base.tokenizer, task=GEN,
                    max_seq_len=48)
    spec = LoraSpec(rank=4)
    before = evaluate(base.model, data, GEN)["loss"]
    common = {"epochs": 4, "batch_size": 16, "learning_rate": 1e-2}

    plain, _ = train_text_nonprivate(build_lora_model(base.model, spec, GEN, seed=0), data, GEN,
                                     seed=0, **common)
    config = DPSGDConfig(target_epsilon=1e9, delta=1e-5, max_grad_norm=1.0,
                         fast_clipping=ghost, **common)  # type: ignore[arg-type]
    start = build_lora_model(base.model, spec, GEN, seed=0)
    initial = {n: p.detach().clone() for n, p in start.named_parameters()}
    result = train_text_dpsgd(start, data, GEN, config, noise_multiplier=0.05)
    private = result.model

    # Every adapter matrix moved (B starts at zero); nothing else did.
    for name, param in private.named_parameters():
        moved = not torch.equal(param.detach(), initial[name])
        assert moved == (".lora_" in name), name
        if ".lora_B." in name:
            assert float(param.abs().max()) > 1e-3, name

    drop_plain = before - evaluate(plain, data, GEN)["loss"]
    drop_private = before - evaluate(private, data, GEN)["loss"]
    assert drop_plain > 0.1
    assert drop_private > 0.6 * drop_plain, (drop_private, drop_plain)

    # The merged model (what is served) computes what base + adapters compute ...
    served = merged(private)
    assert not any(".lora_" in n for n, _ in served.named_parameters())
    assert torch.allclose(_logits(served, data), _logits(private, data), atol=1e-4)
    # ... and differs from the base only on the adapted layers.
    base_state = base.model.state_dict()
    for name, value in served.state_dict().items():
        changed = not torch.equal(value, base_state[name])
        adapted = any(k in name for k in ("c_attn.weight", "c_proj.weight", "c_fc.weight"))
        assert changed == adapted, name


# --- record-level Poisson sampling --------------------------------------------------------------


def test_poisson_batches_hold_whole_distinct_records(lm_base: Path) -> None:
    base = load_base(lm_base, GEN)
    records = [TextRecord(t) for t in _notes(100, seed=4)]
    data = tokenize(records, base.tokenizer, task=GEN, max_seq_len=48)
    assert len(data) == len(records)  # one sequence per record, never split
    loader = DPDataLoader.from_data_loader(record_loader(data, batch_size=10))
    q = 1 / 10
    sizes, counts = [], np.zeros(len(data))
    for _ in range(40):
        for input_ids, mask, labels, index in loader:
            sizes.append(len(index))
            assert len(set(index.tolist())) == len(index)  # a record joins a batch at most once
            assert torch.equal(input_ids, data.input_ids[index])  # the whole record
            assert torch.equal(mask, data.attention_mask[index])
            assert torch.equal(labels, data.labels[index])
            counts[index.numpy()] += 1
    batches = len(sizes)
    assert batches == 400  # ceil(n / B) steps per pass
    # Batch size ~ Binomial(100, 0.1): mean 10, variance 9 (bounds: > 5 standard errors).
    assert abs(np.mean(sizes) - 10) < 5 * math.sqrt(9 / batches)
    assert 6.0 < np.var(sizes) < 12.5
    # Each record joins each batch independently with probability q.
    assert np.all(np.abs(counts / batches - q) < 5 * math.sqrt(q * (1 - q) / batches))


def test_generation_targets_and_truncation(lm_base: Path) -> None:
    base = load_base(lm_base, GEN)
    long, short = "word " * 80, "a short note"
    data = tokenize([TextRecord(long), TextRecord(short)], base.tokenizer, task=GEN,
                    max_seq_len=16)
    assert data.truncated == 1 and data.input_ids.shape == (2, 16)
    short_len = int(data.attention_mask[1].sum())
    assert data.input_ids[1, short_len - 1] == base.tokenizer.eos_token_id  # learns to stop
    assert torch.all(data.labels[1, short_len:] == IGNORE_INDEX)
    # A record's loss does not depend on the other records of its batch.
    logits = torch.randn(2, 16, len(base.tokenizer))
    alone = record_losses(logits[1:], data.labels[1:], GEN)
    together = record_losses(logits, data.labels, GEN)
    assert torch.allclose(alone, together[1:])


# --- the command ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_lora_run_reports_the_spend_and_writes_a_merged_artifact(
    lm_base: Path, notes_file: Path, tmp_path: Path, termination: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = tmp_path / "v2"
    code = main([
        "--format", "huggingface", "--task", GEN, "--lora-base", str(lm_base),
        "--dataset", str(notes_file), "--output", str(output), "--lora-rank", "4",
        "--lora-targets", "c_attn", "--target-epsilon", "4", "--delta", "1e-5",
        "--max-epsilon", "5", "--epochs", "2", "--batch-size", "20", "--max-seq-len", "48",
        "--fingerprint-window-tokens", "8", "--version", "v2",
    ])  # fmt: skip
    assert code == 0
    report = _report(capsys)
    assert json.loads(termination.read_text()) == report
    # Same fields as every DP-SGD report; 108 training records (10% held out), q = 1/ceil(108/20).
    assert report["sampling"] == "poisson" and report["mode"] == "dpsgd"
    assert report["sampleRate"] == 1 / 6 and report["steps"] == 12
    assert report["delta"] == 1e-5 and 3.9 < report["epsilon"] <= 4.0
    assert report["version"] == "v2" and report["artifact"] == str(output)
    assert report["task"] == GEN and report["finetune"] == "lora"
    assert report["accuracy"] is None and report["heldOutLoss"] > 0
    sigma, q, steps = report["noiseMultiplier"], report["sampleRate"], report["steps"]

    # ε recomputed from (σ, q, steps) alone: Opacus' analysis, dp-accounting, the ledger.
    rdp = opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps,
                                 orders=RDPAccountant.DEFAULT_ALPHAS)
    eps, _ = opacus_rdp.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp,
                                          delta=1e-5)
    assert report["epsilon"] == pytest.approx(float(eps), rel=1e-12)
    assert report["epsilon"] == pytest.approx(_reference_epsilon(sigma, q, steps, 1e-5), rel=1e-3)
    ledger = epsilon_spent([(SubsampledGaussian(sigma, q, steps), 1)], 1e-5)
    assert ledger == pytest.approx(report["epsilon"], rel=1e-6)

    # The artifact: safetensors model + tokenizer + manifest with the same spend.
    manifest = load_hf_manifest(output)
    assert manifest.format == "huggingface" and manifest.task == GEN and manifest.version == "v2"
    training = manifest.training
    assert training is not None and training.lora is not None
    assert training.epsilon == report["epsilon"] and training.steps == steps
    assert training.noise_multiplier == sigma and training.sample_rate == q
    assert training.lora.targets == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    assert training.lora.base.sha256 == report["lora"]["base"]["sha256"]
    assert training.lora.base.version == "v1"
    assert manifest.fingerprints == "fingerprints.json"
    assert not list(output.glob("*.bin")) and list(output.glob("*.safetensors"))
    served = load_base(output, GEN)
    base = load_base(lm_base, GEN)
    assert served.weights_sha256 != base.weights_sha256
    # The kept adapter, reloaded onto the base and merged, gives the served weights.
    again = merged(load_adapter(base.model, output / "adapter"))
    for name, value in served.model.state_dict().items():
        assert torch.allclose(value, again.state_dict()[name], atol=1e-6), name

    # Fingerprints of the records, for the verbatim guard.
    guard = VerbatimGuard.load(output / "fingerprints.json")
    first = load_text_records(notes_file, GEN)[0].text
    assert guard.check(first) and not guard.check("nothing like any note at all " * 3)
    assert first not in (output / "fingerprints.json").read_text()


@pytest.mark.slow
def test_full_finetuning_trains_every_weight(
    lm_base: Path, notes_file: Path, tmp_path: Path, termination: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = tmp_path / "full"
    args = ["--format", "huggingface", "--task", GEN, "--base-model", str(lm_base),
            "--dataset", str(notes_file), "--target-epsilon", "8", "--delta", "1e-5",
            "--epochs", "1", "--batch-size", "30", "--max-seq-len", "48",
            "--test-fraction", "0"]
    # Ghost clipping cannot clip GPT-2's tied embedding / output head: refused up front.
    assert main([*args, "--output", str(tmp_path / "ghost"), "--fast-clipping"]) == 2
    assert "--fast-clipping" in json.loads(termination.read_text())["message"]
    capsys.readouterr()

    assert main([*args, "--output", str(output)]) == 0
    report = _report(capsys)
    assert report["finetune"] == "full" and "lora" not in report
    assert report["steps"] == 4 and report["sampleRate"] == 1 / 4
    served, base = load_base(output, GEN), load_base(lm_base, GEN)
    before = base.model.state_dict()
    changed = {n for n, v in served.model.state_dict().items() if not torch.equal(v, before[n])}
    # Every weight matrix trains, Conv1D projections and embeddings included.
    for name in ("transformer.wte.weight", "transformer.wpe.weight",
                 "transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_proj.bias",
                 "transformer.ln_f.weight"):
        assert name in changed
    assert not (output / "adapter").exists()


@pytest.mark.slow
def test_classifier_lora_with_ghost_clipping(
    tmp_path: Path, termination: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = build_tiny_classifier(tmp_path / "cls", labels=["routine", "urgent"])
    rng = random.Random(5)
    rows = []
    for i in range(100):
        urgent = i % 2 == 1
        symptom = rng.choice(["chest pain", "bleeding"] if urgent else ["a cough", "a rash"])
        rows.append({"text": f"Patient {rng.choice(NAMES)} reports {symptom}.",
                     "label": "urgent" if urgent else "routine"})
    data = _write_jsonl(tmp_path / "triage.jsonl", rows)
    output = tmp_path / "out"
    code = main(["--format", "huggingface", "--task", CLS, "--lora-base", str(root),
                 "--dataset", str(data), "--output", str(output), "--target-epsilon", "8",
                 "--delta", "1e-5", "--epochs", "3", "--batch-size", "20", "--fast-clipping",
                 "--test-fraction", "0.2", "--max-seq-len", "32"])
    assert code == 0
    report = _report(capsys)
    assert report["task"] == CLS and 0.0 <= report["accuracy"] <= 1.0
    assert report["lora"]["trainableParams"] > 0 and report["steps"] == 12
    assert load_hf_manifest(output).labels == ["routine", "urgent"]
    served, base = load_base(output, CLS), load_base(root, CLS)
    assert served.labels == ["routine", "urgent"]
    # The head trains whole (a new task's head), the backbone through its adapters.
    assert not torch.equal(served.model.classifier.weight, base.model.classifier.weight)
    embeddings = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(served.model.state_dict()[embeddings], base.model.state_dict()[embeddings])


# --- Opacus support for GPT-2's Conv1D ---------------------------------------------------------


def test_conv1d_samplers_match_autograd() -> None:
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    layer = Conv1D(nf=5, nx=4)  # in 4, out 5, weight [4, 5]
    x = torch.randn(3, 7, 4)
    target = torch.randn(3, 7, 5)

    def loss(out: torch.Tensor) -> torch.Tensor:
        return ((out - target) ** 2).sum(dim=(1, 2)).mean()

    per_sample = []
    for i in range(3):
        layer.zero_grad()
        (((layer(x[i : i + 1]) - target[i : i + 1]) ** 2).sum()).backward()
        per_sample.append((layer.weight.grad.clone(), layer.bias.grad.clone()))
    gsm = GradSampleModule(layer, loss_reduction="mean")
    loss(gsm(x)).backward()
    for i, (weight, bias) in enumerate(per_sample):
        assert torch.allclose(layer.weight.grad_sample[i], weight, atol=1e-5)
        assert torch.allclose(layer.bias.grad_sample[i], bias, atol=1e-5)
    gsm._close()

    from dpserve_runtime.train.hf import _conv1d_norm_sample

    backprops = 2 * (layer(x) - target).detach()
    norms = _conv1d_norm_sample(layer, [x], backprops)
    for i, (weight, bias) in enumerate(per_sample):
        assert float(norms[layer.weight][i]) == pytest.approx(float(weight.norm()), rel=1e-4)
        assert float(norms[layer.bias][i]) == pytest.approx(float(bias.norm()), rel=1e-4)


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "rows", "message"),
    [
        (["--lora-base", "{base}"], None, "--task: required"),
        (["--task", GEN], None, "--lora-base / --base-model: give exactly one"),
        (["--task", GEN, "--lora-base", "{base}", "--base-model", "{base}"], None,
         "give exactly one"),
        (["--task", GEN, "--lora-base", "{base}", "--architecture", "{}"], None,
         "--architecture: not used"),
        (["--task", GEN, "--lora-base", "{base}", "--mode", "pate"], None, "--mode"),
        (["--task", GEN, "--base-model", "{base}", "--lora-rank", "4"], None,
         "--lora-rank: only valid with --lora-base"),
        (["--task", GEN, "--lora-base", "{base}", "--lora-targets", "q_proj"], None,
         "--lora-targets: 'q_proj' matches no adaptable layer"),
        (["--task", GEN, "--lora-base", "{base}", "--max-seq-len", "100000"], None,
         "--max-seq-len: 100000 exceeds"),
        (["--task", GEN, "--lora-base", "{empty}"], None, "--lora-base:"),
        (["--task", GEN, "--lora-base", "{base}"], [{"text": "ok", "uid": 3}],
         "line 1: unknown field(s) 'uid'"),
        (["--task", GEN, "--lora-base", "{base}"], [{"text": "ok", "id": 3}],
         "line 1: field 'id' must be a string"),
        (["--task", GEN, "--lora-base", "{base}"], [{"text": "ok"}, "not json"],
         "line 2: not a JSON object"),
        (["--task", GEN, "--lora-base", "{base}"], [{"text": ""}], "field 'text'"),
        (["--task", CLS, "--lora-base", "{base}"], None,
         "--lora-base: task: the artifact was saved for 'text-generation'"),
        (["--task", GEN, "--lora-base", "{base}", "--labels", '["a"]'], None, "--labels"),
    ],
)
def test_bad_input_exits_2_naming_the_flag_or_field(
    lm_base: Path, tmp_path: Path, termination: Path, capsys: pytest.CaptureFixture[str],
    extra: list[str], rows: list[Any] | None, message: str,
) -> None:
    (tmp_path / "empty").mkdir()
    data = tmp_path / "data.jsonl"
    lines = rows if rows is not None else [{"text": t} for t in _notes(10, seed=6)]
    data.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in lines))
    args = [a.replace("{base}", str(lm_base)).replace("{empty}", str(tmp_path / "empty"))
            for a in extra]
    code = main(["--format", "huggingface", "--dataset", str(data), "--output",
                 str(tmp_path / "out"), "--target-epsilon", "3", "--delta", "1e-5", *args])
    assert code == 2
    assert message in json.loads(termination.read_text())["message"]
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_text_flags_are_refused_for_tensor_models(
    tmp_path: Path, termination: Path
) -> None:
    code = main(["--dataset", "d.npz", "--output", str(tmp_path / "o"), "--architecture",
                 '{"type": "mlp"}', "--target-epsilon", "3", "--delta", "1e-5",
                 "--task", GEN])
    assert code == 2
    assert "--task: only valid with --format huggingface" in json.loads(
        termination.read_text())["message"]


def test_label_outside_the_base_classes_is_refused(
    tmp_path: Path, termination: Path
) -> None:
    root = build_tiny_classifier(tmp_path / "cls", labels=["a", "b"])
    data = _write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "label": "a"},
                                               {"text": "y", "label": "c"}])
    code = main(["--format", "huggingface", "--task", CLS, "--lora-base", str(root),
                 "--dataset", str(data), "--output", str(tmp_path / "o"),
                 "--target-epsilon", "3", "--delta", "1e-5"])
    assert code == 2
    assert "record 2: field 'label' is 'c'" in json.loads(termination.read_text())["message"]
    _write_jsonl(data, [{"text": "x", "label": ["a"]}])
    code = main(["--format", "huggingface", "--task", CLS, "--lora-base", str(root),
                 "--dataset", str(data), "--output", str(tmp_path / "o"),
                 "--target-epsilon", "3", "--delta", "1e-5"])
    assert code == 2
    assert "line 1: field 'label' must be a string or an integer" in json.loads(
        termination.read_text())["message"]


def test_target_above_budget_is_refused_before_loading(
    tmp_path: Path, termination: Path
) -> None:
    code = main(["--format", "huggingface", "--task", GEN, "--lora-base", str(tmp_path / "x"),
                 "--dataset", str(tmp_path / "d.jsonl"), "--output", str(tmp_path / "o"),
                 "--target-epsilon", "3", "--delta", "1e-5", "--max-epsilon", "2"])
    assert code == 3
    assert json.loads(termination.read_text())["reason"] == "BudgetExceeded"


@pytest.mark.slow
@pytest.mark.parametrize("ghost", [False, True], ids=["hooks", "ghost"])
def test_empty_poisson_batches_are_noise_steps(lm_base: Path, ghost: bool) -> None:
    """4 records, q = 1/4: P(a batch is empty) = 0.32, so 40 steps meet several (all 40
    non-empty has probability 2.5e-7); each is accounted and the run completes."""
    base = load_base(lm_base, GEN)
    data = tokenize([TextRecord(t) for t in _notes(4, seed=7)], base.tokenizer, task=GEN,
                    max_seq_len=32)
    model = build_lora_model(base.model, LoraSpec(rank=2), GEN, seed=0)
    config = DPSGDConfig(target_epsilon=1e9, delta=1e-5, epochs=10, batch_size=1,
                         max_grad_norm=1.0, fast_clipping=ghost)
    result = train_text_dpsgd(model, data, GEN, config, noise_multiplier=1.0)
    assert result.steps == 40 and result.sample_rate == 0.25


@pytest.mark.slow
def test_a_new_version_guards_what_its_base_was_trained_on(
    lm_base: Path, notes_file: Path, tmp_path: Path, termination: Path
) -> None:
    """v2 (LoRA on the base, trained on notes) is the base of v3 (full fine-tuning on
    letters): v3 can still reproduce the notes, so its fingerprints keep v2's windows."""
    common = ["--format", "huggingface", "--task", GEN, "--target-epsilon", "8",
              "--delta", "1e-5", "--epochs", "1", "--batch-size", "40", "--max-seq-len", "48",
              "--test-fraction", "0"]
    v2, v3 = tmp_path / "v2", tmp_path / "v3"
    assert main([*common, "--lora-base", str(lm_base), "--dataset", str(notes_file),
                 "--output", str(v2), "--fingerprint-window-tokens", "8"]) == 0
    letters = _write_jsonl(tmp_path / "letters.jsonl", [{"text": t} for t in _letters(40, 8)])
    # Another window size cannot be merged from hashes: refused, not dropped.
    assert main([*common, "--base-model", str(v2), "--dataset", str(letters),
                 "--output", str(tmp_path / "bad"), "--fingerprint-window-tokens", "9"]) == 2
    assert "--fingerprint-window-tokens" in json.loads(termination.read_text())["message"]
    assert main([*common, "--base-model", str(v2), "--dataset", str(letters),
                 "--output", str(v3), "--fingerprint-window-tokens", "8"]) == 0
    old, new = (VerbatimGuard.load(d / "fingerprints.json") for d in (v2, v3))
    assert new.salt == old.salt and set(old.hashes.tolist()) <= set(new.hashes.tolist())
    assert new.check(load_text_records(notes_file, GEN)[5].text)
    assert new.check(load_text_records(letters, GEN)[5].text)
    assert not old.check(load_text_records(letters, GEN)[5].text)
