"""Open Inference Protocol v2 (REST) on the sidecar, in front of the real tensor model server.

``V2Client`` is written from the protocol's text (KServe ``required_api.md``): health is
the status code alone (200 true, 4xx false), metadata and inference are JSON, and every
failure carries ``{"error": "<message>"}``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from dpserve.api.filterconfig import FilterConfig
from dpserve.api.mechanism import Mechanism
from dpserve_runtime.architectures import build_model
from dpserve_runtime.artifact import save_pate_ensemble, save_state_dict_artifact
from dpserve_runtime.filter.app import create_app
from dpserve_runtime.filter.metrics import FilterMetrics
from dpserve_runtime.server.app import ModelServer, ServerConfig
from dpserve_testkit.fakes import FakeLedger, FakeModel

MLP: dict[str, Any] = {"type": "mlp", "inputDim": 64, "hiddenDims": [16], "numClasses": 10}
CNN: dict[str, Any] = {"type": "cnn", "inputShape": [1, 8, 8], "channels": [4, 8],
                       "numClasses": 10}
LABELS = [f"digit {i}" for i in range(10)]
PATE = {"type": "pate", "teachers": 5, "noiseMultiplier": "2"}
MODEL_ID = "ns/digits"
NAME = "digits"


@dataclass
class Response:
    status: int
    body: Any
    headers: Any


class V2Client:
    """The REST side of the Open Inference Protocol, as its specification states it."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = url

    async def _call(self, method: str, path: str, body: Any = None,
                    raw: bytes | None = None) -> Response:
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        async with self._session.request(method, self._url + path, data=data,
                                         headers={"Content-Type": "application/json"}
                                         ) as response:
            text = await response.text()
            return Response(response.status, json.loads(text) if text else None,
                            response.headers)

    async def live(self) -> bool:
        return (await self._call("GET", "/v2/health/live")).status == 200

    async def ready(self) -> bool:
        return (await self._call("GET", "/v2/health/ready")).status == 200

    async def model_ready(self, name: str, version: str | None = None) -> Response:
        return await self._call("GET", self._model(name, version) + "/ready")

    async def server_metadata(self) -> Response:
        return await self._call("GET", "/v2")

    async def metadata(self, name: str, version: str | None = None) -> Response:
        return await self._call("GET", self._model(name, version))

    async def infer(self, name: str, request: Any = None, *, version: str | None = None,
                    raw: bytes | None = None) -> Response:
        return await self._call("POST", self._model(name, version) + "/infer", request, raw)

    @staticmethod
    def _model(name: str, version: str | None) -> str:
        return f"/v2/models/{name}" + (f"/versions/{version}" if version else "")


def tensor(data: Any, shape: list[int], datatype: str = "FP32",
           name: str = "input") -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # Untrained weights are enough: the protocol translation is under test, not accuracy.
    root = tmp_path_factory.mktemp("oip")
    save_pate_ensemble(root / "pate", [build_model(MLP, seed=i) for i in range(5)], MLP,
                       labels=LABELS)
    save_state_dict_artifact(root / "mlp", build_model(MLP, seed=9), MLP)
    save_state_dict_artifact(root / "cnn", build_model(CNN, seed=3), CNN, labels=LABELS)
    return {"pate": root / "pate", "mlp": root / "mlp", "cnn": root / "cnn"}


@dataclass
class Stack:
    client: V2Client
    ledger: FakeLedger
    model: ModelServer | FakeModel
    metrics: FilterMetrics

    def charged(self) -> float:
        value = self.metrics.registry.get_sample_value(
            "dpserve_queries_charged_total", {"model_id": MODEL_ID, "user_group": "default"})
        return value or 0.0


StackFactory = Callable[..., Any]


