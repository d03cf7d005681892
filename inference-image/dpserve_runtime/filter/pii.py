"""PII detection and redaction with Presidio, fully offline and without wasted work.

The engine is built once. What Presidio's default AnalyzerEngine does on every call and
what this module does instead, with the same findings:

- NLP pass. The default engine runs a spaCy pipeline over every text, for NER and for the
  lemmas its context enhancer compares with each recognizer's context words. Offline there is
  no trained spaCy model unless the image ships one. Without one, the only pipeline that loads
  is a blank one, which has no lemmatizer: every lemma is empty, so context enhancement can
  never raise a score. This module then uses Presidio's own ``NoOpNlpEngine`` and skips the
  enhancer (same findings, no tokenisation, no token walk, no copy of the results). With a
  trained model installed it uses that model, for NER (PERSON, LOCATION) when asked, and
  otherwise lazily: only for a text where a pattern recognizer found something (context
  enhancement only raises scores of existing results, so a text with no raw result has no
  finding either way).
- Prefilters. Each pattern entity's recognizer cannot match a text lacking what its pattern
  requires (a phone number needs a digit, a card, SSN or IBAN its run of digit groups, an
  e-mail ``@`` and a word character, an IP address ``digit.digit``, ``::`` or a hex digit on
  either side of ``:``, a URL a ``.`` before a letter: :data:`REQUIRED`), so those recognizers
  are not run on such a text. ``tests/runtime/test_pii.py``
  checks each rule against the recognizers. :meth:`PiiAnalyzer.may_contain_pii` searches
  their union once, so the scanner skips a text no requested entity can match (most keys
  and values of a model's answer) without a cache digest or a recognizer call.
- The phone recognizer (eight regional phonenumbers matchers, the slowest part) walks the
  text once for all regions and parses only candidates that pass a region's necessary
  conditions (length, country code, national number pattern, national prefix): see
  :mod:`dpserve_runtime.filter.phone`.
- The URL, e-mail and IP address patterns run with the same matches, each tried only at
  candidate starts found by linear scans (:mod:`dpserve_runtime.filter.anchored`; Presidio's
  own ``finditer`` spends about 1.5 ms per start position in a run of dots on the URL
  pattern, and tries the 500-character IPv6 pattern at every position).
- Without an NLP model the recognizers are called directly (same thresholds and duplicate
  rule as ``AnalyzerEngine.analyze``), skipping the engine's per-call overhead.
- A bounded cache of findings (and of the redacted form) per text, since model outputs such
  as class labels repeat; keyed by a digest, so the cache never holds the PII values.
- The e-mail recognizer validates the domain with tldextract, whose default extractor
  fetches the public suffix list on first use; this module's extractor uses the snapshot
  bundled with tldextract and never touches the network.

PERSON and LOCATION come from :class:`~dpserve_runtime.filter.names.NamesRecognizer` (public
name and place lists plus context rules, always in the image), and also from the spaCy NER
of a trained model when the image ships one. An entity asked for that no recognizer here can
detect makes the constructor raise :class:`UndetectableEntityError` naming it (the sidecar
then exits at start), unless the caller turned detection off explicitly
(``detect_spacy_model=False`` / ``names_gazetteer=False``; then it is listed in
``unavailable``).

Bounds for the streaming filter: :attr:`PiiAnalyzer.max_match_chars` (longest finding any
enabled recognizer can produce) and :attr:`PiiAnalyzer.lookaround_chars` (furthest any of
them reads beyond a finding), per entity in :meth:`PiiAnalyzer.match_bounds`. Presidio's
e-mail, URL and IPv6 regexes have unbounded repetitions and spaCy NER reads the whole
sentence: those are :data:`UNBOUNDED`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import re._compiler as sre_compile  # the stdlib's regex compiler, for one character class
import re._parser as sre_parse  # the stdlib's regex parser, for the patterns' widths
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import regex
import tldextract
from presidio_analyzer import AnalyzerEngine, EntityRecognizer, RecognizerResult
from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine, NoOpNlpEngine
from presidio_analyzer.predefined_recognizers import (
    EmailRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    UrlRecognizer,
)
from presidio_analyzer.recognizer_registry import RecognizerRegistry, RecognizerRegistryProvider
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig
from presidio_anonymizer.entities import RecognizerResult as AnonymizerResult
from spacy.tokens import Doc
from spacy.vocab import Vocab

from dpserve.api.outputfilter import NER_ENTITIES, PATTERN_ENTITIES
from dpserve_runtime.filter.anchored import (
    LinearEmailRecognizer,
    LinearIpRecognizer,
    LinearUrlRecognizer,
)
from dpserve_runtime.filter.names import SCORE_STRONG as NAMES_SCORE_CEILING
from dpserve_runtime.filter.names import GazetteerDataError, NamesRecognizer
from dpserve_runtime.filter.phone import FastPhoneRecognizer

logger = logging.getLogger(__name__)

LANGUAGE: Final = "en"
# Installed spaCy packages tried in order when env DPSERVE_SPACY_MODEL names none.
SPACY_MODEL_CANDIDATES: Final = ("en_core_web_lg", "en_core_web_md", "en_core_web_sm")

# A text with no match of REQUIRED[e] cannot yield a finding of entity e (see module doc).
# `regex` with Presidio's flags, so \d is the same Unicode digit class its patterns use.
_FLAGS: Final = regex.DOTALL | regex.MULTILINE | regex.IGNORECASE
# Each rule is what every pattern of the entity's Presidio recognizer must contain, in that
# pattern's own character classes: e-mail "@" and a word character; URL "." then a TLD
# letter; phone a digit (phonenumbers reads any script's digits); card four digits and three
# groups of at least three (its first group is four digits, the others 3-4 and 3-5, each
# after an optional "-" or " "); SSN nine digits in 3-2-4 groups with at most one "-", " "
# or "." between groups (its five patterns: 5-4, 3-6, 3-2-4 and 9 digits are all of this
# shape); IBAN two letters, two digits and two groups of four alphanumerics; IP an IPv4
# "digit.digit", or in IPv6 a hex digit, ":", a hex digit, or "::" (every IPv6 alternative has
# eight groups or an elision). A realistic text has digits (dates, doses, counts) almost
# always, but rarely these shapes: the card, SSN, IBAN and IP recognizers then never run.
REQUIRED: Final[Mapping[str, regex.Pattern[str]]] = {
    "EMAIL_ADDRESS": regex.compile(r"@\w", _FLAGS),
    "PHONE_NUMBER": regex.compile(r"\d", _FLAGS),
    "CREDIT_CARD": regex.compile(r"\d{4}[- ]?\d{3}\d?[- ]?\d{3}\d?[- ]?\d{3}", _FLAGS),
    "US_SSN": regex.compile(r"[0-9]{3}[- .]?[0-9]{2}[- .]?[0-9]{4}", _FLAGS),
    "IBAN_CODE": regex.compile(r"[A-Z]{2}[0-9]{2}[ -]?[A-Z0-9]{4}[ -]?[A-Z0-9]{4}", _FLAGS),
    "IP_ADDRESS": regex.compile(r"[0-9]\.[0-9]|[0-9A-Fa-f]:[0-9A-Fa-f]|::", _FLAGS),
    "URL": regex.compile(r"\.[a-z]", _FLAGS),
    # every PERSON / LOCATION rule needs a word token (a letter)
    "PERSON": regex.compile(r"[\p{L}]", _FLAGS),
    "LOCATION": regex.compile(r"[\p{L}]", _FLAGS),
}


# Highest score a recognizer gives without context enhancement, where that is below 1.
SCORE_CEILING: Final[Mapping[str, float]] = {
    "PHONE_NUMBER": float(PhoneRecognizer.SCORE),
    "PERSON": NAMES_SCORE_CEILING,
    "LOCATION": NAMES_SCORE_CEILING,
}
UNBOUNDED: Final = sys.maxsize
# phonenumbers refuses to parse a string longer than this, so no valid match is longer; its
# matcher reads the candidate around a match (bounded the same way) and one character on
# either side of it.
PHONE_MAX_CHARS: Final = 250


class UndetectableEntityError(ValueError):
    """An entity was asked for that no recognizer in this image can detect."""

    def __init__(self, entities: Sequence[str], reason: str) -> None:
        self.entities = tuple(entities)
        super().__init__(f"entities {', '.join(self.entities)} cannot be detected: {reason}")


@lru_cache(maxsize=1)
def _whitespace() -> tuple[str, ...]:
    """Every whitespace character, for "can a match of this pattern contain whitespace?"."""
    return tuple(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
# Presidio compiles its patterns with these flags (PatternRecognizer.global_regex_flags).
_PRESIDIO_FLAGS: Final = re.DOTALL | re.MULTILINE | re.IGNORECASE


@dataclass(frozen=True, slots=True)
class MatchBounds:
    """What a recognizer's findings can look like, for the streaming filter's hold-back."""

    max_chars: int  # longest finding; UNBOUNDED when its pattern has an unbounded repetition
    lookaround_chars: int  # furthest it reads beyond a finding
    whitespace: bool  # a finding may contain a whitespace character


def _regex_bounds(pattern: str) -> MatchBounds:
    """A Presidio pattern's bounds. Lookarounds: a word boundary reads one character, an
    assertion its width."""
    try:
        parsed = sre_parse.parse(pattern, _PRESIDIO_FLAGS)
    except (re.error, OverflowError, RecursionError):
        return MatchBounds(UNBOUNDED, UNBOUNDED, True)
    width = parsed.getwidth()[1]
    return MatchBounds(UNBOUNDED if width >= sre_parse.MAXREPEAT else int(width),
                       _lookaround(parsed), _may_match_whitespace(parsed))


def _may_match_whitespace(parsed: Any) -> bool:
    """False only when no single-character item of the pattern matches a whitespace
    character (then no match contains one)."""
    for op, arg in parsed:
        name = str(op)
        if name == "LITERAL":
            if chr(arg) in _whitespace():
                return True
        elif name == "IN":
            item = sre_compile.compile(sre_parse.SubPattern(parsed.state, [(op, arg)]),
                                       _PRESIDIO_FLAGS)
            if any(item.fullmatch(ch) for ch in _whitespace()):
                return True
        elif name == "SUBPATTERN":
            if _may_match_whitespace(arg[-1]):
                return True
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            if _may_match_whitespace(arg[2]):
                return True
        elif name == "BRANCH":
            if any(_may_match_whitespace(b) for b in arg[1]):
                return True
        elif name in ("AT", "ASSERT", "ASSERT_NOT"):
            continue  # consume nothing
        else:  # ANY, NOT_LITERAL, CATEGORY, back-references...: assume it may
            return True
    return False


def _lookaround(parsed: Any) -> int:
    reach = 0
    for op, arg in parsed:
        name = str(op)
        if name in ("ASSERT", "ASSERT_NOT"):
            width = arg[1].getwidth()[1]
            reach = max(reach, UNBOUNDED if width >= sre_parse.MAXREPEAT else int(width))
        elif name == "AT":
            reach = max(reach, 1)
        elif name in ("SUBPATTERN",):
            reach = max(reach, _lookaround(arg[-1]))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            reach = max(reach, _lookaround(arg[2]))
        elif name == "BRANCH":
            reach = max([reach, *(_lookaround(b) for b in arg[1])])
        elif name in ("GROUPREF_EXISTS",):
            reach = UNBOUNDED  # not used by Presidio's patterns: no bound claimed
    return reach


def recognizer_bounds(recognizer: EntityRecognizer) -> MatchBounds:
    """One recognizer's bounds as this module configures it (no context enhancement without
    a trained model)."""
    if isinstance(recognizer, NamesRecognizer):
        return MatchBounds(recognizer.max_match_chars, recognizer.lookaround_chars, True)
    if isinstance(recognizer, PhoneRecognizer):
        return MatchBounds(PHONE_MAX_CHARS, PHONE_MAX_CHARS + 1, True)
    patterns = getattr(recognizer, "patterns", None)
    if not patterns:  # a model-based recognizer (spaCy NER): reads the whole sentence
        return MatchBounds(UNBOUNDED, UNBOUNDED, True)
    bounds = [_regex_bounds(p.regex) for p in patterns]
    return MatchBounds(max(b.max_chars for b in bounds),
                       max(b.lookaround_chars for b in bounds),
                       any(b.whitespace for b in bounds))


@lru_cache(maxsize=1)
def offline_tld_extractor() -> tldextract.TLDExtract:
    """tldextract on its bundled public-suffix snapshot: no fetch, no cache directory."""
    return tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)


def offline_domain_check(pattern_text: str) -> bool:
    """Presidio's e-mail domain check (tldextract finds a registered domain), offline."""
    return bool(offline_tld_extractor()(pattern_text).fqdn != "")


