"""Slow and greedy clients against the sidecar's public port (issue 13.4): a header or body
sent a byte at a time is cut off at the configured deadline while other clients are served,
and one client is held to its number of open connections."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from tests.slow_client_support import (
    free_port,
    hold_connection,
    read_answer,
    request_head,
    served_again,
    trickle,
)

from dpserve.api.filterconfig import FilterConfig
from dpserve_runtime.filter.__main__ import _parser
from dpserve_runtime.filter.app import GUARD_KEY, create_app
from dpserve_runtime.filter.pii import PiiAnalyzer
from dpserve_runtime.httplimits import ConnectionLimits, serve_until
from dpserve_testkit.fakes import FakeLedger, FakeModel

BODY = json.dumps({"inputs": [[0.0]]}).encode()


@functools.cache
def _analyzer() -> PiiAnalyzer:
    return PiiAnalyzer(["EMAIL_ADDRESS"], 0.5, {})


@dataclass
class Sidecar:
    port: int
    session: aiohttp.ClientSession

    async def predict(self) -> int:
        async with self.session.post(f"http://127.0.0.1:{self.port}/v1/predict",
                                     data=BODY) as response:
            await response.read()
            return response.status


@contextlib.asynccontextmanager
async def sidecar(tmp_path: Path, limits: ConnectionLimits, **config: Any
                  ) -> AsyncIterator[Sidecar]:
    ledger, model = FakeLedger(budget={None: 10_000}), FakeModel()
    servers = [TestServer(ledger.app(), host="127.0.0.1"),
               TestServer(model.app(), host="127.0.0.1")]
    for server in servers:
        await server.start_server()
    token = tmp_path / "token"
    token.write_text("test-token")
    filter_config = FilterConfig.model_validate({
        "model": "ns/model", "modelVersion": "v1",
        "mechanism": {"type": "pate", "teachers": 10, "noiseMultiplier": "40"},
        "upstream": str(servers[1].make_url("")).rstrip("/"),
        "ledgerUrl": str(servers[0].make_url("")).rstrip("/"),
        "tokenPath": str(token), "podName": "pod-0",
        "outputFilter": {"action": "redact", "entities": ["EMAIL_ADDRESS"],
                         "verbatimGuard": {"enabled": False}},
        "lease": {"initialSize": 8, "maxSize": 64},
    } | config)
    app = create_app(filter_config, "pod-0", limits=limits, analyzer=_analyzer())
    assert app[GUARD_KEY].limits == limits
    stop = asyncio.Event()
    port = free_port()
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(serve_until(app, "127.0.0.1", port, app[GUARD_KEY], stop,
                                              on_listening=listening.set_result))
    session = aiohttp.ClientSession()
    try:
        waited: list[asyncio.Future[Any]] = [listening, serving]
        await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        assert listening.done(), serving.result()
        yield Sidecar(port, session)
    finally:
        await session.close()
        stop.set()
        await serving
        for server in servers:
            await server.close()


async def test_a_header_sent_a_byte_at_a_time_is_cut_off_while_others_are_served(
        tmp_path: Path) -> None:
    async with sidecar(tmp_path, ConnectionLimits(header_timeout=1.0)) as proxy:
        started = asyncio.Event()
        slow = asyncio.create_task(trickle(proxy.port, request_head("/v1/predict"),
                                           interval=0.2, started=started))
        await started.wait()
        assert await proxy.predict() == 200
        result = await slow
        assert result.sent < result.total  # closed before it finished its header
        assert result.answer == b""


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/embeddings", "/v2/models/model/infer"])
async def test_a_body_sent_a_byte_at_a_time_gets_408_and_is_closed(
        tmp_path: Path, path: str) -> None:
    text = {"task": "feature-extraction", "mechanism": {"type": "none"}}
    async with sidecar(tmp_path, ConnectionLimits(), clientTimeoutSeconds=1,
                       **(text if path == "/v1/embeddings" else {})) as proxy:
        started = asyncio.Event()
        data = request_head(path, body_length=len(BODY) * 40) + BODY * 40
        slow = asyncio.create_task(trickle(proxy.port, data, interval=0.01, started=started))
        await started.wait()
        if path != "/v1/embeddings":  # (the fake model has no embeddings)
            assert await proxy.predict() == 200
        result = await slow
        assert result.sent < result.total
        head, _, body = result.answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), result.answer
        # In the shape of the route's protocol.
        if path == "/v1/predict":
            assert json.loads(body)["reason"] == "RequestTimeout"
        elif path == "/v1/embeddings":
            assert json.loads(body)["error"]["code"] == "request_timeout"
        else:
            assert "not received within" in json.loads(body)["error"]


async def test_connections_per_client_are_limited(tmp_path: Path) -> None:
    async with sidecar(tmp_path, ConnectionLimits(max_per_client=2)) as proxy:
        held = [await hold_connection(proxy.port) for _ in range(2)]
        reader, writer = await hold_connection(proxy.port)
        refusal = await read_answer(reader)
        writer.close()
        assert refusal.startswith(b"HTTP/1.1 503"), refusal
        assert b"TooManyConnections" in refusal
        held[0][1].close()
        assert await served_again(proxy.port, "/healthz") == 200
        for _, held_writer in held[1:]:
            held_writer.close()


def test_limits_are_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _parser().parse_args(["--config", "c.json"])
    assert (args.header_timeout, args.max_connections_per_client) == (10.0, 256)
    monkeypatch.setenv("DPSERVE_FILTER_HEADER_TIMEOUT", "3")
    monkeypatch.setenv("DPSERVE_FILTER_MAX_CONNECTIONS_PER_CLIENT", "0")
    args = _parser().parse_args(["--config", "c.json"])
    assert (args.header_timeout, args.max_connections_per_client) == (3.0, 0)
