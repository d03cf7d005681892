"""PII analyzer: detection quality on a labelled corpus, identical findings to Presidio's
default engine, soundness of every shortcut, redaction, and no network access."""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
import tldextract
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.predefined_recognizers import PhoneRecognizer

from dpserve_runtime.filter import phone, pii
from dpserve_runtime.filter.phone import (
    FastPhoneRecognizer,
    min_candidate_length,
    region_screen,
)
from dpserve_runtime.filter.pii import PATTERN_ENTITIES, REQUIRED, PiiAnalyzer
from dpserve_runtime.filter.presidio_reference import presidio_default_engine_offline

CORPUS = json.loads((Path(__file__).parent / "data" / "pii_corpus.json").read_text())
ENTITIES = list(PATTERN_ENTITIES)
# Presidio's phone recognizer scores 0.4 and only context words (which need a trained spaCy
# model's lemmas) lift it; PiiAnalyzer caps the general threshold there, made explicit here.
THRESHOLDS = {"PHONE_NUMBER": 0.4}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> AnalyzerEngine:
    return presidio_default_engine_offline(tmp_path_factory.mktemp("spacy"))


@pytest.fixture(scope="module")
def analyzer() -> PiiAnalyzer:
    return PiiAnalyzer(ENTITIES, 0.5, THRESHOLDS, cache_size=0)


def _key(entity: str, start: int, end: int, score: float) -> tuple[str, int, int, float]:
    return (entity, start, end, round(score, 9))


def _reference_findings(engine: AnalyzerEngine, text: str, threshold: float,
                        entities: list[str] | None = None) -> list[tuple[str, int, int, float]]:
    results = engine.analyze(text, "en", entities=entities or ENTITIES, score_threshold=threshold)
    return sorted(_key(r.entity_type, r.start, r.end, r.score) for r in results)


def _our_findings(analyzer: PiiAnalyzer, text: str) -> list[tuple[str, int, int, float]]:
    return sorted(_key(f.entity_type, f.start, f.end, f.score) for f in analyzer.analyze(text))


def test_corpus_shape() -> None:
    assert len(CORPUS) >= 60
    positives = [row for row in CORPUS if row["entities"]]
    assert 30 <= len(positives) < len(CORPUS)
    assert {e["type"] for row in CORPUS for e in row["entities"]} == set(PATTERN_ENTITIES)


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_findings_equal_presidio_default_engine(reference: AnalyzerEngine,
                                                threshold: float) -> None:
    # Presidio's plain threshold semantics: no cap on the phone threshold.
    ours = PiiAnalyzer(ENTITIES, threshold, {"PHONE_NUMBER": threshold}, cache_size=0)
    for row in CORPUS:
        assert _our_findings(ours, row["text"]) == _reference_findings(
            reference, row["text"], threshold), row["id"]


# Kept equality corpus: 200 number-dense clinical and support notes with one pattern entity
# per ~300 characters (bench/pii_filter.py --write-kept-corpus writes it).
NOTES = json.loads((Path(__file__).parent / "data" / "pii_notes.json").read_text())


@pytest.mark.slow  # about 7 s: Presidio's engine over 200 notes
def test_findings_equal_presidio_on_realistic_notes(reference: AnalyzerEngine) -> None:
    assert len(NOTES) == 200
    ours = PiiAnalyzer(ENTITIES, 0.0, {"PHONE_NUMBER": 0.0}, cache_size=0)
    found = 0
    for index, text in enumerate(NOTES):
        expected = _reference_findings(reference, text, 0.0)
        assert _our_findings(ours, text) == expected, index
        found += len(expected)
    assert found >= 600  # the notes do carry entities: a vacuous comparison fails here


def test_per_entity_thresholds_match_presidio(reference: AnalyzerEngine) -> None:
    ours = PiiAnalyzer(ENTITIES, 0.5, THRESHOLDS, cache_size=0)
    for row in CORPUS:
        expected = [f for f in _reference_findings(reference, row["text"], 0.0)
                    if f[3] >= THRESHOLDS.get(f[0], 0.5)]
        assert _our_findings(ours, row["text"]) == expected, row["id"]


