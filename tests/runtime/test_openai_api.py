"""The sidecar's OpenAI-compatible routes, driven by the official ``openai`` client.

The sidecar runs in front of a fake model server (``tests/openai_fake_upstream.py``) and the
fake ledger, all real HTTP servers on loopback.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from dpserve.api.filterconfig import FilterConfig
from dpserve.api.mechanism import Mechanism
from dpserve_runtime.filter.app import create_app
from dpserve_runtime.filter.metrics import FilterMetrics
from dpserve_runtime.filter.pii import PiiAnalyzer
from dpserve_runtime.filter.scan import OutputScanner
from dpserve_runtime.filter.sse import SseParser
from dpserve_testkit.fakes import FakeLedger
from openai_fake_upstream import FakeTextModel

EMAIL = "jane.roe@example.com"
PII_REPLY = f"Sure. Write to {EMAIL} today."
MODEL_ID = "ns/tiny"
SERVED = "tiny"
ENTITIES = ["EMAIL_ADDRESS", "PHONE_NUMBER"]


@dataclass
class Stack:
    model: FakeTextModel
    ledger: FakeLedger
    url: str
    client: openai.AsyncOpenAI
    session: aiohttp.ClientSession
    metrics: FilterMetrics

    async def post(self, path: str, body: Any = None, *, raw: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        data = raw if raw is not None else json.dumps(body).encode()
        async with self.session.post(self.url + path, data=data,
                                     headers=headers or {}) as response:
            return response.status, json.loads(await response.text()), response.headers

    def charged(self) -> float:
        value = self.metrics.registry.get_sample_value(
            "dpserve_queries_charged_total", {"model_id": MODEL_ID, "user_group": "default"})
        return value or 0.0


StackFactory = Callable[..., Any]


@pytest.fixture(scope="module")
def analyzer() -> PiiAnalyzer:
    return PiiAnalyzer(ENTITIES, 0.5, {"PHONE_NUMBER": 0.4})


@pytest.fixture
async def make_stack(tmp_path: Path, analyzer: PiiAnalyzer) -> AsyncIterator[StackFactory]:
    servers: list[TestServer] = []
    closers: list[Any] = []

    async def factory(*, model: FakeTextModel | None = None, task: str = "text-generation",
                      mechanism: dict[str, Any] | None = None,
                      budget: dict[str | None, int] | None = None, action: str = "redact",
                      ledger_url: str | None = None, audit_sink: Any = None,
                      **config: Any) -> Stack:
        model = model or FakeTextModel()
        ledger = FakeLedger(budget=budget if budget is not None else {None: 1000})
        for app in (model.app(), ledger.app()):
            server = TestServer(app, host="127.0.0.1")
            await server.start_server()
            servers.append(server)
        model_url, ledger_server_url = (str(s.make_url("")).rstrip("/") for s in servers[-2:])
        token = tmp_path / "token"
        token.write_text("test-token")
        raw_config: dict[str, Any] = {
            "model": MODEL_ID, "modelVersion": "v1", "task": task,
            "mechanism": mechanism or {"type": "none"},
            "upstream": model_url, "ledgerUrl": ledger_url or ledger_server_url,
            "tokenPath": str(token), "podName": "pod-0",
            "outputFilter": {"action": action, "entities": ENTITIES,
                             "verbatimGuard": {"enabled": False}},
            "lease": {"initialSize": 8, "maxSize": 16, "prefetchFraction": 0.25},
            "generation": {"maxTokens": 32, "maxChoices": 2},
            "upstreamTimeoutSeconds": 2, "maxBodyBytes": 8192,
        }
        raw_config.update(config)
        metrics = FilterMetrics(MODEL_ID)
        sidecar = TestServer(create_app(FilterConfig.model_validate(raw_config), "pod-0",
                                        analyzer=analyzer, metrics=metrics,
                                        audit_sink=audit_sink), host="127.0.0.1")
        await sidecar.start_server()
        servers.append(sidecar)
        url = str(sidecar.make_url("")).rstrip("/")
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        session = aiohttp.ClientSession()
        closers.extend([client.close, session.close])
        return Stack(model, ledger, url, client, session, metrics)

    yield factory
    for close in closers:
        await close()
    for server in reversed(servers):
        await server.close()


def filtered(text: str, analyzer: PiiAnalyzer) -> str:
    result = OutputScanner(analyzer, "redact").scan(text)
    assert isinstance(result.document, str)
    return result.document


# --- models ---------------------------------------------------------------------------------


async def test_models_list_the_served_name(make_stack: StackFactory) -> None:
    stack = await make_stack()
    models = await stack.client.models.list()
    assert [m.id for m in models.data] == [SERVED]
    assert (await stack.client.models.retrieve(SERVED)).id == SERVED
    with pytest.raises(openai.NotFoundError) as info:
        await stack.client.models.retrieve("other")
    assert info.value.code == "model_not_found"


# --- non-streamed generation ----------------------------------------------------------------


async def test_chat_completion_is_redacted(make_stack: StackFactory,
                                           analyzer: PiiAnalyzer) -> None:
    stack = await make_stack(model=FakeTextModel(reply=PII_REPLY))
    answer = await stack.client.chat.completions.create(
        model=SERVED, messages=[{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "How do I reach Jane?"}],
        n=2, max_tokens=16, temperature=0.5)
    assert [c.index for c in answer.choices] == [0, 1]
    for choice in answer.choices:
        assert choice.message.content == filtered(PII_REPLY, analyzer)
        assert "<EMAIL_ADDRESS>" in choice.message.content
    assert answer.model == SERVED and EMAIL not in answer.model_dump_json()
    route, forwarded = stack.model.requests[0]
    assert route == "chat" and forwarded["n"] == 2 and forwarded["max_tokens"] == 16
    assert forwarded["temperature"] == 0.5 and forwarded["model"] == SERVED
    assert stack.ledger.requests == []  # text generation (mechanism none) is free


async def test_completion_and_text_parts(make_stack: StackFactory,
                                         analyzer: PiiAnalyzer) -> None:
    stack = await make_stack(model=FakeTextModel(reply=PII_REPLY))
    answer = await stack.client.completions.create(model=SERVED, prompt="Jane's mail is",
                                                   max_tokens=8)
    assert answer.choices[0].text == filtered(PII_REPLY, analyzer)
    # Content parts are joined into one string for the model server; "developer" is
    # OpenAI's newer name of "system".
    await stack.client.chat.completions.create(
        model=SERVED, messages=[{"role": "developer", "content": "Be brief."},
                                {"role": "user", "content": [{"type": "text", "text": "one"},
                                                             {"type": "text", "text": "two"}]}],
        max_completion_tokens=4)
    _, forwarded = stack.model.requests[-1]
    assert forwarded["messages"] == [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "onetwo"}]
    assert forwarded["max_tokens"] == 4


async def test_non_streamed_block_is_withheld(make_stack: StackFactory) -> None:
    stack = await make_stack(model=FakeTextModel(reply=PII_REPLY), action="block")
    with pytest.raises(openai.APIStatusError) as info:
        await stack.client.chat.completions.create(
            model=SERVED, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 451
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "pii_detected"
    assert body["type"] == "output_blocked" and EMAIL not in json.dumps(body)


CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]


# --- streams --------------------------------------------------------------------------------


async def test_chat_stream_redacts_pii_split_across_chunks(
        make_stack: StackFactory, analyzer: PiiAnalyzer,
        caplog: pytest.LogCaptureFixture) -> None:
    # 3-character pieces: the address arrives as "ne.", "roe", "@ex", ... in separate chunks.
    stack = await make_stack(model=FakeTextModel(reply=PII_REPLY, chunk_chars=3))
    texts: dict[int, list[str]] = {0: [], 1: []}
    finishes: dict[int, str | None] = {}
    with caplog.at_level(logging.INFO, logger="dpserve.audit"):
        stream = await stack.client.chat.completions.create(
            model=SERVED, messages=[{"role": "user", "content": "mail?"}], n=2, stream=True)
        async for chunk in stream:
            assert chunk.model == SERVED and chunk.object == "chat.completion.chunk"
            for choice in chunk.choices:
                if choice.delta.content:
                    texts[choice.index].append(choice.delta.content)
                if choice.finish_reason:
                    finishes[choice.index] = choice.finish_reason
    expected = filtered(PII_REPLY, analyzer)
    for index in (0, 1):
        assert "".join(texts[index]) == expected
        # No emitted delta carries any 4-character piece of the address.
        for delta in texts[index]:
            assert not any(EMAIL[i:i + 4] in delta for i in range(len(EMAIL) - 3))
    assert finishes == {0: "stop", 1: "stop"}
    lines = [r.getMessage() for r in caplog.records if r.name == "dpserve.audit"]
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["outcome"] == "redacted" and line["entities"] == {"EMAIL_ADDRESS": 2}
    assert EMAIL not in caplog.text


async def test_completion_stream(make_stack: StackFactory, analyzer: PiiAnalyzer) -> None:
    stack = await make_stack(model=FakeTextModel(reply=PII_REPLY, chunk_chars=5))
    stream = await stack.client.completions.create(model=SERVED, prompt=["x", "y"],
                                                   stream=True)
    texts: dict[int, str] = {0: "", 1: ""}
    async for chunk in stream:
        assert chunk.object == "text_completion"
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert texts == {0: filtered(PII_REPLY, analyzer), 1: filtered(PII_REPLY, analyzer)}


async def test_model_failing_mid_stream_ends_it(make_stack: StackFactory) -> None:
    stack = await make_stack(model=FakeTextModel(reply=PII_REPLY, mode="fail-mid-stream"))
    stream = await stack.client.chat.completions.create(model=SERVED, messages=MSG,
                                                        stream=True)
    with pytest.raises(openai.APIError) as info:
        async for _ in stream:
            pass
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "upstream_error"


async def test_stream_block_ends_with_terminal_error_event(make_stack: StackFactory) -> None:
    stack = await make_stack(model=FakeTextModel(reply=PII_REPLY, chunk_chars=2),
                             action="block")
    received: list[str] = []
    stream = await stack.client.chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": "mail?"}], stream=True)
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            received.extend(c.delta.content or "" for c in chunk.choices)
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "pii_detected"
    assert body["type"] == "output_blocked"
    sent = "".join(received)
    assert PII_REPLY.startswith(sent)  # what was sent is the clean start, nothing after
    assert "jane" not in sent and "@" not in sent


async def test_stream_raw_events_and_no_done_after_error(make_stack: StackFactory) -> None:
    stack = await make_stack(model=FakeTextModel(reply=PII_REPLY, mode="cut"))
    async with stack.session.post(stack.url + "/v1/chat/completions", json={
            "model": SERVED, "messages": [{"role": "user", "content": "hi"}],
            "stream": True}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = (await response.text()).split("\n\n")
    payloads = [e.removeprefix("data: ") for e in events if e]
    assert "[DONE]" not in payloads
    last = json.loads(payloads[-1])
    assert last == {"error": {"message": last["error"]["message"], "type": "server_error",
                              "param": None, "code": "upstream_error"}}
    # The held-back tail (where the address was being written) never went out.
    sent = "".join(json.loads(p)["choices"][0]["delta"].get("content", "")
                   for p in payloads[:-1] if json.loads(p)["choices"])
    assert "@" not in sent and "jane" not in sent


async def test_malformed_stream_chunk_stops_the_stream(make_stack: StackFactory) -> None:
    stack = await make_stack(model=FakeTextModel(mode="bad-chunk"))
    stream = await stack.client.completions.create(model=SERVED, prompt="x", stream=True)
    with pytest.raises(openai.APIError) as info:
        async for _ in stream:
            pass
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "upstream_protocol_error"


async def test_stalled_stream_times_out_with_terminal_event(make_stack: StackFactory) -> None:
    model = FakeTextModel(reply=PII_REPLY, mode="slow-stream", chunk_chars=4)
    stack = await make_stack(model=model, upstreamTimeoutSeconds=0.5)
    stream = await stack.client.completions.create(model=SERVED, prompt="x", stream=True)
    try:
        with pytest.raises(openai.APIError) as info:
            async for _ in stream:
                pass
    finally:
        model.release.set()
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "upstream_timeout"


class RecordingSink:
    """Audit lines kept in memory; ``written`` is set by the first one."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.written = asyncio.Event()

    def write(self, line: str) -> None:
        self.lines.append(line)
        self.written.set()

    def flush(self) -> None:
        return None


