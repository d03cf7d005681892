"""Streaming filter: over random chunkings of texts made of PII values and prose, the stream
equals the non-streamed filter, no chunk carries a PII value, block and the verbatim guard
end the stream, and hold-back stays small."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from presidio_analyzer import Pattern, PatternRecognizer

from dpserve.api.outputfilter import PATTERN_ENTITIES
from dpserve_runtime.filter.normalize import normalize
from dpserve_runtime.filter.pii import PiiAnalyzer
from dpserve_runtime.filter.scan import Action, OutputScanner
from dpserve_runtime.filter.stream import (
    StreamFilter,
    StreamOutput,
    pattern_barriers,
    recognizer_bounds,
)
from dpserve_runtime.filter.verbatim import VerbatimGuard, normalise_tokens, write_fingerprint_file

ZW = "\u200b"
# PII values, plain and disguised, each found by the filter wherever it stands between
# prose words (checked by test_every_corpus_value_is_found).
PII = [
    "jane.roe@example.com", "j.smith+news@mail.example.co.uk", "ops@dpserve.io",
    "jane.roe＠example.com", f"jane.roe@exa{ZW}mple.com", "ｊａｎｅ@example.org",
    "(212) 555-0143", "+44 20 7946 0958", "+1 415 555 2671", "(２１２) ５５５-０１４３",
    "4111 1111 1111 1111", "5500-0000-0000-0004", "4111111111111111",
    "４１１１ １１１１ １１１１ １１１１", f"4111{ZW}1111{ZW}1111{ZW}1111",
    "536-22-8410", "５３６-２２-８４１０", "٥٣٦-٢٢-٨٤١٠", "536\u201022\u20108410",
    "DE89 3704 0044 0532 0130 00", "GB82 WEST 1234 5698 7654 32",
    "192.168.10.24", "10.0.0.1", "2001:db8:85a3::8a2e:370:7334",
    "https://www.example.org/path?q=1", "http://intranet.example.com/a/b", "www.example.net",
]
PROSE = ["the", "results", "look", "fine", "and", "please", "contact", "us", "at", "or",
         "call", "with", "today", "cheers", "Regards,", "Note:", "see", "x", "a", "is",
         "2024", "3 items", "v1.2", "(ok)", "- done", "café", "naïve", "über", "½", "e.g."]
LOW_THRESHOLD = PiiAnalyzer(list(PATTERN_ENTITIES), 0.0, {"PHONE_NUMBER": 0.0}, cache_size=0)
NAMED = PiiAnalyzer(["PERSON", "LOCATION", "EMAIL_ADDRESS", "PHONE_NUMBER"], 0.5,
                    {"PHONE_NUMBER": 0.4}, cache_size=0)
SEPARATORS = [" ", " ", " ", ", ", ". ", "\n", " - ", "; "]


@pytest.fixture(scope="module")
def analyzer() -> PiiAnalyzer:
    return PiiAnalyzer(list(PATTERN_ENTITIES), 0.5, {"PHONE_NUMBER": 0.4})


# Words a value stands between. Two values side by side can hide each other from Presidio
# itself ("(212) 555-0143 4111 1111 1111 1111" is one phonenumbers candidate, which fails
# validation: neither the non-streamed nor the streamed filter finds the phone number).
WORDS = ["the", "results", "contact", "call", "today", "cheers", "with", "or", "and"]


@st.composite
def _texts(draw: st.DrawFn) -> str:
    parts = draw(st.lists(
        st.one_of(st.sampled_from(PROSE),
                  st.tuples(st.sampled_from(WORDS), st.sampled_from(PII),
                            st.sampled_from(WORDS)).map(" ".join)),
        min_size=1, max_size=10))
    out = []
    for i, part in enumerate(parts):
        if i:
            out.append(draw(st.sampled_from(SEPARATORS)))
        out.append(part)
    return "".join(out)


@st.composite
def _chunked(draw: st.DrawFn) -> tuple[str, list[str]]:
    text = draw(_texts())
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(text) - 1)), max_size=40))))
    bounds = [0, *[c for c in cuts if 0 < c < len(text)], len(text)]
    return text, [text[a:b] for a, b in itertools.pairwise(bounds)]


def _run(stream: StreamFilter, chunks: list[str]) -> list[StreamOutput]:
    outputs = [stream.feed(chunk) for chunk in chunks]
    outputs.append(stream.finish())
    return outputs


def _leaks(text: str) -> list[str]:
    """Corpus values present in ``text``, raw or in their normalised form."""
    view = normalize(text).text
    return [v for v in PII if v in text or normalize(v).text in view]


def test_every_corpus_value_is_found(analyzer: PiiAnalyzer) -> None:
    scanner = OutputScanner(analyzer, "redact")
    for value in PII:
        for before, after in (("see ", " now"), ("x\n", ", ok"), ("", "")):
            redacted, result = scanner.filter_text(before + value + after)
            assert result.entity_counts, value
            assert not _leaks(redacted), (value, redacted)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_chunked())
def test_stream_equals_filter_text_and_never_leaks(
        analyzer: PiiAnalyzer, case: tuple[str, list[str]]) -> None:
    text, chunks = case
    scanner = OutputScanner(analyzer, "redact")
    expected, result = scanner.filter_text(text)
    outputs = _run(StreamFilter(scanner), chunks)
    assert "".join(o.text for o in outputs) == expected
    assert sum((o.entity_counts for o in outputs), Counter()) == result.entity_counts
    assert all(o.blocked is None for o in outputs)
    for output in outputs:
        assert not _leaks(output.text), output.text


# Characters and fragments PII patterns are made of, glued without prose: digit runs,
# half e-mails, IPv6 colons, IBAN prefixes, disguises. Threshold 0: every weak finding too.
_NASTY = st.lists(st.sampled_from([*"0123456789 -.@abcdexyzDEGB:()+/\n_,", ZW, "５", "＠",
                                   "www.", ".com", "http://", "4111", "::", "DE89", " 1111"]),
                  min_size=1, max_size=40).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_NASTY, st.lists(st.integers(1, 6), min_size=1, max_size=60))
def test_stream_equals_filter_text_on_pattern_soup(text: str, sizes: list[int]) -> None:
    scanner = OutputScanner(LOW_THRESHOLD, "redact")
    expected, result = scanner.filter_text(text)
    chunks, at = [], 0
    for size in sizes:
        chunks.append(text[at:at + size])
        at += size
    chunks.append(text[at:])
    outputs = _run(StreamFilter(scanner), [c for c in chunks if c])
    assert "".join(o.text for o in outputs) == expected
    assert sum((o.entity_counts for o in outputs), Counter()) == result.entity_counts


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_chunked())
def test_log_action_streams_the_text_unchanged(
        analyzer: PiiAnalyzer, case: tuple[str, list[str]]) -> None:
    text, chunks = case
    scanner = OutputScanner(analyzer, "log")
    _, result = scanner.filter_text(text)
    outputs = _run(StreamFilter(scanner), chunks)
    assert "".join(o.text for o in outputs) == text
    assert sum((o.entity_counts for o in outputs), Counter()) == result.entity_counts


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_chunked())
def test_block_ends_the_stream_before_any_pii(
        analyzer: PiiAnalyzer, case: tuple[str, list[str]]) -> None:
    text, chunks = case
    scanner = OutputScanner(analyzer, "block")
    _, result = scanner.filter_text(text)
    stream = StreamFilter(scanner)
    emitted: list[str] = []
    blocked_at = None
    for index, chunk in enumerate([*chunks, None]):
        output = stream.feed(chunk) if chunk is not None else stream.finish()
        if blocked_at is not None:
            assert output.text == "" and output.blocked == "pii"  # nothing after the block
        elif output.blocked is not None:
            assert output.blocked == "pii" and output.text == "" and output.entity_counts
            blocked_at = index
        emitted.append(output.text)
    assert (blocked_at is not None) == (result.blocked == "pii")
    assert not _leaks("".join(emitted))
    assert "".join(emitted) == text[:len("".join(emitted))]  # a prefix, unredacted


def test_block_reports_the_terminal_state(analyzer: PiiAnalyzer) -> None:
    stream = StreamFilter(OutputScanner(analyzer, "block"))
    first = stream.feed("Hello there, my card is 4111 1111 1111 1111")
    second = stream.feed(" and more text follows here.")
    assert first.blocked is None and "4111" not in first.text
    assert second.blocked == "pii" and second.entity_counts == {"CREDIT_CARD": 1}
    assert stream.feed("anything").blocked == "pii"
    assert stream.finish() == StreamOutput("", "pii")


NAMES = ["Dr. Ann Lee", "John Smith", "Mrs Garcia", "lives in Paris", "from Berlin, Germany",
         "Maria", "patient Jones", "Dear Tom", "New York", "1200 North Lake Shore Drive",
         "Johns Hopkins Hospital", "May", "Will Smith"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(NAMES + PROSE + PII[:8]), min_size=1, max_size=20).map(" ".join),
       st.lists(st.integers(1, 7), min_size=1, max_size=80))
def test_declared_bounds_recognizer_streams_equal(text: str, sizes: list[int]) -> None:
    """PERSON / LOCATION (the gazetteer recognizer declares max_match_chars and
    lookaround_chars): the hold-back rule for declared bounds keeps the stream equal."""
    scanner = OutputScanner(NAMED, "redact")
    assert recognizer_bounds(NAMED).bounded and not recognizer_bounds(NAMED).unbounded
    expected, result = scanner.filter_text(text)
    chunks, at = [], 0
    for size in sizes:
        chunks.append(text[at:at + size])
        at += size
    chunks.append(text[at:])
    outputs = _run(StreamFilter(scanner), [c for c in chunks if c])
    assert "".join(o.text for o in outputs) == expected
    assert sum((o.entity_counts for o in outputs), Counter()) == result.entity_counts


# --- verbatim guard ---------------------------------------------------------------------------

TRAINING = ("the quarterly statement for account holder Dmitri Ivanov lists a balance of "
            "forty two thousand euros held at the Lisbon branch")


@pytest.fixture(scope="module")
def guard(tmp_path_factory: pytest.TempPathFactory) -> VerbatimGuard:
    path: Path = tmp_path_factory.mktemp("fp") / "fingerprints.json"
    write_fingerprint_file([TRAINING], path, 8)
    return VerbatimGuard.load(path)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([
    "Sure: " + TRAINING.upper() + " and that is all.",
    "Sure: " + TRAINING.replace(" ", f" {ZW}", 3).replace("account", f"acc{ZW}ount"),
    "Sure: " + TRAINING.replace("Dmitri", "Ｄｍｉｔｒｉ"),
    "Dmitri Ivanov lists a balance of forty two. Nothing more.",
    "the quarterly statement for account holder Dmitri Ivanov lists",
]), st.lists(st.integers(1, 12), min_size=1, max_size=60))
def test_guard_blocks_a_reproduction_before_its_last_token(
        analyzer: PiiAnalyzer, guard: VerbatimGuard, text: str, sizes: list[int]) -> None:
    scanner = OutputScanner(analyzer, "redact", guard)
    expected, result = scanner.filter_text(text)
    chunks, at = [], 0
    for size in sizes:
        chunks.append(text[at:at + size])
        at += size
    chunks.append(text[at:])
    stream = StreamFilter(scanner)
    outputs = _run(stream, [c for c in chunks if c])
    emitted = "".join(o.text for o in outputs)
    if result.blocked == "verbatim":
        assert any(o.blocked == "verbatim" for o in outputs)
        assert not guard.check(emitted) and not guard.check(normalize(emitted).text)
        assert emitted == text[:len(emitted)]
    else:
        assert emitted == expected and all(o.blocked is None for o in outputs)


def test_guard_holds_back_only_the_last_word(guard: VerbatimGuard) -> None:
    stream = StreamFilter(OutputScanner(None, "redact", guard))
    assert stream.feed("one two thr").text == "one two "
    assert stream.feed("ee four").text == "three "
    assert stream.finish().text == "four"
    tokens = normalise_tokens(TRAINING)
    blocked = StreamFilter(OutputScanner(None, "redact", guard))
    emitted = "".join(blocked.feed(t + " ").text for t in tokens[:8])
    assert blocked.blocked == "verbatim" and emitted == " ".join(tokens[:7]) + " "


# --- bounds and hold-back -----------------------------------------------------------------------

def test_barriers_of_presidio_patterns(analyzer: PiiAnalyzer) -> None:
    # An SSN match never holds a letter or a comma; an e-mail never a space.
    ssn = pattern_barriers(r"\b([0-9]{3})-([0-9]{2})-([0-9]{4})\b")
    assert {"a", "Z", ",", " "} <= ssn and not {"1", "-"} & ssn
    email = next(r for r in analyzer.engine.registry.recognizers
                 if "EMAIL_ADDRESS" in r.supported_entities)
    assert isinstance(email, PatternRecognizer)
    patterns: list[Pattern] = email.patterns  # type: ignore[has-type]
    email_barriers = pattern_barriers(patterns[0].regex, email.global_regex_flags or 0)
    assert " " in email_barriers and not {"@", ".", "a", "-"} & email_barriers
    assert pattern_barriers("a*") == frozenset()  # can match empty: no claim
    assert pattern_barriers(r"(a)\1") == frozenset()  # back-reference: no claim
    bounds = recognizer_bounds(analyzer)
    assert not bounds.unbounded and not bounds.bounded
    assert len(bounds.units) >= len(PATTERN_ENTITIES)


def test_prose_streams_with_a_small_holdback(analyzer: PiiAnalyzer) -> None:
    stream = StreamFilter(OutputScanner(analyzer, "redact"))
    words = ("Sure, here is the summary you asked for: the quarterly numbers improved and "
             "the team shipped the new release on schedule. ") * 4
    released = 0
    for word in words.split(" "):
        released += len(stream.feed(word + " ").text)
    assert stream.max_holdback_chars <= 64
    assert released >= len(words) - 64


def test_unbounded_recognizer_holds_everything_until_finish(tmp_path: Path) -> None:
    from dpserve_runtime.filter.presidio_reference import blank_spacy_pipeline

    with_model = PiiAnalyzer(["EMAIL_ADDRESS"], 0.5,
                             spacy_model=str(blank_spacy_pipeline(tmp_path)), cache_size=0)
    scanner = OutputScanner(with_model, "redact")
    stream = StreamFilter(scanner)
    assert stream.bounds.unbounded
    text = "write to jane.roe@example.com. Thanks, and more words follow."
    outputs = [stream.feed(text[i:i + 5]) for i in range(0, len(text), 5)]
    assert all(o.text == "" for o in outputs)
    assert stream.finish().text == scanner.filter_text(text)[0]


@pytest.mark.parametrize("action", ["redact", "log", "block"])
def test_no_analyzer_and_no_guard_passes_text_through(action: Action) -> None:
    stream = StreamFilter(OutputScanner(None, action))
    assert stream.feed("mail jane.roe@example.com").text == "mail jane.roe@example.com"
    assert stream.finish().text == ""
    with pytest.raises(RuntimeError):
        stream.feed("late")
