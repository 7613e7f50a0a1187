"""The benchmark harness, statistics and report on synthetic cells; the tiny tier's --quick run (slow)."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, fields, replace

import pytest

from castrl.bench.common import cells as cell_cache
from castrl.bench.common.cells import Cell, make_cells, read_cell
from castrl.bench.common.grid import run_grid
from castrl.bench.common.methods import Teacher, method_overrides, parse_methods
from castrl.bench.common.tier import trainer_config
from castrl.bench.report.cells import TierView, steps_to_reach
from castrl.bench.report.results import accuracy_tables, headline, reach_table, timing_table, verdict
from castrl.core import ADVANTAGE_ESTIMATORS, get_estimator
from castrl.reporting.stats import Interval, fmt_ci, mean_ci, paired_diff, t_cdf, t_quantile

# A tier whose model reads its own prompt for the answer-free context and a template for the reference
TEACHERS = {"answer_free": Teacher("student", "ema"), "with_reference": Teacher("Q: {problem} ({answer})")}


# --- cache keying and grid filling ---------------------------------------------------------------


def test_cell_key_depends_on_every_part_of_the_config():
    base = Cell("tiny", "cast", 0, {"settings": {"steps": 60, "lr": 1e-4}, "overrides": {"flip": True}})
    variants = [
        Cell("tiny", "cast", 1, base.config),
        Cell("tiny", "grpo", 0, base.config),
        Cell("smollm2", "cast", 0, base.config),
        Cell("tiny", "cast", 0, {"settings": {"steps": 61, "lr": 1e-4}, "overrides": {"flip": True}}),
        Cell("tiny", "cast", 0, {"settings": {"steps": 60, "lr": 1e-4}, "overrides": {"flip": False}}),
    ]
    keys = {base.key()} | {v.key() for v in variants}
    assert len(keys) == 1 + len(variants)
    # Key order in the config does not matter: the JSON is canonical.
    same = Cell("tiny", "cast", 0, {"overrides": {"flip": True}, "settings": {"lr": 1e-4, "steps": 60}})
    assert same.key() == base.key() and len(base.key()) == 16


def test_harness_version_is_part_of_the_key(monkeypatch):
    cell = Cell("tiny", "cast", 0, {"a": 1})
    before = cell.key()
    monkeypatch.setattr(cell_cache, "HARNESS_VERSION", cell_cache.HARNESS_VERSION + 1)
    assert cell.key() != before


def test_run_grid_fills_only_missing_cells_and_does_not_cache_crashes(tmp_path):
    cells = make_cells("tiny", ["grpo", "cast"], [0, 1], lambda m, s: {"m": m})
    assert [(c.method, c.seed) for c in cells] == [("grpo", 0), ("cast", 0), ("grpo", 1), ("cast", 1)]
    calls = []

    def run(cell):
        calls.append((cell.method, cell.seed))
        if cell.method == "cast" and cell.seed == 1:
            raise RuntimeError("boom")
        return {"evals": [{"step": 0, "accuracy": 0.5}]}

    first = run_grid(cells, run, tmp_path, progress=False)
    assert len(first.ran) == 3 and len(first.failed) == 1 and not first.cached
    assert not cells[3].path(tmp_path).exists()
    record = read_cell(cells[0].path(tmp_path))
    assert record["key"] == cells[0].key() and record["method"] == "grpo" and "invocation" in record
    calls.clear()
    second = run_grid(cells, lambda c: {"evals": []}, tmp_path, progress=False)
    assert len(second.cached) == 3 and [(c.method, c.seed) for c in second.ran] == [("cast", 1)]
    assert not list(tmp_path.rglob("*.tmp"))


def test_stale_cells_are_run_again_and_overwritten(tmp_path):
    """A cell cached from other inputs (another student model) is not reused: one grid never pairs two."""
    cells = make_cells("control", ["grpo", "cast"], [0], lambda m, s: {"m": m})
    run_grid(cells, lambda c: {"student_digest": "old"}, tmp_path, progress=False)
    current = lambda record: record.get("student_digest") == "new"  # noqa: E731
    outcome = run_grid(cells, lambda c: {"student_digest": "new"}, tmp_path, progress=False, is_current=current)
    assert outcome.ran == cells and not outcome.cached
    assert {read_cell(c.path(tmp_path))["student_digest"] for c in cells} == {"new"}
    again = run_grid(cells, lambda c: {"student_digest": "other"}, tmp_path, progress=False, is_current=current)
    assert again.cached == cells and not again.ran


def test_control_cells_hold_for_their_student_only(tmp_path):
    from castrl.bench.common.tiny_sft import student_digest
    from castrl.bench.tiers import control

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.safetensors").write_bytes(b"weights one")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.safetensors").write_bytes(b"weights two")
    one, two = student_digest(tmp_path / "a"), student_digest(tmp_path / "b")
    assert one != two and len(one) == 16
    ready = control.Prepared(tmp_path / "a", student_digest=one)
    assert control.is_current({"student_digest": one}, ready)
    assert not control.is_current({"student_digest": two}, ready)
    assert not control.is_current({}, ready)  # cached before digests were recorded: another student
    assert control.TIER.is_current is control.is_current


def test_the_control_report_warns_when_cells_trained_two_students():
    from castrl.bench.report.control import student_warning

    def view(digests):
        cells = {"grpo": {s: {"student_digest": d} for s, d in enumerate(digests)}}
        return TierView("control", "t", "c", cells, [], "grpo", "grpo")

    assert student_warning(view(["a", "a", "a"])) == []
    warning = student_warning(view(["a", "a", None]))
    assert warning and "2 different SFT students" in warning[0] and "`not recorded` (1 cells)" in warning[0]


def test_run_grid_time_budget_stops_before_the_next_cell(tmp_path):
    cells = make_cells("tiny", ["grpo"], [0, 1, 2], lambda m, s: {})
    outcome = run_grid(cells, lambda c: time.sleep(0.2) or {}, tmp_path, progress=False, time_budget_s=0.1)
    assert outcome.ran == cells[:1]
    assert [c.path(tmp_path).exists() for c in cells] == [True, False, False]
    with pytest.raises(ValueError, match="--time_budget must be a positive number"):
        run_grid(cells, lambda c: {}, tmp_path, progress=False, time_budget_s=-1.0)


def test_methods_change_one_thing_relative_to_their_estimator():
    cast = method_overrides("cast", TEACHERS)
    assert cast == {"advantage_estimator": "cast", "teacher_context": "student", "teacher_weights": "ema"}
    assert method_overrides("cast@flip=false", TEACHERS) == {**cast, "flip": False}
    assert method_overrides("cast@mixed_only=true", TEACHERS) == {**cast, "mixed_only": True}
    # a knob naming one of the paper's contexts gets the tier's realisation of it
    assert method_overrides("cast@teacher_context=with_reference", TEACHERS) == {
        **cast, "teacher_context": "Q: {problem} ({answer})"}
    assert method_overrides("cast@teacher_weights=refresh:5", TEACHERS) == {**cast, "teacher_weights": "refresh:5"}
    assert method_overrides("dr_grpo@loss_type=dr_grpo", TEACHERS) == {
        "advantage_estimator": "dr_grpo", "loss_type": "dr_grpo"}
    rlsd = method_overrides("rlsd", TEACHERS)
    assert rlsd == {"advantage_estimator": "rlsd", "teacher_context": "Q: {problem} ({answer})",
                    "teacher_weights": "refresh:10"}
    assert method_overrides("grpo", TEACHERS) == {"advantage_estimator": "grpo"}


def test_teachers_follow_the_registry_pairing_by_default():
    """Without tier teachers every estimator with a teacher gets its paper context and refresh:10."""
    for name in ADVANTAGE_ESTIMATORS.names():
        spec = get_estimator(name)
        out = method_overrides(name)
        if spec.needs_teacher:
            assert out == {"advantage_estimator": name, "teacher_context": spec.paper_teacher_context,
                           "teacher_weights": "refresh:10"}, name
        else:
            assert out == {"advantage_estimator": name}, name


def test_every_estimator_field_is_a_knob_of_its_estimator():
    """Knob fields come from the registry: every field of every registered config class parses."""
    for name in ADVANTAGE_ESTIMATORS.names():
        for f in fields(get_estimator(name).config_cls):
            value = json.loads(json.dumps(f.default))  # tuples (bands) come back as lists
            assert method_overrides(f"{name}@{f.name}={json.dumps(f.default)}")[f.name] == value, (name, f.name)


def test_knob_methods_change_the_named_fields_only():
    cast = method_overrides("cast", TEACHERS)
    assert method_overrides("cast@lam=0.5", TEACHERS) == {**cast, "lam": 0.5}
    assert method_overrides("cast@flip_margin=0.223@flip=false", TEACHERS) == {
        **cast, "flip_margin": 0.223, "flip": False}
    assert method_overrides("cast@shaping_cutoff_step=null", TEACHERS)["shaping_cutoff_step"] is None
    assert method_overrides("cast@teacher_weights=frozen@band_pos=[0.9,1.1]", TEACHERS)["band_pos"] == [0.9, 1.1]
    assert method_overrides("cast@teacher_context=self_teach@teacher_weights=frozen", TEACHERS) == {
        **cast, "teacher_context": "self_teach", "teacher_weights": "frozen"}
    assert method_overrides("rlrt@rlrt_lam=0.25")["rlrt_lam"] == 0.25
    with pytest.raises(ValueError, match="bad knob 'lamda=1'.*expected field=value"):
        method_overrides("cast@lamda=1", TEACHERS)
    with pytest.raises(ValueError, match="bad knob 'lam'"):
        method_overrides("cast@lam", TEACHERS)
    with pytest.raises(ValueError, match="bad knob 'tau_neg=20'"):  # spec v1's knob
        method_overrides("cast@tau_neg=20", TEACHERS)
    # another estimator's field, or a teacher knob of an estimator without a teacher, is refused
    with pytest.raises(ValueError, match=r"bad knob 'lam=0.5'.*\('lam' is a field of cast\)"):
        method_overrides("grpo@lam=0.5", TEACHERS)
    with pytest.raises(ValueError, match="bad knob 'teacher_context=student'"):
        method_overrides("grpo@teacher_context=student", TEACHERS)
    with pytest.raises(ValueError, match="unknown estimator 'bogus'.*registered estimators: cast, dr_grpo"):
        method_overrides("bogus@lam=1", TEACHERS)
    with pytest.raises(ValueError, match="unknown estimator 'cast_noflip'"):  # v1's method names
        method_overrides("cast_noflip", TEACHERS)


def test_parse_methods_rejects_unknown_names_listing_valid_ones():
    grid = ("grpo", "cast", "cast@flip=false")
    assert parse_methods(None, grid, TEACHERS) == grid and parse_methods("all", grid, TEACHERS) == grid
    assert parse_methods("rlsd, cast@lam=0", grid, TEACHERS) == ("rlsd", "cast@lam=0")
    with pytest.raises(ValueError, match="registered estimators: cast, dr_grpo"):
        parse_methods("grpo,cast_bogus", grid, TEACHERS)
    with pytest.raises(ValueError, match="--methods is empty"):
        parse_methods(",", grid, TEACHERS)


def test_cell_file_names_are_safe():
    cell = Cell("tiny", "cast@teacher_weights=refresh:5", 3, {})
    assert cell.slug() == "cast@teacher_weights=refresh_5-s3"
    assert cell.path("c").name == f"cast@teacher_weights=refresh_5-s3-{cell.key()}.json"


def test_every_tiny_method_builds_a_valid_trainer_config(tmp_path):
    from castrl.bench.tiers import tiny

    assert "cast@flip_margin=0.223" in tiny.TIER.methods and "rlrt" in tiny.TIER.methods
    for method in tiny.TIER.methods:
        cfg = trainer_config(tiny.QUICK, method_overrides(method, tiny.TEACHERS), 0, str(tmp_path))
        assert cfg.max_steps == tiny.QUICK.steps and cfg.num_generations == tiny.QUICK.num_generations
        assert cfg.teacher_ema_decay == tiny.QUICK.teacher_ema_decay
        assert cfg.per_device_train_batch_size == tiny.QUICK.prompts_per_step * tiny.QUICK.num_generations
        cfg.estimator_config()  # every knob is a valid value of its field


def test_smollm2_runs_the_papers_methods_with_the_papers_teachers(tmp_path):
    from castrl.bench.tiers import smollm2

    assert smollm2.TIER.methods == (
        "grpo", "cast", "cast@flip=false", "cast@mixed_only=true", "cast@teacher_context=with_reference",
        "cast@flip_correct=false", "cast@flip_incorrect=false", "rlsd", "rlrt", "grpo_opsd")
    for method in smollm2.TIER.methods:
        cfg = trainer_config(smollm2.SETTINGS, method_overrides(method, smollm2.TIER.teachers), 1, str(tmp_path))
        assert cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps == 32
        spec = get_estimator(cfg.advantage_estimator)
        if spec.needs_teacher and "teacher_context" not in method:
            assert cfg.teacher_context == spec.paper_teacher_context and cfg.teacher_weights == "refresh:10"
    assert method_overrides("cast@teacher_context=with_reference", smollm2.TIER.teachers)["teacher_context"] == (
        "with_reference")
    with pytest.raises(ValueError, match="must be a multiple of micro_batch"):
        replace(smollm2.SETTINGS, micro_batch=24).batch_layout()


def test_a_tier_must_contain_its_baseline_and_headline():
    from castrl.bench.tiers import smollm2

    with pytest.raises(ValueError, match="baseline 'dr_grpo' is not in its methods"):
        replace(smollm2.TIER, baseline="dr_grpo")
    with pytest.raises(ValueError, match="bad knob 'tau_pos=20'"):
        replace(smollm2.TIER, methods=(*smollm2.TIER.methods, "cast@tau_pos=20"))


def test_tiny_list_prints_cells_without_training(tmp_path, capsys):
    from castrl.bench import main as bench_main

    assert bench_main(["tiny", "--list", "--seeds", "2", "--methods", "grpo,cast", "--cells_dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all("missing" in line for line in lines)
    assert not (tmp_path / "tiny_sft").exists()
    with pytest.raises(ValueError, match="--seeds must be >= 1"):
        bench_main(["tiny", "--list", "--seeds", "0", "--cells_dir", str(tmp_path)])


def test_tiny_cells_run_one_step_and_record_the_rule(tmp_path):
    """A few tier methods, one RL step each on a random tiny model standing in for the SFT model: the
    tier's teacher contexts (the peer template, the answer template) work in the trainer, and each
    cached cell records the rule and the trainer's sampling settings."""
    import torch

    from castrl.bench.common.tier import cell_config
    from castrl.bench.tiers import tiny
    from castrl.testing import save_tiny_model

    torch.set_num_threads(1)
    sft = save_tiny_model(tmp_path / "sft", max_positions=128)
    settings = replace(tiny.QUICK, steps=1, prompts_per_step=2, num_generations=2, eval_every=1,
                       train_n_per_level=4, eval_n_per_level=2, max_completion_length=8, eval_max_new_tokens=8)
    methods = ["rlrt", "cast@teacher_context=with_reference", "dr_grpo@loss_type=dr_grpo"]
    cells = make_cells("tiny", methods, [0], lambda m, s: cell_config(tiny.TIER, settings, m))
    outcome = run_grid(cells, lambda c: tiny.run_tiny_cell(c, settings, tmp_path / "scratch", sft), tmp_path,
                       progress=False)
    assert not outcome.failed, outcome.failed
    for cell in cells:
        rec = read_cell(cell.path(tmp_path))
        assert rec["rule_version"] == cell_cache.RULE_VERSION and [e["step"] for e in rec["evals"]] == [0, 1]
        assert rec["trainer"]["temperature"] == 0.7 and rec["trainer"]["mask_truncated_completions"] is True
        teacher_s = rec["steps"][0].get("cast/time_teacher_s", 0.0)
        assert (teacher_s > 0) == get_estimator(cell.method.split("@")[0]).needs_teacher, cell.method
    assert read_cell(cells[2].path(tmp_path))["trainer"]["loss_type"] == "dr_grpo"


