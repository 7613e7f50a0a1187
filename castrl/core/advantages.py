"""Advantage estimators: one registry, one contract (spec §2 and §4).

Every estimator is called as
    estimator(rewards, group_ids, student_logps, teacher_logps, mask, config, step) -> (adv, stats)
with rewards (B,) float, group_ids (B,) int, student/teacher log-probs (B, T) float (teacher may be
None for estimators that do not use it), mask (B, T) bool/float. `adv` is (B, T), detached, zero on
padding, in student_logps' dtype and device; `stats` maps `cast/...` metric names to floats.
The math runs in fp32. Registered bodies receive a `PreparedBatch` (validated, gap sanitised).

Each estimator is also available as its two halves, a base step over whole groups and a row-local
token step (`compute_base_advantages`, `compute_token_advantages`): a trainer can then compute the
token advantages of a micro-batch inside its loss, from the log-probs of the training forward pass.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from .config import CastConfig, EstimatorConfig, GRPOAdvConfig, OPSDConfig, RLSDConfig
from .groups import ALL_CORRECT, MIXED
from .inputs import PreparedBatch, prepare_batch, prepare_groups
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


BaseFn = Callable[[PreparedBatch, EstimatorConfig], torch.Tensor]
Body = Callable[[PreparedBatch, torch.Tensor, EstimatorConfig, int], tuple[torch.Tensor, dict[str, float]]]


class BaseStep(Protocol):
    def __call__(
        self, rewards: torch.Tensor, group_ids: torch.Tensor, config: EstimatorConfig | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


class TokenStep(Protocol):
    def __call__(
        self,
        base: torch.Tensor,  # (B,) float, the base step's output for these rows
        rewards: torch.Tensor,  # (B,) float, for the correct / wrong split of the metrics only
        student_logps: torch.Tensor,
        teacher_logps: torch.Tensor | None,
        mask: torch.Tensor,
        config: EstimatorConfig | None = None,
        step: int = 0,
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass(frozen=True)
class EstimatorSpec:
    """A registered estimator: the callable, its config class, whether it needs a teacher, and its
    two halves.

    Every estimator is a *base step* over whole groups (rewards -> one (B,) base advantage per
    rollout) followed by a *token step* that is local to each row (base, log-probs -> (B, T)).
    `fn` runs both on one batch. The halves let a trainer run the base step when the rewards are
    in and the token step later, on any subset of rows, e.g. a training micro-batch whose forward
    pass already yields the student log-probs (`CASTConfig.fuse_student_pass`).
    """

    fn: AdvantageEstimator
    config_cls: type[EstimatorConfig]
    needs_teacher: bool
    base_step: BaseStep
    token_step: TokenStep


ADVANTAGE_ESTIMATORS: Registry[EstimatorSpec] = Registry("advantage estimator")


def _apply_mask(adv: torch.Tensor, batch: PreparedBatch) -> torch.Tensor:
    """adv * mask; in place when `adv` is a fresh fp32 buffer of the body (not a view, not batch data).

    On CPU a fresh (B, T) buffer costs page faults that outweigh the multiply itself.
    """
    owned = (
        adv._base is None  # not a view (GRPO returns an expanded (B, 1) column)
        and adv.dtype == torch.float32
        and adv.shape == batch.mask.shape
        and adv.is_contiguous()
        and all(adv is not t for t in (batch.gap, batch.mask, batch.real))
    )
    return adv.mul_(batch.mask) if owned else adv * batch.mask


def _check_base(base: object, n_rows: int) -> torch.Tensor:
    if not isinstance(base, torch.Tensor) or not base.is_floating_point():
        raise TypeError(f"base must be a float torch.Tensor, got {getattr(base, 'dtype', type(base).__name__)}")
    if base.shape != (n_rows,):
        raise ValueError(f"base must have shape ({n_rows},) (one value per row), got {tuple(base.shape)}")
    if not torch.isfinite(base).all():
        raise ValueError("base must be finite")
    return base.detach().float()


def register_advantage(
    name: str, config_cls: type[EstimatorConfig], needs_teacher: bool, base: BaseFn
) -> Callable[[Body], AdvantageEstimator]:
    """Register an estimator as `base(batch, config) -> (B,)` over whole groups and a row-local
    `body(batch, base, config, step) -> (adv fp32 (B, T), stats)`.

    The body must not read group statistics (`batch.groups` other than `.correct`): the token step
    calls it with every row in a group of its own. The wrapper adds what every estimator shares:
    config defaulting and type check, input validation, masking, dtype/device of the output,
    detaching, and the common metrics.
    """

    def decorate(body: Body) -> AdvantageEstimator:
        def checked(config: EstimatorConfig | None) -> EstimatorConfig:
            config = config_cls() if config is None else config
            if not isinstance(config, config_cls):
                raise TypeError(f"{name!r} needs a {config_cls.__name__}, got {type(config).__name__}")
            return config

        def tokens(batch, base_adv, student_logps, config, step):
            adv, stats = body(batch, base_adv, config, step)
            adv = _apply_mask(adv, batch).detach().to(dtype=student_logps.dtype)
            stats = {**stats, **advantage_metrics(adv, batch.mask)}
            if batch.gap is not None:
                stats.update(gap_metrics(batch))
            return adv, stats

        @functools.wraps(body)
        def estimator(rewards, group_ids, student_logps, teacher_logps, mask, config=None, step=0):
            config = checked(config)
            batch = prepare_batch(
                rewards, group_ids, student_logps, teacher_logps, mask, config, needs_teacher, name
            )
            adv, stats = tokens(batch, base(batch, config), student_logps, config, step)
            return adv, {**group_metrics(batch), **stats}

        def base_step(rewards, group_ids, config=None):
            config = checked(config)
            batch = prepare_groups(rewards, group_ids, config)
            return base(batch, config).detach(), group_metrics(batch)

        def token_step(base_adv, rewards, student_logps, teacher_logps, mask, config=None, step=0):
            config = checked(config)
            # every row a group of its own; a non-tensor `rewards` is reported by prepare_batch
            is_tensor = isinstance(rewards, torch.Tensor) and rewards.ndim >= 1
            rows = torch.arange(rewards.shape[0], device=rewards.device) if is_tensor else torch.zeros(0, dtype=torch.long)
            batch = prepare_batch(rewards, rows, student_logps, teacher_logps, mask, config, needs_teacher, name)
            return tokens(batch, _check_base(base_adv, batch.rewards.shape[0]), student_logps, config, step)

        ADVANTAGE_ESTIMATORS.add(name, EstimatorSpec(estimator, config_cls, needs_teacher, base_step, token_step))
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


def compute_base_advantages(
    name: str, rewards: torch.Tensor, group_ids: torch.Tensor, config: EstimatorConfig | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """First half of estimator `name`: the (B,) base advantage per rollout (needs whole groups) and
    the group metrics. No log-probs: it can run as soon as the rewards are in."""
    return get_estimator(name).base_step(rewards, group_ids, config)


def compute_token_advantages(
    name: str,
    base: torch.Tensor,
    rewards: torch.Tensor,
    student_logps: torch.Tensor,
    teacher_logps: torch.Tensor | None,
    mask: torch.Tensor,
    config: EstimatorConfig | None = None,
    step: int = 0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Second half of estimator `name`: (B, T) token advantages from the rows' `base` (from
    `compute_base_advantages`) and log-probs. Row-local: any subset of rows gives those rows'
    advantages of the full-batch `compute_advantages`. `rewards` only split the metrics by
    correctness."""
    return get_estimator(name).token_step(base, rewards, student_logps, teacher_logps, mask, config, step)


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


