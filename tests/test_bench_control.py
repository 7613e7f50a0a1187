"""The positive-control tier: its grid, the teacher ladder, each teacher's diagnosis, a cell with an external
teacher rung, and the report's gain-vs-AUC section (tiny random models standing in for the SFT models)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from castrl.bench.common.cells import make_cells, read_cell
from castrl.bench.common.grid import run_grid
from castrl.bench.common.tier import cell_config
from castrl.bench.common.tiny_sft import SFTSettings
from castrl.bench.report.cells import TierView
from castrl.bench.report.control import control_sections, curve_points
from castrl.bench.tiers import control

# A miniature of the tier: a 1-layer SFT model, a 2-rung ladder, 6 diagnosis problems, one RL step.
SFT = SFTSettings(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, n_per_level=12, max_steps=4,
                  eval_every=2, monitor_n_per_level=2, batch_size=8)
SMALL = replace(control.QUICK, sft=SFT, ladder=control.LadderSettings(rungs=(2, 4), eval_every=2),
                diagnose=control.DiagnoseSpec(n_prompts=6, group_size=2), steps=1, prompts_per_step=2,
                num_generations=2, eval_every=1, train_n_per_level=4, eval_n_per_level=2, max_completion_length=8,
                eval_max_new_tokens=8)


def test_grid_pairs_every_teacher_method_with_every_teacher():
    ladder = control.LadderSettings(rungs=(5, 10))
    methods = control.grid(ladder)
    assert methods[0] == "grpo" and len(methods) == 1 + len(control.TEACHER_METHODS) * 3
    assert "rlsd@teacher_model=sft+10" in methods and "opsd" in methods
    assert [control.teacher_of(m) for m in ("grpo", "cast", "cast@flip=false@teacher_model=sft+5")] == [
        "", control.SELF, "sft+5"]


def test_the_answer_reading_teacher_is_a_knob_with_a_name_of_its_own():
    """`cast@teacher_context=with_answer` reads the hinted SFT prompt with the policy's snapshot; with a rung,
    that rung's weights; its teacher name carries `+answer`, and the report maps the name back."""
    from castrl.bench.common.tiny_sft import ANSWER_TEMPLATE
    from castrl.bench.report.control import _method_teacher, with_teacher

    config = cell_config(control.TIER, control.SETTINGS, "cast@teacher_context=with_answer")["overrides"]
    assert (config["teacher_context"], config["teacher_weights"]) == (ANSWER_TEMPLATE, "refresh:10")
    rung = "cast@flip=false@teacher_context=with_answer@teacher_model=sft+2000"
    assert [control.teacher_of(m) for m in ("cast@teacher_context=with_answer", rung)] == ["self+answer",
                                                                                          "sft+2000+answer"]
    assert control.teacher_weights_of("sft+2000+answer") == "sft+2000"
    assert control.teacher_context("self+answer") == ANSWER_TEMPLATE and control.teacher_context("self") == "student"
    assert _method_teacher(rung) == ("cast@flip=false", "sft+2000+answer")
    assert with_teacher(*_method_teacher(rung)) == rung
    assert not any("with_answer" in m for m in control.grid(control.SETTINGS.ladder))  # a knob study, not the grid


def test_every_paper_context_maps_to_the_students_prompt():
    """The teachers differ from the student by weights only, whatever context the estimator's paper pairs it with."""
    for method in ("cast", "rlsd", "opsd", "rlsd@teacher_model=sft+500"):
        config = cell_config(control.TIER, control.SETTINGS, method)["overrides"]
        assert config["teacher_context"] == "student" and config["teacher_weights"] == "refresh:10"


@pytest.mark.parametrize("rungs", [(), (0, 5), (10, 5), (5, 5)])
def test_ladder_rejects_rungs_that_are_not_increasing_positive_steps(rungs):
    with pytest.raises(ValueError, match="increasing positive"):
        control.LadderSettings(rungs=rungs)


def _student(tmp_path):
    from castrl.testing import save_tiny_model

    return save_tiny_model(tmp_path / "student", hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64,
                           max_positions=128)


