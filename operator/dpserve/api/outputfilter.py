"""Output-filter section of a PrivateModel: what the sidecar scans for and what it does."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, get_args

from pydantic import Field

from dpserve.api.base import ApiModel, Decimal, defaulted
from dpserve.api.cel import CelRule
from dpserve.api.validation import CelModel

# Entities the offline pattern recognizers detect, plus NER_ENTITIES, which spaCy NER adds
# when the image ships a model. The sidecar's recognizers are keyed by these names.
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
NER_ENTITIES: tuple[PiiEntity, ...] = ("PERSON", "LOCATION")
PATTERN_ENTITIES: tuple[PiiEntity, ...] = tuple(
    e for e in get_args(PiiEntity) if e not in NER_ENTITIES
)
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
    entities: Annotated[list[PiiEntity], Field(max_length=16)] = defaulted(
        lambda: list(DEFAULT_ENTITIES)
    )
    score_threshold: Decimal = "0.5"
    # Per-entity overrides of scoreThreshold, e.g. {"PHONE_NUMBER": "0.7"}.
    entity_thresholds: Annotated[dict[PiiEntity, Decimal], Field(max_length=16)] = defaulted(dict)
    verbatim_guard: VerbatimGuard = defaulted(VerbatimGuard)

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule("double(self.scoreThreshold) >= 0.0 && double(self.scoreThreshold) <= 1.0",
                "scoreThreshold must satisfy 0 <= scoreThreshold <= 1", ".scoreThreshold"),
        CelRule("self.entityThresholds.all(k, double(self.entityThresholds[k]) >= 0.0 && "
                "double(self.entityThresholds[k]) <= 1.0)",
                "entityThresholds values must satisfy 0 <= threshold <= 1",
                ".entityThresholds"),
    )
