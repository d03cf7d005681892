"""Streaming output filter: redact / guard a token stream with the least possible hold-back.

:class:`StreamFilter` takes the deltas of one generated text and emits filtered text as
soon as no later delta can change it. Guarantees (``scanner`` = the model's
:class:`~dpserve_runtime.filter.scan.OutputScanner`, ``T`` = all deltas joined):

- redact / log: the emitted texts joined equal ``scanner.filter_text(T)[0]``, and the
  entity counts add up to its ``entity_counts``;
- block: ``blocked`` is set as soon as a finding is certain; nothing is emitted from then
  on (the caller ends the stream with a terminal error event); a verbatim hit blocks
  whatever the action;
- no emitted text contains a PII finding of ``T`` or a complete guarded window.

Why the emitted prefix is final (the argument the tests check empirically)
--------------------------------------------------------------------------
The PII scan runs on the normalised view (:mod:`~dpserve_runtime.filter.normalize`), which
is built character by character, so the view of ``T`` is the concatenation of the views of
the deltas. Redaction (Presidio's anonymizer) replaces each connected group of overlapping
findings on its own, except that it also merges two consecutive findings of one type with
only spaces between them; so if no finding of ``T`` crosses positions ``p < c`` of the view
and neither is preceded by a finding and spaces only, the filtered text is
``filter(T[:p]) + redact(T[p:c], findings inside [p, c)) + ...``. The filter
has emitted up to ``p`` and looks for the largest ``c`` (up to the view's current end ``m``)
such that (a) no finding of the final text crosses ``c`` and (b) the findings inside
``[p, c)`` are those of the final text. Two kinds of recognizer are handled:

- *Barrier* recognizers: Presidio's pattern recognizers and its phonenumbers-based phone
  recognizer. From each regular expression (every atom, lookarounds included; for the phone
  recognizer the phonenumbers candidate pattern and its time-stamp suffix check) this module
  computes the ASCII characters no match can consume: that recognizer's *barriers*. A match
  never contains a barrier, and the engine cannot read past one either (it would have to
  consume it; ``\\b`` and one-character lookarounds read the barrier itself, no further).
  ``finditer`` therefore restarts cleanly after each barrier: the matches between two
  barriers depend only on the text between them, the barriers included. So if the view
  has a barrier of that recognizer at ``c - 1`` or at ``c`` (known, ``c < m``), no match
  crosses ``c`` and every match before ``c`` is final, whatever text follows; and analysing
  a window that starts at or before the last barrier preceding ``p`` yields the final
  matches after ``p``. Validation (Luhn, e-mail domain, SSN rules) reads only the match.
  One caveat: a phonenumbers matcher gives up after 65,535 failed candidates in one text,
  so on such a degenerate text the window (fewer candidates) may find what ``T`` would not.
  Bounded patterns (a finite longest match; card, SSN, IBAN, IPv4) may also be cut where
  no barrier is near: an attempt starting at ``s`` reads at most its *reach* (longest
  match + lookaround widths + 1), so matches and failed attempts starting before
  ``m - reach`` are final; ``regex``'s partial matching reports an attempt that ran into
  the end of the text, and ``c`` is safe when no such attempt, no match still open and no
  final match spans it.
- *Bounded* recognizers, declaring ``max_match_chars`` (M) and ``lookaround_chars`` (L)
  (the gazetteer names recognizer): assuming, as they declare, that a finding is at most M
  long and depends only on the text within L of it, a window starting ``M + L`` before
  ``p`` is exact after ``p``, and a cut ``c <= m - M - L`` that no window finding crosses
  is crossed by no final finding (a crossing finding would lie inside the window).

Any other recognizer (spaCy NER, context enhancement with a trained model's lemmas: they
read whole sentences) has no bound: the filter then holds everything until ``finish``,
which is correct and no longer streaming.

Findings are also only taken when they cannot still change: a window finding that crosses
a candidate ``c`` rules ``c`` out. Cuts fall only between original characters (never inside
the expansion of one character such as ``½``), and invisible characters removed from the
view go with the text before the cut, as :meth:`NormalizedView.source_span` leaves them
outside a finding that starts after them.

Verbatim guard: a window is ``window_tokens`` consecutive ``\\w+`` tokens of the NFKC,
casefolded text (and of its view). ASCII whitespace never composes under NFKC, is never
part of a token and is its own view, so the tokens of ``T`` are the concatenation of the
tokens of its whitespace-separated pieces. The filter checks every window as soon as its
last piece is complete (followed by whitespace) and holds back the incomplete last piece,
so a guarded window is found before its last token is emitted; with every window checked
by ``finish``, the decision equals ``guard.check`` on ``T`` and on its view.

Cost: each delta moves the view's end; the cut is first sought from barriers and bounds
alone, and only when that allows releasing something are the recognizers run, on the
window from the analysis anchor (at most back to the last barrier of every pattern).
``max_holdback_chars`` records the most characters held back after any delta (the
sidecar's metric); ``holdback_chars`` the current count.
"""

