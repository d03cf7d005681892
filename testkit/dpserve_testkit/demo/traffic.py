"""Queries through a model's sidecars (what its Service would route to), and their answers.

Each answer is kept as counts and labels only: which input was asked, what came back (the
label, or the sidecar's refusal reason) and from which model version. The test inputs are
the digits rows, so each answered label can be scored against the truth. Embedding requests
(OpenAI ``/v1/embeddings``, one tenant per client) are counted, not scored: there is no truth
to hold a noised vector against.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

PREDICT = "/v1/predict"
EMBEDDINGS = "/v1/embeddings"
NO_ENDPOINT = 0  # status of a query that found no ready pod (the Service has no endpoints)
MALFORMED = -2  # status of a 200 answer without what was asked for (not counted as answered)
PLACEHOLDER = re.compile(r"<[A-Z_]+>")
# The sidecar's OpenAI-shaped refusals ({"error": {"code"}}) under its own reason names.
OPENAI_REASONS = {"insufficient_quota": "BudgetExhausted",
                  "ledger_unavailable": "LedgerUnavailable"}


@dataclass(frozen=True)
class Answer:
    index: int  # row of the query set
    status: int  # HTTP status, NO_ENDPOINT without a ready pod, -1 on a connection error
    reason: str | None = None  # the sidecar's {"reason"} on refusals
    label: int | None = None
    correct: bool | None = None
    version: str | None = None
    body: dict[str, Any] | None = None
    outputs: int = 0  # released outputs (labels, vectors): one query each on the ledger

    @property
    def answered(self) -> bool:
        return self.status == 200

    @property
    def redacted(self) -> bool:
        """The answer's text carries a redaction placeholder such as ``<EMAIL_ADDRESS>``."""
        outputs = (self.body or {}).get("outputs") or []
        return any(isinstance(o, dict) and PLACEHOLDER.search(str(o.get("text", "")))
                   for o in outputs)


@dataclass
class Tally:
    """Running counts of one model's traffic (thread-safe)."""

    sent: int = 0
    answered: int = 0
    correct: int = 0
    redacted: int = 0  # answers in which the sidecar replaced PII by a placeholder
    refused: dict[str, int] = field(default_factory=dict)
    by_version: dict[str, int] = field(default_factory=dict)
    outputs: int = 0  # outputs released by the answered requests
    unscored: int = 0  # answers without a truth to score (embeddings)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, answer: Answer) -> None:
        with self._lock:
            self.sent += 1
            if answer.answered:
                self.answered += 1
                self.outputs += answer.outputs
                self.correct += bool(answer.correct)
                self.unscored += answer.correct is None
                self.redacted += answer.redacted
                version = answer.version or "?"
                self.by_version[version] = self.by_version.get(version, 0) + 1
            else:
                key = answer.reason or ("NoEndpoints" if answer.status == NO_ENDPOINT
                                        else f"HTTP {answer.status}")
                self.refused[key] = self.refused.get(key, 0) + 1

    @property
    def accuracy(self) -> float | None:
        scored = self.answered - self.unscored
        return self.correct / scored if scored else None

    @classmethod
    def merged(cls, tallies: Iterable[Tally]) -> Tally:
        """The counts of several clients added up (a model asked by several tenants)."""
        total = cls()
        for tally in tallies:
            with tally._lock:
                total.sent += tally.sent
                total.answered += tally.answered
                total.correct += tally.correct
                total.redacted += tally.redacted
                total.outputs += tally.outputs
                total.unscored += tally.unscored
                for into, counts in ((total.refused, tally.refused),
                                     (total.by_version, tally.by_version)):
                    for key, count in counts.items():
                        into[key] = into.get(key, 0) + count
        return total


def lane_name(model: str, tenant: str) -> str:
    """The traffic lane (one client, one tally) of one tenant of a model."""
    return f"{model}/{tenant}"


class Asker(Protocol):
    """A client of one traffic lane: asks one request at a time, keeps its own tally."""

    tally: Tally

    def ask(self) -> Answer: ...


def refusal_reason(status: int, body: dict[str, Any]) -> str:
    """The sidecar's reason for a refusal: ``{"reason"}`` on its own routes, the OpenAI
    error code (mapped to the same names) on the OpenAI routes."""
    if isinstance(body.get("reason"), str):
        return str(body["reason"])
    error = body.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, str):
        return OPENAI_REASONS.get(code, code)
    return f"HTTP {status}"


