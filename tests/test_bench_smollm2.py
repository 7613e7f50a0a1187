"""smollm2 tier v2: settings -> trainer config, the final evaluation, the shared base-model cell, tuning runs,
per-method seeds, the tracked cell folder, and the report's final-evaluation sections (tiny model, fast)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from castrl.bench.common import tier as bench_tier
from castrl.bench.common.cells import DEFAULT_CACHE_DIR, make_cells, read_cell
from castrl.bench.common.final_eval import BASE_METHOD, FinalEvalSettings, paired_by_problem
from castrl.bench.common.grid import run_grid
from castrl.bench.common.methods import method_overrides
from castrl.bench.common.tier import cell_config, trainer_config
from castrl.bench.report.cells import TierView
from castrl.bench.report.final import final_sections, tuning_table
from castrl.bench.tiers import smollm2

REPO = Path(__file__).resolve().parents[1]


# --- settings -------------------------------------------------------------------------------------------


def test_v2_settings_give_the_trainer_config_of_the_issue(tmp_path):
    """Budget 128, truncation masking and spec §4 sampling (trainer defaults no cell overrides), 32 rollouts
    per step in micro-batches of 8 with gradient checkpointing, for every method of the grid."""
    s = smollm2.SETTINGS
    for method in smollm2.TIER.methods:
        cfg = trainer_config(s, method_overrides(method, smollm2.TIER.teachers), 0, str(tmp_path))
        assert cfg.max_completion_length == 128 and cfg.mask_truncated_completions is True, method
        assert (cfg.temperature, cfg.top_p, cfg.top_k) == (0.7, 0.95, 20), method
        assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (8, 4), method
        assert cfg.gradient_checkpointing is True and cfg.num_generations == 8, method
        assert (cfg.max_steps, cfg.learning_rate) == (s.steps, s.learning_rate), method
        # the trainer's default scoring paths (speed only: same advantages up to rounding, not in the key)
        assert cfg.fuse_student_pass is True and cfg.share_prompt_cache is True, method
        # transformers' generate, as every cached cell sampled (castrl's decoder draws other tokens)
        assert cfg.rollout_decoder == "transformers", method
    from castrl.bench.common.final_eval import eval_arguments

    assert eval_arguments(s.final, s.prompt_style, 0).decoder == "transformers"
    from castrl.bench.tiers import tiny

    tiny_cfg = trainer_config(tiny.QUICK, method_overrides("cast", tiny.TEACHERS), 0, str(tmp_path))
    assert (tiny_cfg.fuse_student_pass, tiny_cfg.share_prompt_cache) == (False, False)  # the v1 grids' paths


def test_v2_final_evaluation_settings():
    s = smollm2.SETTINGS
    assert s.final.max_new_tokens >= 2 * s.max_completion_length and s.final.k == 4
    assert tuple(s.final.budgets) == (32, 64, 128, 256)
    assert len(smollm2.held_out_records(s, s.final.n_per_level)) >= 192
    subset = smollm2.held_out_records(s, s.eval_n_per_level)  # the greedy checkpoints' problems
    assert {r["id"] for r in subset} <= {r["id"] for r in smollm2.held_out_records(s, s.final.n_per_level)}
    with pytest.raises(ValueError, match="largest budget must equal max_new_tokens"):
        FinalEvalSettings(max_new_tokens=256, budgets=(32, 128))


def test_base_cell_is_shared_by_methods_seeds_and_tuning_settings():
    s = smollm2.SETTINGS
    key = s.base_cell().key()
    assert replace(s, learning_rate=1e-3, steps=3, eval_every=1).base_cell().key() == key
    assert replace(s, final=replace(s.final, n_per_level=8)).base_cell().key() != key
    assert s.base_cell().method == BASE_METHOD and s.base_cell().tier == "smollm2"


def test_learning_rate_and_steps_flags_make_tuning_cells():
    args = bench_tier.parse_tier_args(smollm2.TIER, ["--methods", "grpo", "--learning_rate", "1e-4", "--steps", "7"])
    settings, methods, seeds = bench_tier.settings_from_args(smollm2.TIER, args)
    assert (settings.learning_rate, settings.steps, methods, seeds) == (1e-4, 7, ("grpo",), [0, 1, 2])
    tuned = cell_config(smollm2.TIER, settings, "grpo")
    assert tuned["settings"]["learning_rate"] == 1e-4 and tuned != cell_config(smollm2.TIER, smollm2.SETTINGS, "grpo")
    # a tuning run with the grid's values is the grid's cell (same key): nothing is run twice
    same = replace(smollm2.SETTINGS, learning_rate=float(str(smollm2.SETTINGS.learning_rate)))
    assert cell_config(smollm2.TIER, same, "grpo") == cell_config(smollm2.TIER, smollm2.SETTINGS, "grpo")
    with pytest.raises(ValueError, match="--learning_rate must be in"):
        bench_tier.parse_tier_args(smollm2.TIER, ["--learning_rate", "0"])


def test_shards_split_the_grid_without_overlap():
    """`--shard I/N` gives process I the cells I, I+N, ...: N shards cover the grid once, in grid order."""
    args = bench_tier.parse_tier_args(smollm2.TIER, [])
    _, methods, seeds = bench_tier.settings_from_args(smollm2.TIER, args)
    grid = make_cells("smollm2", methods, seeds, lambda m, s: {}, bench_tier.seeds_of(smollm2.TIER, args))
    shards = [grid[i::5] for i in (bench_tier.shard_of(f"{i}/5")[0] for i in range(5))]
    assert sorted((c.method, c.seed) for s in shards for c in s) == sorted((c.method, c.seed) for c in grid)
    assert shards[1][0] == grid[1] and shards[1][1] == grid[6]
    for bad, message in (("3", "I/N with integers"), ("a/2", "I/N with integers"), ("2/2", "0 <= I < N")):
        with pytest.raises(ValueError, match=message):
            bench_tier.parse_tier_args(smollm2.TIER, ["--shard", bad])


def test_device_is_not_in_the_key_and_cuda_must_exist(monkeypatch):
    """The device and the generate batch are how a cell runs, not what it measures: the same key on both."""
    assert "batch_size" not in asdict(smollm2.SETTINGS.final)
    monkeypatch.setattr(bench_tier, "bench_device", lambda: "cpu")
    with pytest.raises(ValueError, match="--device cuda: no CUDA device"):
        bench_tier.parse_tier_args(smollm2.TIER, ["--device", "cuda"])
    assert bench_tier.parse_tier_args(smollm2.TIER, ["--device", "cpu"]).device == "cpu"


def test_per_method_seeds():
    args = bench_tier.parse_tier_args(smollm2.TIER, [])
    _, methods, seeds = bench_tier.settings_from_args(smollm2.TIER, args)
    cells = make_cells("smollm2", methods, seeds, lambda m, s: {}, bench_tier.seeds_of(smollm2.TIER, args))
    count = {m: sum(c.method == m for c in cells) for m in methods}
    assert count["grpo"] == count["cast"] == count["cast@flip=false"] == 3 and count["rlsd"] == 2
    assert len(cells) == 3 * 3 + 7 * 2
    assert [c.seed for c in cells[:10]] == [0] * 10  # seed-major: every method's seed 0 first
    flagged = bench_tier.parse_tier_args(smollm2.TIER, ["--seeds", "1"])
    assert {bench_tier.seeds_of(smollm2.TIER, flagged)(m) for m in methods} == {1}


# --- the cell cache is tracked, weights are not ----------------------------------------------------------


def _ignored(path: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0


def test_default_cache_is_the_tracked_folder():
    assert DEFAULT_CACHE_DIR == "bench/cells" and bench_tier.TierArguments().cells_dir == "bench/cells"
    assert (REPO / "bench" / "cells").is_dir()
    assert not _ignored("bench/cells/smollm2/cells/grpo-s0-0123456789abcdef.json")
    assert _ignored(f"{bench_tier.DEFAULT_SCRATCH_DIR}/smollm2/grpo-s0/adapter_model.safetensors")
    assert _ignored(f"{bench_tier.DEFAULT_SCRATCH_DIR}/tiny_sft/abc/model.safetensors")


# --- the real path on a tiny model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The base-model cell and one 1-step grpo cell of the tier's code path, on a random tiny chat model."""
    import torch

    from castrl.testing import save_tiny_model

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("smol")
    model = save_tiny_model(tmp / "model", max_positions=128)
    settings = replace(smollm2.QUICK, model=str(model), steps=1, prompts_per_step=2, num_generations=2,
                       micro_batch=2, max_completion_length=8, eval_max_new_tokens=8, eval_n_per_level=1,
                       final=FinalEvalSettings(n_per_level=2, max_new_tokens=16, budgets=(8, 16)))
    cache = tmp / "cells"
    base = smollm2.prepare(settings, str(cache), str(tmp / "scratch"), False)
    cells = make_cells("smollm2", ["grpo"], [0], lambda m, s: cell_config(smollm2.TIER, settings, m))
    outcome = run_grid(cells, lambda c: smollm2.run_smol_cell(c, settings, tmp / "scratch", base), cache,
                       progress=False)
    assert not outcome.failed, outcome.failed
    return settings, cache, base, read_cell(cells[0].path(cache)), tmp