async def test_client_leaving_mid_stream_is_audited(make_stack: StackFactory) -> None:
    model = FakeTextModel(reply=PII_REPLY, mode="slow-stream")
    sink = RecordingSink()
    stack = await make_stack(model=model, audit_sink=sink)
    async with stack.session.post(stack.url + CHAT, json={
            "model": SERVED, "messages": MSG, "stream": True}) as response:
        await response.content.readline()  # the first event has arrived
    model.release.set()  # the model goes on; the sidecar finds its client gone
    await asyncio.wait_for(sink.written.wait(), 10)
    line = json.loads(sink.lines[0])
    assert line["outcome"] == "client_closed" and line["status"] == 200


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_sse_parser_is_independent_of_chunking(size: int) -> None:
    stream = (b'data: {"a": 1}\r\n\r\n: keep-alive\n\nevent: x\ndata: two\ndata:lines\n\n'
              b"data: cr\r\rdata: [DONE]\n\n")
    parser = SseParser()
    events = []
    for start in range(0, len(stream), size):
        events.extend(parser.feed(stream[start:start + size]))
    events.extend(parser.finish())
    assert [(e.event, e.data) for e in events] == [
        (None, '{"a": 1}'), ("x", "two\nlines"), (None, "cr"), (None, "[DONE]")]
    assert not parser.cut_off
    cut = SseParser()
    cut.feed(b"data: half")
    assert cut.finish() == [] and cut.cut_off


