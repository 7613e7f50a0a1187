"""Outputs of `castrl eval`: eval.json (every number, every sample), eval.md (tables) and, with
`--budgets`, eval_budgets.png (avg@k and pass@k vs token budget, one line per model)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from castrl.formatting import num, write_json
from castrl.reporting.figures import pyplot, save
from castrl.reporting.markdown import table

JSON_FILE, MD_FILE, PNG_FILE = "eval.json", "eval.md", "eval_budgets.png"


def _setting_line(report: dict[str, Any]) -> str:
    a = report["args"]
    first = report["models"][0]["summary"] if report["models"] else {"n_problems": 0}
    return (
        f"Data `{a['data']}` (split {a['split']}, {first['n_problems']} problems) · n = {a['n']} samples per "
        f"problem, k = {a['k']}, temperature {a['temperature']}, top-p {a['top_p']}, top-k {a['top_k']}, "
        f"max_new_tokens {a['max_new_tokens']}, prompt {a['prompt_style']}, seed {a['seed']}"
    )


def _model_label(entry: dict[str, Any]) -> str:
    adapter = entry["lora_adapter"]
    if adapter and adapter != entry["model"]:
        return f"`{entry['model']}` + adapter `{adapter}`"
    return f"`{entry['model']}`"


def _comparison(report: dict[str, Any], k: int) -> list[str]:
    rows = [[_model_label(entry), num(s["avg_at_k"]), num(s["pass_at_k"]), num(s["maj_at_k"]),
             num(s["greedy_accuracy"]), num(s["boxed_rate"]), num(s["mean_tokens"], 1), str(s["n_unscorable"])]
            for entry in report["models"] for s in [entry["summary"]]]
    return table(["model", f"avg@{k}", f"pass@{k}", f"maj@{k}", "greedy", "boxed", "tokens", "unscorable"], rows)


def _model_section(entry: dict[str, Any], a: dict[str, Any]) -> list[str]:
    s, k, sec = entry["summary"], a["k"], entry["seconds"]
    lines = [
        f"## {_model_label(entry)}",
        "",
        f"{entry['device']}, {sec['total'] - sec['load']:.0f} s + {sec['load']:.0f} s model load · "
        f"{s['n_unscorable']} of {s['n_problems']} problems have answers the verifier cannot score (counted wrong)",
        "",
        *table(["metric", "value"], [
            [f"avg@{k}", num(s["avg_at_k"])],
            [f"pass@{k} (unbiased, n = {a['n']})", num(s["pass_at_k"])],
            [f"maj@{k}", num(s["maj_at_k"])],
            ["greedy accuracy", num(s["greedy_accuracy"])],
            ["boxed rate (samples / greedy)", f"{num(s['boxed_rate'])} / {num(s['greedy_boxed_rate'])}"],
            ["answer extracted (samples)", num(s["answered_rate"])],
            ["mean completion tokens (samples / greedy)",
             f"{num(s['mean_tokens'], 1)} / {num(s['greedy_mean_tokens'], 1)}"],
        ]),
    ]
    if entry["per_level"]:
        lines += ["", *table(["level", "problems", f"avg@{k}", f"pass@{k}", f"maj@{k}", "greedy", "boxed", "tokens"], [
            [level, str(m["n_problems"]), num(m["avg_at_k"]), num(m["pass_at_k"]), num(m["maj_at_k"]),
             num(m["greedy_accuracy"]), num(m["boxed_rate"]), num(m["mean_tokens"], 1)]
            for level, m in entry["per_level"].items()])]
    if entry["budgets"]:
        lines += ["", "Token budgets (the same samples cut at each budget; spec §7, paper Table 14):", "",
                  *table(["budget", f"avg@{k}", f"pass@{k}", f"maj@{k}", "answer extracted", "mean tokens"], [
                      [str(b["budget"]), num(b["avg_at_k"]), num(b["pass_at_k"]), num(b["maj_at_k"]),
                       num(b["answered_rate"]), num(b["mean_tokens"], 1)] for b in entry["budgets"]])]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """eval.md: command, setting, a comparison table (several models), then one section per model."""
    a = report["args"]
    lines = ["# castrl eval", "", "```", report["command"], "```", "", _setting_line(report), ""]
    if len(report["models"]) > 1:
        lines += [*_comparison(report, a["k"]), ""]
    for entry in report["models"]:
        lines += [*_model_section(entry, a), ""]
    if report.get("figure"):
        lines += [f"![accuracy vs token budget]({os.path.basename(report['figure'])})", ""]
    return "\n".join(lines)


def plot_budgets(report: dict[str, Any], path: str | os.PathLike[str]) -> str | None:
    """PNG of avg@k and pass@k against the token budget (log2 axis), one line per model; None without budgets."""
    entries = [e for e in report["models"] if e["budgets"]]
    if not entries:
        return None
    plt = pyplot()

    k = report["args"]["k"]
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6))
    for ax, key, title in zip(axes, ("avg_at_k", "pass_at_k"), (f"avg@{k}", f"pass@{k}"), strict=True):
        for entry in entries:
            xs = [b["budget"] for b in entry["budgets"]]
            ys = [float("nan") if b[key] is None else b[key] for b in entry["budgets"]]
            ax.plot(xs, ys, marker="o", markersize=4, label=entry["model"])
        ax.set_xscale("log", base=2)
        ticks = sorted({b["budget"] for entry in entries for b in entry["budgets"]})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("token budget")
        ax.set_title(title)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save(fig, path)
    return str(path)


def write_report(report: dict[str, Any], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write eval.json, eval.md and (with budgets) eval_budgets.png into `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figure = plot_budgets(report, out / PNG_FILE)
    report["figure"] = figure
    write_json(out / JSON_FILE, report)
    (out / MD_FILE).write_text(render_markdown(report), encoding="utf-8")
    return [out / JSON_FILE, out / MD_FILE] + ([Path(figure)] if figure else [])
