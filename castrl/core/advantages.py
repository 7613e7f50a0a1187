"""The advantage estimators' math (spec §2 and §5): GRPO, Dr. GRPO, RLSD, RLRT, OPSD, GRPO+OPSD, CAST.

Each estimator is a base rule over whole groups and a row-local token rule, registered with
`castrl.core.estimators.register_advantage` (which adds validation, masking and common metrics).
The token rules receive a `PreparedBatch`: fp32 tensors, a float mask and a finite, clamped,
detached gap g = u - s that is 0 on padding.
"""

from __future__ import annotations

import math

import torch

from .config import (
    CastConfig,
    EstimatorConfig,
    GRPOAdvConfig,
    GRPOOPSDConfig,
    OPSDConfig,
    RLRTConfig,
    RLSDConfig,
)
from .estimators import get_estimator, register_advantage
from .groups import ALL_CORRECT, MIXED
from .inputs import PreparedBatch
from .stats import flip_metrics

# Teacher contexts the paper pairs the baselines with (§8.4); names of `castrl.teacher`'s contexts.
REFERENCE_CONTEXT = "with_reference"
PEER_SUCCESS_CONTEXT = "with_peer_success"
ANSWER_FREE_CONTEXT = "answer_free"

# ---------------------------------------------------------------------------------------------
# Outcome baselines


def grpo_base(batch: PreparedBatch, std_eps: float, scale: bool) -> torch.Tensor:
    """(B,) GRPO advantage (r - mean) / (std + eps) (or r - mean); exactly 0 on zero-variance groups."""
    g = batch.groups
    centred = batch.rewards - g.mean
    base = centred / (g.std + std_eps) if scale else centred
    return torch.where(g.zero_variance, torch.zeros_like(base), base)


