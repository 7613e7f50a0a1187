"""The core micro-benchmark runs end to end on a tiny batch and reports finite numbers; `castrl bench`
reads its flags and reports a user's mistake as every castrl command does."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from castrl import cli
from castrl.bench import main as bench_main
from castrl.bench.common import tier as bench_tier
from castrl.bench.report import results as report
from castrl.bench.suites import core, steptime
from castrl.bench.suites.core import make_batch, run_core_bench
from castrl.commands import UserInputError


def test_run_core_bench_tiny():
    result = run_core_bench(B=16, T=32, repeats=1, warmup=0)
    for key in (
        "cast_median_s",
        "grpo_median_s",
        "cast_tokens_per_s",
        "grpo_tokens_per_s",
        "ratio_cast_over_grpo",
    ):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["threads"] >= 1 and result["B"] == 16 and result["T"] == 32


def test_make_batch_groups_and_padding():
    batch = make_batch(B=24, T=10, group_size=8, seed=3)
    assert batch["group_ids"].tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert batch["mask"].sum(1).min() >= 1 and batch["mask"].dtype.is_floating_point is False
    assert set(batch["rewards"].tolist()) <= {0.0, 1.0}


def test_bench_cli_writes_json(tmp_path, capsys):
    path = tmp_path / "core.json"
    rc = bench_main(
        ["core", "--B", "16", "--T", "32", "--group_size", "4", "--repeats", "1", "--warmup", "0", "--json", str(path)]
    )
    assert rc == 0
    result = json.loads(path.read_text())
    assert math.isfinite(result["ratio_cast_over_grpo"]) and result["command"].startswith(
        "castrl bench core --B 16 --T 32 --group_size 4"
    )
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and "reproduce: castrl bench core --B 16 --T 32 --group_size 4" in printed


def test_bench_cli_errors():
    with pytest.raises(UserInputError, match="unknown suite 'nope'"):
        bench_main(["nope"])
    with pytest.raises(UserInputError, match="--repeats must be >= 1"):
        bench_main(["core", "--repeats", "0"])


# --- `castrl bench` follows every castrl command's conventions ----------------------------------------


def test_bench_flags_are_underscores_with_hyphen_aliases():
    args = core.parse_args(["--group_size", "4", "--B", "16"])
    assert (args.group_size, args.B) == (4, 16)
    assert core.parse_args(["--group-size", "4"]).group_size == 4  # the hyphen spelling is accepted too
    tier = bench_tier.tier_description("tiny")
    args = bench_tier.parse_tier_args(tier, ["--cells_dir", "c", "--time_budget", "60", "--no_progress", "--list"])
    assert (args.cells_dir, args.time_budget, args.progress, args.list) == ("c", 60.0, False, True)
    args = bench_tier.parse_tier_args(tier, ["--cells-dir", "c", "--time-budget", "60", "--no-progress"])
    assert (args.cells_dir, args.time_budget, args.progress) == ("c", 60.0, False)
    assert args.threads == tier.threads  # the tier sets --threads' default
    assert report.parse_args(["--cells_dir", "c", "--quick"]).quick is True
    steptime_args, train_flags = steptime.parse_args(["--steps", "2", "--model", "m", "--lora", "off"])
    assert steptime_args.steps == 2 and train_flags == ["--model", "m", "--lora", "off"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope"], "unknown suite 'nope'; expected one of core, steptime, roofline, smollm2, control, tiny, placement, report"),
        (["core", "--repeats", "0"], "--repeats must be >= 1, got 0"),
        (["core", "--bogus", "1"], "--bogus"),
        (["tiny", "--list", "--methods", "grpo,bogus"], "unknown estimator 'bogus'"),
        (["tiny", "--list", "--time_budget", "0"], "--time_budget must be a positive number of seconds, got 0.0"),
        (["smollm2", "--list", "--seeds", "0"], "--seeds must be >= 1, got 0"),
        (["steptime", "--methods", "grpo,bogus"], "unknown advantage estimator 'bogus'"),
        (["steptime", "--steps", "0"], "--steps must be >= 1, got 0"),
        (["steptime", "--methods", "grpo", "--lora", "sometimes"], "--lora must be auto, on or off"),
        (["report", "--quick", "--bogus", "1"], "--bogus"),
    ],
)
def test_user_mistakes_end_with_one_error_line(argv, message, capsys, tmp_path):
    """`castrl bench ...`: exit 2 and one `castrl bench: error: ...` line, before anything runs or loads."""
    assert cli.main(["bench", *argv, *(["--cells_dir", str(tmp_path)] if "--list" in argv else [])]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("castrl bench: error: ") and message in err, err
    assert "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing was run or cached


def test_python_m_castrl_bench_reports_a_mistake_in_one_line():
    """`python -m castrl.bench` is `castrl bench`: the same error line and exit code, `--debug` for the traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "castrl.bench", "nope"], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "castrl bench: error: unknown suite 'nope'; expected one of core, steptime, roofline, smollm2, control, tiny, placement, report"]
    result = subprocess.run([sys.executable, "-m", "castrl.bench", "nope", "--debug"], capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 1 and "Traceback" in result.stderr and "UserInputError" in result.stderr


def test_bench_report_writes_into_output_dir_and_still_reads_out(capsys):
    """`castrl bench report --output_dir D`: D/results.md and D/figures/bench; the deprecated `--out F.md`
    (a file) still names the report file, with one deprecation line."""
    from castrl.bench.report.results import parse_args

    default = parse_args([])
    assert (default.report_path(), default.figures_dir()) == (Path("docs/results.md"), Path("docs/figures/bench"))
    folder = parse_args(["--output_dir", "out/bench"])
    assert (folder.report_path(), folder.figures_dir()) == (Path("out/bench/results.md"), Path("out/bench/figures/bench"))
    old = parse_args(["--out", "elsewhere/r.md", "--figures", "figs"])
    assert (old.report_path(), old.figures_dir()) == (Path("elsewhere/r.md"), Path("figs"))
    assert "--out is deprecated" in capsys.readouterr().err
