"""Tests for `castrl eval`: the pure metrics (pass@k, majority vote, maj@k, aggregate), the batching
of generate calls, the token-budget cut, the held-out accuracy rule, and `castrl eval` end to end on
the tiny char model (offline, CPU)."""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import pytest
import torch

import castrl.evaluation.run
from castrl import cli
from castrl.commands import eval as eval_cmd
from castrl.evaluate import (
    Completion,
    aggregate,
    counted_correct,
    cut_at_budget,
    generate_completions,
    heldout_accuracy,
    maj_at_k,
    majority_vote,
    pass_at_k,
    problem_metrics,
    vote_key,
)
from castrl.formatting import jsonable
from castrl.rewards import Verifier, extract_final_answer
from castrl.rollouts.generate import _chunks
from castrl.testing import build_char_tokenizer, build_tiny_model, save_tiny_model

torch.set_num_threads(1)
QUIET = ["--max_new_tokens", "8", "--no_progress", "--threads", "1", "--verifier_workers", "1"]
FAST = ["--n_per_level", "2", *QUIET]


def main(argv: list[str]) -> int:
    """`castrl eval ARGV` as the command line runs it (input mistakes: exit 2, message on stderr)."""
    return cli.main(["eval", *argv])

# --- pass@k ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 1, 0.3),  # pass@1 = c / n
        (4, 0, 2, 0.0),  # no correct sample
        (4, 4, 2, 1.0),  # all correct
        (4, 3, 2, 1.0),  # n - c = 1 < k: every 2-subset holds a correct sample
        (3, 1, 3, 1.0),  # k = n: any correct sample passes
        (16, 1, 4, 0.25),  # 1 - C(15,4)/C(16,4) = 1 - 1365/1820
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 2, 3), (6, 1, 2), (6, 3, 4), (7, 0, 3)])
def test_pass_at_k_equals_subset_enumeration(n, c, k):
    """The estimator is the share of k-subsets of the n samples that contain a correct one."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(combinations(samples, k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


@pytest.mark.parametrize(("n", "c", "k"), [(4, 1, 5), (4, 1, 0), (4, 5, 2), (4, -1, 2), (0, 0, 1)])
def test_pass_at_k_rejects_out_of_range(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_rejects_non_int():
    with pytest.raises(TypeError, match="k must be an int"):
        pass_at_k(4, 1, 2.0)


# --- majority vote --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answers", "winner"),
    [
        (["7", "8", "7"], 0),
        (["8", "7", "7"], 1),  # the index returned is the winner's first occurrence
        (["8", "7"], 0),  # tie: earliest first occurrence wins
        (["a", "b", "b", "a"], 0),  # tie 2-2: "a" occurs first
        ([None, "b", "a", "a", "b"], 1),  # None does not vote; tie b/a -> b (first at 1)
        (["7", None, None], 0),  # one vote beats no votes
        ([None, None], None),
        ([], None),
        (["999", "1,000", " 1000 ", "$1000$", "999"], 1),  # normalised: 1000 x3 beats 999 x2
        (["\\dfrac{1}{2}", "0.5", "\\frac{1}{2}"], 0),  # \dfrac == \frac; 0.5 is a different string
    ],
)
def test_majority_vote(answers, winner):
    assert majority_vote(answers) == winner


def test_vote_key_normalisation():
    assert vote_key(" 1,234. ") == "1234"
    assert vote_key("$\\left( 1, 2 \\right)$") == "(1,2)"
    assert vote_key("1,2") == "1,2"  # a tuple, not a thousands group


def test_maj_at_k_blocks_and_winner_correctness():
    answers = ["1", "1", "2", "2"]
    assert maj_at_k(answers, [1.0, 1.0, 0.0, 0.0], 2) == 0.5  # blocks [1,1] right, [2,2] wrong
    assert maj_at_k(answers, [1.0, 1.0, 0.0, 0.0], 4) == 1.0  # 2-2 tie -> "1" (first) -> correct
    assert maj_at_k(["3", "5", "5"], [1.0, 0.0, 0.0], 3) == 0.0  # majority wrong, pass@3 would be 1
    assert maj_at_k(["3", "5", "5", "9"], [1.0, 0.0, 0.0, 0.0], 3) == 0.0  # 4th sample: no full block
    assert maj_at_k([None, None], [0.0, 0.0], 1) == 0.0  # no answer counts as wrong
    # The winner's verdict is the verifier's score of its first occurrence.
    assert maj_at_k(["7", "7.", "8"], [0.0, 1.0, 0.0], 3) == 0.0
    with pytest.raises(ValueError, match="k must be in"):
        maj_at_k(["1"], [1.0], 2)
    with pytest.raises(ValueError, match="equal length"):
        maj_at_k(["1", "2"], [1.0], 1)


def _row(scores, answers, k):
    samples = [
        {"answer": a, "correct": c, "tokens": 3, "boxed": a is not None}
        for c, a in zip(scores, answers, strict=True)
    ]
    row = {"level": "x", "samples": samples, "greedy": {"correct": scores[0], "boxed": True, "tokens": 5}}
    row.update(problem_metrics(scores, answers, k))
    return row


def test_problem_metrics_and_aggregate():
    rows = [
        _row([1.0, 0.0, 0.0, 0.0], ["4", "5", "5", None], 2),
        _row([1.0, 1.0, 1.0, 0.0], ["6", "6", "6", "1"], 2),
        _row([None, None, None, None], ["9", "9", "9", "9"], 2),  # gold unparseable: unscorable
    ]
    assert rows[0]["avg"] == 0.25 and rows[0]["pass_at_k"] == 0.5 and rows[0]["maj_answer"] == "5"
    assert rows[0]["maj_at_k"] == 0.5  # block ["4","5"] tie -> "4" right; block ["5", None] -> "5" wrong
    assert rows[2]["n_unscorable"] == 4 and rows[2]["avg"] == 0.0 and rows[2]["pass_at_k"] == 0.0
    summary = aggregate(rows, 2)
    # unscorable counts as wrong, and is counted: the same rule as castrl train and the bench
    assert summary["n_problems"] == 3 and summary["n_unscorable"] == 1
    assert summary["avg_at_k"] == pytest.approx((0.25 + 0.75 + 0.0) / 3)
    assert summary["pass_at_k"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert summary["pass_at"] == {"1": summary["avg_at_k"], "2": summary["pass_at_k"]}
    assert summary["maj_at_k"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert summary["greedy_accuracy"] == pytest.approx(2 / 3)  # the unscorable greedy answer is wrong
    assert summary["answered_rate"] == pytest.approx(11 / 12)  # all samples count
    assert aggregate([], 2)["avg_at_k"] is None


def test_counted_correct_is_the_one_rule():
    assert [counted_correct(s) for s in (1.0, 0.0, None)] == [1.0, 0.0, 0.0]


def test_aggregate_pass_at_list_for_non_power_of_two_k():
    rows = [_row([1.0] + [0.0] * 5, ["1"] * 6, 6)]
    assert list(aggregate(rows, 6)["pass_at"]) == ["1", "2", "4", "6"]


# --- generation batching --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompts", "samples", "batch"), [(5, 2, 4), (3, 4, 4), (2, 5, 2), (1, 1, 1), (7, 3, 32)]
)
def test_chunks_cover_every_sample_within_batch(prompts, samples, batch):
    calls = _chunks(prompts, samples, batch)
    assert all(count * per <= batch for _, count, per in calls)
    produced = [0] * prompts
    for first, count, per in calls:
        for p in range(first, first + count):
            produced[p] += per
    assert produced == [samples] * prompts


def test_generate_completions_counts_and_seed():
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer)
    prompts = [[{"role": "user", "content": f"What is {i} + 1?"}] for i in range(3)]

    def run(seed):
        torch.manual_seed(seed)
        return generate_completions(
            model,
            tokenizer,
            prompts,
            max_new_tokens=6,
            batch_size=4,
            do_sample=True,
            num_return_sequences=3,
            progress=False,
        )

    first = run(1)
    assert [len(group) for group in first] == [3, 3, 3]
    assert all(1 <= c.tokens <= 6 for group in first for c in group)
    assert first == run(1)
    assert first != run(2)


def test_generate_completions_keeps_ids_and_takes_rendered_strings():
    """Completions carry their token ids (what the budget cut re-decodes); a string prompt is used as it is."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer)
    chat = [{"role": "user", "content": "What is 1 + 1?"}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    by_chat, by_string = (
        generate_completions(model, tokenizer, [p], max_new_tokens=6, progress=False)[0][0] for p in (chat, rendered)
    )
    assert by_chat == by_string
    assert len(by_chat.ids) == by_chat.tokens
    assert tokenizer.decode(list(by_chat.ids), skip_special_tokens=True) == by_chat.text


def test_cut_at_budget():
    tokenizer = build_char_tokenizer()
    text = "so \\boxed{12}"
    ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
    done = Completion(text, len(ids), ids)
    assert cut_at_budget(done, len(ids), tokenizer) is done  # ended within the budget: unchanged
    assert cut_at_budget(done, 100, tokenizer) is done
    cut = cut_at_budget(done, 9, tokenizer)
    assert cut == Completion(text[:9], 9, ids[:9])  # char-level: the first 9 tokens are the first 9 chars
    assert extract_final_answer(cut.text) is None  # cut before the answer: scored wrong
    with Verifier(use_pool=False) as verifier:
        assert verifier.score_batch([cut.text, done.text], ["12", "12"]) == [0.0, 1.0]


def test_heldout_accuracy_counts_unscorable_as_wrong():
    """The one held-out rule (train, eval, bench): an answer whose gold cannot be parsed is wrong, and counted."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer)
    prompts = ["Q: 1 + 1?\nA:", [{"role": "user", "content": "What is 2 + 2?"}], "Q: 3 + 3?\nA:"]
    golds = ["2", "4", "{}"]  # "{}": no answer in the gold -> None
    with Verifier(use_pool=False) as verifier:
        result = heldout_accuracy(model, tokenizer, prompts, golds, verifier, levels=["a", "b", "b"],
                                  max_new_tokens=5, batch_size=2, progress=False)
    assert {"accuracy", "n", "n_unscorable", "boxed_rate", "mean_chars", "mean_tokens", "example",
            "per_level"} <= set(result)
    assert result["n"] == 3 and result["n_unscorable"] == 1
    levels = result["per_level"]
    assert result["accuracy"] == pytest.approx((levels["a"] + 2 * levels["b"]) / 3)  # all 3 in the denominator
    assert result["per_level"]["b"] <= 0.5  # the unscorable problem is in level b and counts as wrong
    assert 1.0 <= result["mean_tokens"] <= 5.0 and result["mean_chars"] <= 5.0


# --- main end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


def _load(out: Path) -> dict:
    return json.loads((out / "eval.json").read_text())


def test_main_end_to_end(tiny_dir, tmp_path):
    out = tmp_path / "out"
    argv = ["--model", str(tiny_dir), "--data", "arithmetic:add1", "--k", "2", "--output_dir", str(out), *FAST]
    assert main(argv) == 0
    report = _load(out)
    assert report["command"].startswith("castrl eval --model ") and "--k 2" in report["command"]
    assert {"command", "args", "versions", "models"} <= set(report)
    assert report["args"]["n"] == 2 and report["args"]["temperature"] == 0.7  # spec §7 sampling defaults
    assert (report["args"]["top_p"], report["args"]["top_k"]) == (0.8, 20)
    (entry,) = report["models"]
    summary = entry["summary"]
    for key in (
        "avg_at_k",
        "pass_at_k",
        "maj_at_k",
        "greedy_accuracy",
        "boxed_rate",
        "mean_tokens",
        "greedy_boxed_rate",
        "greedy_mean_tokens",
        "n_problems",
        "n_unscorable",
    ):
        assert key in summary
    assert list(entry["per_level"]) == ["add1"] and entry["budgets"] == [] and report["figure"] is None
    rows = entry["problems"]
    assert len(rows) == 2 == summary["n_problems"]
    for row in rows:
        assert {"id", "problem", "gold", "samples", "greedy", "pass_at_k", "maj_at_k", "avg", "n_unscorable"} <= set(row)
        assert len(row["samples"]) == 2
        for sample in row["samples"] + [row["greedy"]]:
            assert 1 <= sample["tokens"] <= 8
            assert sample["answer"] == extract_final_answer(sample["text"])
        assert row["pass_at_k"] == pass_at_k(2, row["n_correct"], 2)
    assert summary["avg_at_k"] == pytest.approx(sum(s["correct"] for r in rows for s in r["samples"]) / 4)
    md = (out / "eval.md").read_text()
    for text in ("avg@2", "pass@2", "maj@2", "greedy accuracy", report["command"], "| add1 |", "top-p 0.8"):
        assert text in md


def test_budget_sweep_rescoring_the_same_samples(tiny_dir, tmp_path):
    """--budgets generates once at the largest budget; each budget row re-scores those samples cut there."""
    out = tmp_path / "out"
    argv = ["--model", str(tiny_dir), "--data", "arithmetic:add1", "--k", "2", "--n", "3", "--budgets", "2,8,4",
            "--output_dir", str(out), "--skip_greedy", "--n_per_level", "2", "--no_progress", "--verifier_workers", "1"]
    assert main(argv) == 0
    report = _load(out)
    assert report["args"]["max_new_tokens"] == 8  # the largest budget
    (entry,) = report["models"]
    budgets = entry["budgets"]
    assert [b["budget"] for b in budgets] == [2, 4, 8]
    samples = [s for r in entry["problems"] for s in r["samples"]]
    for b in budgets:  # mean length per budget = mean of min(length, budget)
        assert b["mean_tokens"] == pytest.approx(sum(min(s["tokens"], b["budget"]) for s in samples) / len(samples))
        assert set(b) >= {"avg_at_k", "pass_at_k", "maj_at_k", "pass_at", "answered_rate", "n_unscorable"}
    full = budgets[-1]  # the largest budget cuts nothing: it is the summary
    for key in ("avg_at_k", "pass_at_k", "maj_at_k", "mean_tokens"):
        assert full[key] == pytest.approx(entry["summary"][key])
    assert (out / "eval_budgets.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["figure"] == str(out / "eval_budgets.png")
    md = (out / "eval.md").read_text()
    assert "| budget | avg@2 |" in md and "| 4 |" in md and "eval_budgets.png" in md


def test_budget_cut_scores_what_the_first_tokens_say(monkeypatch, tiny_dir, tmp_path):
    """A sample whose answer comes after the budget is wrong at that budget and right at the full length."""
    text = "ok \\boxed{2}"
    tokenizer = build_char_tokenizer()
    ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])

    def fake_generate(model, tok, prompts, *, num_return_sequences=1, **kwargs):
        return [[Completion(text, len(ids), ids)] * num_return_sequences for _ in prompts]

    monkeypatch.setattr(castrl.evaluation.run, "generate_completions", fake_generate)
    data = tmp_path / "p.jsonl"
    data.write_text('{"problem": "What is 1 + 1?", "answer": "2"}\n')
    out = tmp_path / "out"
    argv = ["--model", str(tiny_dir), "--data", str(data), "--k", "1", "--budgets", f"3,{len(ids)}",
            "--output_dir", str(out), "--no_progress", "--verifier_workers", "1"]
    assert main(argv) == 0
    short, full = _load(out)["models"][0]["budgets"]
    assert (short["avg_at_k"], short["answered_rate"], short["mean_tokens"]) == (0.0, 0.0, 3.0)
    assert (full["avg_at_k"], full["mean_tokens"]) == (1.0, len(ids))


def test_several_models_one_line_each(tiny_dir, tmp_path):
    other = save_tiny_model(tmp_path / "other", seed=1)
    out = tmp_path / "out"
    argv = ["--model", str(tiny_dir), str(other), "--data", "arithmetic:add1", "--k", "1", "--budgets", "2,4",
            "--output_dir", str(out), *FAST]
    assert main(argv) == 0
    report = _load(out)
    assert [e["model"] for e in report["models"]] == [str(tiny_dir), str(other)]
    assert all(len(e["budgets"]) == 2 for e in report["models"])
    md = (out / "eval.md").read_text()
    assert "| model | avg@1 |" in md and md.count("## `") == 2
    assert (out / "eval_budgets.png").exists()


def test_main_seeded_and_jsonl_data_and_n_above_k(tiny_dir, tmp_path):
    data = tmp_path / "probs.jsonl"
    data.write_text(
        '{"problem": "What is 1 + 1?", "answer": "2"}\n{"problem": "What is 2 + 2?", "answer": "4"}\n'
    )
    base = ["--model", str(tiny_dir), "--data", str(data), "--k", "2", "--n", "4", "--skip_greedy", *QUIET]
    assert main([*base, "--output_dir", str(tmp_path / "a"), "--seed", "3"]) == 0
    assert main([*base, "--output_dir", str(tmp_path / "b"), "--seed", "3", "--batch_size", "3"]) == 0
    a, b = _load(tmp_path / "a")["models"][0], _load(tmp_path / "b")
    assert [len(r["samples"]) for r in a["problems"]] == [4, 4]
    assert a["summary"]["greedy_accuracy"] is None and a["problems"][0]["greedy"] is None
    assert a["per_level"] == {}
    assert list(a["summary"]["pass_at"]) == ["1", "2"]
    assert len({s["text"] for r in a["problems"] for s in r["samples"]}) > 1  # sampling, not greedy
    assert b["args"]["batch_size"] == 3  # a different batch layout still completes every sample
    assert [len(r["samples"]) for r in b["models"][0]["problems"]] == [4, 4]


def test_main_same_seed_reproduces(tiny_dir, tmp_path):
    base = ["--model", str(tiny_dir), "--data", "arithmetic:add1", "--k", "2", "--skip_greedy", *FAST]
    texts = []
    for name in ("x", "y"):
        assert main([*base, "--output_dir", str(tmp_path / name), "--seed", "7"]) == 0
        texts.append([[s["text"] for s in r["samples"]] for r in _load(tmp_path / name)["models"][0]["problems"]])
    assert texts[0] == texts[1]


def test_main_with_lora_adapter(tiny_dir, tmp_path):
    """A fresh LoRA adapter (B = 0) leaves greedy outputs unchanged; a trained-looking one changes the
    logits, so `--lora_adapter` is really loaded and merged, not ignored. An adapter folder passed as
    --model loads onto the base model it names."""
    from peft import get_peft_model

    from castrl.models import LoraSettings, load_model_and_tokenizer, peft_config

    model, _ = load_model_and_tokenizer(str(tiny_dir))
    peft_model = get_peft_model(model, peft_config(LoraSettings(r=2, alpha=4)))
    peft_model.save_pretrained(tmp_path / "zero")
    base = ["--data", "arithmetic:add1", "--k", "1", *FAST]
    assert main(["--model", str(tiny_dir), *base, "--output_dir", str(tmp_path / "plain")]) == 0
    assert main(["--model", str(tiny_dir), *base, "--output_dir", str(tmp_path / "lora"),
                 "--lora_adapter", str(tmp_path / "zero")]) == 0
    assert main(["--model", str(tmp_path / "zero"), *base, "--output_dir", str(tmp_path / "folder")]) == 0
    plain, lora, folder = (_load(tmp_path / name)["models"][0] for name in ("plain", "lora", "folder"))
    greedy = [r["greedy"]["text"] for r in plain["problems"]]
    assert greedy == [r["greedy"]["text"] for r in lora["problems"]] == [r["greedy"]["text"] for r in folder["problems"]]
    assert "adapter" in (tmp_path / "lora" / "eval.md").read_text()
    assert folder["lora_adapter"] == str(tmp_path / "zero") and folder["model_path"] == str(tiny_dir)

    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    peft_model.save_pretrained(tmp_path / "trained")
    (args,) = eval_cmd.build_parser().parse_args_into_dataclasses(["--device", "cpu"])
    merged, _ = eval_cmd.load_model(args, str(tiny_dir), str(tmp_path / "trained"))
    plain_model, _ = load_model_and_tokenizer(str(tiny_dir))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert not torch.allclose(merged(ids).logits, plain_model(ids).logits)
        assert torch.allclose(merged(ids).logits, peft_model(ids).logits, atol=1e-4)


# --- errors before the model loads ----------------------------------------------------------------


@pytest.fixture
def no_model_load(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model must not load for bad input")

    monkeypatch.setattr(eval_cmd, "load_checked", fail)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--k", "4", "--n", "2"], "--k (4) must be <= --n (2)"),
        (["--k", "0"], "--k must be >= 1"),
        (["--max_new_tokens", "0"], "--max_new_tokens must be >= 1"),
        (["--temperature", "0"], "--temperature must be > 0"),
        (["--temperature", "nan"], "--temperature must be > 0"),
        (["--top_p", "1.5"], "--top_p must be in (0, 1]"),
        (["--top_k", "-1"], "--top_k must be >= 0"),
        (["--budgets", "8,x"], "--budgets must be comma-separated integers"),
        (["--budgets", "0,8"], "--budgets must be comma-separated integers"),
        (["--budgets", "4,16"], "exceeds --max_new_tokens 8"),
        (["--data", "arithmetic:nope"], "unknown arithmetic level"),
        (["--data", "nowhere/missing.jsonl"], "no such file"),
        (["--data", "probs.csv"], "unsupported file type"),
        (["--split", "dev"], "split must be one of"),
        (["--n_per_level", "0"], "--n_per_level must be >= 1"),
        (["--model", "./does-not-exist"], "does not exist"),
        (["--model", "outputs/no-run/final"], "does not exist"),  # two "/": a path, not an HF id
        (["--lora_adapter", "no-such-adapter"], "not a PEFT adapter folder"),
        (["--prompt_style", "fancy"], "--prompt_style must be one of"),
        (["--unknown_flag", "1"], "not used by the HfArgumentParser"),
    ],
)
def test_bad_input_is_a_clear_error_before_the_model_loads(
    extra, message, tiny_dir, tmp_path, capsys, no_model_load
):
    argv = ["--model", str(tiny_dir), "--data", "arithmetic:add1", "--output_dir", str(tmp_path), *QUIET, *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("castrl eval: error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "eval.json").exists()


def test_old_out_flag_still_works_with_a_deprecation_line(tiny_dir, tmp_path, capsys):
    """`--out` (the spelling before `--output_dir`) is read until the next release, with one line saying so."""
    args, _, _ = eval_cmd.prepare(["--model", str(tiny_dir), "--data", "arithmetic:add1", "--out", str(tmp_path)])
    assert args.output_dir == str(tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["castrl eval: warning: --out is deprecated and will be removed in the next release; "
                   "use --output_dir"]


def test_n_per_level_rejected_for_files(tiny_dir, tmp_path, capsys, no_model_load):
    data = tmp_path / "p.jsonl"
    data.write_text('{"problem": "What is 1 + 1?", "answer": "2"}\n')
    assert main(["--model", str(tiny_dir), "--data", str(data), "--n_per_level", "2", "--no_progress"]) == 2
    assert "arithmetic suite only" in capsys.readouterr().err


def test_unknown_model_id_is_a_clear_error(tmp_path, capsys):
    argv = [
        "--model",
        "castrl-test/no-such-model",
        "--data",
        "arithmetic:add1",
        "--output_dir",
        str(tmp_path),
        *FAST,
    ]
    assert main(argv) == 2
    assert "could not be loaded" in capsys.readouterr().err


def test_bad_choice_and_help_exit_like_argparse(capsys):
    # --prompt_style is the shared vocabulary's str (one check and message in every command, in the bad-input
    # list above); --device is still a choice
    with pytest.raises(SystemExit) as exc:
        main(["--device", "tpu"])
    assert exc.value.code == 2
    assert "castrl eval: error: argument --device" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    helptext = capsys.readouterr().out
    for flag in ("--k", "--n", "--temperature", "--top_p", "--top_k", "--budgets", "--lora_adapter", "--seed",
                 "--output_dir", "--split", "--threads", "--no_progress"):
        assert flag in helptext


def test_every_flag_has_help():
    for action in eval_cmd.build_parser()._actions:
        assert action.help and action.help.strip(), action.dest


def test_json_has_no_nan(tmp_path):
    """eval.json is strict JSON: NaN accuracies (no scorable problem) become null."""
    report = {"args": {"k": 1}, "summary": {"x": math.nan}}
    assert jsonable(report) == {"args": {"k": 1}, "summary": {"x": None}}
