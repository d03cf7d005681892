"""Scoring of PERSON / LOCATION findings against the labelled corpus
tests/runtime/data/names_corpus.jsonl (made by tests/runtime/data/make_names_corpus.py); shared
by tests/runtime/test_names.py and bench/names.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORPUS_PATH = Path(__file__).resolve().parent / "runtime" / "data" / "names_corpus.jsonl"
ENTITIES = ("PERSON", "LOCATION")

Span = tuple[str, int, int]  # (entity, start, end)


def load_corpus(path: Path = CORPUS_PATH) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]


@dataclass(frozen=True)
class Score:
    tp_pred: int  # predictions that count as correct
    n_pred: int
    tp_gold: int  # gold spans that were found
    n_gold: int

    @property
    def precision(self) -> float:
        return self.tp_pred / self.n_pred if self.n_pred else 1.0

    @property
    def recall(self) -> float:
        return self.tp_gold / self.n_gold if self.n_gold else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def _overlaps(a: Span, b: Span) -> bool:
    return a[0] == b[0] and a[1] < b[2] and b[1] < a[2]


def score(rows: Iterable[dict[str, Any]], find: Callable[[str], list[Span]],
          ) -> dict[tuple[str, str], Score]:
    """Per (entity, matching) with matching "exact" (same type, start and end) or "overlap"
    (same type, overlapping): precision over predictions, recall over gold spans."""
    counts: dict[tuple[str, str], list[int]] = {
        (e, m): [0, 0, 0, 0] for e in ENTITIES for m in ("exact", "overlap")}
    for row in rows:
        gold = [(g["type"], g["start"], g["end"]) for g in row["entities"]]
        pred = [p for p in find(row["text"]) if p[0] in ENTITIES]
        for entity in ENTITIES:
            g_e = [g for g in gold if g[0] == entity]
            p_e = [p for p in pred if p[0] == entity]
            exact, overlap = counts[(entity, "exact")], counts[(entity, "overlap")]
            exact[0] += sum(p in g_e for p in p_e)
            exact[2] += sum(g in p_e for g in g_e)
            overlap[0] += sum(any(_overlaps(p, g) for g in g_e) for p in p_e)
            overlap[2] += sum(any(_overlaps(g, p) for p in p_e) for g in g_e)
            for c in (exact, overlap):
                c[1] += len(p_e)
                c[3] += len(g_e)
    return {k: Score(*v) for k, v in counts.items()}


def format_table(scores: dict[tuple[str, str], Score]) -> str:
    lines = ["| entity | matching | precision | recall | F1 | predicted | gold |",
             "|---|---|---|---|---|---|---|"]
    for (entity, matching), s in scores.items():
        lines.append(f"| {entity} | {matching} | {s.precision:.3f} | {s.recall:.3f} | "
                     f"{s.f1:.3f} | {s.n_pred} | {s.n_gold} |")
    return "\n".join(lines)