class OfflineEmailRecognizer(EmailRecognizer):  # type: ignore[misc]
    """Presidio's e-mail recognizer with the domain check on the bundled suffix snapshot
    (the reference engine's; the analyzer uses :class:`LinearEmailRecognizer`)."""

    def validate_result(self, pattern_text: str) -> bool:
        return offline_domain_check(pattern_text)


def installed_spacy_model() -> str | None:
    """The trained spaCy English model the image ships, if any (never downloads)."""
    import spacy.util

    named = os.environ.get("DPSERVE_SPACY_MODEL", "").strip()
    if named and Path(named).is_dir():  # a pipeline saved to disk in the image
        return named
    for name in (named,) if named else SPACY_MODEL_CANDIDATES:
        if spacy.util.is_package(name):
            return name
    return None


def default_recognizers(entities: Iterable[str]) -> list[EntityRecognizer]:
    """Presidio's default (YAML-configured) English recognizers for ``entities``, offline.

    The registry is built exactly as ``AnalyzerEngine()`` builds it, so each recognizer has
    the default patterns, context words, regions and flags. Swapped for subclasses with the
    same findings: e-mail and URL (:mod:`dpserve_runtime.filter.anchored`: linear time; the
    e-mail domain check offline), phone (:mod:`dpserve_runtime.filter.phone`).
    """
    wanted = set(entities)
    registry = RecognizerRegistryProvider(
        registry_configuration={"supported_languages": [LANGUAGE]}
    ).create_recognizer_registry()
    chosen: list[EntityRecognizer] = []
    for recognizer in registry.recognizers:
        if not wanted & set(recognizer.supported_entities):
            continue
        if type(recognizer) is EmailRecognizer:
            recognizer = LinearEmailRecognizer(
                offline_domain_check, context=recognizer.context,
                supported_language=recognizer.supported_language,
            )
        elif type(recognizer) is UrlRecognizer:
            recognizer = LinearUrlRecognizer(
                context=recognizer.context, supported_language=recognizer.supported_language
            )
        elif type(recognizer) is IpRecognizer:
            recognizer = LinearIpRecognizer(
                context=recognizer.context, supported_language=recognizer.supported_language
            )
        elif type(recognizer) is PhoneRecognizer:
            recognizer = FastPhoneRecognizer(
                context=recognizer.context,
                supported_language=recognizer.supported_language,
                supported_regions=recognizer.supported_regions,
                leniency=recognizer.leniency,
            )
        chosen.append(recognizer)
    return chosen


