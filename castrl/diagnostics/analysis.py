"""Teacher-signal statistics of one diagnosis: pure functions from tensors to dicts of numbers.

The CAST math is not re-implemented here: gaps come from `core.inputs.prepare_batch` (sanitised
and clamped as in training), base advantages and flip sets from `core.cast_base` /
`cast_flip_masks`, flip shares from `core.stats.flip_metrics`, and `cast_metrics` and the
pushed-down share come from `core.cast_advantages` on the same batch, exactly what a training step
would compute (at optimizer step 0).
Conventions: B = rollouts, T = completion tokens; statistics are over real (mask = 1) tokens;
std is the population std; quantiles are nearest-rank (sorted[round(q (n - 1))]); an empty set
gives NaN, never 0. A token with g = 0 is in no sign quadrant (counted under `zero_count`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import replace

import torch

from castrl.core import CastConfig, cast_advantages, cast_base, cast_flip_masks
from castrl.core.groups import GROUP_KIND_NAMES
from castrl.core.inputs import PreparedBatch, prepare_batch
from castrl.core.stats import flip_metrics, group_metrics

# The gap AUC lives in `separation`, the verdict in `verdict` (it is recomputed from stored numbers too);
# re-exported for callers of `analysis`.
from .separation import rollout_gap_auc as rollout_gap_auc
from .separation import sequence_separation
from .verdict import AUC_BAND as AUC_BAND
from .verdict import AUC_NO_WORSE as AUC_NO_WORSE
from .verdict import AUC_STRONGEST as AUC_STRONGEST
from .verdict import CONTROL_CURVE as CONTROL_CURVE
from .verdict import MIN_VERDICT_PAIRS as MIN_VERDICT_PAIRS
from .verdict import ControlPoint as ControlPoint
from .verdict import control_evidence as control_evidence
from .verdict import control_summary as control_summary
from .verdict import gap_verdict

NAN = float("nan")
QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
CLASSES: tuple[str, ...] = ("correct", "wrong")
SIGNS: tuple[str, ...] = ("pos", "neg")
# castrl's extension (spec §2): CastConfig.flip_margin values reported next to the configured one.
# 0 is the paper's rule: every token whose gap sign disagrees with B's sign flips.
MARGIN_SWEEP: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)
# The paper's Table 9 (Qwen3-4B CAST, means over 300 steps), shares of all valid tokens.
PAPER_TABLE9: dict[str, float] = {"frac_flipped": 0.264, "frac_flipped_incorrect_positive": 0.070}


def summarize(values: torch.Tensor) -> dict[str, float]:
    """count, mean, std and the QUANTILES (keys p5, p25, ...) of a 1-D tensor, accumulated in fp64."""
    values = values.detach().double().flatten()
    n = values.numel()
    out: dict[str, float] = {"count": float(n), "mean": NAN, "std": NAN}
    out.update({_qname(q): NAN for q in QUANTILES})
    if n == 0:
        return out
    out["mean"] = float(values.mean())
    out["std"] = float(values.std(unbiased=False)) if n > 1 else 0.0
    ordered = values.sort().values
    for q in QUANTILES:
        out[_qname(q)] = float(ordered[round(q * (n - 1))])
    return out


def _qname(q: float) -> str:
    return f"p{round(q * 100)}"


def prepare(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    student_logps: torch.Tensor,
    teacher_logps: torch.Tensor,
    mask: torch.Tensor,
    config: CastConfig,
) -> PreparedBatch:
    """The validated batch a CAST training step would see (gap = u - s, clamped, 0 on padding)."""
    return prepare_batch(rewards, group_ids, student_logps, teacher_logps, mask, config, True, "cast")


def quadrant_stats(batch: PreparedBatch) -> dict[str, dict[str, float]]:
    """Per (correct, wrong) x (teacher-positive g > 0, teacher-negative g < 0): `summarize` + share of class.

    Also `<class>_all` (every real token of the class, g = 0 included) and `overall`.
    """
    real = batch.mask > 0
    correct = batch.groups.correct[:, None].expand_as(real)
    out: dict[str, dict[str, float]] = {"overall": summarize(batch.gap[real])}
    for cls in CLASSES:
        in_cls = real & (correct if cls == "correct" else ~correct)
        n_cls = int(in_cls.sum())
        out[f"{cls}_all"] = summarize(batch.gap[in_cls])
        out[f"{cls}_all"]["zero_count"] = float((in_cls & (batch.gap == 0)).sum())
        for sign in SIGNS:
            sel = in_cls & (batch.gap > 0 if sign == "pos" else batch.gap < 0)
            stats = summarize(batch.gap[sel])
            stats["frac"] = stats["count"] / n_cls if n_cls else NAN
            out[f"{cls}_{sign}"] = stats
    return out


def relative_position(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) float in [0, 1): index of each real token among its row's real tokens / row length."""
    real = mask > 0
    index = real.long().cumsum(dim=1) - 1
    length = real.sum(dim=1, keepdim=True).clamp(min=1)
    return torch.where(real, index.float() / length, torch.zeros_like(index, dtype=torch.float))


