"""castrl's advantage estimators inside verl's `compute_advantage` (verl 0.9.x).

verl calls a registered estimator as `fn(token_level_rewards, response_mask, config, index)`: it
never passes log-probs, and CAST needs the student's (`old_log_probs`) and the teacher's. The seam:
the castrl trainer computes both, binds them for the duration of its `super()._compute_advantage`
call (`bind_estimator_inputs`), and the registered function reads them, checks that the rows are
the ones verl hands over (same `uid`s, same shape), and calls `castrl.core`. verl's KL-in-reward,
rollout correction and policy-loss aggregation stay untouched. Teacher-free estimators
(`castrl_grpo`, `castrl_dr_grpo`) also work unbound, in stock verl trainers, with default configs.
`compute_castrl_advantage` does the same on a whole `DataProto`, for custom loops and tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from verl import DataProto
from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, register_adv_est

from castrl.core import EstimatorConfig, get_estimator
from castrl.rows import run_on_rows

from .config import CastrlVerlConfig, castrl_name, verl_names

TEACHER_KEY = "castrl_teacher_log_probs"  # (B, T) float, written by the teacher pass
STUDENT_KEY = "old_log_probs"  # verl's name for log pi_old of the sampled tokens


@dataclass
class BoundInputs:
    """What verl does not pass to an estimator, aligned with the rows verl will pass.

    B = rows of the batch in verl's order, T = padded response length.
    """

    uids: np.ndarray  # (B,) object: the `uid` of each row, to check alignment
    student_logps: torch.Tensor | None  # (B, T) float, old_log_probs
    teacher_logps: torch.Tensor | None  # (B, T) float, teacher log-probs of the same tokens
    settings: CastrlVerlConfig
    step: int = 0  # completed training steps (verl's global_steps - 1): anneals, shaping_cutoff_step
    rewards: torch.Tensor | None = None  # (B,) float; None = sum of token_level_rewards
    # (B,) bool: rows in the group statistics (truncated rows whose mask the trainer zeroed count);
    # None = rows with a response token in `response_mask`
    in_groups: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)  # filled by the estimator call


_BOUND: ContextVar[BoundInputs | None] = ContextVar("castrl_verl_bound_inputs", default=None)


@contextmanager
def bind_estimator_inputs(inputs: BoundInputs) -> Iterator[BoundInputs]:
    """Make `inputs` visible to the registered estimators inside the `with` block (this thread only)."""
    token = _BOUND.set(inputs)
    try:
        yield inputs
    finally:
        _BOUND.reset(token)


def group_ids_from_uids(index: Any) -> torch.Tensor:
    """(B,) long group ids from verl's `uid` array (strings or ints, in any order)."""
    if index is None:
        raise ValueError(
            "castrl estimators need verl's non_tensor_batch['uid'] (the group id of each rollout)"
        )
    values = np.asarray(index).astype(str)
    _, inverse = np.unique(values, return_inverse=True)
    return torch.as_tensor(inverse.reshape(-1), dtype=torch.long)