# --- statistics -------------------------------------------------------------------------------------


@pytest.mark.parametrize("df,expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)])
def test_t_quantile_matches_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=2e-4)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=2e-4)
    assert t_cdf(expected, df) == pytest.approx(0.975, abs=1e-5)


def test_mean_ci_and_paired_difference():
    iv = mean_ci([0.1, 0.2, 0.3])
    assert iv.mean == pytest.approx(0.2) and iv.n == 3
    assert iv.half == pytest.approx(t_quantile(0.975, 2) * 0.1 / math.sqrt(3))
    assert math.isnan(mean_ci([0.4]).half) and mean_ci([]).n == 0
    assert mean_ci([0.2, None, float("nan"), 0.4]).n == 2
    # Paired: a constant offset has zero-width interval even though each method's spread is large.
    a = {0: 0.9, 1: 0.1, 2: 0.5, 3: 0.7}
    b = {s: v - 0.05 for s, v in a.items()} | {9: 0.0}  # seed 9 has no partner and is ignored
    diff = paired_diff(a, b)
    assert diff.n == 4 and diff.mean == pytest.approx(0.05) and diff.half == pytest.approx(0.0, abs=1e-12)
    assert fmt_ci(Interval(0.05, 0.01, 4), signed=True) == "+0.050 [+0.040, +0.060]"
    assert fmt_ci(Interval(0.412, 0.031, 5)) == "0.412 ± 0.031" and fmt_ci(mean_ci([])) == "-"


