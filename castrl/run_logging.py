"""Run outputs beside the checkpoints: `metrics.jsonl` (one JSON object per log call) and the plot."""

from __future__ import annotations

import json
import os
from typing import Any

from transformers import TrainerCallback

from castrl.formatting import dumps
from castrl.reporting.figures import pyplot, save

METRICS_FILE = "metrics.jsonl"


def append_metrics(output_dir: str, record: dict[str, Any]) -> None:
    """Append one record to `output_dir/metrics.jsonl` (flushed, so a crash keeps what was logged)."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, METRICS_FILE), "a") as f:
        f.write(dumps(record) + "\n")  # NaN -> null: "not defined this step" (strict JSON)
        f.flush()


def read_metrics(output_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(output_dir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsJsonl(TrainerCallback):
    """Writes every Trainer log (TRL names + castrl's `cast/` names) to metrics.jsonl with its step."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            append_metrics(self.output_dir, {"step": state.global_step, **logs})


def plot_run(output_dir: str, path: str | None = None) -> str | None:
    """PNG of reward, held-out accuracy, group-type fractions and flip fractions over steps."""
    plt = pyplot()

    records = read_metrics(output_dir)
    if not records:
        return None
    panels = [
        ("reward", ["reward"]),
        ("held-out accuracy", ["heldout/accuracy"]),
        ("group types", ["cast/frac_all_correct", "cast/frac_all_wrong", "cast/frac_mixed"]),
        ("flipped tokens", ["cast/flip_frac_correct", "cast/flip_frac_wrong"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, label=key.split("/")[-1])
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = path or os.path.join(output_dir, "training.png")
    save(fig, path)
    return path


def drift_warning(records: list[dict[str, Any]], before: dict[str, float] | None, after: dict[str, float] | None,
                  *, min_drop: float = 0.05, entropy_rise: float = 1.2) -> str | None:
    """A warning when held-out accuracy fell by more than `min_drop` while the policy's entropy rose by
    more than `entropy_rise`x (mean of the first two logged steps vs the last two), else None.

    That pair is the signature of an update that pushes probability away from the model's own
    samples; with the spec's defaults it is what CAST does to the bundled 135M model (README).
    """
    if not before or not after or before["accuracy"] - after["accuracy"] <= min_drop:
        return None
    entropy = [float(r["entropy"]) for r in records if "loss" in r and r.get("entropy") is not None]
    if len(entropy) < 4:
        return None
    first, last = sum(entropy[:2]) / 2, sum(entropy[-2:]) / 2
    if not last > entropy_rise * first:
        return None
    return (f"[castrl] warning: held-out accuracy fell {before['accuracy']:.3f} -> {after['accuracy']:.3f} while the "
            f"policy's entropy rose {first:.2f} -> {last:.2f}: the update pushes probability away from the model's "
            "own samples. Check that the teacher carries signal on this model (`castrl diagnose --model ...` ends "
            "with a verdict on its gap AUC) and compare with --advantage_estimator grpo and with --flip false. "
            "README: 'Read this before you trust the demo's numbers'.")
