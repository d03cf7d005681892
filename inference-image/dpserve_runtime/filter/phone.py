"""Presidio's phone recognizer: same findings, one walk of the text, almost no wasted parse.

Presidio runs one ``phonenumbers.PhoneNumberMatcher`` per supported region (eight by
default) and every matcher parses and validates each digit-bearing candidate of the text
("2023", "14", "4.5"...). That parse is where most of the filter's time goes. The matcher takes
``min_candidate_length`` ("can be used to quickly skip candidates that are too short to be
valid"); Presidio leaves it at 1. This recognizer sets it, per region, to a bound below which
no candidate can be a valid number, derived from the phonenumbers metadata:

- a number parsed in national format for region R gets R's country code, and is valid only
  if its national significant number (NSN) has a length the metadata allows for a region of
  that country code; the NSN's digits come from the candidate's characters, except digits a
  national-prefix transform rule inserts (literal digits of R's rule);
- a number written with "+" or an international dialling prefix carries its country code's
  digits in the candidate as well: length >= len(cc) + min NSN length - inserted digits.

Each character of the candidate contributes at most one digit (digits, or letters of a vanity
number), so a shorter candidate cannot validate. ``min_candidate_length`` only screens the
outer candidates by length; :class:`_BoundedMatcher` applies the bound again, to the count of
characters that can become digits (digits and letters), before every parse, including the
sub-strings the matcher tries inside a failed candidate (the "inner matches" of a date such
as 2023-05-14: "2023", "05", "14"). The findings are those of Presidio's recognizer. One
caveat: a matcher gives up after ``max_tries`` (65,535) failed outer candidates and skipped
ones do not count against that, so on such a degenerate text this recognizer keeps looking
where Presidio's would stop.

A second screen (:class:`RegionScreen`) rejects, before the parse, candidates that cannot be
valid for the matcher's region for a reason read off the metadata, so that almost no date,
time, count or identifier of a realistic text reaches ``parse`` (the parse and validation of
each candidate, eight times over, was about 85% of the filter's time on clinical notes):

- a region code phonenumbers does not know ("UK", "FE" in Presidio's default list) parses
  only a number that starts with a plus sign: without one in the text, that region's matcher
  is not run at all, and a candidate without one is not parsed;
- a "plain" candidate (ASCII digits and the separators `` -./()`` only: no letter, so no
  vanity digits and no extension, no plus sign) whose digits do not start with the region's
  international dialling prefix takes the region's own country code, and its national
  significant number (NSN) is its digit string minus a stripped prefix (the country code
  and/or a national prefix), i.e. a suffix of it; ``is_valid_number`` needs the NSN to have a
  length and the national number pattern of the general description of some region of that
  country code. No such suffix: rejected.
- when such a digit string starts neither with the country code nor with a national prefix
  nothing is stripped, the NSN is the digit string itself, and the country code comes "from
  the default country": then the verification's own checks are made on them directly, as
  phonenumbers makes them: the "national prefix present if required" rule (the formatting
  rule chosen for the NSN in the country's main region) and ``is_valid_number``.

In that last case (``OWN_CODE``) the screen has made the library's whole decision on the
number: the parse of such a candidate strips nothing, so its number is the region's country
code with the digits as NSN, and the verification at VALID is the validity and
national-prefix checks the screen made (a plain candidate has no ``x`` for the third
check). Only the matcher's checks of the text around the candidate remain (brackets, "page"
references, a Latin letter, currency or percent sign either side): :func:`_own_code_match`
makes them, with the library's own patterns, and returns the match the parse would have
led to; the validity of a (country code, NSN) pair is shared by the regions of that code
(US and CA) within a text, and decided by :func:`nsn_is_valid`: ``is_valid_number``'s own
steps (the region of the number, then whether one of that region's number types matches)
with each region's descriptions compiled into one regex, 5-10x faster than the library's
one description at a time. ``tests/runtime/test_pii.py`` holds these matches to the
library's ``_parse_and_verify`` on generated candidates and contexts, and
:func:`nsn_is_valid` to ``is_valid_number`` on generated numbers and on every example number
the library ships and its near misses.

Each rule is a necessary condition of ``parse`` succeeding and ``_verify`` accepting at
leniency VALID (Presidio's), so findings are unchanged; regions whose national-prefix
transform rule can insert digits or reorder them keep only the first rule, and other
leniencies only the length bound. ``tests/runtime/test_pii.py`` checks that every candidate
the screen rejects is one the library's own parse and verification reject.

Finally the walk over the text is shared. Until a region finds a number, its matcher's
walk (the candidate pattern, trimming, the date and time-stamp skips, the inner groups) does
not depend on the region, so :class:`_Recorder` walks the text once, recording the parses a
matcher would make, and each region screens and parses only its survivors
(:func:`_region_matches`). After a match a matcher resumes at the match's end: when that is
the end of its outer candidate the recorded walk goes on from there as well, otherwise (an
inner match) a real matcher of that region takes over from that point. The ``max_tries``
count is kept per region as the matcher keeps it, except that inner groups of an outer
candidate below every region's bound are not walked (none could be parsed), so they do not
count: on a text with tens of thousands of failed candidates this recognizer may look a
little further than Presidio's.

A number most regions find gives one result, not one per region: the regions' results for
it are equal (entity, span, score) and Presidio's ``remove_duplicates`` keeps the first.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, lru_cache

import phonenumbers
from phonenumbers import Leniency, PhoneMetadata, PhoneNumberMatch, phonenumbermatcher, re_util
from phonenumbers.phonenumberutil import (
    COUNTRY_CODE_TO_REGION_CODE,
    NumberParseException,
    region_code_for_country_code,
)
from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import PhoneRecognizer

_BACKREFERENCE = re.compile(r"\\\d|\$\d")


def _min_nsn_length(metadata: PhoneMetadata) -> int:
    desc = metadata.general_desc
    lengths = [n for n in ((desc.possible_length if desc else None) or ()) if n > 0]
    return min(lengths) if lengths else 1


def _inserted_digits(metadata: PhoneMetadata | None) -> int:
    """Digits a national-prefix transform rule can add (its literal digits)."""
    rule = metadata.national_prefix_transform_rule if metadata is not None else None
    if not rule:
        return 0
    return sum(ch.isdigit() for ch in _BACKREFERENCE.sub("", rule))


@lru_cache(maxsize=1)
def _country_code_bounds() -> dict[int, int]:
    """Per country code: the fewest NSN digits a valid number of that code can have."""
    bounds: dict[int, int] = {}
    for region in phonenumbers.SUPPORTED_REGIONS:
        metadata = PhoneMetadata.metadata_for_region(region)
        if metadata is None:
            continue
        code = metadata.country_code
        if code is None:
            continue
        bounds[code] = min(bounds.get(code, 1 << 30), _min_nsn_length(metadata))
    for code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS:
        metadata = PhoneMetadata.metadata_for_nongeo_region(code)
        if metadata is not None:
            bounds[code] = min(bounds.get(code, 1 << 30), _min_nsn_length(metadata))
    return bounds


@lru_cache(maxsize=1)
def _international_bound() -> int:
    """Fewest characters of any valid number written with its country code."""
    best = 1 << 30
    for code, nsn in _country_code_bounds().items():
        main_region = phonenumbers.region_code_for_country_code(code)
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, main_region)
        best = min(best, len(str(code)) + nsn - _inserted_digits(metadata))
    return max(1, best)


@cache
def min_candidate_length(region: str) -> int:
    """Shortest candidate that can be a valid number when matching with ``region``."""
    metadata = PhoneMetadata.metadata_for_region(region)
    if metadata is None or metadata.country_code is None:
        # An unknown region (Presidio's default list has "UK" and "FE") parses only numbers
        # written with a plus sign and their country code.
        return _international_bound()
    national = _country_code_bounds()[metadata.country_code] - _inserted_digits(metadata)
    return max(1, min(national, _international_bound()))


PLUS_CHARS = "+\uff0b"  # phonenumbers' _PLUS_CHARS: "+" and the full-width plus
# A candidate of only these characters has no letter (no vanity digit, no extension marker)
# and no plus sign: its digits are exactly the number phonenumbers normalises it to.
_PLAIN = re.compile(r"[0-9 ()./-]+")
_DIGIT = re.compile(r"[0-9]")
# phonenumbers refuses an NSN shorter or longer than these (_MIN/_MAX_LENGTH_FOR_NSN).
_MIN_NSN, _MAX_NSN = 2, 17


@dataclass(frozen=True, slots=True)
class _Format:
    """A formatting rule of a region, precompiled: phonenumbers picks the first whose last
    leading-digits pattern matches the start of the NSN and whose pattern matches all of it."""

    leading: re.Pattern[str] | None
    pattern: re.Pattern[str]
    prefix_required: bool  # formatting it needs the national prefix (matcher's rule)


def _formats(metadata: PhoneMetadata) -> tuple[_Format, ...]:
    first_group_only = phonenumbers.phonenumberutil._formatting_rule_has_first_group_only
    return tuple(
        _Format(re.compile(f.leading_digits_pattern[-1]) if f.leading_digits_pattern else None,
                re.compile(f.pattern or "(?!)"),
                bool(f.national_prefix_formatting_rule)
                and not f.national_prefix_optional_when_formatting
                and not first_group_only(f.national_prefix_formatting_rule))
        for f in metadata.number_format)


def _desc_alternatives(country_code: int) -> str:
    """One regex alternative per general description of the regions of a country code:
    matches an NSN that has one of its lengths and its pattern."""
    alternatives: dict[str, None] = {}
    for region in COUNTRY_CODE_TO_REGION_CODE.get(country_code, ()):
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
        desc = metadata.general_desc if metadata is not None else None
        if desc is None or not desc.national_number_pattern:
            continue  # such a region validates nothing
        lengths = sorted(n for n in (desc.possible_length or ()) if n > 0)
        length = "|".join(f"[0-9]{{{n}}}" for n in lengths)
        guard = f"(?=(?:{length})\\Z)" if lengths else ""
        alternatives[f"{guard}(?:{desc.national_number_pattern})\\Z"] = None
    return "|".join(f"(?:{a})" for a in alternatives) or "(?!)"


# RegionScreen.verdict: the library's parse or verification rejects the candidate; it may
# accept it (only the library's parse can tell); or, for a plain candidate from which the
# parse strips nothing, it accepts the number (the region's country code, the digits) if the
# matcher's checks of the text around the candidate pass (:func:`_own_code_match`).
REJECT, PARSE, OWN_CODE = 0, 1, 2


# phonenumbers' number types in the order _number_type_helper tries them after the general
# description (mobile last, and only where its pattern differs from the fixed-line one).
_TYPE_DESCS = ("premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager",
               "uan", "voicemail", "fixed_line")


def _desc_regex(desc: phonenumbers.PhoneNumberDesc | None) -> str | None:
    """A regex whose ``match`` accepts exactly the NSNs (ASCII digits) that phonenumbers'
    ``_is_number_matching_desc(nsn, desc)`` accepts; None when it accepts none."""
    if desc is None or not desc.national_number_pattern:
        return None
    lengths = tuple(desc.possible_length or ())
    guard = ""
    if lengths:  # listed lengths are a precondition ("-1": a type with no numbers)
        allowed = sorted(n for n in lengths if n > 0)
        if not allowed:
            return None
        guard = "(?=(?:" + "|".join(f"[0-9]{{{n}}}" for n in allowed) + r")\Z)"
    return f"{guard}(?:{desc.national_number_pattern})\\Z"


@cache
def _typed_pattern(region: str) -> re.Pattern[str] | None:
    """For a region's metadata: matches the NSNs whose type phonenumbers knows there
    (``_number_type_helper(nsn, metadata) != UNKNOWN``), all the descriptions in one regex
    (each alternative anchored at both ends, so one matches iff that description does)."""
    metadata = PhoneMetadata.metadata_for_region(region, None)
    general = _desc_regex(metadata.general_desc) if metadata is not None else None
    if metadata is None or general is None:
        return None
    names = list(_TYPE_DESCS)
    if not metadata.same_mobile_and_fixed_line_pattern:
        names.append("mobile")
    types = [t for t in (_desc_regex(getattr(metadata, name)) for name in names) if t]
    if not types:
        return None
    return re.compile(f"(?={general})(?:" + "|".join(f"(?:{t})" for t in types) + ")")


def nsn_is_valid(country_code: int, nsn: str) -> bool:
    """``phonenumbers.is_valid_number`` of the number (``country_code``, ``nsn``): the region
    ``region_code_for_number`` picks (the only one of the code, or the first whose leading
    digits match or whose types know the number), then the types of that region. ``nsn``:
    the national significant number as the library writes it (leading zeros included)."""
    regions = COUNTRY_CODE_TO_REGION_CODE.get(country_code)
    if not regions:
        return False
    region: str | None = regions[0] if len(regions) == 1 else None
    if region is None:
        for candidate in regions:
            metadata = PhoneMetadata.metadata_for_region(candidate, None)
            if metadata is None:
                continue
            if metadata.leading_digits is not None:
                if re.match(metadata.leading_digits, nsn):
                    region = candidate
                    break
            elif _known_type(candidate, nsn):
                return True  # picked for knowing its type: valid there
        if region is None:
            return False
    if region == phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY:
        return bool(phonenumbers.is_valid_number(_number(country_code, nsn)))
    if phonenumbers.country_code_for_valid_region(region) != country_code:
        return False
    return _known_type(region, nsn)


def _number(country_code: int, nsn: str) -> phonenumbers.PhoneNumber:
    """The number (``country_code``, ``nsn``) as parse() builds it: leading zeros kept."""
    number = phonenumbers.PhoneNumber(country_code=country_code, national_number=int(nsn))
    phonenumbers.phonenumberutil._set_italian_leading_zeros_for_phone_number(nsn, number)
    return number


def _known_type(region: str, nsn: str) -> bool:
    pattern = _typed_pattern(region)
    return pattern is not None and pattern.match(nsn) is not None


class RegionScreen:
    """Necessary conditions for a candidate to parse and validate in one region at leniency
    VALID (see the module docstring): :meth:`may_match` False means the library's parse or
    its verification rejects the candidate. :meth:`verdict` also says when the screen has
    made the library's whole decision on the number itself (``OWN_CODE``)."""

    def __init__(self, region: str) -> None:
        metadata = PhoneMetadata.metadata_for_region(region)
        code = metadata.country_code if metadata is not None else None
        self.known = code is not None
        # The NSN is a suffix of the digits unless the transform rule inserts or reorders.
        self._plain_rules = (metadata is not None and code is not None
                             and _suffix_only_transform(metadata))
        if metadata is None or code is None or not self._plain_rules:
            return
        self.country_code = str(code)
        self._idd = re.compile(metadata.international_prefix or "(?!)")
        prefix = metadata.national_prefix_for_parsing
        self._national_prefix = re.compile(prefix) if prefix else None
        desc = _desc_alternatives(code)
        self._valid_nsn = re.compile(f"(?:{desc})")  # each alternative ends in \Z
        self._valid_suffix = re.compile(f"(?=[0-9]{{{_MIN_NSN}}})(?:{desc})")
        main = PhoneMetadata.metadata_for_region(region_code_for_country_code(code))
        self._main = main
        self._main_formats = _formats(main) if main is not None else ()

    def may_match(self, candidate: str) -> bool:
        plain = _PLAIN.fullmatch(candidate) is not None
        return self.may_match_parts(candidate, "".join(_DIGIT.findall(candidate)) if plain
                                    else None)

    def may_match_parts(self, candidate: str, digits: str | None) -> bool:
        """:meth:`may_match` given the candidate's digits when it is plain (else None)."""
        return self.verdict(candidate, digits) != REJECT

    def verdict(self, candidate: str, digits: str | None,
                valid: dict[tuple[str, str], bool] | None = None) -> int:
        """REJECT, PARSE or OWN_CODE (see there) for a candidate and its digits when it is
        plain (else None). ``valid``: validity of (country code, NSN) pairs decided before,
        shared by the regions of one country code (US and CA) within one text."""
        if not self.known:
            # parse() refuses a number without a leading plus in an unknown region.
            return PARSE if any(ch in candidate for ch in PLUS_CHARS) else REJECT
        if not self._plain_rules or digits is None:
            return PARSE
        if self._idd.match(digits):
            return PARSE  # the country code may come from the number: not screened
        if digits.startswith(self.country_code) or (
                self._national_prefix is not None and self._national_prefix.match(digits)):
            # A prefix may be stripped: some suffix of the digits must be a valid NSN.
            return PARSE if self._valid_suffix.search(digits[-_MAX_NSN:]) else REJECT
        # Nothing is stripped: the NSN is the digits, its country code the region's; the
        # verification's validity and national-prefix checks can be made on them directly.
        key = (self.country_code, digits)
        known = valid.get(key) if valid is not None else None
        if known is None:
            known = self._own_code_valid(digits)
            if valid is not None:
                valid[key] = known
        # Fewer than three digits: phonenumbers' viability pattern may still refuse it.
        return (OWN_CODE if len(digits) >= 3 else PARSE) if known else REJECT

    def _own_code_valid(self, digits: str) -> bool:
        """The verification at VALID of the number (this region's country code, ``digits``)
        that a parse stripping nothing makes (plain: no ``x`` for the x-character check)."""
        if (len(digits) > _MAX_NSN or self._valid_nsn.match(digits) is None
                or not self._national_prefix_ok(digits)):
            return False
        return nsn_is_valid(int(self.country_code), digits)

    def own_code_number(self, digits: str) -> phonenumbers.PhoneNumber:
        """The number parse() makes of plain ``digits`` that it strips nothing from, as the
        matcher returns it (only the country code, the national number and leading zeros)."""
        return _number(int(self.country_code), digits)

    def _national_prefix_ok(self, nsn: str) -> bool:
        """The matcher's national-prefix check (``_is_national_prefix_present_if_required``)
        for a number whose country code came from the default region, NSN and raw digits
        ``nsn``."""
        if self._main is None:
            return True
        for fmt in self._main_formats:
            if (fmt.leading is None or fmt.leading.match(nsn)) and fmt.pattern.fullmatch(nsn):
                if not fmt.prefix_required:
                    return True
                strip = phonenumbers.phonenumberutil._maybe_strip_national_prefix_carrier_code
                return bool(strip(nsn, self._main)[2])
        return True


