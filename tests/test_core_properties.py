"""Property tests of CAST token advantages (spec §2) and GRPO, on random small batches.

The base advantage B is recomputed here from the spec with Python's `statistics` (never with the
core's helpers), and random CastConfigs are drawn inside the region the config itself accepts.
"""

from __future__ import annotations

import dataclasses
import math
import statistics

import torch
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from castrl.core import CastConfig, cast_advantages, compute_advantages

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REWARD_VALUES = [0.0, 0.25, 0.5, 0.75, 1.0]  # exact in binary, so group sums are exact


@dataclasses.dataclass
class Batch:
    rewards: torch.Tensor
    group_ids: torch.Tensor
    student: torch.Tensor
    teacher: torch.Tensor
    mask: torch.Tensor

    def args(self):
        return self.rewards, self.group_ids, self.student, self.teacher, self.mask


@st.composite
def batches(draw, max_groups: int = 5, max_group_size: int = 6, max_t: int = 9) -> Batch:
    """Groups of 1..6 rollouts with arbitrary distinct int ids, shuffled rows, random padding."""
    sizes = draw(st.lists(st.integers(1, max_group_size), min_size=1, max_size=max_groups))
    ids = draw(st.lists(st.integers(-(2**40), 2**40), min_size=len(sizes), max_size=len(sizes), unique=True))
    n_rows, n_cols = sum(sizes), draw(st.integers(1, max_t))
    rewards = draw(st.lists(st.sampled_from(REWARD_VALUES), min_size=n_rows, max_size=n_rows))
    # some groups forced constant, so all-correct / all-wrong groups show up often
    row_ids = [gid for gid, size in zip(ids, sizes, strict=True) for _ in range(size)]
    if draw(st.booleans()):
        first = {}
        rewards = [
            first.setdefault(gid, r) if gid in ids[::2] else r
            for gid, r in zip(row_ids, rewards, strict=True)
        ]
    # token values from a drawn seed: element-wise lists of floats make hypothesis slow here
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.05, 0.3, 2.0]))
    gap = scale * torch.randn(n_rows, n_cols, generator=gen)
    gap = torch.where(torch.rand(n_rows, n_cols, generator=gen) < 0.15, 0.0, gap)  # exact ties at 0
    student = -8.0 * torch.rand(n_rows, n_cols, generator=gen)
    mask = torch.rand(n_rows, n_cols, generator=gen) < draw(st.sampled_from([0.3, 0.8, 1.0]))
    perm = draw(st.permutations(range(n_rows)))
    p = torch.tensor(perm)
    return Batch(
        rewards=torch.tensor(rewards)[p],
        group_ids=torch.tensor(row_ids)[p],
        student=student,
        teacher=student + gap,
        mask=mask,
    )


@st.composite
def cast_configs(draw) -> CastConfig:
    """Any CastConfig the validation accepts, including lam right at its sign-preserving limit."""
    band_pos = (draw(st.floats(0.05, 1.0)), draw(st.floats(1.0, 3.0)))
    band_neg = (draw(st.floats(0.05, 1.0)), draw(st.floats(1.0, 3.0)))
    lo = min(band_pos[0], band_neg[0])
    # right below the limit too: there fp32 rounds 1 + lam (w - 1) to <= 0 unless the core guards it
    frac = draw(st.one_of(st.floats(0.0, 1.0, exclude_max=True), st.sampled_from([1 - 1e-8, 1 - 1e-7])))
    lam = frac / (1 - lo) if lo < 1 else draw(st.floats(0.0, 5.0))  # lam (1 - lo) < 1
    unit = st.one_of(st.just(0.0), st.floats(1e-3, 2.0))  # fp32-representable, as B is computed in fp32
    try:
        return CastConfig(
            b_correct=draw(unit), b_wrong=draw(unit), mixed_scale=draw(st.sampled_from(["std", "none"])),
            band_pos=band_pos, band_neg=band_neg, lam=lam, flip=draw(st.booleans()),
            flip_correct=draw(st.booleans()), flip_incorrect=draw(st.booleans()),
            flip_margin=draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0))),
            adv_clip=draw(st.floats(0.01, 3.0)), mixed_only=draw(st.booleans()),
            shaping_cutoff_step=draw(st.one_of(st.none(), st.integers(0, 3))),
        )  # fmt: skip
    except ValueError:
        reject()  # rounding put lam exactly on the limit: the config rightly refuses it