def test_precision_and_recall_on_labelled_corpus(analyzer: PiiAnalyzer) -> None:
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for row in CORPUS:
        text = row["text"]
        gold = []
        for entity in row["entities"]:
            start = text.index(entity["value"])
            gold.append((entity["type"], start, start + len(entity["value"])))
        findings = analyzer.analyze(text)
        for f in findings:
            overlapping = [g for g in gold if g[1] < f.end and f.start < g[2]]
            if any(g[0] == f.entity_type for g in overlapping):
                tp[f.entity_type] += 1
            elif any(g[1] <= f.start and f.end <= g[2] for g in overlapping):
                # Nested in another entity (a URL inside an e-mail): covered by its redaction.
                continue
            else:
                fp[f.entity_type] += 1
        for g in gold:
            if not any(f.entity_type == g[0] and f.start < g[2] and g[1] < f.end
                       for f in findings):
                fn[g[0]] += 1
    for entity in PATTERN_ENTITIES:
        precision = tp[entity] / max(1, tp[entity] + fp[entity])
        recall = tp[entity] / max(1, tp[entity] + fn[entity])
        assert recall >= 0.9, (entity, recall)
        # URL has one known Presidio false positive here ("report.docx": .do is a TLD).
        assert precision >= (0.75 if entity == "URL" else 0.9), (entity, precision)
    total_tp, total_fp, total_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    assert total_tp / (total_tp + total_fp) >= 0.95
    assert total_tp / (total_tp + total_fn) >= 0.95


# --- soundness of the shortcuts ---------------------------------------------------------------

_PII_CHARS = "abcdefxyzABCDEF0123456789 .:@-+()/#_,;'\"\n٣５"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=_PII_CHARS, max_size=60))
def test_prefilters_never_skip_a_match(reference: AnalyzerEngine, text: str) -> None:
    """Where a prefilter rules an entity out, Presidio's recognizer finds nothing either."""
    skipped = [e for e in ENTITIES if REQUIRED[e].search(text) is None]
    if skipped:
        assert _reference_findings(reference, text, 0.0, skipped) == []


# Digit groups and what joins them: cards (4-4-4-4, 4-6-5), SSNs (3-2-4, 5-4, 3-6, 9),
# IBANs (two letters, two digits, groups of four), IPv4 and IPv6 addresses, near misses.
_GROUPED = st.lists(
    st.one_of(
        st.text(alphabet="0123456789", min_size=1, max_size=9),
        st.sampled_from([" ", "-", ".", ":", "::", "/", "\n", "4111", "5500", "3782", "6011",
                         "078", "05", "1120", "DE", "GB", "de", "89", "3704", "0044", "0532",
                         "0130", "00", "a", "f", "e:", "ffff:", "fe80", "192.168.", "10.0.0.1",
                         "x", "٣", "５"]),
    ),
    max_size=16,
).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_GROUPED)
def test_digit_group_prefilters_never_skip_a_match(reference: AnalyzerEngine, text: str) -> None:
    """The card, SSN, IBAN and IP rules ask for more than a digit: where one rules its entity
    out, Presidio's recognizer finds nothing of it, even below every threshold."""
    grouped = ["CREDIT_CARD", "US_SSN", "IBAN_CODE", "IP_ADDRESS"]
    skipped = [e for e in grouped if REQUIRED[e].search(text) is None]
    if skipped:
        assert _reference_findings(reference, text, 0.0, skipped) == []


def test_digit_group_prefilters_let_each_shape_through(reference: AnalyzerEngine) -> None:
    """Every shape each recognizer's patterns accept passes its rule (a rule that let
    nothing through would pass the test above)."""
    shapes = {
        "CREDIT_CARD": ["4111 1111 1111 1111", "4111-1111-1111-1111", "378282246310005",
                        "6011 0009 9013 9424"],
        "US_SSN": ["536-22-8726", "536 22 8726", "536.22.8726", "536228726", "53622-8726",
                   "536-228726"],
        "IBAN_CODE": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432",
                      "de89-3704-0044-0532-0130-00"],
        "IP_ADDRESS": ["10.0.0.1", "::1", "::", "fe80::1", "2001:db8:0:0:0:0:0:1",
                       "::ffff:10.0.0.1", "1:2:3:4:5:6:10.0.0.1"],
    }
    for entity, texts in shapes.items():
        for text in texts:
            found = _reference_findings(reference, f"see {text} here", 0.0, [entity])
            assert found, (entity, text)  # a shape Presidio finds...
            assert REQUIRED[entity].search(text), (entity, text)  # ...that the rule admits


