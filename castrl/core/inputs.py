"""Boundary checks and sanitising of estimator inputs, shared by every registered estimator.

Everything user-facing is validated here once, with errors that name the argument; the estimator
bodies then see fp32 tensors of known shape, a float mask, and a finite, clamped gap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import EstimatorConfig
from .groups import GroupStats, group_stats

# Offset of the shuffle control's seed (the optimizer step is added), so it draws no stream a user seeds.
SHUFFLE_SEED = 0x5EED_CA57


@dataclass(frozen=True)
class PreparedBatch:
    """Validated estimator inputs. B = rollouts, T = completion tokens."""

    rewards: torch.Tensor  # (B,) fp32
    groups: GroupStats
    mask: torch.Tensor  # (B, T) fp32 in {0, 1}
    real: torch.Tensor  # (B, T) bool, mask > 0: the real tokens every statistic is over
    gap: torch.Tensor | None  # (B, T) fp32, detached, clamped, 0 on padding and where non-finite
    n_nonfinite_gap: int


def _check_tensor(name: str, value: object, ndim: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(value.shape)}")
    return value


def _check_mask(mask: object, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """(real (B, T) bool, mask (B, T) fp32 in {0, 1}): a float mask counts as real where > 0."""
    mask = _check_tensor("mask", mask, 2)
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise ValueError(f"mask must be a bool or float tensor, got dtype {mask.dtype}")
    if mask.shape != shape:
        raise ValueError(f"mask must have the shape of student_logps {tuple(shape)}, got {tuple(mask.shape)}")
    real = mask if mask.dtype == torch.bool else mask > 0
    return real, real.float()


def _check_rewards(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rewards = _check_tensor("rewards", rewards, 1)
    group_ids = _check_tensor("group_ids", group_ids, 1)
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a float tensor, got dtype {rewards.dtype}")
    if group_ids.is_floating_point() or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got dtype {group_ids.dtype}")
    if group_ids.shape[0] != rewards.shape[0]:
        raise ValueError(f"batch size mismatch: rewards has {rewards.shape[0]} rows, group_ids {group_ids.shape[0]}")
    if not torch.isfinite(rewards).all():
        bad = torch.nonzero(~torch.isfinite(rewards)).flatten().tolist()[:5]
        raise ValueError(f"rewards must be finite; non-finite at rows {bad} (filter or replace them first)")
    return rewards, group_ids


def prepare_groups(rewards: torch.Tensor, group_ids: torch.Tensor, config: EstimatorConfig) -> PreparedBatch:
    """The group half of `prepare_batch`: validated rewards and group statistics, no tokens (T = 0).

    What the base-advantage step of an estimator reads; it never looks at log-probs.
    """
    rewards, group_ids = _check_rewards(rewards, group_ids)
    empty = torch.zeros(rewards.shape[0], 0, device=rewards.device)
    return PreparedBatch(
        rewards=rewards.detach().float(),
        groups=group_stats(rewards.detach(), group_ids, config.correct_threshold),
        mask=empty,
        real=empty.bool(),
        gap=None,
        n_nonfinite_gap=0,
    )


def prepare_batch(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    student_logps: torch.Tensor,
    teacher_logps: torch.Tensor | None,
    mask: torch.Tensor,
    config: EstimatorConfig,
    needs_teacher: bool,
    estimator: str,
    step: int = 0,
) -> PreparedBatch:
    """Validate shapes/dtypes/values and build the fp32, detached view the estimators use.

    `step` (the optimizer step) seeds `config.gap_control`'s permutation; nothing else reads it."""
    rewards, group_ids = _check_rewards(rewards, group_ids)
    student_logps = _check_tensor("student_logps", student_logps, 2)
    if not student_logps.is_floating_point():
        raise ValueError(f"student_logps must be a float tensor, got dtype {student_logps.dtype}")
    n = rewards.shape[0]
    if student_logps.shape[0] != n:
        raise ValueError(f"batch size mismatch: rewards has {n} rows, student_logps {student_logps.shape[0]}")
    real, fmask = _check_mask(mask, student_logps.shape)
    gap, n_bad = None, 0
    if teacher_logps is not None:
        teacher_logps = _check_tensor("teacher_logps", teacher_logps, 2)
        if teacher_logps.shape != student_logps.shape:
            raise ValueError(
                f"teacher_logps must have the shape of student_logps {tuple(student_logps.shape)}, "
                f"got {tuple(teacher_logps.shape)}"
            )
        gap, n_bad = sanitize_gap(teacher_logps, student_logps, real, config.gap_clip)
        if config.gap_control == "shuffle":
            gap = shuffle_gap(gap, real, step)
    elif needs_teacher:
        raise ValueError(f"advantage estimator {estimator!r} needs teacher_logps, got None")
    return PreparedBatch(
        rewards=rewards.detach().float(),
        groups=group_stats(rewards.detach(), group_ids, config.correct_threshold),
        mask=fmask,
        real=real,
        gap=gap,
        n_nonfinite_gap=n_bad,
    )


def sanitize_gap(
    teacher_logps: torch.Tensor, student_logps: torch.Tensor, real: torch.Tensor, clip: float
) -> tuple[torch.Tensor, int]:
    """g = u - s in fp32, detached; non-finite real tokens -> 0 (counted), padding -> 0, clamp ±clip.

    `real` is the (B, T) bool mask of real tokens. NaN and ±inf propagate to min and max, so one
    aminmax reduction proves every entry finite (the common case skips the slow isfinite pass) and
    tells whether the clamp has anything to do.
    """
    gap = teacher_logps.detach().float() - student_logps.detach().float()
    if gap.numel() == 0:
        return gap, 0
    low, high = (float(v.item()) for v in torch.aminmax(gap))
    if math.isfinite(low) and math.isfinite(high):  # in place: fresh 4 MB buffers cost page faults
        gap = torch.where(real, gap, torch.zeros((), dtype=gap.dtype, device=gap.device), out=gap)
        return (gap.clamp_(-clip, clip) if low < -clip or high > clip else gap), 0
    finite = torch.isfinite(gap)
    n_bad = int((real & ~finite).sum().item())
    gap = torch.where(real & finite, gap, torch.zeros_like(gap)).clamp(-clip, clip)
    return gap, n_bad


def shuffle_gap(gap: torch.Tensor, real: torch.Tensor, step: int) -> torch.Tensor:
    """`gap` (B, T) with its real tokens' values permuted among the real tokens of every row (padding
    stays 0): the control `gap_control="shuffle"`. The multiset of gaps, hence every sign share and
    magnitude, is kept; which token and which rollout a gap belongs to is not. Seeded by `step` on a
    CPU generator, so every process and device that sees the same batch draws the same permutation."""
    where = real.reshape(-1).nonzero().squeeze(1)
    generator = torch.Generator().manual_seed(SHUFFLE_SEED + max(int(step), 0))
    order = torch.randperm(where.numel(), generator=generator).to(where.device)
    flat = torch.zeros_like(gap).reshape(-1)
    flat[where] = gap.reshape(-1)[where[order]]
    return flat.view_as(gap)
