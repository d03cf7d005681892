"""Shared pieces of the API models: camelCase wire names, decimal strings, conditions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

# Decimal strings instead of floats: Kubernetes API conventions avoid floats in spec
# (their round-tripping through JSON/YAML/Go is lossy); CEL `double()` checks the range.
DECIMAL_PATTERN = r"^[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$"
Decimal = Annotated[
    str, StringConstraints(pattern=DECIMAL_PATTERN, min_length=1, max_length=32)
]
Name = Annotated[
    str,
    StringConstraints(
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", min_length=1, max_length=63
    ),
]


class ApiModel(BaseModel):
    """Base of every wire model: camelCase on the wire, snake_case in Python, no extras."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,  # "2" is not an integer and "yes" not a boolean, as in the CRD schema
        frozen=False,
        use_enum_values=True,
    )

    def wire(self) -> dict[str, object]:
        """The object as it appears on the wire (camelCase, unset optionals left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def defaulted(factory: Callable[[], Any], **kwargs: Any) -> Any:
    """A Field whose default also appears in the CRD schema, so the API server applies it."""
    value = factory()
    wire: Any = value.wire() if isinstance(value, ApiModel) else value
    return Field(default_factory=factory, json_schema_extra={"default": wire}, **kwargs)


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """metav1.Condition, field for field."""

    type: Annotated[str, StringConstraints(max_length=316)]
    status: ConditionStatus
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    last_transition_time: Annotated[str, StringConstraints(max_length=64)]
    reason: Annotated[
        str, StringConstraints(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    ]
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
