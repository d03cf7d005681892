"""Text models: the task a ``huggingface`` artifact serves and the limits its answers obey.

Shared by the CRD (``spec.model.task``, ``spec.serving.generation``), the sidecar's config
(``FilterConfig.task`` / ``FilterConfig.generation``) and the model server's flags, so the
three cannot disagree on a name or a bound.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from dpserve.api.base import ApiModel

# What a huggingface artifact does. Tensor formats (state-dict, torchscript, pate-ensemble)
# have no task: they answer /v1/predict and Open Inference Protocol v2 with float tensors.
ModelTask = Literal["text-generation", "text-classification", "feature-extraction"]
TEXT_TASKS: tuple[ModelTask, ...] = ("text-generation", "text-classification",
                                     "feature-extraction")

# How a feature-extraction artifact turns token vectors into one sentence vector; stated in
# the artifact's manifest (the served vector is then L2-normalised before any noise).
Pooling = Literal["mean", "cls"]


class GenerationLimits(ApiModel):
    """Bounds on one text-generation request, enforced by the sidecar and the model server.

    A request over a bound is refused with 400 in the protocol's error shape, before any
    budget is reserved and before the model runs.
    """

    max_tokens: Annotated[int, Field(ge=1, le=8192)] = Field(
        default=256, description="Largest max_tokens a request may ask for (and the default)."
    )
    max_choices: Annotated[int, Field(ge=1, le=16)] = Field(
        default=4, description="Largest n (completions per request)."
    )