# --- report on synthetic cells -----------------------------------------------------------------------


def _cell(method: str, seed: int, curve: dict[int, float], step_s: float, invocation: str = "inv1",
          rule: str | None = None) -> dict:
    steps = [{"step": k, "reward": 0.3, "cast/frac_nonzero_adv": 1.0 if method == "cast" else 0.6,
              "cast/frac_all_correct": 0.2, "cast/frac_all_wrong": 0.3, "cast/frac_mixed": 0.5,
              "step_time": step_s} for k in range(1, 7)]
    rec = {"method": method, "seed": seed, "config": {"settings": {"x": 1}},
           "evals": [{"step": k, "accuracy": v} for k, v in curve.items()], "steps": steps,
           "timing": {"step_s": step_s, "rollout_s": step_s / 2, "train_s": step_s / 2}, "wall_s": 10.0,
           "invocation": invocation}
    return rec if rule is None else {**rec, "rule_version": rule}


def _view(rule: str | None = None) -> TierView:
    rng = random.Random(0)
    cells: dict[str, dict[int, dict]] = {"grpo": {}, "cast": {}, "cast@flip=false": {}}
    for seed in range(4):
        noise = rng.uniform(-0.02, 0.02)
        cells["grpo"][seed] = _cell("grpo", seed, {0: 0.3, 3: 0.35 + noise, 6: 0.40 + noise}, 1.0, rule=rule)
        jitter = (-0.01, 0.0, 0.01, 0.004)[seed]  # the seeds differ: a paired interval of non-zero width
        cells["cast"][seed] = _cell("cast", seed, {0: 0.3, 3: 0.45 + noise + jitter, 6: 0.50 + noise + jitter}, 1.2,
                                    invocation="inv1" if seed < 3 else "inv2", rule=rule)
        cells["cast@flip=false"][seed] = _cell("cast@flip=false", seed, {0: 0.3, 3: 0.31, 6: 0.32}, 1.1, rule=rule)
    return TierView("tiny", "tiny", "castrl bench tiny --seeds 4", cells, [], baseline="grpo", headline="cast")


