"""PII filter throughput: dpserve's analyzer vs Presidio's default AnalyzerEngine, same findings.

Both run offline, asked for the same seven pattern entities, on two deterministic corpora:
realistic clinical / support notes (number-dense, one pattern entity per ~300 characters, no
clean-prose padding; the headline number) and the earlier ~670-character mixed snippets (a
third clean prose, which a prefilter skips). Findings (entity, start, end, score) must be
identical text by text on both, on the labelled corpus and on the kept notes
(tests/runtime/data/pii_notes.json, written by ``--write-kept-corpus``). Timing interleaves
the two engines round by round and keeps each one's best round; the ratio is of CPU time
(the process's own; both engines are single-threaded), so load from other processes on a
shared machine does not skew it. Then dpserve's CPU ms per KB on pathological 10 KB inputs
(runs of dots, digits, ``@``, separators...), the worst of which is reported.

Last line: ``speedup_vs_presidio=<x> findings_equal=<true|false> worst_case_ms_per_kb=<y>``
(speedup on the notes).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dpserve.api.outputfilter import PATTERN_ENTITIES
from dpserve_runtime.filter.pii import PiiAnalyzer
from dpserve_runtime.filter.presidio_reference import presidio_default_engine_offline

SNIPPET_CHARS = 670
PROSE = [
    "The committee reviewed the quarterly figures and agreed that the proposal needs more work.",
    "Training converged smoothly and the validation loss stayed flat over the last epochs.",
    "The patient reported mild symptoms and was advised to rest and drink plenty of water.",
    "Our team prefers small pull requests because reviews stay focused and fast.",
    "The river was calm all afternoon, and the ferry kept its usual schedule.",
    "Please summarise the findings in plain language before the next review.",
    "The model predicts the class with the highest noisy vote count among the teachers.",
    "Benign lesions usually show regular borders and a uniform colour.",
    "Nobody expected the storm, yet the harbour crews handled it calmly.",
    "A short answer is better than a long one when the question is simple.",
]
NUMERIC = [
    "In {year} the group shipped {n} releases and closed {m} tickets.",
    "Accuracy rose from 0.{a} to 0.{b} after the learning rate was halved.",
    "The meeting moved to {h}:{mm} on {year}-0{mo}-1{d}.",
    "Upgrade to version {n}.{a}.{d} before the next maintenance window.",
    "About {p}% of the {m} cases were resolved within {n} days.",
    "Batch {n} of {m} finished in {d}.{a} seconds on {p} workers.",
]


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        digit = int(ch)
        if i % 2 == 0:
            digit *= 2
            digit -= 9 if digit > 9 else 0
        total += digit
    return body + str((10 - total % 10) % 10)


def _iban(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    number = int("".join(str(int(c, 36)) for c in rearranged))
    return f"{country}{98 - number % 97:02d}{bban}"


def _entity(kind: str, rng: random.Random) -> str:
    if kind == "EMAIL_ADDRESS":
        user = rng.choice(["jane.roe", "a.kumar", "ops-team", "m.garcia", "lee"])
        domain = rng.choice(["example.com", "mail.example.org", "clinic.example.net"])
        return f"Write to {user}{rng.randrange(100)}@{domain} for details."
    if kind == "PHONE_NUMBER":
        return rng.choice(
            [
                f"Call ({rng.choice([212, 415, 617])}) 555-01{rng.randrange(10, 99)} today.",
                f"The office number is +44 20 7946 0{rng.randrange(100, 999)}.",
                f"Reach the desk on +49 30 9018{rng.randrange(10, 99)}.",
            ]
        )
    if kind == "CREDIT_CARD":
        card = _luhn_complete(rng.choice(["4", "51", "55"]), 16, rng)
        return f"It was charged to card {card[:4]} {card[4:8]} {card[8:12]} {card[12:]}."
    if kind == "US_SSN":
        return (
            f"The SSN on the form is {rng.randrange(100, 665)}-{rng.randrange(10, 99)}-"
            f"{rng.randrange(1000, 9999)}."
        )
    if kind == "IP_ADDRESS":
        return rng.choice(
            [
                f"The request came from 10.{rng.randrange(256)}.{rng.randrange(256)}."
                f"{rng.randrange(1, 255)}.",
                f"The host 2001:db8::{rng.randrange(1, 0xFFFF):x} answered.",
            ]
        )
    if kind == "IBAN_CODE":
        bban = "37040044" + "".join(str(rng.randrange(10)) for _ in range(10))
        return f"Pay the invoice to {_iban('DE', bban)} by Friday."
    if kind == "URL":
        return f"Details are at https://www.example.com/reports/{rng.randrange(1000)} for staff."
    raise ValueError(kind)


def _snippet(rng: random.Random, numeric: bool, entity: str | None) -> str:
    sentences: list[str] = []
    while sum(len(s) + 1 for s in sentences) < SNIPPET_CHARS:
        if numeric and rng.random() < 0.4:
            template = rng.choice(NUMERIC)
            sentences.append(
                template.format(
                    year=rng.randrange(1990, 2030),
                    n=rng.randrange(2, 60),
                    m=rng.randrange(60, 900),
                    a=rng.randrange(10, 99),
                    b=rng.randrange(10, 99),
                    h=rng.randrange(8, 18),
                    mm=rng.choice(["00", "15", "30", "45"]),
                    mo=rng.randrange(1, 9),
                    d=rng.randrange(0, 9),
                    p=rng.randrange(2, 99),
                )
            )
        else:
            sentences.append(rng.choice(PROSE))
    if entity is not None:
        sentences.insert(rng.randrange(len(sentences)), _entity(entity, rng))
    return " ".join(sentences)[:SNIPPET_CHARS]


def build_corpus(size: int, seed: int = 20261123) -> list[str]:
    """35% clean prose, 25% prose with numbers, 40% with one entity (numbers in half)."""
    rng = random.Random(seed)  # a benchmark corpus, not privacy noise
    corpus = []
    for i in range(size):
        slot = i % 20
        if slot < 7:
            corpus.append(_snippet(rng, numeric=False, entity=None))
        elif slot < 12:
            corpus.append(_snippet(rng, numeric=True, entity=None))
        else:
            entity = PATTERN_ENTITIES[i % len(PATTERN_ENTITIES)]
            corpus.append(_snippet(rng, numeric=slot % 2 == 0, entity=entity))
    return corpus


# Realistic notes: clinical and support-ticket sentences dense in numbers (dates, times,
# vitals, doses, ids, versions, amounts) with one pattern entity per ~300 characters and
# no clean-prose padding.
NOTE_SENTENCES = [
    "Pt seen on {date} at {time}; BP {sys}/{dia}, HR {hr}, temp {temp} C, SpO2 {spo2}%.",
    "Started metformin {dose} mg twice daily; HbA1c {a1c}% on {date}.",
    "Follow-up booked for {date} at {time} with Dr. {surname} (room {room}).",
    "Ticket #{ticket} reopened by {given} {surname}: login fails after update to v{ver}.",
    "Refund of ${amount} approved on {date}, order {order}, {items} items.",
    "Labs {date}: Na {na}, K {k}, creatinine {cr} mg/dL, eGFR {egfr}.",
    "Weight {wt} kg (was {wt2} kg on {date}); BMI {bmi}.",
    "Caller {given} asked about invoice {invoice} from {date}; balance ${amount}.",
    "Escalated to tier {tier} at {time}; SLA {sla} h, priority P{prio}.",
    "MRN {mrn}, bed {bed}, ward {ward}; allergies: none known.",
    "Device firmware {ver} build {build} crashed {n} times in {m} days.",
    "Dose titrated to {dose2} units at {time}, glucose {glu} mmol/L.",
]
NOTE_PII = {
    "EMAIL_ADDRESS": ["Reply to {user}@{domain} with the signed form.",
                      "Patient email on file: {user}@{domain}."],
    "PHONE_NUMBER": ["Call back on ({area}) 555-01{d2} after {time}.",
                     "Daughter reachable at +44 20 7946 0{d3}.",
                     "Pharmacy phone +49 30 9018{d2}, ext. {d1}."],
    "CREDIT_CARD": ["Card ending charged in full: {card}.",
                    "Customer read out card {card} on the call."],
    "US_SSN": ["SSN {ssn} verified against the intake form."],
    "IP_ADDRESS": ["Login attempts from {ip} were blocked.",
                   "The portal logged host {ip6} at {time}."],
    "IBAN_CODE": ["Reimbursement goes to {iban} by {date}."],
    "URL": ["Results posted at https://portal.example.org/r/{ticket} for review.",
            "See www.example.com/help/{ticket} for the reset steps."],
}
GIVEN = ["Maria", "James", "Aisha", "Wei", "Olga", "Tomas", "Priya", "Kwame"]
SURNAMES = ["Lopez", "Okafor", "Chen", "Novak", "Schmidt", "Haddad", "Singh", "Brown"]


def _note_fields(rng: random.Random) -> dict[str, object]:
    card = _luhn_complete(rng.choice(["4", "51", "55", "37"]), 16, rng)
    bban = "37040044" + "".join(str(rng.randrange(10)) for _ in range(10))
    return {
        "date": f"{rng.randrange(2019, 2027)}-{rng.randrange(1, 13):02d}-"
                f"{rng.randrange(1, 29):02d}",
        "time": f"{rng.randrange(7, 20)}:{rng.choice(['00', '15', '30', '45'])}",
        "sys": rng.randrange(100, 160), "dia": rng.randrange(60, 100),
        "hr": rng.randrange(50, 110), "temp": f"{rng.uniform(36, 39.5):.1f}",
        "spo2": rng.randrange(90, 100), "dose": rng.choice([250, 500, 850, 1000]),
        "a1c": f"{rng.uniform(5, 11):.1f}", "room": rng.randrange(100, 999),
        "surname": rng.choice(SURNAMES), "given": rng.choice(GIVEN),
        "ticket": rng.randrange(10000, 999999),
        "ver": f"{rng.randrange(1, 9)}.{rng.randrange(20)}.{rng.randrange(10)}",
        "amount": f"{rng.uniform(5, 900):.2f}", "order": f"A{rng.randrange(10**6, 10**7)}",
        "items": rng.randrange(1, 12), "na": rng.randrange(130, 150),
        "k": f"{rng.uniform(3, 5.5):.1f}", "cr": f"{rng.uniform(0.5, 2.5):.2f}",
        "egfr": rng.randrange(30, 120), "wt": f"{rng.uniform(45, 130):.1f}",
        "wt2": f"{rng.uniform(45, 130):.1f}", "bmi": f"{rng.uniform(18, 40):.1f}",
        "invoice": f"INV-{rng.randrange(2019, 2027)}-{rng.randrange(1000, 9999)}",
        "tier": rng.randrange(1, 4), "sla": rng.choice([4, 8, 24, 48]), "prio": rng.randrange(1, 5),
        "mrn": rng.randrange(10**7, 10**8), "bed": rng.randrange(1, 40),
        "ward": rng.choice(["4B", "7A", "ICU-2", "12"]), "build": rng.randrange(1000, 99999),
        "n": rng.randrange(2, 30), "m": rng.randrange(2, 30), "dose2": rng.randrange(4, 60),
        "glu": f"{rng.uniform(3, 20):.1f}",
        "user": rng.choice(["maria.lopez", "j.okafor", "wchen", "olga_n", "p.singh+clinic"]),
        "domain": rng.choice(["example.com", "mail.example.org", "clinic.example.net"]),
        "area": rng.choice([212, 415, 617, 312]), "d1": rng.randrange(10, 99),
        "d2": rng.randrange(10, 99), "d3": rng.randrange(100, 999),
        "card": " ".join(card[i:i + 4] for i in range(0, 16, 4)),
        "ssn": f"{rng.randrange(100, 665)}-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}",
        "ip": f"{rng.randrange(11, 223)}.{rng.randrange(256)}.{rng.randrange(256)}."
              f"{rng.randrange(1, 255)}",
        "ip6": f"2001:db8::{rng.randrange(1, 0xFFFF):x}",
        "iban": _iban("DE", bban),
    }


def build_notes_corpus(size: int, seed: int = 20261204) -> list[str]:
    """``size`` notes of ~600-900 characters: number-dense clinical and support sentences
    with one pattern entity (each of the seven in turn) per ~300 characters."""
    rng = random.Random(seed)  # a benchmark corpus, not privacy noise
    kinds = list(NOTE_PII)
    notes: list[str] = []
    for i in range(size):
        target = rng.randrange(600, 900)
        sentences: list[str] = []
        while sum(len(x) + 1 for x in sentences) < target:
            sentences.append(rng.choice(NOTE_SENTENCES).format(**_note_fields(rng)))
        length = sum(len(x) + 1 for x in sentences)
        for j in range(max(1, round(length / 300))):
            kind = kinds[(i * 3 + j) % len(kinds)]
            sentence = rng.choice(NOTE_PII[kind]).format(**_note_fields(rng))
            sentences.insert(rng.randrange(len(sentences) + 1), sentence)
        notes.append(" ".join(sentences))
    return notes


Finding = tuple[str, int, int, float]


def _best_round(run: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Best CPU time and best wall time of ``rounds`` runs (CPU time is the process's own, so
    other load on a shared machine does not count; both engines are single-threaded)."""
    best_cpu = best_wall = float("inf")
    for _ in range(rounds):
        cpu, wall = time.process_time(), time.perf_counter()
        run()
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return best_cpu, best_wall