def test_ladder_checkpoints_each_rung_once_and_diagnoses_every_teacher(tmp_path):
    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(1)
    student = _student(tmp_path)
    paths = control.teacher_ladder(SMALL, student, str(tmp_path / "scratch"), progress=False)
    assert list(paths) == ["sft+2", "sft+4"] and all((p / "config.json").exists() for p in paths.values())
    info = json.loads((paths["sft+2"].parent / control.LADDER_INFO_FILE).read_text())
    assert [h["step"] for h in info["history"]] == [2, 4] and set(info["monitor_accuracy"]) == {"sft+2", "sft+4"}
    first, last = (LlamaForCausalLM.from_pretrained(paths[n]) for n in ("sft+2", "sft+4"))
    assert not torch.equal(first.lm_head.weight, last.lm_head.weight)  # the later rung trained longer
    stamp = (paths["sft+4"] / "config.json").stat().st_mtime
    assert control.teacher_ladder(SMALL, student, str(tmp_path / "scratch"), progress=False) == paths
    assert (paths["sft+4"] / "config.json").stat().st_mtime == stamp  # cached, not retrained

    cache = tmp_path / "cells"
    own = control.characterise(SMALL, student, control.SELF, None, str(cache), str(tmp_path / "scratch"))
    rung = control.characterise(SMALL, student, "sft+4", paths["sft+4"], str(cache), str(tmp_path / "scratch"))
    # the self-teacher before RL is the student: no token has a gap, so nothing is set against the verifier
    assert own["frac_flipped"] == 0.0 and own["against_verifier"]["frac"] == 0.0
    assert rung["against_verifier"]["n_tokens"] > 0 and rung["against_verifier"]["frac"] > 0.0
    assert {"auc", "n_pairs", "verdict", "groups"} <= set(rung)
    hinted = control.characterise(SMALL, student, control.SELF + control.ANSWER, None, str(cache),
                                  str(tmp_path / "scratch"))
    # the same weights reading the reference answer: a gap on every token (the prompt differs)
    assert hinted["frac_zero_gap"] < 0.5 and hinted["teacher"] == "self+answer"
    assert len(list((cache / "control" / "teachers").glob("*.json"))) == 3
    info = json.loads((paths["sft+2"].parent / control.LADDER_INFO_FILE).read_text())
    info["heldout_accuracy"] = {"sft+4": control.rung_heldout_accuracy(SMALL, paths["sft+4"])}
    assert 0.0 <= info["heldout_accuracy"]["sft+4"] <= 1.0
    control.ladder_record_path(SMALL, str(cache)).write_text(json.dumps(info))
    notes = control.report_notes(SMALL, str(cache))
    assert any("`sft+2` " in note and "held-out problems: `sft+4` " in note for note in notes)


def test_a_cell_reads_its_rung_as_an_external_teacher(tmp_path):
    import torch

    from castrl.testing import save_tiny_model

    torch.set_num_threads(1)
    student = _student(tmp_path)
    rung = save_tiny_model(tmp_path / "rung", seed=3, hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64,
                           max_positions=128)
    ready = control.Prepared(student, {"sft+4": rung}, {"sft+4": {"auc": 0.7, "n_pairs": 3.0}})
    cells = make_cells("control", ["cast@teacher_model=sft+4"], [0], lambda m, s: cell_config(control.TIER, SMALL, m))
    outcome = run_grid(cells, lambda c: control.run_control_cell(c, SMALL, tmp_path / "scratch", ready), tmp_path,
                       progress=False)
    assert not outcome.failed, outcome.failed
    rec = read_cell(cells[0].path(tmp_path))
    assert rec["teacher"] == "sft+4" and rec["teacher_profile"]["auc"] == 0.7
    assert rec["trainer"]["teacher_model"] == str(rung)
    assert rec["config"]["overrides"]["teacher_model"] == "sft+4"  # the key names the rung, not a scratch path
    unknown = make_cells("control", ["cast@teacher_model=sft+9"], [0], lambda m, s: cell_config(control.TIER, SMALL, m))
    with pytest.raises(ValueError, match="unknown teacher 'sft\\+9'"):
        control.run_control_cell(unknown[0], SMALL, tmp_path / "scratch", ready)


def _rec(method, seed, acc, teacher="", auc=None, reward=None):
    steps = [] if reward is None else [{"step": i, "reward": 0.0 if i < 5 else reward} for i in range(1, 26)]
    return {"method": method, "seed": seed, "evals": [{"step": 0, "accuracy": 0.2}, {"step": 10, "accuracy": acc}],
            "teacher": teacher, "teacher_profile": None if auc is None else {"auc": auc, "n_pairs": 40.0},
            "steps": steps}