def test_report_tables_on_synthetic_cells():
    view = _view()
    acc = "\n".join(accuracy_tables(view))
    assert "| grpo | 4 | 0.300 ± 0.000 |" in acc
    assert "| cast | +0.101 [+0.088, +0.114] | +0.101 [+0.088, +0.114] |" in acc
    reach = "\n".join(reach_table(view))
    assert "| cast | 3.0 | 4/4 | 0.50 |" in reach and "| cast@flip=false | not reached | 0/4 | - |" in reach
    timing, ratios = timing_table(view)
    # seed 3 of cast ran in another invocation than grpo's, so only 3 pairs enter the ratio
    assert ratios["cast"].n == 3 and ratios["cast"].mean == pytest.approx(1.2)
    head = "\n".join(headline(view, ratios))
    lines = "\n".join(verdict(view))
    assert "`cast` is better than `grpo` on held-out accuracy at step 6" in lines and "`cast@flip=false` is worse than `grpo`" in lines
    assert "+0.101" in head and "0.50× the budget (4/4 seeds reach it)" in head
    assert "| 100% | 1.000 ± 0.000 |" in head and "| ≤ 1.10 | 1.20 ± 0.00 |" in head


def test_report_is_built_around_the_tiers_baseline_and_headline():
    view = _view()
    view.baseline, view.headline = "cast", "cast@flip=false"
    head = "\n".join(headline(view, timing_table(view)[1]))
    assert "cast@flip=false − cast" in head and "not reached (0/4 seeds)" in head
    assert view.methods[0] == "cast" and "`grpo` is worse than `cast`" in "\n".join(verdict(view))


