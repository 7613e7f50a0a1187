"""`castrl diagnose`'s verdict on the cases its AUC alone misreads: a teacher whose gap is 0 on every token
(AUC 0.500 from ties alone), a share of tied pairs, and the positive control's own no-signal point, which
must anchor nothing. Also: the control curve equals the cached control cells, and every verdict stored in
the cell cache is the one today's rule computes from the numbers stored beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from castrl.bench.report.diagnosis import _stored_diagnoses, rerender_verdicts
from castrl.core import CastConfig
from castrl.diagnostics.analysis import analyze, prepare
from castrl.diagnostics.separation import rollout_gap_auc, sequence_separation
from castrl.diagnostics.verdict import (
    ANCHORS,
    CONTROL_CURVE,
    NO_SIGNAL,
    TIE_CAVEAT,
    control_evidence,
    control_summary,
    gap_verdict,
    has_signal,
    stored_tie_share,
    stored_zero_gap_share,
    verdict_of,
)

CELLS = Path(__file__).resolve().parents[1] / "bench" / "cells"
REWARDS = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
GROUPS = torch.tensor([0, 0, 1, 1, 1, 1])
MASK = torch.tensor([[1, 1, 1, 0]] * 6, dtype=torch.float)


def test_a_gap_of_zero_everywhere_is_no_teacher_signal():
    """The control's self-teacher: the student's prompt under the student's weights. Every pair ties, the AUC
    is 0.500 exactly, and the verdict used to say CAST 'will mostly follow the teacher's direction'."""
    student = torch.randn(6, 4)
    batch = prepare(REWARDS, GROUPS, student, student.clone(), MASK, CastConfig())
    seq = sequence_separation(batch)
    assert seq["auc_mean"] == 0.5 and seq["n_ties"] == seq["n_pairs"] == 5 and seq["tie_share"] == 1.0
    assert seq["frac_zero_gap"] == 1.0
    out = analyze(REWARDS, GROUPS, student, {"self": student.clone()}, MASK, CastConfig())
    verdict = out["teachers"]["self"]["verdict"]
    assert verdict.startswith(NO_SIGNAL + " (the gap is 0 on every valid token")
    assert "follow the teacher" not in verdict and "worse than GRPO" not in verdict


def test_ties_are_counted_and_a_large_share_gets_a_caveat():
    score = torch.tensor([0.2, 0.2, 0.5, 0.1])
    found = rollout_gap_auc(score, torch.tensor([True, False, True, False]), torch.tensor([0, 0, 1, 1]))
    assert (found.auc, found.n_pairs, found.n_ties, found.tie_share) == (0.75, 2, 1, 0.5)
    line = gap_verdict(0.62, 200, tie_share=0.5, frac_zero_gap=0.3)
    assert line.endswith("[50% of the pairs tied, each counted ½: the AUC is pulled toward 0.5]")
    assert "tied" not in gap_verdict(0.62, 200, tie_share=TIE_CAVEAT / 2)
    assert gap_verdict(0.5, 0, frac_zero_gap=1.0).startswith(NO_SIGNAL)  # no pairs, still no signal


def test_the_no_signal_point_anchors_nothing():
    """`self` (AUC 0.500, no signal) stays in CONTROL_CURVE as a record but is never quoted."""
    silent = [p for p in CONTROL_CURVE if not p.signal]
    assert [p.teacher for p in silent] == ["self"] and all(p.signal for p in ANCHORS)
    assert "AUC 0.500" not in control_summary() and "-0.183" not in control_summary()
    assert "every teacher with a signal (AUC 0.773 to 0.845)" in control_summary()
    for auc in (0.2, 0.41, 0.45, 0.5, 0.55, 0.6, 0.77, 0.8, 0.9):
        for text in (control_evidence(auc), gap_verdict(auc, 100)):
            assert "AUC 0.500 left" not in text and "-0.183" not in text, (auc, text)
    assert "the weakest teacher with a signal (AUC 0.773)" in control_evidence(0.5)
    assert "this teacher is weaker than that one" in gap_verdict(0.41, 160)
    assert "a teacher at AUC 0.845 left CAST worse than GRPO" in gap_verdict(0.87, 160)
    assert "a teacher at AUC 0.773 left" in gap_verdict(0.7729, 672)  # the point itself, rounded to 3 decimals
    assert "stronger than any" not in gap_verdict(0.8453, 672)


def _control_view():
    from castrl.bench.common.cells import load_tier
    from castrl.bench.report.views import tier_view
    from castrl.bench.tiers import control

    return tier_view(control.TIER, str(CELLS), quick=False, loader=load_tier)


def test_control_curve_is_what_the_cached_control_cells_measure():
    """Re-derived, not copied: each point's AUC and CAST − GRPO training-reward interval from the cells."""
    from castrl.bench.report.control import curve_points, late_reward, profiles

    view = _control_view()
    teachers = profiles(view)
    measured = {t: (auc, d) for t, auc, d in curve_points(view, late_reward)["cast"]}
    assert {p.teacher for p in CONTROL_CURVE} == set(measured)
    for point in CONTROL_CURVE:
        auc, d = measured[point.teacher]
        assert (round(auc, 3), round(d.mean, 3), round(d.lo, 3), round(d.hi, 3), d.n) == pytest.approx(
            (point.auc, point.delta, point.lo, point.hi, point.n), abs=1e-9)
        assert has_signal(teachers[point.teacher]) == point.signal


