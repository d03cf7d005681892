"""The model server over real HTTP on loopback: each mechanism end to end on small models
trained here on scikit-learn's bundled digits, JSON errors for bad input, a fuzz test of the
request path, and the CLI process itself."""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pytest
import torch
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits
from torch import nn

from dpserve.api.mechanism import Mechanism
from dpserve_runtime.architectures import build_model
from dpserve_runtime.artifact import save_pate_ensemble, save_state_dict_artifact
from dpserve_runtime.server.__main__ import parse_args
from dpserve_runtime.server.app import ModelServer, ServerConfig, serve

ARCH: dict[str, Any] = {"type": "mlp", "inputDim": 64, "hiddenDims": [32], "numClasses": 10}
LABELS = [f"digit {i}" for i in range(10)]
TEACHERS = 5


# ------------------------------------------------------------------------ fixtures


@dataclass(frozen=True)
class Digits:
    single: Path  # state-dict artifact
    ensemble: Path  # pate-ensemble of TEACHERS teachers on disjoint partitions
    broken: Path  # state-dict artifact whose weights are NaN
    x_test: np.ndarray
    y_test: np.ndarray


def _train(x: np.ndarray, y: np.ndarray, epochs: int) -> nn.Module:
    model = build_model(ARCH)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.03)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(model(xt), yt)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    torch.manual_seed(0)  # weight init and nothing else: not privacy noise
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: extra threads only add contention
    try:
        return _digits(tmp_path_factory)
    finally:
        torch.set_num_threads(threads)


def _digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    data = load_digits()
    x, y = (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)
    x_train, y_train, x_test, y_test = x[:1500], y[:1500], x[1500:], y[1500:]
    root = tmp_path_factory.mktemp("artifacts")
    save_state_dict_artifact(
        root / "single", _train(x_train, y_train, 50), ARCH, version="v7", labels=LABELS
    )
    parts = np.array_split(np.arange(1500), TEACHERS)
    teachers = [_train(x_train[p], y_train[p], 50) for p in parts]
    save_pate_ensemble(root / "ensemble", teachers, ARCH, labels=LABELS)
    broken = build_model(ARCH)
    with torch.no_grad():
        for parameter in broken.parameters():
            parameter.fill_(float("nan"))
    save_state_dict_artifact(root / "broken", broken, ARCH)
    return Digits(root / "single", root / "ensemble", root / "broken", x_test, y_test)


class ThreadedServer:
    """The real aiohttp app on 127.0.0.1 (ephemeral port) in a background event loop, so
    that tests, hypothesis included, can talk to it synchronously over HTTP."""

    def __init__(self, config: ServerConfig, *, load: bool = True) -> None:
        self.config = config
        self.load = load
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    async def _start(self) -> None:
        self.server = ModelServer(self.config)
        if self.load:
            await self.server.load()
        self.runner = web.AppRunner(self.server.app())
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(60)
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def request(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, dict[str, Any]]:
        return http_request(self.port, method, path, body)


def http_request(
    port: int, method: str, path: str, body: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        assert response.getheader("Content-Type", "").startswith("application/json"), payload
        return response.status, json.loads(payload)
    finally:
        conn.close()


def predict(
    server: ThreadedServer, rows: np.ndarray | list[list[float]]
) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"inputs": np.asarray(rows, dtype=float).tolist()}).encode()
    return server.request("POST", "/v1/predict", body)


def config(artifact: Path, **mechanism: Any) -> ServerConfig:
    return ServerConfig(artifact=artifact, mechanism=Mechanism.model_validate(mechanism), workers=2)


@pytest.fixture(scope="module")
def pate_server(digits: Digits) -> Iterator[ThreadedServer]:
    cfg = config(digits.ensemble, type="pate", teachers=TEACHERS, noiseMultiplier="1")
    with ThreadedServer(replace(cfg, max_batch=256, max_body_bytes=256 * 1024)) as server:
        yield server


# ------------------------------------------------------------- mechanisms end to end


def _accuracy(outputs: list[dict[str, Any]], y: np.ndarray) -> float:
    return float(np.mean([out["label"] == label for out, label in zip(outputs, y, strict=True)]))


def test_none_serves_the_dp_trained_model_for_free(digits: Digits) -> None:
    with ThreadedServer(config(digits.single, type="none")) as server:
        status, body = predict(server, digits.x_test[:200])
    assert status == 200, body
    assert body["queries"] == 0 and body["mechanism"] == {"type": "none"}
    assert body["modelVersion"] == "v7" and "noise" not in body
    outputs = body["outputs"]
    assert len(outputs) == 200 and _accuracy(outputs, digits.y_test[:200]) > 0.85
    for out in outputs:
        assert math.isclose(sum(out["probabilities"]), 1.0, rel_tol=1e-6)
        assert out["text"] == LABELS[out["label"]]