def test_final_evaluation_has_avg_pass_greedy_and_budgets(tiny_run):
    settings, _, base, rec, _ = tiny_run
    for final in (rec["final"], base["final"]):
        summary = final["summary"]
        assert {"avg_at_k", "pass_at_k", "maj_at_k", "greedy_accuracy", "mean_tokens"} <= set(summary)
        assert summary["n_problems"] == 2 * len(settings.levels) and final["k"] == 4
        assert [b["budget"] for b in final["budgets"]] == [8, 16] and "avg_at_k" in final["budgets"][0]
        assert final["sampling"] == {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "seed": 0}
        assert all(len(p["tokens"]) == 4 and "text" not in p for p in final["problems"])
    assert rec["final_eval_s"] > 0 and rec["base_key"] == settings.base_cell().key()
    assert [e["step"] for e in rec["evals"]] == [0, 1] and rec["trainer"]["gradient_checkpointing"] is True
    assert rec["trainer"]["fuse_student_pass"] is True and rec["trainer"]["mask_truncated_completions"] is True
    assert paired_by_problem(rec["final"], base["final"]).n == 2 * len(settings.levels)
    # how it ran, recorded beside the result (not in the key), with that device's generate batch
    import torch

    from castrl.bench.common.final_eval import EVAL_BATCH_SIZE

    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert rec["final"]["execution"] == {"device": device, "batch_size": EVAL_BATCH_SIZE[device]}
    assert rec["versions"]["device"].split(" ")[0] == device