_DIGITS_ONLY_FREE = "abcxyz .:@-+()/#ＡＢ"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=_DIGITS_ONLY_FREE, max_size=80))
def test_no_digit_text_has_no_digit_entities(reference: AnalyzerEngine, text: str) -> None:
    digit_entities = ["PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE"]
    assert _reference_findings(reference, text, 0.0, digit_entities) == []


_NUMBERISH = st.lists(
    st.one_of(
        st.text(alphabet="0123456789", min_size=1, max_size=12),
        st.sampled_from([" ", "-", ".", "(", ")", "+", "/", " ext ", " x", ":", "#", "a",
                         "+1 ", "+44 ", "+49 ", "+972 ", "+91 ", "+55 ", "00", "011 ", "%",
                         "$", "Tel ", "\n", "٣", "５"]),
    ),
    max_size=14,
).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_NUMBERISH)
def test_fast_phone_recognizer_equals_presidio(text: str) -> None:
    slow = PhoneRecognizer().analyze(text, ["PHONE_NUMBER"])
    fast = FastPhoneRecognizer().analyze(text, ["PHONE_NUMBER"])
    assert sorted((r.start, r.end, r.score) for r in fast) == sorted(
        (r.start, r.end, r.score) for r in slow)


def test_phone_length_bound_holds_for_every_example_number() -> None:
    """Every example number phonenumbers ships, in every format, found by the matcher of a
    supported region, is at least that region's bound long."""
    formats = [phonenumbers.PhoneNumberFormat.E164, phonenumbers.PhoneNumberFormat.INTERNATIONAL,
               phonenumbers.PhoneNumberFormat.NATIONAL]
    checked = 0
    for region in PhoneRecognizer.DEFAULT_SUPPORTED_REGIONS:
        bound = min_candidate_length(region)
        assert bound >= 1
        for other in sorted(phonenumbers.SUPPORTED_REGIONS):
            for number_type in range(11):
                example = phonenumbers.example_number_for_type(other, number_type)
                if example is None:
                    continue
                for fmt in formats:
                    text = phonenumbers.format_number(example, fmt)
                    for match in phonenumbers.PhoneNumberMatcher(f"call {text} now", region):
                        assert len(match.raw_string) >= bound, (region, other, text)
                        checked += 1
    assert checked > 1000


# Plain candidates the screen decides on (digits and separators only): dates, times, ids,
# amounts, national numbers with and without prefixes, country codes without a plus.
_PLAIN_CANDIDATE = st.lists(
    st.one_of(
        st.text(alphabet="0123456789", min_size=1, max_size=12),
        st.sampled_from([" ", "-", ".", "(", ")", "/", "0", "1", "00", "011", "49", "972",
                         "91", "55", "90", "015", "2024-05-14", "555-01"]),
    ),
    min_size=1, max_size=10,
).map("".join)


def _parses_and_verifies(candidate: str, region: str) -> bool:
    """The library's own parse and leniency VALID verification of one candidate (as the
    matcher makes it, at the start of a text that is the candidate)."""
    matcher = phonenumbers.PhoneNumberMatcher(candidate, region)
    return phonenumbers.PhoneNumberMatcher._parse_and_verify(matcher, candidate, 0) is not None


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_PLAIN_CANDIDATE | _NUMBERISH)
def test_region_screen_rejects_only_what_phonenumbers_rejects(candidate: str) -> None:
    for region in PhoneRecognizer.DEFAULT_SUPPORTED_REGIONS:
        if not region_screen(region).may_match(candidate):
            assert not _parses_and_verifies(candidate, region), (region, candidate)


