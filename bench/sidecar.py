"""Latency, throughput and CPU the filter sidecar adds to a model, measured side by side.

Targets, each served bare and through its own sidecar (``python -m dpserve_runtime.filter``):

- ``model``: the real model server (``python -m dpserve_runtime.server``, i.e.
  ``dpserve-server``) serving a PATE ensemble of 10 small MLPs trained on scikit-learn's
  bundled digits, built in a temporary directory with :mod:`dpserve_runtime.artifact`;
  mechanism ``pate``, output text ``"digit k"`` per answer, and the verbatim-guard
  fingerprints of the training records loaded by its sidecar (the full filter: PII redaction
  plus the guard). Inputs are digits rows, 64 wide. This is the honest bare model: the
  overhead relative to it is what a user sees.
- ``echo-clean`` / ``echo-pii``: a fake upstream (:mod:`dpserve_testkit.fakes`)
  answering a fixed JSON per input, with a clean text or one carrying an e-mail address and
  a phone number (redacted by the sidecar). It costs almost nothing per request, so it shows
  the sidecar's worst case: its whole cost set against a model that does no work. The same
  text in every answer is found in the analyzer's cache of recent texts after the first.
- ``echo-pii-new``: the same fake upstream with a new e-mail address and phone number in
  every answer (a counter cycling through 10,000, more than the analyzer's cache holds), so
  every answer is analysed afresh: what a model writing new PII each time costs.

Real processes on loopback: a fake ledger (lease protocol), the upstreams, one sidecar per
target, and a load generator (aiohttp client, its own process) at fixed concurrency. Runs
alternate target by target, round by round, so bare and proxied runs see the same machine
load. "server CPU ms/req" is the CPU time of the serving process alone (the model server,
or the sidecar without its model) per request: the stable figure on a shared machine,
where latency and throughput move with everything else that runs. It falls as the request
rate rises (an event loop handles more requests per wake-up), so the sidecar costs more per
request in front of the slower real model than in front of the echo.

``--baseline DIR``: each target also gets a sidecar run from another checkout (``DIR``'s
``inference-image`` and ``operator`` first on ``PYTHONPATH``, e.g. ``git worktree add
/tmp/sidecar-before <commit>``), measured in the same rounds as ``before``; the lines
``before/after`` compare the two sidecars (CPU per request, throughput, p50).

Last line: ``overhead_p50_ms=<x> overhead_p99_ms=<y> throughput_ratio=<sidecar/bare>`` for
the real model server (the ``model`` target). The echo worst case (the larger overheads and
the smaller ratio of the three echo workloads) is printed on the line before it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PII_TEXT = "Patient contact: jane.roe@example.com, (212) 555-0143; follow-up in two weeks."
# {n}: 0000-9999, a new address and number per answer (FakeModel(numbered=True)).
NEW_PII_TEXT = "Patient contact: jane.roe{n}@example.com, (212) 555-{n}; follow-up in two weeks."
REDACTED = ("<EMAIL_ADDRESS>", "<PHONE_NUMBER>")
CLEAN_TEXT = "Benign: regular borders and uniform colour; follow-up in two weeks."
ECHO_BODY = json.dumps({"inputs": [[0.5] * 16]}).encode()
# What the fake upstream reports; the real model server's mechanism.
ECHO_MECHANISM: dict[str, Any] = {"type": "pate", "teachers": 10, "noiseMultiplier": "40"}
TEACHERS = 10
MODEL_MECHANISM: dict[str, Any] = {"type": "pate", "teachers": TEACHERS, "noiseMultiplier": "2"}
MODEL_ARCHITECTURE: dict[str, Any] = {"type": "mlp", "inputDim": 64, "hiddenDims": [64],
                                      "numClasses": 10}
WINDOW_TOKENS = 50  # verbatim-guard window (the output filter's default)
TARGETS = ("model", "echo-clean", "echo-pii", "echo-pii-new")
ECHO_TARGETS = TARGETS[1:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s")


# --- load generator (runs as its own process) ---------------------------------------------------

async def _load(url: str, body: bytes, concurrency: int, seconds: float,
                warmup: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = total = 0
    cpu = time.process_time()
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        measure_from = start + warmup
        stop = measure_from + seconds

        async def worker() -> None:
            nonlocal errors, total
            while True:
                began = time.perf_counter()
                if began >= stop:
                    return
                async with session.post(url, data=body,
                                        headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    ok = r.status == 200
                ended = time.perf_counter()
                total += 1
                if began >= measure_from:
                    if ok:
                        latencies.append(ended - began)
                    else:
                        errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"latencies": latencies, "errors": errors, "seconds": seconds, "total": total,
            "loadgen_cpu": time.process_time() - cpu}


def _run_load(url: str, body_path: Path, concurrency: int, seconds: float,
              warmup: float) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--loadgen", url, "--body", str(body_path),
         "--concurrency", str(concurrency), "--seconds", str(seconds),
         "--warmup", str(warmup)],
        capture_output=True, text=True, check=True, timeout=seconds + warmup + 60)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- orchestration --------------------------------------------------------------------------------

class Processes:
    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> int:
        self.started.append(subprocess.Popen(
            [sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}))
        return self.started[-1].pid

    def stop(self) -> None:
        for process in self.started:
            process.terminate()
        for process in self.started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


@dataclass
class Target:
    name: str
    body: Path
    model_port: int
    filter_port: int
    model_pid: int = 0
    filter_pid: int = 0
    baseline_port: int = 0
    baseline_pid: int = 0


def _build_model_artifact(workdir: Path) -> tuple[Path, bytes]:
    """A PATE ensemble trained on digits, with fingerprints; and one request body for it."""
    from dpserve_runtime.artifact import save_pate_ensemble
    from dpserve_runtime.filter.verbatim import write_fingerprint_file
    from dpserve_runtime.train.datasets import export_dataset
    from dpserve_runtime.train.pate import train_teachers

    dataset = export_dataset("digits", workdir / "digits.npz")
    teachers, _ = train_teachers(dataset, MODEL_ARCHITECTURE, TEACHERS,
                                 epochs=8, batch_size=32, learning_rate=1e-2, seed=0)
    artifact = workdir / "artifact"
    assert dataset.texts is not None  # digits carries its synthetic records
    write_fingerprint_file(dataset.texts, artifact / "fingerprints.json", WINDOW_TOKENS)
    save_pate_ensemble(artifact, teachers, MODEL_ARCHITECTURE,
                       labels=[f"digit {k}" for k in range(10)],
                       fingerprints="fingerprints.json")
    body = json.dumps({"inputs": [dataset.X[0].tolist()]}).encode()
    return artifact, body


def _sidecar_config(workdir: Path, name: str, model_port: int, ledger_port: int, port: int,
                    mechanism: dict[str, Any], fingerprints: Path | None = None) -> Path:
    token = workdir / "token"
    token.write_text("test-token")
    path = workdir / f"{name}.json"
    path.write_text(json.dumps({
        "model": "bench/model",
        "modelVersion": "v1",
        "mechanism": mechanism,
        "upstream": f"http://127.0.0.1:{model_port}",
        "listenHost": "127.0.0.1",
        "listenPort": port,
        "ledgerUrl": f"http://127.0.0.1:{ledger_port}",
        "tokenPath": str(token),
        "outputFilter": {"action": "redact",
                         "entities": ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN",
                                      "IP_ADDRESS", "IBAN_CODE"],
                         "entityThresholds": {"PHONE_NUMBER": "0.4"}},
        "fingerprintPath": str(fingerprints) if fingerprints else None,
        "lease": {"initialSize": 64, "maxSize": 4096, "prefetchFraction": 0.25},
    }))
    return path


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mib(pid: int) -> float:
    """The peak resident memory of a process (VmHWM), from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    latencies = sorted(x for run in runs for x in run["latencies"])
    seconds = sum(run["seconds"] for run in runs)
    if not latencies:
        raise RuntimeError("no successful requests")
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    total = sum(run["total"] for run in runs)
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": p99 * 1000,
        "rps": len(latencies) / seconds,
        "errors": float(sum(run["errors"] for run in runs)),
        # CPU the server process (model or sidecar) spent per request it served.
        "cpu_ms": 1000 * sum(run["cpu"] for run in runs) / total,
        # CPU of every process on the request's path (load generator, sidecar, upstream).
        "chain_cpu_ms": 1000 * sum(run["cpu"] + run["upstream_cpu"] + run["loadgen_cpu"]
                                   for run in runs) / total,
        "loadgen_cpu_ms": 1000 * sum(run["loadgen_cpu"] for run in runs) / total,
        "upstream_cpu_ms": 1000 * sum(run["upstream_cpu"] for run in runs) / total,
    }


