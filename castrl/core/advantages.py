"""Advantage estimators: one registry, one contract (spec §2 and §4).

Every estimator is called as
    estimator(rewards, group_ids, student_logps, teacher_logps, mask, config, step) -> (adv, stats)
with rewards (B,) float, group_ids (B,) int, student/teacher log-probs (B, T) float (teacher may be
None for estimators that do not use it), mask (B, T) bool/float. `adv` is (B, T), detached, zero on
padding, in student_logps' dtype and device; `stats` maps `cast/...` metric names to floats.
The math runs in fp32. Registered bodies receive a `PreparedBatch` (validated, gap sanitised).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from .config import CastConfig, EstimatorConfig, GRPOAdvConfig, OPSDConfig, RLSDConfig
from .groups import ALL_CORRECT, MIXED
from .inputs import PreparedBatch, prepare_batch
from .registry import Registry
from .stats import advantage_metrics, flip_metrics, gap_metrics, group_metrics


class AdvantageEstimator(Protocol):
    def __call__(
        self,
        rewards: torch.Tensor,  # (B,) float verifier rewards
        group_ids: torch.Tensor,  # (B,) int, rows of one prompt share an id
        student_logps: torch.Tensor,  # (B, T) float, log pi_old of the sampled tokens
        teacher_logps: torch.Tensor | None,  # (B, T) float, stop-gradient teacher log-probs
        mask: torch.Tensor,  # (B, T) bool/float, 1 on real completion tokens
        config: EstimatorConfig | None = None,  # None = the estimator's default config
        step: int = 0,  # optimizer step, for schedules (RLSD's lambda anneal)
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


Body = Callable[[PreparedBatch, EstimatorConfig, int], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class EstimatorSpec:
    """A registered estimator: the callable, its config class and whether it needs a teacher."""

    fn: AdvantageEstimator
    config_cls: type[EstimatorConfig]
    needs_teacher: bool


ADVANTAGE_ESTIMATORS: Registry[EstimatorSpec] = Registry("advantage estimator")


def register_advantage(
    name: str, config_cls: type[EstimatorConfig], needs_teacher: bool
) -> Callable[[Body], AdvantageEstimator]:
    """Register `body(batch, config, step) -> (adv fp32 (B,T), stats)` under `name`.

    The wrapper adds what every estimator shares: config defaulting and type check, input
    validation, masking, dtype/device of the output, detaching, and the common metrics.
    """

    def decorate(body: Body) -> AdvantageEstimator:
        @functools.wraps(body)
        def estimator(rewards, group_ids, student_logps, teacher_logps, mask, config=None, step=0):
            config = config_cls() if config is None else config
            if not isinstance(config, config_cls):
                raise TypeError(f"{name!r} needs a {config_cls.__name__}, got {type(config).__name__}")
            batch = prepare_batch(
                rewards, group_ids, student_logps, teacher_logps, mask, config, needs_teacher, name
            )
            adv, stats = body(batch, config, step)
            adv = (adv * batch.mask).detach().to(dtype=student_logps.dtype)
            stats = {**group_metrics(batch), **stats, **advantage_metrics(adv, batch.mask)}
            if batch.gap is not None:
                stats.update(gap_metrics(batch))
            return adv, stats

        ADVANTAGE_ESTIMATORS.add(name, EstimatorSpec(estimator, config_cls, needs_teacher))
        return estimator

    return decorate


def get_estimator(name: str) -> EstimatorSpec:
    """The registered estimator `name`; unknown names raise ValueError listing the registered ones."""
    return ADVANTAGE_ESTIMATORS.get(name)


def compute_advantages(
    name: str,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    student_logps: torch.Tensor,
    teacher_logps: torch.Tensor | None,
    mask: torch.Tensor,
    config: EstimatorConfig | None = None,
    step: int = 0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Dispatch to the registered estimator `name` (the one place callers name an estimator)."""
    return get_estimator(name).fn(rewards, group_ids, student_logps, teacher_logps, mask, config, step)


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


@register_advantage("grpo", GRPOAdvConfig, needs_teacher=False)
def grpo_advantages(batch: PreparedBatch, config: GRPOAdvConfig, step: int):
    """GRPO: (r - mean) / (std + 1e-4) with the sample std, as TRL's scale_rewards='group'."""
    return _broadcast(grpo_base(batch, config.std_eps, scale=True), batch.mask), {}


@register_advantage("dr_grpo", GRPOAdvConfig, needs_teacher=False)
def dr_grpo_advantages(batch: PreparedBatch, config: GRPOAdvConfig, step: int):
    """Dr. GRPO: r - mean (no std scaling); pair it with the `seq-mean-token-sum-norm` loss."""
    return _broadcast(grpo_base(batch, config.std_eps, scale=False), batch.mask), {}


# ---------------------------------------------------------------------------------------------
# Self-distillation baselines


def _rlsd_like(batch: PreparedBatch, config: RLSDConfig, step: int, reverse_on_correct: bool):
    base = grpo_base(batch, config.std_eps, scale=True)[:, None]  # (B, 1)
    sign = torch.sign(base)
    if reverse_on_correct:  # RLRT: w = exp(-g) in positive rollouts too
        sign = -sign.abs()
    lo, hi = config.rlsd_band
    weight = torch.exp(sign * batch.gap).clamp(lo, hi)
    lam = config.lam_at(step)
    return base * (1 + lam * (weight - 1)), {"cast/rlsd_lam": lam}


