"""The real ``dpserve-filter`` process with a fake ledger and a fake model as processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

EMAIL = "jane.roe@example.com"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready")


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    ledger_port, model_port, filter_port = _free_port(), _free_port(), _free_port()
    fakes = [sys.executable, "-m", "dpserve_testkit.fakes"]
    started = [
        subprocess.Popen([*fakes, "ledger", "--port", str(ledger_port), "--budget", "3"]),
        subprocess.Popen([*fakes, "model", "--port", str(model_port), "--text",
                          f"mail {EMAIL}"]),
    ]
    token = tmp_path / "token"
    token.write_text("test-token")
    config = tmp_path / "filter.json"
    config.write_text(json.dumps({
        "model": "ns/model",
        "modelVersion": "v1",
        "mechanism": {"type": "pate", "teachers": 10, "noiseMultiplier": "40"},
        "upstream": f"http://127.0.0.1:{model_port}",
        "listenHost": "127.0.0.1",
        "listenPort": filter_port,
        "ledgerUrl": f"http://127.0.0.1:{ledger_port}",
        "tokenPath": str(token),
        "outputFilter": {"action": "redact", "entities": ["EMAIL_ADDRESS"]},
        "lease": {"initialSize": 2, "maxSize": 8, "prefetchFraction": 0.25},
    }))
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "dpserve_runtime.filter", "--config", str(config)],
        stdout=subprocess.PIPE, env={**os.environ, "POD_NAME": "pod-7"})
    started.append(sidecar)
    try:
        _wait_ready(f"http://127.0.0.1:{filter_port}/readyz", time.monotonic() + 60)
        yield filter_port, sidecar
    finally:
        for process in started:
            if process.poll() is None:
                process.terminate()
        for process in started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def test_sidecar_process_end_to_end(processes: tuple[int, subprocess.Popen[bytes]]) -> None:
    port, sidecar = processes
    url = f"http://127.0.0.1:{port}/v1/predict"
    results = [_post(url, b'{"inputs": [[1.0]]}') for _ in range(4)]
    assert [status for status, _ in results] == [200, 200, 200, 429]
    assert results[0][1]["outputs"][0]["text"] == "mail <EMAIL_ADDRESS>"
    assert results[3][1]["reason"] == "BudgetExhausted"
    assert _post(url, b"\xff")[0] == 400
    sidecar.send_signal(signal.SIGTERM)
    out, _ = sidecar.communicate(timeout=15)
    audit = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert [a["outcome"] for a in audit] == ["redacted"] * 3 + ["budget_exhausted",
                                                                "bad_request"]
    assert EMAIL not in out.decode()


def _mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_sidecar_process_loads_neither_torch_nor_transformers(
    processes: tuple[int, subprocess.Popen[bytes]]
) -> None:
    """The inference image has torch and transformers (the model server's); the sidecar
    never uses them, and importable they cost it ~320 MiB of its 512 MiB limit."""
    port, sidecar = processes
    assert _post(f"http://127.0.0.1:{port}/v1/predict", b'{"inputs": [[1.0]]}')[0] == 200
    maps = _mapped_libraries(sidecar.pid)
    assert "presidio" in maps or "regex" in maps  # the analyzer's libraries are there
    assert "libtorch" not in maps and "/transformers/" not in maps


# A fresh interpreter that blocks the stacks as the sidecar's main() does, then analyses.
_BLOCKED = (
    "import json, sys\n"
    "from dpserve_runtime.filter.__main__ import keep_unused_ml_stacks_out\n"
    "keep_unused_ml_stacks_out()\n"
    "from dpserve_runtime.filter.pii import PiiAnalyzer\n"
    "analyzer = PiiAnalyzer(['EMAIL_ADDRESS', 'PERSON', 'LOCATION'], cache_size=0)\n"
    "found = analyzer.analyze('Write to John Smith in Boston at john.smith@example.com.')\n"
    "print(json.dumps({'entities': sorted({f.entity_type for f in found}),\n"
    "                  'loaded': [m for m in ('torch', 'transformers')\n"
    "                             if sys.modules.get(m) is not None]}))\n"
)


@pytest.mark.slow  # a fresh interpreter importing Presidio and the name data
@pytest.mark.parametrize("spacy_model", ["", "/opt/pipelines/en_core_web_trf"])
def test_blocking_the_unused_stacks_keeps_every_entity_detectable(spacy_model: str) -> None:
    """PERSON, LOCATION and patterns still found with torch and transformers blocked; an
    image that names its own spaCy pipeline (perhaps a transformer one) keeps both."""
    env = {**os.environ, "DPSERVE_SPACY_MODEL": spacy_model}
    done = subprocess.run([sys.executable, "-c", _BLOCKED], capture_output=True, text=True,
                          timeout=300, env=env, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["entities"] == ["EMAIL_ADDRESS", "LOCATION", "PERSON"]
    if spacy_model:
        assert result["loaded"] == ["torch", "transformers"]  # Presidio imported both
    else:
        assert result["loaded"] == []


def test_bad_config_exits_with_message(tmp_path: Path) -> None:
    config = tmp_path / "filter.json"
    config.write_text(json.dumps({"model": "Not A Key", "mechanism": {}, "ledgerUrl": "x"}))
    done = subprocess.run(
        [sys.executable, "-m", "dpserve_runtime.filter", "--config", str(config)],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "model" in done.stderr and "ledgerUrl" in done.stderr