from __future__ import annotations

import bisect
import re
import re._parser as sre_parse  # the stdlib regex parser: the atoms of Presidio's patterns
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np
import regex
from presidio_analyzer.predefined_recognizers import PhoneRecognizer

from dpserve_runtime.filter.normalize import view_chars
from dpserve_runtime.filter.pii import Finding, PiiAnalyzer
from dpserve_runtime.filter.scan import BlockReason, OutputScanner
from dpserve_runtime.filter.verbatim import VerbatimGuard, normalise_tokens, window_hashes

# Characters that may serve as barriers (see the module docstring): ASCII only, where the
# case-insensitive matching of `re` and `regex` agree with a per-character test.
_CANDIDATES: Final = tuple(chr(i) for i in range(128))
_UNBOUNDED: Final = int(sre_parse.MAXREPEAT)
_FLAG_MASK: Final = re.IGNORECASE | re.MULTILINE | re.DOTALL | re.VERBOSE | re.ASCII
_LAST_WHITESPACE: Final = re.compile(r"[ \t\n\r\f\v](?=[^ \t\n\r\f\v]*\Z)")
_CATEGORY: Final = {
    "CATEGORY_DIGIT": r"\d", "CATEGORY_NOT_DIGIT": r"\D", "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S", "CATEGORY_WORD": r"\w", "CATEGORY_NOT_WORD": r"\W",
}


class _Unanalysable(ValueError):
    """A pattern construct whose consumed characters this module does not compute."""


@runtime_checkable
class BoundedRecognizer(Protocol):
    """A recognizer that declares how far its findings and their context reach."""

    max_match_chars: int
    lookaround_chars: int


def _class_item(op: str, av: Any) -> str:
    if op == "LITERAL":
        return str(regex.escape(chr(av)))
    if op == "RANGE":
        return f"{regex.escape(chr(av[0]))}-{regex.escape(chr(av[1]))}"
    if op == "CATEGORY" and str(av) in _CATEGORY:
        return _CATEGORY[str(av)]
    raise _Unanalysable(f"{op} {av}")


def _atoms(parsed: Iterable[tuple[Any, Any]], flags: int) -> Iterator[tuple[str, int]]:
    """(source, flags) of every character-consuming atom of a parsed pattern."""
    for op_code, av in parsed:
        op = str(op_code)
        if op == "LITERAL":
            yield regex.escape(chr(av)), flags
        elif op == "NOT_LITERAL":
            yield f"[^{regex.escape(chr(av))}]", flags
        elif op == "ANY":
            yield ".", flags
        elif op == "IN":
            negate = any(str(o) == "NEGATE" for o, _ in av)
            items = "".join(_class_item(str(o), a) for o, a in av if str(o) != "NEGATE")
            yield f"[{'^' if negate else ''}{items}]", flags
        elif op == "SUBPATTERN":
            _, add, remove, sub = av
            yield from _atoms(sub, (flags | add) & ~remove)
        elif op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            yield from _atoms(av[2], flags)
        elif op == "BRANCH":
            for branch in av[1]:
                yield from _atoms(branch, flags)
        elif op in ("ASSERT", "ASSERT_NOT"):
            yield from _atoms(av[1], flags)
        elif op == "ATOMIC_GROUP":
            yield from _atoms(av, flags)
        elif op == "AT":
            continue  # zero-width: reads at most the neighbouring characters
        else:  # back-references, conditionals: no bound claimed
            raise _Unanalysable(op)