def _broadcast(base: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return base[:, None].expand_as(mask)


def _grpo_scaled(batch: PreparedBatch, config: EstimatorConfig, step: int) -> torch.Tensor:
    return grpo_base(batch, config.std_eps, scale=True)


def _grpo_centred(batch: PreparedBatch, config: EstimatorConfig, step: int) -> torch.Tensor:
    return grpo_base(batch, config.std_eps, scale=False)


def _no_base(batch: PreparedBatch, config: EstimatorConfig, step: int) -> torch.Tensor:
    return torch.zeros_like(batch.rewards)


@register_advantage("grpo", GRPOAdvConfig, needs_teacher=False, base=_grpo_scaled)
def grpo_tokens(batch: PreparedBatch, base: torch.Tensor, config: GRPOAdvConfig, step: int):
    """GRPO: (r - mean) / (std + 1e-4) with the sample std, as TRL's scale_rewards='group'."""
    return _broadcast(base, batch.mask), {}


@register_advantage("dr_grpo", GRPOAdvConfig, needs_teacher=False, base=_grpo_centred)
def dr_grpo_tokens(batch: PreparedBatch, base: torch.Tensor, config: GRPOAdvConfig, step: int):
    """Dr. GRPO: r - mean (no std scaling); pair it with the `seq-mean-token-sum-norm` loss."""
    return _broadcast(base, batch.mask), {}


# ---------------------------------------------------------------------------------------------
# Self-distillation baselines (spec §5, the paper's §8.4)


@register_advantage("rlsd", RLSDConfig, needs_teacher=True, base=_grpo_scaled, paper_teacher_context=REFERENCE_CONTEXT)
def rlsd_tokens(batch: PreparedBatch, base: torch.Tensor, config: RLSDConfig, step: int):
    """RLSD: A ((1 - lam) + lam w), w = clip(exp(sign(A) g), 0.8, 1.2), lam 0.5 -> 0 over 50 steps."""
    b = base[:, None]  # (B, 1)
    weight = torch.exp(torch.sign(b) * batch.gap).clamp_(*config.rlsd_band)
    lam = config.lam_at(step)
    return b * ((1 - lam) + lam * weight), {"cast/rlsd_lam": lam}


@register_advantage(
    "rlrt", RLRTConfig, needs_teacher=True, base=_grpo_scaled, paper_teacher_context=PEER_SUCCESS_CONTEXT
)
def rlrt_tokens(batch: PreparedBatch, base: torch.Tensor, config: RLRTConfig, step: int):
    """RLRT (§8.4): on verified-correct rollouts d = -g, w = clip(exp(sign(A) d), 1 - eps_w, 1 + eps_w),
    A (1 - lam + lam w); wrong rollouts keep the GRPO advantage A. lam constant (no decay)."""
    b = base[:, None]  # (B, 1)
    weight = torch.exp(torch.sign(b) * -batch.gap).clamp_(1 - config.rlrt_eps_w, 1 + config.rlrt_eps_w)
    lam = config.rlrt_lam
    reweighted = b * ((1 - lam) + lam * weight)
    return torch.where(batch.groups.correct[:, None], reweighted, b.expand_as(reweighted)), {}


@register_advantage("opsd", OPSDConfig, needs_teacher=True, base=_no_base, paper_teacher_context=REFERENCE_CONTEXT)
def opsd_tokens(batch: PreparedBatch, base: torch.Tensor, config: OPSDConfig, step: int):
    """OPSD: the per-token gap sg[g] is the advantage (sampled-token reverse-KL gradient, no reward)."""
    return batch.gap.clone(), {}


@register_advantage(
    "grpo_opsd", GRPOOPSDConfig, needs_teacher=True, base=_grpo_scaled, paper_teacher_context=REFERENCE_CONTEXT
)
def grpo_opsd_tokens(batch: PreparedBatch, base: torch.Tensor, config: GRPOOPSDConfig, step: int):
    """GRPO + OPSD (§8.4): A + alpha_k sg[g], alpha 0.2 -> 0 linearly over 50 steps; no CAST group
    handling (zero-variance groups get only the OPSD term)."""
    alpha = config.coef_at(step)
    return base[:, None] + alpha * batch.gap, {"cast/opsd_coef": alpha}


# ---------------------------------------------------------------------------------------------
# CAST (spec §2: the paper's Eq. 6-15 and Algorithm 1)


_MIN_SHAPING = torch.finfo(torch.float32).eps


def cast_base(batch: PreparedBatch, config: CastConfig, step: int = 0) -> torch.Tensor:
    """(B,) base advantage B_i (Eq. 6): GRPO in mixed groups, +b_correct / -b_wrong in all-correct /
    all-wrong ones (0 with `mixed_only`, or from `shaping_cutoff_step` on, Eq. 19)."""
    g = batch.groups
    mixed = grpo_base(batch, config.std_eps, scale=config.mixed_scale == "std")
    if config.mixed_only or not config.shaping_active(step):
        constant = torch.zeros_like(mixed)
    else:
        constant = torch.where(g.kind == ALL_CORRECT, config.b_correct, -config.b_wrong)
    return torch.where(g.kind == MIXED, mixed, constant)


def _row_bounds(b: torch.Tensor, config: CastConfig) -> tuple[torch.Tensor, ...]:
    """Per-row (B, 1) clip bounds: the sign-preserving band of Eq. 8 by sign(B), and the flip band
    (max(1, l), u) of the other sign's band (Eq. 11 for B > 0, Eq. 13 for B < 0)."""
    pos = b > 0
    (lp, up), (ln, un) = config.band_pos, config.band_neg
    lo, hi = torch.where(pos, lp, ln), torch.where(pos, up, un)
    flip_lo, flip_hi = torch.where(pos, max(1.0, ln), max(1.0, lp)), torch.where(pos, un, up)
    return lo, hi, flip_lo, flip_hi


def cast_flip_masks(base: torch.Tensor, gap: torch.Tensor, config: CastConfig, step: int = 0):
    """(down, up), (B, T) bool: the tokens Eq. 14 reverses. down: B > 0 and g < -margin (Eq. 10);
    up: B < 0 and g > margin (Eq. 12). `gap` is 0 on padding, so padding never flips."""
    b = base[:, None]
    flip_correct, flip_incorrect = config.flips(step)
    margin = config.flip_margin
    down = (b > 0) & (gap < -margin) if flip_correct else torch.zeros_like(gap, dtype=torch.bool)
    up = (b < 0) & (gap > margin) if flip_incorrect else torch.zeros_like(gap, dtype=torch.bool)
    return down, up


@register_advantage("cast", CastConfig, needs_teacher=True, base=cast_base, paper_teacher_context=ANSWER_FREE_CONTEXT)
def cast_tokens(batch: PreparedBatch, base: torch.Tensor, config: CastConfig, step: int):
    """CAST token advantages, Eq. 7-15, vectorised:

        z = exp(sign(B) g)                       (Eq. 7)
        w = clip(z, l, u) of sign(B)'s band      (Eq. 8)
        A = B (1 + lam (w - 1))                  (Eq. 9, not flipped)
        A = -B (1 + lam (w' - 1))                (Eq. 10-13, flipped), w' = clip(1 / z, max(1, l'), u')
        A = clip(A, -adv_clip, adv_clip)         (Eq. 15)

    where (l', u') is the other sign's band. -B = -sign(B)|B| is -|B| when B > 0 and +|B| when B < 0,
    and 1 / z = exp(|g|) on every flipped token, so one expression gives both flip directions.
    """
    b = base[:, None]  # (B, 1)
    lam = config.lam if config.shaping_active(step) else 0.0
    down, up = cast_flip_masks(base, batch.gap, config, step)
    flipped = down | up
    lo, hi, flip_lo, flip_hi = _row_bounds(b, config)
    z = torch.sign(b).mul(batch.gap).exp_()  # (B, T) fresh buffer, reused below
    n_real = float(batch.mask.sum().item())
    factor = torch.where(flipped, z.reciprocal().clamp_(flip_lo, flip_hi), z.clamp_(lo, hi), out=z)
    weight_mean = float(torch.dot(factor.reshape(-1), batch.mask.reshape(-1)).item()) / n_real if n_real else math.nan
    factor.sub_(1).mul_(lam).add_(1)  # 1 + lam (w - 1): > 0 by the config's check on lam and the bands
    if min(1 + lam * (lo_ - 1) for lo_ in (config.band_pos[0], config.band_neg[0])) <= 1e-6 * (lam + 2):
        factor.clamp_(min=_MIN_SHAPING)  # fp32 may round a factor just above 0 down to 0 or below
    adv = factor.mul_(torch.where(flipped, -b, b)).clamp_(-config.adv_clip, config.adv_clip)
    stats = flip_metrics(down, up, batch)
    stats["cast/weight_mean"] = weight_mean
    stats["cast/frac_base_zero"] = float((base == 0).float().mean().item()) if base.numel() else math.nan
    return adv, stats


def cast_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    student_logps: torch.Tensor,
    teacher_logps: torch.Tensor,
    mask: torch.Tensor,
    cfg: CastConfig | None = None,
    step: int = 0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Public CAST entry point: (B, T) detached token advantages and `cast/` metrics (spec §2).

    Shapes: rewards (B,), group_ids (B,) any integers, student/teacher log-probs (B, T) of the
    sampled tokens, mask (B, T) (0 on padding and on masked truncated completions). `step` is the
    optimizer step (only `shaping_cutoff_step` reads it). Paste-able into any framework: pure torch,
    no model, no I/O.
    """
    return get_estimator("cast").fn(rewards, group_ids, student_logps, teacher_logps, mask, cfg, step)
