"""`castrl.rows.run_on_rows`, the select -> estimator step -> write-back shared by the TRL and verl
adapters: kept rows get the step's output on exactly those rows, the others 0."""

from __future__ import annotations

import pytest
import torch

from castrl.core import get_estimator
from castrl.rows import run_on_rows


def _batch(n_rows: int = 6, width: int = 5):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])[:n_rows]
    group_ids = torch.arange(n_rows) // 3
    student = -torch.rand(n_rows, width, generator=gen)
    teacher = -torch.rand(n_rows, width, generator=gen)
    mask = torch.ones(n_rows, width)
    return rewards, group_ids, student, teacher, mask


def test_kept_rows_get_the_step_on_those_rows_and_the_others_zero():
    rewards, group_ids, student, teacher, mask = _batch()
    keep = torch.tensor([True, True, False, True, False, True])
    fn = get_estimator("cast").fn
    full, stats = run_on_rows(fn, keep, (rewards, group_ids, student, teacher, mask), None, 0)
    expected, expected_stats = fn(rewards[keep], group_ids[keep], student[keep], teacher[keep], mask[keep], None, 0)
    assert full.dtype == torch.float32 and full.shape == mask.shape
    torch.testing.assert_close(full[keep], expected, rtol=0, atol=0)
    assert (full[~keep] == 0).all()
    assert stats == expected_stats


def test_none_inputs_pass_through_and_one_dim_outputs_scatter():
    rewards, group_ids, *_ = _batch()
    keep = torch.tensor([True, True, True, False, False, False])
    seen = []

    def step(r, g, teacher, config, step):
        seen.append((r.shape[0], teacher, config, step))
        return r * 2, {"n": float(r.shape[0])}

    full, stats = run_on_rows(step, keep, (rewards, group_ids, None), "cfg", 7)
    assert seen == [(3, None, "cfg", 7)] and stats == {"n": 3.0}
    torch.testing.assert_close(full, torch.tensor([2.0, 0.0, 2.0, 0.0, 0.0, 0.0]))


def test_no_kept_rows_gives_zeros():
    rewards, group_ids, student, teacher, mask = _batch()
    keep = torch.zeros(6, dtype=torch.bool)
    full, _ = run_on_rows(get_estimator("cast").fn, keep, (rewards, group_ids, student, teacher, mask), None, 0)
    assert full.shape == mask.shape and (full == 0).all()


def test_bad_keep_or_row_counts_raise():
    rewards, group_ids, *_ = _batch()
    with pytest.raises(ValueError, match="bool"):
        run_on_rows(lambda *a: (a[0], {}), torch.ones(6), (rewards,))
    with pytest.raises(ValueError, match="6 rows"):
        run_on_rows(lambda *a: (a[0], {}), torch.ones(6, dtype=torch.bool), (rewards, group_ids[:4]))