def post_json(url: str, payload: dict[str, Any], headers: dict[str, str],
              timeout_s: float) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a POST; status -1 and ``{"reason"}`` on a connection error."""
    data = json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            body = {}
        return exc.code, body if isinstance(body, dict) else {}
    except (OSError, ValueError) as exc:
        return -1, {"reason": f"ConnectionError: {type(exc).__name__}"}


class QueryClient:
    """Sends rows of ``X`` one query at a time to the ready endpoints, round robin."""

    def __init__(
        self, endpoints: Callable[[], list[str]], X: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64], *, timeout_s: float = 15.0, start: int = 0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._endpoints = endpoints
        self._X = X
        self._y = y
        self._timeout_s = timeout_s
        self._rows: Iterator[int] = itertools.cycle(
            list(range(start % len(y), len(y))) + list(range(start % len(y))))
        self._turn = itertools.count()
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self.tally = Tally()

    def ask(self, index: int | None = None) -> Answer:
        row = next(self._rows) if index is None else index
        answer = self._send(row)
        self.tally.add(answer)
        return answer

    def _send(self, row: int) -> Answer:
        endpoints = self._endpoints()
        if not endpoints:
            return Answer(row, NO_ENDPOINT, "NoEndpoints")
        url = endpoints[next(self._turn) % len(endpoints)] + PREDICT
        status, body = post_json(url, {"inputs": [self._X[row].tolist()]}, self._headers,
                                 self._timeout_s)
        if status != 200:
            return Answer(row, status, refusal_reason(status, body), body=body)
        outputs = body.get("outputs") or [{}]
        label = outputs[0].get("label") if isinstance(outputs[0], dict) else None
        truth = int(self._y[row])
        return Answer(row, status, label=label if isinstance(label, int) else None,
                      correct=label == truth, version=body.get("modelVersion"), body=body,
                      outputs=1)


class EmbeddingClient:
    """Sends ``per_request`` texts per OpenAI ``/v1/embeddings`` request as one tenant.

    The tenant is named by ``header`` (the budget's ``partitions.header``): the sidecar
    charges each text to that tenant's partition. An answer counts as answered only with
    one non-empty vector per text.
    """

    def __init__(
        self, endpoints: Callable[[], list[str]], texts: Sequence[str], *, model: str,
        header: str, tenant: str, per_request: int = 1, timeout_s: float = 15.0,
        start: int = 0,
    ) -> None:
        if not texts or per_request < 1:
            raise ValueError("need texts and at least one text per request")
        self._endpoints = endpoints
        self._texts = list(texts)
        self._model = model
        self._per_request = per_request
        self._timeout_s = timeout_s
        self._next = itertools.count(start)
        self._turn = itertools.count()
        self._headers = {"Content-Type": "application/json", header: tenant}
        self.tenant = tenant
        self.tally = Tally()

    def ask(self) -> Answer:
        first = next(self._next) * self._per_request
        batch = [self._texts[(first + i) % len(self._texts)] for i in range(self._per_request)]
        answer = self._send(first % len(self._texts), batch)
        self.tally.add(answer)
        return answer

    def _send(self, index: int, batch: list[str]) -> Answer:
        endpoints = self._endpoints()
        if not endpoints:
            return Answer(index, NO_ENDPOINT, "NoEndpoints")
        url = endpoints[next(self._turn) % len(endpoints)] + EMBEDDINGS
        status, body = post_json(url, {"model": self._model, "input": batch}, self._headers,
                                 self._timeout_s)
        if status != 200:
            return Answer(index, status, refusal_reason(status, body), body=body)
        data = body.get("data")
        vectors = [item.get("embedding") for item in data if isinstance(item, dict)] \
            if isinstance(data, list) else []
        if len(vectors) != len(batch) or not all(isinstance(v, list) and v for v in vectors):
            return Answer(index, MALFORMED, "MalformedAnswer", body=body)
        # The vectors themselves are not kept: only that they came, and from which version.
        return Answer(index, status, version=body.get("modelVersion"), outputs=len(batch))
