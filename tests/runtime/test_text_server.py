"""The model server for huggingface artifacts over real HTTP on loopback: OpenAI completions
and chat (plain and SSE), embeddings under each mechanism checked against a reference
pooling of MiniLM, text classification, and a 400 naming the field for every bad input."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpserve.api.mechanism import Mechanism
from dpserve_runtime.generation import IncrementalDetokenizer, SamplingParams, StopMatcher, generate
from dpserve_runtime.server.__main__ import parse_args
from dpserve_runtime.server.app import ServerConfig, build_server, serve
from dpserve_runtime.server.mechanisms import MechanismConfigError
from dpserve_runtime.server.openai_schema import ChatMessage, OpenAIError
from dpserve_runtime.server.textapp import TextModelServer
from dpserve_runtime.server.textmodels import TextGenerator, TextModel, fallback_chat_prompt
from text_support import build_tiny_causal_lm, build_tiny_classifier, minilm_artifact

MAX_TOKENS = 24
MAX_CHOICES = 3
LABELS = ["billing", "clinical", "access"]
SENTENCES = [
    "The patient reported a mild headache after the second dose.",
    "After the second dose the patient had a slight headache.",
    "The parking garage accepts cards and the first hour is free.",
]


def mechanism(**wire: Any) -> Mechanism:
    return Mechanism.model_validate(wire)


# ------------------------------------------------------------------------ servers


class Served:
    """The real text server app on 127.0.0.1 (ephemeral port) in a background event loop."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    async def _start(self) -> None:
        server = build_server(self.config)
        assert isinstance(server, TextModelServer)
        self.server = server
        await server.load()
        self.runner = web.AppRunner(server.app())
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]

    def __enter__(self) -> Served:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(120)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)

    def post_raw(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type") or "", response.read()
        finally:
            conn.close()

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, _, raw = self.post_raw(path, json.dumps(body).encode())
        return status, json.loads(raw)

    def stream(self, path: str, body: dict[str, Any]) -> list[dict[str, Any] | str]:
        """The SSE events of a streamed answer: parsed chunks, then "[DONE]"."""
        status, ctype, raw = self.post_raw(path, json.dumps({**body, "stream": True}).encode())
        assert status == 200 and ctype.startswith("text/event-stream"), raw[:300]
        events: list[dict[str, Any] | str] = []
        for block in raw.decode().split("\n\n"):
            if not block:
                continue
            assert block.startswith("data: "), block
            payload = block[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
        return events


@dataclass(frozen=True)
class Artifacts:
    lm: Path
    classifier: Path
    minilm: Path


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    root = tmp_path_factory.mktemp("text")
    return Artifacts(
        build_tiny_causal_lm(root / "lm"),
        build_tiny_classifier(root / "cls", LABELS),
        minilm_artifact(root / "minilm"),
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(artifact: Path, mech: Mechanism, **fields: Any) -> ServerConfig:
    return ServerConfig(artifact=artifact, mechanism=mech, device="cpu", **fields)


@pytest.fixture(scope="module")
def generator(artifacts: Artifacts) -> Iterator[Served]:
    config = _config(artifacts.lm, mechanism(type="none"), task="text-generation",
                     max_tokens=MAX_TOKENS, max_choices=MAX_CHOICES)
    with Served(config) as served:
        yield served


@pytest.fixture(scope="module")
def classifier(artifacts: Artifacts) -> Iterator[Served]:
    with Served(_config(artifacts.classifier, mechanism(type="none"))) as served:
        yield served


@pytest.fixture(scope="module")
def encoder(artifacts: Artifacts) -> Iterator[Served]:
    with Served(_config(artifacts.minilm, mechanism(type="none"),
                        task="feature-extraction")) as served:
        yield served


def _lm(served: Served) -> TextModel:
    text = served.server.text
    assert text is not None
    return text


def _reference_greedy(served: Served, prompt_ids: list[int], tokens: int) -> str:
    """transformers' own greedy decoding of the same model: what the server must return."""
    text = _lm(served)
    with torch.inference_mode():
        out = text.model.generate(torch.tensor([prompt_ids]), max_new_tokens=tokens,
                                  do_sample=False, eos_token_id=None, pad_token_id=1)
    decoded: str = text.tokenizer.decode(out[0, len(prompt_ids):], skip_special_tokens=True)
    return decoded


# ------------------------------------------------------------------------ generation


def test_greedy_completion_is_transformers_greedy_decoding(generator: Served) -> None:
    status, body = generator.post("/v1/completions", {
        "model": "m", "prompt": "The patient", "max_tokens": 12, "temperature": 0})
    assert status == 200, body
    ids = _lm(generator).token_ids("The patient")
    (choice,) = body["choices"]
    assert choice["text"] == _reference_greedy(generator, ids, 12)
    assert choice["finish_reason"] == "length" and choice["index"] == 0
    assert body["object"] == "text_completion" and body["model"] == "m"
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 12,
                             "total_tokens": len(ids) + 12}


def test_streamed_completion_equals_the_plain_one(generator: Served) -> None:
    request = {"model": "m", "prompt": "Please bring", "max_tokens": 16, "temperature": 0}
    _, plain = generator.post("/v1/completions", request)
    events = generator.stream("/v1/completions", request)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    assert len(chunks) == len(events) - 1 and len(chunks) > 2  # one chunk per text delta
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"


def test_sampling_is_reproducible_under_a_seed_and_gives_n_choices(generator: Served) -> None:
    request = {"model": "m", "prompt": "The nurse", "max_tokens": 10, "n": 3,
               "temperature": 1.0, "top_p": 0.9, "seed": 7}
    _, first = generator.post("/v1/completions", request)
    _, again = generator.post("/v1/completions", request)
    _, other = generator.post("/v1/completions", {**request, "seed": 8})
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    assert first["choices"] == again["choices"]
    assert first["choices"] != other["choices"]
    # Random-init weights are nearly uniform: sampled choices differ from each other.
    assert len({c["text"] for c in first["choices"]}) > 1


def test_streamed_choices_carry_their_index(generator: Served) -> None:
    request = {"model": "m", "prompt": ["The clinic", "Your refill"], "max_tokens": 6,
               "temperature": 0}
    _, plain = generator.post("/v1/completions", request)
    events = generator.stream("/v1/completions", request)
    texts: dict[int, str] = {}
    finished: dict[int, str] = {}
    for event in events[:-1]:
        assert isinstance(event, dict)
        (choice,) = event["choices"]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        if choice["finish_reason"] is not None:
            finished[choice["index"]] = choice["finish_reason"]
    assert texts == {c["index"]: c["text"] for c in plain["choices"]}
    assert finished == {0: "length", 1: "length"}


def test_stop_sequences_cut_the_text_plain_and_streamed(generator: Served) -> None:
    base = {"model": "m", "prompt": "The patient", "max_tokens": 20, "temperature": 0}
    _, full = generator.post("/v1/completions", base)
    text = full["choices"][0]["text"]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), text  # the cut lands on visible text
    request = {**base, "stop": [stop, "never-produced"]}
    _, cut = generator.post("/v1/completions", request)
    assert cut["choices"][0]["text"] == text[: text.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    events = generator.stream("/v1/completions", request)
    streamed = "".join(e["choices"][0]["text"] for e in events if isinstance(e, dict))
    assert streamed == text[: text.index(stop)]


def test_chat_uses_the_fallback_template(generator: Served) -> None:
    messages = [{"role": "system", "content": "You answer support questions."},
                {"role": "user", "content": [{"type": "text", "text": "When is the clinic"},
                                             {"type": "text", "text": " open?"}]}]
    status, body = generator.post("/v1/chat/completions", {
        "model": "m", "messages": messages, "max_completion_tokens": 8, "temperature": 0})
    assert status == 200, body
    prompt = fallback_chat_prompt([ChatMessage.model_validate(m) for m in messages])
    assert prompt.endswith("User: When is the clinic open?\nAssistant:")
    ids = _lm(generator).token_ids(prompt)
    assert body["usage"]["prompt_tokens"] == len(ids)
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant",
                                 "content": _reference_greedy(generator, ids, 8)}
    assert body["object"] == "chat.completion"


def test_streamed_chat_chunks(generator: Served) -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "Hello"}],
               "max_tokens": 8, "temperature": 0, "n": 2}
    _, plain = generator.post("/v1/chat/completions", request)
    events = generator.stream("/v1/chat/completions", request)
    chunks = [e for e in events if isinstance(e, dict)]
    assert events[-1] == "[DONE]"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    first = [c["choices"][0] for c in chunks[:2]]
    assert [(c["index"], c["delta"]) for c in first] == [
        (0, {"role": "assistant", "content": ""}), (1, {"role": "assistant", "content": ""})]
    for index in (0, 1):
        deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks[2:]
                  if c["choices"][0]["index"] == index]
        assert "".join(deltas) == plain["choices"][index]["message"]["content"]