def _grpo_scaled(batch: PreparedBatch, config: EstimatorConfig) -> torch.Tensor:
    return grpo_base(batch, config.std_eps, scale=True)


def _grpo_centred(batch: PreparedBatch, config: EstimatorConfig) -> torch.Tensor:
    return grpo_base(batch, config.std_eps, scale=False)


def _no_base(batch: PreparedBatch, config: EstimatorConfig) -> torch.Tensor:
    return torch.zeros_like(batch.rewards)


@register_advantage("grpo", GRPOAdvConfig, needs_teacher=False, base=_grpo_scaled)
def grpo_advantages(batch: PreparedBatch, base: torch.Tensor, config: GRPOAdvConfig, step: int):
    """GRPO: (r - mean) / (std + 1e-4) with the sample std, as TRL's scale_rewards='group'."""
    return _broadcast(base, batch.mask), {}


@register_advantage("dr_grpo", GRPOAdvConfig, needs_teacher=False, base=_grpo_centred)
def dr_grpo_advantages(batch: PreparedBatch, base: torch.Tensor, config: GRPOAdvConfig, step: int):
    """Dr. GRPO: r - mean (no std scaling); pair it with the `seq-mean-token-sum-norm` loss."""
    return _broadcast(base, batch.mask), {}


# ---------------------------------------------------------------------------------------------
# Self-distillation baselines


