"""Wire schema of the model server's text routes (huggingface artifacts), OpenAI-shaped.

Requests accept the OpenAI fields the server implements and refuse every other field with
400 naming it (an accepted field that did nothing would be a silent defect):

- ``POST /v1/completions``       model, prompt (string or list of strings), max_tokens, n,
                                 temperature, top_p, stream, seed, stop
- ``POST /v1/chat/completions``  model, messages (role system|user|assistant, content a
                                 string or a list of ``{"type": "text", "text"}`` parts),
                                 max_tokens | max_completion_tokens, n, temperature, top_p,
                                 stream, seed, stop
- ``POST /v1/embeddings``        model, input (string or list of strings),
                                 encoding_format ("float" only)
- ``POST /v1/predict``           {"inputs": ["text", ...]} (text-classification)

Errors: ``{"error": {"message", "type", "param", "code"}}`` as OpenAI answers them; ``param``
names the offending field (``messages.1.role``), ``code`` is e.g. ``context_length_exceeded``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

NonEmptyText = Annotated[StrictStr, Field(min_length=1)]
Number = StrictFloat | StrictInt  # JSON 1 and 1.0 are both a number; true is not


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Generation(_Request):
    """Fields shared by completions and chat completions."""

    model: NonEmptyText
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    n: Annotated[StrictInt, Field(ge=1)] = 1
    temperature: Annotated[Number, Field(ge=0, le=2, allow_inf_nan=False)] = 1.0
    top_p: Annotated[Number, Field(gt=0, le=1, allow_inf_nan=False)] = 1.0
    stream: StrictBool = False
    seed: StrictInt | None = None
    stop: NonEmptyText | Annotated[list[NonEmptyText], Field(max_length=4)] | None = None

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(_Generation):
    """Body of ``POST /v1/completions``."""

    prompt: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1)]

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class TextPart(_Request):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant"]
    content: StrictStr | Annotated[list[TextPart], Field(min_length=1)]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Generation):
    """Body of ``POST /v1/chat/completions``."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    # OpenAI's newer name for max_tokens; both are accepted, not together.
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_tokens is None else self.max_tokens


class EmbeddingRequest(_Request):
    """Body of ``POST /v1/embeddings``."""

    model: NonEmptyText
    input: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1)]
    encoding_format: Literal["float"] = "float"

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class TextPredictRequest(_Request):
    """Body of ``POST /v1/predict`` for a text-classification artifact."""

    inputs: Annotated[list[NonEmptyText], Field(min_length=1)]


class OpenAIError(Exception):
    """A request error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def from_validation_error(exc: ValidationError) -> OpenAIError:
    """400 naming the first offending field (``param``) and, in the message, up to three."""
    errors = exc.errors(include_url=False)

    def location(err: Any) -> str:
        # Drop pydantic's union-branch tags ("str", "list[...]") from the field path.
        parts = [str(p) for p in err["loc"] if not _is_union_tag(p)]
        return ".".join(parts) or "body"

    # A union (prompt: string or list of strings) fails once per branch; the deepest
    # location is the most specific one ("prompt.0: not a string" over "prompt: not a
    # string"), so it leads.
    errors = sorted(errors, key=lambda err: -len(location(err).split(".")))
    parts = list(dict.fromkeys(f"{location(err)}: {err['msg']}" for err in errors))
    more = len(parts) - 3
    parts = parts[:3] + ([f"... and {more} more"] if more > 0 else [])
    code = "unsupported_parameter" if errors and errors[0]["type"] == "extra_forbidden" else None
    return OpenAIError(400, "; ".join(parts), param=location(errors[0]), code=code)


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (
        part in {"str", "int", "float", "bool"}
        or part.startswith(("list[", "constrained-", "function-"))
        or "[" in part
    )