def _assert_widths(parsed: Iterable[tuple[Any, Any]]) -> int:
    """Sum of the widths of every lookaround (how far beyond a match they may read)."""
    total = 0
    for op_code, av in parsed:
        op = str(op_code)
        if op in ("ASSERT", "ASSERT_NOT"):
            total += min(int(av[1].getwidth()[1]), _UNBOUNDED) + _assert_widths(av[1])
        elif op == "SUBPATTERN":
            total += _assert_widths(av[3])
        elif op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            total += _assert_widths(av[2])
        elif op == "BRANCH":
            total += sum(_assert_widths(b) for b in av[1])
        elif op == "ATOMIC_GROUP":
            total += _assert_widths(av)
    return min(total, _UNBOUNDED)


@dataclass(frozen=True)
class Unit:
    """One pattern (or matcher) as the cut rule sees it.

    ``barriers``: ASCII characters no match can consume or read past. ``reach``: the most
    characters an attempt starting at a position may read from there (longest match, plus
    lookarounds, plus one for a word boundary); None if unbounded.
    """

    barriers: frozenset[str]
    reach: int | None
    compiled: regex.Pattern[str] | None = None  # as Presidio compiles it, if bounded


def pattern_unit(pattern: str, flags: int = 0) -> Unit:
    """The :class:`Unit` of a regular expression; no barriers and no reach when the pattern
    can match the empty string or uses a construct not analysed here."""
    try:
        parsed = sre_parse.parse(pattern, flags & _FLAG_MASK)
        low, high = parsed.getwidth()
        if low < 1:
            return Unit(frozenset(), None)
        effective = parsed.state.flags & _FLAG_MASK
        atoms = [regex.compile(source, f) for source, f in _atoms(parsed, effective)]
        lookaround = _assert_widths(parsed)
    except (_Unanalysable, re.error, regex.error, OverflowError, RecursionError):
        return Unit(frozenset(), None)
    barriers = frozenset(c for c in _CANDIDATES if not any(a.fullmatch(c) for a in atoms))
    if high >= _UNBOUNDED or lookaround >= _UNBOUNDED:
        return Unit(barriers, None)
    return Unit(barriers, high + lookaround + 1, regex.compile(pattern, flags))


def pattern_barriers(pattern: str, flags: int = 0) -> frozenset[str]:
    """ASCII characters that no match of ``pattern`` (nor its lookarounds) can consume."""
    return pattern_unit(pattern, flags).barriers


def _phone_patterns() -> list[re.Pattern[str]] | None:
    """phonenumbers' candidate pattern and the suffix it reads after a candidate."""
    from phonenumbers import phonenumbermatcher

    found = [getattr(phonenumbermatcher, name, None) for name in ("_PATTERN",
                                                                   "_TIME_STAMPS_SUFFIX")]
    patterns = [p for p in found if isinstance(p, re.Pattern)]
    return patterns if len(patterns) == len(found) else None


@dataclass(frozen=True)
class RecognizerBounds:
    """What the stream filter knows about an analyzer's recognizers."""

    units: tuple[Unit, ...] = ()  # regex-based: barriers and reach
    bounded: tuple[tuple[int, int], ...] = ()  # declared (max_match_chars, lookaround_chars)
    unbounded: tuple[str, ...] = ()  # names of recognizers with no known bound

    @property
    def distance(self) -> int:
        """Characters a declared-bound recognizer needs after a cut and before the window."""
        return max((m + look for m, look in self.bounded), default=0)


