"""Open Inference Protocol (KServe v2) REST routes of the sidecar, over the model's /v1/predict.

Served for tensor models (``FilterConfig.task`` None: state-dict, torchscript, PATE
ensembles) and text classifiers; other tasks answer 404 naming their OpenAI route.

- ``GET /v2``: server metadata ``{"name", "version", "extensions": []}``.
- ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2/models/{name}[/versions/
  {version}]/ready``: 200 with an empty body when true; when not ready 400, the spec's "4xx
  indicates false" (as Triton answers). Ready = the model server answers its readiness probe.
- ``GET /v2/models/{name}[/versions/{version}]``: model metadata. ``versions`` is the one
  version this pod serves; ``platform`` is ``pytorch``; inputs: ``input`` FP32 ``[-1, -1]``
  (rows of the artifact's flat input; a CNN's c·h·w may be sent as ``[n, c, h, w]``) or, for
  text classification, ``text`` BYTES ``[-1]``; outputs: ``label`` INT64 ``[-1]`` always,
  ``text`` BYTES ``[-1]`` (the label's name) for text classification, plus by mechanism
  ``probabilities`` (none), ``vector`` (gaussian) or ``embedding`` (laplace-embedding) FP64
  ``[-1, -1]``. A tensor artifact that names its labels also answers ``text`` BYTES
  ``[-1]``; the sidecar cannot know in advance whether it does, so that output is returned
  (unless ``outputs`` selects others) but not declared.
- ``POST /v2/models/{name}[/versions/{version}]/infer``: one input tensor; datatypes FP32,
  FP64, INT8..INT64, UINT8..UINT64 (BYTES for text); ``data`` flat or nested in row-major
  order, holding exactly prod(shape) elements. Translated to ``{"inputs": [[...], ...]}``
  (one row per ``shape[0]``) for the model's ``/v1/predict``, charged exactly like
  ``/v1/predict`` (one query reserved per row before forwarding), and the answer's outputs
  translated back to tensors, scanned by the output filter like any answer. The response
  carries ``parameters.queries``: the DP releases charged.
- Errors: the spec's ``{"error": "<message>"}`` with the HTTP status (400 bad request, 404
  unknown model/version/route, 413 too large, 429 budget exhausted, 451 withheld by the
  output filter, 502/504 model failures, 503 ledger unavailable with ``Retry-After``).
"""

from __future__ import annotations

import json
import math
from importlib import metadata as package_metadata
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from dpserve.api.filterconfig import FilterConfig
from dpserve_runtime.filter.app import (
    PREDICT_PATH,
    STATE_KEY,
    Audit,
    ErrorRenderer,
    ProxyError,
    SidecarState,
    exchange,
    fail,
    finish_audit,
    partition_of,
    raise_if_blocked,
    read_json_body,
    scan,
    upstream_message,
    upstream_ready,
)

PREFIX = "/v2"
PLATFORM = "pytorch"
_INT_RANGES = {
    "INT8": (-(2**7), 2**7 - 1), "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1), "INT64": (-(2**63), 2**63 - 1),
    "UINT8": (0, 2**8 - 1), "UINT16": (0, 2**16 - 1), "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
}
_FLOAT_TYPES = frozenset({"FP32", "FP64"})
# The vector each mechanism releases besides the label (see server/mechanisms.py).
_MECHANISM_TENSOR = {"none": "probabilities", "gaussian": "vector",
                     "laplace-embedding": "embedding"}
OIP_TASKS = (None, "text-classification")


def render(error: ProxyError) -> web.Response:
    return web.json_response({"error": error.message}, status=error.status,
                             headers=error.headers)


ERROR_SHAPES: list[tuple[str, ErrorRenderer]] = [(PREFIX, render)]


# --- requests ---------------------------------------------------------------------------------


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


Parameters = dict[str, StrictStr | int | float | bool]


