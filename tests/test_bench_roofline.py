"""`castrl bench roofline` on the tiny local model: every (phase, precision, mode) row is there, with
finite positive fractions of the matching roof, and the FLOP formulas are the documented ones."""

from __future__ import annotations

import json
import math

import pytest
import torch

from castrl.bench import SUITES, main
from castrl.bench.suites.roofline import FLOPS_PER_TOKEN, matmul_params, parse_args, phase_row
from castrl.commands import UserInputError
from castrl.testing import build_char_tokenizer, build_tiny_model, save_tiny_model

TINY = ["--sizes", "32,64", "--matmul_repeats", "1", "--repeats", "1", "--prompts", "1", "--group_size", "2",
        "--max_new_tokens", "4", "--eval_prompts", "2", "--batch", "2", "--seq_len", "16", "--threads", "1"]


def test_roofline_table_and_json(tmp_path, capsys):
    model = str(save_tiny_model(tmp_path / "tiny"))
    assert "roofline" in SUITES
    assert main(["roofline", "--model", model, "--output_dir", str(tmp_path / "out"), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "| fp32 matmul |" in printed and "| bf16 matmul |" in printed
    assert "reproduce: castrl bench roofline --model" in printed
    result = json.loads((tmp_path / "out" / "roofline.json").read_text())
    assert set(result["roofs"]) == {"fp32", "bf16"} and result["params"] > 0
    keys = {(r["phase"], r["mode"], r["precision"]) for r in result["rows"]}
    expected = {(p, "forward", x) for p in ("decode", "greedy", "score") for x in ("fp32", "bf16")}
    expected |= {("train", m, x) for m in ("lora", "full") for x in ("fp32", "bf16")}
    assert keys == expected
    for row in result["rows"]:
        for name in ("tokens_per_s", "flops_per_s", "roof_flops_per_s", "roof_fraction", "seconds"):
            assert math.isfinite(row[name]) and row[name] > 0, (row, name)
        assert row["tokens"] > 0
        assert row["roof_flops_per_s"] == result["roofs"][row["precision"]]["flops_per_s"]
        assert f"| {row['phase']} | {row['mode']} | {row['precision']} |" in printed
    score = {r["precision"]: r for r in result["rows"] if r["phase"] == "score"}
    assert score["fp32"]["tokens"] == 2 * 16


def test_flop_formulas_and_params():
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer)
    linear = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert matmul_params(model) == sum(linear.values())  # the tied head once, the embedding lookup not at all
    roofs = {"fp32": {"flops_per_s": 1e9}}
    row = phase_row("train", "fp32", "full", tokens=100, seconds=2.0, params=1000, roofs=roofs)
    assert row["flops_per_s"] == 6 * 1000 * 100 / 2.0 and row["roof_fraction"] == pytest.approx(3e5 / 1e9)
    assert FLOPS_PER_TOKEN == {"forward": 2, "full": 6, "lora": 4}


@pytest.mark.parametrize("flags,match", [(["--phases", "decode,bogus"], "--phases"), (["--sizes", "a"], "--sizes"),
                                         (["--precisions", "fp16"], "--precisions"), (["--repeats", "0"], "--repeats")])
def test_bad_flags_are_user_errors(flags, match):
    with pytest.raises(ValueError, match=match):
        parse_args(flags)
    with pytest.raises(UserInputError):
        main(["roofline", *flags])


def test_phases_too_slow_for_the_roof_are_skipped_not_run(tmp_path, capsys):
    """A phase predicted (at the roof itself) to take longer than --max_phase_s is named, not measured."""
    model = str(save_tiny_model(tmp_path / "tiny"))
    flags = [*TINY, "--max_phase_s", "1e-9", "--phases", "score", "--precisions", "bf16"]
    assert main(["roofline", "--model", model, "--output_dir", str(tmp_path), *flags]) == 0
    result = json.loads((tmp_path / "roofline.json").read_text())
    assert result["roofs"]["bf16"]["skipped_sizes"] == [64]  # the smallest size always runs
    (row,) = result["rows"]
    assert row["phase"] == "score" and row["skipped_predicted_s"] > 0 and "roof_fraction" not in row
    assert "| score | forward | bf16 | skipped" in capsys.readouterr().out


def test_shared_flags_come_from_the_vocabulary():
    """model, threads, seed, output_dir ... are castrl.arguments' (declared once), sampling is castrl train's."""
    from castrl.arguments import VOCABULARY, duplicate_declarations
    from castrl.bench.suites.roofline import RooflineArguments, _rollout_sampling
    from castrl.trl import CASTTrainerConfig

    assert duplicate_declarations([RooflineArguments, *VOCABULARY]) == {}
    args = parse_args([])
    assert (args.threads, args.max_new_tokens, args.group_size, args.output_dir) == (2, 128, 8, "outputs/bench_roofline")
    defaults = CASTTrainerConfig.__dataclass_fields__
    assert _rollout_sampling() == {k: defaults[k].default for k in ("temperature", "top_p", "top_k")}
