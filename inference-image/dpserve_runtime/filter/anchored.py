"""Presidio's URL, e-mail and IP address patterns, matched in linear time, same matches.

Presidio runs each pattern with ``finditer`` over the whole text: the regex engine tries
every start position and, from each, scans and backtracks as far as the pattern allows. Two
default patterns make that expensive on adversarial text:

- URL: ``[a-z0-9.\\-]{1,253}[.](?:com|edu|...)``: from every start in a run of dots, letters
  or digits the engine scans 253 characters and backtracks over all of them, trying a
  600-way top-level-domain alternation at each dot (about 1.5 ms per start position: a
  10 KB run of dots followed by ``com`` took tens of seconds);
- e-mail: ``\\b(X[X.]{0,}X)[@]...``: from every word boundary in a long run of local-part
  characters the engine scans to the run's end and back (quadratic in the run's length).

Here the same compiled pattern is only *tried* (anchored, ``pattern.match(text, s)``) at
candidate start positions found by cheap linear scans, a superset of the positions where a
match can start, in increasing order; after a match the next candidate is taken at or after
its end. That is exactly ``finditer``'s loop (leftmost match, then continue at its end;
these patterns never match the empty string), so the matches are identical: every start
position the engine would have succeeded at is a candidate, and a candidate where the
pattern does not match is skipped as the engine would skip it.
``tests/runtime/test_filter_fastpaths.py`` compares the two on random and adversarial strings
and bounds the work per character (:class:`WorkCounter`).

Why the candidates are a superset and few (each attempt costs at most a bounded amount):

- URL: a match contains a "TLD dot": a ``.`` where ``[.](?:com|edu|...)`` matches. The
  host part (an optional ``www\\d{0,3}.`` and 1..253 characters of ``[a-z0-9.\\-]``) is a run
  of those characters ending at that dot, so its start lies in the same run at most 253
  characters before the dot (260 with the ``www`` prefix, tried only where ``www`` is).
  Schema patterns start at ``http://`` / ``https://`` (after a quote for the quoted ones)
  and a quoted schema-less one at a quote, each followed by such a host.
- e-mail: the ``@`` of a match is the one after the local part; the domain part (from
  ``@`` to the final ``\\b``) must match there, the character before ``@`` must be a
  local-part character other than ``.``, and the start is the first word boundary at a
  local-part character in the run of local-part characters ending at that ``@``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import regex
from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import (
    EmailRecognizer,
    IpRecognizer,
    UrlRecognizer,
)

# Presidio's PatternRecognizer.global_regex_flags (both recognizers keep the default).
FLAGS: Final = regex.DOTALL | regex.MULTILINE | regex.IGNORECASE

# The host part's characters and its longest stretch before the TLD dot.
_HOST_RUN: Final = regex.compile(r"[a-z0-9.\-]++", FLAGS)
_HOST_MAX: Final = 253
_WWW: Final = regex.compile(r"www\d{0,3}[.]", FLAGS)
_WWW_MAX: Final = 7  # "www" + 3 digits + "."
_DOT_LETTER: Final = regex.compile(r"[.](?=[a-z])", FLAGS)
_SCHEMA: Final = regex.compile(r"https?://", FLAGS)
_QUOTE: Final = regex.compile(r"[\"']", FLAGS)


def _top_level_domains() -> list[str]:
    """The literal TLDs of Presidio's URL pattern, from its alternation."""
    base = UrlRecognizer.BASE_URL_REGEX
    start = base.index("[.](?:") + len("[.]")
    end = base.index(")(?:/", start) + 1
    tlds: list[str] = regex.findall(r"\(\?:([a-z]+)\)", base[start:end])
    if not tlds or base[start:end] != "(?:" + "|".join(f"(?:{t})" for t in tlds) + ")":
        raise RuntimeError("Presidio's URL pattern changed: its TLD list is no longer a "
                           "plain alternation of literals")
    return tlds


def _trie(words: list[str]) -> str:
    """A regex matching a prefix of the text exactly when some word is one. Only used to
    ask "does a TLD start here?", where the alternation's order does not matter; as a trie
    it branches on one character at a time instead of trying 600 alternatives in turn."""
    if not words:
        return ""
    ends = "" in words
    heads: dict[str, list[str]] = {}
    for word in words:
        if word:
            heads.setdefault(word[0], []).append(word[1:])
    branches = [regex.escape(head) + _trie(rest) for head, rest in sorted(heads.items())]
    if not branches:
        return ""
    body = "(?:" + "|".join(branches) + ")"
    return f"(?:{body}|)" if ends else body


