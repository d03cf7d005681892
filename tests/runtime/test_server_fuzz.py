"""The model servers' JSON endpoints under hypothesis-generated bodies (issue 13.5): a client
mistake is a 4xx in the server's error shape (``{"reason", "message"}`` for the tensor
server, OpenAI's for the text server), never a 5xx, never a traceback in the log; a body
nested too deeply to parse is a 400 naming the field. (The generation and tensor servers
also have their own fuzz tests of valid-looking bodies in test_server / test_text_server.)"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.slow_client_support import free_port
from tests.text_support import build_tiny_causal_lm, build_tiny_classifier, minilm_artifact

from dpserve.api.mechanism import Mechanism
from dpserve_runtime.architectures import build_model
from dpserve_runtime.artifact import save_state_dict_artifact
from dpserve_runtime.server.app import ServerConfig, serve

ARCH: dict[str, Any] = {"type": "mlp", "inputDim": 4, "hiddenDims": [4], "numClasses": 3}
# route -> the server that serves it
ROUTES = {"/v1/predict": "tensor", "/v1/completions": "lm", "/v1/chat/completions": "lm",
          "/v1/embeddings": "encoder", "/v1/predict#text": "classifier"}


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@dataclass
class Servers:
    ports: dict[str, int]
    errors: _Errors

    def post(self, route: str, body: bytes) -> tuple[int, dict[str, Any]]:
        port = self.ports[ROUTES[route]]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", route.split("#")[0], body=body,
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("servers")
    save_state_dict_artifact(root / "tensor", build_model(ARCH), ARCH)
    none = Mechanism.model_validate({"type": "none"})
    configs = {
        "tensor": ServerConfig(artifact=root / "tensor", mechanism=none),
        "lm": ServerConfig(artifact=build_tiny_causal_lm(root / "lm"), mechanism=none,
                           device="cpu", max_tokens=4),
        "classifier": ServerConfig(artifact=build_tiny_classifier(root / "cls", ["a", "b"]),
                                   mechanism=none, device="cpu"),
        "encoder": ServerConfig(artifact=minilm_artifact(root / "minilm"), mechanism=none,
                                device="cpu"),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    stop = asyncio.Event()
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    ports = {name: free_port() for name in configs}
    tasks = []
    try:
        for name, config in configs.items():
            # One at a time: transformers' loading is not safe in parallel threads.
            tasks.append(asyncio.run_coroutine_threadsafe(
                serve(replace(config, port=ports[name], workers=1), stop), loop))
            _wait_ready(ports[name])
        yield Servers(ports, errors)
    finally:
        logging.getLogger().removeHandler(errors)
        loop.call_soon_threadsafe(stop.set)
        for task in tasks:
            assert task.result(60) == 0
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        torch.set_num_threads(threads)


def _wait_ready(port: int) -> None:
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        threading.Event().wait(0.05)  # the server loads its model meanwhile
    raise TimeoutError(f"the server on port {port} did not become ready")


def _check_refusal(route: str, status: int, body: dict[str, Any]) -> str:
    """A client mistake: a 4xx in the server's shape; its message."""
    assert 400 <= status < 500, (route, status, body)
    if route == "/v1/predict":
        assert set(body) == {"reason", "message"} and body["message"], body
        return str(body["message"])
    assert set(body) == {"error"}, body
    assert set(body["error"]) >= {"message", "type", "param", "code"}, body
    return str(body["error"]["message"])


_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
            | st.floats(allow_nan=False) | st.text(max_size=16))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_fields = st.sampled_from(["inputs", "model", "messages", "prompt", "input", "max_tokens", "n",
                           "stop", "temperature", "top_p", "seed", "encoding_format"])
_bodies = st.one_of(
    _json, st.dictionaries(_fields, _json, max_size=5),
    st.fixed_dictionaries({"model": st.just("m"), "input": _json}),
    st.fixed_dictionaries({"inputs": st.lists(st.text(max_size=20) | _json, max_size=3)}),
)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(route=st.sampled_from(sorted(ROUTES)), body=_bodies)
def test_fuzzed_bodies_are_answered_or_refused_in_the_server_shape(
        servers: Servers, route: str, body: Any) -> None:
    status, answer = servers.post(route, json.dumps(body).encode())
    if status != 200:
        _check_refusal(route, status, answer)
    assert not servers.errors.records, [r.getMessage() for r in servers.errors.records]


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(route=st.sampled_from(sorted(ROUTES)), field=_fields,
       depth=st.integers(5_000, 60_000))
def test_a_body_nested_too_deeply_is_a_400_naming_the_field(
        servers: Servers, route: str, field: str, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    status, answer = servers.post(route, f'{{"{field}": {nested}}}'.encode())
    assert status == 400
    assert f"field '{field}' is nested too deeply" in _check_refusal(route, status, answer)
    if route != "/v1/predict":
        assert answer["error"]["param"] == field
    status, answer = servers.post(route, nested.encode())
    assert status == 400
    assert "the body is nested too deeply" in _check_refusal(route, status, answer)
    assert not servers.errors.records, [r.getMessage() for r in servers.errors.records]


def test_field_finder_ignores_brackets_in_strings(tmp_path: Path) -> None:
    from dpserve_runtime.jsondepth import deep_field

    text = '{"a": "[[[[", "b\\"[": 1, "c": ' + "[" * 300 + "]" * 300 + "}"
    assert deep_field(text) == "c"
    assert deep_field('{"x": [[1]]}') is None
    assert deep_field("[" * 300) == ""
