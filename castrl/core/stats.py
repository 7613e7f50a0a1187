"""Per-step metrics the core can compute (spec §5), under `cast/` with lower_snake leaves.

All statistics are over real (unmasked) tokens. A statistic of an empty set is NaN: "no such
tokens this step" must not read as "value 0".
"""

from __future__ import annotations

import torch

from .groups import ALL_CORRECT, ALL_WRONG, MIXED
from .inputs import PreparedBatch

NAN = float("nan")


def _abs_quantile(values: torch.Tensor, q: float) -> float:
    """q-quantile of |values| (nearest-rank), via kthvalue: no element limit, unlike torch.quantile."""
    n = values.numel()
    if n == 0:
        return NAN
    k = min(n, max(1, int(round(q * (n - 1))) + 1))
    return float(values.abs().kthvalue(k).values.item())


def _mean_std(values: torch.Tensor) -> tuple[float, float]:
    n = values.numel()
    if n == 0:
        return NAN, NAN
    mean = values.mean()
    std = values.std(unbiased=False) if n > 1 else torch.zeros(())
    return float(mean.item()), float(std.item())


def group_metrics(batch: PreparedBatch) -> dict[str, float]:
    """Group-type fractions (over groups), reward mean, and the zero-variance share."""
    kinds = batch.groups.group_kind
    n = max(batch.groups.n_groups, 1)
    return {
        "cast/frac_all_correct": float((kinds == ALL_CORRECT).sum().item()) / n,
        "cast/frac_all_wrong": float((kinds == ALL_WRONG).sum().item()) / n,
        "cast/frac_mixed": float((kinds == MIXED).sum().item()) / n,
        "cast/reward_mean": float(batch.rewards.mean().item()) if batch.rewards.numel() else NAN,
        "cast/frac_correct": float(batch.groups.correct.float().mean().item()) if batch.rewards.numel() else NAN,
    }


def advantage_metrics(adv: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Token-advantage mean/std/min/max over real tokens, and the share of rollouts with A != 0."""
    real = mask > 0
    values = adv.float()[real]
    mean, std = _mean_std(values)
    nonzero_rows = ((adv != 0) & real).any(dim=1).float()
    return {
        "cast/adv_mean": mean,
        "cast/adv_std": std,
        "cast/adv_min": float(values.min().item()) if values.numel() else NAN,
        "cast/adv_max": float(values.max().item()) if values.numel() else NAN,
        "cast/frac_nonzero_adv": float(nonzero_rows.mean().item()) if adv.shape[0] else NAN,
    }


def gap_metrics(batch: PreparedBatch) -> dict[str, float]:
    """Gap mean/std/|g| p95 overall and per (correct, wrong) x (teacher-positive, teacher-negative).

    `gap_<c>_<s>_frac` is the share of that rollout class's tokens with that gap sign.
    """
    assert batch.gap is not None, "gap_metrics needs a teacher gap"
    gap, real = batch.gap, batch.mask > 0
    out: dict[str, float] = {"cast/gap_nonfinite_count": float(batch.n_nonfinite_gap)}
    out["cast/gap_mean"], out["cast/gap_std"] = _mean_std(gap[real])
    out["cast/gap_abs_p95"] = _abs_quantile(gap[real], 0.95)
    correct = batch.groups.correct[:, None]
    for cls_name, cls_rows in (("correct", correct), ("wrong", ~correct)):
        cls_tokens = real & cls_rows
        n_cls = int(cls_tokens.sum().item())
        for sign_name, sign_tokens in (("pos", gap > 0), ("neg", gap < 0)):
            values = gap[cls_tokens & sign_tokens]
            key = f"cast/gap_{cls_name}_{sign_name}"
            out[f"{key}_frac"] = values.numel() / n_cls if n_cls else NAN
            out[f"{key}_mean"], out[f"{key}_std"] = _mean_std(values)
            out[f"{key}_abs_p95"] = _abs_quantile(values, 0.95)
    return out


def flip_metrics(flip_pos: torch.Tensor, flip_neg: torch.Tensor, batch: PreparedBatch) -> dict[str, float]:
    """Flipped-token fractions among real tokens of correct and of wrong rollouts, and overall."""
    real = batch.mask > 0
    flipped = (flip_pos | flip_neg) & real
    correct = batch.groups.correct[:, None]
    out = {}
    for name, rows in (("correct", correct), ("wrong", ~correct)):
        n = int((real & rows).sum().item())
        out[f"cast/flip_frac_{name}"] = float((flipped & rows).sum().item()) / n if n else NAN
    n_real = int(real.sum().item())
    out["cast/flip_frac"] = float(flipped.sum().item()) / n_real if n_real else NAN
    out["cast/flip_pos_count"] = float((flip_pos & real).sum().item())
    out["cast/flip_neg_count"] = float((flip_neg & real).sum().item())
    return out