# Around a candidate: what the matcher's checks of the neighbouring characters and brackets
# look at (Latin letters, currency and percent signs, "page" references, brackets).
_CONTEXT = st.sampled_from(["", " ", "a", "Tel ", "$", "€", "%", "(", ")", "[", "p. ", "pp. ",
                            "page ", "\n", "é", "ж", "x", "#", ",", ":", "٣"])


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_CONTEXT, _PLAIN_CANDIDATE | _NUMBERISH, _CONTEXT)
def test_own_code_match_is_what_phonenumbers_returns(before: str, middle: str,
                                                     after: str) -> None:
    """Where the screen decides a number itself (OWN_CODE), the match made without a parse
    equals the library's parse and verification of that candidate in that text."""
    text = before + middle + after
    for outer in phone._Recorder(text, 1).walk():
        for attempt in outer.attempts:
            for region in PhoneRecognizer.DEFAULT_SUPPORTED_REGIONS:
                screen = region_screen(region)
                if (attempt.digits is None or
                        screen.verdict(attempt.text, attempt.digits) != phone.OWN_CODE):
                    continue
                matcher = phonenumbers.PhoneNumberMatcher(text, region)
                expected = phonenumbers.PhoneNumberMatcher._parse_and_verify(
                    matcher, attempt.text, attempt.offset)
                ours = phone._own_code_match(matcher, attempt.text, attempt.offset,
                                             screen.own_code_number(attempt.digits))
                assert ours == expected, (region, text, attempt)


def _library_valid(country_code: int, nsn: str) -> bool:
    number = phonenumbers.PhoneNumber(country_code=country_code, national_number=int(nsn))
    phonenumbers.phonenumberutil._set_italian_leading_zeros_for_phone_number(nsn, number)
    return bool(phonenumbers.is_valid_number(number))


# The default regions' codes, shared codes (1: 25 regions, 7, 44, 262, 590: leading digits
# or types pick the region), non-geographic ones (800, 882, 979) and others.
_CODES = st.sampled_from([1, 7, 33, 39, 44, 49, 55, 61, 81, 86, 91, 262, 358, 590, 800, 882,
                          972, 979])


@settings(max_examples=3000, deadline=None)
@given(_CODES, st.text(alphabet="0123456789", min_size=1, max_size=17))
def test_nsn_is_valid_is_phonenumbers_is_valid_number(country_code: int, nsn: str) -> None:
    assert phone.nsn_is_valid(country_code, nsn) == _library_valid(country_code, nsn)


def test_nsn_is_valid_on_every_example_number_and_its_near_misses() -> None:
    checked = valid = 0
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for number_type in range(11):
            example = phonenumbers.example_number_for_type(region, number_type)
            if example is None:
                continue
            nsn = phonenumbers.national_significant_number(example)
            last = str((int(nsn[-1]) + 1) % 10)
            for variant in {nsn, nsn[:-1], nsn + "1", nsn[:-1] + last, "0" + nsn}:
                if variant:
                    expected = _library_valid(example.country_code, variant)
                    assert phone.nsn_is_valid(example.country_code, variant) == expected, (
                        region, variant)
                    checked += 1
                    valid += expected
    assert checked > 5000 and valid > 2000


def test_own_code_verdicts_occur() -> None:
    """National numbers written without a prefix are decided by the screen (the test above
    is not vacuous), in the regions whose numbers they are."""
    us, de = region_screen("US"), region_screen("DE")
    assert us.verdict("(212) 555-0143", "2125550143") == phone.OWN_CODE
    assert region_screen("CA").verdict("(212) 555-0143", "2125550143") == phone.OWN_CODE
    assert us.verdict("2024-05-14", "20240514") == phone.REJECT
    assert de.verdict("030 1234567", "0301234567") == phone.PARSE  # national prefix 0
    assert us.verdict("+1 212 555 0143", None) == phone.PARSE  # not plain
    matcher = phonenumbers.PhoneNumberMatcher("call (212) 555-0143 now", "US")
    assert phone._own_code_match(matcher, "(212) 555-0143", 5,
                                 us.own_code_number("2125550143")) == (
        phonenumbers.PhoneNumberMatcher._parse_and_verify(matcher, "(212) 555-0143", 5))
    glued = phonenumbers.PhoneNumberMatcher("tel2125550143", "US")  # a letter before it
    assert phone._own_code_match(glued, "2125550143", 3,
                                 us.own_code_number("2125550143")) is None
    assert phonenumbers.PhoneNumberMatcher._parse_and_verify(glued, "2125550143", 3) is None


