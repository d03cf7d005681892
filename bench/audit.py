"""Utility vs privacy vs membership leakage on scikit-learn digits.

Trains, on the same private records: a non-private MLP, DP-SGD models at several target ε,
DP-LoRA adapters on a base pre-trained on the public split (``--lora-epsilons``), and PATE
students (teachers on disjoint partitions, GNMax-labelled public queries), then
runs a loss-threshold membership-inference attack on each. Repeats for ``--trials`` fresh
splits (seed, seed+1, ...) and prints mean ± standard deviation over trials, then one line
per method ``audit <method>: epsilon=.. accuracy=.. mia_auc=..``; the last line is
``nonprivate_mia_auc=<x> dpsgd_eps<e>_mia_auc=<y>`` (smallest ε).

Usage: python bench/audit.py [--trials 5] [--epsilons 1 3 8] [--pate-sigmas 10 3]
(about 10 s per trial on one CPU core).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from typing import Any

import torch

from dpserve_runtime.train.audit import AuditConfig, format_table, run_audit, summarise


def main(argv: list[str] | None = None) -> int:
    defaults = AuditConfig()
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--epsilons", type=float, nargs="+", default=list(defaults.epsilons))
    parser.add_argument("--private-fraction", type=float, default=defaults.private_fraction)
    parser.add_argument("--public-fraction", type=float, default=defaults.public_fraction)
    parser.add_argument("--pate-teachers", type=int, default=defaults.pate_teachers)
    parser.add_argument("--pate-sigmas", type=float, nargs="+", default=list(defaults.pate_sigmas))
    parser.add_argument("--pate-queries", type=int, default=defaults.pate_queries)
    parser.add_argument("--lora-epsilons", type=float, nargs="*",
                        default=list(defaults.lora_epsilons),
                        help="DP-LoRA rows (public base, adapters on the private records)")
    parser.add_argument("--lora-rank", type=int, default=defaults.lora_rank)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--verbose", action="store_true", help="JSON progress on stderr")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be >= 1")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
    warnings.filterwarnings("ignore", message=".*Full backward hook.*")

    config = AuditConfig(
        epsilons=tuple(args.epsilons),
        private_fraction=args.private_fraction,
        public_fraction=args.public_fraction,
        pate_teachers=args.pate_teachers,
        pate_sigmas=tuple(args.pate_sigmas),
        pate_queries=args.pate_queries,
        lora_epsilons=tuple(args.lora_epsilons),
        lora_rank=args.lora_rank,
        seed=args.seed,
    )

    def progress(event: dict[str, Any]) -> None:
        if args.verbose:
            print(json.dumps(event), file=sys.stderr)

    started = time.perf_counter()
    trials = [
        run_audit(replace(config, seed=config.seed + trial), progress=progress)
        for trial in range(args.trials)
    ]
    elapsed = time.perf_counter() - started
    summaries = summarise(trials)
    print(format_table(summaries, delta=config.delta))
    held_out = 1 - config.private_fraction - config.public_fraction
    print(
        f"(digits, {args.trials} trials, mean ± std; private/public/held-out fractions "
        f"{config.private_fraction:g}/{config.public_fraction:g}/{held_out:g}; "
        f"typical per-trial AUC standard error {summaries[0].auc_stderr:.3f}; {elapsed:.1f} s)"
    )
    for row in summaries:
        epsilon = "inf" if row.epsilon is None else f"{row.epsilon:.4f}"
        print(
            f"audit {row.method}: epsilon={epsilon} accuracy={row.accuracy_mean:.4f} "
            f"mia_auc={row.auc_mean:.4f}"
        )
    by_method = {row.method: row for row in summaries}
    smallest = min(config.epsilons)
    dp_auc = by_method[f"DP-SGD (target ε={smallest:g})"].auc_mean
    print(
        f"nonprivate_mia_auc={by_method['non-private'].auc_mean:.4f} "
        f"dpsgd_eps{smallest:g}_mia_auc={dp_auc:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
