"""Scans every string of a JSON answer: PII (redact | block | log) and verbatim reproduction.

Strings are scanned through their normalised view (:mod:`dpserve_runtime.filter.normalize`):
disguised PII (full-width digits, zero-width characters, a full-width ``＠``...) is found on
the view and the original characters it came from are redacted. JSON numbers are scanned
too: an integer (or a float with an integral value) is scanned as its decimal digits, so a
card or phone number emitted as a number is redacted (replaced by the redaction string) or
blocks like the same digits in a string. Fractional floats are not scanned: an identifier is
never a fraction, while the digits of probabilities and embedding coordinates are random
enough that phonenumbers validates about 7% of them as some region's phone number (measured
on Gaussian floats) and redacting them would corrupt numeric answers.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from dpserve_runtime.filter.normalize import NormalizedView, normalize
from dpserve_runtime.filter.pii import Finding, PiiAnalyzer
from dpserve_runtime.filter.verbatim import VerbatimGuard

Action = Literal["redact", "block", "log"]
BlockReason = Literal["pii", "verbatim"]

# Strings found clean (no finding, no verbatim hit) are remembered, so the keys and label
# texts that every answer repeats are checked once, not once per answer. Only clean strings
# are kept (never one with a finding), short ones, and a bounded number of them.
CLEAN_MEMO_SIZE = 4096
CLEAN_MEMO_MAX_CHARS = 256


@dataclass
class ScanResult:
    """What the scan found and the document to send (the input object, edited in place)."""

    document: Any
    changed: bool = False
    entity_counts: Counter[str] = field(default_factory=Counter)
    verbatim_hits: int = 0
    blocked: BlockReason | None = None
    strings_scanned: int = 0
    numbers_scanned: int = 0

    @property
    def entity_types(self) -> list[str]:
        return sorted(self.entity_counts)


class OutputScanner:
    """Applies the output filter of one model to decoded JSON answers."""

    def __init__(
        self,
        analyzer: PiiAnalyzer | None,
        action: Action,
        guard: VerbatimGuard | None = None,
    ) -> None:
        self.analyzer = analyzer
        self.action = action
        self.guard = guard
        # The analyzer and the guard are deterministic, so an exact string found clean once
        # is clean again. A set of the strings themselves, not of hashes: a hash collision
        # must never let a different string through unscanned.
        self._clean: set[str] = set()
        self._clean_numbers: set[int] = set()  # integral values found clean, same reason

    def guard_hit(self, text: str, view: str) -> bool:
        """The verbatim guard on a text and on its view (a zero-width character inside a
        word splits it into two tokens in the text, not in the view)."""
        if self.guard is None:
            return False
        return self.guard.check(text) or (view != text and self.guard.check(view))

    def findings(self, text: str, view: NormalizedView | None = None
                 ) -> tuple[list[Finding], str]:
        """PII findings of ``text`` (spans of ``text``, found on its normalised ``view``) and
        ``text`` as the action leaves it (redacted on redact, unchanged otherwise)."""
        if view is None:
            view = normalize(text)
        if self.analyzer is None or not self.analyzer.may_contain_pii(view.text):
            return [], text  # no requested entity can occur in this text
        if view.origins is None:
            if self.action == "redact":
                return self.analyzer.analyze_and_redact(text)
            return self.analyzer.analyze(text), text
        found = [
            Finding(f.entity_type, *view.source_span(f.start, f.end), f.score)
            for f in self.analyzer.analyze(view.text)
        ]
        if found and self.action == "redact":
            return found, self.analyzer.redact(text, found)
        return found, text

    def _filter_string(self, text: str, result: ScanResult) -> str:
        result.strings_scanned += 1
        if text in self._clean:
            return text
        view = normalize(text)
        verbatim = self.guard_hit(text, view.text)
        if verbatim:
            result.verbatim_hits += 1
        findings, redacted = self.findings(text, view)
        if findings:
            result.entity_counts.update(f.entity_type for f in findings)
        elif not verbatim and len(text) <= CLEAN_MEMO_MAX_CHARS:
            if len(self._clean) >= CLEAN_MEMO_SIZE:
                self._clean.clear()  # rare: outputs with many distinct short strings
            self._clean.add(text)
        return redacted

    def _filter_number(self, value: float, result: ScanResult) -> Any:
        """A JSON number, or the redaction string in its place if its digits are PII."""
        if self.analyzer is None or isinstance(value, bool):
            return value
        if isinstance(value, float):
            if not math.isfinite(value) or not value.is_integer():
                return value  # fractional: see the module docstring
            digits = int(value)
        else:
            digits = int(value)  # an int subclass as plain digits
        if digits in self._clean_numbers:
            return value
        result.numbers_scanned += 1
        text = str(digits)
        findings = self.analyzer.analyze(text) if self.analyzer.may_contain_pii(text) else []
        if not findings:
            if len(self._clean_numbers) >= CLEAN_MEMO_SIZE:
                self._clean_numbers.clear()
            self._clean_numbers.add(digits)
            return value
        result.entity_counts.update(f.entity_type for f in findings)
        if self.action != "redact":
            return value
        # The whole number goes: a part of its digits left as a number is no redaction.
        top = max(findings, key=lambda f: (f.score, f.end - f.start))
        return self.analyzer.redact(text, [Finding(top.entity_type, 0, len(text), top.score)])

    def filter_text(self, text: str) -> tuple[str, ScanResult]:
        """One text through the filter, as :meth:`scan` treats a string: the text to send
        (redacted on redact) and the result (``blocked`` set on block or verbatim). The
        reference the streaming filter (:mod:`dpserve_runtime.filter.stream`) is held to."""
        result = self.scan(text)
        return result.document, result

    def scan(self, document: Any, *, numbers: bool = True) -> ScanResult:
        """Scan ``document`` (from ``json.loads``); strings are replaced in place on redact.

        Walks iteratively, so nesting depth is bounded only by what the JSON parser accepted.
        Dictionary keys are scanned too: a key that would need redacting is rewritten, and if
        two keys collide after redaction the answer is blocked rather than merged.
        ``numbers``: also scan integral numbers (module docstring). Turn it off only for a
        document whose numbers are not model output (an envelope's ``created`` timestamp or
        token counts: a 10-digit timestamp is a valid phone number in some region).
        """
        result = ScanResult(document=document)
        if isinstance(document, str):
            filtered = self._filter_string(document, result)
            result.document = filtered
            result.changed = filtered != document
        elif isinstance(document, (int, float)) and not isinstance(document, bool):
            if numbers:
                result.document = self._filter_number(document, result)
                result.changed = result.document is not document
        else:
            stack: list[Any] = [document]
            while stack:
                node = stack.pop()
                if isinstance(node, list):
                    for index, item in enumerate(node):
                        if isinstance(item, str):
                            filtered = self._filter_string(item, result)
                            if filtered != item:
                                node[index] = filtered
                                result.changed = True
                        elif isinstance(item, (list, dict)):
                            stack.append(item)
                        elif numbers and isinstance(item, (int, float)):
                            replaced = self._filter_number(item, result)
                            if replaced is not item:
                                node[index] = replaced
                                result.changed = True
                elif isinstance(node, dict):
                    renamed: list[tuple[str, str]] = []
                    for key, value in node.items():
                        new_key = self._filter_string(key, result)
                        if new_key != key:
                            renamed.append((key, new_key))
                        if isinstance(value, str):
                            filtered = self._filter_string(value, result)
                            if filtered != value:
                                node[key] = filtered
                                result.changed = True
                        elif isinstance(value, (list, dict)):
                            stack.append(value)
                        elif numbers and isinstance(value, (int, float)):
                            replaced = self._filter_number(value, result)
                            if replaced is not value:
                                node[key] = replaced
                                result.changed = True
                    if renamed:
                        self._rename_keys(node, renamed, result)
        if result.verbatim_hits:
            result.blocked = "verbatim"
        elif result.entity_counts and self.action == "block":
            result.blocked = "pii"
        return result

    @staticmethod
    def _rename_keys(node: dict[str, Any], renamed: list[tuple[str, str]],
                     result: ScanResult) -> None:
        values = [(new, node.pop(old)) for old, new in renamed]
        for new, value in values:
            if new in node:
                # Two keys redact to the same text: merging would lose data silently.
                result.blocked = "pii"
            node[new] = value
        result.changed = True