# --- embeddings and charging ----------------------------------------------------------------

LAPLACE = {"type": "laplace-embedding", "epsilon": "1.0"}


async def test_embeddings_are_charged_per_input(make_stack: StackFactory) -> None:
    stack = await make_stack(task="feature-extraction", mechanism=LAPLACE)
    texts = ["alpha", "be", "gamma delta"]
    answer = await stack.client.embeddings.create(model=SERVED, input=texts)  # base64
    for item, text in zip(answer.data, texts, strict=True):
        assert item.embedding == pytest.approx(FakeTextModel.vector(text, 4))
    floats = await stack.client.embeddings.create(model=SERVED, input="alpha",
                                                  encoding_format="float")
    assert floats.data[0].embedding == FakeTextModel.vector("alpha", 4)
    assert stack.charged() == 4 and stack.ledger.granted_total() == 8
    assert [route for route, _ in stack.model.requests] == ["embeddings", "embeddings"]


async def test_embeddings_budget_exhausted_is_429(make_stack: StackFactory) -> None:
    stack = await make_stack(task="feature-extraction", mechanism=LAPLACE, budget={None: 0})
    with pytest.raises(openai.RateLimitError) as info:
        await stack.client.embeddings.create(model=SERVED, input=["a"])
    assert info.value.code == "insufficient_quota"
    assert info.value.type == "insufficient_quota"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert stack.model.requests == []


