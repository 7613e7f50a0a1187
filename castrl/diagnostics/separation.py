"""Does the teacher rank a group's correct rollouts above its wrong ones? The per-rollout gap AUC that
`castrl diagnose`'s verdict reads, with the share of tied pairs behind it.

Why the ties are counted: pairs whose scores are equal count ½, so a gap that is 0 on every token gives an
AUC of exactly 0.5 without measuring anything (every pair ties). The tie share and the share of tokens
with g = 0 (`frac_zero_gap`) tell that case apart from a teacher that measured no preference.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from castrl.core.inputs import PreparedBatch

NAN = float("nan")


class GapAUC(NamedTuple):
    """`rollout_gap_auc`'s answer: the AUC, its number of (correct, wrong) pairs, and how many tied."""

    auc: float
    n_pairs: int
    n_ties: int

    @property
    def tie_share(self) -> float:
        return self.n_ties / self.n_pairs if self.n_pairs else NAN


def rollout_gap_auc(
    score: torch.Tensor, correct: torch.Tensor, group: torch.Tensor, valid: torch.Tensor | None = None
) -> GapAUC:
    """(AUC, pairs, ties): P(a correct rollout's score > a wrong rollout's of the same group), ties 1/2,
    pooled over every (correct, wrong) pair within a group (Mann-Whitney style; only mixed groups have
    such pairs, and the same problem on both sides means difficulty cannot confound it). `score`,
    `correct`, `group`: (B,); `valid` (B,) bool leaves rows out (e.g. no valid token). NaN with 0 pairs."""
    score = score.double()
    keep = torch.ones_like(correct, dtype=torch.bool) if valid is None else valid.bool()
    ok = keep & correct.bool()
    bad = keep & ~correct.bool()
    pairs = ok[:, None] & bad[None, :] & (group[:, None] == group[None, :])
    n = int(pairs.sum())
    if n == 0:
        return GapAUC(NAN, 0, 0)
    tied = score[:, None] == score[None, :]
    above = (score[:, None] > score[None, :]).double() + 0.5 * tied.double()
    return GapAUC(float(above[pairs].sum()) / n, n, int(tied[pairs].sum()))


def sequence_separation(batch: PreparedBatch) -> dict[str, float]:
    """Does the teacher prefer the correct rollouts? Per rollout, the summed gap (log u(y) - log s(y))
    and the mean gap over its valid tokens; `auc_mean` / `auc_sum` = `rollout_gap_auc` over the
    (correct, wrong) pairs of each mixed group (`n_pairs`; `n_ties` / `tie_share`: the tied pairs of the
    mean-gap AUC, the one the verdict reads), and `auc_mean_all` over every (correct, wrong) pair of the
    batch (problems mixed). `frac_zero_gap`: the share of valid tokens with g = 0 (1: no teacher signal).
    0.5 = no preference; NaN = no pairs. Rollouts without a valid token are left out."""
    real = batch.mask > 0
    n_tokens = real.sum(dim=1)
    valid = n_tokens > 0
    total = (batch.gap.double() * real).sum(dim=1)
    per_token = total / n_tokens.clamp(min=1)
    correct, group = batch.groups.correct, batch.groups.index
    out: dict[str, float] = {}
    found = GapAUC(NAN, 0, 0)
    for name, score in (("sum", total), ("mean", per_token)):
        found = rollout_gap_auc(score, correct, group, valid)
        out[f"auc_{name}"] = found.auc
        for cls, rows in (("correct", correct & valid), ("wrong", ~correct & valid)):
            out[f"{name}_gap_{cls}"] = float(score[rows].mean()) if rows.any() else NAN
    every = rollout_gap_auc(per_token, correct, torch.zeros_like(group), valid)
    n_real = int(real.sum())
    out.update(n_pairs=float(found.n_pairs), n_ties=float(found.n_ties), tie_share=found.tie_share,
               auc_mean_all=every.auc, n_pairs_all=float(every.n_pairs),
               frac_zero_gap=float((real & (batch.gap == 0)).sum()) / n_real if n_real else NAN)
    return out