def test_report_pairs_each_teacher_method_with_grpo_by_seed(tmp_path):
    cells = {
        "grpo": {0: _rec("grpo", 0, 0.50), 1: _rec("grpo", 1, 0.60)},
        "cast": {0: _rec("cast", 0, 0.50, "self", 0.5), 1: _rec("cast", 1, 0.58, "self", 0.5)},
        "cast@teacher_model=sft+4": {s: _rec("cast@teacher_model=sft+4", s, a, "sft+4", 0.8)
                                     for s, a in ((0, 0.60), (1, 0.72))},
        "rlsd@teacher_model=sft+4": {0: _rec("rlsd@teacher_model=sft+4", 0, 0.55, "sft+4", 0.8)},
    }
    view = TierView("control", "t", "c", cells, [], "grpo", "cast")
    points = curve_points(view)
    assert list(points) == ["cast", "rlsd"]
    (self_t, self_auc, self_d), (rung_t, rung_auc, rung_d) = points["cast"]
    assert (self_t, self_auc, rung_t, rung_auc) == ("self", 0.5, "sft+4", 0.8)
    assert math.isclose(self_d.mean, -0.01) and math.isclose(rung_d.mean, 0.11) and rung_d.n == 2
    assert points["rlsd"][0][2].n == 1
    lines = control_sections(view, tmp_path / "fig", tmp_path)
    text = "\n".join(lines)
    assert "| `sft+4` (AUC 0.800) | +0.110 [" in text and (tmp_path / "fig" / "control_gain_vs_auc.png").exists()
    assert "(n = 2, not a finding)" in text  # two seeds: shown, never read as a finding
    assert "**From what teacher AUC does `cast` beat `grpo` (final held-out accuracy)?**" in text
    assert "`self` (AUC 0.500): -0.010 [" in text and "(training reward, last" not in text.split("### Conclusions")[1]


def test_diagnose_rejects_student_prompts_of_the_wrong_length():
    from castrl.diagnostics.pipeline import run_diagnostics
    from castrl.diagnostics.settings import DiagnoseSettings

    problems = [{"id": "a", "problem": "What is 1 + 1?", "answer": "2"}, {"id": "b", "problem": "2+2?", "answer": "4"}]
    with pytest.raises(ValueError, match="student_prompts has 1 prompts for 2 problems"):
        run_diagnostics(DiagnoseSettings(n_prompts=2, progress=False), model=object(), tokenizer=object(),
                        problems=problems, student_prompts=["Q: What is 1 + 1?\nA:"])


def test_conclusions_name_the_lowest_auc_where_the_headline_wins_and_each_comparison():
    from castrl.bench.report.control import conclusions

    grpo = {s: _rec("grpo", s, a, reward=0.5) for s, a in ((0, 0.50), (1, 0.60), (2, 0.55))}
    cells = {"grpo": grpo}
    for teacher, auc, gain in (("self", 0.5, 0.0), ("sft+1", 0.7, 0.10), ("sft+2", 0.9, 0.20)):
        for method, extra in (("cast", gain), ("cast@flip=false", gain / 2)):
            name = method if teacher == "self" else f"{method}@teacher_model={teacher}"
            noise = (0.01, -0.01, 0.0)
            cells[name] = {s: _rec(name, s, grpo[s]["evals"][-1]["accuracy"] + extra + noise[s], teacher, auc,
                                   reward=0.5 - extra + noise[s]) for s in range(3)}
    text = "\n".join(conclusions(TierView("control", "t", "c", cells, [], "grpo", "cast")))
    assert ("From AUC 0.700 (`sft+1`), the lowest teacher AUC with a signal at which the difference is a finding "
            "above 0; not at AUC 0.500.") in text
    assert "**`cast` − `cast@flip=false`** (the flip rule vs the same shaping without sign reversal; final held-out" in text
    assert "`sft+2` (AUC 0.900) +0.100 [" in text
    assert "rlsd" not in text  # no rlsd cells: that comparison is left out, not guessed
    # the reward measure (last 20 steps only: the first steps' reward 0 is outside the window)
    assert "(training reward, last 20 steps)?** At none of the teachers with a signal" in text
    assert "`sft+2` (AUC 0.900): -0.200 [" in text
