"""Per-step metrics the core can compute (spec §5), under `cast/` with lower_snake leaves.

All statistics are over real (unmasked) tokens. A statistic of an empty set is NaN: "no such
tokens this step" must not read as "value 0".
"""

from __future__ import annotations

import math

import torch

from .groups import ALL_CORRECT, ALL_WRONG, MIXED
from .inputs import PreparedBatch

NAN = float("nan")


# Gap statistics are split by rollout class (correct, wrong) x gap sign (pos: g > 0, neg: g < 0);
# real tokens with g = 0 count in the class totals and the overall statistics only.
_SPLITS = (("correct", "pos"), ("correct", "neg"), ("wrong", "pos"), ("wrong", "neg"))
_KEY_SHIFT = 20  # keys keep the float32 sign bit, 8 exponent bits and 3 mantissa bits of g
_HALF = 1 << (31 - _KEY_SHIFT)  # keys per sign: bins ordered like |g| (1/8 of an octave wide)


def _split_moments(
    gap: torch.Tensor, classes: list[torch.Tensor], scratch: torch.Tensor
) -> list[tuple[float, float, float]]:
    """(count, mean, sum of squared deviations) of g per split, in _SPLITS order.

    Two passes (mean, then deviations) over fp32 row sums combined across rows in fp64: as exact
    as torch's mean/std, without materialising any split (boolean indexing dominated the step).
    Float masks from sign(g) (+1 / -1 on the split, 0 elsewhere; g is 0 on padding) multiply
    without bool -> float copies; two (B, T) buffers (`scratch` and the mask) serve every pass,
    since on CPU each fresh (B, T) buffer costs page faults that outweigh the arithmetic.
    """
    in_split = torch.empty_like(gap)
    out = []
    for sign in (1.0, -1.0):  # the mask is +1 on g > 0, then -1 on g < 0 (sums come out negated)
        torch.sign(gap, out=in_split)
        if sign > 0:
            in_split.clamp_(min=0)
        else:
            in_split.clamp_(max=0)
        n_rows = in_split.sum(dim=1).double() * sign  # exact: fp32 holds integers up to 2^24
        s_rows = torch.mul(gap, in_split, out=scratch).sum(dim=1).double() * sign
        counts = [float(n_rows[r].sum().item()) for r in classes]
        means = [float(s_rows[r].sum().item()) / n if n else 0.0 for r, n in zip(classes, counts, strict=True)]
        row_mean = torch.zeros(gap.shape[0], 1, dtype=gap.dtype, device=gap.device)
        for r, mean in zip(classes, means, strict=True):
            row_mean[r] = mean
        dev2 = torch.sub(gap, row_mean, out=scratch).square_().mul_(in_split)
        m2_rows = dev2.sum(dim=1).double() * sign
        out += [(n, m, float(m2_rows[r].sum().item())) for r, n, m in zip(classes, counts, means, strict=True)]
    return [out[0], out[2], out[1], out[3]]  # (pos, neg) x (correct, wrong) -> _SPLITS order


def _pooled_mean_std(parts: list[tuple[float, float, float]]) -> tuple[float, float]:
    """Mean and population std of the union of disjoint parts (Chan et al.'s pooled variance); NaN if empty."""
    n = sum(p[0] for p in parts)
    if n == 0:
        return NAN, NAN
    mean = sum(p[0] * p[1] for p in parts) / n
    m2 = sum(p[2] + p[0] * (p[1] - mean) ** 2 for p in parts)
    return mean, math.sqrt(max(m2, 0.0) / n)