def test_base_cell_is_computed_once_and_holds_no_weights(tiny_run, monkeypatch):
    import castrl.models

    settings, cache, base, _, tmp = tiny_run
    assert base["method"] == BASE_METHOD and settings.base_cell().path(cache).exists()
    monkeypatch.setattr(castrl.models, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("re-evaluated"))
    assert smollm2.evaluate_base(settings, str(cache), str(tmp / "scratch"), False)["key"] == base["key"]
    assert {p.suffix for p in cache.rglob("*") if p.is_file()} == {".json"}
    assert sum(p.stat().st_size for p in cache.rglob("*.json")) < 200_000


def test_final_evaluation_in_bfloat16(tiny_run):
    """The faster evaluation option: the same scoring path on a bf16 copy of the weights."""
    from castrl.bench.common.final_eval import eval_arguments, evaluate_final
    from castrl.models import load_model_and_tokenizer
    from castrl.rewards import Verifier

    settings = tiny_run[0]
    final = replace(settings.final, dtype="bfloat16")
    model, tokenizer = load_model_and_tokenizer(settings.model)
    with Verifier(use_pool=False) as verifier:
        out = evaluate_final(model, tokenizer, smollm2.held_out_records(settings, 1), eval_arguments(final, "oneshot", 0),
                             verifier)
    assert str(next(model.parameters()).dtype) == "torch.bfloat16" and out["summary"]["n_problems"] == len(settings.levels)
    with pytest.raises(ValueError, match="dtype must be float32 or bfloat16"):
        FinalEvalSettings(dtype="float16")


