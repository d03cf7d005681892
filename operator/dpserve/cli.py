"""The `dpserve` command: run the operator, write the CRDs.

The local demo is ``dpserve-demo`` from the dpserve-testkit distribution (never in an image).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _cmd_crds(args: argparse.Namespace) -> int:
    from dpserve.api.crdgen import all_crds, render, write_crds

    if args.output_dir is None:
        sys.stdout.write("---\n".join(render(crd) for crd in all_crds().values()))
        return 0
    for path in write_crds(Path(args.output_dir)):
        print(path)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from dpserve.runtime import RunOptions, run
    from dpserve.settings import OperatorSettings

    if args.standalone and args.peering:
        raise SystemExit("dpserve run: --standalone and --peering exclude each other")
    if args.all_namespaces and args.namespace:
        raise SystemExit("dpserve run: --namespace and --all-namespaces exclude each other")
    settings = OperatorSettings.from_env()
    options = RunOptions(
        liveness_port=args.liveness_port,
        ledger_port=args.ledger_port,
        metrics_port=args.metrics_port,
        bind_address=settings.bind_address,
        standalone=args.peering is None,
        peering=args.peering,
        priority=args.priority,
        namespaces=() if args.all_namespaces else tuple(args.namespace or ()),
    )
    run(options, settings)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    crds = sub.add_parser("crds", help="write the CustomResourceDefinitions generated from the API")
    crds.add_argument("--output-dir", help="directory to write into (default: stdout)")
    crds.set_defaults(func=_cmd_crds)

    run = sub.add_parser("run", help="run the operator (Kopf controllers + ledger service)")
    run.add_argument("--liveness-port", type=int, default=8080,
                     help="Kopf liveness endpoint /healthz (0: off)")
    run.add_argument("--ledger-port", type=int, default=8443, help="lease service port")
    run.add_argument("--metrics-port", type=int, default=9090,
                     help="Prometheus metrics port (0: off)")
    run.add_argument("--standalone", action="store_true",
                     help="no peering: the only operator instance (default)")
    run.add_argument("--peering", metavar="NAME",
                     help="Kopf peering object for an active/standby pair")
    run.add_argument("--priority", type=int, default=0,
                     help="peering priority (distinct per replica; highest is active)")
    run.add_argument("--namespace", action="append", metavar="NS",
                     help="watch this namespace (repeatable; default: DPSERVE_WATCH_NAMESPACES "
                     "or all)")
    run.add_argument("--all-namespaces", action="store_true", help="watch every namespace")
    run.set_defaults(func=_cmd_run)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