class RequestInput(_Spec):
    name: StrictStr
    shape: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=8)]
    datatype: StrictStr
    parameters: Parameters | None = None
    data: list[Any]


class RequestOutput(_Spec):
    name: StrictStr
    parameters: Parameters | None = None


class InferenceRequest(_Spec):
    id: Annotated[StrictStr, Field(max_length=256)] | None = None
    parameters: Parameters | None = None
    inputs: Annotated[list[RequestInput], Field(min_length=1)]
    outputs: list[RequestOutput] | None = None


def _input_name(config: FilterConfig) -> str:
    return "text" if config.task == "text-classification" else "input"


def declared_outputs(config: FilterConfig) -> list[dict[str, Any]]:
    outputs: list[dict[str, Any]] = [{"name": "label", "datatype": "INT64", "shape": [-1]}]
    if config.task == "text-classification":
        # A transformers classifier always names its labels (config.id2label).
        outputs.append({"name": "text", "datatype": "BYTES", "shape": [-1]})
    vector = _MECHANISM_TENSOR.get(config.mechanism.type)
    if vector is not None:
        outputs.append({"name": vector, "datatype": "FP64", "shape": [-1, -1]})
    return outputs


def model_metadata(config: FilterConfig) -> dict[str, Any]:
    datatype, shape = ("BYTES", [-1]) if config.task == "text-classification" else (
        "FP32", [-1, -1])
    return {
        "name": config.served_name,
        "versions": [config.model_version],
        "platform": PLATFORM,
        "inputs": [{"name": _input_name(config), "datatype": datatype, "shape": shape}],
        "outputs": declared_outputs(config),
    }


def _describe(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown field"
    return f"{where}: {first['msg']}"


def _bad(message: str) -> ProxyError:
    return ProxyError(400, "BadRequest", message)


def _flatten(data: list[Any], dims: int) -> list[Any]:
    """Row-major elements of ``data`` (flat, or nested at most ``dims`` deep)."""
    out: list[Any] = []
    stack: list[tuple[list[Any], int, int]] = [(data, 0, 1)]  # list, next index, depth
    while stack:
        items, index, depth = stack.pop()
        while index < len(items):
            item = items[index]
            index += 1
            if isinstance(item, list):
                if depth >= dims:
                    raise _bad("data is nested deeper than its shape")
                stack.append((items, index, depth))
                stack.append((item, 0, depth + 1))
                break
            out.append(item)
    return out


def translate_request(config: FilterConfig, request: InferenceRequest) -> list[Any]:
    """The ``inputs`` rows of ``/v1/predict`` for a v2 inference request (400 if unfit)."""
    if request.parameters:
        raise _bad(f"parameters: unsupported parameter '{next(iter(request.parameters))}'")
    if len(request.inputs) != 1:
        raise _bad(f"inputs: the model takes one input tensor, got {len(request.inputs)}")
    tensor = request.inputs[0]
    expected = _input_name(config)
    if tensor.name != expected:
        raise _bad(f"inputs.0.name: the model's input is named '{expected}'")
    text = config.task == "text-classification"
    for key, value in (tensor.parameters or {}).items():
        if not (text and key == "content_type" and value == "str"):
            raise _bad(f"inputs.0.parameters: unsupported parameter '{key}'")
    shape = tensor.shape
    if text:
        if tensor.datatype != "BYTES":
            raise _bad("inputs.0.datatype: text input must be BYTES")
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise _bad("inputs.0.shape: text input must have shape [batch] or [batch, 1]")
    else:
        if tensor.datatype not in _FLOAT_TYPES and tensor.datatype not in _INT_RANGES:
            raise _bad(f"inputs.0.datatype: {tensor.datatype} is not served; use FP32, FP64, "
                       f"INT8..INT64 or UINT8..UINT64")
        if len(shape) < 2:
            raise _bad("inputs.0.shape: must be [batch, features, ...]")
    batch = shape[0]
    if batch < 1:
        raise _bad("inputs.0.shape: the batch must hold at least one row")
    if batch > config.lease.max_size:
        raise ProxyError(413, "TooLarge",
                         f"inputs.0.shape: {batch} rows, more than lease.maxSize="
                         f"{config.lease.max_size}")
    width = math.prod(shape[1:])
    if width < 1:
        raise _bad("inputs.0.shape: every row must hold at least one element")
    values = _flatten(tensor.data, len(shape))
    if len(values) != batch * width:
        raise _bad(f"inputs.0.data: {len(values)} elements, shape {shape} needs "
                   f"{batch * width}")
    if text:
        for position, value in enumerate(values):
            if not isinstance(value, str):
                raise _bad(f"inputs.0.data[{position}]: BYTES elements must be strings")
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise _bad(f"inputs.0.data[{position}]: an unpaired surrogate escape is "
                               f"not text") from exc
        return values
    _check_numbers(tensor.datatype, values)
    return [[float(v) for v in values[row * width:(row + 1) * width]] for row in range(batch)]


def _check_numbers(datatype: str, values: list[Any]) -> None:
    bounds = _INT_RANGES.get(datatype)
    for position, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(f"inputs.0.data[{position}]: {datatype} elements must be numbers")
        if bounds is not None:
            if not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
                raise _bad(f"inputs.0.data[{position}]: not an {datatype} value")
        elif not math.isfinite(value):
            raise _bad(f"inputs.0.data[{position}]: not a finite number")


def translate_answer(outputs: Any, batch: int) -> list[dict[str, Any]]:
    """``/v1/predict`` outputs (one per row) as v2 output tensors (502 if malformed)."""
    if not isinstance(outputs, list) or len(outputs) != batch or not outputs:
        raise ProxyError(502, "UpstreamProtocolError",
                         f"model answer lacks one output per row ({batch})")
    if not all(isinstance(o, dict) for o in outputs):
        return [_tensor("label", outputs)]
    names = list(outputs[0])
    if any(list(o) != names and set(o) != set(names) for o in outputs):
        raise ProxyError(502, "UpstreamProtocolError", "model outputs differ in their fields")
    return [_tensor(name, [o[name] for o in outputs]) for name in names]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v))