# --- report ----------------------------------------------------------------------------------------------


def _final(avgs: list[float], greedy: float = 0.5) -> dict:
    problems = [{"id": f"p{i}", "level": "add1", "n_correct": round(a * 4), "greedy": greedy, "tokens": [10] * 4}
                for i, a in enumerate(avgs)]
    mean = sum(round(a * 4) / 4 for a in avgs) / len(avgs)
    summary = {"avg_at_k": mean, "pass_at_k": min(1.0, 2 * mean), "maj_at_k": mean, "greedy_accuracy": greedy,
               "mean_tokens": 10.0}
    return {"k": 4, "summary": summary, "truncated_rate": 0.0, "problems": problems,
            "budgets": [{"budget": b, "avg_at_k": mean} for b in (32, 256)]}


def _rec(method: str, seed: int, avgs: list[float], lr: float = 2e-4, steps: int = 12) -> dict:
    return {"method": method, "seed": seed, "final": _final(avgs), "wall_s": 600.0,
            "evals": [{"step": 0, "accuracy": 0.3}, {"step": steps, "accuracy": 0.4}],
            "config": {"settings": {"learning_rate": lr, "steps": steps, "x": 1}}}


def test_report_final_sections_and_tuning_table():
    base = {"final": _final([0.25] * 8)}
    cells = {"grpo": {s: _rec("grpo", s, [0.5] * 8) for s in range(3)},
             "cast": {s: _rec("cast", s, [0.75] * 8 if s < 2 else [0.75] * 4 + [1.0] * 4) for s in range(3)}}
    tuning = [_rec("grpo", 0, [0.25, 0.5] * 4, lr=1e-4), _rec("grpo", 0, [0.5] * 7 + [0.75], lr=2e-4)]
    view = TierView("smollm2", "smollm2", "cmd", cells, [], "grpo", "cast", base=base, tuning=tuning)
    text = "\n".join(final_sections(view))
    assert "| base model | - | 0.250 |" in text and "| grpo | 3 | 0.500 ± 0.000 |" in text
    assert "| cast | +0.292 [+0.112, +0.471] |" in text  # paired vs grpo over seeds
    assert "+0.000 [+0.000, +0.000] (zero-width interval, n = 3, not a finding)" in text  # Pass@4: seeds agree
    assert "| +0.542 [+0.504, +0.579] |" in text  # cast vs base, by problem
    assert "+0.250 [+0.250, +0.250] (zero-width interval, n = 8, not a finding)" in text  # grpo vs base
    assert "| ≤ 32 | ≤ 256 |" in text and "Avg@4" in text
    from castrl.bench.report.results import headline, verdict

    assert "held-out Avg@4 (final evaluation), cast − grpo" in "\n".join(headline(view, {}))
    assert "`cast` is better than `grpo` on held-out Avg@4 (final evaluation)" in "\n".join(verdict(view))
    table = "\n".join(tuning_table(view))
    assert "| 0.0001 | 12 | 0 | 0.375 |" in table and "| 0.0002 | 12 | 0 | 0.531 | +0.281 [+0.207, +0.355] | yes |" in table
    assert "--learning_rate LR --steps N" in table


def test_report_finds_the_base_cell_and_tuning_runs(tmp_path):
    from castrl.bench.report.views import tier_view

    s = smollm2.SETTINGS
    records = [{**smollm2.SETTINGS.base_cell().__dict__, "key": s.base_cell().key(), "final": _final([0.5])},
               {"method": "grpo", "seed": 0, "key": "a", "config": {"settings": asdict(replace(s, learning_rate=1e-3))}},
               {"method": "grpo", "seed": 0, "key": "b", "config": {"settings": asdict(replace(s, levels=("add1",)))}},
               {"method": "cast", "seed": 0, "key": "c", "config": {"settings": asdict(replace(s, steps=3))}}]
    records = json.loads(json.dumps(records, default=str))
    view = tier_view(smollm2.TIER, str(tmp_path), quick=False, loader=lambda cache, tier: records)
    assert view.base is not None and view.base["key"] == s.base_cell().key()
    assert [r["key"] for r in view.tuning] == ["a"] and not view.cells