async def test_embeddings_ledger_down_is_503_with_retry_after(
        make_stack: StackFactory, unused_tcp_port: int) -> None:
    stack = await make_stack(task="feature-extraction", mechanism=LAPLACE,
                             ledger_url=f"http://127.0.0.1:{unused_tcp_port}")
    with pytest.raises(openai.InternalServerError) as info:
        await stack.client.embeddings.create(model=SERVED, input=["a"])
    assert info.value.status_code == 503 and info.value.code == "ledger_unavailable"
    assert int(info.value.response.headers["Retry-After"]) >= 1
    assert stack.model.requests == []


async def test_embeddings_over_reported_spend_is_refused(make_stack: StackFactory) -> None:
    stack = await make_stack(task="feature-extraction", mechanism=LAPLACE,
                             model=FakeTextModel(mode="over-report"))
    status, body, _ = await stack.post("/v1/embeddings", {"model": SERVED, "input": ["a", "b"]})
    assert status == 502 and body["error"]["code"] == "upstream_protocol_error"
    assert stack.charged() == 2  # it answered: the whole reservation, never more


async def test_embeddings_tenant_partition(make_stack: StackFactory) -> None:
    stack = await make_stack(task="feature-extraction", mechanism=LAPLACE,
                             budget={"t1": 5}, partitionHeader="X-Dpserve-Tenant")
    status, body, _ = await stack.post("/v1/embeddings", {"model": SERVED, "input": "a"})
    assert status == 400 and "X-Dpserve-Tenant" in body["error"]["message"]
    answer = await stack.client.embeddings.create(
        model=SERVED, input="a", extra_headers={"X-Dpserve-Tenant": "t1"})
    assert len(answer.data) == 1
    assert [r["partition"] for r in stack.ledger.requests] == ["t1"]