def test_cells_outside_the_grid_are_named_with_their_command():
    from castrl.bench.report.views import _outside_grid_note

    cells = {"grpo": {0: {}, 1: {}}, "cast@lam=0.5": {0: {}}, "cast@flip_correct=false": {0: {}, 1: {}}}
    (note,) = _outside_grid_note("smollm2", cells, ("grpo", "cast"))
    assert "`castrl bench smollm2 --seeds 1 --methods cast@lam=0.5` (1 seed)" in note
    assert "`castrl bench smollm2 --seeds 2 --methods cast@flip_correct=false` (2 seeds)" in note
    assert "grpo" not in note and _outside_grid_note("smollm2", {"grpo": {0: {}}}, ("grpo",)) == []


def test_bench_modules_import_each_other_without_a_cycle():
    """Every `castrl.bench` import, at module level or inside a function, forms no cycle (the report's
    modules used to import each other in a circle)."""
    from .layout_rules import import_graph

    graph = {name: {m for m in imports if m.startswith("castrl.bench")}
             for name, imports in import_graph("castrl.bench").items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        if state.get(module) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*path, module]))
        if state.get(module) == 2 or module not in graph:
            return
        state[module] = 1
        for dep in sorted(graph[module]):
            visit(dep, [*path, module])
        state[module] = 2

    assert "castrl.bench.report.cells" in graph["castrl.bench.report.results"]
    for module in sorted(graph):
        visit(module, [])


