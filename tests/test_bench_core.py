"""The core micro-benchmark runs end to end on a tiny batch and reports finite numbers."""

from __future__ import annotations

import json
import math

import pytest

from castrl.bench import main as bench_main
from castrl.bench.core import make_batch, run_core_bench


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
        ["core", "--B", "16", "--T", "32", "--repeats", "1", "--warmup", "0", "--json", str(path)]
    )
    assert rc == 0
    result = json.loads(path.read_text())
    assert math.isfinite(result["ratio_cast_over_grpo"]) and result["command"].startswith(
        "python -m castrl.bench core"
    )
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and "reproduce: python -m castrl.bench core --B 16 --T 32" in printed


def test_bench_cli_errors(capsys):
    assert bench_main(["nope"]) == 2
    with pytest.raises(ValueError, match="--repeats"):
        bench_main(["core", "--repeats", "0"])