# --- bad input: a 4xx in OpenAI's shape, nothing forwarded, nothing charged ------------------



@pytest.mark.parametrize(
    ("path", "body", "status", "param", "code"),
    [
        (CHAT, {"model": "other", "messages": MSG}, 404, "model", "model_not_found"),
        (CHAT, {"model": SERVED, "messages": [{"role": "tool", "content": "x"}]}, 400,
         "messages[0].role", "invalid_value"),
        (CHAT, {"model": SERVED, "messages": [{"role": "robot", "content": "x"}]}, 400,
         "messages[0].role", "invalid_value"),
        (CHAT, {"model": SERVED, "messages": MSG, "max_tokens": 33}, 400, "max_tokens",
         "max_tokens_exceeded"),
        (CHAT, {"model": SERVED, "messages": MSG, "max_completion_tokens": 999}, 400,
         "max_tokens", "max_tokens_exceeded"),
        (CHAT, {"model": SERVED, "messages": MSG, "n": 3}, 400, "n", "too_many_choices"),
        (CHAT, {"model": SERVED, "messages": MSG, "n": 0}, 400, "n", "invalid_value"),
        (CHAT, {"model": SERVED}, 400, "messages", "missing_required_parameter"),
        (CHAT, {"model": SERVED, "messages": []}, 400, "messages", "invalid_value"),
        (CHAT, {"messages": MSG}, 400, "model", "missing_required_parameter"),
        (CHAT, {"model": SERVED, "messages": MSG, "tools": []}, 400, "tools",
         "unsupported_parameter"),
        (CHAT, {"model": SERVED, "messages": MSG, "stream": True,
                "stream_options": {"include_usage": True}}, 400, "stream_options",
         "unsupported_parameter"),
        (CHAT, {"model": SERVED, "messages": [{"role": "user", "content": "x", "name": "a"}]},
         400, "messages[0].name", "unsupported_parameter"),
        (CHAT, {"model": SERVED, "messages": MSG, "stop": [""]}, 400, "stop",
         "invalid_value"),
        (CHAT, {"model": SERVED, "messages": MSG, "temperature": "hot"}, 400, "temperature",
         "invalid_value"),
        (CHAT, {"model": SERVED, "messages": [{"role": "user", "content": [[[[["x"]]]]]}]},
         400, "messages[0].content", "invalid_value"),
        (CHAT, ["not", "an", "object"], 400, None, "invalid_value"),
        ("/v1/completions", {"model": SERVED, "prompt": [1, 2, 3]}, 400, "prompt",
         "invalid_value"),
        ("/v1/completions", {"model": SERVED, "prompt": ["a", "b"], "n": 2}, 400, "n",
         "too_many_choices"),
        ("/v1/completions", {"model": SERVED, "prompt": "x", "echo": True}, 400, "echo",
         "unsupported_parameter"),
    ],
)
async def test_bad_generation_requests(make_stack: StackFactory, path: str, body: Any,
                                       status: int, param: str | None, code: str) -> None:
    stack = await make_stack()
    got, answer, _ = await stack.post(path, body)
    assert got == status, answer
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == "invalid_request_error"
    assert stack.model.requests == []


@pytest.mark.parametrize(
    ("raw", "status", "code", "fragment"),
    [
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400,
         "invalid_encoding", "UTF-8"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}', 400,
         "invalid_value", "surrogate"),
        (b"{not json", 400, "invalid_json", "JSON"),
        (b"[" * 4000 + b"]" * 4000, 400, "invalid_json", ""),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"x" * 9000
         + b'"}]}', 413, "request_too_large", "limit"),
    ],
)
async def test_malformed_bodies(make_stack: StackFactory, raw: bytes, status: int, code: str,
                                fragment: str) -> None:
    stack = await make_stack()
    got, answer, _ = await stack.post(CHAT, raw=raw)
    assert got == status and answer["error"]["code"] == code
    assert fragment in answer["error"]["message"]
    assert stack.model.requests == []
    # And the sidecar keeps serving.
    assert (await stack.post(CHAT, {"model": SERVED, "messages": MSG}))[0] == 200