def test_prepare_diagnoses_the_untrained_model_once_with_every_teacher_context(tiny_run, monkeypatch):
    """The diagnosis cell: one entry per teacher context the grid trains with, on the training problems
    at the trainer's group size and budget; a second prepare reads it from the cache."""
    import castrl.diagnostics.pipeline

    settings, cache, _, _, tmp = tiny_run
    cell = settings.diagnosis_cell()
    rec = read_cell(cell.path(cache))
    assert set(rec["teachers"]) == set(smollm2.DIAGNOSIS.teachers)
    assert rec["groups"]["n_groups"] == smollm2.DIAGNOSIS.n_prompts
    assert rec["groups"]["n_rollouts"] == smollm2.DIAGNOSIS.n_prompts * settings.num_generations
    assert {"auc", "n_pairs", "against_verifier", "advantages", "verdict"} <= set(rec["teachers"]["answer_free"])
    assert rec["config"]["max_new_tokens"] == settings.max_completion_length
    monkeypatch.setattr(castrl.diagnostics.pipeline, "run_diagnostics", lambda *a, **k: pytest.fail("re-diagnosed"))
    smollm2.prepare(settings, str(cache), str(tmp / "scratch"), False)


def test_report_sets_the_diagnosis_beside_each_trained_method():
    from castrl.bench.report.cells import TierView
    from castrl.bench.report.diagnosis import diagnosis_sections

    def rec(method, seed, value, context=None, flipped=None):
        overrides = {"teacher_context": context} if context else {}
        steps = [{"step": 1, "cast/frac_flipped": flipped}] if flipped is not None else []
        return {"method": method, "seed": seed, "value": value, "config": {"overrides": overrides}, "steps": steps}

    teacher = {"auc": 0.42, "n_pairs": 30.0, "against_verifier": {"frac": 0.35}, "advantages": {"frac_down": 0.6},
               "verdict": "the teacher's gap ranks wrong rollouts above correct ones"}
    cells = {"grpo": {0: rec("grpo", 0, 0.30), 1: rec("grpo", 1, 0.40)},
             "cast": {0: rec("cast", 0, 0.20, "answer_free", 0.5), 1: rec("cast", 1, 0.36, "answer_free", 0.3)}}
    view = TierView("smollm2", "t", "c", cells, [], "grpo", "cast",
                    diagnosis={"teachers": {"answer_free": teacher}, "groups": {"n_groups": 32, "n_rollouts": 256}})
    text = "\n".join(diagnosis_sections(view, lambda r: r["value"], "Avg@4"))
    assert "| `cast` | `answer_free` | 0.420 (30) | not recorded | 0.350 | 0.600 | 0.400 | -0.070 [" in text
    assert "(n = 2, not a finding)" in text and "[only 30 pairs: a noisy estimate]" in text  # recomputed verdict
    assert "32 training problems x 8 rollouts" in text and "`grpo` |" not in text