def _tensor(name: str, column: list[Any]) -> dict[str, Any]:
    n = len(column)
    if all(_is_int(v) for v in column):
        return {"name": name, "datatype": "INT64", "shape": [n], "data": column}
    if all(_is_number(v) for v in column):
        return {"name": name, "datatype": "FP64", "shape": [n], "data": column}
    if all(isinstance(v, str) for v in column):
        return {"name": name, "datatype": "BYTES", "shape": [n], "data": column}
    if all(isinstance(v, list) and v and all(_is_number(x) for x in v) for v in column):
        width = len(column[0])
        if all(len(v) == width for v in column):
            flat = [x for v in column for x in v]
            return {"name": name, "datatype": "FP64", "shape": [n, width], "data": flat}
    raise ProxyError(502, "UpstreamProtocolError", f"model output '{name}' is not a tensor")


# --- handlers ---------------------------------------------------------------------------------


def _check_model(config: FilterConfig, request: web.Request) -> None:
    name = request.match_info["name"]
    version = request.match_info.get("version")
    if name != config.served_name:
        raise ProxyError(404, "NotFound", f"unknown model; this endpoint serves "
                                          f"'{config.served_name}'")
    if version is not None and version != config.model_version:
        raise ProxyError(404, "NotFound", f"unknown version; this pod serves "
                                          f"{config.model_version}")


def _check_task(config: FilterConfig) -> None:
    if config.task not in OIP_TASKS:
        route = ("/v1/chat/completions or /v1/completions" if config.task == "text-generation"
                 else "/v1/embeddings")
        raise ProxyError(404, "NotFound", f"model {config.served_name} serves {config.task} "
                                          f"over {route}, not the Open Inference Protocol")