def test_pate_answers_noisy_labels_one_query_each(
    pate_server: ThreadedServer, digits: Digits
) -> None:
    status, body = predict(pate_server, digits.x_test[:200])
    assert status == 200, body
    assert body["queries"] == 200
    assert body["mechanism"] == {"type": "pate", "teachers": TEACHERS, "noiseMultiplier": "1"}
    assert body["noise"]["distribution"] == "discrete-gaussian"
    assert body["noise"]["rho"] <= 1.0  # 1/σ² with σ = 1
    assert set(body["outputs"][0]) == {"label", "text"}  # the histogram is not released
    assert _accuracy(body["outputs"], digits.y_test[:200]) > 0.7


def test_gaussian_answers_noisy_vectors_with_stated_sensitivity(digits: Digits) -> None:
    sensitivity = "0.3"  # >= min(2·1, √2)/5 = 0.283
    cfg = config(
        digits.ensemble,
        type="gaussian",
        noiseMultiplier="0.05",
        clipNorm="1",
        sensitivity=sensitivity,
    )
    with ThreadedServer(cfg) as server:
        status, body = predict(server, digits.x_test[:200])
    assert status == 200, body
    assert body["queries"] == 200 and body["mechanism"]["sensitivity"] == sensitivity
    noise = body["noise"]
    assert noise["l2Sensitivity"] == 0.3 and noise["std"] == pytest.approx(0.05, rel=1e-5)
    assert noise["rho"] <= 0.3**2 / (2 * 0.05**2)
    assert all(len(out["vector"]) == 10 for out in body["outputs"])
    assert _accuracy(body["outputs"], digits.y_test[:200]) > 0.7


def test_laplace_embedding_answers_noisy_embeddings(digits: Digits) -> None:
    with ThreadedServer(config(digits.single, type="laplace-embedding", epsilon="100")) as server:
        status, body = predict(server, digits.x_test[:100])
    assert status == 200, body
    assert body["queries"] == 100 and body["noise"]["epsilon"] <= 100
    assert body["noise"]["scale"] == pytest.approx(0.02, rel=1e-5)
    assert all(len(out["embedding"]) == 10 for out in body["outputs"])
    assert _accuracy(body["outputs"], digits.y_test[:100]) > 0.3


def test_mismatched_mechanism_fails_at_load(digits: Digits) -> None:
    server = ModelServer(config(digits.single, type="pate", teachers=5, noiseMultiplier="1"))
    with pytest.raises(ValueError, match="needs a pate-ensemble"):
        server.load_blocking()


# ------------------------------------------------------------------------ bad input

WIDE = [0.5] * 64


@pytest.mark.parametrize(
    ("body", "status", "reason", "mentions"),
    [
        (b"{not json", 400, "MalformedJSON", "not valid JSON"),
        (b"\xff\xfe\x00", 400, "MalformedJSON", "not valid JSON"),
        (b"[" * 100_000, 400, "MalformedJSON", "the body is nested too deeply"),
        (b'{"inputs": ' + b"[" * 100_000, 400, "MalformedJSON", "field 'inputs' is nested"),
        (b"", 400, "MalformedJSON", "not valid JSON"),
        (b"[1, 2]", 400, "InvalidRequest", "object"),
        (b"{}", 400, "InvalidRequest", "inputs"),
        (b'{"inputs": []}', 400, "InvalidRequest", "inputs"),
        (b'{"inputs": [[]]}', 400, "InvalidRequest", "inputs.0"),
        (b'{"inputs": [[1, 2, 3]]}', 400, "InvalidRequest", "inputs.0: has 3 values, expected 64"),
        (b'{"inputs": [1, 2]}', 400, "InvalidRequest", "inputs.0"),
        (json.dumps({"inputs": [["x", *WIDE[1:]]]}).encode(), 400, "InvalidRequest", "inputs.0.0"),
        (json.dumps({"inputs": [[True, *WIDE[1:]]]}).encode(), 400, "InvalidRequest", "inputs.0.0"),
        (json.dumps({"inputs": [[*WIDE[:5], float("nan"), *WIDE[6:]]]}).encode(), 400,
         "InvalidRequest", "inputs.0.5"),
        (json.dumps({"inputs": [[1e39, *WIDE[1:]]]}).encode(), 400, "InvalidRequest", "float32"),
        (json.dumps({"inputs": [WIDE], "extra": 1}).encode(), 400, "InvalidRequest", "extra"),
        (json.dumps({"inputs": [WIDE] * 257}).encode(), 413, "BatchTooLarge", "at most 256"),
        (b'{"inputs": [[' + b"0.0," * 70_000 + b"0.0]]}", 413, "PayloadTooLarge", "262144 bytes"),
    ],
)  # fmt: skip
def test_bad_requests_get_json_4xx(
    pate_server: ThreadedServer, body: bytes, status: int, reason: str, mentions: str
) -> None:
    got, payload = pate_server.request("POST", "/v1/predict", body)
    assert (got, payload["reason"]) == (status, reason), payload
    assert mentions in payload["message"]
    # ... and the server keeps serving.
    assert predict(pate_server, [WIDE])[0] == 200


