"""Only a 200 of the model is ever released (issue 13.3), on every protocol route: any other
status becomes the sidecar's own JSON error in the route's shape - whatever outputs the
model's body carried are never relayed - and a redirect is never followed."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from dpserve.api.filterconfig import FilterConfig
from dpserve_runtime.filter.app import create_app
from dpserve_runtime.filter.pii import PiiAnalyzer
from dpserve_testkit.fakes import FakeLedger

MARKER = "released-output-marker"
STATUSES = [201, 203, 206, 301, 302, 303, 307, 308, 400, 404, 409, 422, 429, 500, 503]


@dataclass
class OddModel:
    """Answers every route with ``status`` and a body full of outputs (and a redirect's
    Location); counts requests to the redirect target."""

    status: int = 200
    redirect_hits: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/elsewhere", self._elsewhere)
        app.router.add_route("*", "/{tail:.*}", self._answer)
        return app

    async def _elsewhere(self, request: web.Request) -> web.Response:
        self.redirect_hits += 1
        return web.json_response(_body())

    async def _answer(self, request: web.Request) -> web.Response:
        if request.path == "/readyz":
            return web.json_response({"status": "ready"})
        await request.read()
        headers = {"Location": "/elsewhere"} if 300 <= self.status < 400 else {}
        return web.json_response(_body(), status=self.status, headers=headers)


def _body() -> dict[str, Any]:
    return {
        "reason": "Rejected", "message": "refused",
        "error": {"message": "refused", "type": "invalid_request_error"},
        "outputs": [{"label": 1, "text": MARKER}], "queries": 1,
        "choices": [{"index": 0, "text": MARKER, "message": {"role": "assistant",
                                                             "content": MARKER}}],
        "data": [{"index": 0, "embedding": [0.5], "object": "embedding"}],
        "leak": MARKER,
    }


@functools.cache
def _analyzer() -> PiiAnalyzer:
    return PiiAnalyzer(["EMAIL_ADDRESS"], 0.5, {})


@contextlib.asynccontextmanager
async def sidecar(tmp_path: Path, model: OddModel, **config: Any) -> AsyncIterator[str]:
    servers = [TestServer(FakeLedger(budget={None: 10**6}).app(), host="127.0.0.1"),
               TestServer(model.app(), host="127.0.0.1")]
    for server in servers:
        await server.start_server()
    (tmp_path / "token").write_text("test-token")
    filter_config = FilterConfig.model_validate({
        "model": "ns/model", "modelVersion": "v1",
        "mechanism": {"type": "pate", "teachers": 10, "noiseMultiplier": "40"},
        "upstream": str(servers[1].make_url("")).rstrip("/"),
        "ledgerUrl": str(servers[0].make_url("")).rstrip("/"),
        "tokenPath": str(tmp_path / "token"), "podName": "pod-0",
        "outputFilter": {"action": "redact", "entities": ["EMAIL_ADDRESS"],
                         "verbatimGuard": {"enabled": False}},
        "lease": {"initialSize": 8, "maxSize": 64},
    } | config)
    side = TestServer(create_app(filter_config, "pod-0", analyzer=_analyzer()),
                      host="127.0.0.1")
    await side.start_server()
    try:
        yield str(side.make_url("")).rstrip("/")
    finally:
        await side.close()
        for server in servers:
            await server.close()


Routes = dict[str, dict[str, Any]]
TENSOR: Routes = {"/v1/predict": {"inputs": [[1.0]]},
          "/v2/models/model/infer": {"inputs": [{"name": "input", "shape": [1, 1],
                                                 "datatype": "FP32", "data": [1.0]}]}}
CHAT: dict[str, Any] = {"model": "model", "messages": [{"role": "user", "content": "hi"}]}
GENERATION: Routes = {"/v1/chat/completions": CHAT, "/v1/completions": {"model": "model",
                                                                "prompt": "hi"}}
EMBEDDINGS: Routes = {"/v1/embeddings": {"model": "model", "input": "hi"}}
CONFIGS: dict[str, tuple[dict[str, Any], Routes]] = {
    "tensor": ({}, TENSOR),
    "generation": ({"task": "text-generation", "mechanism": {"type": "none"}},
                   {**GENERATION, **{p + "#stream": {**b, "stream": True}
                                     for p, b in GENERATION.items()}}),
    "embeddings": ({"task": "feature-extraction",
                    "mechanism": {"type": "laplace-embedding", "epsilon": "1"}}, EMBEDDINGS),
}


def _own_error(path: str, body: dict[str, Any]) -> None:
    """The sidecar's own error in the route's shape, nothing of the model's outputs."""
    if path == "/v1/predict":
        assert set(body) == {"reason", "message"}, body
    elif path.startswith("/v2/"):
        assert set(body) == {"error"} and isinstance(body["error"], str), body
    else:
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body


@pytest.mark.parametrize("kind", sorted(CONFIGS))
async def test_only_a_200_of_the_model_is_released(tmp_path: Path, kind: str) -> None:
    fields, routes = CONFIGS[kind]
    model = OddModel()
    async with sidecar(tmp_path, model, **fields) as url, aiohttp.ClientSession() as session:
        for route, request in routes.items():
            path = route.split("#")[0]
            for status in STATUSES:
                model.status = status
                async with session.post(url + path, json=request) as response:
                    raw = await response.read()
                    got, content_type = response.status, response.content_type
                assert MARKER.encode() not in raw, (route, status, raw[:300])
                assert content_type == "application/json", (route, status, raw[:300])
                _own_error(path, json.loads(raw))
                if 400 <= status < 600:
                    assert got == status, (route, status, raw[:300])  # its status, relayed
                else:
                    assert got == 502, (route, status, raw[:300])
        assert model.redirect_hits == 0  # no redirect followed