def estimate_token_advantages(
    name: str,
    rewards: torch.Tensor,
    index: Any,
    student_logps: torch.Tensor | None,
    teacher_logps: torch.Tensor | None,
    response_mask: torch.Tensor,
    config: EstimatorConfig | None = None,
    step: int = 0,
    in_groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(B, T) fp32 advantages of castrl estimator `name` on verl tensors, and its `cast/...` stats.

    Rows without a single response token (verl's synthetic padding samples, which share one `uid`)
    are left out of the group statistics and get advantage 0. `in_groups` ((B,) bool) overrides which
    rows count: the trainer passes it so that truncated rows, whose `response_mask` it zeroed, keep
    their rewards in their group (spec §4). `student_logps` may be None for estimators that ignore it;
    the result is detached and 0 where `response_mask` is 0. `step` is the optimizer step the
    estimator's schedules read (anneals, CAST's `shaping_cutoff_step`).
    """
    mask = response_mask.float()
    rewards = rewards.float()
    if rewards.shape != mask.shape[:1]:
        raise ValueError(f"rewards must be ({mask.shape[0]},), got {tuple(rewards.shape)}")
    group_ids = group_ids_from_uids(index)
    if group_ids.shape[0] != mask.shape[0]:
        raise ValueError(f"uid has {group_ids.shape[0]} entries for {mask.shape[0]} rows")
    has_tokens = (mask > 0).any(dim=1) if in_groups is None else in_groups.to(torch.bool)
    if has_tokens.shape != mask.shape[:1]:
        raise ValueError(f"in_groups must be ({mask.shape[0]},), got {tuple(has_tokens.shape)}")
    student = torch.zeros_like(mask) if student_logps is None else student_logps.float()
    teacher = None if teacher_logps is None else teacher_logps.float()
    full, stats = run_on_rows(
        get_estimator(name).fn, has_tokens, (rewards, group_ids, student, teacher, mask), config, step
    )
    stats["cast/empty_rows_count"] = float((~has_tokens).sum().item())
    return full, stats


def compute_castrl_advantage(data: DataProto, settings: CastrlVerlConfig, step: int = 0) -> dict[str, float]:
    """Write `advantages` and `returns` (B, T) into `data` from its own columns; return the stats.

    Reads `settings.reward_key` (summed per row), `response_mask`, `non_tensor_batch['uid']`,
    `old_log_probs` and `castrl_teacher_log_probs` (the last two only if the estimator needs them).
    """
    batch = data.batch
    needs_teacher = get_estimator(settings.estimator).needs_teacher
    for key in (settings.reward_key, "response_mask", *((STUDENT_KEY, TEACHER_KEY) if needs_teacher else ())):
        if key not in batch.keys():
            raise ValueError(
                f"estimator {settings.estimator!r} needs batch[{key!r}]; present: {sorted(batch.keys())}"
            )
    adv, stats = estimate_token_advantages(
        settings.estimator,
        batch[settings.reward_key].sum(dim=-1),
        data.non_tensor_batch.get("uid"),
        batch[STUDENT_KEY] if needs_teacher else None,
        batch[TEACHER_KEY] if needs_teacher else None,
        batch["response_mask"],
        settings.estimator_config,
        step,
    )
    batch["advantages"] = adv
    batch["returns"] = adv.clone()
    return stats


def _check_alignment(bound: BoundInputs, name: str, index: Any, shape: torch.Size) -> None:
    if bound.settings.estimator != name:
        raise ValueError(
            f"verl called castrl estimator {name!r} but the castrl trainer prepared inputs for "
            f"{bound.settings.estimator!r}; check algorithm.adv_estimator"
        )
    if index is None or len(index) != len(bound.uids) or not np.array_equal(np.asarray(index), bound.uids):
        raise ValueError(
            "the rows verl passed to the advantage estimator are not the rows the teacher pass scored "
            "(uid mismatch); a verl change in `_compute_advantage` may have reordered or filtered them"
        )
    for label, tensor in (("old_log_probs", bound.student_logps), ("teacher log-probs", bound.teacher_logps)):
        if tensor is not None and tensor.shape != shape:
            raise ValueError(f"{label} have shape {tuple(tensor.shape)}, token_level_rewards {tuple(shape)}")


def _make_verl_estimator(name: str):
    """verl-signature wrapper around castrl estimator `name`."""
    needs_teacher = get_estimator(name).needs_teacher

    def castrl_verl_estimator(
        token_level_rewards: torch.Tensor,  # (B, T) float
        response_mask: torch.Tensor,  # (B, T) int/float
        index: np.ndarray | None = None,  # (B,) uid per row
        config: Any = None,  # verl's AlgoConfig; castrl reads its own `castrl:` section instead
        **kwargs: Any,  # other verl extras (reward_baselines, ...) are not used
    ) -> tuple[torch.Tensor, torch.Tensor]:
        bound = _BOUND.get()
        if bound is None:
            if needs_teacher:
                raise ValueError(
                    f"castrl estimator {name!r} needs teacher log-probs, which only castrl's trainer computes: "
                    "run castrl.integrations.verl.main with trainer.v1.trainer_mode=castrl_sync"
                )
            adv, _ = estimate_token_advantages(
                name, token_level_rewards.sum(-1), index, None, None, response_mask
            )
        else:
            _check_alignment(bound, name, index, token_level_rewards.shape)
            rewards = bound.rewards if bound.rewards is not None else token_level_rewards.sum(-1)
            adv, stats = estimate_token_advantages(
                name,
                rewards,
                index,
                bound.student_logps,
                bound.teacher_logps,
                response_mask,
                bound.settings.estimator_config,
                bound.step,
                bound.in_groups,
            )
            bound.stats.update(stats)
        adv = adv.to(token_level_rewards.dtype)
        return adv, adv

    castrl_verl_estimator.castrl_estimator = name  # type: ignore[attr-defined]
    return castrl_verl_estimator


def register_verl_estimators() -> list[str]:
    """Register "cast" and "castrl_<name>" in verl's ADV_ESTIMATOR_REGISTRY (idempotent)."""
    for verl_name in verl_names():
        existing = ADV_ESTIMATOR_REGISTRY.get(verl_name)
        if existing is not None and getattr(existing, "castrl_estimator", None) == castrl_name(verl_name):
            continue
        register_adv_est(verl_name)(_make_verl_estimator(castrl_name(verl_name)))
    return verl_names()
