"""Hand-computed cases for every registered advantage estimator (spec §2, §4).

Expected numbers are worked out here with `math` from the spec's formulas, never by calling
castrl.core helpers, so a wrong formula in the core cannot also be the reference.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from castrl.core import (
    ADVANTAGE_ESTIMATORS,
    CastConfig,
    RLSDConfig,
    cast_advantages,
    compute_advantages,
    get_estimator,
)

EPS = 1e-4  # TRL's std epsilon (spec §2.1)


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def _expected_grpo(rewards: list[float], ids: list[int], scale: bool = True) -> list[float]:
    """Textbook GRPO per row: (r - mean) / (sample std + 1e-4), 0 where the group is constant."""
    out = []
    for r, gid in zip(rewards, ids, strict=True):
        group = [x for x, j in zip(rewards, ids, strict=True) if j == gid]
        if len(set(group)) == 1:
            out.append(0.0)
            continue
        centred = r - statistics.fmean(group)
        out.append(centred / (statistics.stdev(group) + EPS) if scale else centred)
    return out


# Non-contiguous groups with unusual ids: group 7 = rows 0, 2, 4, 6 (rewards 1, 0, 0, 0: mean 0.25,
# sample std 0.5), group -3 = rows 1, 5 (1, 1: zero variance), group 10**9 = rows 3, 7 (0.2, 0.8).
REWARDS = [1.0, 1.0, 0.0, 0.2, 0.0, 1.0, 0.0, 0.8]
IDS = [7, -3, 7, 10**9, 7, -3, 7, 10**9]


@pytest.fixture
def outcome_batch():
    B, T = len(REWARDS), 5
    lengths = torch.tensor([5, 3, 1, 5, 4, 2, 5, 3])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    student = -torch.rand(B, T, generator=torch.Generator().manual_seed(0))
    return torch.tensor(REWARDS), torch.tensor(IDS), student, mask


def test_grpo_matches_textbook_formula_by_hand(outcome_batch):
    rewards, ids, student, mask = outcome_batch
    adv, stats = compute_advantages("grpo", rewards, ids, student, None, mask)
    by_hand = [0.75 / (0.5 + EPS), 0.0, -0.25 / (0.5 + EPS), -0.3 / (math.sqrt(0.18) + EPS)]
    assert adv[0, 0].item() == pytest.approx(by_hand[0], rel=1e-6)
    assert adv[1, 0].item() == 0.0
    assert adv[2, 0].item() == pytest.approx(by_hand[2], rel=1e-6)
    assert adv[3, 0].item() == pytest.approx(by_hand[3], rel=1e-6)
    expected = torch.tensor(_expected_grpo(REWARDS, IDS))[:, None].expand(-1, 5) * mask
    torch.testing.assert_close(adv, expected, rtol=1e-6, atol=1e-7)
    assert stats["cast/frac_mixed"] == pytest.approx(2 / 3)
    assert stats["cast/frac_all_correct"] == pytest.approx(1 / 3)
    assert stats["cast/frac_all_wrong"] == 0.0


def test_grpo_zero_variance_groups_get_exact_zero():
    rewards = torch.tensor([0.3, 0.3, 0.3, 1.0, 1.0, 0.0, 0.0])
    ids = torch.tensor([1, 1, 1, 2, 2, 3, 3])
    adv, stats = compute_advantages("grpo", rewards, ids, torch.zeros(7, 4), None, torch.ones(7, 4))
    assert torch.equal(adv, torch.zeros(7, 4))
    assert stats["cast/frac_nonzero_adv"] == 0.0


def test_dr_grpo_is_mean_centering(outcome_batch):
    rewards, ids, student, mask = outcome_batch
    adv, _ = compute_advantages("dr_grpo", rewards, ids, student, None, mask)
    expected = torch.tensor(_expected_grpo(REWARDS, IDS, scale=False))[:, None].expand(-1, 5) * mask
    torch.testing.assert_close(adv, expected, rtol=1e-6, atol=1e-7)
    assert adv[0, 0].item() == pytest.approx(0.75)


# RLSD / RLRT: one mixed group (rewards 1, 0: mean 0.5, sample std sqrt(0.5)) and one constant group.
RLSD_GAP = [0.1, -0.5, 0.0, 1.0]


def _rlsd_batch():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    ids = torch.tensor([4, 4, 9, 9])
    student = torch.full((4, 4), -1.0)
    teacher = student + torch.tensor(RLSD_GAP)
    return rewards, ids, student, teacher, torch.ones(4, 4)


def _rlsd_expected(lam: float, reverse_on_correct: bool) -> list[list[float]]:
    base = 0.5 / (math.sqrt(0.5) + EPS)
    rows = []
    for b in (base, -base):
        sign = -1.0 if (reverse_on_correct or b < 0) else 1.0
        weights = [min(max(math.exp(sign * g), 0.8), 1.2) for g in RLSD_GAP]
        rows.append([b * (1 + lam * (w - 1)) for w in weights])
    return rows + [[0.0] * 4, [0.0] * 4]  # the constant group gets 0


@pytest.mark.parametrize(("step", "lam"), [(0, 0.5), (25, 0.25), (50, 0.0), (400, 0.0)])
def test_rlsd_lambda_anneal(step, lam):
    adv, stats = compute_advantages("rlsd", *_rlsd_batch(), step=step)
    assert stats["cast/rlsd_lam"] == pytest.approx(lam)
    torch.testing.assert_close(adv, _t(_rlsd_expected(lam, reverse_on_correct=False)), rtol=1e-5, atol=1e-6)


def test_rlsd_weight_is_clipped_to_its_band():
    adv, _ = compute_advantages("rlsd", *_rlsd_batch(), step=0)
    base = 0.5 / (math.sqrt(0.5) + EPS)
    # positive row: g = -0.5 -> exp(-0.5) = 0.61 clipped to 0.8; g = 1.0 -> e clipped to 1.2
    assert adv[0, 1].item() == pytest.approx(base * (1 + 0.5 * (0.8 - 1)), rel=1e-5)
    assert adv[0, 3].item() == pytest.approx(base * (1 + 0.5 * (1.2 - 1)), rel=1e-5)


def test_rlrt_is_the_papers_rule():
    # §8.4: correct rollouts: d = -g, w = clip(exp(sign(A) d), 0, 2), A (0.5 + 0.5 w); wrong rollouts keep A
    adv, _ = compute_advantages("rlrt", *_rlsd_batch(), step=0)
    base = 0.5 / (math.sqrt(0.5) + EPS)
    correct_row = [base * (0.5 + 0.5 * min(max(math.exp(-g), 0.0), 2.0)) for g in RLSD_GAP]
    torch.testing.assert_close(adv, _t([correct_row, [-base] * 4, [0.0] * 4, [0.0] * 4]), rtol=1e-5, atol=1e-6)
    # no decay: the same at step 400; a teacher-positive token of a correct rollout is damped
    later, _ = compute_advantages("rlrt", *_rlsd_batch(), step=400)
    assert torch.equal(adv, later)
    assert adv[0, 3] < base < adv[0, 1]


def test_grpo_opsd_adds_the_annealed_gap():
    rewards, ids, student, teacher, mask = _rlsd_batch()
    base = 0.5 / (math.sqrt(0.5) + EPS)
    for step, alpha in ((0, 0.2), (25, 0.1), (50, 0.0), (90, 0.0)):
        adv, stats = compute_advantages("grpo_opsd", rewards, ids, student, teacher, mask, step=step)
        assert stats["cast/opsd_coef"] == pytest.approx(alpha)
        expected = [[b + alpha * g for g in RLSD_GAP] for b in (base, -base, 0.0, 0.0)]
        torch.testing.assert_close(adv, _t(expected), rtol=1e-5, atol=1e-6)


def test_rlsd_custom_config_anneal():
    cfg = RLSDConfig(rlsd_lam_start=1.0, rlsd_lam_end=0.2, rlsd_anneal_steps=10)
    _, stats = compute_advantages("rlsd", *_rlsd_batch(), config=cfg, step=5)
    assert stats["cast/rlsd_lam"] == pytest.approx(0.6)


def test_opsd_is_the_clamped_masked_gap():
    student = _t([[-1.0, -2.0, -3.0], [-0.5, -40.0, -1.0]])
    teacher = _t([[-0.5, -2.5, -1.0], [-1.0, -1.0, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    adv, _ = compute_advantages(
        "opsd", torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), student, teacher, mask
    )
    # gap = u - s; 39.0 is clamped to gap_clip = 20; the padded token is 0
    assert adv.tolist() == [[0.5, -0.5, 2.0], [-0.5, 20.0, 0.0]]


# CAST: one all-correct group (B = +b_correct) and one all-wrong group (B = -b_wrong), default config.
CAST_GAP = [0.0, 0.03, -0.1, -0.3, 0.5]


def _cast_const_batch(rewards: list[float]):
    n = len(rewards)
    student = torch.full((n, 5), -2.0)
    teacher = student + torch.tensor(CAST_GAP)
    return torch.tensor(rewards), torch.zeros(n, dtype=torch.long), student, teacher, torch.ones(n, 5)


def _cast_expected_row(base: float, cfg: CastConfig) -> list[float]:
    """Eq. 7-15 for one row, written out per token."""
    (lp, up), (ln, un) = cfg.band_pos, cfg.band_neg
    row = []
    for g in CAST_GAP:
        if base > 0 and g < 0:  # Eq. 10-11
            a = -abs(base) * (1 + cfg.lam * (min(max(math.exp(-g), max(1, ln)), un) - 1))
        elif base < 0 and g > 0:  # Eq. 12-13
            a = abs(base) * (1 + cfg.lam * (min(max(math.exp(g), max(1, lp)), up) - 1))
        else:  # Eq. 7-9
            lo, hi = (lp, up) if base > 0 else (ln, un)
            a = base * (1 + cfg.lam * (min(max(math.exp(math.copysign(1.0, base) * g), lo), hi) - 1))
        row.append(max(-cfg.adv_clip, min(cfg.adv_clip, a)))
    return row


def test_cast_all_correct_group_by_hand():
    adv, stats = cast_advantages(*_cast_const_batch([1.0, 1.0]))
    # B = +1: g >= 0 -> clip(e^g, 0.8, 1.05); g < 0 flips to -clip(e^|g|, 1, 1.2)
    row = [1.0, math.exp(0.03), -math.exp(0.1), -1.2, 1.05]
    torch.testing.assert_close(adv, _t([row, row]), rtol=1e-6, atol=1e-7)
    assert stats["cast/frac_all_correct"] == 1.0
    assert stats["cast/flip_frac_correct"] == pytest.approx(2 / 5)
    assert math.isnan(stats["cast/flip_frac_wrong"])  # no wrong rollouts: NaN, not 0


def test_cast_all_wrong_group_by_hand():
    adv, stats = cast_advantages(*_cast_const_batch([0.0, 0.0, 0.0]))
    # B = -1: g <= 0 -> -clip(e^-g, 0.95, 1.2); g > 0 flips to +clip(e^g, 1, 1.05)
    row = [-1.0, math.exp(0.03), -math.exp(0.1), -1.2, 1.05]
    torch.testing.assert_close(adv, _t([row] * 3), rtol=1e-6, atol=1e-7)
    assert stats["cast/flip_frac_wrong"] == pytest.approx(2 / 5)
    assert stats["cast/flip_up_count"] == 6.0
    assert stats["cast/frac_flipped_incorrect_positive"] == pytest.approx(2 / 5)


@pytest.mark.parametrize(
    "cfg",
    [
        CastConfig(b_correct=0.7, b_wrong=0.9),
        CastConfig(b_correct=2.0, b_wrong=0.4, lam=0.5, adv_clip=1.5),
        CastConfig(band_pos=(0.6, 1.3), band_neg=(0.9, 1.5), adv_clip=1.0),
        CastConfig(band_pos=(0.95, 1.05), band_neg=(0.95, 1.05)),
    ],
)
def test_cast_constant_groups_shaped_with_custom_config(cfg):
    adv_c, _ = cast_advantages(*_cast_const_batch([1.0]), cfg=cfg)
    adv_w, _ = cast_advantages(*_cast_const_batch([0.0]), cfg=cfg)
    torch.testing.assert_close(
        adv_c[0], torch.tensor(_cast_expected_row(cfg.b_correct, cfg)), rtol=1e-6, atol=1e-7
    )
    torch.testing.assert_close(
        adv_w[0], torch.tensor(_cast_expected_row(-cfg.b_wrong, cfg)), rtol=1e-6, atol=1e-7
    )


def test_cast_mixed_group_uses_grpo_base_and_zero_base_rows_are_unshaped():
    # rewards 1, 0.5, 0 (threshold 0.5: two correct): mean 0.5, std 0.5 -> B = +1/1.0002, 0, -1/1.0002
    rewards = torch.tensor([1.0, 0.5, 0.0])
    student = torch.full((3, 2), -1.0)
    teacher = student + torch.tensor([[0.1, -0.3]] * 3)
    adv, stats = cast_advantages(rewards, torch.tensor([5, 5, 5]), student, teacher, torch.ones(3, 2))
    b = 0.5 / (0.5 + EPS)
    # B > 0: exp(0.1) = 1.105 -> 1.05; g = -0.3 flips to -b clip(e^0.3 = 1.35, 1, 1.2) = -1.2 b
    assert adv[0].tolist() == pytest.approx([b * 1.05, -b * 1.2])
    assert adv[1].tolist() == [0.0, 0.0]  # B = 0: zero advantage, never flipped
    # B < 0: g = 0.1 flips to +b clip(e^0.1, 1, 1.05) = 1.05 b; g = -0.3: -b clip(e^0.3, 0.95, 1.2)
    assert adv[2].tolist() == pytest.approx([b * 1.05, -b * 1.2])
    assert stats["cast/frac_base_zero"] == pytest.approx(1 / 3)


def test_cast_mixed_scale_none_and_mixed_only():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    ids = torch.tensor([0, 0, 0, 0, 1, 1])
    zeros, ones = torch.zeros(6, 3), torch.ones(6, 3)
    adv, _ = cast_advantages(rewards, ids, zeros, zeros, ones, cfg=CastConfig(mixed_scale="none"))
    assert adv[:, 0].tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 1.0, 1.0])
    adv, stats = cast_advantages(rewards, ids, zeros, zeros, ones, cfg=CastConfig(mixed_only=True))
    assert adv[4:].abs().sum().item() == 0.0
    assert 0.75 / (0.5 + EPS) > 1.2 and adv[0, 0].item() == pytest.approx(1.2)  # final band
    assert adv[1, 0].item() == pytest.approx(-0.25 / (0.5 + EPS))
    assert stats["cast/frac_base_zero"] == pytest.approx(2 / 6)


# Which tokens flip, on one crafted pair of rows: an all-correct row (B = +1) and an all-wrong row
# (B = -1); disagreeing tokens are at positions 0-3 with growing |g|, position 4 agrees.
FLIP_GAP_POS = [-0.05, -0.15, -0.21, -0.3, 0.2]
FLIP_GAP_NEG = [0.05, 0.15, 0.21, 0.3, -0.2]


def _flipped_positions(**kw) -> tuple[list[int], list[int]]:
    student = torch.full((2, 5), -1.5)
    teacher = student + _t([FLIP_GAP_POS, FLIP_GAP_NEG])
    adv, stats = cast_advantages(
        torch.tensor([1.0, 0.0]), torch.tensor([0, 1]), student, teacher, torch.ones(2, 5), CastConfig(**kw)
    )
    down = [t for t in range(5) if adv[0, t] < 0]
    up = [t for t in range(5) if adv[1, t] > 0]
    assert stats["cast/flip_down_count"] == len(down) and stats["cast/flip_up_count"] == len(up)
    return down, up


@pytest.mark.parametrize(
    ("kw", "down", "up"),
    [
        ({}, [0, 1, 2, 3], [0, 1, 2, 3]),  # the paper: every disagreeing token
        ({"flip_margin": 0.1}, [1, 2, 3], [1, 2, 3]),
        ({"flip_margin": 0.2}, [2, 3], [2, 3]),
        ({"flip_margin": 0.25}, [3], [3]),
        ({"flip_correct": False}, [], [0, 1, 2, 3]),
        ({"flip_incorrect": False}, [0, 1, 2, 3], []),
        ({"flip": False}, [], []),
        ({"flip": False, "flip_correct": True}, [], []),  # flip is the master switch
    ],
)
def test_flip_sets(kw, down, up):
    assert _flipped_positions(**kw) == (down, up)


def test_nonfinite_teacher_logps_become_zero_gap_and_are_counted():
    student = torch.full((2, 4), -1.0)
    teacher = _t([[float("nan"), -1.5, float("inf"), -1.0], [float("-inf"), -0.2, float("nan"), -1.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)  # row 1's NaN is padding
    adv, stats = cast_advantages(torch.tensor([1.0, 1.0]), torch.tensor([0, 0]), student, teacher, mask)
    assert stats["cast/gap_nonfinite_count"] == 3.0
    assert torch.isfinite(adv).all()
    # gap 0 -> w = 1, no flip -> A = B = +1 on the three non-finite real tokens
    assert adv[0, 0].item() == 1.0 and adv[0, 2].item() == 1.0 and adv[1, 0].item() == 1.0
    assert adv[0, 1].item() == pytest.approx(-1.2)  # g = -0.5: flipped, -clip(e^0.5, 1, 1.2)
    assert stats["cast/gap_mean"] == pytest.approx((0.0 - 0.5 + 0.0 + 0.0 + 0.0 + 0.8) / 6, abs=1e-6)


def test_gap_metrics_split_by_class_and_sign():
    student = torch.zeros(2, 4)
    teacher = _t([[0.1, -0.2, 0.3, 0.0], [-0.4, -0.6, 0.5, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    _, s = cast_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), student, teacher, mask)
    assert s["cast/gap_correct_pos_frac"] == pytest.approx(2 / 4)
    assert s["cast/gap_correct_pos_mean"] == pytest.approx(0.2)
    assert s["cast/gap_correct_pos_std"] == pytest.approx(0.1)
    assert s["cast/gap_correct_neg_frac"] == pytest.approx(1 / 4)
    assert s["cast/gap_correct_neg_std"] == 0.0
    assert s["cast/gap_wrong_neg_mean"] == pytest.approx(-0.5)
    assert s["cast/gap_wrong_neg_abs_p95"] == pytest.approx(0.6)  # nearest rank: k = round(0.95) + 1 = 2
    assert s["cast/gap_wrong_pos_frac"] == pytest.approx(1 / 3)
    # all 7 real gaps: 0.1 -0.2 0.3 0 -0.4 -0.6 0.5; |g| sorted 0 .1 .2 .3 .4 .5 .6, k = round(5.7) + 1 = 7
    assert s["cast/gap_abs_p95"] == pytest.approx(0.6)
    assert s["cast/gap_mean"] == pytest.approx(-0.3 / 7, abs=1e-7)
    assert s["cast/gap_std"] == pytest.approx(
        statistics.pstdev([0.1, -0.2, 0.3, 0, -0.4, -0.6, 0.5]), rel=1e-5
    )


def test_cast_bf16_output_dtype_and_detached():
    student = (-torch.rand(4, 6)).to(torch.bfloat16).requires_grad_(True)
    teacher = (student.detach() + 0.3).to(torch.bfloat16)
    mask = torch.ones(4, 6)
    adv, _ = cast_advantages(
        torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]), student, teacher, mask
    )
    assert adv.dtype == torch.bfloat16
    assert not adv.requires_grad and adv.grad_fn is None


def _common_batch():
    gen = torch.Generator().manual_seed(1)
    B, T = 12, 7
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5, 1.0, 0.0, 1.0, 1.0, 1.0])
    ids = torch.tensor([3, 3, 3, 8, 8, 8, -1, -1, -1, 2, 2, 2])
    student = (-3 * torch.rand(B, T, generator=gen)).requires_grad_(True)
    teacher = student.detach() + 0.4 * torch.randn(B, T, generator=gen)
    mask = torch.rand(B, T, generator=gen) < 0.7
    return rewards, ids, student, teacher, mask


@pytest.mark.parametrize("name", ADVANTAGE_ESTIMATORS.names())
def test_every_estimator_contract(name):
    rewards, ids, student, teacher, mask = _common_batch()
    adv, stats = compute_advantages(name, rewards, ids, student, teacher, mask)
    assert adv.shape == student.shape and adv.dtype == student.dtype
    assert not adv.requires_grad
    assert torch.isfinite(adv).all()
    assert (adv[~mask] == 0).all()  # masked positions exactly 0
    assert adv[mask].abs().sum() > 0
    assert all(k.startswith("cast/") and isinstance(v, float) for k, v in stats.items())
    assert get_estimator(name).fn is ADVANTAGE_ESTIMATORS.get(name).fn


def test_registered_names_are_the_spec_keys():
    assert set(ADVANTAGE_ESTIMATORS.names()) == {"grpo", "dr_grpo", "rlsd", "rlrt", "opsd", "grpo_opsd", "cast"}
    assert not get_estimator("grpo").needs_teacher and get_estimator("cast").needs_teacher


def test_masked_positions_exactly_zero_even_with_garbage_underneath():
    rewards, ids, student, teacher, mask = _common_batch()
    student = student.detach().clone()
    teacher = teacher.clone()
    student[~mask] = float("nan")
    teacher[~mask] = float("-inf")
    for name in ADVANTAGE_ESTIMATORS.names():
        adv, stats = compute_advantages(name, rewards, ids, student, teacher, mask)
        assert (adv[~mask] == 0).all(), name
        assert torch.isfinite(adv).all(), name
        assert stats.get("cast/gap_nonfinite_count", 0.0) == 0.0, name


@pytest.mark.parametrize(("lo", "slack"), [(0.95, 1e-7), (0.9, 1e-7), (0.5, 1e-8), (0.8, 1e-8)])
def test_shaping_keeps_the_sign_of_b_at_the_lam_limit(lo, slack):
    # lam (1 - lo) = 1 - slack is a valid config; with the weight saturated at lo, fp32 would round
    # 1 + lam (w - 1) to 0 or below (a positive rollout got -2.4e-7 at lo = 0.95)
    cfg = CastConfig(band_pos=(lo, 1.05), band_neg=(lo, 1.2), lam=(1 - slack) / (1 - lo), flip=False)
    student = torch.zeros(2, 1)
    teacher = _t([[-5.0], [5.0]])  # saturates the low side of both bands
    adv, _ = cast_advantages(
        torch.tensor([1.0, 0.0]), torch.tensor([0, 1]), student, teacher, torch.ones(2, 1), cfg
    )
    assert adv[0, 0] > 0 and adv[1, 0] < 0


def test_lam_at_the_exact_decimal_limit_is_rejected():
    with pytest.raises(ValueError, match="lam=5.0"):
        CastConfig(lam=5.0)  # 1 + 5 (0.8 - 1) = 0
    CastConfig(lam=4.99)