def test_chat_template_of_the_tokenizer_is_used(artifacts: Artifacts, tmp_path: Path) -> None:
    root = build_tiny_causal_lm(tmp_path / "lm")
    config_path = root / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")
    config_path.unlink()  # a hard link to the session cache: replace, do not edit
    config_path.write_text(json.dumps(config))
    text = TextModel.load(root, "text-generation", torch.device("cpu"))
    generator = TextGenerator(text)
    assert generator.has_chat_template
    ids = generator.chat_prompt_ids([ChatMessage(role="user", content="Hi there")])
    assert text.tokenizer.decode(ids) == "<user>Hi there\n<assistant>"
    config["chat_template"] = "{{ raise_exception('roles must alternate') }}"
    config_path.write_text(json.dumps(config))
    strict = TextGenerator(TextModel.load(root, "text-generation", torch.device("cpu")))
    with pytest.raises(OpenAIError, match="messages: the model's chat template refuses"):
        strict.chat_prompt_ids([ChatMessage(role="user", content="Hi there")])


# ------------------------------------------------------------------------ bad input


def _completion(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": "The patient", **fields}


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "Hi"}], **fields}


LONG_PROMPT = "The patient reported a mild headache. " * 40  # far over 128 tokens

BAD_GENERATION = [
    ("/v1/completions", _completion(max_tokens=MAX_TOKENS + 1), "max_tokens", None),
    ("/v1/completions", _completion(n=MAX_CHOICES + 1), "n", None),
    ("/v1/completions", _completion(prompt=["a", "b"], n=2), "n", None),
    ("/v1/completions", _completion(prompt=LONG_PROMPT), "prompt", "context_length_exceeded"),
    ("/v1/completions", _completion(prompt="The" + " patient" * 110, max_tokens=20), "max_tokens",
     "context_length_exceeded"),
    ("/v1/completions", _completion(max_tokens=0), "max_tokens", None),
    ("/v1/completions", _completion(max_tokens="5"), "max_tokens", None),
    ("/v1/completions", _completion(n=1.5), "n", None),
    ("/v1/completions", _completion(temperature="hot"), "temperature", None),
    ("/v1/completions", _completion(temperature=2.5), "temperature", None),
    ("/v1/completions", _completion(top_p=0), "top_p", None),
    ("/v1/completions", _completion(stream="yes"), "stream", None),
    ("/v1/completions", _completion(stop=["a", "b", "c", "d", "e"]), "stop", None),
    ("/v1/completions", _completion(seed=True), "seed", None),
    ("/v1/completions", _completion(logprobs=5), "logprobs", "unsupported_parameter"),
    ("/v1/completions", _completion(prompt=[1, 2, 3]), "prompt.0", None),
    ("/v1/completions", {"model": "m"}, "prompt", None),
    ("/v1/completions", _completion(prompt=""), "prompt", None),
    ("/v1/chat/completions", _chat(messages=[{"role": "tool", "content": "x"}]),
     "messages.0.role", None),
    ("/v1/chat/completions", _chat(messages=[{"role": "user", "content": "x", "name": "a"}]),
     "messages.0.name", "unsupported_parameter"),
    ("/v1/chat/completions", _chat(messages=[]), "messages", None),
    ("/v1/chat/completions", _chat(messages=[{"role": "user", "content": 3}]),
     "messages.0.content", None),
    ("/v1/chat/completions", _chat(messages=[{"role": "user", "content": LONG_PROMPT}]),
     "messages", "context_length_exceeded"),
    ("/v1/chat/completions", _chat(max_tokens=4, max_completion_tokens=4),
     "max_completion_tokens", None),
    ("/v1/chat/completions", _chat(max_completion_tokens=MAX_TOKENS + 1),
     "max_completion_tokens", None),
]


