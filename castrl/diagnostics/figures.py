"""PNG figures of a diagnosis, drawn from the numbers in `analyze`'s dict (never from raw tensors),
so every plotted value is also in diagnostics.json."""

from __future__ import annotations

import math
import os
from typing import Any

from castrl.reporting.figures import pyplot, save

POS_COLOR, NEG_COLOR = "#2a9d55", "#c8412c"
CLASS_COLOR = {"correct": "#1f6fb4", "wrong": "#e08a1e"}


def plot_histograms(name: str, teacher: dict[str, Any], path: str) -> str:
    """Gap histograms of one teacher, one panel per rollout class, bars coloured by gap sign. CAST's
    flip boundary is dashed where its direction is on (the paper's rule: at g = 0; castrl's
    flip_margin m moves it to -m in correct rollouts and +m in wrong ones), with the flipped share.

    Rollout class stands for B's sign here (B > 0 exactly on correct rollouts unless mixed_only)."""
    plt = pyplot()
    hist, quads, flips = teacher["histogram"], teacher["quadrants"], teacher["flips"]
    margin = flips["margin"]
    edges = hist["edges"]
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    width = edges[1] - edges[0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    panels = (  # 0.0 - margin: +0.0, not -0.0, when the margin is 0
        (axes[0], "correct", 0.0 - margin, "<", flips["flip_correct_on"]),
        (axes[1], "wrong", margin, ">", flips["flip_incorrect_on"]),
    )
    for ax, cls, boundary, side, on in panels:
        colors = [POS_COLOR if c > 0 else NEG_COLOR for c in centres]
        ax.bar(centres, hist[cls], width=width, color=colors, linewidth=0)
        if any(hist[cls]):
            ax.set_yscale("log")
        if on:
            ax.axvline(
                boundary,
                color="k",
                linestyle="--",
                linewidth=1,
                label=f"CAST flips g {side} {boundary:g}: {_pct(flips[f'flip_frac_{cls}'])} of the tokens",
            )
            ax.legend(fontsize=8)
        pos, neg = quads[f"{cls}_pos"], quads[f"{cls}_neg"]
        ax.set_title(
            f"{cls} rollouts: {int(pos['count'] + neg['count'])} tokens\n"
            f"teacher-pos {_pct(pos['frac'])} (mean {_num(pos['mean'])}), "
            f"teacher-neg {_pct(neg['frac'])} (mean {_num(neg['mean'])})",
            fontsize=9,
        )
        ax.set_xlabel("gap g = teacher log-prob - student log-prob")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("tokens")
    fig.suptitle(f"teacher '{name}'", fontsize=11)
    fig.tight_layout()
    save(fig, path)
    return path


def plot_position(teachers: dict[str, dict[str, Any]], path: str) -> str:
    """Per teacher (columns): mean gap +- standard error by relative position (top) and the share of
    teacher-positive tokens (bottom), for correct and wrong rollouts."""
    plt = pyplot()
    fig, axes = plt.subplots(2, len(teachers), figsize=(4.6 * len(teachers), 6.0), squeeze=False, sharex=True)
    for col, (name, teacher) in enumerate(teachers.items()):
        prof = teacher["position"]
        edges = prof["edges"]
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
        for cls in ("correct", "wrong"):
            data = prof[cls]
            sem = [
                s / math.sqrt(n) if n else float("nan")
                for s, n in zip(data["std"], data["count"], strict=True)
            ]
            lo = [m - e for m, e in zip(data["mean"], sem, strict=True)]
            hi = [m + e for m, e in zip(data["mean"], sem, strict=True)]
            axes[0, col].plot(
                centres, data["mean"], marker="o", markersize=3, color=CLASS_COLOR[cls], label=cls
            )
            axes[0, col].fill_between(centres, lo, hi, color=CLASS_COLOR[cls], alpha=0.2)
            axes[1, col].plot(
                centres, data["pos_frac"], marker="o", markersize=3, color=CLASS_COLOR[cls], label=cls
            )
        axes[0, col].axhline(0, color="k", linewidth=0.8)
        axes[1, col].axhline(0.5, color="k", linewidth=0.8, linestyle=":")
        axes[0, col].set_title(f"teacher '{name}'", fontsize=10)
        axes[0, col].set_ylabel("mean gap (+- s.e.)")
        axes[1, col].set_ylabel("share teacher-positive")
        axes[1, col].set_xlabel("relative position in the completion")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)
    return path


def write_figures(results: dict[str, Any], out_dir: str) -> dict[str, str]:
    """All figures into `out_dir`; returns {caption: path}."""
    paths = {}
    for name, teacher in results["teachers"].items():
        paths[f"Gap histograms, teacher {name}"] = plot_histograms(
            name, teacher, os.path.join(out_dir, f"gap_hist_{name}.png")
        )
    paths["Gap vs relative position"] = plot_position(
        results["teachers"], os.path.join(out_dir, "gap_position.png")
    )
    return paths


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f} %"


def _num(x: float) -> str:
    return "n/a" if x != x else f"{x:+.3f}"