def test_steps_to_reach_uses_the_first_evaluation_at_or_above_target():
    """Step 0 (the starting model) never counts, even for a target at or below the start."""
    rec = {"evals": [{"step": 0, "accuracy": 0.1}, {"step": 10, "accuracy": 0.4}, {"step": 20, "accuracy": 0.3}]}
    assert steps_to_reach(rec, 0.4) == 10 and steps_to_reach(rec, 0.41) is None and steps_to_reach(rec, 0.0) == 10


def _write_cells(cache, view: TierView, settings: dict) -> None:
    from castrl.bench.tiers import tiny

    for rec in [r for m in view.cells.values() for r in m.values()]:
        rec["config"] = {"settings": settings, "overrides": method_overrides(rec["method"], tiny.TEACHERS)}
        path = Cell("tiny", rec["method"], rec["seed"], rec["config"]).path(cache)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec))


def _report(tmp_path) -> str:
    from castrl.bench.report import results as report_mod

    out = tmp_path / "docs" / "results.md"
    rc = report_mod.main(["--cells_dir", str(tmp_path / "cache"), "--out", str(out),
                          "--figures", str(tmp_path / "docs" / "figures" / "bench"), "--quick"])
    assert rc == 0
    return out.read_text()


def test_report_cli_writes_markdown_and_figures(tmp_path):
    from castrl.bench.tiers import tiny

    _write_cells(tmp_path / "cache", _view(rule=cell_cache.RULE_VERSION), asdict(tiny.QUICK))
    text = _report(tmp_path)
    assert "Reproduce: `castrl bench tiny --seeds 4 --quick && castrl bench report --quick`" in text
    assert "![tiny held-out accuracy](figures/bench/tiny_heldout.png)" in text
    assert (tmp_path / "docs" / "figures" / "bench" / "tiny_heldout.png").stat().st_size > 1000
    assert "smollm2 tier" in text and "No cells of this configuration are cached yet." in text
    assert "`student` with `ema` weights: `cast`, `cast@flip=false`" in text  # teachers read from the cells
    assert "Outside the grid" in text and "--methods cast@flip=false" in text
    assert "superseded" not in text and "### Headline" in text  # current-rule cells: no v1 banner