def _start(processes: Processes, workdir: Path, targets: dict[str, Target],
           ledger_port: int, baseline: Path | None = None) -> None:
    fakes = ("-m", "dpserve_testkit.fakes")
    processes.start(*fakes, "ledger", "--port", str(ledger_port))
    artifact, model_body = _build_model_artifact(workdir)
    targets["model"].body.write_bytes(model_body)
    targets["model"].model_pid = processes.start(
        "-m", "dpserve_runtime.server", "--artifact", str(artifact),
        "--mechanism", json.dumps(MODEL_MECHANISM), "--host", "127.0.0.1",
        "--port", str(targets["model"].model_port))
    for name, text in (("echo-clean", CLEAN_TEXT), ("echo-pii", PII_TEXT),
                       ("echo-pii-new", NEW_PII_TEXT)):
        targets[name].body.write_bytes(ECHO_BODY)
        numbered = ("--numbered",) if "{n}" in text else ()
        targets[name].model_pid = processes.start(
            *fakes, "model", "--port", str(targets[name].model_port), "--text", text, *numbered)
    for target in targets.values():
        real = target.name == "model"
        config = _sidecar_config(
            workdir, target.name, target.model_port, ledger_port, target.filter_port,
            MODEL_MECHANISM if real else ECHO_MECHANISM,
            artifact / "fingerprints.json" if real else None)
        target.filter_pid = processes.start(
            "-m", "dpserve_runtime.filter", "--config", str(config),
            env={"POD_NAME": f"bench-{target.name}"})
        if baseline is not None:
            target.baseline_port = _free_port()
            config = _sidecar_config(
                workdir, f"{target.name}-before", target.model_port, ledger_port,
                target.baseline_port, MODEL_MECHANISM if real else ECHO_MECHANISM,
                artifact / "fingerprints.json" if real else None)
            path = os.pathsep.join(str(baseline / d) for d in ("inference-image", "operator"))
            target.baseline_pid = processes.start(
                "-m", "dpserve_runtime.filter", "--config", str(config),
                env={"POD_NAME": f"bench-{target.name}-before", "PYTHONPATH": path})
    for target in targets.values():
        _wait_ready(f"http://127.0.0.1:{target.model_port}/readyz")
        _wait_ready(f"http://127.0.0.1:{target.filter_port}/readyz")
        if target.baseline_pid:
            _wait_ready(f"http://127.0.0.1:{target.baseline_port}/readyz")
    for name in ECHO_TARGETS:
        _check_filtered(targets[name])