_TLD_DOT: Final = regex.compile(r"[.]" + _trie(_top_level_domains()), FLAGS)

# e-mail: the local part's characters (with "."), and the pattern's tail from "@" on.
_LOCAL = r"[!#$%&'*+\-/=?^_`{|}~\w]"
_LOCAL_CHAR: Final = regex.compile(_LOCAL, FLAGS)
# Matched backwards from an "@": the maximal run of local-part characters ending there.
_LOCAL_RUN_BEFORE: Final = regex.compile(r"(?r)[!#$%&'*+\-/=?^_`{|}~\.\w]++", FLAGS)
_DOMAIN: Final = regex.compile(r"[@]\w+(?:-+\w+)*(?:\.\w+(?:-+\w+)*)+\b", FLAGS)
_LOCAL_START: Final = regex.compile(r"\b" + _LOCAL, FLAGS)
_AT: Final = regex.compile(r"@", FLAGS)


@dataclass
class WorkCounter:
    """Work done by the anchored matchers: anchored pattern attempts, and characters the
    candidate scans read. Deterministic, so tests can bound it per character of input
    instead of timing anything."""

    attempts: int = 0
    scanned: int = 0
    by_pattern: dict[str, int] = field(default_factory=dict)

    def attempt(self, name: str) -> None:
        self.attempts += 1
        self.by_pattern[name] = self.by_pattern.get(name, 0) + 1


def anchored_finditer(pattern: regex.Pattern[str], text: str, candidates: Iterator[int],
                      counter: WorkCounter | None = None, name: str = "") -> Iterator[
                          regex.Match[str]]:
    """``pattern.finditer(text)``, trying ``pattern`` only at ``candidates`` (increasing
    positions, a superset of where a match of ``pattern`` can start)."""
    pos = 0
    for start in candidates:
        if start < pos:
            continue
        if counter is not None:
            counter.attempt(name)
        match = pattern.match(text, start)
        if match is None or match.end() == match.start():
            continue
        yield match
        pos = match.end()


class _Hosts:
    """Where a URL host part can start: runs of host characters and their TLD dots."""

    def __init__(self, text: str, counter: WorkCounter | None) -> None:
        self.text = text
        self.runs = [m.span() for m in _HOST_RUN.finditer(text)]
        self.run_starts = [s for s, _ in self.runs]
        self.dots = [p for p in (m.start() for m in _DOT_LETTER.finditer(text))
                     if _TLD_DOT.match(text, p)]
        if counter is not None:
            counter.scanned += 3 * len(text)

    def run_at(self, pos: int) -> tuple[int, int] | None:
        """The run of host characters containing ``pos``."""
        i = bisect.bisect_right(self.run_starts, pos) - 1
        if i >= 0 and self.runs[i][0] <= pos < self.runs[i][1]:
            start, end = self.runs[i]
            return int(start), int(end)
        return None

    def can_start(self, b: int) -> bool:
        """A host part may start at ``b``: a TLD dot lies in b's run, after b and within
        reach (253 characters, 260 where ``www`` starts at b)."""
        run = self.run_at(b)
        if run is None:
            return False
        i = bisect.bisect_right(self.dots, b)
        if i == len(self.dots):
            return False
        p = self.dots[i]
        if p >= run[1]:
            return False
        reach = _HOST_MAX + (_WWW_MAX if _WWW.match(self.text, b) else 0)
        return bool(p - b <= reach)

    def starts(self) -> Iterator[int]:
        """Every position where a host part may start, increasing."""
        emitted = -1
        for p in self.dots:
            run = self.run_at(p)
            if run is None:  # cannot happen: "." is a host character
                continue
            low = max(run[0], p - _HOST_MAX - _WWW_MAX, emitted + 1)
            for b in range(low, p):
                if p - b <= _HOST_MAX or _WWW.match(self.text, b):
                    yield b
            emitted = max(emitted, p - 1)