def test_report_marks_cells_of_the_v1_rule_superseded(tmp_path):
    from castrl.bench.tiers import tiny

    _write_cells(tmp_path / "cache", _view(rule=None), asdict(tiny.QUICK))  # no rule_version: v1 cells
    text = _report(tmp_path)
    assert text.count("v1 reconstruction (superseded)") == 1 and text.index("v1 reconstruction") < text.index("##")
    assert "## v1 (superseded) — tiny tier" in text and "### v1: Headline" in text and "### Headline" not in text
    assert "## smollm2 tier" in text  # a section without v1 cells is not marked
    # once current-rule cells of the same settings exist, the v1 ones are left out
    later = _view(rule=cell_cache.RULE_VERSION)
    later.cells = {"grpo": later.cells["grpo"], "cast": later.cells["cast"]}
    _write_cells(tmp_path / "cache2", later, asdict(tiny.QUICK))
    for path in (tmp_path / "cache2" / "tiny" / "cells").iterdir():
        path.rename(tmp_path / "cache" / "tiny" / "cells" / path.name)
    text = _report(tmp_path)
    assert "superseded" not in text and "cast@flip=false |" not in text


# --- the real thing, small ---------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_tiny_quick_end_to_end(tmp_path):
    """`castrl bench tiny --quick` trains the SFT model, runs grpo and cast for 2 seeds, and re-running
    it reads every cell from the cache."""
    from castrl.bench import main as bench_main

    cache, scratch = tmp_path / "cache", str(tmp_path / "scratch")
    assert bench_main(["tiny", "--quick", "--cells_dir", str(cache), "--scratch_dir", scratch, "--no_progress"]) == 0
    assert (tmp_path / "scratch" / "tiny_sft").is_dir() and not (cache / "tiny_sft").exists()  # weights: scratch
    assert len(list((cache / "tiny" / "sft").glob("*.json"))) == 1  # the SFT record: the cell cache
    cells = sorted((cache / "tiny" / "cells").glob("*.json"))
    assert len(cells) == 4
    rec = json.loads(cells[0].read_text())
    steps = [e["step"] for e in rec["evals"]]
    assert steps[0] == 0 and steps[-1] == rec["config"]["settings"]["steps"]
    assert rec["timing"]["step_s"] > 0 and len(rec["steps"]) == rec["config"]["settings"]["steps"]
    mtimes = {p: p.stat().st_mtime for p in cells}
    assert bench_main(["tiny", "--quick", "--cells_dir", str(cache), "--scratch_dir", scratch, "--no_progress"]) == 0
    assert {p: p.stat().st_mtime for p in cells} == mtimes
    assert bench_main(["report", "--quick", "--cells_dir", str(cache), "--output_dir", str(tmp_path)]) == 0
    assert "| cast |" in (tmp_path / "results.md").read_text()
    assert list((tmp_path / "figures" / "bench").glob("*.png"))


def test_step_metrics_are_stored_by_column_and_read_back_as_rows(tmp_path):
    """Cells keep per-step metrics column-wise with 6 significant digits; reading gives one dict per
    step, without the metrics a step did not log; cells written before packing still read."""
    steps = [{"step": 1, "reward": 0.123456789, "cast/frac_flipped": 0.25}, {"step": 2, "reward": 0.5}]
    cell = Cell("tiny", "cast", 0, {"settings": {}, "overrides": {}})
    path = cell_cache.save_cell(cell, {"steps": steps}, tmp_path)
    stored = json.loads(path.read_text())["steps"]
    assert stored == {"columns": {"step": [1, 2], "reward": [0.123457, 0.5], "cast/frac_flipped": [0.25, None]}}
    assert read_cell(path)["steps"] == [{"step": 1, "reward": 0.123457, "cast/frac_flipped": 0.25},
                                        {"step": 2, "reward": 0.5}]
    assert cell_cache.unpack_steps(steps) == steps
    assert cell_cache.load_tier(tmp_path, "tiny")[0]["steps"][1] == {"step": 2, "reward": 0.5}
