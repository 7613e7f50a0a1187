"""`castrl diagnose` on the tiny char model: scores equal the sampler's log-probs, every reported
number equals a direct computation on the exposed tensors, the files are written, bad flags fail
clearly before any model loads."""

from __future__ import annotations

import itertools
import json
import math
import os

import numpy as np
import pytest
import torch

from castrl.core import CastConfig, cast_advantages
from castrl.diagnose_cli import build_parser, main
from castrl.diagnostics import DiagnoseSettings, run_diagnostics, write_report
from castrl.diagnostics.analysis import analyze, relative_position
from castrl.diagnostics.scoring import (
    chat_prompt_ids,
    completion_logps,
    completion_mask,
    left_pad,
    sample_groups,
    teacher_scope,
)
from castrl.diagnostics.settings import check_context_columns
from castrl.testing import build_char_tokenizer, build_tiny_model, save_tiny_model

G = 4
# group 0 all correct, group 1 all wrong, groups 2-3 mixed; the last row's gold is "unparseable"
REWARDS = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, None]


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_char_tokenizer()
    return build_tiny_model(tokenizer), tokenizer


@pytest.fixture(scope="module")
def run(tiny):
    model, tokenizer = tiny
    settings = DiagnoseSettings(
        n_prompts=4,
        group_size=G,
        max_new_tokens=12,
        temperature=0.9,
        teachers=("self_teach", "with_answer", "with_solution"),
        flip_threshold="0.005",
        progress=False,
        threads=0,
        gen_batch_size=8,
        score_batch_size=12,
        style="plain",  # short char-level prompts keep the tiny model fast
    )
    return run_diagnostics(
        settings, model=model, tokenizer=tokenizer, reward_fn=lambda texts, golds: list(REWARDS)
    )


def _nearest(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, q, method="nearest"))


# ---------------------------------------------------------------------------------------------
# scoring


def test_student_scores_equal_the_sampling_distribution(tiny):
    model, tokenizer = tiny
    prompts = [
        [{"role": "user", "content": "What is 2 + 2?"}],
        [{"role": "user", "content": "What is 12 * 3? Go."}],
    ]
    ids = chat_prompt_ids(tokenizer, prompts)
    torch.manual_seed(1)
    rollouts = sample_groups(
        model, tokenizer, ids, group_size=3, max_new_tokens=10, temperature=0.7, progress=False
    )
    rows = rollouts.group_ids.tolist()
    scored = completion_logps(
        model,
        [ids[i] for i in rows],
        rollouts.completion_ids,
        rollouts.mask,
        temperature=0.7,
        pad_id=tokenizer.pad_token_id,
        batch_size=4,
        progress=False,
    )
    torch.manual_seed(1)
    p_ids, p_mask = left_pad(ids, tokenizer.pad_token_id)
    out = model.generate(
        input_ids=p_ids,
        attention_mask=p_mask,
        do_sample=True,
        temperature=0.7,
        top_k=0,
        top_p=1.0,
        max_new_tokens=10,
        num_return_sequences=3,
        pad_token_id=tokenizer.pad_token_id,
        output_logits=True,
        return_dict_in_generate=True,
    )
    seq = out.sequences[:, p_ids.shape[1] :]
    assert torch.equal(seq, rollouts.completion_ids[:, : seq.shape[1]])
    logits = torch.stack(out.logits, dim=1).float() / 0.7
    direct = torch.log_softmax(logits, -1).gather(-1, seq[..., None]).squeeze(-1) * rollouts.mask
    torch.testing.assert_close(scored, direct, atol=1e-5, rtol=0)
    one_by_one = completion_logps(
        model,
        [ids[i] for i in rows],
        rollouts.completion_ids,
        rollouts.mask,
        temperature=0.7,
        pad_id=tokenizer.pad_token_id,
        batch_size=1,
        progress=False,
    )
    torch.testing.assert_close(scored, one_by_one, atol=1e-5, rtol=0)  # left padding changes nothing


