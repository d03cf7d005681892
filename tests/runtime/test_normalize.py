"""The normalised view the filter scans: what it folds, what it removes, and its offset map."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpserve_runtime.filter.normalize import fold_char, normalize, view_chars

INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u202e", "\u2066",
             "\u180e", "\ufe0f", "\u034f", "\U000e0041", "\u3164", "\u200e"]


@pytest.mark.parametrize(("disguised", "plain"), [
    ("５３６-２２-８４１０", "536-22-8410"),  # full-width digits
    ("jane＠example．com", "jane@example.com"),  # full-width @ and full stop
    ("٥٣٦-٢٢-٨٤١٠", "536-22-8410"),  # Arabic-Indic digits
    ("۴۱۱۱ ۱۱۱۱", "4111 1111"),  # extended Arabic-Indic
    ("४१११", "4111"),  # Devanagari
    ("536\u201022\u20118410", "536-22-8410"),  # hyphen, non-breaking hyphen
    ("536\u221222\u20138410", "536-22-8410"),  # minus sign, en dash
    ("\U0001d7d3\U0001d7d1", "53"),  # mathematical bold digits
    ("４１１１\u00a01111", "4111 1111"),  # no-break space
    ("ﬁle", "file"),  # ligature
])
def test_disguises_fold_to_plain_text(disguised: str, plain: str) -> None:
    assert normalize(disguised).text == plain


@pytest.mark.parametrize("char", INVISIBLE)
def test_invisible_characters_are_removed(char: str) -> None:
    view = normalize(f"jane@ex{char}ample.com")
    assert view.text == "jane@example.com"
    # The span of the whole address covers the invisible character too.
    assert view.source_span(0, len(view.text)) == (0, len(view.source))


def test_ascii_is_its_own_view_without_a_map() -> None:
    view = normalize("plain ascii 123 @ x")
    assert view.identity and view.text == view.source and view.origins is None
    assert view.source_span(3, 7) == (3, 7)
    accented = normalize("café Zürich")  # already NFKC: nothing to map either
    assert accented.identity


def test_span_maps_to_the_original_characters() -> None:
    text = "SSN ５３６\u200b-２２-８４１０ ok"
    view = normalize(text)
    assert view.text == "SSN 536-22-8410 ok"
    start = view.text.index("536")
    source_start, source_end = view.source_span(start, start + len("536-22-8410"))
    assert text[source_start:source_end] == "５３６\u200b-２２-８４１０"


def test_expansion_maps_every_view_character_to_its_source() -> None:
    view = normalize("a½b")  # ½ -> 1⁄2: three view characters from one
    assert view.text == "a1\u20442b"
    assert view.origins == (0, 1, 1, 1, 2)
    assert view.source_span(1, 2) == (1, 2)  # part of an expansion: the whole character


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_view_of_a_concatenation_is_the_concatenation_of_views(a: str, b: str) -> None:
    """What the streaming filter relies on: the view is built character by character."""
    whole, origins = view_chars(a + b)
    left, left_origins = view_chars(a)
    right, right_origins = view_chars(b, len(a))
    assert whole == left + right and origins == left_origins + right_origins
    assert normalize(a + b).text == whole


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_origins_are_sorted_and_in_range(text: str) -> None:
    view = normalize(text)
    origins = view.origins if view.origins is not None else tuple(range(len(text)))
    assert len(origins) == len(view.text)
    assert list(origins) == sorted(origins)
    assert all(0 <= i < len(text) for i in origins)
    # Every character dropped from the view is invisible (format / default-ignorable).
    kept = set(origins)
    for index, char in enumerate(text):
        if index not in kept:
            assert fold_char(char) == ""
            assert unicodedata.category(char) in ("Cf", "Mn", "Lo", "Cn") or char == "\u3164"


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(codec="utf-8"), max_size=30))
def test_view_has_only_ascii_digits_and_no_invisibles(text: str) -> None:
    view = normalize(text).text
    for char in view:
        if unicodedata.category(char) == "Nd":
            assert char.isascii()
        assert unicodedata.category(char) != "Cf"
