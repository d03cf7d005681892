"""``dpserve-server``: run the model server (flags fall back to ``DPSERVE_*`` env vars).

dpserve-server --artifact DIR --mechanism '{"type": "pate", "teachers": 50,
               "noiseMultiplier": "40"}' --host 127.0.0.1 --port 8081

For a huggingface artifact (text routes, see dpserve_runtime.server.textapp)::

dpserve-server --artifact DIR --mechanism '{"type": "none"}' --task text-generation \
               --max-tokens 256 --max-choices 4 [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from pydantic import ValidationError

from dpserve.api.mechanism import Mechanism
from dpserve.api.text import TEXT_TASKS
from dpserve_runtime.server.app import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BODY_BYTES,
    ServerConfig,
    serve,
)
from dpserve_runtime.server.schema import describe_validation_error


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> tuple[ServerConfig, int]:
    """The server config and the torch thread count from flags and environment."""
    parser = argparse.ArgumentParser(prog="dpserve-server", description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", default=_env("DPSERVE_ARTIFACT"), help="artifact directory")
    parser.add_argument(
        "--mechanism",
        default=_env("DPSERVE_MECHANISM"),
        help="spec.serving.mechanism as JSON (camelCase, decimal strings)",
    )
    parser.add_argument("--host", default=_env("DPSERVE_SERVER_HOST", "127.0.0.1"))
    parser.add_argument(
        "--port", type=int, default=int(_env("DPSERVE_SERVER_PORT", "8081") or "8081")
    )
    parser.add_argument(
        "--max-batch",
        type=_positive_int,
        default=int(_env("DPSERVE_MAX_BATCH", str(DEFAULT_MAX_BATCH)) or DEFAULT_MAX_BATCH),
    )
    parser.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=int(
            _env("DPSERVE_MAX_BODY_BYTES", str(DEFAULT_MAX_BODY_BYTES)) or DEFAULT_MAX_BODY_BYTES
        ),
    )
    parser.add_argument("--workers", type=_positive_int, default=2, help="inference threads")
    parser.add_argument(
        "--torch-threads",
        type=_positive_int,
        default=int(_env("DPSERVE_TORCH_THREADS", "1") or "1"),
        help="intra-op threads per inference (1 keeps batch-1 latency low)",
    )
    parser.add_argument(
        "--task",
        choices=TEXT_TASKS,
        default=_env("DPSERVE_TASK"),
        help="huggingface artifacts: the task to serve (must match the manifest's)",
    )
    parser.add_argument(
        "--max-tokens",
        type=_positive_int,
        default=_env("DPSERVE_MAX_TOKENS"),  # argparse applies type= to a str default
        help="text-generation: largest max_tokens a request may ask for (and the default)",
    )
    parser.add_argument(
        "--max-choices",
        type=_positive_int,
        default=_env("DPSERVE_MAX_CHOICES"),
        help="text-generation: largest n (completions per request)",
    )
    parser.add_argument(
        "--device",
        default=_env("DPSERVE_DEVICE", "auto"),
        help="huggingface artifacts: auto (CUDA when visible, else CPU), cpu or cuda[:N]",
    )
    parser.add_argument(
        "--header-timeout",
        type=_positive_float,
        default=_env("DPSERVE_SERVER_HEADER_TIMEOUT", "10"),
        help="seconds a client has for its request line and headers (then the connection "
        "is closed)",
    )
    parser.add_argument(
        "--body-timeout",
        type=_positive_float,
        default=_env("DPSERVE_SERVER_BODY_TIMEOUT", "30"),
        help="seconds a client has for its request body (then 408 and close)",
    )
    parser.add_argument(
        "--max-connections-per-client",
        type=_count,
        default=_env("DPSERVE_SERVER_MAX_CONNECTIONS_PER_CLIENT", "512"),
        help="open connections one client address may hold (0: unlimited); the sidecar "
        "holds up to 512 (256 for whole answers, 256 for streams)",
    )
    args = parser.parse_args(argv)
    if args.task is not None and args.task not in TEXT_TASKS:  # from DPSERVE_TASK
        parser.error(f"--task: must be one of {', '.join(TEXT_TASKS)}, got {args.task!r}")
    if not args.artifact:
        parser.error("--artifact (or DPSERVE_ARTIFACT) is required")
    if not args.mechanism:
        parser.error("--mechanism (or DPSERVE_MECHANISM) is required")
    try:
        mechanism = Mechanism.model_validate(json.loads(args.mechanism))
    except json.JSONDecodeError as exc:
        parser.error(f"--mechanism: not valid JSON: {exc}")
    except ValidationError as exc:
        parser.error(f"--mechanism: {describe_validation_error(exc)}")
    config = ServerConfig(
        artifact=Path(args.artifact),
        mechanism=mechanism,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_body_bytes=args.max_body_bytes,
        workers=args.workers,
        task=args.task,
        max_tokens=args.max_tokens,
        max_choices=args.max_choices,
        device=args.device,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        max_connections_per_client=args.max_connections_per_client,
    )
    return config, args.torch_threads


async def _run(config: ServerConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await serve(config, stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dpserve-server``; returns the process exit code."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config, threads = parse_args(argv)
    # Air-gapped clusters: any hub lookup must fail at once (the pod sets these too).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    torch.set_num_threads(threads)
    return asyncio.run(_run(config))


if __name__ == "__main__":
    sys.exit(main())