@pytest.mark.parametrize(("path", "body", "param", "code"), BAD_GENERATION,
                         ids=[f"{p}-{param}-{i}" for i, (p, _, param, _c)
                              in enumerate(BAD_GENERATION)])
def test_bad_generation_requests_are_400_naming_the_field(
    generator: Served, path: str, body: dict[str, Any], param: str, code: str | None
) -> None:
    for stream in (False, True):
        status, answer = generator.post(path, {**body, "stream": stream}
                                        if "stream" not in body else body)
        assert status == 400, answer
        error = answer["error"]
        assert error["param"] == param, error
        assert error["type"] == "invalid_request_error"
        assert error["message"].startswith(param), error
        if code is not None:
            assert error["code"] == code


def test_malformed_json_and_wrong_routes(generator: Served) -> None:
    status, _, raw = generator.post_raw("/v1/completions", b"{not json")
    assert status == 400 and "not valid JSON" in json.loads(raw)["error"]["message"]
    status, _, raw = generator.post_raw("/v1/completions", b"[1]")
    assert status == 400 and json.loads(raw)["error"]["message"] == "body must be a JSON object"
    status, body = generator.post("/v1/embeddings", {"model": "m", "input": "x"})
    assert status == 404 and body["error"]["code"] == "unsupported_route"
    status, body = generator.post("/v1/predict", {"inputs": ["x"]})
    assert status == 404 and "text-classification" in body["error"]["message"]