def _recognizer_units(recognizer: Any) -> list[Unit] | None:
    if isinstance(recognizer, PhoneRecognizer):
        patterns = _phone_patterns()
        if patterns is None:
            return None
        # The matcher runs the candidate pattern; a candidate is read one character beyond
        # and followed by the time-stamp suffix check: barriers of both, no reach claimed.
        units = [pattern_unit(p.pattern, p.flags) for p in patterns]
        return [Unit(frozenset.intersection(*(u.barriers for u in units)), None)]
    patterns = getattr(recognizer, "patterns", None)
    if not patterns:
        return None
    flags = int(getattr(recognizer, "global_regex_flags", 0) or 0)
    return [pattern_unit(p.regex, flags) for p in patterns]


@lru_cache(maxsize=16)
def recognizer_bounds(analyzer: PiiAnalyzer) -> RecognizerBounds:
    """Units and bounds of the recognizers ``analyzer`` runs (computed once per analyzer)."""
    units: list[Unit] = []
    bounded: list[tuple[int, int]] = []
    unbounded: list[str] = []
    if analyzer.spacy_model is not None:
        # Context enhancement (and NER) on a trained model's tokens reads whole sentences.
        unbounded.append(f"spaCy model {analyzer.spacy_model}")
    for recognizer in analyzer.engine.registry.recognizers:
        if not set(recognizer.supported_entities) & set(analyzer.entities):
            continue
        found = _recognizer_units(recognizer)
        if found is not None and all(u.barriers or u.reach is not None for u in found):
            units.extend(found)
        elif isinstance(recognizer, BoundedRecognizer):
            bounded.append((int(recognizer.max_match_chars), int(recognizer.lookaround_chars)))
        else:
            unbounded.append(str(getattr(recognizer, "name", type(recognizer).__name__)))
    return RecognizerBounds(tuple(units), tuple(bounded), tuple(unbounded))


@dataclass
class StreamOutput:
    """What one :meth:`StreamFilter.feed` / :meth:`StreamFilter.finish` releases."""

    text: str
    blocked: BlockReason | None
    entity_counts: Counter[str] = field(default_factory=Counter)
    verbatim_hits: int = 0


def _guard_hit(guard: VerbatimGuard, tokens: list[str]) -> bool:
    hashes = guard.hashes
    if hashes.size == 0:
        return False
    candidates = np.fromiter(window_hashes(tokens, guard.window_tokens, key=guard.salt),
                             dtype=np.uint64)
    if candidates.size == 0:
        return False
    positions = np.searchsorted(hashes, candidates)
    positions[positions == hashes.size] = 0
    return bool(np.any(hashes[positions] == candidates))


