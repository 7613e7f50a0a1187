"""Edge cases named in docs/reliability.md: all-padding rows and zero-length completions."""

from __future__ import annotations

import math

import pytest
import torch

from castrl.core import ADVANTAGE_ESTIMATORS, compute_advantages


@pytest.mark.parametrize("name", ADVANTAGE_ESTIMATORS.names())
def test_all_padding_rows_get_zero_advantage_without_nan(name):
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    group_ids = torch.tensor([0, 0, 1, 1])
    student = torch.randn(4, 5)
    teacher = student + torch.randn(4, 5)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1] = False  # a zero-length completion: every position is padding
    student[1] = float("nan")  # whatever sits under padding must not leak
    adv, stats = compute_advantages(name, rewards, group_ids, student, teacher, mask)
    assert torch.isfinite(adv).all()
    assert torch.all(adv[1] == 0)
    assert stats["cast/gap_nonfinite_count"] == 0.0


def test_batch_of_only_padding_gives_zeros_and_nan_statistics():
    rewards, group_ids = torch.tensor([1.0, 0.0]), torch.tensor([3, 3])
    student = torch.zeros(2, 4)
    adv, stats = compute_advantages("cast", rewards, group_ids, student, student, torch.zeros(2, 4))
    assert torch.all(adv == 0)
    assert math.isnan(stats["cast/adv_mean"]) and math.isnan(stats["cast/gap_abs_p95"])
    assert stats["cast/frac_nonzero_adv"] == 0.0