class NoTextContextEnhancer(ContextAwareEnhancer):  # type: ignore[misc]
    """Context enhancement for an NLP engine that yields no tokens: nothing to enhance.

    Presidio's lemma enhancer, given the no-op engine's empty artifacts, deep-copies the
    results and returns them unchanged (its context words come from lemmas, and the sidecar
    passes no explicit context); this skips the copy.
    """

    def __init__(self) -> None:
        super().__init__(context_similarity_factor=0.0, min_score_with_context_similarity=0.0,
                         context_prefix_count=0, context_suffix_count=0)

    def enhance_using_context(
        self, text: str, raw_results: list[RecognizerResult], nlp_artifacts: NlpArtifacts,
        recognizers: list[EntityRecognizer], context: list[str] | None = None,
    ) -> list[RecognizerResult]:
        return raw_results


@dataclass(frozen=True, slots=True)
class Finding:
    entity_type: str
    start: int
    end: int
    score: float


def _finding(result: RecognizerResult) -> Finding:
    return Finding(result.entity_type, result.start, result.end, float(result.score))


class PiiAnalyzer:
    """Finds and redacts PII entities in model outputs; build once, call from any thread.

    ``score_threshold`` applies to every entity without an ``entity_thresholds`` entry, capped
    at :data:`SCORE_CEILING` (else a phone number, scored 0.4 by Presidio without context
    words, would never reach the usual 0.5). Explicit per-entity thresholds are used as given;
    ``undetectable`` lists entities whose threshold their recognizer cannot reach.

    PERSON / LOCATION: the names gazetteer (``names_gazetteer``; None: on when
    ``detect_spacy_model`` is, i.e. "detect the installed NER data") and a trained spaCy model
    when one is installed or given. If neither is available for a requested entity, the
    constructor raises :class:`UndetectableEntityError` (never a silent gap) unless detection
    was turned off explicitly; then the entity is listed in ``unavailable``.
    """

    def __init__(
        self,
        entities: Sequence[str],
        score_threshold: float = 0.5,
        entity_thresholds: Mapping[str, float] | None = None,
        *,
        spacy_model: str | None = None,
        detect_spacy_model: bool = True,
        names_gazetteer: bool | None = None,
        cache_size: int = 4096,
        cache_max_chars: int = 4096,
    ) -> None:
        thresholds = dict(entity_thresholds or {})
        unknown = (set(entities) | set(thresholds)) - set(PATTERN_ENTITIES) - set(NER_ENTITIES)
        if unknown:
            raise ValueError(f"unsupported entities: {sorted(unknown)}")
        self.entities: tuple[str, ...] = tuple(dict.fromkeys(entities))
        model = spacy_model or (installed_spacy_model() if detect_spacy_model else None)
        wanted_ner = [e for e in self.entities if e in NER_ENTITIES]
        # The names gazetteer: on unless turned off; by default it follows detect_spacy_model
        # ("detect the installed NER data"), so detect_spacy_model=False means patterns only.
        use_gazetteer = detect_spacy_model if names_gazetteer is None else names_gazetteer
        names_recognizer: NamesRecognizer | None = None
        gazetteer_error = "the names gazetteer is turned off and no spaCy model is installed"
        if wanted_ner and use_gazetteer:
            try:  # Presidio's constructor loads the data (checked against pinned digests)
                names_recognizer = NamesRecognizer(wanted_ner, LANGUAGE)
            except GazetteerDataError as exc:
                names_recognizer, gazetteer_error = None, str(exc)
        self.name_entities: tuple[str, ...] = tuple(wanted_ner) if names_recognizer else ()
        # NER entities asked for but not detectable here (no gazetteer, no spaCy model).
        self.unavailable: tuple[str, ...] = (
            tuple(wanted_ner) if model is None and names_recognizer is None else ())
        if self.unavailable:
            if use_gazetteer:  # asked for, and the image cannot provide it: never silent
                raise UndetectableEntityError(self.unavailable, gazetteer_error)
            logger.warning(
                "names gazetteer turned off and no spaCy model installed: entities %s will "
                "not be detected", list(self.unavailable),
            )
        self.pattern_entities = tuple(e for e in self.entities if e in PATTERN_ENTITIES)
        # The general threshold is capped at what an entity's recognizer scores without
        # context words (Presidio's phone recognizer: 0.4; only context words, which need a
        # trained model's lemmas, lift it), so listing an entity never silently disables it.
        # An explicit per-entity threshold is taken as given.
        self.thresholds = {
            e: thresholds[e] if e in thresholds else min(score_threshold, SCORE_CEILING.get(e, 1.0))
            for e in self.entities
        }
        self.undetectable: tuple[str, ...] = tuple(
            e for e in self.entities
            if (model is None or e in NER_ENTITIES) and e not in self.unavailable
            and self.thresholds[e] > SCORE_CEILING.get(e, 1.0)
        )
        for entity in self.undetectable:
            logger.warning(
                "%s threshold %s is above its recognizer's score %s without context words: "
                "it will not be reported", entity, self.thresholds[entity], SCORE_CEILING[entity])
        self.ner_entities = tuple(wanted_ner) if model is not None else ()
        self.spacy_model = model
        # One search for "could any requested entity match?": the union of the prefilters,
        # or None when spaCy NER runs (its model may find an entity anywhere).
        self._prefiltered = self.pattern_entities + self.name_entities
        self._any_candidate: regex.Pattern[str] | None = None
        if not self.ner_entities:
            self._any_candidate = regex.compile(
                "|".join(dict.fromkeys(f"(?:{REQUIRED[e].pattern})"
                                       for e in self._prefiltered)) or "(?!)",
                _FLAGS,
            )

        recognizers = default_recognizers(self.pattern_entities)
        if names_recognizer is not None:
            recognizers.append(names_recognizer)
        nlp_engine: NlpEngine
        if model is None:
            nlp_engine = NoOpNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "no_op"}])
        else:
            from presidio_analyzer.nlp_engine import SpacyNlpEngine

            # An installed package: SpacyNlpEngine only downloads models that are missing.
            nlp_engine = SpacyNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": model}])
        nlp_engine.load()
        registry = RecognizerRegistry(recognizers=recognizers, supported_languages=[LANGUAGE])
        if self.ner_entities:
            registry.add_nlp_recognizer(nlp_engine=nlp_engine)
        for recognizer in registry.recognizers:
            recognizer.score_thresholds = {
                entity: self.thresholds[entity]
                for entity in recognizer.supported_entities
                if entity in self.thresholds
            }
        self.engine = AnalyzerEngine(
            registry=registry, nlp_engine=nlp_engine, supported_languages=[LANGUAGE],
            context_aware_enhancer=NoTextContextEnhancer() if model is None else None,
        )
        # Lazy NLP: with a trained model but only pattern entities, first run the recognizers
        # on empty artifacts; the pipeline runs only when they found something.
        self._lazy_nlp = model is not None and not self.ner_entities
        # Without an NLP model the engine's work around the recognizers is pure overhead:
        # it builds empty NLP artifacts, copies the registry per call, runs a context
        # enhancer that can change nothing (NoTextContextEnhancer) and resolves thresholds
        # through recognizer ids. _analyze_direct calls the same recognizers and applies the
        # same threshold and duplicate rules (AnalyzerEngine.analyze's order: recognizers,
        # per-entity thresholds, EntityRecognizer.remove_duplicates).
        self._direct: tuple[tuple[EntityRecognizer, frozenset[str]], ...] | None = (
            tuple((r, frozenset(r.supported_entities)) for r in registry.recognizers)
            if model is None else None)
        bounds = [recognizer_bounds(r) for r in registry.recognizers]
        # Longest finding any enabled recognizer can produce, and the furthest any of them
        # reads beyond a finding (context words, boundaries): the stream filter's hold-back.
        self.max_match_chars: int = max((b.max_chars for b in bounds), default=0)
        self.lookaround_chars: int = max((b.lookaround_chars for b in bounds), default=0)
        # Where max_match_chars is UNBOUNDED (e-mail, URL, IPv6 patterns): the longest finding
        # of the bounded recognizers, and whether every unbounded one's findings are free of
        # whitespace (then such a finding lies within the run of non-whitespace characters
        # around it, which a stream filter can hold back instead).
        self.max_bounded_match_chars: int = max(
            (b.max_chars for b in bounds if b.max_chars < UNBOUNDED), default=0)
        self.unbounded_matches_have_no_whitespace: bool = not any(
            b.whitespace for b in bounds if b.max_chars >= UNBOUNDED)
        self._bounds: dict[str, MatchBounds] = {}
        for recognizer, bound in zip(registry.recognizers, bounds, strict=True):
            for entity in recognizer.supported_entities:
                if entity not in self.thresholds:
                    continue
                old = self._bounds.get(entity, MatchBounds(0, 0, False))
                self._bounds[entity] = MatchBounds(
                    max(old.max_chars, bound.max_chars),
                    max(old.lookaround_chars, bound.lookaround_chars),
                    old.whitespace or bound.whitespace)
        self._empty_artifacts = NlpArtifacts(
            entities=[], tokens=Doc(Vocab(), words=[]), tokens_indices=[], lemmas=[],
            nlp_engine=nlp_engine, language=LANGUAGE,
        )
        self._anonymizer = AnonymizerEngine()  # type: ignore[no-untyped-call]
        self._operators = {"DEFAULT": OperatorConfig("replace")}  # "<ENTITY_TYPE>"
        self._cache: OrderedDict[bytes, tuple[Finding, ...]] = OrderedDict()
        # Redacted forms of cached texts with findings (the PII values replaced, never kept).
        self._redacted: OrderedDict[bytes, str] = OrderedDict()
        self._cache_lock = threading.Lock()  # the sidecar scans big answers in a worker thread
        self._cache_size = cache_size
        self._cache_max_chars = cache_max_chars

    def match_bounds(self) -> dict[str, MatchBounds]:
        """Per detected entity: its recognizers' bounds; UNBOUNDED where a regex has an
        unbounded repetition (e-mail, URL, IPv6) or a model reads the whole sentence (spaCy
        NER)."""
        return dict(self._bounds)

    def may_contain_pii(self, text: str) -> bool:
        """False only when no requested entity can be found in ``text`` (the prefilters):
        the scanner's fast path, which skips the cache and the recognizers."""
        if self._any_candidate is None:
            return bool(text)
        return self._any_candidate.search(text) is not None

    def candidate_entities(self, text: str) -> list[str]:
        """The requested entities whose recognizers can possibly match ``text``."""
        chosen: list[str] = [
            e for e in self._prefiltered if REQUIRED[e].search(text) is not None
        ]
        chosen.extend(e for e in self.ner_entities if e not in chosen)
        return chosen

    def analyze(self, text: str) -> list[Finding]:
        """Findings at or above their entity's threshold, as Presidio would report them."""
        if not text:
            return []
        key = self._key(text)
        if key is not None:
            with self._cache_lock:
                cached = self._cache.get(key)
                if cached is not None:
                    self._cache.move_to_end(key)
                    return list(cached)
        findings = self._analyze(text)
        if key is not None:
            with self._cache_lock:
                self._cache[key] = tuple(findings)
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return findings

    def _analyze_direct(self, text: str, entities: list[str],
                        recognizers: tuple[tuple[EntityRecognizer, frozenset[str]], ...]
                        ) -> list[Finding]:
        wanted = set(entities)
        results: list[RecognizerResult] = []
        for recognizer, supported in recognizers:
            if supported.isdisjoint(wanted):
                continue
            for result in recognizer.analyze(text=text, entities=entities,
                                             nlp_artifacts=self._empty_artifacts):
                if result.score >= self.thresholds.get(result.entity_type, 0.0):
                    results.append(result)
        return [_finding(r) for r in EntityRecognizer.remove_duplicates(results)]

    def _analyze(self, text: str) -> list[Finding]:
        entities = self.candidate_entities(text)
        if not entities:
            return []
        if self._direct is not None:
            return self._analyze_direct(text, entities, self._direct)
        if self._lazy_nlp:
            raw = self.engine.analyze(
                text, LANGUAGE, entities=entities, score_threshold=0.0,
                nlp_artifacts=self._empty_artifacts,
            )
            if not raw:
                return []
        results = self.engine.analyze(text, LANGUAGE, entities=entities)
        return [_finding(r) for r in results]

    def analyze_and_redact(self, text: str) -> tuple[list[Finding], str]:
        """Findings and the redacted text; both cached for repeated outputs."""
        findings = self.analyze(text)
        if not findings:
            return findings, text
        key = self._key(text)
        if key is not None:
            with self._cache_lock:
                redacted = self._redacted.get(key)
            if redacted is not None:
                return findings, redacted
        redacted = self.redact(text, findings)
        if key is not None:
            with self._cache_lock:
                self._redacted[key] = redacted
                if len(self._redacted) > self._cache_size:
                    self._redacted.popitem(last=False)
        return findings, redacted

    def _key(self, text: str) -> bytes | None:
        if not self._cache_size or len(text) > self._cache_max_chars:
            return None
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def redact(self, text: str, findings: Sequence[Finding]) -> str:
        """``text`` with every finding replaced by ``<ENTITY_TYPE>``, as Presidio's
        anonymizer replaces them (the anonymizer itself where findings overlap)."""
        if not findings:
            return text
        spans = sorted((f.start, f.end, f.entity_type) for f in findings)
        if _apart(text, spans):
            parts: list[str] = []
            at = 0
            for start, end, entity in spans:
                parts += (text[at:start], "<", entity, ">")
                at = end
            parts.append(text[at:])
            return "".join(parts)
        results = [AnonymizerResult(f.entity_type, f.start, f.end, f.score) for f in findings]
        return str(self._anonymizer.anonymize(text, results, self._operators).text)


def _apart(text: str, spans: Sequence[tuple[int, int, str]]) -> bool:
    """Whether the anonymizer replaces each of these sorted spans on its own: none empty, a
    character at least between two of them (the anonymizer resolves overlapping or touching
    results), and not only spaces between two of one entity type (it merges those into one
    replacement)."""
    previous_end, previous_entity = -1, ""
    for start, end, entity in spans:
        if start >= end or start <= previous_end:
            return False
        if entity == previous_entity and text[previous_end:start].strip(" ") == "":
            return False
        previous_end, previous_entity = end, entity
    return True
