"""A stand-in for the model server's text routes (OpenAI shapes), for the sidecar's tests.

Behaves like dpserve-server with a huggingface artifact, as the sidecar sees it on
localhost: ``POST /v1/chat/completions`` and ``/v1/completions`` (``stream: true`` answers
``text/event-stream`` chunks then ``data: [DONE]``), ``POST /v1/embeddings`` (OpenAI list
shape plus ``queries``), ``GET /readyz``. The generated text is fixed (``reply``) and streamed
in pieces of ``chunk_chars`` characters, so a PII value in it is split across chunks.
Errors are in OpenAI's shape, including the context-length refusal a real server makes
(it knows the tokenizer; here one "token" is one character of the prompt).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

Mode = Literal["normal", "cut", "bad-chunk", "redirect", "error", "over-report", "slow-stream",
               "fail-mid-stream"]


def openai_error(status: int, message: str, *, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
        status=status)


@dataclass
class FakeTextModel:
    reply: str = "Hello there, nothing to see."
    chunk_chars: int = 3
    context_chars: int = 200
    max_tokens: int = 64
    dimensions: int = 4
    queries_per_input: int = 1
    mode: Mode = "normal"
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    redirect_hits: int = 0
    # Set once a stream has sent a chunk; slow-stream then waits for ``release``.
    streaming: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/elsewhere", self._elsewhere)
        app.router.add_get("/readyz", self._ready)
        return app

    async def _ready(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    async def _elsewhere(self, request: web.Request) -> web.Response:
        self.redirect_hits += 1
        return web.json_response({"choices": [{"index": 0, "text": self.reply}]})

    async def _body(self, request: web.Request, route: str) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(await request.read())
        self.requests.append((route, body))
        return body

    def _refusal(self, body: dict[str, Any], prompt_chars: int) -> web.Response | None:
        if self.mode == "redirect":
            raise web.HTTPFound("/elsewhere")
        if self.mode == "error":
            return openai_error(500, "the model failed", kind="server_error")
        if prompt_chars > self.context_chars:
            return openai_error(
                400, f"This model's maximum context length is {self.context_chars} tokens; "
                     f"the prompt has {prompt_chars}", param="messages",
                code="context_length_exceeded")
        if body.get("max_tokens", 0) > self.max_tokens:
            return openai_error(400, "max_tokens too large", param="max_tokens")
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, "chat")
        chars = sum(len(m["content"]) for m in body["messages"])
        refusal = self._refusal(body, chars)
        if refusal is not None:
            return refusal
        n = body.get("n", 1)
        if body.get("stream"):
            return await self._stream(request, body, n, chat=True)
        return web.json_response({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": "hf",
            "choices": [{"index": i, "message": {"role": "assistant", "content": self.reply},
                         "finish_reason": "stop", "logprobs": None} for i in range(n)],
            "usage": {"prompt_tokens": chars, "completion_tokens": len(self.reply) * n,
                      "total_tokens": chars + len(self.reply) * n},
        })

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, "completions")
        prompts = [body["prompt"]] if isinstance(body["prompt"], str) else body["prompt"]
        refusal = self._refusal(body, max(len(p) for p in prompts))
        if refusal is not None:
            return refusal
        n = body.get("n", 1) * len(prompts)
        if body.get("stream"):
            return await self._stream(request, body, n, chat=False)
        return web.json_response({
            "id": "cmpl-fake", "object": "text_completion", "created": 1, "model": "hf",
            "choices": [{"index": i, "text": self.reply, "finish_reason": "length",
                         "logprobs": None} for i in range(n)],
        })

    async def _stream(self, request: web.Request, body: dict[str, Any], n: int, *,
                      chat: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        kind = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            chunk = {"id": "x", "object": kind, "created": 1, "model": "hf",
                     "choices": choices, **extra}
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        def choice(index: int, text: str | None, finish: str | None,
                   role: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {"role": "assistant"} if role else {}
                if text is not None:
                    delta["content"] = text
                return {"index": index, "delta": delta, "finish_reason": finish}
            return {"index": index, "text": text or "", "finish_reason": finish}

        if chat:
            await response.write(event([choice(i, "", None, True) for i in range(n)]))
        pieces = [self.reply[i:i + self.chunk_chars]
                  for i in range(0, len(self.reply), self.chunk_chars)]
        for position, piece in enumerate(pieces):
            # Choices interleave, as a batched generator sends them.
            await response.write(event([choice(i, piece, None) for i in range(n)]))
            self.streaming.set()
            if self.mode == "bad-chunk" and position == 1:
                await response.write(b"data: {not json\n\n")
            if self.mode == "cut" and position == len(pieces) // 2:
                return response  # ends without [DONE], mid-generation
            if self.mode == "slow-stream":
                await self.release.wait()
        if self.mode == "fail-mid-stream":
            await response.write(b'data: {"error": {"message": "the model failed: boom", '
                                 b'"type": "server_error", "param": null, "code": null}}\n\n')
            return response
        await response.write(event([choice(i, None, "stop") for i in range(n)]))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    @staticmethod
    def vector(text: str, dimensions: int) -> list[float]:
        return [float(len(text)) + 0.25 * k for k in range(dimensions)]

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._body(request, "embeddings")
        inputs = body["input"]
        if body.get("encoding_format") != "float":
            return openai_error(400, "only float", param="encoding_format")
        queries = len(inputs) * self.queries_per_input
        if self.mode == "over-report":
            queries = len(inputs) + 1
        return web.json_response({
            "object": "list", "model": "hf",
            "data": [{"object": "embedding", "index": i,
                      "embedding": self.vector(text, self.dimensions)}
                     for i, text in enumerate(inputs)],
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
            "queries": queries,
        })