def test_completion_mask_ends_at_first_eos():
    ids = torch.tensor([[5, 6, 2, 2, 2], [5, 2, 7, 2, 9], [5, 6, 7, 8, 9]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float)
    assert torch.equal(completion_mask(ids, [2]), expected)


def test_frozen_teacher_with_adapter_is_the_base_model(tiny):
    from peft import LoraConfig, get_peft_model

    tokenizer = tiny[1]
    base = build_tiny_model(tokenizer, seed=3)
    ids = chat_prompt_ids(tokenizer, [[{"role": "user", "content": "What is 1 + 5?"}]])
    completion = torch.tensor([[10, 11, 12, 13]])
    mask = torch.ones_like(completion, dtype=torch.float)

    def score(m):
        return completion_logps(m, ids, completion, mask, temperature=1.0, pad_id=2, progress=False)

    base_scores = score(base)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # LoRA B starts at 0 (adapter = identity); make it matter
    policy_scores = score(model)
    with teacher_scope("frozen", model):
        frozen_scores = score(model)
    with teacher_scope("policy", model):
        assert torch.equal(score(model), policy_scores)
    torch.testing.assert_close(frozen_scores, base_scores)
    assert not torch.allclose(policy_scores, base_scores)


# ---------------------------------------------------------------------------------------------
# analysis: reported numbers vs a direct computation on the same tokens


def test_quadrant_statistics_equal_direct_computation(run):
    real = run.mask.numpy() > 0
    correct = (run.rewards.numpy() >= 0.5)[:, None].repeat(real.shape[1], axis=1)
    for name, teacher in run.teacher_logps.items():
        gap = (teacher - run.student_logps).numpy().astype(np.float64)
        quads = run.results["teachers"][name]["quadrants"]
        for cls, sign in itertools.product(("correct", "wrong"), ("pos", "neg")):
            in_cls = real & (correct if cls == "correct" else ~correct)
            values = gap[in_cls & (gap > 0 if sign == "pos" else gap < 0)]
            q = quads[f"{cls}_{sign}"]
            assert q["count"] == len(values) > 0
            assert q["frac"] == pytest.approx(len(values) / in_cls.sum())
            assert q["mean"] == pytest.approx(values.mean(), abs=1e-7)
            assert q["std"] == pytest.approx(values.std(), abs=1e-7)
            for p in (5, 25, 50, 75, 95):
                assert q[f"p{p}"] == pytest.approx(_nearest(values, p / 100), abs=1e-7)
        assert quads["overall"]["count"] == real.sum()
        assert quads["overall"]["mean"] == pytest.approx(gap[real].mean(), abs=1e-7)


def test_flip_and_gap_numbers_agree_with_the_training_metrics(run):
    config = run.settings.cast_config()
    for name, teacher in run.teacher_logps.items():
        _, logged = cast_advantages(run.rewards, run.group_ids, run.student_logps, teacher, run.mask, config)
        report = run.results["teachers"][name]
        for cls in ("correct", "wrong"):
            assert report["flips"][f"flip_frac_{cls}"] == pytest.approx(logged[f"cast/flip_frac_{cls}"])
            for sign in ("pos", "neg"):
                assert report["quadrants"][f"{cls}_{sign}"]["mean"] == pytest.approx(
                    logged[f"cast/gap_{cls}_{sign}_mean"], abs=1e-6
                )
        assert 0 < report["flips"]["flip_frac_correct"] < 1  # threshold 0.005: the tiny model does flip


def test_flips_by_direct_rule(run):
    """F+ = g < -tau in B > 0 rows, F- = g > tau in B < 0 rows; B's sign = correctness here (no B = 0)."""
    tau = float(run.settings.flip_threshold)
    real = run.mask > 0
    for name, teacher in run.teacher_logps.items():
        gap = teacher - run.student_logps
        pos_rows = (run.rewards >= 0.5)[:, None]
        flipped = real & ((pos_rows & (gap < -tau)) | (~pos_rows & (gap > tau)))
        flips = run.results["teachers"][name]["flips"]
        assert flips["flip_pos_count"] == float((flipped & pos_rows).sum())
        assert flips["flip_neg_count"] == float((flipped & ~pos_rows).sum())
        assert flips["flip_frac"] == pytest.approx(float(flipped.sum() / real.sum()))


def test_groups_agreement_and_position_equal_direct_computation(run):
    groups = run.results["groups"]
    assert groups["unscorable_count"] == 1 and groups["n_rollouts"] == len(REWARDS) - 1
    # groups: 0 all-correct, 1 all-wrong, 2 and 3 mixed (3 lost its last row but keeps both classes)
    assert (groups["frac_all_correct"], groups["frac_all_wrong"], groups["frac_mixed"]) == (0.25, 0.25, 0.5)
    real = run.mask > 0
    gaps = {k: v - run.student_logps for k, v in run.teacher_logps.items()}
    pair = run.results["agreement"]["self_teach|with_answer"]
    a, b = gaps["self_teach"], gaps["with_answer"]
    both = real & (a != 0) & (b != 0)
    assert pair["agree_frac"] == pytest.approx(float(((a > 0) == (b > 0))[both].float().mean()))
    assert pair["pearson"] == pytest.approx(
        float(np.corrcoef(a[real].numpy(), b[real].numpy())[0, 1]), abs=1e-6
    )
    profile = run.results["teachers"]["self_teach"]["position"]
    bins = run.settings.position_bins
    rel = relative_position(run.mask)
    for cls, rows in (("correct", run.rewards >= 0.5), ("wrong", run.rewards < 0.5)):
        values = {k: [] for k in range(bins)}
        for i in rows.nonzero().flatten().tolist():
            n = int(real[i].sum())
            assert torch.allclose(rel[i, :n], torch.arange(n) / n)
            for t in range(n):
                values[min(int(t / n * bins), bins - 1)].append(float(a[i, t]))
        for k in range(bins):
            assert profile[cls]["count"][k] == len(values[k])
            if values[k]:
                assert profile[cls]["mean"][k] == pytest.approx(np.mean(values[k]), abs=1e-7)


def test_sequence_auc_equals_pairwise_count(run):
    real = run.mask > 0
    correct = (run.rewards >= 0.5).tolist()
    groups = run.group_ids.tolist()
    for name, teacher in run.teacher_logps.items():
        gap = ((teacher - run.student_logps) * real).double()
        total = gap.sum(dim=1).tolist()
        per_token = (gap.sum(dim=1) / real.sum(dim=1)).tolist()
        seq = run.results["teachers"][name]["sequences"]
        for key, score in (("auc_sum", total), ("auc_mean", per_token)):
            wins = [
                1.0 if score[i] > score[j] else 0.5 if score[i] == score[j] else 0.0
                for i in range(len(score))
                for j in range(len(score))
                if correct[i] and not correct[j] and groups[i] == groups[j]
            ]
            assert seq["n_pairs"] == len(wins) == 2 * 2 + 1 * 2  # mixed groups: 2 x 2 and 1 x 2 (REWARDS)
            assert seq[key] == pytest.approx(sum(wins) / len(wins))
        assert seq["mean_gap_correct"] == pytest.approx(
            np.mean([per_token[i] for i in range(len(correct)) if correct[i]])
        )


def test_analyze_on_handmade_tensors():
    """Known gaps: padding, g = 0 and a non-finite teacher score stay out of every sign quadrant."""
    student = torch.zeros(4, 3)
    teacher = torch.tensor([[0.5, -0.25, 0.0], [0.3, float("nan"), 9.0], [-0.4, 0.1, 0.2], [0.7, -0.6, 1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 1]], dtype=torch.float)
    out = analyze(
        torch.tensor([1.0, 1.0, 0.0, 0.0]),
        torch.tensor([0, 0, 1, 1]),
        student,
        {"t": teacher},
        mask,
        CastConfig(),
    )
    t = out["teachers"]["t"]
    assert t["nonfinite_count"] == 1
    assert t["quadrants"]["correct_pos"]["count"] == 2 and t["quadrants"]["correct_pos"][
        "mean"
    ] == pytest.approx(0.4)
    assert t["quadrants"]["correct_neg"]["count"] == 1
    assert t["quadrants"]["correct_all"]["zero_count"] == 2  # the g = 0 token and the NaN one
    assert t["quadrants"]["wrong_pos"]["count"] == 4 and t["quadrants"]["wrong_neg"]["count"] == 2
    # all-correct group (B = +1): -0.25 < -ln 1.25 flips; all-wrong (B = -1): 0.7 and 1.0 > ln 1.25 flip, 0.2 not
    assert t["flips"]["flip_pos_count"] == 1 and t["flips"]["flip_neg_count"] == 2
    assert t["flips"]["flip_frac_correct"] == pytest.approx(1 / 5)
    assert t["flips"]["flip_frac_wrong"] == pytest.approx(2 / 6)
    assert out["groups"]["frac_all_correct"] == out["groups"]["frac_all_wrong"] == 0.5
    assert [e[:2] for e in t["extremes"]["wrong_most_positive"][:2]] == [(3, 2), (3, 0)]


# ---------------------------------------------------------------------------------------------
# outputs


def test_report_files(run, tmp_path):
    payload = {
        "command": "castrl diagnose --n-prompts 4",
        "argv": ["--n-prompts", "4"],
        "settings": vars(run.settings),
        "cast_config": {},
        "notes": run.notes,
        "timings_s": {**run.timings, "total_s": 1.0},
        "results": run.results,
    }
    payload["settings"] = {**payload["settings"], "teachers": list(run.settings.teachers)}
    paths = write_report(payload, str(tmp_path))
    pngs = sorted(p for p in os.listdir(tmp_path) if p.endswith(".png"))
    assert pngs == [
        "gap_hist_self_teach.png",
        "gap_hist_with_answer.png",
        "gap_hist_with_solution.png",
        "gap_position.png",
    ]
    for png in pngs:
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "diagnostics.json").read_text())
    assert saved["command"] == payload["command"]
    q = saved["results"]["teachers"]["with_answer"]["quadrants"]["wrong_neg"]
    assert q["mean"] == run.results["teachers"]["with_answer"]["quadrants"]["wrong_neg"]["mean"]
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(pngs)
    assert "src='http" not in page and "<link" not in page and "<script" not in page
    md = (tmp_path / "diagnostics.md").read_text()
    assert "| with_solution | wrong |" in md and payload["command"] in md
    assert paths["html"] == str(tmp_path / "report.html")


