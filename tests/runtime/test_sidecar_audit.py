"""No client-chosen string reaches the sidecar's audit log (issue 13.6): an X-Request-Id (which
may be shaped like a phone, SSN or card number) and a tenant the ledger did not confirm are
logged as keyed hashes; the client still gets its own id back."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from dpserve.api.filterconfig import FilterConfig
from dpserve_runtime.filter.__main__ import _audit_key
from dpserve_runtime.filter.app import create_app
from dpserve_runtime.filter.pii import PiiAnalyzer
from dpserve_testkit.fakes import FakeLedger, FakeModel

KEY = b"0123456789abcdef-audit-key"
CLIENT_IDS = ["212-555-0143", "078-05-1120", "4111111111111111", "2125550143", "abc-1"]


class ListSink:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)

    def flush(self) -> None:
        return None


@functools.cache
def _analyzer() -> PiiAnalyzer:
    return PiiAnalyzer(["EMAIL_ADDRESS"], 0.5, {})


@contextlib.asynccontextmanager
async def sidecar(tmp_path: Path, sink: ListSink, key: bytes | None, **config: Any
                  ) -> AsyncIterator[str]:
    ledger = FakeLedger(budget={None: 10_000, "tenant-a": 10_000})
    servers = [TestServer(ledger.app(), host="127.0.0.1"),
               TestServer(FakeModel().app(), host="127.0.0.1")]
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
    side = TestServer(create_app(filter_config, "pod-0", analyzer=_analyzer(), audit_sink=sink,
                                 audit_id_key=key), host="127.0.0.1")
    await side.start_server()
    try:
        yield str(side.make_url("")).rstrip("/")
    finally:
        await side.close()
        for server in servers:
            await server.close()


def _hash(key: bytes, value: str) -> str:
    return "h-" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:24]


async def _post(url: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.post(
            url + path, data=json.dumps(body).encode(), headers=headers) as response:
        await response.read()
        return response.status, response.headers["X-Request-Id"]


async def test_client_request_ids_are_logged_as_keyed_hashes(tmp_path: Path) -> None:
    sink = ListSink()
    async with sidecar(tmp_path, sink, KEY) as url:
        for client_id in CLIENT_IDS:
            status, echoed = await _post(url, "/v1/predict", {"inputs": [[1.0]]},
                                         {"X-Request-Id": client_id})
            assert (status, echoed) == (200, client_id)  # the client gets its own id back
        # Every route family logs the same way (an error answer included).
        await _post(url, "/v2/models/model/infer", {"inputs": []},
                    {"X-Request-Id": CLIENT_IDS[0]})
        status, generated = await _post(url, "/v1/predict", {"inputs": [[1.0]]}, {})
    assert status == 200
    records = [json.loads(line) for line in sink.lines]
    logged = [record["requestId"] for record in records]
    assert logged == [*(_hash(KEY, c) for c in CLIENT_IDS), _hash(KEY, CLIENT_IDS[0]),
                      generated]  # an id the sidecar made itself is logged as it is
    everything = "\n".join(sink.lines)
    for client_id in CLIENT_IDS:
        assert client_id not in everything


async def test_without_a_key_each_process_draws_its_own(tmp_path: Path) -> None:
    logged = []
    for _ in range(2):
        sink = ListSink()
        async with sidecar(tmp_path, sink, None) as url:
            for _ in range(2):
                await _post(url, "/v1/predict", {"inputs": [[1.0]]},
                            {"X-Request-Id": "078-05-1120"})
        first, second = (json.loads(line)["requestId"] for line in sink.lines)
        assert first == second and first.startswith("h-")  # joins within the process
        logged.append(first)
    assert logged[0] != logged[1]


async def test_a_tenant_is_logged_only_once_the_ledger_confirmed_it(tmp_path: Path) -> None:
    sink = ListSink()
    async with sidecar(tmp_path, sink, KEY, partitionHeader="X-Tenant") as url:
        assert (await _post(url, "/v1/predict", {"inputs": [[1.0]]},
                            {"X-Tenant": "tenant-a"}))[0] == 200
        # Not a partition of the budget: refused by the ledger, logged hashed.
        assert (await _post(url, "/v1/predict", {"inputs": [[1.0]]},
                            {"X-Tenant": "555-0143"}))[0] >= 400
    tenants = [json.loads(line)["tenant"] for line in sink.lines]
    assert tenants == ["tenant-a", _hash(KEY, "555-0143")]


def test_the_key_file_is_read_and_checked(tmp_path: Path) -> None:
    assert _audit_key(None) is None
    (tmp_path / "key").write_bytes(KEY + b"\n")
    assert _audit_key(str(tmp_path / "key")) == KEY
    (tmp_path / "short").write_bytes(b"short")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        _audit_key(str(tmp_path / "short"))