def test_region_screen_passes_every_example_number() -> None:
    """Every example number phonenumbers ships, in every format, that the library finds
    valid for a default region, passes that region's screen; and the screen rejects most
    of a realistic note's candidates (dates, times, ids), or it would be no use."""
    formats = [phonenumbers.PhoneNumberFormat.E164, phonenumbers.PhoneNumberFormat.INTERNATIONAL,
               phonenumbers.PhoneNumberFormat.NATIONAL]
    checked = 0
    for region in PhoneRecognizer.DEFAULT_SUPPORTED_REGIONS:
        screen = region_screen(region)
        for other in sorted(phonenumbers.SUPPORTED_REGIONS):
            for number_type in range(11):
                example = phonenumbers.example_number_for_type(other, number_type)
                if example is None:
                    continue
                for fmt in formats:
                    for text in (phonenumbers.format_number(example, fmt),
                                 phonenumbers.national_significant_number(example)):
                        if _parses_and_verifies(text, region):
                            assert screen.may_match(text), (region, other, text)
                            checked += 1
    assert checked > 1000
    rejected = [c for c in ("2024-05-14", "120/80", "36.6", "14:30", "123456", "98765432",
                            "4111 1111 1111 1111") if not region_screen("US").may_match(c)]
    assert len(rejected) >= 5


def test_phone_bounds_cut_short_numbers() -> None:
    # Years, counts, times: the candidates the bound lets the recognizer skip.
    assert min_candidate_length("US") >= 5
    assert min_candidate_length("DE") >= 3


# --- behaviour --------------------------------------------------------------------------------

def test_redact_replaces_with_entity_type(analyzer: PiiAnalyzer) -> None:
    text = "Mail jane.roe@example.com or call (212) 555-0143, card 4111 1111 1111 1111."
    redacted = analyzer.redact(text, analyzer.analyze(text))
    assert redacted == "Mail <EMAIL_ADDRESS> or call <PHONE_NUMBER>, card <CREDIT_CARD>."
    assert analyzer.redact("nothing here", []) == "nothing here"


_TYPES = st.sampled_from(["EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN"])
# A text of findings and what lies between them: nothing (touching), spaces only (merged
# when of one type), other characters; plus findings anywhere (overlapping, nested, repeated).
_LAID_OUT = st.lists(st.tuples(st.sampled_from(["", " ", "  ", ", ", "x", " - ", "\t"]),
                               st.sampled_from(["a", "ab", "abc"]), _TYPES), max_size=5)
_ANYWHERE = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 8), _TYPES), max_size=3)


@settings(max_examples=500, deadline=None)
@given(_LAID_OUT, st.sampled_from(["", " ", "z"]), _ANYWHERE)
def test_redact_equals_presidio_anonymizer(analyzer: PiiAnalyzer,
                                           laid_out: list[tuple[str, str, str]], tail: str,
                                           anywhere: list[tuple[int, int, str]]) -> None:
    """Findings apart, touching, one or more spaces apart, overlapping, nested or repeated:
    the redaction is the anonymizer's."""
    text, findings = "", []
    for gap, word, entity in laid_out:
        text += gap
        findings.append(pii.Finding(entity, len(text), len(text) + len(word), 0.5))
        text += word
    text += tail
    for start, length, entity in anywhere:
        if start + length <= len(text) and length:
            findings.append(pii.Finding(entity, start, start + length, 0.5))
    expected = analyzer._anonymizer.anonymize(
        text, [pii.AnonymizerResult(f.entity_type, f.start, f.end, f.score) for f in findings],
        analyzer._operators).text if findings else text
    assert analyzer.redact(text, findings) == expected


def test_cache_returns_same_findings_and_keeps_no_text() -> None:
    cached = PiiAnalyzer(ENTITIES, 0.5, THRESHOLDS, cache_size=2)
    text = "write to jane.roe@example.com"
    first = cached.analyze(text)
    assert cached.analyze(text) == first and first
    cached.analyze("other text one.")
    cached.analyze("other text two.")
    assert len(cached._cache) == 2
    assert all(isinstance(k, bytes) and len(k) == 16 for k in cached._cache)
    for _ in range(2):
        findings, redacted = cached.analyze_and_redact(text)
        assert redacted == "write to <EMAIL_ADDRESS>" and findings == first
    assert "jane.roe" not in repr(cached._redacted) + repr(cached._cache)
    assert cached.analyze_and_redact("nothing to see") == ([], "nothing to see")