@pytest.fixture
async def make_stack(tmp_path: Path, artifacts: dict[str, Path],
                     one_torch_thread: None) -> AsyncIterator[StackFactory]:
    servers: list[TestServer] = []
    sessions: list[aiohttp.ClientSession] = []

    async def factory(artifact: str = "pate", *, mechanism: dict[str, Any] | None = None,
                      budget: int = 1000, task: str | None = None,
                      fake: FakeModel | None = None, ledger_url: str | None = None) -> Stack:
        spec = mechanism or PATE
        model: ModelServer | FakeModel
        if fake is not None:
            model, app = fake, fake.app()
        else:
            model = ModelServer(ServerConfig(artifact=artifacts[artifact],
                                             mechanism=Mechanism.model_validate(spec),
                                             workers=1))
            await model.load()
            app = model.app()
        ledger = FakeLedger(budget={None: budget})
        for served in (app, ledger.app()):
            server = TestServer(served, host="127.0.0.1")
            await server.start_server()
            servers.append(server)
        model_url, ledger_server = (str(s.make_url("")).rstrip("/") for s in servers[-2:])
        token = tmp_path / "token"
        token.write_text("test-token")
        config = FilterConfig.model_validate({
            "model": MODEL_ID, "modelVersion": "v1", "mechanism": spec, "task": task,
            "upstream": model_url, "ledgerUrl": ledger_url or ledger_server,
            "tokenPath": str(token), "podName": "pod-0",
            "outputFilter": {"action": "redact", "entities": ["EMAIL_ADDRESS"],
                             "verbatimGuard": {"enabled": False}},
            "lease": {"initialSize": 8, "maxSize": 32, "prefetchFraction": 0.25},
            "maxBodyBytes": 64 * 1024,
        })
        metrics = FilterMetrics(MODEL_ID)
        sidecar = TestServer(create_app(config, "pod-0", metrics=metrics), host="127.0.0.1")
        await sidecar.start_server()
        servers.append(sidecar)
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Stack(V2Client(session, str(sidecar.make_url("")).rstrip("/")), ledger, model,
                     metrics)

    yield factory
    for session in sessions:
        await session.close()
    for server in reversed(servers):
        await server.close()


def rows(n: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n * 64, dtype=np.float32).reshape(n, 64)


async def test_health_and_metadata(make_stack: StackFactory) -> None:
    stack = await make_stack()
    client = stack.client
    assert await client.live() and await client.ready()
    assert (await client.model_ready(NAME)).status == 200
    assert (await client.model_ready(NAME, "v1")).status == 200
    missing = await client.model_ready("other")
    assert missing.status == 404 and isinstance(missing.body["error"], str)
    server = await client.server_metadata()
    assert server.body["name"] == "dpserve-filter" and server.body["extensions"] == []
    meta = await client.metadata(NAME)
    assert meta.status == 200
    assert meta.body == {
        "name": NAME, "versions": ["v1"], "platform": "pytorch",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, -1]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
    }
    assert (await client.metadata(NAME, "v2")).status == 404


async def test_pate_infer_is_charged_per_row(make_stack: StackFactory) -> None:
    stack = await make_stack()
    answer = await stack.client.infer(NAME, {
        "id": "req-7", "inputs": [tensor(rows(3).ravel().tolist(), [3, 64])]})
    assert answer.status == 200, answer.body
    body = answer.body
    assert body["model_name"] == NAME and body["model_version"] == "v1"
    assert body["id"] == "req-7" and body["parameters"] == {"queries": 3}
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["datatype"] == "INT64" and outputs["label"]["shape"] == [3]
    assert all(0 <= v < 10 for v in outputs["label"]["data"])
    # The artifact names its labels: the model answers them too.
    assert outputs["text"]["data"] == [LABELS[v] for v in outputs["label"]["data"]]
    assert stack.charged() == 3


async def test_nested_integer_data_and_output_selection(make_stack: StackFactory) -> None:
    stack = await make_stack()
    data = [[int(v > 0.5) for v in row] for row in rows(2)]
    answer = await stack.client.infer(NAME, {
        "inputs": [tensor(data, [2, 64], "UINT8")], "outputs": [{"name": "label"}]})
    assert answer.status == 200, answer.body
    assert [o["name"] for o in answer.body["outputs"]] == ["label"]
    fp64 = await stack.client.infer(NAME, {"inputs": [tensor(rows(1).tolist(), [1, 64],
                                                             "FP64")]}, version="v1")
    assert fp64.status == 200 and stack.charged() == 3


async def test_mechanism_none_returns_probabilities_free(make_stack: StackFactory) -> None:
    stack = await make_stack("mlp", mechanism={"type": "none"})
    meta = await stack.client.metadata(NAME)
    assert {"name": "probabilities", "datatype": "FP64", "shape": [-1, -1]} in meta.body[
        "outputs"]
    answer = await stack.client.infer(NAME, {"inputs": [tensor(rows(2).tolist(), [2, 64])]})
    assert answer.status == 200, answer.body
    outputs = {o["name"]: o for o in answer.body["outputs"]}
    probabilities = outputs["probabilities"]
    assert probabilities["shape"] == [2, 10] and len(probabilities["data"]) == 20
    assert sum(probabilities["data"][:10]) == pytest.approx(1.0, abs=1e-5)
    assert "text" not in outputs  # this artifact names no labels
    assert stack.ledger.requests == [] and answer.body["parameters"] == {"queries": 0}