def test_paper_section_answers_each_claim_with_paired_differences():
    from castrl.bench.report.cells import TierView
    from castrl.bench.report.paper import CLAIMS, paper_sections

    def rec(seed, avg, pas, tokens, flipped=None, step_s=10.0):
        budgets = [{"budget": 32, "avg_at_k": avg - 0.1, "pass_at_k": pas - 0.1}, {"budget": 64, "avg_at_k": avg, "pass_at_k": pas}]
        steps = [{"step": 1, "cast/frac_flipped": flipped, "cast/frac_flipped_incorrect_positive": 0.05}] if flipped else []
        return {"seed": seed, "final": {"summary": {"avg_at_k": avg, "pass_at_k": pas, "mean_tokens": tokens},
                                        "budgets": budgets}, "steps": steps, "timing": {"step_s": step_s}}

    cells = {"grpo": {0: rec(0, 0.40, 0.50, 20.0), 1: rec(1, 0.50, 0.60, 22.0)},
             "cast": {0: rec(0, 0.30, 0.45, 40.0, 0.3, 12.5), 1: rec(1, 0.44, 0.55, 44.0, 0.5, 12.5)}}
    base = {"final": {"summary": {"mean_tokens": 30.0}, "budgets": [{"budget": 32, "avg_at_k": 0.2}, {"budget": 64, "avg_at_k": 0.3}]}}
    view = TierView("smollm2", "t", "c", cells, [], "grpo", "cast", base=base)
    text = "\n".join(paper_sections(view))
    assert "| Does CAST beat GRPO? (`cast` − `grpo`) | Table 3: AIME24 Avg@16 41.25 vs 21.04 | -0.080 [" in text
    assert "| 2 | not a finding |" in text  # two seeds answer no claim, whatever the interval
    assert text.count("not run yet") == len(CLAIMS) - 1  # only cast vs grpo has both methods cached
    assert "flipped 0.400" in text and "(paper 0.264)" in text
    assert "`cast` 42.0" in text and "1.40× the base model" in text
    assert "paper: CAST 1.25× GRPO" in text and "on cpu, cast 12.5 ± 0.0 s (n=2), grpo 10.0 ± 0.0 s (n=2): 1.25×" in text
    # a cell on another device is timed apart: a ratio across devices would measure the hardware
    cells["grpo"][2] = {**rec(2, 0.45, 0.55, 21.0, step_s=1.0), "versions": {"device": "cuda (GPU)"}}
    walls = "\n".join(paper_sections(view))
    assert "on cpu, cast 12.5 ± 0.0 s (n=2), grpo 10.0 ± 0.0 s (n=2): 1.25×" in walls and "on cuda" not in walls
    assert "| ≤ 32 | -0.080 [" in text
    # what could explain a disagreement: computed from the cells, the diagnosis when there is one
    assert "Against the paper's direction (a finding: interval excludes 0): none" in text and "The teacher." not in text
    assert "not a finding (fewer than 3 seeds, a zero-width interval or a method that did not train): `cast` − `grpo`" in text
    assert "`cast`'s completions were 2.00× `grpo`'s (42.0 vs 21.0 tokens): longer, as in" in text
    assert "its Avg@k was 0.270 with completions cut at 32 tokens and 0.370 at 64 (+0.100" in text
    diagnosed = TierView("smollm2", "t", "c", cells, [], "grpo", "cast", base=base, diagnosis={"teachers": {
        "answer_free": {"auc": 0.41, "n_pairs": 160, "against_verifier": {"frac": 0.5}}}})
    assert "its gap AUC was 0.410 (160 pairs; 0.5 is no signal) and 0.500 of tokens" in "\n".join(paper_sections(diagnosed))


def test_step_times_of_different_devices_are_separate_rows():
    """Seconds on a GPU and on a CPU do not average: one row per method and device when the cells span both."""
    from castrl.bench.report.results import timing_table

    def rec(step_s, device=None, invocation="a"):
        out = {"timing": {"step_s": step_s, "rollout_s": step_s / 2}, "wall_s": 10 * step_s, "invocation": invocation}
        return {**out, "versions": {"device": device}} if device else out

    cells = {"grpo": {0: rec(100.0), 1: rec(10.0, "cuda (GPU)", "b")}, "cast": {0: rec(150.0), 1: rec(20.0, "cuda (GPU)", "c")}}
    lines, ratios = timing_table(TierView("smollm2", "t", "c", cells, [], "grpo", "cast"))
    text = "\n".join(lines)
    assert "| grpo (cpu) | 50.000 |" in text and "| grpo (cuda) | 5.000 |" in text and "| cast (cuda) | 10.000 |" in text
    assert "| cast (cpu) | 75.000 | " in text and "| 1.50 (n=1) | 1500 |" in text  # same invocation: paired
    assert ratios["cast"].n == 1 and "One row per method and device." in text
    single = "\n".join(timing_table(TierView("smollm2", "t", "c", {"grpo": {0: rec(1.0)}}, [], "grpo", "grpo"))[0])
    assert "| grpo | 0.500 |" in single and "(cpu)" not in single
