"""The normalised view the output filter scans, with a map back to the original text.

A model (or a prompt-injected instruction) can disguise PII so that Presidio's patterns miss
it while a reader still sees it: full-width digits in an SSN (``５３６-２２-８４１０``), a
zero-width space inside an e-mail domain or a card number, a full-width ``＠``, digits of
another script (``٥٣٦``), a Unicode hyphen (``536‐22‐8410``). The filter therefore scans a view
of the text in which each character is replaced, independently of its neighbours, by:

- nothing, if it is invisible: a format character (category Cf: zero-width space and
  joiners, soft hyphen, bidi controls, word joiner, BOM, tag characters...) or any other
  Unicode default-ignorable code point (variation selectors, combining grapheme joiner,
  Hangul fillers...);
- otherwise its NFKC form (full-width and other compatibility forms folded: ``５`` -> ``5``,
  ``＠`` -> ``@``, ``ﬁ`` -> ``fi``), in which every decimal digit of any script is then
  written as the ASCII digit of the same value and every dash (category Pd, and the minus
  sign) as ``-``.

Digits are folded to ASCII because Presidio's patterns are not uniform about them: its
``regex`` flags make ``\\d`` match any decimal digit, but the SSN patterns spell ``[0-9]`` and
the card pattern starts with a literal ``4``/``5``/``3``..., so ``٥٣٦-٢٢-٨٤١٠`` would pass.

Because the replacement is per character, the view of a concatenation is the concatenation
of the views (the streaming filter relies on this), and each view character has one origin:
a finding ``[start, end)`` on the view covers the original characters from the origin of its
first character to the origin of its last, including any invisible characters in between,
so redacting that span removes the disguise with the value. ASCII text is its own view
(nothing to map), the common case, so it costs one ``str.isascii`` call.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import regex

# Invisible: Cf, and the other default-ignorable code points (variation selectors, CGJ,
# Hangul fillers, ...), which Unicode says to render as nothing.
_INVISIBLE: Final = regex.compile(r"[\p{Cf}\p{Default_Ignorable_Code_Point}]")
_MINUS_SIGN: Final = "\u2212"


@lru_cache(maxsize=65536)
def fold_char(char: str) -> str:
    """The view of one character (see the module docstring); ASCII is unchanged."""
    if char.isascii():
        return char
    if _INVISIBLE.match(char):
        return ""
    folded = unicodedata.normalize("NFKC", char)
    if folded.isascii():
        return folded
    out = []
    for c in folded:
        category = unicodedata.category(c)
        if category == "Nd":
            out.append(str(unicodedata.decimal(c)))
        elif category == "Pd" or c == _MINUS_SIGN:
            out.append("-")
        else:
            out.append(c)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class NormalizedView:
    """``text``: the view of ``source``; ``origins[i]``: index in ``source`` of the character
    view character ``i`` came from (None when the view is ``source`` itself)."""

    source: str
    text: str
    origins: tuple[int, ...] | None

    @property
    def identity(self) -> bool:
        return self.origins is None

    def source_span(self, start: int, end: int) -> tuple[int, int]:
        """The span of ``source`` that view span ``[start, end)`` (non-empty) comes from:
        from the origin of its first character through the origin of its last."""
        if self.origins is None:
            return start, end
        return self.origins[start], self.origins[end - 1] + 1


def view_chars(text: str, offset: int = 0) -> tuple[str, list[int]]:
    """The view of ``text`` and the origin (plus ``offset``) of each of its characters."""
    parts: list[str] = []
    origins: list[int] = []
    for index, char in enumerate(text, offset):
        folded = fold_char(char)
        if folded:
            parts.append(folded)
            origins.extend([index] * len(folded))
    return "".join(parts), origins


def normalize(text: str) -> NormalizedView:
    """The normalised view of ``text`` with its map back to ``text``."""
    if text.isascii():
        return NormalizedView(text, text, None)
    view, origins = view_chars(text)
    if view == text:
        return NormalizedView(text, text, None)
    return NormalizedView(text, view, tuple(origins))
