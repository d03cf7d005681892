"""``dpserve-demo`` (or ``python -m dpserve_testkit.demo``): the local demo's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpserve-demo",
        description="run the operator, its ledger and three private models locally, end to end")
    parser.add_argument("--headless", action="store_true",
                        help="no live view: progress lines and a summary")
    parser.add_argument("--quick", action="store_true",
                        help="smaller ensembles and budgets (about half the time)")
    parser.add_argument("--keep-running", action="store_true",
                        help="leave everything up at the end for kubectl (Ctrl-C stops it)")
    parser.add_argument("--work-dir", metavar="DIR",
                        help="artifacts, logs, kubeconfig, plot (default: a new temp dir)")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                        help="give up when the traffic phase takes longer (default 600)")
    parser.add_argument("--podman-image", metavar="IMAGE",
                        help="run the pods as containers of this inference image with podman "
                             "(root; images/build.sh builds localhost/dpserve-inference:dev)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from dpserve_testkit.demo.run import DemoFailed, DemoOptions, run_demo

    args = build_parser().parse_args(argv)
    options = DemoOptions(
        work_dir=Path(args.work_dir) if args.work_dir else None,
        headless=args.headless,
        quick=args.quick,
        keep_running=args.keep_running,
        timeout_s=args.timeout,
        podman_image=args.podman_image,
    )
    try:
        run_demo(options)
    except DemoFailed as exc:
        print(f"dpserve-demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