async def test_cnn_takes_image_shaped_tensors(make_stack: StackFactory) -> None:
    stack = await make_stack("cnn", mechanism={"type": "none"})
    images = rows(2).reshape(2, 1, 8, 8)
    answer = await stack.client.infer(NAME, {"inputs": [tensor(images.tolist(),
                                                                [2, 1, 8, 8])]})
    assert answer.status == 200, answer.body
    flat = await stack.client.infer(NAME, {"inputs": [tensor(images.ravel().tolist(),
                                                              [2, 1, 8, 8])]})
    assert flat.status == 200
    labels = {o["name"]: o["data"] for o in flat.body["outputs"]}["label"]
    assert labels == {o["name"]: o["data"] for o in answer.body["outputs"]}["label"]


@pytest.mark.parametrize(
    ("request_body", "fragment"),
    [
        ({"inputs": [tensor([0.0] * 64, [1, 64], name="x")]}, "named 'input'"),
        ({"inputs": [tensor([0.0] * 63, [1, 64])]}, "63 elements"),
        ({"inputs": [tensor([0.0] * 64, [64])]}, "shape"),
        ({"inputs": [tensor([0.0] * 64, [1, 64], "FP16")]}, "FP16"),
        ({"inputs": [tensor([True] * 64, [1, 64], "BOOL")]}, "BOOL"),
        ({"inputs": [tensor(["a"] * 64, [1, 64], "BYTES")]}, "BYTES"),
        ({"inputs": [tensor(["a"] * 64, [1, 64])]}, "numbers"),
        ({"inputs": [tensor([300] * 64, [1, 64], "UINT8")]}, "UINT8"),
        ({"inputs": [tensor([0.5] * 64, [1, 64], "INT32")]}, "INT32"),
        ({"inputs": [tensor([[[0.0]]] * 64, [1, 64])]}, "deeper"),
        ({"inputs": [tensor([0.0] * 64, [1, 64])] * 2}, "one input"),
        ({"inputs": []}, "inputs"),
        ({"inputs": [tensor([0.0] * 64, [1, 64])], "outputs": [{"name": "logits"}]},
         "logits"),
        ({"inputs": [tensor([0.0] * 64, [1, 64])], "parameters": {"binary_data": True}},
         "binary_data"),
        ({"inputs": [{**tensor([0.0] * 64, [1, 64]), "extra": 1}]}, "extra"),
        ({"inputs": [tensor([0.0] * 64 * 33, [33, 64])]}, "maxSize"),
        ([1, 2], "object"),
    ],
)
async def test_bad_infer_requests_cost_nothing(make_stack: StackFactory, request_body: Any,
                                               fragment: str) -> None:
    stack = await make_stack()
    answer = await stack.client.infer(NAME, request_body)
    assert answer.status in (400, 413), answer.body
    assert set(answer.body) == {"error"} and fragment in answer.body["error"]
    assert stack.ledger.requests == [] and stack.charged() == 0


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [(b"{nope", "JSON"), (b'{"inputs": "\xff"}', "UTF-8"), (b"[" * 3000 + b"]" * 3000, "")],
)
async def test_malformed_bodies(make_stack: StackFactory, raw: bytes, fragment: str) -> None:
    stack = await make_stack()
    answer = await stack.client.infer(NAME, raw=raw)
    assert answer.status == 400 and fragment in answer.body["error"]
    assert stack.ledger.requests == []


async def test_unknown_model_and_version_are_404(make_stack: StackFactory) -> None:
    stack = await make_stack()
    body = {"inputs": [tensor([0.0] * 64, [1, 64])]}
    for name, version in (("other", None), (NAME, "v9")):
        answer = await stack.client.infer(name, body, version=version)
        assert answer.status == 404 and isinstance(answer.body["error"], str)
    assert stack.ledger.requests == []


async def test_model_refusal_is_relayed_and_not_charged(make_stack: StackFactory) -> None:
    stack = await make_stack()
    # Finite JSON numbers, but beyond float32: the model server refuses them (400).
    answer = await stack.client.infer(NAME, {"inputs": [tensor([1e39] * 64, [1, 64], "FP64")]})
    assert answer.status == 400 and "float32" in answer.body["error"]
    assert stack.charged() == 0


async def test_budget_exhausted_is_429_and_ledger_down_503(
        make_stack: StackFactory, unused_tcp_port: int) -> None:
    body = {"inputs": [tensor([0.0] * 64, [1, 64])]}
    empty = await make_stack(budget=0)
    answer = await empty.client.infer(NAME, body)
    assert answer.status == 429 and set(answer.body) == {"error"}
    down = await make_stack(ledger_url=f"http://127.0.0.1:{unused_tcp_port}")
    answer = await down.client.infer(NAME, body)
    assert answer.status == 503 and int(answer.headers["Retry-After"]) >= 1
    assert "error" in answer.body


