"""Stand-ins for the sidecar's neighbours, for tests and benchmarks (real HTTP on loopback).

- :class:`FakeLedger`: the lease protocol of :mod:`dpserve.api.lease` over an in-memory
  budget counted in queries (token check, validation, idempotent lease ids, 409 for a model
  version it does not know, 429 when empty, injectable 503s and delays), recording every grant.
- :class:`FakeModel`: a model server answering ``POST /v1/predict`` with one output per
  input whose ``text`` is configurable (clean or carrying PII), plus misbehaviours.

``python -m dpserve_testkit.fakes ledger|model --port N [...]`` runs one as a process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiohttp import web
from pydantic import ValidationError

from dpserve.api.lease import LEASE_PATH, LeaseGrant, LeaseRequest


@dataclass
class LedgerGrant:
    lease_id: str
    model_version: str
    partition: str | None
    requested: int
    granted: int


@dataclass
class FakeLedger:
    """In-memory ledger: each partition (None = the whole model) has a budget of queries."""

    budget: dict[str | None, int]
    token: str = "test-token"
    versions: frozenset[str] | None = None  # model versions it charges; None: any
    epsilon_per_query: float = 0.01
    ttl_seconds: float = 300.0
    max_grant: int | None = None
    fail_next: int = 0  # answer this many requests 503 (nothing granted)
    delay_seconds: float = 0.0
    grants: list[LedgerGrant] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    _by_id: dict[str, LeaseGrant] = field(default_factory=dict)
    _spent: dict[str | None, int] = field(default_factory=dict)

    def granted_total(self, partition: str | None = None) -> int:
        return sum(g.granted for g in self.grants if g.partition == partition)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024)
        app.router.add_post(LEASE_PATH, self._handle)
        return app

    def _error(self, status: int, reason: str, message: str, **extra: Any) -> web.Response:
        return web.json_response({"reason": reason, "message": message, **extra}, status=status)

    async def _handle(self, request: web.Request) -> web.Response:
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(401, "Unauthenticated", "bad or missing bearer token")
        try:
            payload = json.loads(await request.read())
            lease = LeaseRequest.model_validate(payload)
        except (ValueError, ValidationError) as exc:
            return self._error(400, "BadRequest", str(exc)[:200])
        self.requests.append(payload)
        if self.fail_next > 0:
            self.fail_next -= 1
            return self._error(503, "Unavailable", "injected failure")
        previous = self._by_id.get(lease.lease_id)
        if previous is not None:  # idempotent retry: same answer, no second debit
            return web.json_response(previous.wire())
        if self.versions is not None and lease.model_version not in self.versions:
            return self._error(409, "VersionMismatch",
                               f"modelVersion: {lease.model_version!r} is not a version of "
                               f"{lease.model}")
        if lease.partition not in self.budget:
            return self._error(404, "NotFound", f"no partition {lease.partition!r}")
        spent = self._spent.get(lease.partition, 0)
        left = self.budget[lease.partition] - spent
        if left <= 0:
            return self._error(429, "BudgetExhausted", "the privacy budget is exhausted",
                               epsilonSpent=spent * self.epsilon_per_query,
                               epsilonRemaining=0.0)
        granted = min(lease.requested, left, self.max_grant or lease.requested)
        self._spent[lease.partition] = spent + granted
        expires = datetime.now(UTC) + timedelta(seconds=self.ttl_seconds)
        grant = LeaseGrant(
            lease_id=lease.lease_id, granted=granted,
            epsilon_spent=(spent + granted) * self.epsilon_per_query,
            epsilon_remaining=(left - granted) * self.epsilon_per_query,
            expires_at=expires.isoformat().replace("+00:00", "Z"),
            partition=lease.partition,
        )
        self._by_id[lease.lease_id] = grant
        self.grants.append(LedgerGrant(lease.lease_id, lease.model_version, lease.partition,
                                       lease.requested, granted))
        return web.json_response(grant.wire())


ModelMode = Literal[
    "normal", "over-report", "no-queries", "bad-json", "error", "slow", "huge-nesting"]


@dataclass
class FakeModel:
    """Answers every input with ``{"label", "text"}``; ``text`` is what the filter scans.

    ``numbered``: each output's ``text`` has ``{n}`` replaced by a counter of outputs, four
    digits that cycle through 0000-9999, so that consecutive answers differ (a filter's cache
    of recent texts never holds the next one)."""

    text: str = "benign"
    numbered: bool = False
    mode: ModelMode = "normal"
    queries_per_input: int = 1
    slow_seconds: float = 30.0
    answered_queries: int = 0
    ready: bool = True
    texts_sent: int = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/predict", self._predict)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/healthz", self._readyz)
        return app

    async def _readyz(self, request: web.Request) -> web.Response:
        if not self.ready:
            return web.json_response({"reason": "NotReady", "message": "loading"}, status=503)
        return web.json_response({"status": "ready"})

    async def _predict(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            inputs = body["inputs"]
            assert isinstance(inputs, list) and inputs
        except (ValueError, KeyError, TypeError, AssertionError):
            return web.json_response({"reason": "BadRequest", "message": "need inputs"},
                                     status=400)
        if self.mode == "slow":
            await asyncio.sleep(self.slow_seconds)
        if self.mode == "error":
            return web.json_response({"reason": "Internal", "message": "model failed"},
                                     status=500)
        if self.mode == "bad-json":
            return web.Response(body=b'{"outputs": [', content_type="application/json")
        if self.mode == "huge-nesting":
            return web.Response(body=b"[" * 100_000 + b"]" * 100_000,
                                content_type="application/json")
        queries = len(inputs) * self.queries_per_input
        if self.mode == "over-report":
            queries = len(inputs) + 1
        self.answered_queries += queries
        answer: dict[str, Any] = {
            "outputs": [{"label": i % 10, "text": self._text()} for i in range(len(inputs))],
            "mechanism": {"type": "pate", "teachers": 10, "noiseMultiplier": "40"},
            "modelVersion": "v1",
        }
        if self.mode != "no-queries":
            answer["queries"] = queries
        return web.json_response(answer)

    def _text(self) -> str:
        if not self.numbered:
            return self.text
        n = self.texts_sent % 10_000
        self.texts_sent += 1
        return self.text.replace("{n}", f"{n:04d}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dpserve_testkit.fakes")
    parser.add_argument("kind", choices=["ledger", "model"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--budget", type=int, default=10**9, help="ledger: queries")
    parser.add_argument("--token", default="test-token", help="ledger: expected token")
    parser.add_argument("--text", default="benign", help="model: output text")
    parser.add_argument("--numbered", action="store_true",
                        help="model: replace {n} in the text by a counter of outputs (0000-9999)")
    args = parser.parse_args(argv)
    app = (FakeLedger(budget={None: args.budget}, token=args.token).app()
           if args.kind == "ledger" else FakeModel(text=args.text, numbered=args.numbered).app())
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
