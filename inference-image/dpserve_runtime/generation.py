"""Token-by-token text generation for the model server's OpenAI routes.

One prompt, ``n`` choices decoded together as a batch (the prompt repeated, one KV cache):
greedy at temperature 0, otherwise sampling from the temperature-scaled, top-p-truncated
distribution (transformers' own logits warpers). Each step yields, per choice, the text that
step made final, so streaming and non-streaming answers are the same text by construction:

- incremental detokenisation: text is released only once the decoded bytes form whole
  characters (a byte-level BPE token may end inside a UTF-8 sequence; decoding it alone gives
  U+FFFD), by the prefix/read offsets that text-generation-inference and vLLM use;
- stop sequences: a choice ends at the first occurrence of any ``stop`` string (not
  included), and text that could still be the start of a stop string is held back.

Why this lives outside ``server/``: the sampling randomness is not privacy noise. Generators
are served with mechanism ``none`` (their DP spend is the DP fine-tuning); sampling from a
DP model's output distribution is post-processing, which preserves DP for any randomness
independent of the data. It must be reproducible under OpenAI's ``seed`` (a seeded
``torch.Generator``; without a seed, one seeded from ``os.urandom``). ``server/`` holds the
privacy code that tests scan for non-OpenDP randomness.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

FinishReason = Literal["stop", "length"]
REPLACEMENT_CHAR = "\ufffd"


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each token and when to stop (validated by the request schema)."""

    max_tokens: int
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Step:
    """What one decoding step made final: per choice, new text and, once, its finish."""

    deltas: tuple[str, ...]
    finished: tuple[FinishReason | None, ...]


class IncrementalDetokenizer:
    """Text of a growing token sequence, released in whole characters only."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, tokens: Sequence[int]) -> str:
        text: str = self.tokenizer.decode(
            list(tokens), skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return text

    def add(self, token: int) -> str:
        """The new text token ``token`` completes ("" while a character is still open)."""
        self.tokens.append(token)
        # Decode from a short prefix, not from the start: tokenizers that drop a leading
        # space (SentencePiece) or merge across tokens then agree on the shared prefix.
        prefix = self._decode(self.tokens[self.prefix_offset : self.read_offset])
        full = self._decode(self.tokens[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT_CHAR):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
            return full[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held at the end (an incomplete character decodes as U+FFFD)."""
        prefix = self._decode(self.tokens[self.prefix_offset : self.read_offset])
        full = self._decode(self.tokens[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.tokens)
        return full[len(prefix) :] if len(full) > len(prefix) else ""


@dataclass
class StopMatcher:
    """Cuts a text stream at the first stop string; holds back a possible stop prefix."""

    stops: tuple[str, ...]
    held: str = ""
    stopped: bool = False
    _longest: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._longest = max((len(s) for s in self.stops), default=0)

    def feed(self, text: str) -> str:
        """The part of ``held + text`` that can be released now."""
        if self.stopped:
            return ""
        pending = self.held + text
        cuts = [i for i in (pending.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.stopped, self.held = True, ""
            return pending[: min(cuts)]
        keep = self._partial_suffix(pending)
        self.held = pending[len(pending) - keep :] if keep else ""
        return pending[: len(pending) - keep]

    def _partial_suffix(self, text: str) -> int:
        # Longest suffix of text that is a proper prefix of some stop string.
        for size in range(min(self._longest - 1, len(text)), 0, -1):
            tail = text[-size:]
            if any(s.startswith(tail) for s in self.stops):
                return size
        return 0

    def finish(self) -> str:
        """Release what was held when the choice ends without a stop string."""
        held, self.held = self.held, ""
        return "" if self.stopped else held


def _warpers(params: SamplingParams) -> Any:
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    processors = LogitsProcessorList([TemperatureLogitsWarper(params.temperature)])
    if params.top_p < 1.0:
        processors.append(TopPLogitsWarper(params.top_p))
    return processors


def _generator(device: torch.device, seed: int | None) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little"))
    return generator


def _stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def generate(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    cancelled: threading.Event | None = None,
) -> Iterator[Step]:
    """Decode ``params.n`` choices for one prompt, one :class:`Step` per model step.

    Every choice ends with exactly one non-None ``finished`` entry: ``stop`` (end-of-text
    token or stop string) or ``length`` (``max_tokens`` reached). Setting ``cancelled`` stops
    the loop between steps (the client went away)."""
    device = next(model.parameters()).device
    n = params.n
    eos = _stop_token_ids(model, tokenizer)
    greedy = params.temperature == 0.0
    warpers = None if greedy else _warpers(params)
    generator = None if greedy else _generator(device, params.seed)
    detok = [IncrementalDetokenizer(tokenizer) for _ in range(n)]
    stops = [StopMatcher(params.stop) for _ in range(n)]
    done: list[FinishReason | None] = [None] * n
    history = torch.tensor([list(prompt_ids)] * n, dtype=torch.long, device=device)
    step_input = history
    cache: Any = None
    with torch.inference_mode():
        for produced in range(params.max_tokens):
            if cancelled is not None and cancelled.is_set():
                return
            out = model(input_ids=step_input, cache=cache, use_cache=True)
            # transformers >= 5.2x names the KV cache "cache"; older names past_key_values.
            cache = out["cache"] if "cache" in out else out["past_key_values"]
            logits = out.logits[:, -1, :].float()
            if greedy:
                chosen = logits.argmax(dim=-1)
            else:
                assert warpers is not None
                scores = warpers(history, logits)
                probs = torch.softmax(scores, dim=-1)
                chosen = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            history = torch.cat([history, chosen[:, None]], dim=1)
            step_input = chosen[:, None]
            last = produced + 1 == params.max_tokens
            deltas: list[str] = []
            finished: list[FinishReason | None] = []
            for i, token in enumerate(chosen.tolist()):
                if done[i] is not None:
                    deltas.append("")
                    finished.append(None)
                    continue
                reason: FinishReason | None = None
                if token in eos:
                    text = stops[i].feed(detok[i].flush()) + stops[i].finish()
                    reason = "stop"
                else:
                    text = stops[i].feed(detok[i].add(token))
                    if stops[i].stopped:
                        reason = "stop"
                    elif last:
                        text += stops[i].feed(detok[i].flush()) + stops[i].finish()
                        reason = "stop" if stops[i].stopped else "length"
                done[i] = reason
                deltas.append(text)
                finished.append(reason)
            yield Step(tuple(deltas), tuple(finished))
            if all(d is not None for d in done):
                return