def test_unknown_routes_and_methods_get_json(pate_server: ThreadedServer) -> None:
    assert pate_server.request("GET", "/nope")[0] == 404
    status, payload = pate_server.request("GET", "/v1/predict")
    assert status == 405 and payload["reason"] == "MethodNotAllowed"
    assert pate_server.request("GET", "/healthz") == (200, {"status": "ok"})
    assert pate_server.request("GET", "/readyz") == (200, {"status": "ready", "modelVersion": "v1"})


def test_not_ready_until_loaded(digits: Digits) -> None:
    with ThreadedServer(config(digits.single, type="none"), load=False) as server:
        assert server.request("GET", "/healthz")[0] == 200
        assert server.request("GET", "/readyz")[1]["reason"] == "NotReady"
        status, payload = predict(server, [WIDE])
        assert (status, payload["reason"]) == (503, "NotReady")


def test_overflowing_inputs_get_a_json_500_and_release_nothing(
    pate_server: ThreadedServer,
) -> None:
    status, payload = predict(pate_server, [[3e38] * 64])
    assert (status, payload["reason"]) == (500, "ModelError")
    assert "NaN or infinite" in payload["message"]
    assert predict(pate_server, [WIDE])[0] == 200


def test_model_failure_is_a_json_500_and_the_server_survives(digits: Digits) -> None:
    with ThreadedServer(config(digits.broken, type="laplace-embedding", epsilon="1")) as server:
        for _ in range(2):
            status, payload = predict(server, [WIDE])
            assert (status, payload["reason"]) == (500, "ModelError")
            assert "NaN" in payload["message"]
        assert server.request("GET", "/healthz")[0] == 200


# ----------------------------------------------------------------------------- fuzz

_json_scalars = (
    st.none() | st.booleans() | st.integers(-(10**40), 10**40) | st.floats() | st.text(max_size=8)
)
_json = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
_rows = st.lists(
    st.one_of(
        st.lists(st.floats(width=64), min_size=64, max_size=64),
        st.lists(st.floats(width=32, allow_nan=False), min_size=64, max_size=64),
        st.lists(st.floats(-10, 10), min_size=0, max_size=70),
        st.lists(_json_scalars, max_size=66),
    ),
    max_size=5,
)
_bodies = st.one_of(
    _json.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"inputs": _rows}).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"inputs": _rows}, optional={"x": _json}).map(
        lambda v: json.dumps(v).encode()
    ),
    st.binary(max_size=64),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=_bodies)
def test_fuzzed_bodies_never_crash_the_server(pate_server: ThreadedServer, body: bytes) -> None:
    status, payload = pate_server.request("POST", "/v1/predict", body)
    if status == 200:
        assert payload["queries"] == len(payload["outputs"]) >= 1
    else:
        # Documented: 400/413 for bad requests; 500 ModelError when finite float32 inputs
        # overflow inside the model (nothing is released then).
        assert status in (400, 413) or (status, payload["reason"]) == (500, "ModelError"), payload
        assert set(payload) == {"reason", "message"} and payload["message"]


# ------------------------------------------------------------------------------ CLI


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_cli_serves_and_stops_on_sigterm(digits: Digits) -> None:
    port = _free_port()
    mechanism = json.dumps({"type": "pate", "teachers": TEACHERS, "noiseMultiplier": "2"})
    env = {**os.environ, "DPSERVE_ARTIFACT": str(digits.ensemble), "DPSERVE_SERVER_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpserve_runtime.server", "--mechanism", mechanism],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if http_request(port, "GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        body = json.dumps({"inputs": digits.x_test[:3].tolist()}).encode()
        status, payload = http_request(port, "POST", "/v1/predict", body)
        assert status == 200 and payload["queries"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_serve_exits_1_on_a_bad_artifact(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = ServerConfig(
        artifact=tmp_path, mechanism=Mechanism(type="none"), port=_free_port(), workers=1
    )
    assert await asyncio.wait_for(serve(cfg), 60) == 1
    assert "no manifest.json" in caplog.text


@pytest.mark.parametrize(
    ("mechanism", "message"),
    [
        ("{", "not valid JSON"),
        ('{"type": "pate", "noiseMultiplier": "-1"}', "noiseMultiplier"),
        ('{"type": "dp-magic"}', "type"),
    ],
)
def test_cli_rejects_a_bad_mechanism(
    mechanism: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--artifact", "/nowhere", "--mechanism", mechanism])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
