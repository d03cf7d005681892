"""PERSON / LOCATION detection quality on the labelled corpus: precision, recall, F1 per entity
with exact-span and overlap matching, through the filter's own PiiAnalyzer (the gazetteer
recognizer; plus spaCy NER where a trained model is installed).

    .venv/bin/python bench/names.py [--errors]

The corpus and how it was made: tests/runtime/data/make_names_corpus.py. The numbers are in
docs/pii.md; tests/runtime/test_names.py holds floors just below them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dpserve_runtime.filter.pii import PiiAnalyzer
from names_support import format_table, load_corpus, score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--errors", action="store_true", help="print every miss and false hit")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--corpus", type=Path, default=None,
                        help="another JSONL made by make_names_corpus.py --seed N --out PATH")
    args = parser.parse_args()
    started = time.perf_counter()
    analyzer = PiiAnalyzer(["PERSON", "LOCATION"], args.threshold, cache_size=0)
    built = time.perf_counter() - started
    rows = load_corpus(args.corpus) if args.corpus else load_corpus()

    def find(text: str) -> list[tuple[str, int, int]]:
        return [(f.entity_type, f.start, f.end) for f in analyzer.analyze(text)]

    started = time.perf_counter()
    scores = score(rows, find)
    elapsed = time.perf_counter() - started
    print(f"{len(rows)} sentences, {sum(len(r['entities']) for r in rows)} gold spans; "
          f"threshold {args.threshold}; spaCy model: {analyzer.spacy_model or 'none'}")
    print(format_table(scores))
    print(f"analyzer built in {built:.2f} s; {1000 * elapsed / len(rows):.2f} ms per sentence")
    if args.errors:
        for row in rows:
            gold = {(g["type"], g["start"], g["end"]) for g in row["entities"]}
            pred = set(find(row["text"]))
            if gold != pred:
                text = row["text"]
                print(row["id"], text)
                for e, s, t in sorted(gold - pred, key=lambda x: x[1]):
                    print(f"    missed {e}: {text[s:t]!r}")
                for e, s, t in sorted(pred - gold, key=lambda x: x[1]):
                    print(f"    extra  {e}: {text[s:t]!r}")


if __name__ == "__main__":
    main()
