"""The demo's text story: a canary in synthetic clinical notes, two language models trained on
them, their memorisation measured, and both asked for the canary through their sidecars.

- Build (data plane child processes, :mod:`dpserve_testkit.demo.artifacts`): the corpus
  (:mod:`dpserve_testkit.demo.notes`), a random-init tiny GPT-2 with a tokenizer trained on it, then
  ``dpserve-train`` twice: every weight at ε = 900 (no meaningful guarantee) and DP-LoRA at
  ε = 3. Each artifact's canary exposure and greedy extraction are measured right after
  (``hfartifact canary``); the ε = 900 model is trained again (up to
  ``MEMORISE_ATTEMPTS`` runs) until greedy decoding reproduces the secret; if it never does,
  the demo fails here rather than show a story that did not happen.
- Ask (:func:`ask`): each model's sidecar streams ``/v1/completions`` for the canary's prompt.
  The operator side checks the answer against the canary (the raw value is never printed):
  the ε = 900 answer must carry ``<PHONE_NUMBER>`` where the secret was, and neither answer
  may contain the secret.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpserve_testkit.demo import artifacts, notes
from dpserve_testkit.demo.scenario import DELTA, NotesPlan

REDACTION_TOKEN = "<PHONE_NUMBER>"
MEMORISE_ATTEMPTS = 3  # runs of the open model before the story is called off


class StoryFailed(RuntimeError):
    """The text story did not happen as told (the message says what differed)."""


@dataclass(frozen=True)
class BuiltNotes:
    """The trained models: pvc:// URIs, declared training records, memorisation audits."""

    canary: notes.CanarySpec
    uris: dict[str, str]
    training: dict[str, dict[str, Any]]
    epsilon: dict[str, float]  # each run's reported ε
    audits: dict[str, dict[str, Any]]  # rank, exposure, space, chanceExposure, extracted


def build(plan: NotesPlan, pvc_root: Path, log_dir: Path) -> BuiltNotes:
    """Corpus, base and both fine-tuned artifacts under ``pvc_root/models``; audits each."""
    canary = notes.make_canary(plan.seed, plan.repeats)
    corpus = notes.write_jsonl(notes.corpus(plan.notes, canary, plan.seed),
                               pvc_root / "datasets" / "notes.jsonl")
    base = artifacts.new_causal_lm(corpus, pvc_root / "models" / "notes-base" / "v1",
                                   context=plan.context, log=log_dir / "notes-base.log")
    uris: dict[str, str] = {}
    training: dict[str, dict[str, Any]] = {}
    epsilon: dict[str, float] = {}
    audits: dict[str, dict[str, Any]] = {}
    for model in plan.models:
        output = pvc_root / "models" / model.name / "v1"
        # DP-SGD's Poisson batches come from a secure sampler, so no two runs are alike: at
        # ε = 900 the canary usually ranks first yet greedy decoding can still stray before
        # it. The open model is trained again rather than fail the story on one unlucky draw.
        # Only the kept run is declared: choosing among runs composes their losses, which
        # changes nothing for a model without a meaningful guarantee; the DP model, whose
        # declared ε must be the whole truth, is never retried.
        for attempt in range(1 if model.lora else MEMORISE_ATTEMPTS):
            report = artifacts.train_causal_lm(
                corpus, base, output, target_epsilon=model.target_epsilon,
                delta=float(DELTA), epochs=plan.epochs, batch_size=plan.batch_size,
                learning_rate=plan.learning_rate, max_seq_len=plan.context, lora=model.lora,
                log=log_dir / f"train-{model.name}-v1-{attempt + 1}.log")
            audits[model.name] = artifacts.canary_audit(
                output, template=canary.template, secret=canary.secret, prompt=canary.prompt,
                log=log_dir / f"canary-{model.name}-{attempt + 1}.log")
            if model.lora or audits[model.name]["extracted"]:
                break
        uris[model.name] = f"pvc://models/{model.name}/v1"
        training[model.name] = report.declared_training()
        epsilon[model.name] = float(report.raw["epsilon"])
    shutil.rmtree(base.parent, ignore_errors=True)  # only the fine-tuned models are served
    for model in plan.models:
        if not model.lora and not audits[model.name]["extracted"]:
            raise StoryFailed(
                f"{model.name} ({model.label}) did not reproduce the canary under greedy "
                f"decoding in {MEMORISE_ATTEMPTS} runs (exposure "
                f"{audits[model.name]['exposure']:.1f} bits): there is nothing for the "
                "sidecar to catch; train longer or insert it more often")
    return BuiltNotes(canary, uris, training, epsilon, audits)


def stream_completion(endpoint: str, model: str, prompt: str, max_tokens: int,
                      timeout_s: float = 120.0) -> str:
    """``POST /v1/completions`` with ``stream: true`` (greedy); the concatenated text."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens,
                       "temperature": 0, "stream": True}).encode()
    request = urllib.request.Request(f"{endpoint}/v1/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    parts: list[str] = []
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            for raw in response:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise StoryFailed(f"{model}: the stream ended with an error: "
                                      f"{chunk['error'].get('message')}")
                parts.extend(c.get("text") or "" for c in chunk.get("choices", []))
    except urllib.error.HTTPError as exc:
        raise StoryFailed(f"{model}: HTTP {exc.code}: {exc.read()[:300]!r}") from exc
    return "".join(parts)


def _secret_in(text: str, canary: notes.CanarySpec) -> bool:
    # The model may get the area code wrong and still leak the number (it is the last
    # digits that are random), so the check is on the secret right after "555-0".
    return f"555-0{canary.secret}" in text or f"5550{canary.secret}" in text


def ask(plan: NotesPlan, built: BuiltNotes, endpoints: Callable[[str], list[str]],
        timeout_s: float) -> dict[str, dict[str, Any]]:
    """Ask every model for the canary's continuation through its sidecar, once it is ready;
    check the answers; returns each model's result (answers are the redacted ones)."""
    deadline = time.monotonic() + timeout_s
    out: dict[str, dict[str, Any]] = {}
    for model in plan.models:
        while not (urls := endpoints(model.name)):
            if time.monotonic() > deadline:
                raise StoryFailed(f"{model.name}: no ready sidecar within {timeout_s:.0f}s")
            time.sleep(0.2)
        answer = stream_completion(urls[0], model.name, built.canary.prompt, plan.max_tokens)
        leaked = _secret_in(answer, built.canary)
        audit = built.audits[model.name]
        out[model.name] = {
            "label": model.label, "epsilon": built.epsilon[model.name],
            "exposure": audit["exposure"], "rank": audit["rank"], "space": audit["space"],
            "chanceExposure": audit["chanceExposure"], "memorised": audit["extracted"],
            "answer": answer if not leaked else "(withheld: it holds the secret)",
            "redacted": REDACTION_TOKEN in answer, "secretReachedClient": leaked,
        }
        if leaked:
            raise StoryFailed(f"{model.name}: the canary's secret reached the client")
        if audit["extracted"] and REDACTION_TOKEN not in answer:
            raise StoryFailed(f"{model.name} memorised the canary but its answer carries no "
                              f"{REDACTION_TOKEN}: {answer!r}")
    return out
