"""The retraining Job of a huggingface PrivateModel: DP-LoRA of a language model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest

from dpserve.api.privatemodel import PrivateModel
from dpserve.resources.context import BuildContext
from dpserve.resources.job import build_job, trainer_args, training_plan

LATEST = kubernetes_validate.latest_version()
# Served with mechanism none, a model retrains only from a named base it did not train itself.
PUBLIC_BASE = "pvc://models/public-base/v1"
ModelFactory = Callable[..., PrivateModel]  # the fixtures of tests/resources/conftest.py
ContextFactory = Callable[..., BuildContext]


def text_model(make_model: ModelFactory, task: str = "text-generation",
               **retraining: Any) -> PrivateModel:
    """A DP-fine-tuned generator served with mechanism none, retrained as DP-LoRA."""
    spec = {
        "model": {"artifact": "pvc://models/writer/v1", "format": "huggingface", "task": task,
                  "training": {"noiseMultiplier": "1.0", "sampleRate": "0.01", "steps": 200}},
        "serving": {"mechanism": {"type": "none", "teachers": None, "noiseMultiplier": None}},
        "retraining": {"dataset": "pvc://datasets/writer/2027q1.jsonl", "mode": "dpsgd",
                       "teachers": None, "lora": {"rank": 4, "base": PUBLIC_BASE},
                       **retraining},
    }
    model: PrivateModel = make_model(spec=spec)
    return model


def args_of(job: dict[str, Any]) -> list[str]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    args: list[str] = container["args"]
    return args


def flag_values(args: list[str]) -> dict[str, str]:
    """Flag -> value; every flag of a retraining Job takes exactly one value."""
    assert all(a.startswith("--") for a in args[::2]), args
    return dict(zip(args[::2], args[1::2], strict=True))


def test_text_generation_renders_the_huggingface_flags(
    make_model: ModelFactory, make_ctx: ContextFactory
) -> None:
    model = text_model(make_model, maxSeqLength=64, learningRate="0.002",
                       lora={"rank": 4, "targetModules": ["c_attn", "attn.c_proj"],
                             "base": PUBLIC_BASE})
    job = build_job(model, make_ctx(model))
    args = flag_values(args_of(job))
    assert args == {
        "--dataset": "/data/2027q1.jsonl",
        "--output": "/output/v2",
        "--target-epsilon": "3",
        "--delta": "1e-6",
        "--epochs": "10",
        "--batch-size": "64",
        "--max-grad-norm": "1.0",
        "--learning-rate": "0.002",
        "--format": "huggingface",
        "--task": "text-generation",
        "--max-seq-len": "64",
        "--mode": "dpsgd",
        "--lora-base": "/base",
        "--lora-rank": "4",
        "--lora-alpha": "8",
        "--lora-targets": "c_attn,attn.c_proj",
        "--max-epsilon": "8",
        "--version": "v2",
        "--fingerprint-window-tokens": "50",
    }
    assert "--architecture" not in args and "--hidden-dims" not in args
    kubernetes_validate.validate(job, LATEST, strict=True)


def test_defaults_are_explicit_and_the_named_base_is_mounted(
    make_model: ModelFactory, make_ctx: ContextFactory
) -> None:
    model = text_model(make_model, task="text-classification")
    job = build_job(model, make_ctx(model))
    args = flag_values(args_of(job))
    assert (args["--task"], args["--max-seq-len"]) == ("text-classification", "128")
    assert "--learning-rate" not in args  # the trainer's default
    assert "--lora-targets" not in args  # the trainer's default: the attention projections
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    # The frozen base is the named one, read-only; v2 lands next to the served version.
    assert mounts["/base"]["readOnly"] is True and mounts["/base"]["subPath"] == "public-base/v1"
    assert mounts["/output"].get("readOnly") is not True
    assert training_plan(model, make_ctx(model)).artifact == "pvc://models/writer/v2"


def test_tensor_models_accept_a_learning_rate_and_keep_their_flags(
    make_model: ModelFactory, make_ctx: ContextFactory
) -> None:
    model = make_model(spec={"retraining": {"learningRate": "0.05"}})
    args = args_of(build_job(model, make_ctx(model)))
    assert args[args.index("--learning-rate") + 1] == "0.05"
    assert "--format" not in args and "--max-seq-len" not in args
    assert "--architecture" in args  # the MLP a tensor retrain trains from scratch


def test_builder_refuses_what_the_crd_refuses(
    make_model: ModelFactory, make_ctx: ContextFactory
) -> None:
    """Defence in depth: an object that bypassed admission is never rendered as a Job the
    trainer cannot run (feature-extraction has no trainer; a language model retrains as
    DP-LoRA only)."""
    model = text_model(make_model)
    embedder = model.model_copy(deep=True)
    embedder.spec.model.task = "feature-extraction"
    with pytest.raises(ValueError, match=r"spec\.model\.task"):
        build_job(embedder, make_ctx(model))
    full = model.model_copy(deep=True)
    assert full.spec.retraining is not None
    full.spec.retraining.lora = None
    with pytest.raises(ValueError, match=r"spec\.retraining\.lora"):
        trainer_args(full, training_plan(full, make_ctx(model)), "/data/x.jsonl", "/output/v2")
