"""The report section of `castrl bench placement`: the bundled model's answer-free teacher under each tag
placement and prompt style, with the gap's noise floor, computed from the cached placement cells.

Every number is recomputed here from what a cell stored: the gap AUC from the per-rollout mean gaps
(with its tied pairs, and a 95 % bootstrap interval that resamples whole problems, since the pairs of
one problem share its rollouts), the flip and pushed-down shares, and the noise floor.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from castrl.bench.common.cells import load_tier
from castrl.bench.suites.placement import METHOD, TIER
from castrl.diagnostics.separation import rollout_gap_auc
from castrl.formatting import num

BOOTSTRAP = 1000  # resamples of the AUC's interval
COMMAND = "castrl bench placement --styles oneshot,cot --threads 2"


def auc_interval(score: Sequence[float], correct: Sequence[bool], group: Sequence[int], level: float = 0.95,
                 resamples: int | None = None, seed: int = 0) -> tuple[float, float, float, int, int]:
    """(AUC, lo, hi, pairs, tied pairs): `rollout_gap_auc` of the rollouts, and the percentile interval of a
    bootstrap over problems (groups drawn with replacement, each draw a new group id, so a problem drawn
    twice pairs only within itself). Rollouts with a NaN score (no valid token; a cell stores it as null)
    are left out."""
    s = torch.tensor([math.nan if x is None else float(x) for x in score], dtype=torch.double)
    c = torch.tensor([bool(x) for x in correct])
    g = torch.tensor([int(x) for x in group])
    valid = ~torch.isnan(s)
    s = torch.nan_to_num(s)
    found = rollout_gap_auc(s, c, g, valid)
    if found.n_pairs == 0:
        return math.nan, math.nan, math.nan, 0, 0
    ids = sorted(set(g.tolist()))
    members = {k: (g == k).nonzero().flatten() for k in ids}
    draws, rng = [], random.Random(seed)
    for _ in range(BOOTSTRAP if resamples is None else resamples):
        picked = [members[rng.choice(ids)] for _ in ids]
        rows = torch.cat(picked)
        new_group = torch.cat([torch.full((len(p),), i) for i, p in enumerate(picked)])
        value = rollout_gap_auc(s[rows], c[rows], new_group, valid[rows]).auc
        if math.isfinite(value):
            draws.append(value)
    draws.sort()
    lo = draws[int((1 - level) / 2 * (len(draws) - 1))] if draws else math.nan
    hi = draws[int((1 + level) / 2 * (len(draws) - 1))] if draws else math.nan
    return found.auc, lo, hi, found.n_pairs, found.n_ties


def _small(value: Any) -> str:
    """A noise p95 (1e-6 in fp32, 1e-2 in bf16) in two significant digits; 'n/a' when not measured."""
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.2g}"


def _pct(value: Any) -> str:
    return "-" if value is None or not math.isfinite(float(value)) else f"{float(value):.1%}"


def _aucs(rec: Mapping[str, Any]) -> dict[str, tuple[float, float, float, int, int]]:
    """teacher name -> `auc_interval` of one cell (computed once per report: the bootstrap is the slow part)."""
    rollouts = rec["rollouts"]
    return {name: auc_interval(t["rollout_mean_gap"], rollouts["correct"], rollouts["group"])
            for name, t in rec["teachers"].items()}


def _row(name: str, t: Mapping[str, Any], found: tuple[float, float, float, int, int]) -> str:
    auc, lo, hi, pairs, ties = found
    pooled = t.get("noise_floor", {}).get("pooled", {})
    fp32, bf16 = pooled.get("fp32", {}), pooled.get("bf16", {})
    flipped = t.get("cast_metrics", {}).get("cast/frac_flipped")
    return (f"| `{name.partition('@')[2] or 'last_user'}` | {num(auc)} [{num(lo)}, {num(hi)}] ({pairs}, {ties} tied) | "
            f"{_pct(flipped)} | {_pct(t['advantages'].get('frac_down'))} | {_small(fp32.get('abs_delta_p95'))} | "
            f"{_pct(fp32.get('frac_flips_below_p95'))} | {_small(bf16.get('abs_delta_p95'))} | "
            f"{_pct(bf16.get('frac_flips_below_p95'))} | {_pct(bf16.get('frac_sign_changed'))} |")


def _answers(cells: Sequence[Mapping[str, Any]], found: Sequence[Mapping[str, tuple]]) -> list[str]:
    """The section's two questions answered in words from the cells (`found`: each cell's `_aucs`): does the
    sign of the teacher's gap depend on the placement, and how much of CAST's flip set lies below the noise?"""
    lines = []
    for rec, by_name in zip(cells, found, strict=True):
        style = rec["config"]["prompt_style"]
        aucs = {name.partition("@")[2]: value for name, value in by_name.items()}
        sides = {p: "above" if lo > 0.5 else "below" if hi < 0.5 else "not distinguishable from"
                 for p, (_, lo, hi, _, _) in aucs.items()}
        listing = "; ".join(f"`{p}` {sides[p]} 0.5" for p in aucs)
        lines.append(f"- **`{style}` prompt: does the placement decide which rollouts the teacher prefers?** "
                     f"Gap AUC against 0.5 (95 % bootstrap over problems): {listing}.")
        shares = {name.partition("@")[2]: t["noise_floor"]["pooled"] for name, t in rec["teachers"].items()
                  if t.get("noise_floor")}
        if shares:
            fp32 = ", ".join(f"`{p}` {_pct(v.get('fp32', {}).get('frac_flips_below_p95'))}" for p, v in shares.items())
            changed = ", ".join(f"`{p}` {_small(100 * v.get('fp32', {}).get('frac_sign_changed', math.nan))}%"
                                for p, v in shares.items())
            if any(v.get("bf16") for v in shares.values()):
                bf16 = ", ".join(f"`{p}` {_pct(v.get('bf16', {}).get('frac_flips_below_p95'))}"
                                 for p, v in shares.items())
                bf16 = f"below the fp32-vs-bf16 difference: {bf16}"
            else:
                skipped = ", ".join(rec.get("groups", {}).get("noise_variants_skipped", [])) or "bf16"
                bf16 = (f"bf16 was not measured ({skipped} skipped: this CPU has no native bf16, so nobody trains "
                        "in it here; `castrl diagnose --noise_variants bf16` measures it where bf16 is native)")
            lines.append(f"- **`{style}`: how much of CAST's flip set is noise?** Flips with |g| at or below the p95 "
                         f"of |Δg| between fp32 passes that should not matter: {fp32}; tokens whose CAST advantage "
                         f"changes sign between those passes: {changed}; {bf16}.")
    return lines


def placement_sections(cache_dir: str) -> list[str]:
    """`## teacher tag placement ...` from the cached placement cells (nothing when none is cached)."""
    cells = [r for r in load_tier(cache_dir, TIER) if r["method"] == METHOD]
    if not cells:
        return []
    spec = cells[0]["config"]["placement"]
    lines = ["## Teacher tag placement and the gap's noise floor (bundled model, before training)", "",
             f"Reproduce: `{COMMAND}`", "",
             f"`castrl diagnose` on the untrained SmolLM2-135M: the smollm2 tier's first {spec['n_prompts']} training "
             f"problems x {spec['group_size']} rollouts at temperature {spec['temperature']} and a "
             f"{spec['max_new_tokens']}-token budget, the answer-free teacher scored with each `teacher_tag_placement` "
             "on the same rollouts (refresh:10 weights, which equal the policy before any step, so the gap is the "
             "context's alone). Gap AUC: P(a correct rollout's mean gap > a wrong one's of the same problem), "
             "ties ½, with a 95 % bootstrap interval over problems. Flipped / pushed down: tokens CAST would flip / "
             "give a negative advantage at step 0. Noise: the p95 of |Δg| when the same tokens are re-scored in "
             "ways that should not matter (fp32: a quarter of the rows per pass, a shared prompt KV cache, the student's "
             "pass with autograd on; bf16: autocast), and the share of CAST's flips with |g| at or below it; "
             "'sign changes': tokens whose CAST advantage changes sign under bf16 scoring.", ""]
    cells = sorted(cells, key=lambda r: r["config"]["prompt_style"])
    found = [_aucs(rec) for rec in cells]
    for rec, by_name in zip(cells, found, strict=True):
        groups = rec.get("groups", {})
        lines += [f"### `{rec['config']['prompt_style']}` prompt (mixed groups {num(groups.get('frac_mixed'))}, "
                  f"{num(rec.get('wall_s'), 0)} s on {rec.get('threads', '?')} CPU thread(s))", "",
                  "| placement | gap AUC [95% CI] (pairs, tied) | flipped | pushed down | fp32 noise p95 | flips below "
                  "it | bf16 noise p95 | flips below it | CAST sign changes (bf16) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [_row(name, t, by_name[name]) for name, t in rec["teachers"].items()]
        lines.append("")
    return lines + ["### What this answers", ""] + _answers(cells, found) + [""]