def _rlsd_like(batch: PreparedBatch, base: torch.Tensor, config: RLSDConfig, step: int, reverse_on_correct: bool):
    b = base[:, None]  # (B, 1)
    sign = torch.sign(b)
    if reverse_on_correct:  # RLRT: w = exp(-g) in positive rollouts too
        sign = -sign.abs()
    lo, hi = config.rlsd_band
    weight = torch.exp(sign * batch.gap).clamp(lo, hi)
    lam = config.lam_at(step)
    return b * (1 + lam * (weight - 1)), {"cast/rlsd_lam": lam}


@register_advantage("rlsd", RLSDConfig, needs_teacher=True, base=_grpo_scaled)
def rlsd_advantages(batch: PreparedBatch, base: torch.Tensor, config: RLSDConfig, step: int):
    """RLSD: B (1 + lam (w - 1)), w = clip(exp(sign(B) g), 0.8, 1.2), lam 0.5 -> 0 over 50 steps."""
    return _rlsd_like(batch, base, config, step, reverse_on_correct=False)


@register_advantage("rlrt", RLSDConfig, needs_teacher=True, base=_grpo_scaled)
def rlrt_advantages(batch: PreparedBatch, base: torch.Tensor, config: RLSDConfig, step: int):
    """RLRT [R]: RLSD with the teacher evidence reversed on correct rollouts (w = exp(-g) when B > 0)."""
    return _rlsd_like(batch, base, config, step, reverse_on_correct=True)


@register_advantage("opsd", OPSDConfig, needs_teacher=True, base=_no_base)
def opsd_advantages(batch: PreparedBatch, base: torch.Tensor, config: OPSDConfig, step: int):
    """OPSD: the per-token gap sg[g] is the advantage (sampled-token reverse-KL gradient, no reward)."""
    return batch.gap.clone(), {}


# ---------------------------------------------------------------------------------------------
# CAST (spec §2)


_MIN_SHAPING = torch.finfo(torch.float32).eps


def cast_base(batch: PreparedBatch, config: CastConfig) -> torch.Tensor:
    """(B,) base advantage B_i: GRPO in mixed groups, +b_correct / -b_wrong in zero-variance ones."""
    g = batch.groups
    mixed = grpo_base(batch, config.std_eps, scale=config.mixed_scale == "std")
    if config.mixed_only:
        constant = torch.zeros_like(mixed)
    else:
        constant = torch.where(g.kind == ALL_CORRECT, config.b_correct, -config.b_wrong)
    return torch.where(g.kind == MIXED, mixed, constant)