def test_empty_and_unknown() -> None:
    analyzer = PiiAnalyzer(["EMAIL_ADDRESS"], cache_size=0)
    assert analyzer.analyze("") == []
    with pytest.raises(ValueError, match="unsupported entities"):
        PiiAnalyzer(["EMAIL_ADDRESS", "FAVOURITE_COLOUR"])


def test_ner_entities_without_spacy_model_are_reported_unavailable() -> None:
    analyzer = PiiAnalyzer(["EMAIL_ADDRESS", "PERSON"], detect_spacy_model=False, cache_size=0)
    assert analyzer.unavailable == ("PERSON",)
    assert [f.entity_type for f in analyzer.analyze("Ann Lee, ann@example.com")] == [
        "EMAIL_ADDRESS"]


def test_only_requested_entities_are_reported() -> None:
    analyzer = PiiAnalyzer(["CREDIT_CARD"], cache_size=0)
    text = "card 4111111111111111, mail a@example.com, ip 10.0.0.1"
    assert {f.entity_type for f in analyzer.analyze(text)} == {"CREDIT_CARD"}


# --- offline ----------------------------------------------------------------------------------

class _NetworkAttempts:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[Any] = []

        def refuse(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(args[:2])
            raise OSError("network access is not allowed in this test")

        monkeypatch.setattr(socket, "getaddrinfo", refuse)
        monkeypatch.setattr(socket, "create_connection", refuse)
        monkeypatch.setattr(socket.socket, "connect", refuse)
        monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def test_no_network_access(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    attempts = _NetworkAttempts(monkeypatch)
    pii.offline_tld_extractor.cache_clear()  # built afresh under the guard
    analyzer = PiiAnalyzer(ENTITIES, 0.5, THRESHOLDS, cache_size=0)
    found = analyzer.analyze("Mail jane.roe@example.co.uk or see https://www.example.org/x.")
    assert {f.entity_type for f in found} == {"EMAIL_ADDRESS", "URL"}
    reference = presidio_default_engine_offline(tmp_path)
    assert reference.analyze("ann@example.com", "en", entities=["EMAIL_ADDRESS"])
    assert attempts.calls == []
    # Control: tldextract as shipped does try to fetch the suffix list, and the guard sees it.
    tldextract.TLDExtract(cache_dir=str(tmp_path / "tld"))("ann@example.com")
    assert attempts.calls


def test_spacy_pipeline_path_lazy_nlp_matches_presidio(
        reference: AnalyzerEngine, tmp_path: Path) -> None:
    """With a spaCy pipeline installed the analyzer runs it lazily (only where a pattern
    matched) and keeps Presidio's context enhancer: findings stay equal. A blank pipeline
    stands in for a trained model here (none is installed offline)."""
    from dpserve_runtime.filter.presidio_reference import blank_spacy_pipeline

    pipeline = str(blank_spacy_pipeline(tmp_path))
    lazy = PiiAnalyzer(ENTITIES, 0.0, spacy_model=pipeline, cache_size=0)
    assert lazy._lazy_nlp and lazy.unavailable == ()
    for row in CORPUS:
        assert _our_findings(lazy, row["text"]) == _reference_findings(
            reference, row["text"], 0.0), row["id"]
    with_ner = PiiAnalyzer([*ENTITIES, "PERSON"], 0.0, spacy_model=pipeline, cache_size=0)
    assert not with_ner._lazy_nlp and with_ner.ner_entities == ("PERSON",)
    assert {f.entity_type for f in with_ner.analyze("Ann Lee, ann@example.com")} >= {
        "EMAIL_ADDRESS"}


def test_general_threshold_never_disables_phone_detection() -> None:
    capped = PiiAnalyzer(["PHONE_NUMBER", "EMAIL_ADDRESS"], 0.5, detect_spacy_model=False)
    assert capped.thresholds == {"PHONE_NUMBER": 0.4, "EMAIL_ADDRESS": 0.5}
    assert capped.undetectable == ()
    assert [f.entity_type for f in capped.analyze("call (212) 555-0143")] == ["PHONE_NUMBER"]
    explicit = PiiAnalyzer(["PHONE_NUMBER"], 0.5, {"PHONE_NUMBER": 0.6},
                           detect_spacy_model=False)
    assert explicit.undetectable == ("PHONE_NUMBER",)
    assert explicit.analyze("call (212) 555-0143") == []
