"""CAST is the paper's rule (spec §2; Eq. 6-15, Algorithm 1): hand-computed cases, one per branch,
agreement with an independent line-by-line Algorithm 1 (`cast_reference.py`), the derived sign
property, and what each ablation switch changes.

Hand numbers (lam = 1 unless stated): exp(0.03) = 1.030455, exp(0.1) = 1.105171,
exp(-0.1) = 0.904837, exp(0.02) = 1.020201, exp(-0.02) = 0.980199; the mixed group [1, 1, 0, 0]
has mean 0.5, sample std 0.577350, so B = +-0.5 / (0.577350 + 1e-4) = +-0.865875.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given

from castrl.core import CastConfig, cast_advantages, compute_advantages

from .cast_reference import algorithm1, base_advantages
from .test_core_properties import SETTINGS, Batch, batches, cast_configs

B_MIXED = 0.8658754


def _one_token_rows(rewards: list[float], gaps: list[float], cfg: CastConfig | None = None, step: int = 0):
    """One group of len(rewards) rollouts, one token each, with gap g_i; returns the (B,) advantages."""
    student = torch.full((len(rewards), 1), -1.0)
    teacher = student + torch.tensor(gaps)[:, None]
    adv, stats = cast_advantages(
        torch.tensor(rewards, dtype=torch.float32), torch.zeros(len(rewards), dtype=torch.long), student, teacher,
        torch.ones(len(rewards), 1), cfg=cfg or CastConfig(), step=step,
    )  # fmt: skip
    return adv[:, 0].tolist(), stats


@pytest.mark.parametrize(
    ("rewards", "gaps", "expected", "branch"),
    [
        # ALLCORRECT, B = +b_correct = +1 (Eq. 6)
        ([1, 1], [0.03, 0.03], 1.030455, "B > 0, g > 0: w = clip(e^g, 0.8, 1.05) = 1.030455, A = B w (Eq. 9)"),
        ([1, 1], [0.2, 0.2], 1.05, "B > 0, g > 0: e^0.2 = 1.2214 clipped to u+ = 1.05 (Eq. 8)"),
        ([1, 1], [-0.1, -0.1], -1.105171, "B > 0, g < 0: flip down, w- = clip(e^0.1, 1, 1.2), A = -|B| w- (Eq. 10-11)"),
        ([1, 1], [-0.5, -0.5], -1.2, "B > 0, g < 0: w- = clip(e^0.5, 1, 1.2) = 1.2 (u- caps the flip)"),
        # ALLWRONG, B = -b_wrong = -1
        ([0, 0], [-0.1, -0.1], -1.105171, "B < 0, g < 0: w = clip(e^-g, 0.95, 1.2) = 1.105171, A = B w (Eq. 9)"),
        ([0, 0], [-0.5, -0.5], -1.2, "B < 0, g < 0: e^0.5 clipped to u- = 1.2"),
        ([0, 0], [0.02, 0.02], 1.020201, "B < 0, g > 0: flip up, w+ = clip(e^0.02, 1, 1.05), A = +|B| w+ (Eq. 12-13)"),
        ([0, 0], [0.3, 0.3], 1.05, "B < 0, g > 0: w+ = clip(e^0.3, 1, 1.05) = 1.05 (u+ caps the flip)"),
        ([1, 1], [0.0, 0.0], 1.0, "g = 0: no flip, w = 1, A = B"),
    ],
)
def test_each_branch_by_hand(rewards, gaps, expected, branch):
    adv, _ = _one_token_rows(rewards, gaps)
    assert adv == pytest.approx([expected, expected], abs=2e-6), branch


def test_mixed_group_uses_the_grpo_base():
    # rows 0, 1 correct (B = +0.865875), rows 2, 3 wrong (B = -0.865875)
    adv, _ = _one_token_rows([1, 1, 0, 0], [0.03, -0.1, -0.1, 0.02])
    assert adv == pytest.approx(
        [B_MIXED * 1.030455, -B_MIXED * 1.105171, -B_MIXED * 1.105171, B_MIXED * 1.020201], abs=2e-6
    )


def test_final_clip_binds_on_a_large_base():
    # b_correct = 2: flip down gives -2 * 1.2 = -2.4, clipped to -1.2 (Eq. 15); B w = 2 * 1.030455 -> 1.2
    cfg = CastConfig(b_correct=2.0)
    adv, _ = _one_token_rows([1, 1], [-0.3, 0.03], cfg)
    assert adv == pytest.approx([-1.2, 1.2])


def test_lam_scales_the_weight():
    # lam = 0.5: 1 + 0.5 (1.030455 - 1) = 1.015227; flip: -(1 + 0.5 (1.105171 - 1)) = -1.052585
    adv, _ = _one_token_rows([1, 1], [0.03, -0.1], CastConfig(lam=0.5))
    assert adv == pytest.approx([1.015227, -1.052585], abs=2e-6)


def test_switches_by_hand():
    # flip=False: B > 0, g = -0.1 -> w = clip(e^-0.1, 0.8, 1.05) = 0.904837; B < 0, g = 0.02 -> -e^-0.02
    adv, stats = _one_token_rows([1, 1], [-0.1, -0.5], CastConfig(flip=False))
    assert adv == pytest.approx([0.904837, 0.8], abs=2e-6)  # e^-0.5 = 0.6065 clipped to l+ = 0.8
    assert stats["cast/frac_flipped"] == 0.0
    adv, _ = _one_token_rows([0, 0], [0.02, 0.02], CastConfig(flip_incorrect=False))
    assert adv == pytest.approx([-0.980199, -0.980199], abs=2e-6)
    adv, _ = _one_token_rows([0, 0], [0.02, 0.02], CastConfig(flip_correct=False))  # other side: still flips
    assert adv == pytest.approx([1.020201, 1.020201], abs=2e-6)
    # flip_margin = 0.05: |g| = 0.02 stays sign-preserving, |g| = 0.1 flips
    adv, _ = _one_token_rows([0, 0], [0.02, 0.1], CastConfig(flip_margin=0.05))
    assert adv == pytest.approx([-0.980199, 1.05], abs=2e-6)
    # mixed_only: ALLCORRECT gets B = 0 -> A = 0 whatever g
    adv, _ = _one_token_rows([1, 1], [-0.1, 0.3], CastConfig(mixed_only=True))
    assert adv == [0.0, 0.0]


def test_shaping_cutoff_step_by_hand():
    cfg = CastConfig(shaping_cutoff_step=5)
    before, _ = _one_token_rows([1, 1, 0, 0], [-0.3, 0.03, 0.02, -0.1], cfg, step=4)
    assert before == pytest.approx([-B_MIXED * 1.2, B_MIXED * 1.030455, B_MIXED * 1.020201, -B_MIXED * 1.105171], abs=2e-6)
    # from step 5 on (Eq. 18-19): lam = 0, no flips, so A = B: the GRPO advantage; uniform groups get 0
    after, _ = _one_token_rows([1, 1, 0, 0], [-0.3, 0.03, 0.02, -0.1], cfg, step=5)
    assert after == pytest.approx([B_MIXED, B_MIXED, -B_MIXED, -B_MIXED], abs=2e-6)
    uniform, _ = _one_token_rows([1, 1], [-0.3, 0.03], cfg, step=9)
    assert uniform == [0.0, 0.0]


def test_table9_flip_shares_by_hand():
    # 4 valid tokens: one down-flip (B > 0, g < 0), one up-flip (B < 0, g > 0), two unflipped
    _, stats = _one_token_rows([1, 1, 0, 0], [-0.1, 0.03, 0.02, -0.1])
    assert stats["cast/frac_flipped"] == 0.5
    assert stats["cast/frac_flipped_correct_negative"] == 0.25
    assert stats["cast/frac_flipped_incorrect_positive"] == 0.25


# -- agreement with the independent Algorithm 1 -------------------------------------------------

SWITCHES = {
    "default": {},
    "no sign reversal": {"flip": False},
    "flip_correct off": {"flip_correct": False},
    "flip_incorrect off": {"flip_incorrect": False},
    "flip_margin": {"flip_margin": 0.1},
    "mixed_only": {"mixed_only": True},
    "sym [0.95, 1.05]": {"band_pos": (0.95, 1.05), "band_neg": (0.95, 1.05)},
    "sym [0.8, 1.2]": {"band_pos": (0.8, 1.2), "band_neg": (0.8, 1.2)},
    "shaping_cutoff_step": {"shaping_cutoff_step": 3},
    "lam 0.5": {"lam": 0.5},
    "b 0.5 / 2": {"b_correct": 0.5, "b_wrong": 2.0},
    "mixed_scale none": {"mixed_scale": "none"},
}


def _random_batch(seed: int, n_groups: int = 24, group_size: int = 8, t: int = 40) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    n = n_groups * group_size
    p_correct = torch.rand(n_groups, 1, generator=gen).expand(n_groups, group_size).reshape(-1)
    rewards = (torch.rand(n, generator=gen) < p_correct).float()
    rewards[: 2 * group_size] = torch.tensor([1.0] * group_size + [0.0] * group_size)  # one of each uniform kind
    student = -6 * torch.rand(n, t, generator=gen)
    gap = torch.randn(n, t, generator=gen) * torch.tensor([0.02, 0.2, 2.0])[torch.randint(0, 3, (n, 1), generator=gen)]
    lengths = torch.randint(1, t + 1, (n, 1), generator=gen)
    mask = torch.arange(t)[None, :] < lengths
    perm = torch.randperm(n, generator=gen)
    ids = torch.arange(n) // group_size
    return Batch(rewards[perm], ids[perm], student[perm], (student + gap)[perm], mask[perm])


@pytest.mark.parametrize("switch", list(SWITCHES))
@pytest.mark.parametrize("step", [0, 7])
def test_agrees_with_algorithm1_on_random_batches(switch, step):
    cfg = CastConfig(**SWITCHES[switch])
    for seed in range(3):
        batch = _random_batch(seed)
        adv, _ = cast_advantages(*batch.args(), cfg=cfg, step=step)
        expected = algorithm1(*batch.args(), cfg, step)
        torch.testing.assert_close(adv.double(), expected, rtol=1e-5, atol=1e-5, msg=f"{switch}, seed {seed}")


@SETTINGS
@given(batches(), cast_configs())
def test_agrees_with_algorithm1_for_any_config(batch, cfg):
    adv, _ = cast_advantages(*batch.args(), cfg=cfg)
    torch.testing.assert_close(adv.double(), algorithm1(*batch.args(), cfg), rtol=1e-5, atol=1e-5)


# -- the derived property (spec §2 [D]) ---------------------------------------------------------


def _paper_premise(cfg: CastConfig) -> CastConfig:
    """Default bands, both flips on, no margin, shaping active; b, lam and the rest as drawn."""
    return dataclasses.replace(
        cfg, band_pos=(0.8, 1.05), band_neg=(0.95, 1.2), flip=True, flip_correct=True, flip_incorrect=True,
        flip_margin=0.0, shaping_cutoff_step=None, adv_clip=max(cfg.adv_clip, 0.01), lam=min(cfg.lam, 1.0),
    )  # fmt: skip


@SETTINGS
@given(batches(), cast_configs())
def test_teacher_sets_every_tokens_direction(batch, cfg):
    """sign(A) = sign(g) wherever g != 0 and B != 0; |A| = min(clip, |B| (1 + lam (min(e^|g|, u) - 1)))."""
    cfg = _paper_premise(cfg)
    adv, _ = cast_advantages(*batch.args(), cfg=cfg)
    gap = (batch.teacher.float() - batch.student.float()).clamp(-20, 20).double()
    base = torch.tensor(base_advantages(batch.rewards.tolist(), batch.group_ids.tolist(), cfg, 0)).abs()[:, None]
    where = batch.mask & (gap != 0) & (base > 0)
    assert torch.equal(torch.sign(adv.double())[where], torch.sign(gap)[where])
    cap = torch.where(gap > 0, 1.05, 1.2)
    magnitude = (base * (1 + cfg.lam * (torch.minimum(gap.abs().exp(), cap) - 1))).clamp(max=cfg.adv_clip)
    torch.testing.assert_close(adv.double().abs()[where], magnitude.expand_as(adv)[where], rtol=1e-5, atol=1e-6)


def _disagreeing_batch() -> Batch:
    """Correct (all-correct group) and wrong (all-wrong group) rollouts with small and large gaps of both signs."""
    gaps = torch.tensor([[0.02, -0.02, 0.3, -0.3]] * 4)
    student = torch.full_like(gaps, -1.0)
    return Batch(torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([0, 0, 1, 1]), student, student + gaps,
                 torch.ones_like(gaps, dtype=torch.bool))  # fmt: skip


@pytest.mark.parametrize(
    "broken",
    [{"flip": False}, {"flip_correct": False}, {"flip_incorrect": False}, {"flip_margin": 0.05},
     {"shaping_cutoff_step": 0}],
)  # fmt: skip
def test_the_property_fails_when_a_switch_breaks_its_premise(broken):
    batch = _disagreeing_batch()
    gap = batch.teacher - batch.student
    holds = lambda cfg: torch.equal(torch.sign(cast_advantages(*batch.args(), cfg=cfg)[0]), torch.sign(gap))  # noqa: E731
    assert holds(CastConfig())
    assert not holds(CastConfig(**broken))


@pytest.mark.parametrize(
    ("switch", "changed"),
    [
        ({"flip_correct": False}, "down"),
        ({"flip_incorrect": False}, "up"),
        ({"flip": False}, "down|up"),
        ({"mixed_only": True}, "uniform"),
        ({"flip_margin": 0.1}, "small_flips"),
    ],
)
def test_each_switch_changes_exactly_its_tokens(switch, changed):
    batch = _random_batch(11)
    default, _ = cast_advantages(*batch.args())
    ablated, _ = cast_advantages(*batch.args(), cfg=CastConfig(**switch))
    gap = (batch.teacher - batch.student).float()
    base = torch.tensor(base_advantages(batch.rewards.tolist(), batch.group_ids.tolist(), CastConfig(), 0))[:, None]
    ids = batch.group_ids.tolist()
    uniform = torch.tensor([len(set(batch.rewards[batch.group_ids == g].tolist())) == 1 for g in ids])
    down, up = (base > 0) & (gap < 0), (base < 0) & (gap > 0)
    sets = {
        "down": down,
        "up": up,
        "down|up": down | up,
        "uniform": uniform[:, None].expand_as(gap),
        "small_flips": (down | up) & (gap.abs() <= 0.1),
    }
    expected = sets[changed] & batch.mask
    differs = (default != ablated) & batch.mask
    assert differs.any()
    assert not (differs & ~expected).any(), "a token outside the switch's set changed"
    if changed != "uniform":  # a uniform group's token may stay equal by accident only if A was 0
        assert differs[expected].all(), "a token in the switch's set kept its advantage"


def test_cutoff_turns_cast_into_clipped_grpo():
    batch = _random_batch(5)
    after, _ = cast_advantages(*batch.args(), cfg=CastConfig(shaping_cutoff_step=10), step=10)
    grpo, _ = compute_advantages("grpo", batch.rewards, batch.group_ids, batch.student, None, batch.mask)
    torch.testing.assert_close(after, grpo.clamp(-1.2, 1.2))
