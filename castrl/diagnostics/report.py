"""Outputs of a diagnosis: diagnostics.json (every number + the command), diagnostics.md, the PNGs,
and report.html (self-contained: tables inline, PNGs embedded as base64).

Tables are built here once as (title, header, rows) and rendered to both markdown and HTML by `render`,
so the two reports cannot disagree. NaN (an empty token set) is written as null in JSON and "n/a" in tables.
"""

from __future__ import annotations

import os
from typing import Any

from castrl.formatting import num, pct, write_json

from .analysis import CLASSES, PAPER_TABLE9, QUANTILES, SIGNS
from .figures import write_figures
from .render import Table, render_html, render_markdown
from .render import verdict_lines as verdict_lines

JSON_FILE, MD_FILE, HTML_FILE = "diagnostics.json", "diagnostics.md", "report.html"
SIGN_LABEL = {"pos": "teacher-positive", "neg": "teacher-negative", "all": "all"}


def _run_table(payload: dict[str, Any]) -> Table:
    g, s = payload["results"]["groups"], payload["settings"]
    rows = [
        [
            "problems x group size",
            f"{s['n_prompts']} x {s['group_size']} ({int(g['n_rollouts'])} scorable rollouts)",
        ],
        ["reward mean / correct rollouts", f"{num(g['reward_mean'])} / {int(g['n_rollouts_correct'])}"],
        [
            "groups mixed / all-correct / all-wrong",
            f"{pct(g['frac_mixed'])} / {pct(g['frac_all_correct'])} / {pct(g['frac_all_wrong'])}",
        ],
        ["tokens in correct / wrong rollouts", f"{int(g['n_tokens_correct'])} / {int(g['n_tokens_wrong'])}"],
        [
            "mean length correct / wrong (tokens)",
            f"{num(g['mean_length_correct'], 1)} / {num(g['mean_length_wrong'], 1)}",
        ],
        ["rollouts hitting max_new_tokens", pct(g["truncated_frac"])],
        ["teacher weights", payload["notes"]["teacher_weights"]],
        *[[f"teacher {k}", v] for k, v in payload["notes"].items() if k != "teacher_weights"],
        ["wall time", f"{payload['timings_s'].get('total_s', float('nan')):.0f} s"],
        ["torch threads / load average at start, end", _load_text(payload.get("environment", {}))],
    ]
    return Table("Run", ["quantity", "value"], rows)


def _load_text(env: dict[str, Any]) -> str:
    if not env:
        return "n/a"
    start, end = env["loadavg_1_5_15_start"][0], env["loadavg_1_5_15_end"][0]
    return f"{env['torch_threads']} / {start:.1f}, {end:.1f} (1-min, on {env['cpu_count']} CPUs)"


def _quadrant_table(results: dict[str, Any]) -> Table:
    header = ["teacher", "rollouts", "tokens", "g sign", "share", "mean", "std"] + [
        f"p{round(q * 100)}" for q in QUANTILES
    ]
    rows = []
    for name, teacher in results["teachers"].items():
        quads = teacher["quadrants"]
        for cls in CLASSES:
            for sign in (*SIGNS, "all"):
                q = quads[f"{cls}_{sign}"]
                share = pct(q["frac"]) if sign != "all" else ""
                rows.append(
                    [name, cls, str(int(q["count"])), SIGN_LABEL[sign], share, num(q["mean"]), num(q["std"])]
                    + [num(q[f"p{round(p * 100)}"]) for p in QUANTILES]
                )
    return Table(
        "Gap g = u - s by (rollout class) x (teacher sign)",
        header,
        rows,
        "share = fraction of the class's tokens with that sign; quantiles are nearest-rank.",
    )