class StreamFilter:
    """Filters one streamed text (one choice); see the module docstring."""

    def __init__(self, scanner: OutputScanner) -> None:
        self.scanner = scanner
        self.analyzer = scanner.analyzer
        self.action = scanner.action
        self.guard = scanner.guard
        self.bounds = (recognizer_bounds(self.analyzer) if self.analyzer is not None
                       else RecognizerBounds())
        # Original text from absolute index _o0 on; everything before _op was emitted.
        self._orig = ""
        self._o0 = 0
        self._op = 0
        self._n = 0
        # View from absolute view index _v0 (the analysis anchor) on; _vp = emit point.
        self._view = ""
        self._origins: list[int] = []  # absolute original index of each kept view char
        self._v0 = 0
        self._vp = 0
        # Verbatim guard: the incomplete last piece starts at _piece (absolute original).
        self._piece = 0
        self._tokens_text: list[str] = []  # last window-1 tokens, of the text / the view
        self._tokens_view: list[str] = []
        self.blocked: BlockReason | None = None
        self.finished = False
        self.max_holdback_chars = 0  # most characters held back after any feed
        self.holdback_chars = 0

    # --- public -----------------------------------------------------------------------------

    def feed(self, delta: str) -> StreamOutput:
        """Take the next delta; return the text that can no longer change."""
        if self.finished:
            raise RuntimeError("feed after finish")
        if self.blocked is not None:
            return StreamOutput("", self.blocked)
        self._append(delta)
        output = self._step(final=False)
        self.holdback_chars = self._n - self._op
        self.max_holdback_chars = max(self.max_holdback_chars, self.holdback_chars)
        return output

    def finish(self) -> StreamOutput:
        """End of the text: release everything left (or block)."""
        if self.finished:
            raise RuntimeError("finish called twice")
        self.finished = True
        if self.blocked is not None:
            return StreamOutput("", self.blocked)
        output = self._step(final=True)
        self.holdback_chars = 0
        return output

    # --- internals ----------------------------------------------------------------------------

    def _append(self, delta: str) -> None:
        view, origins = view_chars(delta, self._n)
        self._orig += delta
        self._n += len(delta)
        self._view += view
        self._origins.extend(origins)

    def _step(self, *, final: bool) -> StreamOutput:
        verbatim = self._check_guard(final)
        if verbatim:
            self.blocked = "verbatim"
            return StreamOutput("", "verbatim", Counter(), 1)
        m = self._v0 + len(self._view)
        limit = m if final or self.guard is None else self._view_index(self._piece)
        # Findings only rule cuts out: when the barriers and bounds alone allow no cut, there
        # is nothing to release and no need to run the recognizers yet.
        cut = m if final else self._cut(limit, m, None)
        findings: list[Finding] = []
        if (cut > self._vp and self.analyzer is not None
                and self.analyzer.may_contain_pii(self._view)):
            findings = self.analyzer.analyze(self._view)  # relative to _v0
            if not final:
                cut = self._cut(cut, m, findings)
        return self._emit(cut, m, findings)

    def _view_index(self, original: int) -> int:
        """Absolute view index of the first view character from ``original`` on."""
        return self._v0 + bisect.bisect_left(self._origins, original)

    def _cut(self, limit: int, m: int, findings: list[Finding] | None) -> int:
        """The largest safe cut in [_vp, limit] (absolute view index); with ``findings``
        None, the largest that the barriers and bounds alone allow."""
        bounds = self.bounds
        if bounds.unbounded:
            return self._vp
        limit = min(limit, m - bounds.distance) if bounds.bounded else limit
        view, v0, origins = self._view, self._v0, self._origins
        spans = [(f.start + v0, f.end + v0) for f in findings or ()]
        # Original end of each finding after p: the anonymizer merges two findings of one
        # type with only spaces between them, so a cut must not follow one by spaces only.
        ends = [origins[f.end - 1] + 1 for f in findings or () if f.start + v0 >= self._vp]
        # Bounded patterns, where no barrier is next to c: the matches they may still make.
        pending: dict[int, tuple[int, list[tuple[int, int]]]] = {}
        for c in range(limit, self._vp, -1):
            if c < m and origins[c - v0] == origins[c - 1 - v0]:
                continue  # inside the expansion of one original character
            before = view[c - 1 - v0]
            after = view[c - v0] if c < m else None
            safe = True
            for index, unit in enumerate(bounds.units):
                if before in unit.barriers or (after is not None and after in unit.barriers):
                    continue
                if unit.reach is None or unit.compiled is None:
                    safe = False
                    break
                if c + unit.reach <= m:
                    continue
                if index not in pending:
                    pending[index] = self._open_matches(unit, m)
                uncertain, spans_u = pending[index]
                if c > uncertain or any(s < c < e for s, e in spans_u):
                    safe = False
                    break
            if not safe or any(s < c < e for s, e in spans):
                continue
            cut_o = origins[c - v0] if c < m else self._n
            if any(e <= cut_o and not self._orig[e - self._o0:cut_o - self._o0].strip(" ")
                   for e in ends):
                continue
            return c
        return self._vp

    def _open_matches(self, unit: Unit, m: int) -> tuple[int, list[tuple[int, int]]]:
        """For a bounded pattern on the window: the earliest start (absolute) of a match or
        attempt the text to come may still change, and the spans of the certain matches.

        ``regex`` partial matching reports an attempt that ran into the end of the text; a
        complete match is certain only if its attempt could not read that far (its start
        plus the pattern's reach stays before the end), see the module docstring.
        """
        assert unit.compiled is not None and unit.reach is not None
        v0 = self._v0
        certain: list[tuple[int, int]] = []
        for match in unit.compiled.finditer(self._view, partial=True):
            start, end = match.start() + v0, match.end() + v0
            if match.partial or start + unit.reach >= m:
                return start, certain
            certain.append((start, end))
        return m, certain

    def _emit(self, cut: int, m: int, findings: list[Finding]) -> StreamOutput:
        output = StreamOutput("", None)
        v0 = self._v0
        # Invisible characters after the last view character go with a cut at the end.
        end_o = self._origins[cut - v0] if cut < m else self._n
        start_o = self._op
        if end_o == start_o:
            return output
        chosen = [
            Finding(f.entity_type, self._origins[f.start] - start_o,
                    self._origins[f.end - 1] + 1 - start_o, f.score)
            for f in findings if f.start + v0 >= self._vp and f.end + v0 <= cut
        ]
        text = self._orig[start_o - self._o0:end_o - self._o0]
        if chosen:
            output.entity_counts.update(f.entity_type for f in chosen)
            if self.action == "block":
                self.blocked = output.blocked = "pii"
                return output
            if self.action == "redact":
                assert self.analyzer is not None
                text = self.analyzer.redact(text, chosen)
        output.text = text
        self._vp, self._op = cut, end_o
        self._advance_anchor(m)
        return output

    def _advance_anchor(self, m: int) -> None:
        """Move the analysis window's start as far right as stays exact; drop the rest."""
        p = self._vp
        bounds = self.bounds
        anchors = []
        last = min(p, m - 1)  # the last known view character at or before p
        for unit in bounds.units:
            q = last
            while q >= self._v0 and self._view[q - self._v0] not in unit.barriers:
                q -= 1
            anchors.append(max(q, self._v0))
        if bounds.bounded:
            anchors.append(max(self._v0, p - bounds.distance))
        if bounds.unbounded or not anchors:
            anchor = p if not bounds.unbounded else self._v0
        else:
            anchor = min(anchors)
        drop = anchor - self._v0
        if drop > 0:
            self._view = self._view[drop:]
            del self._origins[:drop]
            self._v0 = anchor
        # The guard still reads the incomplete last piece, which can start before the cut
        # (an invisible character after whitespace goes out with the text before it).
        keep_from = min(self._op, self._piece) if self.guard is not None else self._op
        drop_o = keep_from - self._o0
        if drop_o > 0:
            self._orig = self._orig[drop_o:]
            self._o0 = keep_from

    def _check_guard(self, final: bool) -> bool:
        """Check every guard window whose last piece is now complete; True on a hit."""
        if self.guard is None:
            return False
        start = self._piece - self._o0
        if final:
            end = len(self._orig)
        else:
            match = _LAST_WHITESPACE.search(self._orig, start)
            if match is None:
                return False
            end = match.end()
        region = self._orig[start:end]
        self._piece = self._o0 + end
        if not region:
            return False
        keep = self.guard.window_tokens - 1
        hit = False
        for tokens, text in ((self._tokens_text, region),
                             (self._tokens_view, view_chars(region)[0])):
            tokens.extend(normalise_tokens(text))
            hit = hit or _guard_hit(self.guard, tokens)
            del tokens[:max(0, len(tokens) - keep)]
        return hit
