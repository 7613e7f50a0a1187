"""`castrl bench steptime` on a tiny local model: one row per (method, step), phases add up."""

from __future__ import annotations

import json
import math

import pytest

from castrl.bench import main
from castrl.bench.suites.steptime import method_flags
from castrl.core import get_estimator
from castrl.testing import save_tiny_model


def test_steptime_table_and_json(tmp_path, capsys):
    model = str(save_tiny_model(tmp_path / "tiny"))
    out = tmp_path / "steptime.json"
    flags = ["steptime", "--steps", "1", "--methods", "grpo,cast,cast@fuse_student_pass=false", "--json", str(out), "--model", model, "--data", "arithmetic:add1",
             "--n_per_level", "8", "--lora", "off", "--max_completion_length", "4", "--per_device_train_batch_size",
             "8", "--num_generations", "4", "--gradient_accumulation_steps", "1", "--verifier_workers", "1"]
    assert main(flags) == 0
    printed = capsys.readouterr().out
    assert "cast: mean step" in printed and "reproduce: castrl bench steptime" in printed
    results = json.load(open(out))["results"]
    assert set(results) == {"grpo", "cast", "cast@fuse_student_pass=false"}
    assert results["grpo"][0]["teacher"] == 0.0 and results["cast"][0]["teacher"] > 0.0
    # fused (the default): no separate student pass; with it off, the pass is timed
    fused, separate = results["cast"][0]["student"], results["cast@fuse_student_pass=false"][0]["student"]
    assert fused < 1e-3 and separate > 10 * fused
    for rows in results.values():
        row = rows[0]
        parts = row["rollout"] + row["student"] + row["teacher"] + row["advantage"] + row["train"]
        assert abs(parts - row["total"]) < 1e-6 and row["train"] > 0 and row["cpu"] > 0


def test_method_flags():
    paper = get_estimator("cast").paper_teacher_context
    assert method_flags("grpo") == ["--advantage_estimator", "grpo"]
    assert method_flags("cast") == ["--advantage_estimator", "cast", "--teacher_context", paper]
    assert method_flags("rlsd")[2:] == ["--teacher_context", get_estimator("rlsd").paper_teacher_context]
    assert method_flags("cast@fuse_student_pass=false@lam=0.5") == [
        "--advantage_estimator", "cast", "--teacher_context", paper, "--fuse_student_pass", "false", "--lam", "0.5"]  # fmt: skip
    # a context set by the method or by the shared flags is left alone
    assert method_flags("cast@teacher_context=self_teach") == [
        "--advantage_estimator", "cast", "--teacher_context", "self_teach"]  # fmt: skip
    assert method_flags("cast", ["--teacher_context=student"]) == ["--advantage_estimator", "cast"]
    with pytest.raises(ValueError, match="expected flag=value"):
        method_flags("cast@lam")
    with pytest.raises(ValueError, match="unknown advantage estimator 'bogus'"):
        method_flags("bogus")


def test_help_states_what_is_measured(capsys):
    """The description is the module docstring's whole first sentence, not its first wrapped line."""
    from castrl.bench.suites.steptime import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "advantage / train, for several estimators" in text and "Any other flag" in text


def test_steptime_roofline_fractions(tmp_path, capsys):
    """--roofline: the rollout's and the update's FLOP/s as finite, positive fractions of the fp32 roof."""
    model = str(save_tiny_model(tmp_path / "tiny"))
    out = tmp_path / "steptime.json"
    flags = ["steptime", "--steps", "1", "--methods", "grpo", "--roofline", "true", "--json", str(out), "--model", model,
             "--data", "arithmetic:add1", "--n_per_level", "8", "--lora", "off", "--max_completion_length", "4",
             "--per_device_train_batch_size", "8", "--num_generations", "4", "--gradient_accumulation_steps", "1",
             "--verifier_workers", "1"]
    assert main(flags) == 0
    assert "| grpo | 1 | fp32 |" in capsys.readouterr().out
    saved = json.load(open(out))
    assert set(saved["roofs"]) == {"fp32"}
    row = saved["results"]["grpo"][0]
    assert row["train_mode"] == "full" and row["params"] > 0 and row["rollout_tokens"] > 0
    assert row["train_tokens"] > row["rollout_tokens"]  # prompts + completions
    for name in ("rollout_roof_fraction", "train_roof_fraction"):
        assert math.isfinite(row[name]) and row[name] > 0


def test_gpu_speed_script_names_real_flags(capsys):
    """scripts/gpu/speed.sh runs only on a lent GPU, where a misspelt flag wastes the device time: every
    setting of its vLLM methods is a CASTTrainerConfig field, and every flag of its bench calls is the
    suite's own or (steptime passes them on) castrl train's."""
    import dataclasses
    import re
    from pathlib import Path

    from castrl.trl.run import ARGUMENTS

    text = (Path(__file__).resolve().parents[1] / "scripts" / "gpu" / "speed.sh").read_text()
    train_fields = {f.name for cls in ARGUMENTS for f in dataclasses.fields(cls)}
    suffix = re.search(r'vllm="([^"]+)"', text)[1]
    keys = [setting.partition("=")[0] for setting in suffix.strip("@").split("@")]
    assert keys and set(keys) <= train_fields
    one_line = text.replace("\\\n", " ")
    for suite in ("roofline", "steptime"):
        with pytest.raises(SystemExit):
            main([suite, "--help"])
        help_text = capsys.readouterr().out
        calls = re.findall(rf"castrl bench {suite} ([^|]*)", one_line)
        assert calls, suite
        for flag in {flag for call in calls for flag in re.findall(r"--(\w+)", call)}:
            assert f"--{flag}" in help_text or flag in train_fields, (suite, flag)
