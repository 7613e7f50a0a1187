"""The report's one rule of a finding, on the cases a review found misreported: a steps-to-reach target at or
below the start, two-seed and zero-width intervals worded as findings, intervals past what an accuracy can
take, and a method that never trained compared with the baseline."""

from __future__ import annotations

import math

import pytest

from castrl.bench.report.cells import TierView, steps_to_reach
from castrl.bench.report.results import accuracy_tables, headline, reach_table, verdict
from castrl.reporting.findings import (
    ACCURACY,
    BETTER,
    FEW_SEEDS,
    LEVEL,
    UNTRAINED,
    ZERO,
    Comparison,
    compare,
    did_not_train,
)
from castrl.reporting.stats import Interval, fmt_ci, mean_ci


def _cell(method: str, seed: int, curve: dict[int, float], trained: bool = True) -> dict:
    adv = 0.7 if trained else 0.0
    steps = [{"step": k, "reward": 0.3, "cast/frac_nonzero_adv": adv, "cast/adv_min": -adv, "cast/adv_max": adv,
              "grad_norm": 0.5 if trained else 0.0} for k in range(1, 5)]
    return {"method": method, "seed": seed, "evals": [{"step": k, "accuracy": v} for k, v in curve.items()],
            "steps": steps, "timing": {"step_s": 1.0}, "invocation": "a"}


def _view(cells: dict[str, dict[int, dict]]) -> TierView:
    return TierView("control", "t", "c", cells, [], baseline="grpo", headline="cast")


# --- steps to reach the baseline's final accuracy ---------------------------------------------------------


def test_no_target_when_the_baseline_ends_below_its_start():
    """The control's case: grpo starts at 0.303 and ends at 0.268, so every method 'reached' 0.268 at step 0
    and the headline printed 0.00× the budget beside the target ≤ 0.6×."""
    start = 0.303
    cells = {m: {s: _cell(m, s, {0: start, 10: 0.26 + 0.005 * s, 20: 0.268 + 0.002 * s}) for s in range(3)}
             for m in ("grpo", "cast")}
    view = _view(cells)
    table = "\n".join(reach_table(view))
    assert "No target" in table and "not above the start (0.303 at step 0)" in table
    assert "÷ grpo budget" not in table and "0.00" not in table  # no ratio, no table
    head = "\n".join(headline(view, {}))
    assert "no target: grpo ended at 0.270, not above the start (0.303); no ratio" in head
    assert "× the budget" not in head


def test_step_zero_never_reaches_and_a_target_above_the_start_gives_a_ratio():
    rec = {"evals": [{"step": 0, "accuracy": 0.5}, {"step": 10, "accuracy": 0.2}, {"step": 20, "accuracy": 0.6}]}
    assert steps_to_reach(rec, 0.4) == 20  # step 0's 0.5 does not count
    cells = {"grpo": {s: _cell("grpo", s, {0: 0.3, 10: 0.35, 20: 0.4}) for s in range(3)},
             "cast": {s: _cell("cast", s, {0: 0.3, 10: 0.45, 20: 0.5}) for s in range(3)}}
    view = _view(cells)
    table = "\n".join(reach_table(view))
    assert "above the start (0.300)" in table and "| cast | 10.0 | 3/3 | 0.50 |" in table
    assert "0.50× the budget (3/3 seeds reach it)" in "\n".join(headline(view, {}))


# --- fewer than 3 seeds, zero width, clipping ----------------------------------------------------------------


def test_two_seeds_are_never_worded_as_a_finding():
    """smollm2's case: two seeds whose Δ interval excludes 0 were printed 'worse than grpo'."""
    cells = {"grpo": {s: _cell("grpo", s, {0: 0.5, 10: 0.6 + 0.01 * s}) for s in range(3)},
             "cast": {s: _cell("cast", s, {0: 0.5, 10: 0.4 + 0.012 * s}) for s in range(2)}}
    view = _view(cells)
    lines = "\n".join(verdict(view))
    assert "worse than" not in lines and "better than" not in lines
    assert "`cast` − `grpo` on held-out accuracy at step 10: paired Δ -0.199 [" in lines
    assert "(n = 2, not a finding)" in lines
    head = "\n".join(headline(view, {}))
    assert "(n = 2, not a finding)" in head  # the headline row says so instead of reading as a loss
    assert "(n = 2, not a finding)" in "\n".join(accuracy_tables(view))


