"""Learning-curve PNGs of the benchmark report: held-out accuracy and rollout signal over steps.

One line per method (mean over seeds) with a shaded 95 % t-band, so the eye compares methods at
the same step budgets the tables use. Written with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from castrl.bench.report import BASELINE, TierView, acc_at
from castrl.bench.stats import mean_ci


def _curve(points_per_seed: list[dict[int, float]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps, means, lows, highs over seeds (steps present in every seed's curve)."""
    if not points_per_seed:
        return [], [], [], []
    steps = sorted(set.intersection(*(set(p) for p in points_per_seed)))
    means, lows, highs = [], [], []
    for k in steps:
        iv = mean_ci([p[k] for p in points_per_seed])
        half = iv.half if math.isfinite(iv.half) else 0.0
        means.append(iv.mean)
        lows.append(iv.mean - half)
        highs.append(iv.mean + half)
    return steps, means, lows, highs


def _per_step(rec: dict, key: str) -> dict[int, float]:
    return {int(r["step"]): r[key] for r in rec.get("steps", []) if r.get(key) is not None}


def _plot(ax, view: TierView, series) -> None:
    for method in view.methods:
        steps, means, lows, highs = _curve([series(r) for r in view.cells[method].values()])
        if not steps:
            continue
        style = {"linewidth": 2.4, "color": "black"} if method == BASELINE else {"linewidth": 1.4}
        if method == "cast":
            style = {"linewidth": 2.4, "color": "tab:red"}
        line = ax.plot(steps, means, label=method, **style)[0]
        ax.fill_between(steps, lows, highs, alpha=0.12, color=line.get_color())
    ax.set_xlabel("RL step")
    ax.grid(alpha=0.3)


def write_figures(view: TierView, folder: Path, md_dir: Path) -> dict[str, str]:
    """Write `<tier>_heldout.png` and `<tier>_signal.png`; returns {caption: path relative to md_dir}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    _plot(ax, view, acc_at)
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_title(f"{view.tier}: held-out accuracy (mean, 95% CI band over seeds)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = folder / f"{view.tier}_heldout.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out[f"{view.tier} held-out accuracy"] = os.path.relpath(path, md_dir)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, (key, label) in zip(axes, (("reward", "training reward"),
                                       ("cast/frac_nonzero_adv", "rollouts with non-zero advantage")), strict=True):
        _plot(ax, view, lambda r, k=key: _per_step(r, k))
        ax.set_ylabel(label)
        ax.set_title(label)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = folder / f"{view.tier}_signal.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out[f"{view.tier} training signal"] = os.path.relpath(path, md_dir)
    return out