# ------------------------------------------------------------------------ embeddings


def _reference_embeddings(texts: list[str]) -> np.ndarray:
    """Mean pooling of all-MiniLM-L6-v2 over the attention mask, L2-normalised, computed here
    from the package's own files (the sentence-transformers recipe)."""
    from transformers import AutoModel, AutoTokenizer

    from text_support import minilm_source

    source = str(minilm_source())
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    model = AutoModel.from_pretrained(source, local_files_only=True).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = ((hidden * mask).sum(1) / mask.sum(1)).double().numpy()
    unit: np.ndarray = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    return unit


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return _reference_embeddings(SENTENCES)


def test_embeddings_without_noise_are_normalised_mean_pooled_minilm(
    encoder: Served, reference: np.ndarray
) -> None:
    status, body = encoder.post("/v1/embeddings", {"model": "minilm", "input": SENTENCES})
    assert status == 200, body
    assert body["object"] == "list" and body["queries"] == 0 and "noise" not in body
    assert body["mechanism"] == {"type": "none"}
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    # A real sentence encoder: the paraphrase is closer than the unrelated sentence.
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.7 > similarity[0, 2] + 0.3
    # One string is one input.
    _, single = encoder.post("/v1/embeddings", {"model": "minilm", "input": SENTENCES[2]})
    np.testing.assert_allclose(single["data"][0]["embedding"], reference[2], atol=1e-5)


