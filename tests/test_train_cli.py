"""`castrl train` end to end on a tiny local model: outputs, metrics, resume, early config errors."""

from __future__ import annotations

import json
import os

import pytest

from castrl.run_logging import read_metrics
from castrl.testing import save_tiny_model
from castrl.train import main, parse_args

FAST = [
    "--data", "arithmetic:add1", "--n_per_level", "8", "--eval_n_per_level", "2", "--eval_max_new_tokens", "4",
    "--max_completion_length", "6", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
    "--num_generations", "4", "--verifier_workers", "1", "--lora", "off", "--save_steps", "1",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny")))


def test_train_writes_checkpoints_metrics_plot_and_summary(tiny_dir, tmp_path):
    out = str(tmp_path / "run")
    assert main(["--model", tiny_dir, "--output_dir", out, "--max_steps", "2", *FAST]) == 0
    records = read_metrics(out)
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert {"reward", "cast/frac_mixed", "cast/gap_abs_p95", "cast/flip_frac_wrong"} <= set(steps[0])
    heldout = [r for r in records if "heldout/accuracy" in r]
    assert [r["step"] for r in heldout] == [0, 2]
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["steps"] == 2 and summary["heldout_after"]["n"] == 2
    assert os.path.exists(os.path.join(out, "training.png"))
    assert os.path.exists(os.path.join(out, "checkpoint-2", "castrl_complete.json"))
    assert os.path.exists(os.path.join(out, "final", "config.json"))


def test_resume_continues_from_last_complete_checkpoint(tiny_dir, tmp_path):
    out = str(tmp_path / "run")
    main(["--model", tiny_dir, "--output_dir", out, "--max_steps", "1", "--skip_eval", "true", *FAST])
    main(["--model", tiny_dir, "--output_dir", out, "--max_steps", "2", "--skip_eval", "true", "--resume", "true", *FAST])
    steps = [r["step"] for r in read_metrics(out) if "loss" in r]
    assert steps == [1, 2]  # the resumed run logged only step 2


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--advantage_estimator", "ppo"], "unknown advantage estimator"),
        (["--teacher_context", "student", "--teacher_weights", "policy"], "teacher_context='student'"),
        (["--teacher_weights", "lagged:5"], "refresh:<K>"),
        (["--band_neg", "1.3", "0.9"], "band_neg"),
        (["--flip_margin", "-1"], "flip_margin"),
        (["--lora", "maybe"], "--lora"),
    ],
)
def test_bad_flags_fail_before_model_load(flags, message):
    with pytest.raises(ValueError, match=message):
        parse_args(["--model", "/nonexistent/model", *flags])


def test_group_size_must_divide_the_batch(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="num_generations"):
        main(["--model", "/nonexistent/model", "--output_dir", str(tmp_path), *FAST, "--num_generations", "3",
              "--per_device_train_batch_size", "4"])
