"""The runnable examples stay runnable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_custom_loop_example_runs_and_reports_cast_metrics():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "custom_loop.py"), "--steps", "2", "--max_new_tokens", "8"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert len(lines) == 2 and all("nonzero-adv rollouts" in line for line in lines)