def test_gaussian_embeddings_have_the_stated_noise(
    artifacts: Artifacts, reference: np.ndarray
) -> None:
    sigma = 0.05
    mech = mechanism(type="gaussian", noiseMultiplier=str(sigma), clipNorm="1", sensitivity="2")
    with Served(_config(artifacts.minilm, mech)) as served:
        status, body = served.post("/v1/embeddings", {"model": "m", "input": SENTENCES})
    assert status == 200, body
    assert body["queries"] == 3
    assert body["noise"]["std"] >= sigma
    noise = np.array([d["embedding"] for d in body["data"]]) - reference
    # 1152 draws: the sample std is within a few percent of sigma (loose: 20%).
    assert 0.8 * sigma < noise.std() < 1.2 * sigma
    assert abs(noise.mean()) < 4 * sigma / np.sqrt(noise.size)


def test_laplace_embeddings_clip_to_l1_and_add_laplace_noise(
    artifacts: Artifacts, reference: np.ndarray
) -> None:
    epsilon = 20.0  # scale 2/ε = 0.1
    with Served(_config(artifacts.minilm,
                        mechanism(type="laplace-embedding", epsilon=str(epsilon)))) as served:
        status, body = served.post("/v1/embeddings", {"model": "m", "input": SENTENCES})
    assert status == 200, body
    assert body["queries"] == 3
    clipped = reference / np.maximum(1.0, np.abs(reference).sum(axis=1, keepdims=True))
    noise = np.array([d["embedding"] for d in body["data"]]) - clipped
    scale = 2.0 / epsilon
    # Laplace(b): std b·√2, mean |x| = b.
    assert 0.8 * scale < np.abs(noise).mean() < 1.2 * scale


BAD_EMBEDDINGS = [
    ({"model": "m", "input": []}, "input"),
    ({"model": "m", "input": ""}, "input"),
    ({"model": "m", "input": ["ok", 5]}, "input.1"),
    ({"model": "m", "input": ["ok", LONG_PROMPT * 4]}, "input.1"),
    ({"model": "m", "input": "ok", "encoding_format": "base64"}, "encoding_format"),
    ({"model": "m", "input": "ok", "dimensions": 64}, "dimensions"),
    ({"input": "ok"}, "model"),
]


@pytest.mark.parametrize(("body", "param"), BAD_EMBEDDINGS)
def test_bad_embedding_requests_are_400_naming_the_field(
    encoder: Served, body: dict[str, Any], param: str
) -> None:
    status, answer = encoder.post("/v1/embeddings", body)
    assert status == 400, answer
    assert answer["error"]["param"] == param
    assert answer["error"]["message"].startswith(param)


def test_too_many_embedding_inputs_are_refused(encoder: Served) -> None:
    count = encoder.config.max_batch + 1
    status, answer = encoder.post("/v1/embeddings", {"model": "m", "input": ["a"] * count})
    assert status == 400 and answer["error"]["param"] == "input"


# ------------------------------------------------------------------------ classification


def test_text_classification_predicts_labels(classifier: Served) -> None:
    status, body = classifier.post("/v1/predict", {"inputs": SENTENCES})
    assert status == 200, body
    assert body["queries"] == 0 and body["mechanism"] == {"type": "none"}
    assert len(body["outputs"]) == 3
    for out in body["outputs"]:
        assert out["text"] == LABELS[out["label"]]
        assert abs(sum(out["probabilities"]) - 1.0) < 1e-9
        assert out["label"] == int(np.argmax(out["probabilities"]))
    # Batched with padding, each answer equals the input classified alone.
    _, alone = classifier.post("/v1/predict", {"inputs": [SENTENCES[2]]})
    np.testing.assert_allclose(alone["outputs"][0]["probabilities"],
                               body["outputs"][2]["probabilities"], atol=1e-5)


