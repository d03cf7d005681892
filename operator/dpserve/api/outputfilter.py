"""Output-filter section of a PrivateModel: what the sidecar scans for and what it does."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, get_args

from pydantic import Field

from dpserve.api.base import ApiModel, Decimal, defaulted
from dpserve.api.cel import CelRule
from dpserve.api.validation import CelModel

# Every entity the API accepts is detected by the shipped image (IMAGE_DETECTS); the sidecar
# refuses to start on a config naming one it has no recognizer for (PiiAnalyzer raises
# UndetectableEntityError), and tests/runtime/test_names.py checks that its recognizers cover
# exactly this enum.
PiiEntity = Literal[
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "US_SSN",
    "IP_ADDRESS",
    "IBAN_CODE",
    "URL",
    "PERSON",
    "LOCATION",
]
# PERSON / LOCATION: the names gazetteer (public name and place lists plus context rules,
# dpserve_runtime.filter.names), and spaCy NER as well when the image ships a trained model.
NER_ENTITIES: tuple[PiiEntity, ...] = ("PERSON", "LOCATION")
# Presidio's offline pattern recognizers.
PATTERN_ENTITIES: tuple[PiiEntity, ...] = tuple(
    e for e in get_args(PiiEntity) if e not in NER_ENTITIES
)
# What the shipped inference image detects, by recognizer family.
IMAGE_DETECTS: dict[str, tuple[PiiEntity, ...]] = {
    "presidio-patterns": PATTERN_ENTITIES,
    "names-gazetteer": NER_ENTITIES,
}
DEFAULT_ENTITIES: list[PiiEntity] = [
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "US_SSN",
    "IP_ADDRESS",
    "IBAN_CODE",
]
FilterAction = Literal["redact", "block", "log"]


class VerbatimGuard(ApiModel):
    """Blocks answers that reproduce a window of training text (compared by hash only)."""

    enabled: bool = True
    window_tokens: Annotated[int, Field(ge=4, le=1024)] = 50


class OutputFilter(CelModel):
    action: FilterAction = "redact"
    # At least one: an empty list would switch PII scanning off without saying so. Findings
    # can be recorded without changing answers with action: log.
    entities: Annotated[list[PiiEntity], Field(max_length=16)] = defaulted(
        lambda: list(DEFAULT_ENTITIES)
    )
    score_threshold: Decimal = "0.5"
    # Per-entity overrides of scoreThreshold, e.g. {"PHONE_NUMBER": "0.7"}.
    entity_thresholds: Annotated[dict[PiiEntity, Decimal], Field(max_length=16)] = defaulted(dict)
    verbatim_guard: VerbatimGuard = defaulted(VerbatimGuard)

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule("size(self.entities) >= 1",
                "entities must name at least one entity: an empty list would turn PII "
                "scanning off (to record findings without changing answers, use action: log)",
                ".entities"),
        CelRule("double(self.scoreThreshold) >= 0.0 && double(self.scoreThreshold) <= 1.0",
                "scoreThreshold must satisfy 0 <= scoreThreshold <= 1", ".scoreThreshold"),
        CelRule("self.entityThresholds.all(k, double(self.entityThresholds[k]) >= 0.0 && "
                "double(self.entityThresholds[k]) <= 1.0)",
                "entityThresholds values must satisfy 0 <= threshold <= 1",
                ".entityThresholds"),
    )