def test_cli_end_to_end_on_a_saved_tiny_model(tmp_path, capsys):
    model_dir = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "out"
    argv = [
        "--model",
        str(model_dir),
        "--n-prompts",
        "2",
        "--group-size",
        "2",
        "--max-new-tokens",
        "6",
        "--out",
        str(out),
        "--no-progress",
        "--threads",
        "0",
        "--style",
        "plain",
    ]
    assert main(argv) == 0
    saved = json.loads((out / "diagnostics.json").read_text())
    assert saved["argv"] == argv and saved["command"].startswith("castrl diagnose --model")
    assert saved["settings"]["teachers"] == ["self_teach", "with_answer"]
    assert saved["results"]["groups"]["n_rollouts"] == 4 and saved["timings_s"]["total_s"] > 0
    assert "report:" in capsys.readouterr().out


def test_every_flag_has_help():
    actions = [a for a in build_parser()._actions if a.dest != "help"]
    assert len(actions) == len(DiagnoseSettings.__dataclass_fields__)
    assert all(a.help and len(a.help) > 10 for a in actions)


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--teachers", "self_teach,oracle"], "unknown teacher context(s) ['oracle']"),
        (["--teachers", ""], "--teachers is empty"),
        (["--teachers", "self_teach,self_teach"], "lists a context twice"),
        (["--teachers", "student"], "gap g is always 0"),
        (["--teachers", "student", "--teacher-weights", "ema"], "its gap is always 0"),
        (["--teacher-weights", "sometimes"], "teacher_weights must be"),
        (["--group-size", "1"], "--group-size must be an integer >= 2"),
        (["--n-prompts", "0"], "--n-prompts must be an integer >= 1"),
        (["--temperature", "0"], "--temperature must be a finite number > 0"),
        (["--flip-threshold", "often"], "flip_threshold must be"),
        (["--style", "poem"], "--style must be one of"),
        (["--n-prompts", "100000"], "lower --n-prompts"),
        (["--data", "missing.jsonl"], "no such file"),
        (["--adapter", "/nonexistent/adapter"], "not a PEFT adapter folder"),
    ],
)
def test_bad_flags_fail_before_the_model_loads(argv, message, capsys):
    assert main(argv + ["--model", "/nonexistent/model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("castrl diagnose: error:") and message in err


def test_teacher_context_needs_its_column(tmp_path, capsys):
    data = tmp_path / "probs.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"id": str(i), "problem": f"What is {i} + 1?", "answer": str(i + 1)}) for i in range(3)
        )
    )
    assert main(["--data", str(data), "--n-prompts", "2", "--teachers", "self_teach,with_solution"]) == 2
    assert "with_solution reads the 'solution' column" in capsys.readouterr().err
    with pytest.raises(ValueError, match="with_answer reads the 'answer' column.*id 'b'"):
        check_context_columns(
            [{"id": "a", "answer": "1"}, {"id": "b", "answer": ""}], ["with_answer"], "rows"
        )
    check_context_columns([{"id": "b", "answer": ""}], ["self_teach"], "rows")  # answer-free: fine


def test_nan_free_json(run):
    """Every number is finite or null in the JSON (strict JSON has no NaN)."""
    from castrl.diagnostics.report import jsonable

    text = json.dumps(jsonable(run.results), allow_nan=False)
    assert not any(math.isnan(x) for x in _floats(json.loads(text)))


def _floats(obj):
    if isinstance(obj, float):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _floats(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _floats(v)