@pytest.mark.parametrize(("body", "param"), [
    ({"inputs": []}, "inputs"),
    ({"inputs": [1, 2]}, "inputs.0"),
    ({"inputs": ["ok", LONG_PROMPT * 4]}, "inputs.1"),
    ({"inputs": ["ok"], "top_k": 2}, "top_k"),
])
def test_bad_predict_requests_are_400_naming_the_field(
    classifier: Served, body: dict[str, Any], param: str
) -> None:
    status, answer = classifier.post("/v1/predict", body)
    assert status == 400, answer
    assert answer["error"]["param"] == param


# ------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(("which", "mech", "task", "message"), [
    ("lm", {"type": "gaussian", "noiseMultiplier": "1", "clipNorm": "1", "sensitivity": "2"},
     None, "text-generation is served with mechanism 'none'"),
    ("classifier", {"type": "laplace-embedding", "epsilon": "1"}, None,
     "text-classification is served with mechanism 'none'"),
    ("minilm", {"type": "gaussian", "noiseMultiplier": "1", "clipNorm": "1",
                "sensitivity": "1.5"}, None, "below the provable L2 sensitivity 2"),
    ("minilm", {"type": "pate", "teachers": 2, "noiseMultiplier": "1"}, None, "pate"),
    ("lm", {"type": "none"}, "feature-extraction", "task: the artifact was saved for"),
])
def test_mechanisms_and_tasks_that_do_not_fit_are_refused(
    artifacts: Artifacts, which: str, mech: dict[str, Any], task: str | None, message: str
) -> None:
    path = {"lm": artifacts.lm, "classifier": artifacts.classifier,
            "minilm": artifacts.minilm}[which]
    server = TextModelServer(_config(path, mechanism(**mech), task=task))
    with pytest.raises((MechanismConfigError, ValueError), match=message):
        server.load_blocking()


def test_generation_flags_are_refused_for_other_tasks(artifacts: Artifacts) -> None:
    server = TextModelServer(_config(artifacts.minilm, mechanism(type="none"), max_tokens=8))
    with pytest.raises(ValueError, match="--max-tokens: applies to task text-generation"):
        server.load_blocking()


async def test_a_pickled_artifact_never_serves(artifacts: Artifacts, tmp_path: Path) -> None:
    root = build_tiny_causal_lm(tmp_path / "lm")
    torch.save({"w": torch.zeros(1)}, root / "pytorch_model.bin")
    config = _config(root, mechanism(type="none"), port=0)
    assert await asyncio.wait_for(serve(config), 120) == 1


@pytest.mark.slow
def test_cli_process_serves_embeddings_offline_and_stops_on_sigterm(artifacts: Artifacts) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update({"DPSERVE_ARTIFACT": str(artifacts.minilm), "DPSERVE_SERVER_PORT": str(port),
                "DPSERVE_TASK": "feature-extraction", "DPSERVE_DEVICE": "cpu",
                # an unreachable hub: any lookup would fail (and HF_HUB_OFFLINE is set anyway)
                "HF_ENDPOINT": "http://127.0.0.1:9"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpserve_runtime.server",
         "--mechanism", '{"type": "laplace-embedding", "epsilon": "4"}'],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)  # polling the readiness condition
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/v1/embeddings", body=json.dumps({"model": "m", "input": ["a", "b"]}))
        answer = json.loads(conn.getresponse().read())
        assert answer["queries"] == 2 and len(answer["data"][1]["embedding"]) == 384
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config, _ = parse_args(["--artifact", "/m", "--mechanism", '{"type": "none"}',
                            "--task", "text-generation", "--max-tokens", "64",
                            "--max-choices", "2", "--device", "cpu"])
    assert (config.task, config.max_tokens, config.max_choices, config.device) == (
        "text-generation", 64, 2, "cpu")
    monkeypatch.setenv("DPSERVE_TASK", "feature-extraction")
    monkeypatch.setenv("DPSERVE_MAX_TOKENS", "12")
    config, _ = parse_args(["--artifact", "/m", "--mechanism", '{"type": "none"}'])
    assert (config.task, config.max_tokens, config.max_choices, config.device) == (
        "feature-extraction", 12, None, "auto")
    with pytest.raises(SystemExit):
        parse_args(["--artifact", "/m", "--mechanism", '{"type": "none"}', "--task", "chat"])