def _flip_table(results: dict[str, Any]) -> Table:
    header = [
        "teacher",
        "flipped (all tokens)",
        "correct-path negative",
        "incorrect-path positive",
        "flipped in correct",
        "flipped in wrong",
        "mixed / all-correct / all-wrong groups",
        "down / up flips",
        "pushed down (A < 0)",
        "pushed up (A > 0)",
    ]
    rows = []
    for name, teacher in results["teachers"].items():
        f, adv = teacher["flips"], teacher["advantages"]
        rows.append(
            [
                name,
                pct(f["frac_flipped"]),
                pct(f["frac_flipped_correct_negative"]),
                pct(f["frac_flipped_incorrect_positive"]),
                pct(f["flip_frac_correct"]),
                pct(f["flip_frac_wrong"]),
                f"{pct(f['flip_frac_mixed'])} / {pct(f['flip_frac_all_correct'])} / {pct(f['flip_frac_all_wrong'])}",
                f"{int(f['flip_down_count'])} / {int(f['flip_up_count'])}",
                pct(adv["frac_down"]),
                pct(adv["frac_up"]),
            ]
        )
    return Table(
        f"Tokens CAST would flip ({_flip_rule(results)})",
        header,
        rows,
        "Computed with castrl.core (cast_flip_masks, flip_metrics, cast_advantages) at optimizer step 0. "
        "Correct-path negative = B > 0 and g < -margin (pushed down); incorrect-path positive = B < 0 and "
        "g > margin (pushed up); both are shares of all valid tokens, as the paper's Table 9. 'flipped in "
        "correct / wrong' and the group columns are shares of that class's or group type's tokens. "
        "'pushed down / up' = sign of CAST's final token advantage.",
    )


def _flip_rule(results: dict[str, Any]) -> str:
    f = next(iter(results["teachers"].values()))["flips"]
    directions = [
        name
        for name, on in (("correct-path", f["flip_correct_on"]), ("incorrect-path", f["flip_incorrect_on"]))
        if on
    ]
    rule = "the paper's rule" if f["margin"] == 0 else "castrl's extension"
    return f"flip_margin={f['margin']:g}, {rule}; reversals on: {', '.join(directions) or 'none'}"


def _against_table(results: dict[str, Any]) -> Table:
    header = [
        "teacher",
        "tokens (B != 0)",
        "against the verifier",
        "correct-path negative",
        "incorrect-path positive",
        "same sign as the verifier",
    ]
    rows = []
    for name, teacher in results["teachers"].items():
        a = teacher["against_verifier"]
        rows.append(
            [
                name,
                str(int(a["n_tokens"])),
                pct(a["frac"]),
                pct(a["frac_correct_negative"]),
                pct(a["frac_incorrect_positive"]),
                pct(a["frac_agree"]),
            ]
        )
    flipped, positive = PAPER_TABLE9["frac_flipped"], PAPER_TABLE9["frac_flipped_incorrect_positive"]
    rows.append(
        [
            "paper, Qwen3-4B CAST (Table 9)",
            "",
            pct(flipped),
            f"{pct(flipped - positive)} (derived)",
            pct(positive),
            "",
        ]
    )
    return Table(
        "Tokens whose direction the teacher sets against the verifier's sign",
        header,
        rows,
        "Tokens of B > 0 rollouts with g < 0 plus tokens of B < 0 rollouts with g > 0, over the valid tokens "
        "of rollouts with B != 0. With flip_margin 0 and both reversals on this is the share CAST flips. "
        "The paper's numbers are means over 300 training steps of a 4B model with truncated completions "
        "masked; this run is one batch of the untrained model, truncated completions included.",
    )


def _sweep_table(results: dict[str, Any]) -> Table:
    margins = list(next(iter(results["teachers"].values()))["flips"]["sweep"])
    header = ["teacher", "share"] + [f"margin {m}" for m in margins]
    labels = {
        "all": "flipped (all tokens)",
        "correct_negative": "correct-path negative",
        "incorrect_positive": "incorrect-path positive",
    }
    rows = []
    for name, teacher in results["teachers"].items():
        sweep = teacher["flips"]["sweep"]
        for key, label in labels.items():
            rows.append([name, label] + [pct(sweep[m][key]) for m in margins])
    return Table(
        "Flipped-token share by flip_margin (castrl's extension; 0 = the paper)",
        header,
        rows,
        "A token flips only when |g| > margin; below it the sign-preserving advantage applies.",
    )


