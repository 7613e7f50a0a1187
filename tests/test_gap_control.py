"""The gap control (`EstimatorConfig.gap_control`): a shuffle that keeps the gaps' distribution and drops
which token each gap belongs to. Each test here would fail if the control were a no-op."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from castrl.core import CastConfig, RLSDConfig, cast_advantages, compute_advantages, compute_token_advantages
from castrl.core.inputs import shuffle_gap


def _batch(n_groups: int = 4, group_size: int = 4, t: int = 12, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n = n_groups * group_size
    rewards = (torch.rand(n, generator=gen) < 0.5).float()
    rewards[:group_size] = 1.0  # one all-correct group
    rewards[group_size : 2 * group_size] = 0.0  # one all-wrong group
    group_ids = torch.arange(n) // group_size
    student = -3.0 * torch.rand(n, t, generator=gen)
    teacher = student + 0.5 * torch.randn(n, t, generator=gen)
    mask = torch.rand(n, t, generator=gen) < 0.8
    return rewards, group_ids, student, teacher, mask


def test_shuffle_keeps_the_multiset_and_padding_and_moves_gaps():
    gen = torch.Generator().manual_seed(1)
    gap = torch.randn(6, 10, generator=gen)
    real = torch.rand(6, 10, generator=gen) < 0.7
    gap = torch.where(real, gap, torch.zeros(()))
    out = shuffle_gap(gap, real, step=3)
    assert torch.equal(out[~real], torch.zeros_like(out[~real]))
    assert torch.equal(out[real].sort().values, gap[real].sort().values)
    assert (out[real] != gap[real]).float().mean() > 0.5  # most tokens got another token's gap
    # seeded by the step: reproducible, and another step draws another permutation
    assert torch.equal(out, shuffle_gap(gap, real, step=3))
    assert not torch.equal(out, shuffle_gap(gap, real, step=4))


def test_shuffle_crosses_rollouts():
    """A row's gaps come from other rows too, not only a permutation within the row."""
    gap = torch.arange(1, 41, dtype=torch.float32).view(4, 10)  # row r holds 10r+1 .. 10r+10
    real = torch.ones(4, 10, dtype=torch.bool)
    out = shuffle_gap(gap, real, step=0)
    home_row = (out - 1).div(10, rounding_mode="floor")
    assert (home_row != torch.arange(4)[:, None]).any(dim=1).all()


def test_cast_with_shuffle_keeps_sign_shares_and_changes_token_advantages():
    args = _batch()
    plain, plain_stats = cast_advantages(*args, cfg=CastConfig())
    shuffled, stats = cast_advantages(*args, cfg=CastConfig(gap_control="shuffle"), step=7)
    real = args[4]
    assert not torch.allclose(plain[real], shuffled[real])
    # same gaps overall: the batch's mean gap and its share of teacher-negative tokens are unchanged
    gap = (args[3] - args[2])[real]
    assert stats["cast/gap_mean"] == pytest.approx(float(gap.mean()), abs=1e-6)
    assert plain_stats["cast/gap_mean"] == pytest.approx(stats["cast/gap_mean"], abs=1e-6)
    # CAST's sign(A) = sign(g) on every token: the pushed-down share is the negative-gap share, shuffled or not
    assert float((shuffled[real] < 0).float().mean()) == pytest.approx(float((gap < 0).float().mean()))


def test_shuffle_applies_to_every_teacher_estimator_and_in_the_token_step():
    rewards, group_ids, student, teacher, mask = _batch(seed=2)
    plain, _ = compute_advantages("rlsd", rewards, group_ids, student, teacher, mask, RLSDConfig())
    shuffled, _ = compute_advantages("rlsd", rewards, group_ids, student, teacher, mask,
                                     RLSDConfig(gap_control="shuffle"))
    assert not torch.allclose(plain, shuffled)
    base = torch.ones(rewards.shape[0])
    tok_plain, _ = compute_token_advantages("cast", base, rewards, student, teacher, mask, CastConfig())
    tok_shuf, _ = compute_token_advantages("cast", base, rewards, student, teacher, mask,
                                           CastConfig(gap_control="shuffle"))
    assert not torch.allclose(tok_plain, tok_shuf)


def test_row_local_and_bad_value():
    assert CastConfig().row_local
    assert not CastConfig(gap_control="shuffle").row_local
    with pytest.raises(ValueError, match="gap_control must be one of none, shuffle"):
        CastConfig(gap_control="permute")
    assert "gap_control" in {f.name for f in dataclasses.fields(RLSDConfig)}