async def test_client_errors_map_to_openai_exceptions(make_stack: StackFactory) -> None:
    stack = await make_stack()
    with pytest.raises(openai.NotFoundError) as missing:
        await stack.client.chat.completions.create(model="gpt-4o", messages=MSG)  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found" and "gpt-4o" not in missing.value.message
    with pytest.raises(openai.BadRequestError) as too_long:
        await stack.client.completions.create(model=SERVED, prompt="x", max_tokens=1000)
    assert too_long.value.param == "max_tokens"
    assert stack.model.requests == []


async def test_context_length_refusal_is_relayed(make_stack: StackFactory) -> None:
    stack = await make_stack(model=FakeTextModel(context_chars=10))
    with pytest.raises(openai.BadRequestError) as info:
        await stack.client.chat.completions.create(
            model=SERVED, messages=[{"role": "user", "content": "x" * 50}], stream=True)
    assert info.value.code == "context_length_exceeded"
    assert info.value.param == "messages" and "context length" in info.value.message


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"model": SERVED, "input": ["a"], "dimensions": 2}),
        ("/v1/embeddings", {"model": SERVED, "input": ["a"], "user": "u"}),
        ("/v1/embeddings", {"model": SERVED, "input": []}),
        ("/v1/embeddings", {"model": SERVED, "input": [""]}),
        ("/v1/embeddings", {"model": SERVED, "input": [[1, 2]]}),
        ("/v1/embeddings", {"model": SERVED, "input": ["a"] * 17}),
        ("/v1/embeddings", {"model": SERVED, "input": "a", "encoding_format": "hex"}),
    ],
)
async def test_bad_embedding_requests_cost_nothing(make_stack: StackFactory, path: str,
                                                   body: Any) -> None:
    stack = await make_stack(task="feature-extraction", mechanism=LAPLACE)
    status, answer, _ = await stack.post(path, body)
    assert status == 400 and answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] in {"dimensions", "user", "input", "input[0]",
                                        "encoding_format"}
    assert stack.model.requests == [] and stack.ledger.requests == []


async def test_routes_of_other_tasks_are_404_in_shape(make_stack: StackFactory) -> None:
    generator = await make_stack()
    status, body, _ = await generator.post("/v1/embeddings", {"model": SERVED, "input": "a"})
    assert status == 404 and body["error"]["code"] == "unsupported_task"
    status, body, _ = await generator.post("/v1/predict", {"inputs": ["a"]})
    assert status == 404 and body["reason"] == "NotFound" and "/v1/chat" in body["message"]
    embedder = await make_stack(task="feature-extraction", mechanism=LAPLACE)
    with pytest.raises(openai.NotFoundError) as info:
        await embedder.client.chat.completions.create(model=SERVED, messages=MSG)
    assert info.value.code == "unsupported_task"
    async with generator.session.get(generator.url + CHAT) as response:
        assert response.status == 405
        assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_upstream_redirect_is_not_followed(make_stack: StackFactory) -> None:
    stack = await make_stack(model=FakeTextModel(reply=PII_REPLY, mode="redirect"))
    status, body, _ = await stack.post(CHAT, {"model": SERVED, "messages": MSG})
    assert status == 502 and body["error"]["code"] == "upstream_protocol_error"
    status, body, _ = await stack.post(CHAT, {"model": SERVED, "messages": MSG,
                                              "stream": True})
    assert status == 502 and stack.model.redirect_hits == 0


async def test_upstream_error_is_relayed_in_shape(make_stack: StackFactory) -> None:
    stack = await make_stack(model=FakeTextModel(mode="error"))
    with pytest.raises(openai.InternalServerError) as info:
        await stack.client.completions.create(model=SERVED, prompt="x")
    assert info.value.status_code == 500 and info.value.type == "server_error"


