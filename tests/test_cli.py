"""The `castrl` entry: `python -m castrl` works like `castrl`, every command ends a user's mistake with
one line on stderr and exit 2 (no traceback), and `--debug` brings the traceback back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from castrl import cli
from castrl.commands import COMMANDS, UserInputError, user_input

ROOT = Path(__file__).resolve().parents[1]
BAD_ROW = '{"problem": "What is 1 + 1?", "answer": "2"}\n{"problem": "No answer here?"}\n'


def _castrl(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "castrl", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=env)


def test_python_m_castrl_help_lists_every_command():
    result = _castrl("--help")
    assert result.returncode == 0, result.stderr
    for name in COMMANDS:
        assert name in result.stdout


def test_bad_data_file_ends_every_command_with_one_line(tmp_path):
    """`castrl <command> --data bad.jsonl`: exit 2, `castrl <command>: error: ...` naming the row, no traceback."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text(BAD_ROW)
    runs = {
        "train": ["--output_dir", str(tmp_path / "run")],
        "eval": ["--output_dir", str(tmp_path / "eval")],
        "diagnose": ["--n_prompts", "1", "--output_dir", str(tmp_path / "diag")],
    }
    for command, extra in runs.items():
        result = _castrl(command, "--data", str(bad), "--model", "/nonexistent/model", *extra)
        assert result.returncode == 2, (command, result.stderr[-2000:])
        err = result.stderr.strip().splitlines()
        assert err[-1].startswith(f"castrl {command}: error: ") and "line 2" in err[-1], (command, err)
        assert "Traceback" not in result.stderr, (command, result.stderr[-2000:])


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(BAD_ROW)
    result = _castrl("eval", "--data", str(bad), "--debug")
    assert result.returncode == 1 and "Traceback" in result.stderr and "DataError" in result.stderr


def test_debug_in_process_raises(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(BAD_ROW)
    with pytest.raises(UserInputError, match="line 2"):
        cli.main(["--debug", "eval", "--data", str(bad)])


@pytest.mark.parametrize(
    ("argv", "kept", "debug"),
    [
        (["train", "--debug"], ["train"], True),
        (["--debug", "eval", "--k", "2"], ["eval", "--k", "2"], True),
        (["eval", "--debug", "--k", "2"], ["eval", "--k", "2"], True),
        (["train", "--debug", "underflow_overflow"], ["train", "--debug", "underflow_overflow"], False),  # TRL's
        (["eval", "--k", "2"], ["eval", "--k", "2"], False),
    ],
)
def test_pop_debug(argv, kept, debug):
    assert cli.pop_debug(argv) == (kept, debug)


def test_unknown_command(capsys):
    assert cli.main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_user_input_marks_only_input_errors():
    with pytest.raises(UserInputError, match="bad value"):
        with user_input():
            raise ValueError("bad value")
    with pytest.raises(UserInputError, match="missing.jsonl"):
        with user_input():
            raise FileNotFoundError("missing.jsonl")
    with pytest.raises(RuntimeError):  # not an input error: keeps its type and traceback
        with user_input():
            raise RuntimeError("bug")