async def handle_server_metadata(request: web.Request) -> web.Response:
    try:
        version = package_metadata.version("dpserve")
    except package_metadata.PackageNotFoundError:
        version = "unknown"
    return web.json_response({"name": "dpserve-filter", "version": version, "extensions": []})


async def handle_live(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def handle_ready(request: web.Request) -> web.Response:
    ready = await upstream_ready(request.app[STATE_KEY])
    return web.Response(status=200 if ready else 400)


async def handle_model_ready(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        _check_model(state.config, request)
    except ProxyError as error:
        return render(error)
    return web.Response(status=200 if await upstream_ready(state) else 400)


async def handle_model_metadata(request: web.Request) -> web.Response:
    config = request.app[STATE_KEY].config
    try:
        _check_model(config, request)
        _check_task(config)
    except ProxyError as error:
        return render(error)
    return web.json_response(model_metadata(config))


async def handle_infer(request: web.Request) -> web.Response:
    state: SidecarState = request.app[STATE_KEY]
    config = state.config
    audit = Audit.of(request)
    try:
        _check_model(config, request)
        _check_task(config)
        _, body = await read_json_body(request, config)
        if not isinstance(body, dict):
            raise _bad("the body must be a JSON object")
        try:
            infer = InferenceRequest.model_validate(body)
        except ValidationError as exc:
            raise _bad(_describe(exc)) from exc
        declared = {o["name"] for o in declared_outputs(config)}
        wanted = [o.name for o in infer.outputs or []]
        for position, output in enumerate(infer.outputs or []):
            if output.name not in declared:
                raise _bad(f"outputs.{position}.name: the model has no output "
                           f"'{output.name}'"[:300])
            if output.parameters:
                raise _bad(f"outputs.{position}.parameters: unsupported parameter "
                           f"'{next(iter(output.parameters))}'"[:300])
        rows = translate_request(config, infer)
        audit.inputs = len(rows)
        audit.tenant = partition = partition_of(request, config)
        payload = json.dumps({"inputs": rows}).encode("utf-8")
        answer = await exchange(state, audit, path=PREDICT_PATH, payload=payload,
                                batch=len(rows), partition=partition)
        result = await scan(state, answer.document, len(answer.raw))
        raise_if_blocked(state, audit, result)
        document = result.document
        if answer.status != 200:
            # Scanned above with the whole answer.
            raise ProxyError(answer.status, "UpstreamRejected",
                             upstream_message(document, answer.status))
        tensors = translate_answer(document.get("outputs"), len(rows))
        if wanted:
            tensors = [t for t in tensors if t["name"] in wanted]
            if len(tensors) != len(set(wanted)):
                raise ProxyError(502, "UpstreamProtocolError",
                                 "the model's answer lacks a requested output")
        response: dict[str, Any] = {"model_name": config.served_name,
                                    "model_version": config.model_version,
                                    "outputs": tensors,
                                    "parameters": {"queries": audit.queries_charged}}
        if infer.id is not None:
            response["id"] = infer.id
        audit.outcome = "redacted" if result.changed else "ok"
        audit.status = 200
        return web.json_response(response, headers={"X-Request-Id": audit.request_id})
    except ProxyError as error:
        fail(audit, error)
        rendered = render(error)
        rendered.headers["X-Request-Id"] = audit.request_id
        return rendered
    finally:
        finish_audit(state, audit)


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get(PREFIX, handle_server_metadata)
    router.add_get(PREFIX + "/health/live", handle_live)
    router.add_get(PREFIX + "/health/ready", handle_ready)
    for model in (PREFIX + "/models/{name}", PREFIX + "/models/{name}/versions/{version}"):
        router.add_get(model, handle_model_metadata)
        router.add_get(model + "/ready", handle_model_ready)
        router.add_post(model + "/infer", handle_infer)
