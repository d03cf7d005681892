"""Canary exposure (The Secret Sharer) and verbatim reproduction, against hand-computed cases."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from dpserve_runtime.train.canary import (
    Canary,
    block_rate,
    canary_exposure,
    chance_exposure,
    exposure,
    exposure_from_rank,
    greedy_continuations,
    log_perplexities,
    make_canaries,
    rank_of,
    verbatim_rate,
)

VOCAB = 128
SEVEN = ord("7")
BONUS = 2.0  # logit of "7" under the fake model; every other token has logit 0


class CharTokenizer:
    """One token per character (its code point); token 0 starts a text."""

    bos_token_id = 0
    eos_token_id = 0
    pad_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids if i != 0)


class SevenLover(nn.Module):
    """A causal "LM" that predicts "7" a bit more than anything else, whatever the context."""

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None,
                past_key_values: Any = None, use_cache: bool = False) -> SimpleNamespace:
        logits = torch.zeros((*input_ids.shape, VOCAB))
        logits[..., SEVEN] = BONUS
        return SimpleNamespace(logits=logits, past_key_values=None)


def test_exposure_is_log2_space_minus_log2_rank() -> None:
    assert exposure_from_rank(1, 8) == 3.0
    assert exposure_from_rank(2, 8) == 2.0
    assert exposure_from_rank(8, 8) == 0.0
    assert exposure_from_rank(1, 100_000) == pytest.approx(16.609640474)
    for rank, size in ((0, 8), (9, 8), (1, 0)):
        with pytest.raises(ValueError):
            exposure_from_rank(rank, size)


def test_rank_counts_strictly_more_likely_candidates() -> None:
    scores = [3.0, 1.0, 2.0, 1.0]  # log-perplexities: lower is more likely
    assert rank_of(scores, 2) == 3  # two candidates (1.0, 1.0) are more likely
    assert rank_of(scores, 1) == 1 == rank_of(scores, 3)  # a tie counts in the canary's favour
    assert rank_of(scores, 0) == 4
    # 16 candidates, the canary 4th most likely: 4 - 2 = 2 bits.
    sixteen = np.arange(16, dtype=float)[::-1]  # index 15 is the most likely
    assert exposure(sixteen, 12) == 2.0
    with pytest.raises(IndexError):
        rank_of(scores, 4)


def test_chance_exposure_is_the_mean_over_uniform_ranks() -> None:
    assert chance_exposure(2) == pytest.approx(0.5)  # exposures 1 and 0
    by_hand = np.mean([exposure_from_rank(r, 10) for r in range(1, 11)])
    assert chance_exposure(10) == pytest.approx(by_hand)
    assert chance_exposure(100_000) == pytest.approx(math.log2(math.e), abs=1e-3)


def test_canary_space_and_seeded_secrets() -> None:
    canary = Canary("pin of Ada is {secret}", "07")
    candidates = canary.candidates()
    assert len(candidates) == 100 and candidates[canary.index] == canary.text == "pin of Ada is 07"
    first = make_canaries(["Ada", "Bo"], digits=5, seed=3)
    assert first == make_canaries(["Ada", "Bo"], digits=5, seed=3)
    assert all(len(c.secret) == 5 and c.secret.isdigit() for c in first)
    assert first[0].text.startswith("the phone number of Ada is ")


def test_log_perplexity_and_exposure_by_hand() -> None:
    model, tokenizer = SevenLover(), CharTokenizer()
    normaliser = (VOCAB - 1) + math.exp(BONUS)
    bits_seven = -math.log2(math.exp(BONUS) / normaliser)
    bits_other = -math.log2(1 / normaliser)
    # The first token is context only (as in training, a record starts at position 0).
    scores = log_perplexities(model, tokenizer, ["x77", "xa7", "xab", "x7"], batch_size=3)
    assert scores == pytest.approx(
        [2 * bits_seven, bits_other + bits_seven, 2 * bits_other, bits_seven])

    # Two-digit secrets: "77" is the only candidate better than one with a single 7, and the
    # 18 candidates with one 7 are better than one without.
    template = "x{secret}"
    assert canary_exposure(model, tokenizer, Canary(template, "77")) == (1, math.log2(100))
    assert canary_exposure(model, tokenizer, Canary(template, "07")) == (2, math.log2(50))
    rank, bits = canary_exposure(model, tokenizer, Canary(template, "00"), batch_size=7)
    assert (rank, bits) == (20, pytest.approx(math.log2(5)))


def test_greedy_verbatim_and_guard_block_rates() -> None:
    model, tokenizer = SevenLover(), CharTokenizer()
    texts = ["ab777", "ab123", "a"]  # the last is not longer than the prompt: skipped
    continuations = greedy_continuations(model, tokenizer, texts, prompt_tokens=2, batch_size=1)
    assert [c.text for c in continuations] == ["777", "777"]
    assert [c.verbatim for c in continuations] == [True, False]
    assert verbatim_rate(continuations) == 0.5
    assert block_rate(continuations, lambda text: text.startswith("7")) == 1.0
    assert verbatim_rate([]) == 0.0 == block_rate([], lambda text: True)
