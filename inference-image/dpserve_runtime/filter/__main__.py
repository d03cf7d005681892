"""``dpserve-filter --config /etc/dpserve/filter.json``: run the output-filter sidecar."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from aiohttp import web
from pydantic import ValidationError

from dpserve.api.filterconfig import FilterConfig

EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpserve-filter", description="dpserve output-filter sidecar")
    parser.add_argument("--config", default=os.environ.get("DPSERVE_FILTER_CONFIG"),
                        help="filter config JSON (env DPSERVE_FILTER_CONFIG)")
    parser.add_argument("--log-level", default=os.environ.get("DPSERVE_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--event-loop", choices=EVENT_LOOPS,
        default=os.environ.get("DPSERVE_FILTER_EVENT_LOOP", "auto"),
        help="auto: uvloop when installed (less CPU per request), else asyncio "
             "(env DPSERVE_FILTER_EVENT_LOOP)")
    parser.add_argument(
        "--header-timeout", type=float,
        default=float(os.environ.get("DPSERVE_FILTER_HEADER_TIMEOUT", "10")),
        help="seconds a client has for its request line and headers, then the connection "
             "is closed (env DPSERVE_FILTER_HEADER_TIMEOUT); the body has the config's "
             "clientTimeoutSeconds")
    parser.add_argument(
        "--max-connections-per-client", type=int,
        default=int(os.environ.get("DPSERVE_FILTER_MAX_CONNECTIONS_PER_CLIENT", "256")),
        help="open connections one client address may hold, 0 for no limit (env "
             "DPSERVE_FILTER_MAX_CONNECTIONS_PER_CLIENT)")
    parser.add_argument(
        "--audit-key-file", default=os.environ.get("DPSERVE_FILTER_AUDIT_KEY_FILE"),
        help="a secret (at least 16 bytes) under which client-chosen ids are hashed in the "
             "audit log, the same for every replica; without it a random key per process "
             "(env DPSERVE_FILTER_AUDIT_KEY_FILE)")
    return parser


def _audit_key(path: str | None) -> bytes | None:
    if path is None:
        return None
    key = Path(path).read_bytes().strip()
    if len(key) < 16:
        raise ValueError(f"--audit-key-file {path}: the key must hold at least 16 bytes")
    return key


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """The event loop to serve on; ``uvloop`` fails when the package is missing."""
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


async def _serve(app: web.Application, host: str, port: int) -> None:
    """Serve behind the app's connection guard until SIGTERM or SIGINT."""
    from dpserve_runtime.filter.app import GUARD_KEY
    from dpserve_runtime.httplimits import serve_until

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    freeze_startup_objects()
    await serve_until(app, host, port, app[GUARD_KEY], stop)


def freeze_startup_objects() -> None:
    """Move everything built at start (Presidio, spaCy, the name tables: ~0.5 M objects)
    out of the garbage collector's sight. A full collection otherwise walks all of them
    every few thousand allocations, which cost about a third of the sidecar's CPU per
    request (bench/sidecar.py). They live as long as the process, so nothing is lost."""
    gc.collect()
    gc.freeze()


# Presidio's package imports its transformers NER engine, and spaCy's thinc imports torch,
# whenever they are installed, and the inference image has both for the model server. The
# sidecar uses neither: its NLP engine is Presidio's no-op one or a spaCy CNN pipeline
# (en_core_web_{lg,md,sm}). Importable, they cost it ~3 s of start-up and ~320 MiB of
# resident memory, most of its 512 MiB limit (bench/sidecar.py prints the RSS).
UNUSED_ML_STACKS = ("torch", "transformers")


def keep_unused_ml_stacks_out() -> None:
    """Make ``import torch`` / ``import transformers`` fail in this process (both libraries
    treat that as "not installed"), unless one is already loaded or the image names its own
    spaCy pipeline, which may be a transformer one (spacy-transformers needs both)."""
    if os.environ.get("DPSERVE_SPACY_MODEL", "").strip():
        return
    for name in UNUSED_ML_STACKS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except ValueError as exc:  # a malformed number in the environment
        print(f"dpserve-filter: {exc}", file=sys.stderr)
        return 2
    if not args.config:
        print("dpserve-filter: --config (or DPSERVE_FILTER_CONFIG) is required", file=sys.stderr)
        return 2
    if args.event_loop not in EVENT_LOOPS:  # from the environment, not checked by argparse
        print(f"dpserve-filter: DPSERVE_FILTER_EVENT_LOOP must be one of {EVENT_LOOPS}",
              file=sys.stderr)
        return 2
    from dpserve_runtime.httplimits import ConnectionLimits

    try:
        limits = ConnectionLimits(header_timeout=args.header_timeout,
                                  max_per_client=args.max_connections_per_client)
        audit_key = _audit_key(args.audit_key_file)
    except (OSError, ValueError) as exc:
        print(f"dpserve-filter: {exc}", file=sys.stderr)
        return 2
    _configure_logging(args.log_level)
    try:
        config = FilterConfig.load(args.config)
    except ValidationError as exc:
        print(f"dpserve-filter: invalid config {args.config}:\n{exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"dpserve-filter: {exc}", file=sys.stderr)
        return 2
    pod_name = os.environ.get("POD_NAME") or config.pod_name or socket.gethostname()
    # Imported after the config is valid: Presidio and spaCy take a second to import.
    keep_unused_ml_stacks_out()
    from dpserve_runtime.filter.app import create_app
    from dpserve_runtime.filter.auditlog import StreamAuditSink
    from dpserve_runtime.filter.pii import UndetectableEntityError
    from dpserve_runtime.filter.verbatim import FingerprintFileError

    # Audit lines (one JSON object each) go to stdout; diagnostics to stderr.
    audit = StreamAuditSink(sys.stdout.buffer)
    try:
        app = create_app(config, pod_name, audit_sink=audit, limits=limits,
                         audit_id_key=audit_key)
    except (FingerprintFileError, UndetectableEntityError) as exc:
        # A named entity this image cannot detect must stop the pod, never be ignored.
        print(f"dpserve-filter: {exc}", file=sys.stderr)
        return 2
    try:
        loop = new_event_loop(args.event_loop)
    except ImportError:
        print("dpserve-filter: --event-loop uvloop: uvloop is not installed", file=sys.stderr)
        return 2
    try:
        loop.run_until_complete(_serve(app, config.listen_host, config.listen_port))
    finally:
        audit.flush()
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