def _binned_mean(values: torch.Tensor, bins: torch.Tensor, n_bins: int) -> list[float]:
    counts = torch.bincount(bins, minlength=n_bins).double()
    sums = torch.bincount(bins, weights=values.double(), minlength=n_bins)
    return [float(s / c) if c > 0 else NAN for s, c in zip(sums.tolist(), counts.tolist(), strict=True)]


def position_profile(batch: PreparedBatch, flipped: torch.Tensor, n_bins: int = 10) -> dict[str, object]:
    """Gap against relative position: per class and bin, token count, mean g, std g, mean |g|,
    share of teacher-positive tokens and share of tokens CAST flips (`flipped` (B, T) bool)."""
    real = batch.mask > 0
    bins_all = (relative_position(batch.mask) * n_bins).long().clamp(max=n_bins - 1)
    correct = batch.groups.correct[:, None].expand_as(real)
    out: dict[str, object] = {"edges": [i / n_bins for i in range(n_bins + 1)]}
    for cls in CLASSES:
        sel = real & (correct if cls == "correct" else ~correct)
        gap, bins = batch.gap[sel].double(), bins_all[sel]
        mean = _binned_mean(gap, bins, n_bins)
        second = _binned_mean(gap * gap, bins, n_bins)
        out[cls] = {
            "count": torch.bincount(bins, minlength=n_bins).tolist(),
            "mean": mean,
            "std": [
                math.sqrt(max(s - m * m, 0.0)) if math.isfinite(m) else NAN
                for m, s in zip(mean, second, strict=True)
            ],
            "abs_mean": _binned_mean(gap.abs(), bins, n_bins),
            "pos_frac": _binned_mean((gap > 0).double(), bins, n_bins),
            "flip_frac": _binned_mean(flipped[sel].double(), bins, n_bins),
        }
    return out


def gap_histogram(batch: PreparedBatch, n_bins: int = 60) -> dict[str, object]:
    """Histogram counts of g per class on symmetric edges +-L, L = the 99.5th percentile of |g|
    (at least 0.05); values beyond are counted in the end bins and in `clipped`. n_bins is even so
    0 is an edge: bins left of it hold teacher-negative tokens, right of it teacher-positive ones
    (g = 0 lands in the first positive bin)."""
    if n_bins < 2 or n_bins % 2:
        raise ValueError(f"n_bins must be an even number >= 2, got {n_bins}")
    real = batch.mask > 0
    abs_real = batch.gap[real].abs()
    limit = max(summarize_abs_q(abs_real, 0.995), 0.05)
    edges = torch.linspace(-limit, limit, n_bins + 1, dtype=torch.float64)
    out: dict[str, object] = {"edges": edges.tolist(), "clipped": float((abs_real > limit).sum())}
    for cls in CLASSES:
        rows = batch.groups.correct if cls == "correct" else ~batch.groups.correct
        values = batch.gap[real & rows[:, None]].double().clamp(-limit, limit)
        index = (torch.bucketize(values, edges, right=True) - 1).clamp(0, n_bins - 1)
        out[cls] = torch.bincount(index, minlength=n_bins).tolist()
    return out


def summarize_abs_q(abs_values: torch.Tensor, q: float) -> float:
    """Nearest-rank q-quantile of a 1-D tensor; 0.0 when empty."""
    if abs_values.numel() == 0:
        return 0.0
    ordered = abs_values.double().sort().values
    return float(ordered[round(q * (ordered.numel() - 1))])


