"""Learning-curve PNGs of the benchmark report: held-out accuracy and rollout signal over steps.

One line per method (mean over seeds) with a shaded 95 % t-band, so the eye compares methods at
the same step budgets the tables use. Written with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from castrl.bench.report.cells import TierView, acc_at
from castrl.reporting.figures import pyplot, save
from castrl.reporting.stats import mean_ci


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


def _per_step(rec: dict, key: str, window: int = 5) -> dict[int, float]:
    """A per-step metric, as a trailing mean over `window` steps (one step's batch of 8 groups is noisy)."""
    points = sorted((int(r["step"]), r[key]) for r in rec.get("steps", []) if r.get(key) is not None)
    out = {}
    for i, (step, _) in enumerate(points):
        recent = [v for _, v in points[max(0, i - window + 1) : i + 1]]
        out[step] = sum(recent) / len(recent)
    return out


# Fixed colours for the two methods every panel compares (baseline, headline), then a palette without
# black or red for the rest.
_FIXED = ("black", "tab:red")
_PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
            "tab:olive", "tab:cyan", "navy", "gold")


def _colour(view: TierView, method: str) -> str:
    fixed = (view.baseline, view.headline)
    if method in fixed:
        return _FIXED[fixed.index(method)]
    others = [m for m in view.methods if m not in fixed]
    return _PALETTE[others.index(method) % len(_PALETTE)]


def _plot(ax, view: TierView, series, methods: list[str], bands: bool = True) -> None:
    """Mean curve per method; CI bands only for the baseline and headline (ten bands are unreadable)."""
    fixed = (view.baseline, view.headline)
    for method in methods:
        steps, means, lows, highs = _curve([series(r) for r in view.cells[method].values()])
        if not steps:
            continue
        colour = _colour(view, method)
        ax.plot(steps, means, label=method, color=colour, linewidth=2.4 if method in fixed else 1.4)
        if bands and method in fixed:
            ax.fill_between(steps, lows, highs, alpha=0.12, color=colour)
    ax.set_xlabel("RL step")
    ax.grid(alpha=0.3)


def _panels(view: TierView) -> list[tuple[str, list[str]]]:
    """Estimators as configured (`name`) and knob variants (`name@field=value`), both with the baseline
    and the headline method."""
    fixed = [m for m in dict.fromkeys((view.baseline, view.headline)) if m in view.cells]
    plain = [m for m in view.methods if "@" not in m and m not in fixed]
    variants = [m for m in view.methods if "@" in m and m not in fixed]
    return [("methods", fixed + plain), ("variants (knobs)", fixed + variants)]


def write_figures(view: TierView, folder: Path, md_dir: Path) -> dict[str, str]:
    """Write `<tier>_heldout.png` and `<tier>_signal.png`; returns {caption: path relative to md_dir}."""
    plt = pyplot()

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
    for ax, (title, methods) in zip(axes, _panels(view), strict=True):
        _plot(ax, view, acc_at, methods)
        ax.set_title(f"{view.tier}: {title}")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("held-out greedy accuracy (mean; band: 95% CI over seeds)")
    fig.tight_layout()
    path = folder / f"{view.tier}_heldout.png"
    save(fig, path)
    out[f"{view.tier} held-out accuracy"] = os.path.relpath(path, md_dir)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, (key, label) in zip(axes, (("reward", "training reward"),
                                       ("cast/frac_nonzero_adv", "rollouts with non-zero advantage")), strict=True):
        _plot(ax, view, lambda r, k=key: _per_step(r, k), view.methods, bands=False)
        ax.set_ylabel(label)
        ax.set_title(f"{view.tier}: {label}\n(mean over seeds, 5-step trailing mean)", fontsize=10)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = folder / f"{view.tier}_signal.png"
    save(fig, path)
    out[f"{view.tier} training signal"] = os.path.relpath(path, md_dir)
    return out