@register_advantage("rlsd", RLSDConfig, needs_teacher=True)
def rlsd_advantages(batch: PreparedBatch, config: RLSDConfig, step: int):
    """RLSD: B (1 + lam (w - 1)), w = clip(exp(sign(B) g), 0.8, 1.2), lam 0.5 -> 0 over 50 steps."""
    return _rlsd_like(batch, config, step, reverse_on_correct=False)


@register_advantage("rlrt", RLSDConfig, needs_teacher=True)
def rlrt_advantages(batch: PreparedBatch, config: RLSDConfig, step: int):
    """RLRT [R]: RLSD with the teacher evidence reversed on correct rollouts (w = exp(-g) when B > 0)."""
    return _rlsd_like(batch, config, step, reverse_on_correct=True)


@register_advantage("opsd", OPSDConfig, needs_teacher=True)
def opsd_advantages(batch: PreparedBatch, config: OPSDConfig, step: int):
    """OPSD: the per-token gap sg[g] is the advantage (sampled-token reverse-KL gradient, no reward)."""
    return batch.gap.clone(), {}


# ---------------------------------------------------------------------------------------------
# CAST (spec §2)


def cast_base(batch: PreparedBatch, config: CastConfig) -> torch.Tensor:
    """(B,) base advantage B_i: GRPO in mixed groups, +b_correct / -b_wrong in zero-variance ones."""
    g = batch.groups
    mixed = grpo_base(batch, config.std_eps, scale=config.mixed_scale == "std")
    if config.mixed_only:
        constant = torch.zeros_like(mixed)
    else:
        constant = torch.where(g.kind == ALL_CORRECT, config.b_correct, -config.b_wrong)
    return torch.where(g.kind == MIXED, mixed, constant)


def cast_weight(base: torch.Tensor, gap: torch.Tensor, config: CastConfig) -> torch.Tensor:
    """(B, T) w = clip(exp(sign(B) g), band of sign(B)); 1 where B = 0."""
    base = base[:, None]
    pos = base > 0
    lo = torch.where(pos, config.band_pos[0], config.band_neg[0])
    hi = torch.where(pos, config.band_pos[1], config.band_neg[1])
    weight = torch.exp(torch.sign(base) * gap).clamp(lo, hi)
    return torch.where(base == 0, torch.ones_like(weight), weight)


def _top_fraction(score: torch.Tensor, eligible: torch.Tensor, q: float) -> torch.Tensor:
    """(B, T) bool: per row, the ceil(q * n_eligible) eligible entries with the largest score."""
    score = torch.where(eligible, score, torch.full_like(score, -1.0))
    order = score.argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(score.shape[1], device=score.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    quota = torch.ceil(q * eligible.sum(dim=1, keepdim=True).float())
    return eligible & (rank < quota)


def flip_masks(base: torch.Tensor, gap: torch.Tensor, mask: torch.Tensor, config: CastConfig):
    """(F+, F-) as (B, T) bool: teacher-negative tokens of B > 0 rollouts, teacher-positive of B < 0."""
    tau_pos, tau_neg = config.flip_taus()
    real = mask > 0
    flip_pos = (base[:, None] > 0) & (gap < -tau_pos) & real
    flip_neg = (base[:, None] < 0) & (gap > tau_neg) & real
    q = config.flip_quantile()
    if q is not None:  # only the top-q of each rollout's disagreeing tokens, by |g|
        top = _top_fraction(gap.abs(), flip_pos | flip_neg, q)
        flip_pos, flip_neg = flip_pos & top, flip_neg & top
    return flip_pos, flip_neg


@register_advantage("cast", CastConfig, needs_teacher=True)
def cast_token_advantages(batch: PreparedBatch, config: CastConfig, step: int):
    """CAST: base advantage, asymmetric clipped teacher weight, sign-preserving shaping, flips, band."""
    base = cast_base(batch, config)  # (B,)
    weight = cast_weight(base, batch.gap, config)  # (B, T)
    shaped = base[:, None] * (1 + config.lam * (weight - 1))  # same sign as B (checked in config)
    adv = shaped
    flip_pos = flip_neg = torch.zeros_like(batch.mask, dtype=torch.bool)
    if config.flip:
        flip_pos, flip_neg = flip_masks(base, batch.gap, batch.mask, config)
        capped = torch.minimum(config.kappa_neg * shaped.abs(), config.pos_cap * base.abs()[:, None])
        adv = torch.where(flip_pos, -config.kappa_pos * shaped.abs(), adv)
        adv = torch.where(flip_neg, capped, adv)
    adv = adv.clamp(-config.adv_clip, config.adv_clip)
    stats = flip_metrics(flip_pos, flip_neg, batch)
    stats["cast/weight_mean"] = float(weight[batch.mask > 0].mean().item()) if batch.mask.any() else float("nan")
    stats["cast/frac_base_zero"] = float((base == 0).float().mean().item()) if base.numel() else float("nan")
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
    sampled tokens, mask (B, T). Paste-able into any framework: pure torch, no model, no I/O.
    """
    return cast_token_advantages(rewards, group_ids, student_logps, teacher_logps, mask, cfg, step)