def pathological_inputs(size: int = 10_240) -> dict[str, str]:
    """Adversarial texts of ``size`` characters for every pattern recognizer."""
    def fill(unit: str) -> str:
        return (unit * (size // len(unit) + 1))[:size]

    return {
        "dots then a TLD": "." * (size - 3) + "com",
        "host run, TLD far away": fill("x" * 256 + ".com "),
        "dots and letters": fill("a."),
        "local part without @": fill("a!")[:-7] + "a@b.com",
        "long word before @": "a" * (size - 6) + "@b.com",
        "schema then dots": "http://" + "." * (size - 7),
        "www": fill("www."), "at signs": "@" * size, "a@": fill("a@"),
        "digits": "1" * size, "digits and spaces": fill("1 "), "digits and dashes": fill("1-"),
        "digits and dots": fill("1."), "dates": fill("2024-01-02 "), "plus signs": fill("+1 "),
        "hex and colons": fill("a:"), "separators": fill("-/. ()+"),
    }


DATA = Path(__file__).resolve().parent.parent / "tests" / "runtime" / "data"
KEPT_NOTES = DATA / "pii_notes.json"  # notes kept for the equality tests (test_pii.py)
LABELLED = DATA / "pii_corpus.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=150, help="timed realistic notes")
    parser.add_argument("--snippets", type=int, default=200, help="old mixed corpus size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write-kept-corpus", action="store_true",
                        help=f"write the kept equality corpus ({KEPT_NOTES.name}) and exit")
    args = parser.parse_args(argv)

    if args.write_kept_corpus:
        kept = build_notes_corpus(200, seed=7)
        KEPT_NOTES.write_text(json.dumps(kept, indent=0) + "\n")
        print(f"wrote {len(kept)} notes to {KEPT_NOTES}")
        return 0
    notes = build_notes_corpus(args.notes)
    mixed = build_corpus(args.snippets)
    equality = ([row["text"] for row in json.loads(LABELLED.read_text())]
                + json.loads(KEPT_NOTES.read_text()) + notes + mixed)
    entities: list[str] = list(PATTERN_ENTITIES)
    with tempfile.TemporaryDirectory() as workdir:
        reference = presidio_default_engine_offline(Path(workdir))
        ours = PiiAnalyzer(entities, score_threshold=0.0, cache_size=0)

        def ref_findings(text: str) -> list[Finding]:
            results = reference.analyze(text, "en", entities=entities, score_threshold=0.0)
            return sorted((r.entity_type, r.start, r.end, round(r.score, 9)) for r in results)

        def our_findings(text: str) -> list[Finding]:
            return sorted(
                (f.entity_type, f.start, f.end, round(f.score, 9)) for f in ours.analyze(text)
            )

        mismatches = [
            i for i, text in enumerate(equality) if ref_findings(text) != our_findings(text)
        ]
        total_findings = sum(len(our_findings(text)) for text in equality)
        timings: dict[str, tuple[list[float], list[float]]] = {}
        for label, corpus in (("notes", notes), ("mixed", mixed)):
            ref = [float("inf"), float("inf")]
            ours_t = [float("inf"), float("inf")]
            for _ in range(args.rounds):  # interleaved: both see the same machine load
                for best, run in (
                    (ref, lambda c=corpus: [ref_findings(t) for t in c]),
                    (ours_t, lambda c=corpus: [our_findings(t) for t in c]),
                ):
                    cpu, wall = _best_round(run, 1)
                    best[0], best[1] = min(best[0], cpu), min(best[1], wall)
            timings[label] = (ref, ours_t)
        def ms_per_kb(text: str) -> float:
            return _best_round(lambda: ours.analyze(text), args.rounds)[0] / len(text) * 1024e3

        worst = {name: ms_per_kb(text) for name, text in pathological_inputs().items()}
        plain_text = " ".join(notes)[:10_240]
        plain = _best_round(lambda: ours.analyze(plain_text), args.rounds)[0] / 10 * 1000

    print(f"equality corpus: {len(equality)} texts ({total_findings} findings): "
          f"{LABELLED.name}, {KEPT_NOTES.name}, the timed notes and the mixed snippets")
    for label, corpus in (("notes", notes), ("mixed", mixed)):
        ref, ours_t = timings[label]
        n = len(corpus)
        chars = sum(map(len, corpus)) / n
        print(f"\n{label}: {n} texts of {chars:.0f} chars on average; best of {args.rounds} "
              "interleaved rounds")
        print(f"{'engine':<30}{'CPU ms/text':>13}{'wall ms/text':>14}{'texts/s (CPU)':>15}")
        for name, (cpu, wall) in (("presidio default (offline)", ref),
                                  ("dpserve PiiAnalyzer", ours_t)):
            print(f"{name:<30}{cpu / n * 1000:>13.3f}{wall / n * 1000:>14.3f}{n / cpu:>15.0f}")
        print(f"CPU speedup {ref[0] / ours_t[0]:.2f}, wall-clock {ref[1] / ours_t[1]:.2f}")
    print(f"\npathological 10 KB inputs, dpserve CPU ms per KB (plain notes: {plain:.2f}):")
    for name, ms in sorted(worst.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<26}{ms:>8.2f}")
    if mismatches:
        print(f"findings differ on {len(mismatches)} texts, first: {mismatches[:5]}")
    ref, ours_t = timings["notes"]
    print(
        f"speedup_vs_presidio={ref[0] / ours_t[0]:.2f} "
        f"findings_equal={'true' if not mismatches else 'false'} "
        f"worst_case_ms_per_kb={max(worst.values()):.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