def test_a_seed_whose_pair_ran_on_two_devices_is_left_out_and_named():
    """smollm2 v2's case: seed 0 of grpo ran on the CPU and of cast on a GPU; same seed, no shared randomness,
    so it is no pair: three 'paired' seeds were a finding, the two real pairs are not."""
    gpu = {"versions": {"device": "cuda (NVIDIA H200)"}}
    cells = {"grpo": {s: _cell("grpo", s, {0: 0.5, 10: 0.6 + 0.01 * s}) for s in range(3)},
             "cast": {s: {**_cell("cast", s, {0: 0.5, 10: 0.4 + 0.012 * s}), **(gpu if s == 0 else {})}
                      for s in range(3)}}
    found = compare(cells, "cast", "grpo", lambda r: r["evals"][-1]["accuracy"])
    assert found.cross_device == (0,) and found.interval.n == 2 and found.status == FEW_SEEDS
    assert "seed 0 left out: the pair ran on two devices" in found.text()
    same = {m: {s: {**r, **gpu} for s, r in seeds.items()} for m, seeds in cells.items()}  # all on one GPU
    assert compare(same, "cast", "grpo", lambda r: r["evals"][-1]["accuracy"]).is_finding
    alone = {"grpo": {0: cells["grpo"][0]}, "cast": {0: cells["cast"][0]}}
    assert compare(alone, "cast", "grpo", lambda r: 0.0).text() == "- (seed 0 left out: the pair ran on two devices)"
    lines = "\n".join(verdict(_view(cells)))
    assert "worse than" not in lines and "seed 0 left out" in lines


def test_zero_width_intervals_are_not_findings_and_wide_ones_are_clipped():
    """'-0.094 [-0.094, -0.094]' (two seeds that agree) and '0.333 ± 2.118' (an accuracy past [0, 1])."""
    assert Comparison(Interval(-0.094, 0.0, 2)).status == FEW_SEEDS
    zero = Comparison(Interval(-0.094, 0.0, 4))
    assert zero.status == ZERO and not zero.is_finding
    assert zero.text() == "-0.094 [-0.094, -0.094] (zero-width interval, n = 4, not a finding)"
    assert fmt_ci(Interval(0.333, 2.118, 2), bounds=ACCURACY) == "0.333 [0.000, 1.000] (clipped)"
    assert fmt_ci(Interval(0.412, 0.031, 5), bounds=ACCURACY) == "0.412 ± 0.031"  # inside: unchanged
    assert Comparison(Interval(-0.292, 2.118, 2)).text() == "-0.292 [-1.000, +1.000] (clipped; n = 2, not a finding)"
    assert fmt_ci(Interval(0.0, 1e-9, 5), bounds=ACCURACY) == "0.000 ± 0.000"  # float noise is not clipping
    assert Comparison(Interval(0.05, 0.01, 3)).status == BETTER
    assert Comparison(Interval(0.05, 0.10, 3)).status == LEVEL
    # constant offsets over 3 seeds: zero width, so the sentence is not a finding either
    cells = {"grpo": {s: _cell("grpo", s, {0: 0.5, 10: 0.5 + 0.05 * s}) for s in range(3)},
             "cast": {s: _cell("cast", s, {0: 0.5, 10: 0.6 + 0.05 * s}) for s in range(3)}}
    lines = "\n".join(verdict(_view(cells)))
    assert "better than" not in lines and "zero-width interval, n = 3, not a finding" in lines