def _suffix_only_transform(metadata: PhoneMetadata) -> bool:
    """Whether stripping a national prefix always leaves a suffix of the digits: no transform
    rule, or one that keeps only the pattern's last group, a run of digits ending it."""
    rule = metadata.national_prefix_transform_rule
    if not rule:
        return True
    pattern = metadata.national_prefix_for_parsing or ""
    groups = re.compile(pattern).groups
    return (rule in (f"\\{groups}", f"${groups}")
            and re.search(r"\(\\d\{\d+(?:,\d+)?\}\)\)\?$", pattern) is not None)


@cache
def region_screen(region: str) -> RegionScreen:
    return RegionScreen(region)


class _BoundedMatcher(phonenumbers.PhoneNumberMatcher):  # type: ignore[misc]
    """Applies the length bound and the region's screen to every candidate, inner matches
    included, before the costly parse."""

    def __init__(self, text: str, region: str, *, leniency: int, min_candidate_length: int,
                 screen: RegionScreen) -> None:
        super().__init__(text, region, leniency=leniency,
                         min_candidate_length=min_candidate_length)
        # The screen's rules are those of leniency VALID (Presidio's); other leniencies
        # verify differently, so they get only the length bound.
        self._screen = screen if self.leniency == Leniency.VALID else None

    def _parse_and_verify(self, candidate: str, offset: int) -> PhoneNumberMatch | None:
        # Count what can become a digit of the number (digits, vanity letters), not length.
        alnum = sum(1 for ch in candidate if ch.isalnum())
        if alnum < self._min_candidate_length:
            return None
        if self._screen is not None and not self._screen.may_match(candidate):
            return None
        match: PhoneNumberMatch | None = super()._parse_and_verify(candidate, offset)
        return match


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One parse the matcher makes: the candidate (or inner group), where it starts, how many
    of its characters can become digits, and its digits when it is plain (else None)."""

    text: str
    offset: int
    alnum: int
    digits: str | None


@dataclass(frozen=True, slots=True)
class _Outer:
    """One outer candidate of the matcher and the parses it leads to, in the matcher's order
    (the whole candidate, then its inner groups; none when it is skipped as a date or a time
    stamp)."""

    length: int
    end: int
    attempts: tuple[_Attempt, ...]


def _attempt(text: str, offset: int) -> _Attempt:
    if _PLAIN.fullmatch(text) is not None:
        digits = "".join(_DIGIT.findall(text))
        return _Attempt(text, offset, len(digits), digits)
    return _Attempt(text, offset, sum(1 for ch in text if ch.isalnum()), None)


class _Recorder(phonenumbers.PhoneNumberMatcher):  # type: ignore[misc]
    """Walks a text as every region's matcher does until its first match, recording the
    parses it would make instead of making them. The walk (the candidate pattern, trimming,
    the date and time-stamp skips, the inner groups) does not depend on the region."""

    def __init__(self, text: str, min_candidate_length: int) -> None:
        # Outer candidates shorter than every region's bound are skipped by every matcher
        # (uncounted, without inner matches): the walk skips them too.
        super().__init__(text, None, max_tries=sys.maxsize,
                         min_candidate_length=min_candidate_length)
        self.outers: list[_Outer] = []
        self._current: list[_Attempt] = []

    def _extract_match(self, candidate: str, offset: int) -> None:
        self._current = []
        # Its inner groups have no more digit-like characters than it: when it is below
        # every region's bound, so are they, and no region would parse any of them.
        if sum(1 for ch in candidate if ch.isalnum()) >= self._min_candidate_length:
            super()._extract_match(candidate, offset)
        self.outers.append(_Outer(len(candidate), offset + len(candidate), tuple(self._current)))

    def _parse_and_verify(self, candidate: str, offset: int) -> None:
        self._current.append(_attempt(candidate, offset))

    def walk(self) -> list[_Outer]:
        self._find(0)
        return self.outers


# The walk is shared through private methods of phonenumbers' matcher: without them, each
# region runs the plain matcher.
_SHARED_WALK = all(
    callable(getattr(phonenumbers.PhoneNumberMatcher, name, None))
    for name in ("_parse_and_verify", "_extract_match", "_find")
) and hasattr(phonenumbers.PhoneNumberMatcher(" ", "US"), "_search_index")
# The checks phonenumbers' _parse_and_verify makes on a candidate and the text around it
# before it parses: made here for an OWN_CODE candidate instead of the parse. Without them,
# every candidate the screen passes is parsed.
_OWN_CODE_MATCH = (
    _SHARED_WALK
    and all(hasattr(phonenumbermatcher, name)
            for name in ("_MATCHING_BRACKETS", "_PUB_PAGES", "_LEAD_PATTERN"))
    and callable(getattr(re_util, "fullmatch", None))
    and all(callable(getattr(phonenumbers.PhoneNumberMatcher, name, None))
            for name in ("_is_invalid_punctuation_symbol", "_is_latin_letter")))


def _own_code_match(matcher: phonenumbers.PhoneNumberMatcher, candidate: str, offset: int,
                    number: phonenumbers.PhoneNumber) -> PhoneNumberMatch | None:
    """What phonenumbers' ``_parse_and_verify`` returns at leniency VALID for a candidate the
    screen judged OWN_CODE: its checks of the brackets, of "page" references and of the
    characters either side of the candidate (a Latin letter, a currency sign or a percent
    sign next to it: no number), then the match of ``number``, which the parse would have
    made and the verification accepted (``RegionScreen.verdict``)."""
    if (not re_util.fullmatch(phonenumbermatcher._MATCHING_BRACKETS, candidate)
            or phonenumbermatcher._PUB_PAGES.search(candidate)):
        return None
    text = matcher.text
    if offset > 0 and not phonenumbermatcher._LEAD_PATTERN.match(candidate):
        previous = text[offset - 1]
        if matcher._is_invalid_punctuation_symbol(previous) or matcher._is_latin_letter(previous):
            return None
    end = offset + len(candidate)
    if end < len(text):
        following = text[end]
        if (matcher._is_invalid_punctuation_symbol(following)
                or matcher._is_latin_letter(following)):
            return None
    return PhoneNumberMatch(offset, candidate, number)


def _region_matches(text: str, region: str, leniency: int, outers: list[_Outer],
                    valid: dict[tuple[str, str], bool]) -> list[PhoneNumberMatch]:
    """The matches of ``region``'s matcher on ``text``, from the shared walk: each recorded
    parse is screened (length bound, region screen) and only survivors are parsed, except
    those whose number the screen decided (OWN_CODE). After a match the matcher resumes at
    its end; where that is not the end of its outer candidate (an inner match) the walk
    differs from the recorded one, and a real matcher takes over."""
    bound = min_candidate_length(region)
    screen = region_screen(region) if leniency == Leniency.VALID else None
    matcher = _BoundedMatcher(text, region, leniency=leniency, min_candidate_length=bound,
                              screen=region_screen(region))
    verify = phonenumbers.PhoneNumberMatcher._parse_and_verify
    found: list[PhoneNumberMatch] = []
    tries = 65535  # the matcher's default max_tries, counted as it counts them
    for outer in outers:
        if outer.length < bound:
            continue  # the matcher skips it, uncounted
        match = None
        for position, attempt in enumerate(outer.attempts):
            if position and tries <= 0:
                break
            if attempt.alnum >= bound:
                verdict = (PARSE if screen is None
                           else screen.verdict(attempt.text, attempt.digits, valid))
                if (verdict == OWN_CODE and _OWN_CODE_MATCH and screen is not None
                        and attempt.digits is not None):
                    match = _own_code_match(matcher, attempt.text, attempt.offset,
                                            screen.own_code_number(attempt.digits))
                elif verdict != REJECT:
                    match = verify(matcher, attempt.text, attempt.offset)
                if match is not None:
                    break
            if position:
                tries -= 1
        if match is None:
            tries -= 1
            if tries <= 0:
                return found
            continue
        found.append(match)
        if match.end != outer.end:  # resumes inside the candidate: the real matcher goes on
            matcher._search_index = match.end
            matcher._max_tries = tries
            found.extend(matcher)
            return found
    return found


class FastPhoneRecognizer(PhoneRecognizer):  # type: ignore[misc]
    """Same findings as :class:`PhoneRecognizer`: one walk of the text shared by the regions,
    candidates too short or otherwise unable to be valid skipped before the parse."""

    def load(self) -> None:
        # Compute the bounds (reads all phonenumbers metadata) at start, not on a request.
        for region in self.supported_regions:
            min_candidate_length(region)
            region_screen(region)
            metadata = PhoneMetadata.metadata_for_region(region, None)
            code = metadata.country_code if metadata is not None else None
            for other in COUNTRY_CODE_TO_REGION_CODE.get(code or 0, ()):  # for nsn_is_valid
                _typed_pattern(other)

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        results: list[RecognizerResult] = []
        has_plus = any(ch in text for ch in PLUS_CHARS)
        leniency = self.leniency if self.leniency is not None else 1
        # An unknown region parses only numbers with a plus sign: without one, skipped.
        regions = [r for r in self.supported_regions if has_plus or region_screen(r).known]
        outers = (_Recorder(text, min(map(min_candidate_length, regions), default=1)).walk()
                  if _SHARED_WALK and regions else None)
        found: set[tuple[int, int]] = set()
        valid: dict[tuple[str, str], bool] = {}  # shared by regions of one country code
        for region in regions:
            matches: Iterable[PhoneNumberMatch] = (
                _region_matches(text, region, leniency, outers, valid) if outers is not None
                else phonenumbers.PhoneNumberMatcher(
                    text, region, leniency=leniency,
                    min_candidate_length=min_candidate_length(region)))
            for match in matches:
                # Most numbers are found by several regions. Their results are equal (same
                # entity, span and score) and remove_duplicates keeps the first of equal
                # results (a set keeps the element first added): only that one is made.
                span = (match.start, match.end)
                if span in found:
                    continue
                found.add(span)
                # As Presidio does: the explanation names the number's own region if known.
                try:
                    parsed = phonenumbers.parse(text[match.start : match.end])
                    found_region = phonenumbers.region_code_for_number(parsed)
                except NumberParseException:
                    found_region = region
                results.append(
                    self._get_recognizer_result(  # type: ignore[no-untyped-call]
                        match, text, found_region, nlp_artifacts)
                )
        deduplicated: list[RecognizerResult] = EntityRecognizer.remove_duplicates(results)
        return deduplicated
