"""Slow and greedy clients against the model server (issue 13.4): a header or body sent a
byte at a time is cut off at the configured deadline while other clients are served, and a
client is held to its number of open connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.slow_client_support import (
    free_port,
    hold_connection,
    read_answer,
    request_head,
    served_again,
    trickle,
)

from dpserve.api.mechanism import Mechanism
from dpserve_runtime.architectures import build_model
from dpserve_runtime.artifact import save_state_dict_artifact
from dpserve_runtime.httplimits import ConnectionLimits
from dpserve_runtime.server.__main__ import parse_args
from dpserve_runtime.server.app import ServerConfig, serve

ARCH: dict[str, Any] = {"type": "mlp", "inputDim": 4, "hiddenDims": [4], "numClasses": 3}
BODY = json.dumps({"inputs": [[0.1, 0.2, 0.3, 0.4]]}).encode()


@dataclass
class Running:
    port: int
    session: aiohttp.ClientSession

    async def predict(self) -> tuple[int, dict[str, Any]]:
        async with self.session.post(f"http://127.0.0.1:{self.port}/v1/predict",
                                     data=BODY) as response:
            return response.status, await response.json()


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    save_state_dict_artifact(tmp_path / "model", build_model(ARCH), ARCH)
    return tmp_path / "model"


@contextlib.asynccontextmanager
async def running(config: ServerConfig) -> AsyncIterator[Running]:
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, stop))
    session = aiohttp.ClientSession()
    try:
        # serve() opens the socket, then loads: ready once /readyz says so.
        async def ready() -> bool:
            try:
                async with session.get(f"http://127.0.0.1:{config.port}/readyz") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        async with asyncio.timeout(60):
            while not await ready():
                assert not task.done(), task.result()
                await asyncio.sleep(0.02)
        yield Running(config.port, session)
    finally:
        await session.close()
        stop.set()
        assert await task == 0


def _config(artifact: Path, **limits: Any) -> ServerConfig:
    return replace(ServerConfig(artifact=artifact, mechanism=Mechanism.model_validate(
        {"type": "none"}), port=free_port(), workers=1), **limits)


async def test_a_header_sent_a_byte_at_a_time_is_cut_off_while_others_are_served(
        artifact: Path, one_torch_thread: None) -> None:
    config = _config(artifact, header_timeout=1.0)
    async with running(config) as server:
        started = asyncio.Event()
        slow = asyncio.create_task(trickle(server.port, request_head("/v1/predict"),
                                           interval=0.2, started=started))
        await started.wait()
        # Served while the slow client holds its connection.
        status, answer = await server.predict()
        assert status == 200 and answer["queries"] == 0
        result = await slow
        assert result.sent < result.total  # closed before it finished its header
        assert result.answer == b""  # closed, not answered: no request was made


async def test_a_body_sent_a_byte_at_a_time_gets_408_and_is_closed(
        artifact: Path, one_torch_thread: None) -> None:
    config = _config(artifact, body_timeout=1.0)
    async with running(config) as server:
        started = asyncio.Event()
        data = request_head("/v1/predict", body_length=len(BODY) * 10) + BODY * 10
        slow = asyncio.create_task(trickle(server.port, data, interval=0.01, started=started))
        await started.wait()
        status, _ = await server.predict()
        assert status == 200
        result = await slow
        assert result.sent < result.total
        head, _, body = result.answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), result.answer
        assert json.loads(body)["reason"] == "RequestTimeout"


async def test_connections_per_client_are_limited(artifact: Path, one_torch_thread: None
                                                  ) -> None:
    config = _config(artifact, max_connections_per_client=2)
    async with running(config) as server:
        await server.session.close()  # its pooled connections would count too
        held = [await hold_connection(server.port) for _ in range(2)]
        reader, writer = await hold_connection(server.port)
        refusal = await read_answer(reader)
        writer.close()
        assert refusal.startswith(b"HTTP/1.1 503"), refusal
        assert b"TooManyConnections" in refusal
        # One of the held connections goes: a new connection is served again (once the
        # server has seen the close).
        held[0][1].close()
        assert await served_again(server.port, "/healthz") == 200
        for _, held_writer in held[1:]:
            held_writer.close()


def test_limits_are_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["--artifact", "a", "--mechanism", '{"type": "none"}']
    config, _ = parse_args(base)
    assert (config.header_timeout, config.body_timeout,
            config.max_connections_per_client) == (10.0, 30.0, 512)
    monkeypatch.setenv("DPSERVE_SERVER_HEADER_TIMEOUT", "2.5")
    monkeypatch.setenv("DPSERVE_SERVER_MAX_CONNECTIONS_PER_CLIENT", "0")
    config, _ = parse_args([*base, "--body-timeout", "4"])
    assert (config.header_timeout, config.body_timeout,
            config.max_connections_per_client) == (2.5, 4.0, 0)
    assert config.limits() == ConnectionLimits(header_timeout=2.5, max_per_client=0)
    with pytest.raises(SystemExit):
        parse_args([*base, "--header-timeout", "0"])