def _gap_keys(gap: torch.Tensor, correct: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(B*T,) int32 histogram key of each token: 4 ranges of _HALF bins, ordered like |g| within each.

    An arithmetic shift of g's float32 bits gives -_HALF + bin for g < 0 (bits of -0.0 included)
    and bin for g >= 0, so range 2 * class + (g >= 0) with class 0 = correct, 1 = wrong. Bin 0 holds
    only zeros and tiny subnormals; padding (g = +0) lands there and is filtered out later. `out`:
    an optional (B, T) 4-byte scratch buffer to write into (saves a fresh allocation).
    """
    offset = torch.where(correct, _HALF, 3 * _HALF).to(torch.int32)[:, None]
    key = None if out is None else out.view(torch.int32)
    key = torch.bitwise_right_shift(gap.view(torch.int32), _KEY_SHIFT, out=key)
    return key.add_(offset).reshape(-1)


def _abs_quantiles(
    gap: torch.Tensor, real: torch.Tensor, key: torch.Tensor, subsets: list[tuple[list[int], int, int]], q: float
) -> list[float]:
    """Nearest-rank q-quantile of |g| over token subsets, exactly what kthvalue gives; NaN if empty.

    A subset is (key ranges, exact size n, sign filter +1 / -1 / 0 for none) over real tokens. One
    histogram of the keys locates the bin of the k-th |g| (bins >= 1 hold only real nonzero g of
    their range, so their counts are exact; bin 0 gets n minus the rest); only the tokens of those
    few bins are gathered for a final kthvalue. This replaced boolean indexing plus kthvalue over
    ~1M tokens, which dominated the CAST step.
    """
    hist = torch.bincount(key, minlength=4 * _HALF).view(4, _HALF)
    wanted = torch.zeros(4 * _HALF, dtype=torch.bool, device=key.device)
    plans: list[tuple[list[int], int, int] | None] = []
    for ranges, n, sign in subsets:
        if n == 0:
            plans.append(None)
            continue
        counts = hist[ranges].sum(0)
        counts[0] = n - counts[1:].sum()  # bin 0 also holds padding and g = ±0 outside a sign split
        k = min(n, max(1, int(round(q * (n - 1))) + 1))  # nearest rank, 1-based
        cum = counts.cumsum(0)
        b = int((cum < k).sum().item())
        keys = [r * _HALF + b for r in ranges]
        wanted[keys] = True
        plans.append((keys, k - int((cum[b] - counts[b]).item()), sign))
    idx = wanted.index_select(0, key).nonzero().squeeze(1)
    cand_key, cand_gap, cand_real = key[idx], gap.reshape(-1)[idx], real.reshape(-1)[idx]
    out = []
    for plan in plans:
        if plan is None:
            out.append(NAN)
            continue
        keys, rank, sign = plan
        take = cand_real & torch.isin(cand_key, torch.tensor(keys, dtype=cand_key.dtype, device=cand_key.device))
        if sign:
            take &= cand_gap * sign > 0
        out.append(float(cand_gap[take].abs().kthvalue(rank).values.item()))
    return out


def _mean_std(values: torch.Tensor) -> tuple[float, float]:
    n = values.numel()
    if n == 0:
        return NAN, NAN
    mean = values.mean()
    std = values.std(unbiased=False) if n > 1 else torch.zeros(())
    return float(mean.item()), float(std.item())


def group_metrics(batch: PreparedBatch) -> dict[str, float]:
    """Group-type fractions (over groups), reward mean, and the zero-variance share."""
    kinds = batch.groups.group_kind
    n = max(batch.groups.n_groups, 1)
    return {
        "cast/frac_all_correct": float((kinds == ALL_CORRECT).sum().item()) / n,
        "cast/frac_all_wrong": float((kinds == ALL_WRONG).sum().item()) / n,
        "cast/frac_mixed": float((kinds == MIXED).sum().item()) / n,
        "cast/reward_mean": float(batch.rewards.mean().item()) if batch.rewards.numel() else NAN,
        "cast/frac_correct": float(batch.groups.correct.float().mean().item()) if batch.rewards.numel() else NAN,
    }


def advantage_metrics(adv: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Token-advantage mean/std/min/max over real tokens, the share of rollouts with A != 0, and the
    mean valid completion length (valid tokens per rollout that has any: masked truncated
    completions have none, so this is Table 9's "mean valid completion length")."""
    real = mask > 0
    values = adv.float()[real]
    mean, std = _mean_std(values)
    nonzero_rows = ((adv != 0) & real).any(dim=1).float()
    lengths = real.sum(dim=1)
    valid_rows = lengths > 0
    return {
        "cast/valid_length_mean": float(lengths[valid_rows].double().mean().item()) if bool(valid_rows.any()) else NAN,
        "cast/adv_mean": mean,
        "cast/adv_std": std,
        "cast/adv_min": float(values.min().item()) if values.numel() else NAN,
        "cast/adv_max": float(values.max().item()) if values.numel() else NAN,
        "cast/frac_nonzero_adv": float(nonzero_rows.mean().item()) if adv.shape[0] else NAN,
    }


def gap_metrics(batch: PreparedBatch) -> dict[str, float]:
    """Gap mean/std/|g| p95 overall and per (correct, wrong) x (teacher-positive, teacher-negative).

    `gap_<c>_<s>_frac` is the share of that rollout class's tokens with that gap sign. The p95 is the
    nearest-rank quantile (k = round(0.95 (n - 1)) + 1) of |g|; std is the population std.
    """
    assert batch.gap is not None, "gap_metrics needs a teacher gap"
    gap, correct = batch.gap, batch.groups.correct
    classes = [correct, ~correct]
    scratch = torch.empty_like(gap)
    splits = _split_moments(gap, classes, scratch)  # _SPLITS order
    real_rows = batch.mask.sum(dim=1)
    n_class = [int(real_rows[rows].sum().item()) for rows in classes]
    zeros = [(n_class[c] - splits[2 * c][0] - splits[2 * c + 1][0], 0.0, 0.0) for c in range(2)]
    # key range of split i: 2 * class + (1 for pos, 0 for neg); sign filter +1 / -1
    subsets = [([0, 1, 2, 3], sum(n_class), 0)]
    subsets += [([2 * (i // 2) + 1 - i % 2], int(splits[i][0]), 1 - 2 * (i % 2)) for i in range(4)]
    p95 = _abs_quantiles(gap, batch.real, _gap_keys(gap, correct, out=scratch), subsets, 0.95)
    out: dict[str, float] = {"cast/gap_nonfinite_count": float(batch.n_nonfinite_gap)}
    out["cast/gap_mean"], out["cast/gap_std"] = _pooled_mean_std(splits + zeros)
    out["cast/gap_abs_p95"] = p95[0]
    for i, (cls_name, sign_name) in enumerate(_SPLITS):
        n_cls = n_class[i // 2]
        key = f"cast/gap_{cls_name}_{sign_name}"
        out[f"{key}_frac"] = splits[i][0] / n_cls if n_cls else NAN
        out[f"{key}_mean"], out[f"{key}_std"] = _pooled_mean_std([splits[i]])
        out[f"{key}_abs_p95"] = p95[1 + i]
    return out


def flip_metrics(down: torch.Tensor, up: torch.Tensor, batch: PreparedBatch) -> dict[str, float]:
    """Shares of flipped tokens (the paper's Table 9 and more), all over valid (unmasked) tokens.

    `down` (B, T) bool: correct-path negative reversals (B > 0, g < 0, Eq. 10); `up`: incorrect-path
    positive reversals (B < 0, g > 0, Eq. 12); both hold valid tokens only. `frac_flipped` and
    `frac_flipped_incorrect_positive` are shares of all valid tokens (Table 9: 26.4 % and 7.0 %);
    `flip_frac_correct` / `flip_frac_wrong` are shares of the valid tokens of correct / wrong
    rollouts. Counted per row first, then split on (B,) vectors.
    """
    real_rows = batch.mask.sum(dim=1).long()  # mask is fp32 in {0, 1}: exact counts
    down_rows, up_rows = torch.count_nonzero(down, dim=1), torch.count_nonzero(up, dim=1)
    flip_rows = down_rows + up_rows
    correct = batch.groups.correct
    n_real = int(real_rows.sum().item())

    def share(count: torch.Tensor, n: int) -> float:
        return float(count.sum().item()) / n if n else NAN

    out = {
        "cast/frac_flipped": share(flip_rows, n_real),
        "cast/frac_flipped_correct_negative": share(down_rows, n_real),
        "cast/frac_flipped_incorrect_positive": share(up_rows, n_real),
        "cast/flip_down_count": float(down_rows.sum().item()),
        "cast/flip_up_count": float(up_rows.sum().item()),
    }
    for name, rows in (("correct", correct), ("wrong", ~correct)):
        out[f"cast/flip_frac_{name}"] = share(flip_rows[rows], int(real_rows[rows].sum().item()))
    return out