def test_text_generation_is_served_free() -> None:
    base = {"model": MODEL_ID, "modelVersion": "v1", "ledgerUrl": "http://ledger:8080",
            "task": "text-generation"}
    with pytest.raises(ValidationError, match="text-generation"):
        FilterConfig.model_validate({**base, "mechanism": {"type": "pate", "teachers": 10,
                                                           "noiseMultiplier": "40"}})
    config = FilterConfig.model_validate({**base, "mechanism": {"type": "none"}})
    assert config.served_name == "tiny" and config.generation.max_tokens == 256
    named = FilterConfig.model_validate({**base, "mechanism": {"type": "none"},
                                         "servedModelName": "chat-1"})
    assert named.served_name == "chat-1"


# --- against the real model server (a tiny random-init GPT-2) ------------------------------


@pytest.fixture(scope="module")
def causal_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Imported here: transformers takes seconds to import, only these tests need it.
    from text_support import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "artifact")


async def test_real_model_server_stream_equals_answer(
        causal_lm: Path, analyzer: PiiAnalyzer, tmp_path: Path,
        one_torch_thread: None) -> None:
    from dpserve_runtime.server.app import ServerConfig
    from dpserve_runtime.server.textapp import TextModelServer

    server = TextModelServer(ServerConfig(
        artifact=causal_lm, mechanism=Mechanism(type="none"), task="text-generation",
        max_tokens=16, max_choices=2, workers=1))
    await server.load()
    upstream = TestServer(server.app(), host="127.0.0.1")
    await upstream.start_server()
    (tmp_path / "token").write_text("unused")
    config = FilterConfig.model_validate({
        "model": MODEL_ID, "modelVersion": "v1", "task": "text-generation",
        "mechanism": {"type": "none"}, "upstream": str(upstream.make_url("")).rstrip("/"),
        "ledgerUrl": "http://127.0.0.1:1", "tokenPath": str(tmp_path / "token"),
        "outputFilter": {"entities": ENTITIES, "verbatimGuard": {"enabled": False}},
        "generation": {"maxTokens": 16, "maxChoices": 2}})
    sidecar = TestServer(create_app(config, "pod-0", analyzer=analyzer), host="127.0.0.1")
    await sidecar.start_server()
    client = openai.AsyncOpenAI(base_url=str(sidecar.make_url("/v1")), api_key="unused",
                                max_retries=0)
    try:
        ask = {"model": SERVED, "messages": [{"role": "user", "content": "the cat sat"}],
               "max_tokens": 12, "temperature": 0.0}
        answer = await client.chat.completions.create(**ask)  # type: ignore[call-overload]
        content = answer.choices[0].message.content
        assert content and answer.choices[0].finish_reason in {"stop", "length"}
        streamed = ""
        stream = await client.chat.completions.create(**ask, stream=True)  # type: ignore[call-overload]
        async for chunk in stream:
            streamed += "".join(c.delta.content or "" for c in chunk.choices)
        assert streamed == content  # greedy: the same text, through the same filter
        with pytest.raises(openai.BadRequestError) as info:
            await client.completions.create(model=SERVED, prompt="word " * 400, max_tokens=4)
        assert info.value.code == "context_length_exceeded"
    finally:
        await client.close()
        await sidecar.close()
        await upstream.close()


async def test_real_embeddings_with_laplace_noise_are_charged(
        make_stack: StackFactory, tmp_path: Path, one_torch_thread: None) -> None:
    # Imported here: transformers takes seconds to import, only these tests need it.
    from dpserve_runtime.server.app import ServerConfig
    from dpserve_runtime.server.textapp import TextModelServer
    from text_support import minilm_artifact

    server = TextModelServer(ServerConfig(
        artifact=minilm_artifact(tmp_path / "minilm"), workers=1,
        mechanism=Mechanism.model_validate(LAPLACE), task="feature-extraction"))
    await server.load()
    upstream = TestServer(server.app(), host="127.0.0.1")
    await upstream.start_server()
    try:
        stack = await make_stack(task="feature-extraction", mechanism=LAPLACE,
                                 upstream=str(upstream.make_url("")).rstrip("/"))
        answer = await stack.client.embeddings.create(model=SERVED, input=["a cat", "a dog"])
        assert [len(item.embedding) for item in answer.data] == [384, 384]
        assert stack.charged() == 2 and stack.ledger.granted_total() == 8
    finally:
        await upstream.close()