def test_accuracy_tables_clip_two_seed_intervals():
    cells = {"grpo": {s: _cell("grpo", s, {0: 0.5, 10: 0.6}) for s in range(3)},
             "cast": {0: _cell("cast", 0, {0: 0.5, 10: 0.1}), 1: _cell("cast", 1, {0: 0.5, 10: 0.9})}}
    text = "\n".join(accuracy_tables(_view(cells)))
    assert "| cast | 2 | 0.500 ± 0.000 | 0.500 [0.000, 1.000] (clipped) |" in text
    assert mean_ci([0.1, 0.9]).half > 1  # the interval the table would have printed


# --- a method that did not train ---------------------------------------------------------------------------


def test_a_method_that_never_trained_is_named_and_not_compared():
    """The control's `opsd` with the self-teacher: advantage 0 and grad-norm 0 at all 80 steps, yet the
    headline said it beat grpo (its accuracy stayed at the start while grpo's fell)."""
    cells = {"grpo": {s: _cell("grpo", s, {0: 0.30, 10: 0.26 + 0.003 * s}) for s in range(5)},
             "cast": {s: _cell("cast", s, {0: 0.30, 10: 0.25 + 0.004 * s}) for s in range(5)},
             "opsd": {s: _cell("opsd", s, {0: 0.30, 10: 0.30}, trained=False) for s in range(5)}}
    assert did_not_train(cells["opsd"][0]) and not did_not_train(cells["grpo"][0])
    view = _view(cells)
    lines = verdict(view)
    opsd = next(line for line in lines if "`opsd`" in line)
    assert "did not train" in opsd and "better" not in opsd and "Δ" not in opsd
    assert lines[-1] == opsd  # after every comparison
    assert compare(view.cells, "opsd", "grpo", lambda r: 0.0).status == UNTRAINED
    diffs = "\n".join(accuracy_tables(view)).split("Paired difference")[1]
    assert "| opsd | did not train |" in diffs
    table = "\n".join(reach_table(view))
    assert "No target" in table  # grpo ended below its start here too


def test_did_not_train_reads_columnar_steps_and_needs_every_step_idle():
    columns = {"step": [1, 2, 3], "grad_norm": [0.0, 0.0, 0.0], "cast/frac_nonzero_adv": [0.0, 0.0, None]}
    assert did_not_train({"steps": {"columns": columns}})
    moving = {"steps": [{"step": 1, "grad_norm": 0.0, "cast/frac_nonzero_adv": 0.0},
                        {"step": 2, "grad_norm": 0.3, "cast/frac_nonzero_adv": 0.5}]}
    assert not did_not_train(moving) and not did_not_train({"steps": []})
    zero_adv = {"steps": [{"step": 1, "grad_norm": 0.1, "cast/adv_min": 0.0, "cast/adv_max": 0.0}]}
    assert did_not_train(zero_adv)


def test_comparison_sentences_cover_every_status():
    iv = Interval(-0.1, 0.02, 5)
    assert Comparison(iv).sentence("a", "b", "x").startswith("- `a` is worse than `b` on x (paired Δ -0.100 [")
    assert "not distinguishable from" in Comparison(Interval(0.0, 0.02, 5)).sentence("a", "b", "x")
    assert Comparison(Interval(math.nan, math.nan, 0)).text() == "-"
    idle = Comparison(iv, untrained=("b",)).sentence("a", "b", "x")
    assert "`b` did not train" in idle and "`a` is not compared with `b`" in idle


@pytest.mark.parametrize("name", ["cast@gap_control=shuffle", "cast@gap_control=shuffle@teacher_model=sft+500"])
def test_methods_with_extra_knobs_are_reported(name):
    cells = {"grpo": {s: _cell("grpo", s, {0: 0.3, 10: 0.35 + 0.01 * s}) for s in range(3)},
             "cast": {s: _cell("cast", s, {0: 0.3, 10: 0.36 + 0.012 * s}) for s in range(3)},
             name: {s: _cell(name, s, {0: 0.3, 10: 0.30 + 0.011 * s}) for s in range(3)}}
    lines = "\n".join(verdict(_view(cells)))
    assert f"`{name}` is worse than `grpo`" in lines
