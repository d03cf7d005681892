"""``dpserve-filter --config /etc/dpserve/filter.json``: run the output-filter sidecar."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys

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
    return parser


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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.config:
        print("dpserve-filter: --config (or DPSERVE_FILTER_CONFIG) is required", file=sys.stderr)
        return 2
    if args.event_loop not in EVENT_LOOPS:  # from the environment, not checked by argparse
        print(f"dpserve-filter: DPSERVE_FILTER_EVENT_LOOP must be one of {EVENT_LOOPS}",
              file=sys.stderr)
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
    # Imported after the config is valid: Presidio and spaCy take seconds to import.
    from dpserve_runtime.filter.app import create_app
    from dpserve_runtime.filter.auditlog import StreamAuditSink
    from dpserve_runtime.filter.pii import UndetectableEntityError
    from dpserve_runtime.filter.verbatim import FingerprintFileError

    # Audit lines (one JSON object each) go to stdout; diagnostics to stderr.
    audit = StreamAuditSink(sys.stdout.buffer)
    try:
        app = create_app(config, pod_name, audit_sink=audit)
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
        web.run_app(app, host=config.listen_host, port=config.listen_port, access_log=None,
                    print=None, handle_signals=True, loop=loop)
    finally:
        audit.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
