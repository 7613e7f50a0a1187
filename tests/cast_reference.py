"""An independent, line-by-line implementation of the paper's Algorithm 1 (lines 7-30), for tests.

Plain Python floats, one token at a time, no castrl.core helper: it shares no code with
`castrl.core`, so agreement between the two is evidence that the vectorised rule is the paper's.
The gap is formed in fp32 (as the inputs are fp32), everything after it in fp64.
"""

from __future__ import annotations

import math
import statistics

import torch

from castrl.core import CastConfig


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def _sign(x: float) -> float:
    return (x > 0) - (x < 0)


def base_advantages(rewards: list[float], group_ids: list[int], cfg: CastConfig, step: int) -> list[float]:
    """Algorithm 1 lines 7-12 (Eq. 5-6), with the mixed-only and cutoff (Eq. 19) switches."""
    active = cfg.shaping_cutoff_step is None or step < cfg.shaping_cutoff_step
    b_correct = cfg.b_correct if active and not cfg.mixed_only else 0.0
    b_wrong = cfg.b_wrong if active and not cfg.mixed_only else 0.0
    out = []
    for r, gid in zip(rewards, group_ids, strict=True):
        group = [x for x, j in zip(rewards, group_ids, strict=True) if j == gid]
        n_correct = sum(x >= cfg.correct_threshold for x in group)
        if n_correct == len(group):  # ALLCORRECT
            out.append(b_correct)
        elif n_correct == 0:  # ALLWRONG
            out.append(-b_wrong)
        else:  # MIXED: GRPO advantage A_i (Eq. 5)
            centred = r - statistics.fmean(group)
            scale = statistics.stdev(group) + cfg.std_eps if cfg.mixed_scale == "std" else 1.0
            out.append(centred / scale)
    return out


def token_advantage(b: float, g: float, cfg: CastConfig, step: int) -> float:
    """Algorithm 1 lines 15-30 for one valid token with base advantage b and gap g."""
    active = cfg.shaping_cutoff_step is None or step < cfg.shaping_cutoff_step
    lam = cfg.lam if active else 0.0  # Eq. 18
    flip_down = cfg.flip and cfg.flip_correct and active
    flip_up = cfg.flip and cfg.flip_incorrect and active
    (l_pos, u_pos), (l_neg, u_neg) = cfg.band_pos, cfg.band_neg
    z = math.exp(_sign(b) * g)  # line 15
    w = _clip(z, l_pos, u_pos) if b > 0 else _clip(z, l_neg, u_neg)  # lines 16-20
    if flip_down and b > 0 and g < -cfg.flip_margin:  # lines 21-23
        w_minus = _clip(math.exp(-g), max(1.0, l_neg), u_neg)
        a_raw = -abs(b) * (1 + lam * (w_minus - 1))
    elif flip_up and b < 0 and g > cfg.flip_margin:  # lines 24-26
        w_plus = _clip(math.exp(g), max(1.0, l_pos), u_pos)
        a_raw = abs(b) * (1 + lam * (w_plus - 1))
    else:  # line 28
        a_raw = b * (1 + lam * (w - 1))
    return _clip(a_raw, -cfg.adv_clip, cfg.adv_clip)  # line 30


def algorithm1(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor,
    cfg: CastConfig,
    step: int = 0,
) -> torch.Tensor:
    """(B, T) float64 token advantages; 0 on padding. Non-finite gaps count as 0 and gaps are clamped
    to +-gap_clip (spec §1), as the core does before Algorithm 1."""
    gap = (teacher.float() - student.float()).tolist()
    base = base_advantages(rewards.tolist(), group_ids.tolist(), cfg, step)
    real = (mask > 0).tolist()
    out = []
    for i, b in enumerate(base):
        row = []
        for t, g in enumerate(gap[i]):
            if not real[i][t]:
                row.append(0.0)
                continue
            g = _clip(g, -cfg.gap_clip, cfg.gap_clip) if math.isfinite(g) else 0.0
            row.append(token_advantage(b, g, cfg, step))
        out.append(row)
    return torch.tensor(out, dtype=torch.float64).reshape(mask.shape)