async def test_text_classification_takes_bytes(make_stack: StackFactory) -> None:
    fake = FakeModel(text="positive")
    stack = await make_stack(task="text-classification", fake=fake)
    meta = await stack.client.metadata(NAME)
    assert meta.body["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    answer = await stack.client.infer(NAME, {"inputs": [
        tensor(["great film", "dull"], [2], "BYTES", name="text")]})
    assert answer.status == 200, answer.body
    outputs = {o["name"]: o for o in answer.body["outputs"]}
    assert outputs["text"] == {"name": "text", "datatype": "BYTES", "shape": [2],
                               "data": ["positive", "positive"]}
    assert fake.answered_queries == 2 == stack.charged()
    wrong = await stack.client.infer(NAME, {"inputs": [tensor([1.0], [1], name="text")]})
    assert wrong.status == 400 and "BYTES" in wrong.body["error"]
    surrogate = await stack.client.infer(NAME, raw=b'{"inputs": [{"name": "text", "shape": [1],'
                                                   b' "datatype": "BYTES", "data": ["\\ud800"]}]}')
    assert surrogate.status == 400 and "surrogate" in surrogate.body["error"]
    assert fake.answered_queries == 2
    fake.ready = False  # health is the status code alone: 4xx means false
    assert not await stack.client.ready() and await stack.client.live()
    not_ready = await stack.client.model_ready(NAME)
    assert not_ready.status == 400 and not_ready.body is None


async def test_text_generation_model_has_no_v2_routes(tmp_path: Path) -> None:
    config = FilterConfig.model_validate({
        "model": MODEL_ID, "modelVersion": "v1", "mechanism": {"type": "none"},
        "task": "text-generation", "ledgerUrl": "http://127.0.0.1:1",
        "tokenPath": str(tmp_path / "t"), "outputFilter": {"entities": ["EMAIL_ADDRESS"]}})
    sidecar = TestServer(create_app(config, "pod-0"), host="127.0.0.1")
    await sidecar.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            client = V2Client(session, str(sidecar.make_url("")).rstrip("/"))
            answer = await client.infer(NAME, {"inputs": [tensor(["x"], [1], "BYTES")]})
            assert answer.status == 404 and "/v1/chat/completions" in answer.body["error"]
            unknown = await client._call("GET", "/v2/nothing/here")
            assert unknown.status == 404 and isinstance(unknown.body["error"], str)
    finally:
        await sidecar.close()



async def test_real_text_classifier_over_bytes(tmp_path: Path, one_torch_thread: None) -> None:
    # Imported here: transformers takes seconds to import, only these tests need it.
    from dpserve_runtime.server.textapp import TextModelServer
    from text_support import build_tiny_classifier

    artifact = build_tiny_classifier(tmp_path / "clf", labels=["negative", "positive"])
    server = TextModelServer(ServerConfig(artifact=artifact, mechanism=Mechanism(type="none"),
                                          task="text-classification", workers=1))
    await server.load()
    upstream = TestServer(server.app(), host="127.0.0.1")
    await upstream.start_server()
    (tmp_path / "token").write_text("unused")
    config = FilterConfig.model_validate({
        "model": MODEL_ID, "modelVersion": "v1", "task": "text-classification",
        "mechanism": {"type": "none"}, "upstream": str(upstream.make_url("")).rstrip("/"),
        "ledgerUrl": "http://127.0.0.1:1", "tokenPath": str(tmp_path / "token"),
        "outputFilter": {"entities": ["EMAIL_ADDRESS"], "verbatimGuard": {"enabled": False}}})
    sidecar = TestServer(create_app(config, "pod-0"), host="127.0.0.1")
    await sidecar.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            client = V2Client(session, str(sidecar.make_url("")).rstrip("/"))
            meta = (await client.metadata(NAME)).body
            answer = await client.infer(NAME, {"inputs": [
                tensor(["a fine film", "dull"], [2, 1], "BYTES", name="text")]})
            assert answer.status == 200, answer.body
            outputs = {o["name"]: o for o in answer.body["outputs"]}
            # Every declared output is answered, with the declared datatype.
            for declared in meta["outputs"]:
                got = outputs[declared["name"]]
                assert got["datatype"] == declared["datatype"]
                assert len(got["shape"]) == len(declared["shape"]) and got["shape"][0] == 2
            assert set(outputs["text"]["data"]) <= {"negative", "positive"}
    finally:
        await sidecar.close()
        await upstream.close()