def base_by_hand(batch: Batch, cfg: CastConfig) -> torch.Tensor:
    """(B,) spec §2.1: GRPO (or r - mean) in mixed groups, +b_correct / -b_wrong (or 0) otherwise."""
    rewards, ids = batch.rewards.tolist(), batch.group_ids.tolist()
    out = []
    for r, gid in zip(rewards, ids, strict=True):
        group = [x for x, j in zip(rewards, ids, strict=True) if j == gid]
        n_correct = sum(x >= cfg.correct_threshold for x in group)
        off = cfg.mixed_only or cfg.shaping_cutoff_step == 0  # every test here runs at step 0
        if n_correct == len(group):
            out.append(0.0 if off else cfg.b_correct)
        elif n_correct == 0:
            out.append(0.0 if off else -cfg.b_wrong)
        else:
            centred = r - statistics.fmean(group)
            out.append(
                centred / (statistics.stdev(group) + cfg.std_eps) if cfg.mixed_scale == "std" else centred
            )
    return torch.tensor(out, dtype=torch.float64)


def flips_by_hand(batch: Batch, cfg: CastConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) of Eq. 10 / 12 at step 0: B > 0 and g < -margin; B < 0 and g > margin."""
    base = base_by_hand(batch, cfg)[:, None]
    gap = _gap(batch)
    on = cfg.flip and cfg.shaping_cutoff_step != 0
    down = (base > 0) & (gap < -cfg.flip_margin) & batch.mask & (on and cfg.flip_correct)
    up = (base < 0) & (gap > cfg.flip_margin) & batch.mask & (on and cfg.flip_incorrect)
    return down, up


def _gap(batch: Batch) -> torch.Tensor:
    return batch.teacher.float() - batch.student.float()


def _stats_equal(a: dict[str, float], b: dict[str, float], rel: float = 0.0, abs_: float = 0.0) -> bool:
    """Same keys; values equal up to rel / abs_ (fp32 sums in another order differ near 0); NaN == NaN."""
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if math.isnan(x) or math.isnan(y):
            if not (math.isnan(x) and math.isnan(y)):
                return False
        elif abs(x - y) > max(rel * max(abs(x), abs(y)), abs_):
            return False
    return True


@SETTINGS
@given(batches(), cast_configs())
def test_final_band_and_zero_padding(batch, cfg):
    adv, _ = cast_advantages(*batch.args(), cfg=cfg)
    assert adv.abs().max().item() <= cfg.adv_clip * (1 + 1e-6)
    assert (adv[~batch.mask] == 0).all()
    assert torch.isfinite(adv).all()


@SETTINGS
@given(batches(), cast_configs())
def test_positive_rollouts_negative_only_by_flips(batch, cfg):
    adv, _ = cast_advantages(*batch.args(), cfg=cfg)
    base = base_by_hand(batch, cfg)[:, None]
    down, _ = flips_by_hand(batch, cfg)
    positive_row = (base > 0) & batch.mask
    assert not ((adv < 0) & positive_row & ~down).any()
    # every unflipped valid token of a positive rollout keeps a strictly positive advantage
    assert (adv > 0)[positive_row & ~down].all()
    assert (adv < 0)[down].all()


@SETTINGS
@given(batches(), cast_configs())
def test_negative_rollouts_positive_only_by_flips_and_capped(batch, cfg):
    """Eq. 12-13: an up-flip gets at most |B| u+ (before the final clip)."""
    adv, _ = cast_advantages(*batch.args(), cfg=cfg)
    base = base_by_hand(batch, cfg)[:, None]
    _, up = flips_by_hand(batch, cfg)
    negative_row = (base < 0) & batch.mask
    assert not ((adv > 0) & negative_row & ~up).any()
    lam = cfg.lam if cfg.shaping_cutoff_step != 0 else 0.0
    cap = (base.abs() * (1 + lam * (cfg.band_pos[1] - 1))).clamp(max=cfg.adv_clip).expand_as(adv)
    over = (adv.double() > cap * (1 + 1e-6) + 1e-7) & up
    assert not over.any()


@SETTINGS
@given(batches(), cast_configs())
def test_no_flip_keeps_the_sign_of_the_base(batch, cfg):
    cfg = dataclasses.replace(cfg, flip=False)
    adv, stats = cast_advantages(*batch.args(), cfg=cfg)
    base = base_by_hand(batch, cfg)[:, None].expand_as(adv)
    real = batch.mask
    if cfg.adv_clip > 0:
        assert torch.equal(torch.sign(adv)[real], torch.sign(base).float()[real])
    assert stats["cast/flip_down_count"] == 0.0 and stats["cast/flip_up_count"] == 0.0


@SETTINGS
@given(batches(), cast_configs())
def test_lam_zero_no_flip_is_the_clipped_base(batch, cfg):
    cfg = dataclasses.replace(cfg, lam=0.0, flip=False)
    adv, _ = cast_advantages(*batch.args(), cfg=cfg)  # step 0
    base = base_by_hand(batch, cfg).clamp(-cfg.adv_clip, cfg.adv_clip)[:, None]
    expected = (base * batch.mask).float()
    torch.testing.assert_close(adv, expected, rtol=1e-5, atol=1e-6)


@SETTINGS
@given(batches(), cast_configs())
def test_mixed_only_zeroes_zero_variance_groups(batch, cfg):
    cfg = dataclasses.replace(cfg, mixed_only=True)
    adv, _ = cast_advantages(*batch.args(), cfg=cfg)
    for gid in set(batch.group_ids.tolist()):
        rows = batch.group_ids == gid
        if len(set(batch.rewards[rows].tolist())) == 1:
            assert (adv[rows] == 0).all()


@SETTINGS
@given(
    batches(),
    cast_configs(),
    st.floats(-50.0, 50.0, width=32),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0]),
)
def test_values_under_the_mask_change_nothing(batch, cfg, junk_s, junk_u):
    adv, stats = cast_advantages(*batch.args(), cfg=cfg)
    student, teacher = batch.student.clone(), batch.teacher.clone()
    student[~batch.mask] = junk_s
    teacher[~batch.mask] = junk_u
    adv2, stats2 = cast_advantages(batch.rewards, batch.group_ids, student, teacher, batch.mask, cfg)
    assert torch.equal(adv, adv2)
    assert _stats_equal(stats, stats2)


@SETTINGS
@given(batches(), cast_configs(), st.integers(1, 5))
def test_padding_columns_change_nothing(batch, cfg, extra):
    adv, stats = cast_advantages(*batch.args(), cfg=cfg)
    n_rows = batch.rewards.shape[0]
    pad_s = torch.full((n_rows, extra), -3.0)
    pad_u = torch.full((n_rows, extra), 5.0)
    wide = Batch(
        batch.rewards, batch.group_ids,
        torch.cat([batch.student, pad_s], 1), torch.cat([batch.teacher, pad_u], 1),
        torch.cat([batch.mask, torch.zeros(n_rows, extra, dtype=torch.bool)], 1),
    )  # fmt: skip
    adv_wide, stats_wide = cast_advantages(*wide.args(), cfg=cfg)
    assert torch.equal(adv_wide[:, : adv.shape[1]], adv)
    assert (adv_wide[:, adv.shape[1] :] == 0).all()
    assert _stats_equal(stats, stats_wide, rel=1e-5, abs_=1e-6)


@SETTINGS
@given(batches(), cast_configs(), st.randoms(use_true_random=False))
def test_row_permutation_equivariance(batch, cfg, rnd):
    adv, stats = cast_advantages(*batch.args(), cfg=cfg)
    perm = list(range(batch.rewards.shape[0]))
    rnd.shuffle(perm)
    p = torch.tensor(perm)
    adv_p, stats_p = cast_advantages(
        batch.rewards[p], batch.group_ids[p], batch.student[p], batch.teacher[p], batch.mask[p], cfg
    )
    torch.testing.assert_close(adv_p, adv[p], rtol=1e-5, atol=1e-6)
    assert _stats_equal(stats, stats_p, rel=1e-4, abs_=1e-6)


@SETTINGS
@given(batches(), cast_configs(), st.integers(-(2**50), 2**50), st.sampled_from([1, -1, 7, -1000003]))
def test_group_ids_are_only_labels(batch, cfg, shift, scale):
    adv, stats = cast_advantages(*batch.args(), cfg=cfg)
    relabelled = batch.group_ids * scale + shift  # injective on the drawn ids
    adv2, stats2 = cast_advantages(batch.rewards, relabelled, batch.student, batch.teacher, batch.mask, cfg)
    assert torch.equal(adv, adv2)
    assert _stats_equal(stats, stats2)


@SETTINGS
@given(batches())
def test_grpo_equals_the_textbook_formula(batch):
    adv, _ = compute_advantages("grpo", batch.rewards, batch.group_ids, batch.student, None, batch.mask)
    rewards, ids = batch.rewards.tolist(), batch.group_ids.tolist()
    expected = []
    for r, gid in zip(rewards, ids, strict=True):
        group = [x for x, j in zip(rewards, ids, strict=True) if j == gid]
        std = statistics.stdev(group) if len(group) > 1 else 0.0
        expected.append(0.0 if std == 0 else (r - statistics.fmean(group)) / (std + 1e-4))
    expected_t = torch.tensor(expected)[:, None] * batch.mask
    torch.testing.assert_close(adv, expected_t, rtol=1e-5, atol=1e-6)


@st.composite
def gap_batches(draw) -> Batch:
    """Batches whose gaps include the awkward values: ±0, subnormals, ties, non-finite teachers."""
    batch = draw(batches())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    student, teacher = batch.student.clone(), batch.teacher.clone()
    kind = torch.randint(0, 8, student.shape, generator=gen)
    student[kind <= 3] = 0.0
    teacher[kind == 0] = -0.0  # g = -0.0
    teacher[kind == 1] = 1e-42  # subnormal g
    teacher[kind == 2] = -3e-41
    teacher[kind == 3] = 0.25  # ties
    teacher[kind == 4] = student[kind == 4] + 30.0  # clamped to gap_clip = 20
    if draw(st.booleans()):
        teacher[kind == 5] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return Batch(batch.rewards, batch.group_ids, student, teacher, batch.mask)


def _naive_quantile(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(abs(v) for v in values)
    n = len(ordered)
    return ordered[min(n, max(1, int(round(0.95 * (n - 1))) + 1)) - 1]


def _close(x: float, y: float, rel: float = 1e-5, abs_: float = 1e-6) -> bool:
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return abs(x - y) <= max(rel * max(abs(x), abs(y)), abs_)


@SETTINGS
@given(gap_batches())
def test_gap_and_flip_stats_match_a_naive_reference(batch):
    """The core's fast statistics equal boolean indexing + sorting + Python statistics."""
    cfg = CastConfig()
    adv, stats = cast_advantages(*batch.args(), cfg=cfg)
    gap = batch.teacher.float() - batch.student.float()
    real = batch.mask
    finite = torch.isfinite(gap)
    assert stats["cast/gap_nonfinite_count"] == float((real & ~finite).sum())
    gap = torch.where(real & finite, gap, 0.0).clamp(-20, 20)
    correct = (batch.rewards >= 0.5)[:, None].expand_as(gap)
    values = gap[real].tolist()
    assert stats["cast/gap_abs_p95"] == _naive_quantile(values) or not values
    if values:
        assert _close(stats["cast/gap_mean"], statistics.fmean(values))
        assert _close(stats["cast/gap_std"], statistics.pstdev(values))
    for cls_name, cls in (("correct", correct), ("wrong", ~correct)):
        n_cls = int((real & cls).sum())
        for sign_name, in_sign in (("pos", gap > 0), ("neg", gap < 0)):
            part = gap[real & cls & in_sign].tolist()
            key = f"cast/gap_{cls_name}_{sign_name}"
            assert _close(stats[f"{key}_abs_p95"], _naive_quantile(part), rel=0.0, abs_=0.0), key
            assert _close(stats[f"{key}_frac"], len(part) / n_cls if n_cls else math.nan, rel=0.0, abs_=0.0)
            assert _close(stats[f"{key}_mean"], statistics.fmean(part) if part else math.nan), key
            assert _close(stats[f"{key}_std"], statistics.pstdev(part) if part else math.nan), key
    # flips (Eq. 10, 12): every teacher-negative token of a B > 0 row, teacher-positive of a B < 0 row
    base = base_by_hand(batch, cfg)[:, None].expand_as(gap)
    down, up = real & (base > 0) & (gap < 0), real & (base < 0) & (gap > 0)
    assert stats["cast/flip_down_count"] == float(down.sum())
    assert stats["cast/flip_up_count"] == float(up.sum())
    n_real = int(real.sum())
    for key, part in (("frac_flipped", down | up), ("frac_flipped_correct_negative", down),
                      ("frac_flipped_incorrect_positive", up)):  # fmt: skip
        assert _close(stats[f"cast/{key}"], float(part.sum()) / n_real if n_real else math.nan)
    # the weight each token used: w (Eq. 8) unflipped, w- / w+ (Eq. 11 / 13) flipped; 1 where B = 0
    w = torch.where(base > 0, gap.exp().clamp(0.8, 1.05), (-gap).exp().clamp(0.95, 1.2))
    w = torch.where(down, (-gap).exp().clamp(1.0, 1.2), torch.where(up, gap.exp().clamp(1.0, 1.05), w))
    w = torch.where(base == 0, 1.0, w)
    weights = w[real].tolist()
    assert _close(stats["cast/weight_mean"], statistics.fmean(weights) if weights else math.nan)
