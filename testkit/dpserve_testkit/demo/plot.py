"""The demo's figure: ε spent against queries answered, and accuracy against ε (PNG, Agg).

One series per PATE model (its lifetime ε) and one per tenant of the sentence encoder (ε
spent on that tenant's partition, in a panel of its own; embeddings have no accuracy)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One model (or one tenant of a model) at one moment of the run."""

    t: float  # seconds since traffic started
    answered: int  # queries answered so far (all versions)
    correct: int | None  # ... of which the label was right (None: nothing to score)
    epsilon: float  # lifetime ε: every version's budget spend added up (tenants: partition)
    version: str


def write_plot(series: Mapping[str, Sequence[Sample]], limits: Mapping[str, Sequence[float]],
               path: Path, tenants: Collection[str] = (),
               exposure: Mapping[str, tuple[float, float, float, int]] | None = None) -> Path:
    """Lifetime ε vs answers (budget limits dashed; version changes marked), the running
    accuracy of the answered queries vs lifetime ε and, with ``tenants`` (names of series
    that are one tenant's partition each), a middle panel of partition ε vs texts answered;
    with ``exposure`` (language model -> (training ε, canary exposure, chance exposure,
    candidates)), a last panel of exposure against ε."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [n for n in tenants if n in series]
    panels = 2 + bool(shown) + bool(exposure)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.8))
    spend, acc = axes[0], axes[panels - 1 - bool(exposure)]
    part = axes[1] if shown else None
    for index, (name, samples) in enumerate(sorted(series.items())):
        color = f"C{index}"
        points = [s for s in samples if s.answered > 0]
        if not points:
            continue
        panel = part if part is not None and name in shown else spend
        panel.step([s.answered for s in points], [s.epsilon for s in points], where="post",
                   color=color, label=name)
        cumulative = 0.0
        for limit in limits.get(name, ()):
            cumulative += limit
            panel.axhline(cumulative, color=color, linestyle="--", linewidth=0.8)
        for before, after in itertools.pairwise(points):
            if after.version != before.version:
                panel.axvline(after.answered, color=color, linestyle=":", linewidth=0.8)
                panel.annotate(f"{name} {after.version}", (after.answered, after.epsilon),
                               textcoords="offset points", xytext=(4, -12), fontsize=8,
                               color=color)
        scored = [(s.epsilon, s.correct / s.answered) for s in points if s.correct is not None]
        if scored:
            acc.plot([e for e, _ in scored], [a for _, a in scored], color=color, label=name)
    spend.set_xlabel("queries answered")
    spend.set_ylabel("lifetime ε spent (dashed: budget limits, cumulative)")
    spend.set_title("Privacy spent per answered query")
    spend.legend(loc="upper left")
    if part is not None:
        part.set_xlabel("texts embedded (one query each)")
        part.set_ylabel("ε spent on the tenant's own partition (dashed: its limit)")
        part.set_title("Sentence embeddings: one partition per tenant")
        part.legend(loc="lower right")
    acc.set_xlabel("lifetime ε spent")
    acc.set_ylabel("accuracy of answered queries (running)")
    acc.set_ylim(0, 1.05)
    acc.set_title("Utility against privacy")
    acc.legend(loc="lower right")
    if exposure:
        _exposure_panel(axes[-1], exposure)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _exposure_panel(ax: Any, exposure: Mapping[str, tuple[float, float, float, int]]) -> None:
    """Canary exposure (bits) of each language model at the ε it was trained to."""
    top = 0.0
    for index, (name, (eps, bits, chance, space)) in enumerate(sorted(exposure.items())):
        ax.scatter([eps], [bits], color=f"C{index + 4}", s=60, label=f"{name} (ε {eps:.3g})",
                   zorder=3)
        ax.axhline(chance, color="grey", linestyle=":", linewidth=0.8)
        top = max(top, math.log2(space))
    ax.axhline(top, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_ylim(0, top * 1.08)
    ax.set_xlabel("training ε (log scale)")
    ax.set_ylabel("canary exposure, bits (dashed: max; dotted: chance)")
    ax.set_title("Memorisation of the canary against ε")
    ax.legend(loc="center right")