def _flip_fractions(
    batch: PreparedBatch, config: CastConfig
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """The flip shares a CAST training step logs (`core.stats.flip_metrics`, keys without `cast/`),
    the (B, T) bool flip mask and the (B,) base advantage, at optimizer step 0."""
    base = cast_base(batch, config)
    down, up = cast_flip_masks(base, batch.gap, config)
    real = batch.mask > 0
    down, up = down & real, up & real  # the gap is 0 on padding already; explicit for clarity
    out = {k.removeprefix("cast/"): v for k, v in flip_metrics(down, up, batch).items()}
    return out, down | up, base


def _margin_key(margin: float) -> str:
    return f"{margin:g}"


def flip_stats(batch: PreparedBatch, config: CastConfig) -> tuple[dict[str, object], torch.Tensor]:
    """Token shares CAST would flip under `config` (flip sets from core `cast_flip_masks`, shares
    from core `flip_metrics`: `frac_flipped`, `frac_flipped_correct_negative`,
    `frac_flipped_incorrect_positive` over all valid tokens, `flip_frac_correct` / `flip_frac_wrong`
    over the class's tokens, `flip_down_count` / `flip_up_count`), the same by group kind, a sweep
    over MARGIN_SWEEP (plus the configured margin; keys '%g' of the margin), and the (B, T) flip mask."""
    fractions, flipped, _ = _flip_fractions(batch, config)
    flip_correct, flip_incorrect = config.flips(0)
    out: dict[str, object] = {
        **fractions,
        "margin": float(config.flip_margin),
        "flip_correct_on": flip_correct,
        "flip_incorrect_on": flip_incorrect,
    }
    real = batch.mask > 0
    for kind, name in enumerate(GROUP_KIND_NAMES):
        out[f"flip_frac_{name}"] = _share(flipped, real & (batch.groups.kind == kind)[:, None])
    sweep = {}
    for margin in dict.fromkeys((*MARGIN_SWEEP, float(config.flip_margin))):
        swept, _, _ = _flip_fractions(batch, replace(config, flip_margin=margin))
        sweep[_margin_key(margin)] = {
            "all": swept["frac_flipped"],
            "correct_negative": swept["frac_flipped_correct_negative"],
            "incorrect_positive": swept["frac_flipped_incorrect_positive"],
            **{cls: swept[f"flip_frac_{cls}"] for cls in CLASSES},
        }
    out["sweep"] = sweep
    return out, flipped


def against_verifier(batch: PreparedBatch, config: CastConfig) -> dict[str, float]:
    """The share of valid tokens whose direction the teacher sets against the verifier's sign (`frac`):
    tokens of B > 0 rollouts with g < 0 (`frac_correct_negative`) plus tokens of B < 0 rollouts with
    g > 0 (`frac_incorrect_positive`), over the valid tokens of rollouts with B != 0 (`n_tokens`). B is
    CAST's base advantage under `config` (step 0). Independent of the flip switches and margin: with
    flip_margin = 0 and both directions on it is the share CAST flips (equal to `frac_flipped` when no
    rollout has B = 0). `frac_agree` = share where sign(g) = sign(B); the rest has g = 0."""
    base = cast_base(batch, config)[:, None]
    scope = (batch.mask > 0) & (base != 0)
    down = scope & (base > 0) & (batch.gap < 0)
    up = scope & (base < 0) & (batch.gap > 0)
    agree = scope & (torch.sign(batch.gap) == torch.sign(base))
    return {
        "n_tokens": float(scope.sum()),
        "frac": _share(down | up, scope),
        "frac_correct_negative": _share(down, scope),
        "frac_incorrect_positive": _share(up, scope),
        "frac_agree": _share(agree, scope),
    }


def advantage_directions(adv: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Shares of valid tokens CAST would push down (A < 0), up (A > 0) or leave (A = 0); `adv` is
    `cast_advantages`' (B, T) output."""
    real = mask > 0
    return {
        "frac_down": _share(adv < 0, real),
        "frac_up": _share(adv > 0, real),
        "frac_zero": _share(adv == 0, real),
    }


def sign_agreement(
    gaps: Mapping[str, torch.Tensor],
    mask: torch.Tensor,
    correct: torch.Tensor,
    flipped: Mapping[str, torch.Tensor],
) -> dict[str, object]:
    """Pairwise: share of real tokens (both gaps non-zero) where the two teachers' gap signs agree,
    overall and per class; Pearson r of the gaps; Jaccard overlap of the tokens CAST flips.
    With 3+ teachers, `all` is the share where every teacher has the same sign."""
    real = mask > 0
    cls_mask = {"correct": correct[:, None].expand_as(real), "wrong": ~correct[:, None].expand_as(real)}
    out: dict[str, object] = {}
    for a, b in itertools.combinations(gaps, 2):
        both = real & (gaps[a] != 0) & (gaps[b] != 0)
        agree = torch.sign(gaps[a]) == torch.sign(gaps[b])
        entry = {"count": float(both.sum()), "agree_frac": _share(agree, both)}
        for cls, sel in cls_mask.items():
            entry[f"agree_frac_{cls}"] = _share(agree, both & sel)
        entry["pearson"] = _pearson(gaps[a][real], gaps[b][real])
        union = (flipped[a] | flipped[b]).sum()
        entry["flip_jaccard"] = float((flipped[a] & flipped[b]).sum() / union) if union > 0 else NAN
        out[f"{a}|{b}"] = entry
    if len(gaps) >= 3:
        stacked = torch.stack([torch.sign(g) for g in gaps.values()])
        nonzero = real & (stacked != 0).all(dim=0)
        out["all"] = {
            "count": float(nonzero.sum()),
            "agree_frac": _share((stacked == stacked[0]).all(dim=0), nonzero),
        }
    return out


def _share(hit: torch.Tensor, among: torch.Tensor) -> float:
    n = int(among.sum())
    return float((hit & among).sum()) / n if n else NAN


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / denom if denom > 0 else NAN


def extreme_tokens(batch: PreparedBatch, k: int = 8) -> dict[str, list[tuple[int, int, float]]]:
    """(row, t, g) of the k most teacher-negative tokens of correct rollouts and the k most
    teacher-positive tokens of wrong rollouts: the tokens CAST's flips would act on first."""
    real = batch.mask > 0
    rows = batch.groups.correct[:, None].expand_as(real)
    out = {}
    for name, sel, sign in (
        ("correct_most_negative", real & rows, -1.0),
        ("wrong_most_positive", real & ~rows, 1.0),
    ):
        score = torch.where(sel & (sign * batch.gap > 0), sign * batch.gap, torch.full_like(batch.gap, -1.0))
        top = score.flatten().topk(min(k, score.numel()))
        width = batch.gap.shape[1]
        out[name] = [
            (i // width, i % width, float(batch.gap.flatten()[i]))
            for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            if v > 0
        ]
    return out


def group_summary(batch: PreparedBatch) -> dict[str, float]:
    """Group-type fractions and reward mean (core `group_metrics`, keys without `cast/`), plus sizes."""
    real = batch.mask > 0
    out = {k.removeprefix("cast/"): v for k, v in group_metrics(batch).items()}
    out.update({"n_groups": float(batch.groups.n_groups), "n_rollouts": float(batch.rewards.numel())})
    for cls in CLASSES:
        rows = batch.groups.correct if cls == "correct" else ~batch.groups.correct
        out[f"n_rollouts_{cls}"] = float(rows.sum())
        out[f"n_tokens_{cls}"] = float(real[rows].sum())
        out[f"mean_length_{cls}"] = float(real[rows].sum(dim=1).double().mean()) if rows.any() else NAN
    return out


def analyze(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    student_logps: torch.Tensor,
    teacher_logps: Mapping[str, torch.Tensor],
    mask: torch.Tensor,
    config: CastConfig,
    *,
    position_bins: int = 10,
    hist_bins: int = 60,
) -> dict[str, object]:
    """Every number of a diagnosis. Shapes: rewards (B,), group_ids (B,), student_logps and each
    teacher_logps[name] (B, T) float, mask (B, T). Returns {"groups", "teachers": {name: ...},
    "agreement"}; per teacher: "quadrants", "flips", "against_verifier", "advantages" (shares CAST
    pushes down / up), "position", "histogram", "extremes", "sequences", "verdict" (`gap_verdict`), and
    "cast_metrics" (the `cast/` metrics a CAST training step would log on this batch)."""
    if not teacher_logps:
        raise ValueError("teacher_logps is empty; pass at least one teacher context")
    if position_bins < 1:
        raise ValueError(f"position_bins must be >= 1, got {position_bins}")
    teachers: dict[str, object] = {}
    gaps, flipped_by = {}, {}
    batch = None
    for name, logps in teacher_logps.items():
        batch = prepare(rewards, group_ids, student_logps, logps, mask, config)
        flips, flipped = flip_stats(batch, config)
        gaps[name], flipped_by[name] = batch.gap, flipped
        adv, cast_metrics = cast_advantages(rewards, group_ids, student_logps, logps, mask, config)
        sequences = sequence_separation(batch)
        verdict = gap_verdict(sequences["auc_mean"], int(sequences["n_pairs"]), tie_share=sequences["tie_share"],
                              frac_zero_gap=sequences["frac_zero_gap"])
        teachers[name] = {
            "nonfinite_count": float(batch.n_nonfinite_gap),
            "quadrants": quadrant_stats(batch),
            "flips": flips,
            "against_verifier": against_verifier(batch, config),
            "advantages": advantage_directions(adv, batch.mask),
            "position": position_profile(batch, flipped, position_bins),
            "histogram": gap_histogram(batch, hist_bins),
            "extremes": extreme_tokens(batch),
            "sequences": sequences,
            "verdict": verdict,
            "cast_metrics": cast_metrics,
        }
    return {
        "groups": group_summary(batch),
        "teachers": teachers,
        "agreement": sign_agreement(gaps, batch.mask, batch.groups.correct, flipped_by),
    }
