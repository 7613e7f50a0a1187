"""Group statistics from per-rollout rewards and arbitrary group ids (no Python loop over groups).

Rows of one prompt share a `group_id`; ids can be any integers and groups need not be contiguous,
so a batch gathered from several processes in any order works unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIXED, ALL_CORRECT, ALL_WRONG = 0, 1, 2
GROUP_KIND_NAMES = ("mixed", "all_correct", "all_wrong")


@dataclass(frozen=True)
class GroupStats:
    """Per-row views of per-group statistics; every tensor is (B,) and aligned with the rewards.

    `std` is the sample (Bessel-corrected) std, as torch's `std()` and TRL/verl GRPO use; `pop_std`
    is the population std, for logging. A group of one rollout has std 0. `kind` is MIXED /
    ALL_CORRECT / ALL_WRONG by correctness (`reward >= correct_threshold`), and `zero_variance`
    marks groups whose rewards are all exactly equal (the groups GRPO gives no signal).
    """

    index: torch.Tensor  # (B,) long: compact group index in [0, n_groups)
    n_groups: int
    size: torch.Tensor  # (B,) float
    mean: torch.Tensor  # (B,) float
    std: torch.Tensor  # (B,) float, sample std
    pop_std: torch.Tensor  # (B,) float, population std
    correct: torch.Tensor  # (B,) bool
    kind: torch.Tensor  # (B,) long
    zero_variance: torch.Tensor  # (B,) bool
    group_kind: torch.Tensor  # (n_groups,) long, one entry per group


def _group_sum(values: torch.Tensor, index: torch.Tensor, n_groups: int) -> torch.Tensor:
    return torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add_(0, index, values)


def group_stats(rewards: torch.Tensor, group_ids: torch.Tensor, correct_threshold: float = 0.5) -> GroupStats:
    """Compute GroupStats for `rewards` (B,) float grouped by `group_ids` (B,) integer."""
    rewards = rewards.float()
    _, index = torch.unique(group_ids, return_inverse=True)
    n_groups = int(index.max().item()) + 1 if index.numel() else 0
    size = _group_sum(torch.ones_like(rewards), index, n_groups)
    mean = _group_sum(rewards, index, n_groups) / size
    sq_dev = _group_sum((rewards - mean[index]) ** 2, index, n_groups)
    pop_std = (sq_dev / size).sqrt()
    std = (sq_dev / (size - 1).clamp(min=1)).sqrt()
    r_max = torch.full((n_groups,), -torch.inf, device=rewards.device).scatter_reduce(0, index, rewards, "amax")
    r_min = torch.full((n_groups,), torch.inf, device=rewards.device).scatter_reduce(0, index, rewards, "amin")
    correct = rewards >= correct_threshold
    n_correct = _group_sum(correct.float(), index, n_groups)
    group_kind = torch.full((n_groups,), MIXED, dtype=torch.long, device=rewards.device)
    group_kind = torch.where(n_correct == size, ALL_CORRECT, group_kind)
    group_kind = torch.where(n_correct == 0, ALL_WRONG, group_kind)
    return GroupStats(
        index=index,
        n_groups=n_groups,
        size=size[index],
        mean=mean[index],
        std=std[index],
        pop_std=pop_std[index],
        correct=correct,
        kind=group_kind[index],
        zero_variance=(r_max == r_min)[index],
        group_kind=group_kind,
    )
