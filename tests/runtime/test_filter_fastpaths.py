"""The sidecar's fast paths change cost, never findings: checked against the slow paths."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st
from presidio_analyzer.predefined_recognizers import EmailRecognizer, IpRecognizer, UrlRecognizer

from dpserve.api.outputfilter import PATTERN_ENTITIES
from dpserve_runtime.filter.anchored import (
    FLAGS,
    IP_STARTS,
    WorkCounter,
    email_finditer,
    ip_finditer,
    url_finditer,
)
from dpserve_runtime.filter.auditlog import AuditFormatter, StreamAuditSink
from dpserve_runtime.filter.pii import PiiAnalyzer
from dpserve_runtime.filter.scan import OutputScanner

ANALYZER = PiiAnalyzer(list(PATTERN_ENTITIES), 0.5, {"PHONE_NUMBER": 0.4})
EMAIL_ONLY = PiiAnalyzer(["EMAIL_ADDRESS"])
# Characters that stress the prefilters: separators, look-alike letters (Kelvin sign, long s),
# non-ASCII digits.
TRICKY = st.sampled_from([*"ab:.@1 fK\u212a\u017f\u0661x-_/", "\u00e9", "\U0001d7ce"])


@settings(max_examples=1500, deadline=None)
@given(st.text(TRICKY, max_size=12) | st.text(max_size=12))
def test_union_prefilter_equals_the_per_entity_prefilters(text: str) -> None:
    for analyzer in (ANALYZER, EMAIL_ONLY):
        assert analyzer.may_contain_pii(text) == bool(analyzer.candidate_entities(text))


TEXTS = ["mail jane.roe@example.com", "call (212) 555-0143", "clean text", "v1", "digit 3",
         "10.0.0.1", "Benign: x"]
MEMO = OutputScanner(ANALYZER, "redact")


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.sampled_from(TEXTS) | st.integers(),
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(TEXTS), inner, max_size=4),
        max_leaves=12,
    )
)
def test_memoised_scanner_answers_as_a_fresh_one(doc: Any) -> None:
    fresh = OutputScanner(ANALYZER, "redact")
    a = MEMO.scan(json.loads(json.dumps(doc)))
    b = fresh.scan(json.loads(json.dumps(doc)))
    assert (a.document, a.changed, a.entity_counts, a.blocked, a.strings_scanned) == (
        b.document, b.changed, b.entity_counts, b.blocked, b.strings_scanned
    )
    # Only strings without findings are remembered as clean.
    assert not any("@" in s or "555" in s for s in MEMO._clean)


@settings(max_examples=300, deadline=None)
@given(
    st.text(), st.text(), st.none() | st.text(),
    st.dictionaries(st.text(), st.integers(0, 10**6)),
    st.none() | st.integers(100, 599), st.booleans(), st.floats(0, 1e6),
)
def test_audit_line_is_the_json_of_the_record(
    model: str, rid: str, tenant: str | None, entities: dict[str, int], upstream: int | None,
    verbatim: bool, latency: float,
) -> None:
    line = AuditFormatter(model).predict_line(
        request_id=rid, tenant=tenant, outcome="ok", status=200, inputs=3, queries_reserved=3,
        queries_charged=2, upstream_status=upstream, entities=entities,
        verbatim_blocked=verbatim, latency_ms=latency,
    )
    record = json.loads(line)
    assert record == {
        "event": "predict", "ts": record["ts"], "requestId": rid, "model": model,
        "tenant": tenant, "outcome": "ok", "status": 200, "inputs": 3, "queriesReserved": 3,
        "queriesCharged": 2, "upstreamStatus": upstream, "entities": dict(sorted(entities.items())),
        "verbatimBlocked": verbatim, "latencyMs": round(latency, 3),
    }
    assert "\n" not in line


def test_stream_sink_writes_once_per_loop_iteration() -> None:
    class Counting(io.BytesIO):
        writes = 0

        def write(self, data: Any) -> int:
            Counting.writes += 1
            return super().write(data)

    stream = Counting()
    sink = StreamAuditSink(stream)

    async def burst() -> None:
        for i in range(5):
            sink.write(f"l{i}")
        assert stream.getvalue() == b""
        await asyncio.sleep(0)

    asyncio.run(burst())
    assert stream.getvalue() == b"l0\nl1\nl2\nl3\nl4\n"
    assert Counting.writes == 1
    sink.write("x")  # no running loop: written at once
    assert stream.getvalue().endswith(b"x\n")


# --- linear-time URL and e-mail matching (dpserve_runtime.filter.anchored) -------------------

_URL_PATTERNS = {p.name: regex.compile(p.regex, FLAGS) for p in UrlRecognizer.PATTERNS}
_EMAIL_PATTERN = regex.compile(EmailRecognizer.PATTERNS[0].regex, FLAGS)
# Pieces that build URLs, e-mails and near-misses: schema, www, TLD starts, quotes, separators,
# case-folding look-alikes (Kelvin sign, long s), a non-ASCII letter.
URLISH = st.lists(st.sampled_from([
    *"abcomwtx.:/-@\"' !_1\n", "\u212a", "\u017f", "\u00e9", "www.", "www12.", "http://",
    "HTTPS://", ".com", ".co", ".COM", ".uk", "a@b.c", "..", "--", "x" * 40, "." * 12,
]), max_size=16).map("".join)


def _same_matches(text: str) -> None:
    for name, pattern in _URL_PATTERNS.items():
        assert [m.span() for m in url_finditer(name, pattern, text)] == [
            m.span() for m in pattern.finditer(text)], (name, text)
    assert [m.span() for m in email_finditer(_EMAIL_PATTERN, text)] == [
        m.span() for m in _EMAIL_PATTERN.finditer(text)], text


@settings(max_examples=800, deadline=None)
@given(URLISH)
def test_anchored_matchers_equal_presidio_finditer(text: str) -> None:
    _same_matches(text)


_IP_PATTERNS = {p.name: regex.compile(p.regex, FLAGS) for p in IpRecognizer.PATTERNS}
# Pieces of IPv4 / IPv6 addresses and near-misses: octets, hex groups, "::", zone ids,
# prefixes, word characters around them, case-folding look-alikes.
IPISH = st.lists(st.sampled_from([
    *"0123456789abcdefABCDEFx.:/%_ -\n", "\u212a", "\u0661", "::", "ffff:", "255.", "256.",
    "10.0.0.1", "2001:db8::", "fe80::1%eth0", "/24", "/129", "1:2:3:4:5:6:", "::ffff:",
]), max_size=16).map("".join)


@settings(max_examples=1500, deadline=None)
@given(IPISH)
def test_anchored_ip_patterns_equal_presidio_finditer(text: str) -> None:
    for name, pattern in _IP_PATTERNS.items():
        assert [m.span() for m in ip_finditer(name, pattern, text)] == [
            m.span() for m in pattern.finditer(text)], (name, text)


def test_anchored_ip_patterns_cover_every_pattern() -> None:
    assert set(IP_STARTS) == set(_IP_PATTERNS)
    for text in ("10.0.0.1", "2001:db8::1", "::ffff:10.0.0.1", "1:2:3:4:5:6:10.0.0.1", "::",
                 "fe80::1%eth0/64"):
        found = {n for n, p in _IP_PATTERNS.items() if list(ip_finditer(n, p, text))}
        assert found == {n for n, p in _IP_PATTERNS.items() if list(p.finditer(text))}, text
        assert found, text


@pytest.mark.parametrize("host", [252, 253, 254, 259, 260, 261])
@pytest.mark.parametrize("prefix", ["", "www.", "www123.", "http://", "'https://", "\"", "x "])
def test_anchored_matchers_at_the_host_length_limits(host: int, prefix: str) -> None:
    for tail in (".com", ".com/path'", ".co.uk\"", "@b.com", ".x"):
        _same_matches(prefix + "a" * host + tail)
        _same_matches(prefix + "a." * (host // 2) + tail)


ADVERSARIAL: dict[str, Callable[[int], str]] = {
    "dots then a TLD": lambda n: "." * (n - 3) + "com",
    "host run then a TLD far away": lambda n: ("x" * 256 + ".com ") * (n // 261),
    "dots and letters": lambda n: "a." * (n // 2),
    "local part without @": lambda n: "a!" * (n // 2 - 3) + "a@b.com",
    "local part ending in a dot": lambda n: "a!" * (n // 2 - 4) + ".@b.com",
    "long word before @": lambda n: "a" * (n - 6) + "@b.com",
    "schema then dots": lambda n: "http://" + "." * (n - 7),
    "quoted schemas": lambda n: "'http://a" * (n // 9),
    "www": lambda n: "www." * (n // 4),
    "at signs": lambda n: "@" * n,
    "a@": lambda n: "a@" * (n // 2),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_anchored_matchers_do_bounded_work_per_character(name: str) -> None:
    """Deterministic, so no timing: the number of anchored pattern attempts per character
    stays bounded and grows linearly with the input (the engine's own finditer, on the
    first case, makes 253 backtracking steps with a 600-way alternation at every start)."""
    attempts = []
    for n in (5_000, 10_000):
        text = ADVERSARIAL[name](n)
        counter = WorkCounter()
        found = [m.span() for p, c in _URL_PATTERNS.items()
                 for m in url_finditer(p, c, text, counter)]
        found += [m.span() for m in email_finditer(_EMAIL_PATTERN, text, counter)]
        # each attempt costs at most a bounded amount (a host part is at most 260
        # characters); a match's path or domain is read once, by the attempt that yields it
        assert counter.attempts <= 8 + n // 100 + 2 * len(found), (n, counter.by_pattern)
        assert counter.scanned <= 8 * n
        attempts.append(counter.attempts)
    assert attempts[1] <= 2 * attempts[0] + 8
    if name != "host run then a TLD far away":  # its matches are long: checked above
        _same_matches(ADVERSARIAL[name](600))


# Pathological 10 KB inputs for every enabled recognizer (URL, e-mail, phone, card, SSN,
# IBAN, IP, names): runs of dots, digits, "@", separators, dates, capitalised words.
_PATHOLOGICAL = {
    **{name: make(10_240) for name, make in ADVERSARIAL.items()},
    **{name: (unit * (10_240 // len(unit) + 1))[:10_240] for name, unit in {
        "digits": "1", "digits and spaces": "1 ", "digits and dashes": "1-",
        "digits and dots": "1.", "dates": "2024-01-02 ", "plus signs": "+1 ",
        "hex and colons": "a:", "separators": "-/. ()+", "capitalised words": "Ann ",
        "names and places": "Dr. Maria Lopez from Boston, ", "mixed": "a1.@-_ :/",
    }.items()},
}
_PLAIN = ("Pt seen on 2025-04-01 at 16:30; BP 157/77, HR 100, temp 36.6 C. Call back on "
          "(617) 555-0192 after 16:15. Reply to maria.lopez@example.com with the form. "
          "Refund of $325.73 approved on 2023-11-02, order A2417062, 1 items. ")


@pytest.mark.slow  # about 10 s: 22 inputs of 10 KB, three times each, and a baseline
def test_no_10kb_input_costs_more_than_a_bounded_multiple_of_plain_text() -> None:
    """Linear time for every enabled recognizer, end to end. Timing, but not a wall-clock
    assert: CPU time of this process (other load on a shared machine does not count), the
    minimum of three repeats (an interruption only ever adds time), each input compared
    with a plain 10 KB clinical note measured in the same process, and a generous multiple
    (measured worst: about 4x, digits and dots in the phone matcher; before the anchored URL
    matcher a run of dots cost over 250x, so the bound still separates linear from not)."""
    analyzer = PiiAnalyzer([*PATTERN_ENTITIES, "PERSON", "LOCATION"], 0.0, cache_size=0)

    def cost(text: str) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            analyzer.analyze(text)
            best = min(best, time.process_time() - start)
        return best

    plain = cost((_PLAIN * (10_240 // len(_PLAIN) + 1))[:10_240])
    for name, text in _PATHOLOGICAL.items():
        assert cost(text) <= 25 * plain + 0.05, name
