"""`castrl train` end to end on a tiny local model: outputs, metrics, resume, early config errors, and
`castrl eval` on the run's saved checkpoint next to the base model."""

from __future__ import annotations

import json
import os

import pytest

from castrl import cli
from castrl.commands.train import main, parse_args
from castrl.run_logging import read_metrics
from castrl.testing import save_tiny_model

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
    assert summary["heldout_after"]["n_unscorable"] == 0 and "per_level" in summary["heldout_after"]
    assert os.path.exists(os.path.join(out, "training.png"))
    assert os.path.exists(os.path.join(out, "checkpoint-2", "castrl_complete.json"))
    assert os.path.exists(os.path.join(out, "final", "config.json"))

    # castrl eval on a saved checkpoint and on the base model, one budget line each
    ev = tmp_path / "eval"
    argv = ["eval", "--model", tiny_dir, os.path.join(out, "checkpoint-2"), "--data", "arithmetic:add1",
            "--n_per_level", "2", "--k", "2", "--budgets", "2,4", "--output_dir", str(ev), "--no_progress",
            "--verifier_workers", "1"]
    assert cli.main(argv) == 0
    report = json.loads((ev / "eval.json").read_text())
    assert [len(m["budgets"]) for m in report["models"]] == [2, 2]
    assert (ev / "eval_budgets.png").exists()


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
        (["--prompt_style", "fancy"], "--prompt_style must be one of"),
        (["--eval_batch_size", "0"], "--eval_batch_size"),
        (["--rollout_decoder", "vllm"], "rollout_decoder must be one of"),
    ],
)
def test_bad_flags_fail_before_model_load(flags, message):
    with pytest.raises(ValueError, match=message):
        parse_args(["--model", "/nonexistent/model", *flags])


def test_group_size_must_divide_the_batch(tmp_path, capsys):
    argv = ["train", "--model", "/nonexistent/model", "--output_dir", str(tmp_path), *FAST, "--num_generations", "3",
            "--per_device_train_batch_size", "4"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("castrl train: error:") and "num_generations" in err


def test_bad_data_row_is_one_line_and_exit_2(tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"problem": "What is 1 + 1?", "answer": "2"}\n{"problem": "No answer?"}\n')
    argv = ["train", "--model", "/nonexistent/model", "--output_dir", str(tmp_path / "run"), "--data", str(data)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("castrl train: error:") and "line 2" in err and "answer" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing ran


def test_missing_model_folder_is_a_user_error(tmp_path, capsys):
    argv = ["train", "--model", "./no-such-model", "--output_dir", str(tmp_path), *FAST]
    assert cli.main(argv) == 2
    assert "does not exist" in capsys.readouterr().err