# The last text's host runs and TLD dots, shared by the four URL patterns (one entry: a
# tuple assignment, so a thread sees either the old pair or the new one).
_last_hosts: tuple[str, _Hosts] | None = None


def _hosts_of(text: str, counter: WorkCounter | None) -> _Hosts:
    global _last_hosts
    last = _last_hosts
    if last is not None and last[0] is text:
        return last[1]
    hosts = _Hosts(text, counter)
    _last_hosts = (text, hosts)
    return hosts


def url_finditer(pattern_name: str, pattern: regex.Pattern[str], text: str,
                 counter: WorkCounter | None = None) -> Iterator[regex.Match[str]]:
    """Presidio's URL ``pattern`` (one of UrlRecognizer.PATTERNS, by name) over ``text``."""
    hosts = _hosts_of(text, counter)
    if not hosts.dots:
        return iter(())
    candidates: Iterator[int]
    if pattern_name == "Non schema URL":
        candidates = hosts.starts()
    elif pattern_name == "Standard Url":
        candidates = (m.start() for m in _SCHEMA.finditer(text) if hosts.can_start(m.end()))
    elif pattern_name == "Quoted URL":
        candidates = (m.start() - 1 for m in _SCHEMA.finditer(text)
                      if m.start() > 0 and _QUOTE.match(text, m.start() - 1)
                      and hosts.can_start(m.end()))
    elif pattern_name == "Quoted Non-schema URL":
        candidates = (m.start() for m in _QUOTE.finditer(text) if hosts.can_start(m.end()))
    else:
        raise ValueError(f"no anchored candidates for URL pattern {pattern_name!r}")
    return anchored_finditer(pattern, text, candidates, counter, pattern_name)


def _email_starts(text: str, counter: WorkCounter | None) -> Iterator[int]:
    if counter is not None:
        counter.scanned += len(text)
    for at in _AT.finditer(text):
        e = at.start()
        if e == 0 or not _LOCAL_CHAR.match(text, e - 1):
            continue  # nothing, or a ".", before "@": no local part ends here
        run = _LOCAL_RUN_BEFORE.match(text, 0, e)  # the run of local characters ending here
        if run is None:
            continue
        run_start = run.start()
        if counter is not None:
            counter.scanned += e - run_start  # runs before distinct "@"s do not overlap
        if not _DOMAIN.match(text, e):
            continue
        if counter is not None:
            counter.scanned += e - run_start
        # Every word boundary at a local-part character of the run: the first one at or
        # after the previous match's end is the match's start (the later ones are skipped).
        for start in _LOCAL_START.finditer(text, run_start, e):
            yield start.start()


def email_finditer(pattern: regex.Pattern[str], text: str,
                   counter: WorkCounter | None = None) -> Iterator[regex.Match[str]]:
    """Presidio's e-mail pattern over ``text``."""
    return anchored_finditer(pattern, text, _email_starts(text, counter), counter, "email")


def _pattern_results(recognizer: PatternRecognizer, text: str, flags: int,
                     finditer: Callable[[Pattern, regex.Pattern[str]],
                                        Iterator[regex.Match[str]]]
                     ) -> list[RecognizerResult]:
    """PatternRecognizer's own loop (scores, validation, invalidation, explanation,
    duplicates) with ``finditer`` in place of ``compiled.finditer(text)``."""
    results: list[RecognizerResult] = []
    loose: Any = recognizer  # Presidio's attributes are untyped
    name: str = loose.name
    patterns: list[Pattern] = loose.patterns
    for pattern in patterns:
        compiled: Any = pattern  # Presidio caches the compiled regex on the Pattern
        if not compiled.compiled_regex or compiled.compiled_with_flags != flags:
            compiled.compiled_with_flags = flags
            compiled.compiled_regex = regex.compile(pattern.regex, flags=flags)
        for match in finditer(pattern, compiled.compiled_regex):
            start, end = match.span()
            current = text[start:end]
            if not current:
                continue
            validation: bool | None = recognizer.validate_result(current)
            description = recognizer.build_regex_explanation(
                name, pattern.name, pattern.regex, pattern.score,
                validation,  # type: ignore[arg-type]  # Presidio passes None too
                flags)
            result = RecognizerResult(
                entity_type=recognizer.supported_entities[0], start=start, end=end,
                score=pattern.score, analysis_explanation=description,
                recognition_metadata={
                    RecognizerResult.RECOGNIZER_NAME_KEY: name,
                    RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: recognizer.id,
                },
            )
            if validation is not None:
                result.score = (EntityRecognizer.MAX_SCORE if validation
                                else EntityRecognizer.MIN_SCORE)
            if recognizer.invalidate_result(current):
                result.score = EntityRecognizer.MIN_SCORE
            if result.score > EntityRecognizer.MIN_SCORE:
                results.append(result)
            description.score = result.score
    deduplicated: list[RecognizerResult] = EntityRecognizer.remove_duplicates(results)
    return deduplicated