# ------------------------------------------------------------------------ pieces


def test_stop_matcher_holds_back_only_possible_stop_prefixes() -> None:
    matcher = StopMatcher(("END", "xyz"))
    assert matcher.feed("abc E") == "abc "
    assert matcher.feed("N") == ""
    assert matcher.feed("x") == "EN" and matcher.held == "x"
    assert matcher.feed("yz tail") == ""
    assert matcher.stopped and matcher.finish() == ""
    other = StopMatcher(("END",))
    assert other.feed("E") == "" and other.finish() == "E"


def test_incremental_detokenizer_releases_whole_characters(artifacts: Artifacts) -> None:
    text = TextModel.load(artifacts.lm, "text-generation", torch.device("cpu"))
    phrase = "Dosage: 5 µg — café ☕ done"
    ids = text.token_ids(phrase)
    detok = IncrementalDetokenizer(text.tokenizer)
    pieces = [detok.add(token) for token in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == phrase
    assert all("\ufffd" not in piece for piece in pieces)


def test_generation_stops_between_steps_once_cancelled(artifacts: Artifacts) -> None:
    text = TextModel.load(artifacts.lm, "text-generation", torch.device("cpu"))
    cancelled = threading.Event()
    params = SamplingParams(max_tokens=20, temperature=0)
    steps = []
    for step in generate(text.model, text.tokenizer, text.token_ids("Hello"), params, cancelled):
        steps.append(step)
        cancelled.set()  # as the stream handler does when the client goes away
    assert len(steps) == 1


def test_a_client_leaving_a_stream_leaves_the_server_serving(generator: Served) -> None:
    body = json.dumps({"model": "m", "prompt": "The", "max_tokens": MAX_TOKENS,
                       "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", generator.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: " + str(len(body)).encode()
                     + b"\r\n\r\n" + body)
        assert sock.recv(12).startswith(b"HTTP/1.1 200")
    status, answer = generator.post("/v1/completions", _completion(max_tokens=4))
    assert status == 200 and len(answer["choices"]) == 1


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=3),
    max_leaves=8,
)
_fields = st.sampled_from(["model", "prompt", "messages", "max_tokens", "n", "temperature",
                           "top_p", "stop", "seed", "role", "content", "stream"])
_bodies = st.dictionaries(_fields, _json, max_size=6) | st.fixed_dictionaries(
    {"model": st.just("m"),
     "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(
         ["user", "system", "assistant", "tool"]), "content": _json}), max_size=2)},
    optional={"max_tokens": _json, "n": _json, "stop": _json, "temperature": _json})


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_bodies, chat=st.booleans())
def test_fuzzed_bodies_are_answered_or_refused_never_crash(
    generator: Served, body: dict[str, Any], chat: bool
) -> None:
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body = {k: v for k, v in body.items() if k != "stream"}  # plain answers: one JSON
    status, answer = generator.post(path, body)
    if status != 200:
        assert status == 400, answer
        assert set(answer["error"]) == {"message", "type", "param", "code"}
        assert answer["error"]["param"] and answer["error"]["message"]


def test_text_flags_are_refused_for_tensor_artifacts(tmp_path: Path) -> None:
    from dpserve_runtime.server.app import ModelServer

    server = build_server(ServerConfig(artifact=tmp_path, mechanism=mechanism(type="none"),
                                       task="text-generation"))
    assert isinstance(server, ModelServer)  # no huggingface manifest: the tensor server
    with pytest.raises(ValueError, match="--task: applies to huggingface artifacts only"):
        server.load_blocking()
