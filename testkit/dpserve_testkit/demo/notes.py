"""A synthetic clinical-notes corpus for the demo's language models, with one canary.

Everything is made up from templates: fake names (random syllables), fake phone numbers and
record ids. No real person is behind any record. The canary is one more fake patient's phone
number, written into the corpus ``repeats`` times (each copy is its own record, so its own
privacy unit): enough for a model trained without a meaningful guarantee to memorise it, and
what DP-SGD's per-record clipping and noise are there to stop.

Pure Python (no torch): the control plane writes the JSONL file that ``dpserve-train`` reads.
The randomness is seeded ``random.Random``: this is test data, not a privacy mechanism.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

SYLLABLES = (
    "ka", "ri", "mo", "ta", "ve", "lu", "so", "ne", "bri", "dal", "fen", "gor", "hil", "jas",
    "kel", "mir", "nor", "pav", "quin", "rud", "sel", "tov", "ul", "wen", "yor", "zan",
)
SYMPTOMS = ("a dry cough", "chest pain", "a high fever", "a skin rash", "back pain",
            "dizziness", "shortness of breath", "a sprained ankle", "abdominal pain",
            "a migraine")
TREATMENTS = ("rest and fluids", "a course of antibiotics", "an inhaler", "physiotherapy",
              "an anti-inflammatory", "a follow-up scan", "a topical cream", "a referral")
TEMPLATES = (
    "Record {mrn}: {name}, {symptom}, phone {phone}.",
    "{name} (record {mrn}) has {symptom}; call {phone}.",
    "Note on {name}: {symptom}, given {treatment}, phone {phone}.",
)
# The canary's sentence: the prompt ends right before the secret, so the model's greedy
# continuation of the prompt is the secret if (and only if) it memorised it.
CANARY_PROMPT = "The emergency contact of {name} is"
# A phone number in a shape the PII analyzer recognises: "(212) 555-0DDD"; the secret is the
# last DIGITS digits, so the exposure space (10^DIGITS candidates) is enumerated in a second
# or two on one core.
CANARY_PREFIX = "(212) 555-0"
DIGITS = 3


@dataclass(frozen=True)
class CanarySpec:
    """The canary: ``prompt`` followed by `` (212) 555-<secret>.``"""

    name: str
    secret: str  # DIGITS digits
    repeats: int

    @property
    def prompt(self) -> str:
        return CANARY_PROMPT.format(name=self.name)

    @property
    def phone(self) -> str:
        return f"{CANARY_PREFIX}{self.secret}"

    @property
    def text(self) -> str:
        return f"{self.prompt} {self.phone}."

    @property
    def template(self) -> str:
        """The canary with ``{secret}`` in place of the secret (``train/canary.py``'s shape)."""
        return f"{self.prompt} {CANARY_PREFIX}{{secret}}."


def fake_name(rng: random.Random) -> str:
    def word(parts: int) -> str:
        return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()

    return f"{word(2)} {word(rng.choice((2, 3)))}"


def _digits(rng: random.Random, count: int) -> str:
    return "".join(str(rng.randrange(10)) for _ in range(count))


def note(rng: random.Random) -> str:
    """One synthetic note: fake name, record id and phone number from a template."""
    return rng.choice(TEMPLATES).format(
        name=fake_name(rng), mrn=_digits(rng, 6), symptom=rng.choice(SYMPTOMS),
        phone=f"{_digits(rng, 3)}-{_digits(rng, 4)}", treatment=rng.choice(TREATMENTS))


def make_canary(seed: int, repeats: int) -> CanarySpec:
    rng = random.Random(f"canary-{seed}")
    return CanarySpec(name=fake_name(rng), secret=_digits(rng, DIGITS), repeats=repeats)


def corpus(notes: int, canary: CanarySpec, seed: int) -> list[str]:
    """``notes`` synthetic notes and ``canary.repeats`` copies of the canary, shuffled."""
    if notes < 1 or canary.repeats < 1:
        raise ValueError(f"notes and repeats must be at least 1, got {notes}, "
                         f"{canary.repeats}")
    rng = random.Random(f"notes-{seed}")
    texts = [note(rng) for _ in range(notes)] + [canary.text] * canary.repeats
    rng.shuffle(texts)
    return texts


def write_jsonl(texts: list[str], path: Path) -> Path:
    """``dpserve-train``'s text-generation records: one ``{"text": ...}`` per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path