def _band(b: torch.Tensor, config: CastConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) per row, (B, 1): band_pos where B > 0, band_neg elsewhere."""
    pos = b > 0
    lo = torch.where(pos, config.band_pos[0], config.band_neg[0])
    return lo, torch.where(pos, config.band_pos[1], config.band_neg[1])


def _weight_from_evidence(evidence: torch.Tensor, b: torch.Tensor, config: CastConfig) -> torch.Tensor:
    """w = clip(exp(sign(B) g), band) computed in place over `evidence` = sign(B) g; 1 where B = 0."""
    lo, hi = _band(b, config)
    weight = evidence.exp_().clamp_(lo, hi)
    zero = b == 0
    if bool(zero.any()):  # exp(0 * g) = 1 already for finite g; kept exact for any input
        weight.masked_fill_(zero, 1.0)
    return weight


def cast_weight(base: torch.Tensor, gap: torch.Tensor, config: CastConfig) -> torch.Tensor:
    """(B, T) w = clip(exp(sign(B) g), band of sign(B)); 1 where B = 0. `gap` (B, T) finite fp32."""
    b = base[:, None]
    return _weight_from_evidence(torch.sign(b) * gap, b, config)


def _top_fraction(score: torch.Tensor, eligible: torch.Tensor, q: float) -> torch.Tensor:
    """(B, T) bool: per row, the ceil(q * n_eligible) eligible entries with the largest score."""
    score = torch.where(eligible, score, torch.full_like(score, -1.0))
    order = score.argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(score.shape[1], device=score.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    # ceil(q n) in fp64 less a hair: q n is often meant to be an integer (0.6 * 25, 0.7 * 10) and a
    # rounding error above it (fp32: 15.000001) would flip one token too many
    quota = torch.ceil(q * eligible.sum(dim=1, keepdim=True).double() - 1e-9)
    return eligible & (rank < quota)


def _flip_from_evidence(
    evidence: torch.Tensor, b: torch.Tensor, gap: torch.Tensor, config: CastConfig
) -> torch.Tensor:
    """(B, T) bool F+ | F- from `evidence` = sign(B) g: g < -tau_pos where B > 0, g > tau_neg where B < 0.

    Both rules read "sign(B) g below minus the row's tau" (negation is exact), so one comparison
    against a per-row bound (-inf where B = 0) gives both sets; F+ is its rows with B > 0. The gap is
    0 on padding and every bound is <= 0, so padding never flips.
    """
    tau_pos, tau_neg = config.flip_taus()
    bound = torch.where(b > 0, -tau_pos, torch.where(b < 0, -tau_neg, -math.inf))
    flip = evidence < bound
    q = config.flip_quantile()
    if q is not None:  # only the top-q of each rollout's disagreeing tokens, by |g|
        flip = _top_fraction(gap.abs(), flip, q)
    return flip


def flip_masks(base: torch.Tensor, gap: torch.Tensor, mask: torch.Tensor, config: CastConfig):
    """(F+, F-) as (B, T) bool: teacher-negative tokens of B > 0 rollouts, teacher-positive of B < 0."""
    b = base[:, None]
    flip = _flip_from_evidence(torch.sign(b) * gap, b, gap, config) & (mask > 0)
    return flip & (b > 0), flip & (b < 0)


def _shape(weight: torch.Tensor, b: torch.Tensor, config: CastConfig) -> torch.Tensor:
    """A_hat = B (1 + lam (w - 1)), in place over `weight` (which it consumes); the same sign as B.

    The config keeps 1 + lam (w - 1) > 0, but with lam (1 - lo) just below 1 fp32 rounds it to 0 or
    below, so there the factor is floored at fp32's epsilon (the floor pass is skipped when the
    factor is provably far from 0; lam = 1 skips an exact multiply).
    """
    factor = weight.sub_(1)
    if config.lam != 1:
        factor.mul_(config.lam)
    factor.add_(1)
    min_factor = min(1 + config.lam * (lo - 1) for lo in (config.band_pos[0], config.band_neg[0]))
    if min_factor <= 1e-6 * (config.lam + 2):  # fp32 error of the factor is < 3e-7 (lam + 1)
        factor.clamp_(min=_MIN_SHAPING)
    return factor.mul_(b)


def _flip(shaped: torch.Tensor, base: torch.Tensor, flip: torch.Tensor, config: CastConfig) -> torch.Tensor:
    """Spec §2.4 on the flipped tokens: -kappa_pos |A_hat| if B > 0, +min(kappa_neg |A_hat|, pos_cap |B|) if B < 0.

    sign(A_hat) = sign(B), so |A_hat| kappa = A_hat * (-kappa) row by row (bit-identical, one pass).
    Writes into `shaped`: every fresh (B, T) buffer costs page faults that outweigh the arithmetic.
    """
    coef = torch.where(base > 0, -config.kappa_pos, -config.kappa_neg)[:, None]
    cap = torch.where(base < 0, config.pos_cap * base.abs(), math.inf)[:, None]
    return torch.where(flip, (shaped * coef).clamp_(max=cap), shaped, out=shaped)


@register_advantage("cast", CastConfig, needs_teacher=True, base=cast_base)
def cast_token_advantages(batch: PreparedBatch, base: torch.Tensor, config: CastConfig, step: int):
    """CAST: base advantage, asymmetric clipped teacher weight, sign-preserving shaping, flips, band."""
    b = base[:, None]
    evidence = torch.sign(b) * batch.gap  # (B, T) sign(B) g: < 0 where the teacher disagrees with B
    flip = _flip_from_evidence(evidence, b, batch.gap, config) if config.flip else torch.zeros_like(batch.real)
    weight = _weight_from_evidence(evidence, b, config)  # (B, T), reuses evidence's memory
    n_real = float(batch.mask.sum().item())
    weight_mean = float(torch.dot(weight.reshape(-1), batch.mask.reshape(-1)).item()) / n_real if n_real else math.nan
    shaped = _shape(weight, b, config)
    adv = _flip(shaped, base, flip, config) if config.flip else shaped
    adv = adv.clamp_(-config.adv_clip, config.adv_clip)
    stats = flip_metrics(flip, base, batch)
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
    sampled tokens, mask (B, T). Paste-able into any framework: pure torch, no model, no I/O.
    """
    return cast_token_advantages(rewards, group_ids, student_logps, teacher_logps, mask, cfg, step)