def test_the_control_report_marks_self_and_leaves_the_untrained_method_out(tmp_path):
    from castrl.bench.report.control import conclusions, control_sections

    view = _control_view()
    text = "\n".join(control_sections(view, tmp_path / "fig", tmp_path))
    self_row = next(line for line in text.splitlines() if line.startswith("| `self` |"))
    assert "| 1.000 | 1.000 |" in self_row and NO_SIGNAL in self_row  # tied pairs, g = 0
    assert "| `self` (AUC 0.500, no signal) |" in text
    concl = "\n".join(conclusions(view))
    assert "`opsd`" in concl.split("Left out, as they did not train")[1].split(".")[0]
    assert "(`opsd`)" not in concl.split("\n")[2]  # not the best method for staying at the start


def test_stored_verdicts_are_recomputed_from_the_stored_numbers():
    self_profile = json.loads(next((CELLS / "control" / "teachers").glob("self-*.json")).read_text())
    assert stored_zero_gap_share(self_profile) == 1.0 and stored_tie_share(self_profile) == 1.0
    assert verdict_of(self_profile).startswith(NO_SIGNAL)
    rung = {"auc": 0.765, "n_pairs": 672.0, "against_verifier": {"n_tokens": 100.0, "frac": 0.3, "frac_agree": 0.2}}
    assert stored_zero_gap_share(rung) == pytest.approx(0.5) and stored_tie_share(rung) is None
    assert verdict_of(rung) == gap_verdict(0.765, 672)
    fresh = {"sequences": {"auc_mean": 0.6, "n_pairs": 40.0, "tie_share": 0.25, "frac_zero_gap": 0.1}}
    assert verdict_of(fresh) == gap_verdict(0.6, 40, tie_share=0.25, frac_zero_gap=0.1)


def test_every_cached_verdict_is_todays():
    """Every verdict stored in the tracked cache is the one today's rule computes from the numbers stored
    beside it (after a change of rule: `castrl.bench.report.diagnosis.rerender_verdicts("bench/cells")`)."""
    stale = [(path.name, stored["verdict"][:60]) for path in sorted(CELLS.glob("*/*/*.json"))
             for stored in _stored_diagnoses(json.loads(path.read_text())) if stored["verdict"] != verdict_of(stored)]
    assert not stale


def test_rerender_verdicts_replaces_the_verdict_strings_only(tmp_path):
    folder = tmp_path / "control" / "teachers"
    folder.mkdir(parents=True)
    source = next((CELLS / "control" / "teachers").glob("self-*.json"))
    profile = json.loads(source.read_text())
    profile["verdict"] = "the teacher's gap barely separates correct from wrong rollouts: follow the teacher"
    (folder / source.name).write_text(json.dumps(profile, indent=1) + "\n")
    before = (folder / source.name).read_text()
    assert rerender_verdicts(tmp_path) == [folder / source.name]
    after = (folder / source.name).read_text()
    assert json.loads(after)["verdict"] == verdict_of(profile)
    assert [a for a in after.splitlines() if '"verdict"' not in a] == [b for b in before.splitlines()
                                                                       if '"verdict"' not in b]
    assert rerender_verdicts(tmp_path) == []  # idempotent


def test_the_diagnose_report_shows_tied_pairs():
    from castrl.diagnostics.report import _sequence_table

    student = torch.randn(6, 4)
    results = analyze(REWARDS, GROUPS, student, {"self": student.clone(), "t": student + 0.1 * torch.randn(6, 4)},
                      MASK, CastConfig())
    table = _sequence_table(results)
    ties, zeros = table.header.index("tied pairs (mean gap)"), table.header.index("tokens with g = 0")
    rows = {row[0]: row for row in table.rows}
    assert (rows["self"][ties], rows["self"][zeros]) == ("100.0 %", "100.0 %")
    assert (rows["t"][ties], rows["t"][zeros]) == ("0.0 %", "0.0 %")


def test_a_recomputed_verdict_keeps_the_noise_floor_clause():
    """The pipeline appends `noise.noise_warning` to a verdict; recomputing it from stored numbers keeps it."""
    from castrl.diagnostics.noise import noise_warning

    floor = {"pooled": {"fp32": {"frac_flips_below_p95": 0.3, "abs_delta_p95": 0.002}},
             "variants": {"one_row": {"precision": "fp32"}}}
    clause = noise_warning(floor)
    assert clause and clause.startswith("30% of CAST's flips")
    stored = {"auc": 0.6, "n_pairs": 80.0, "noise_floor": floor, "verdict": "old"}
    assert verdict_of(stored) == f"{gap_verdict(0.6, 80)}; {clause}"
    copied = {"auc": 0.6, "n_pairs": 80.0, "verdict": f"an older rule's line; {clause}"}  # no numbers stored
    assert verdict_of(copied) == f"{gap_verdict(0.6, 80)}; {clause}"