def _sequence_table(results: dict[str, Any]) -> Table:
    header = [
        "teacher",
        "pairs",
        "AUC summed gap",
        "AUC mean gap",
        "tied pairs (mean gap)",
        "tokens with g = 0",
        "AUC mean gap (all pairs)",
        "mean gap/token correct",
        "mean gap/token wrong",
    ]
    rows = []
    for name, teacher in results["teachers"].items():
        q = teacher["sequences"]
        rows.append(
            [
                name,
                str(int(q["n_pairs"])),
                num(q["auc_sum"]),
                num(q["auc_mean"]),
                pct(q.get("tie_share")),
                pct(q.get("frac_zero_gap")),
                num(q["auc_mean_all"]),
                num(q["mean_gap_correct"]),
                num(q["mean_gap_wrong"]),
            ]
        )
    return Table(
        "Does the teacher rank correct rollouts above wrong ones?",
        header,
        rows,
        "AUC = P(a correct rollout's gap score > a wrong one's, ties 1/2) over the (correct, wrong) pairs of "
        "the same mixed group, pooled over groups; 0.5 = the teacher cannot tell them apart. 'AUC mean gap' "
        "(mean of g over a rollout's valid tokens) is the one the verdict reads; 'tied pairs' is the share of "
        "its pairs whose mean gaps are equal (each counted 1/2: ties pull the AUC toward 0.5). With g = 0 on "
        "every token every pair ties and the AUC is 0.5 without measuring anything: no teacher signal. "
        "'all pairs' mixes problems. 'mean gap/token' = mean over rollouts of each rollout's mean gap per token.",
    )


def _agreement_table(results: dict[str, Any]) -> Table:
    header = [
        "teachers",
        "tokens",
        "same sign",
        "same sign (correct)",
        "same sign (wrong)",
        "Pearson r",
        "flip Jaccard",
    ]
    rows = []
    for pair, a in results["agreement"].items():
        rows.append(
            [
                pair.replace("|", " vs "),
                str(int(a["count"])),
                pct(a["agree_frac"]),
                pct(a.get("agree_frac_correct")),
                pct(a.get("agree_frac_wrong")),
                num(a.get("pearson")),
                num(a.get("flip_jaccard")),
            ]
        )
    return Table(
        "Sign agreement between teachers",
        header,
        rows,
        "Over real tokens where both gaps are non-zero; 'all' = every teacher has the same sign.",
    )


def _position_table(results: dict[str, Any]) -> Table:
    edges = next(iter(results["teachers"].values()))["position"]["edges"]
    header = ["teacher", "rollouts"] + [
        f"{a:.1f}-{b:.1f}" for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    rows = []
    for name, teacher in results["teachers"].items():
        for cls in CLASSES:
            rows.append([name, cls] + [num(m) for m in teacher["position"][cls]["mean"]])
    return Table("Mean gap by relative position in the completion", header, rows)


def _extremes_table(results: dict[str, Any]) -> Table:
    rows = []
    for name, teacher in results["teachers"].items():
        for kind, items in teacher["extremes"].items():
            for item in items[:5]:
                rows.append(
                    [
                        name,
                        kind.replace("_", " "),
                        num(item["gap"]),
                        repr(item["token"]),
                        repr(item["before"][-40:]),
                        item["problem_id"],
                    ]
                )
    return Table(
        "Most extreme disagreements (the tokens flips act on first)",
        ["teacher", "kind", "g", "token", "text before", "problem"],
        rows,
    )


def build_tables(payload: dict[str, Any]) -> list[Table]:
    """Every report table, in reading order."""
    results = payload["results"]
    return [
        _run_table(payload),
        _quadrant_table(results),
        _flip_table(results),
        _against_table(results),
        _sweep_table(results),
        _sequence_table(results),
        _agreement_table(results),
        _position_table(results),
        _extremes_table(results),
    ]


def write_report(payload: dict[str, Any], out_dir: str) -> dict[str, str]:
    """Write the JSON, the figures, the markdown and the HTML report; returns {kind: path}."""
    os.makedirs(out_dir, exist_ok=True)
    figures = write_figures(payload["results"], out_dir)
    payload = {**payload, "figures": {cap: os.path.basename(p) for cap, p in figures.items()}}
    tables = build_tables(payload)
    paths = {
        "json": os.path.join(out_dir, JSON_FILE),
        "markdown": os.path.join(out_dir, MD_FILE),
        "html": os.path.join(out_dir, HTML_FILE),
    }
    write_json(paths["json"], payload)
    with open(paths["markdown"], "w") as handle:
        handle.write(render_markdown(payload, tables, figures))
    with open(paths["html"], "w") as handle:
        handle.write(render_html(payload, tables, figures))
    return {**paths, **{f"figure:{os.path.basename(p)}": p for p in figures.values()}}
