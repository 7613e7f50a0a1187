"""`castrl bench placement` and its report section: cells keyed by style, the AUC's bootstrap interval, and
the section's computed answers."""

from __future__ import annotations

import math
import random

import pytest

from castrl.bench.common.cells import save_cell
from castrl.bench.report.placement import auc_interval, placement_sections
from castrl.bench.suites.placement import PlacementArguments, placement_cell


def test_cells_differ_by_style_and_name_every_placement():
    one, cot = placement_cell("oneshot"), placement_cell("cot")
    assert one.key() != cot.key() and one.tier == "smollm2" and one.method == "placement"
    assert one.config["placement"]["teachers"] == (
        "answer_free@last_user", "answer_free@every_user", "answer_free@assistant_prefix")
    assert PlacementArguments(styles="cot").style_list() == ["cot"]
    with pytest.raises(ValueError, match="--styles"):
        PlacementArguments(styles="fewshot").style_list()


def _groups(n_groups: int, separated: bool, seed: int = 0):
    rng = random.Random(seed)
    score, correct, group = [], [], []
    for g in range(n_groups):
        for i in range(8):
            ok = i < 4
            score.append((1.0 if ok else -1.0) + 0.1 * rng.random() if separated else rng.gauss(0, 1))
            correct.append(ok)
            group.append(g)
    return score, correct, group


def test_auc_interval_separated_random_and_empty():
    auc, lo, hi, pairs, ties = auc_interval(*_groups(6, True), resamples=200)
    assert (auc, lo, hi, pairs, ties) == (1.0, 1.0, 1.0, 6 * 16, 0)
    auc, lo, hi, pairs, _ = auc_interval(*_groups(12, False, seed=3), resamples=200)
    assert lo < auc < hi and lo < 0.5 < hi  # no preference: the interval covers 0.5
    nan = auc_interval([0.1, float("nan")], [True, False], [0, 0])
    assert math.isnan(nan[0]) and nan[3] == 0  # the only wrong rollout had no valid token
    stored = auc_interval([0.1, None, -0.2], [True, False, False], [0, 0, 0], resamples=20)
    assert stored[:4] == (1.0, 1.0, 1.0, 1)  # a cell stores NaN as null: left out the same way


def _cell(style: str, separated: bool) -> dict:
    score, correct, group = _groups(8, separated)
    pooled = {"fp32": {"abs_delta_p95": 1e-6, "frac_flips_below_p95": 0.0},
              "bf16": {"abs_delta_p95": 0.05, "frac_flips_below_p95": 0.8, "frac_sign_changed": 0.01}}
    teacher = {"rollout_mean_gap": score, "advantages": {"frac_down": 0.6}, "cast_metrics": {"cast/frac_flipped": 0.4},
               "noise_floor": {"pooled": pooled}}
    return {"teachers": {f"answer_free@{p}": teacher for p in ("last_user", "every_user", "assistant_prefix")},
            "rollouts": {"correct": correct, "group": group}, "groups": {"frac_mixed": 1.0}, "wall_s": 10.0,
            "threads": 2}


def test_section_answers_from_the_cells(tmp_path, monkeypatch):
    monkeypatch.setattr("castrl.bench.report.placement.BOOTSTRAP", 100)
    assert placement_sections(str(tmp_path)) == []
    save_cell(placement_cell("oneshot"), _cell("oneshot", True), tmp_path)
    save_cell(placement_cell("cot"), _cell("cot", False), tmp_path)
    text = "\n".join(placement_sections(str(tmp_path)))
    assert "### `oneshot` prompt" in text and "### `cot` prompt" in text
    assert "`last_user` above 0.5" in text  # separated rollouts
    assert "`assistant_prefix` not distinguishable from 0.5" in text  # random ones
    assert "below the fp32-vs-bf16 difference: `last_user` 80.0%" in text