# IP address patterns: what each one's match starts with, as a pattern matched at the start
# position (same flags, same character classes): a superset of its match starts, and every
# one of them is found by one linear scan (``overlapped``: every position, not only those
# after the previous hit). Each begins with a bounded prefix of the pattern itself.
_IP_LEAD_HEX_COLON: Final = r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:|:)"
IP_STARTS: Final[dict[str, str]] = {
    "IPv4_mapped": r"(?<![\w:])::",  # "::" then an IPv4 address
    "IPv4_embedded": r"(?<![\w:])[0-9A-Fa-f]{1,4}:",  # hex groups, then an IPv4 address
    "IPv4": r"\b[0-9]{1,3}\.",  # first octet (1-3 digits) and its dot
    "IPv6": _IP_LEAD_HEX_COLON,  # every alternative opens with a hex group and ":" or ":"
    "IPv6_unspecified": r"(?<![\w:])::",
}
_IP_START_PATTERNS: Final = {name: regex.compile(start, FLAGS)
                             for name, start in IP_STARTS.items()}


def ip_finditer(pattern_name: str, pattern: regex.Pattern[str], text: str,
                counter: WorkCounter | None = None) -> Iterator[regex.Match[str]]:
    """One of Presidio's IP address patterns over ``text``, tried only where it can start."""
    starts = (m.start() for m in _IP_START_PATTERNS[pattern_name].finditer(
        text, overlapped=True))
    return anchored_finditer(pattern, text, starts, counter, pattern_name)


class LinearUrlRecognizer(UrlRecognizer):  # type: ignore[misc]
    """Presidio's URL recognizer, same findings, linear time (see the module doc)."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:
        loose: Any = self
        flags: int = regex_flags or loose.global_regex_flags
        patterns: list[Pattern] = loose.patterns
        if flags != FLAGS or [p.regex for p in patterns] != [
                p.regex for p in UrlRecognizer.PATTERNS]:
            return list(super().analyze(text, entities, nlp_artifacts, regex_flags))
        return _pattern_results(
            self, text, flags,
            lambda p, compiled: url_finditer(p.name, compiled, text))


class LinearEmailRecognizer(EmailRecognizer):  # type: ignore[misc]
    """Presidio's e-mail recognizer, same findings, linear time, and the domain check on
    tldextract's bundled public-suffix snapshot (``validate``: no network)."""

    def __init__(self, validate: Callable[[str], bool], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._validate = validate

    def validate_result(self, pattern_text: str) -> bool:
        return self._validate(pattern_text)

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:
        loose: Any = self
        flags: int = regex_flags or loose.global_regex_flags
        patterns: list[Pattern] = loose.patterns
        if flags != FLAGS or [p.regex for p in patterns] != [
                p.regex for p in EmailRecognizer.PATTERNS]:
            return list(super().analyze(text, entities, nlp_artifacts, regex_flags))
        return _pattern_results(
            self, text, flags, lambda p, compiled: email_finditer(compiled, text))


class LinearIpRecognizer(IpRecognizer):  # type: ignore[misc]
    """Presidio's IP address recognizer, same findings: each pattern is tried only where a
    linear scan finds its opening (module doc), instead of at every position of the text."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:
        loose: Any = self
        flags: int = regex_flags or loose.global_regex_flags
        patterns: list[Pattern] = loose.patterns
        if flags != FLAGS or [(p.name, p.regex) for p in patterns] != [
                (p.name, p.regex) for p in IpRecognizer.PATTERNS]:
            return list(super().analyze(text, entities, nlp_artifacts, regex_flags))
        return _pattern_results(
            self, text, flags, lambda p, compiled: ip_finditer(p.name, compiled, text))
