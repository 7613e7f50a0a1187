"""The two halves of every estimator (base step over groups, row-local token step) compose to the
one-call estimator, on the whole batch and on any subset of its rows.

This is what lets the trainer compute a micro-batch's token advantages inside the loss, from the
training forward pass's log-probs (`CASTTrainerConfig.fuse_student_pass`): if any token step read group
statistics, the subset check below would fail.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from castrl.core import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    compute_base_advantages,
    compute_token_advantages,
)

from .test_core_properties import SETTINGS, batches, cast_configs

ROW_STATS = ("cast/flip_down_count", "cast/flip_up_count", "cast/frac_nonzero_adv", "cast/adv_max")


def _split(name, batch, cfg, rows):
    base, group_stats = compute_base_advantages(name, batch.rewards, batch.group_ids, cfg, step=3)
    teacher = batch.teacher[rows] if ADVANTAGE_ESTIMATORS.get(name).needs_teacher else None
    adv, stats = compute_token_advantages(
        name, base[rows], batch.rewards[rows], batch.student[rows], teacher, batch.mask[rows], cfg, step=3
    )
    return adv, {**group_stats, **stats}


@SETTINGS
@given(batch=batches(), cfg=cast_configs(), data=st.data())
def test_cast_halves_compose_on_any_row_subset(batch, cfg, data):
    full, full_stats = compute_advantages("cast", *batch.args(), cfg, step=3)
    n = batch.rewards.shape[0]
    adv, stats = _split("cast", batch, cfg, torch.arange(n))
    assert torch.equal(adv, full)
    assert stats.keys() == full_stats.keys()
    for key in ROW_STATS:
        assert stats[key] == full_stats[key] or (stats[key] != stats[key] and full_stats[key] != full_stats[key])
    subset = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    rows = torch.tensor(subset)
    part, _ = _split("cast", batch, cfg, rows)
    assert torch.equal(part, full[rows])


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rlsd", "rlrt", "opsd", "grpo_opsd"])
@SETTINGS
@given(batch=batches(), data=st.data())
def test_every_estimator_halves_compose(name, batch, data):
    teacher = batch.teacher if ADVANTAGE_ESTIMATORS.get(name).needs_teacher else None
    full, _ = compute_advantages(name, batch.rewards, batch.group_ids, batch.student, teacher, batch.mask, step=3)
    n = batch.rewards.shape[0]
    subset = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    rows = torch.tensor(subset)
    part, _ = _split(name, batch, None, rows)
    assert torch.equal(part, full[rows])


def test_every_registered_estimator_is_covered():
    assert set(ADVANTAGE_ESTIMATORS.names()) == {"grpo", "dr_grpo", "rlsd", "rlrt", "opsd", "grpo_opsd", "cast"}


def test_token_step_rejects_a_bad_base():
    rewards, logps, mask = torch.ones(3), torch.zeros(3, 4), torch.ones(3, 4)
    with pytest.raises(ValueError, match=r"base must have shape \(3,\)"):
        compute_token_advantages("cast", torch.zeros(2), rewards, logps, logps, mask)
    with pytest.raises(ValueError, match="base must be finite"):
        compute_token_advantages("cast", torch.tensor([0.0, float("nan"), 1.0]), rewards, logps, logps, mask)
    with pytest.raises(TypeError, match="base must be a float"):
        compute_token_advantages("cast", torch.zeros(3, dtype=torch.long), rewards, logps, logps, mask)