def _check_filtered(target: Target) -> None:
    """One answer through the target's sidecar: the PII redacted, and only there (a bench
    of a filter that finds nothing would measure the wrong path)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{target.filter_port}/v1/predict", data=target.body.read_bytes(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = json.loads(response.read())["outputs"][0]["text"]
    redacted = all(tag in text for tag in REDACTED) and "@" not in text
    if redacted != (target.name != "echo-clean"):
        raise RuntimeError(f"{target.name}: unexpected filtered text {text!r}")


def _measure(target: Target, kind: str, concurrency: int, seconds: float,
             warmup: float) -> dict[str, Any]:
    pid, port = {"bare": (target.model_pid, target.model_port),
                 "sidecar": (target.filter_pid, target.filter_port),
                 "before": (target.baseline_pid, target.baseline_port)}[kind]
    # The upstream serves the proxied runs too: its CPU is part of the chain's.
    upstream = target.model_pid if kind != "bare" else None
    cpu = _cpu_seconds(pid)
    upstream_cpu = _cpu_seconds(upstream) if upstream else 0.0
    run = _run_load(f"http://127.0.0.1:{port}/v1/predict", target.body, concurrency, seconds,
                    warmup)
    run["cpu"] = _cpu_seconds(pid) - cpu
    run["upstream_cpu"] = (_cpu_seconds(upstream) - upstream_cpu) if upstream else 0.0
    return run


def _overhead(bare: dict[str, float], proxied: dict[str, float]) -> tuple[float, float, float]:
    return (proxied["p50_ms"] - bare["p50_ms"], proxied["p99_ms"] - bare["p99_ms"],
            proxied["rps"] / bare["rps"])


def _cpu_bound(name: str, bare: dict[str, float], proxied: dict[str, float]) -> str:
    """Whether the throughput ratio is what the CPU the path costs allows on these cores.

    With every core busy, throughput is cores / (CPU per request summed over the processes
    on the path), so the ratio the CPUs allow is the bare sum over the proxied sum. With a
    core per process, the busiest process bounds each path instead (an estimate: CPU per
    request falls as the rate rises).
    """
    path_bare = (bare["loadgen_cpu_ms"], bare["cpu_ms"])
    path_proxied = (proxied["loadgen_cpu_ms"], proxied["cpu_ms"], proxied["upstream_cpu_ms"])
    return (f"{name}: CPU ms/req on the path: bare load {path_bare[0]:.3f} + upstream "
            f"{path_bare[1]:.3f} = {bare['chain_cpu_ms']:.3f}; through the sidecar load "
            f"{path_proxied[0]:.3f} + sidecar {path_proxied[1]:.3f} + upstream "
            f"{path_proxied[2]:.3f} = {proxied['chain_cpu_ms']:.3f}; cores busy "
            f"{bare['chain_cpu_ms'] * bare['rps'] / 1000:.2f} / "
            f"{proxied['chain_cpu_ms'] * proxied['rps'] / 1000:.2f}; ratio the CPU allows "
            f"{bare['chain_cpu_ms'] / proxied['chain_cpu_ms']:.2f} (measured "
            f"{proxied['rps'] / bare['rps']:.2f}), with a core per process ~"
            f"{max(path_bare) / max(path_proxied):.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.5, help="per round and target")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--baseline", type=Path,
                        help="a checkout whose sidecar is measured too, as 'before'")
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)
    parser.add_argument("--body", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loadgen:
        body = Path(args.body).read_bytes()
        result = asyncio.run(_load(args.loadgen, body, args.concurrency, args.seconds,
                                   args.warmup))
        print(json.dumps(result))
        return 0

    processes = Processes()
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    serial: dict[tuple[str, str], dict[str, Any]] = {}
    kinds = ("bare", "before", "sidecar") if args.baseline else ("bare", "sidecar")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        targets = {name: Target(name, workdir / f"{name}.body", _free_port(), _free_port())
                   for name in TARGETS}
        try:
            _start(processes, workdir, targets, _free_port(), args.baseline)
            for _ in range(args.rounds):
                for target in targets.values():
                    for kind in kinds:
                        results.setdefault((target.name, kind), []).append(_measure(
                            target, kind, args.concurrency, args.seconds, args.warmup))
            # Unloaded latency: one request at a time, no queueing on the shared CPUs.
            for target in targets.values():
                for kind in kinds:
                    serial[(target.name, kind)] = _measure(
                        target, kind, 1, args.seconds, args.warmup)
            rss = {(target.name, kind): _peak_rss_mib(pid) for target in targets.values()
                   for kind, pid in (("sidecar", target.filter_pid),
                                     ("before", target.baseline_pid)) if pid}
        finally:
            processes.stop()

    print(f"concurrency={args.concurrency}, {args.rounds} rounds x {args.seconds}s per target, "
          f"1 input per request, loopback, {os.cpu_count()} CPUs shared by all processes")
    print(f"{'target':<14}{'served':<9}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>8}{'errors':>8}"
          f"{'server CPU ms/req':>19}{'serial p50 ms':>15}")
    summaries = {key: _summary(runs) for key, runs in results.items()}
    for (name, kind), s in summaries.items():
        one = _summary([serial[(name, kind)]])
        print(f"{name:<14}{kind:<9}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}{s['rps']:>8.0f}"
              f"{s['errors']:>8.0f}{s['cpu_ms']:>19.3f}{one['p50_ms']:>15.2f}")
    print("server CPU = the model process (bare) or the sidecar process alone (sidecar); "
          "serial = one request at a time")
    overheads = {}
    for name in TARGETS:
        bare, proxied = summaries[(name, "bare")], summaries[(name, "sidecar")]
        overheads[name] = _overhead(bare, proxied)
        serial_added = (_summary([serial[(name, "sidecar")]])["p50_ms"]
                        - _summary([serial[(name, "bare")]])["p50_ms"])
        print(f"{name}: overhead p50 {overheads[name][0]:.2f} ms, p99 {overheads[name][1]:.2f} "
              f"ms, throughput ratio {overheads[name][2]:.2f}; sidecar CPU "
              f"{proxied['cpu_ms'] / bare['cpu_ms']:.2f}x the upstream's; one at a time "
              f"+{serial_added:.2f} ms")
    print("sidecar peak RSS MiB: " + ", ".join(
        f"{name} {kind} {mib:.0f}" for (name, kind), mib in sorted(rss.items())))
    for name in TARGETS:
        print(_cpu_bound(name, summaries[(name, "bare")], summaries[(name, "sidecar")]))
    if args.baseline:
        for name in TARGETS:
            bare, old, new = (summaries[(name, k)] for k in ("bare", "before", "sidecar"))
            print(f"before/after {name}: sidecar CPU {old['cpu_ms']:.3f} -> {new['cpu_ms']:.3f} "
                  f"ms/req ({new['cpu_ms'] / old['cpu_ms']:.2f}x), throughput vs bare "
                  f"{old['rps'] / bare['rps']:.2f} -> {new['rps'] / bare['rps']:.2f}, p50 "
                  f"overhead {old['p50_ms'] - bare['p50_ms']:+.2f} -> "
                  f"{new['p50_ms'] - bare['p50_ms']:+.2f} ms")
    echo = [overheads[name] for name in ECHO_TARGETS]
    print(f"echo worst case (no model work): overhead_p50_ms={max(o[0] for o in echo):.2f} "
          f"overhead_p99_ms={max(o[1] for o in echo):.2f} "
          f"throughput_ratio={min(o[2] for o in echo):.2f}")
    p50, p99, ratio = overheads["model"]
    print(f"overhead_p50_ms={p50:.2f} overhead_p99_ms={p99:.2f} throughput_ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
