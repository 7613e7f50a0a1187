"""`castrl diagnose` on the tiny char model: scores equal the sampler's log-probs, every reported
number equals a direct computation on the exposed tensors (and the core's training metrics), the
gap AUC and the verdict behave on hand-made batches, the files are written, bad flags fail clearly
before any model loads."""

from __future__ import annotations

import itertools
import json
import math
import os

import numpy as np
import pytest
import torch

from castrl import cli
from castrl.commands.diagnose import build_parser
from castrl.core import CastConfig, cast_advantages
from castrl.diagnostics import DiagnoseSettings, run_diagnostics, write_report
from castrl.diagnostics.analysis import (
    AUC_BAND,
    MIN_VERDICT_PAIRS,
    analyze,
    gap_verdict,
    relative_position,
    rollout_gap_auc,
)
from castrl.diagnostics.scores import peer_texts
from castrl.diagnostics.settings import check_context_columns
from castrl.rollouts import completion_logps, completion_mask, left_pad, sample_groups, scorer
from castrl.rollouts import prompt_ids as chat_prompt_ids
from castrl.teacher import TeacherConfig, build_teacher
from castrl.testing import build_char_tokenizer, build_tiny_model, save_tiny_model


def main(argv: list[str]) -> int:
    """`castrl diagnose ARGV` as the command line runs it (input mistakes: exit 2, message on stderr)."""
    return cli.main(["diagnose", *argv])

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
        teachers=("answer_free", "with_reference", "with_peer_success"),
        progress=False,
        threads=0,
        gen_batch_size=8,
        score_batch_size=12,
        prompt_style="plain",  # short char-level prompts keep the tiny model fast
        mask_truncated_completions=False,  # a random model rarely ends within 12 tokens: keep its tokens
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
    rollouts = sample_groups(  # generate's own draws, which the reference below repeats
        model, tokenizer, ids, group_size=3, max_new_tokens=10, temperature=0.7, decoder="transformers",
        progress=False,
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
    p_ids, p_mask, _ = left_pad(ids, tokenizer.pad_token_id)
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

    def teacher(weights: str):  # a diagnosis's teacher: built for a host that takes no optimizer step
        return build_teacher(TeacherConfig(weights=weights), model, tokenizer, untrained=True)

    with scorer(teacher("frozen"), model) as module:
        frozen_scores = score(module)
    with scorer(teacher("policy"), model) as module:
        assert torch.equal(score(module), policy_scores)
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
    assert config.flip_margin == 0  # the default: the paper's rule
    real = run.mask > 0
    for name, teacher in run.teacher_logps.items():
        adv, logged = cast_advantages(
            run.rewards, run.group_ids, run.student_logps, teacher, run.mask, config
        )
        report = run.results["teachers"][name]
        flips = report["flips"]
        for key in (
            "frac_flipped",
            "frac_flipped_correct_negative",
            "frac_flipped_incorrect_positive",
            "flip_frac_correct",
            "flip_frac_wrong",
            "flip_down_count",
            "flip_up_count",
        ):
            assert flips[key] == pytest.approx(logged[f"cast/{key}"])
        for cls in ("correct", "wrong"):
            for sign in ("pos", "neg"):
                assert report["quadrants"][f"{cls}_{sign}"]["mean"] == pytest.approx(
                    logged[f"cast/gap_{cls}_{sign}_mean"], abs=1e-6
                )
        assert 0 < flips["flip_frac_correct"] < 1 and 0 < flips["flip_frac_wrong"] < 1
        down = float(((adv < 0) & real).sum() / real.sum())
        assert report["advantages"]["frac_down"] == pytest.approx(down)
        assert report["advantages"]["frac_up"] == pytest.approx(float(((adv > 0) & real).sum() / real.sum()))


def test_flips_by_direct_rule(run):
    """The paper's rule (margin 0): down = g < 0 in B > 0 rows, up = g > 0 in B < 0 rows; B's sign =
    correctness here (binary rewards, no B = 0). The margin sweep applies |g| > margin on top."""
    real = run.mask > 0
    pos_rows = (run.rewards >= 0.5)[:, None]
    for name, teacher in run.teacher_logps.items():
        gap = teacher - run.student_logps
        flips = run.results["teachers"][name]["flips"]
        for margin, swept in flips["sweep"].items():
            m = float(margin)
            down = real & pos_rows & (gap < -m)
            up = real & ~pos_rows & (gap > m)
            assert swept["correct_negative"] == pytest.approx(float(down.sum() / real.sum()))
            assert swept["incorrect_positive"] == pytest.approx(float(up.sum() / real.sum()))
            assert swept["all"] == pytest.approx(float((down | up).sum() / real.sum()))
            if m == 0:
                assert flips["flip_down_count"] == float(down.sum())
                assert flips["flip_up_count"] == float(up.sum())
                assert flips["frac_flipped"] == pytest.approx(swept["all"])
        assert list(flips["sweep"]) == ["0", "0.05", "0.1", "0.2"]
        assert flips["sweep"]["0.2"]["all"] <= flips["sweep"]["0"]["all"]


def test_against_verifier_share_equals_the_cast_flip_share_at_margin_zero(run):
    """Tokens whose direction the teacher sets against the verifier = the tokens CAST flips (margin 0)."""
    config = run.settings.cast_config()
    real = run.mask > 0
    pos_rows = (run.rewards >= 0.5)[:, None]
    for name, teacher in run.teacher_logps.items():
        report = run.results["teachers"][name]
        against, flips = report["against_verifier"], report["flips"]
        _, logged = cast_advantages(run.rewards, run.group_ids, run.student_logps, teacher, run.mask, config)
        assert against["n_tokens"] == float(real.sum())  # binary rewards: every rollout has B != 0
        assert (
            against["frac"]
            == pytest.approx(flips["frac_flipped"])
            == pytest.approx(logged["cast/frac_flipped"])
        )
        assert against["frac_correct_negative"] == pytest.approx(flips["frac_flipped_correct_negative"])
        assert against["frac_incorrect_positive"] == pytest.approx(flips["frac_flipped_incorrect_positive"])
        gap = teacher - run.student_logps
        agree = real & ((pos_rows & (gap > 0)) | (~pos_rows & (gap < 0)))
        assert against["frac_agree"] == pytest.approx(float(agree.sum() / real.sum()))


def test_groups_agreement_and_position_equal_direct_computation(run):
    groups = run.results["groups"]
    assert groups["unscorable_count"] == 1 and groups["n_rollouts"] == len(REWARDS) - 1
    # groups: 0 all-correct, 1 all-wrong, 2 and 3 mixed (3 lost its last row but keeps both classes)
    assert (groups["frac_all_correct"], groups["frac_all_wrong"], groups["frac_mixed"]) == (0.25, 0.25, 0.5)
    real = run.mask > 0
    gaps = {k: v - run.student_logps for k, v in run.teacher_logps.items()}
    pair = run.results["agreement"]["answer_free|with_reference"]
    a, b = gaps["answer_free"], gaps["with_reference"]
    both = real & (a != 0) & (b != 0)
    assert pair["agree_frac"] == pytest.approx(float(((a > 0) == (b > 0))[both].float().mean()))
    assert pair["pearson"] == pytest.approx(
        float(np.corrcoef(a[real].numpy(), b[real].numpy())[0, 1]), abs=1e-6
    )
    profile = run.results["teachers"]["answer_free"]["position"]
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
        verdict = run.results["teachers"][name]["verdict"]
        assert verdict == gap_verdict(seq["auc_mean"], 6) and "[only 6 pairs" in verdict


def test_rollout_gap_auc_on_a_handmade_batch():
    """Known answer: group 0 correct (0.3, 0.1) vs wrong (0.2, 0.1) wins 1 + 1 + 0 + 1/2; group 1 correct
    (-0.5) vs wrong (-0.2, -0.9, -0.5) wins 0 + 1 + 1/2; group 2 is all correct (no pairs). Pooled: 4 / 7.
    Pairs across groups would change it (0.1 beats -0.2), and a row without valid tokens is left out."""
    score = torch.tensor([0.3, 0.1, 0.2, 0.1, -0.5, -0.2, -0.9, -0.5, 1.0, 2.0])
    correct = torch.tensor([1, 1, 0, 0, 1, 0, 0, 0, 1, 1], dtype=torch.bool)
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    auc, n, ties = rollout_gap_auc(score, correct, group)
    assert n == 7 and auc == pytest.approx(4 / 7) and ties == 2  # 0.1 vs 0.1 and -0.5 vs -0.5
    valid = torch.ones(10, dtype=torch.bool)
    valid[3] = False  # drop group 0's wrong rollout at 0.1: 1 + 0, then 0 + 1 + 1/2
    auc, n, ties = rollout_gap_auc(score, correct, group, valid)
    assert n == 5 and auc == pytest.approx(2.5 / 5) and ties == 1
    assert rollout_gap_auc(score, correct, torch.zeros(10, dtype=torch.long))[1] == 5 * 5  # all pairs
    auc, n, ties = rollout_gap_auc(score[8:], correct[8:], group[8:])
    assert n == 0 and math.isnan(auc) and ties == 0

    # the same through analyze: constant gaps per row, different lengths (the mean ignores length);
    # an extra wrong row in group 1 with no valid token (score would be 0 > -0.5) is left out
    lengths = [3, 1, 2, 4, 2, 3, 1, 2, 2, 1, 0]
    rows = torch.cat([score, torch.tensor([0.0])])
    mask = torch.tensor([[1.0] * n + [0.0] * (4 - n) for n in lengths])
    rewards = torch.cat([correct.float(), torch.tensor([0.0])])
    groups = torch.cat([group, torch.tensor([1])])
    out = analyze(
        rewards, groups, torch.zeros(11, 4), {"t": rows[:, None].expand(11, 4) * mask}, mask, CastConfig()
    )
    seq = out["teachers"]["t"]["sequences"]
    assert seq["n_pairs"] == 7 and seq["auc_mean"] == pytest.approx(4 / 7)
    assert seq["n_ties"] == 2 and seq["tie_share"] == pytest.approx(2 / 7)
    assert seq["auc_sum"] != pytest.approx(4 / 7)  # summed gaps depend on length
    assert out["teachers"]["t"]["verdict"].startswith(
        "the teacher's gap ranks correct rollouts above wrong ones"
    )


@pytest.mark.parametrize(
    "auc, start, ending",
    [
        (
            0.42,
            "the teacher's gap ranks wrong rollouts above correct ones (AUC 0.42, 120 pairs)",
            "and this teacher is weaker than that one)",
        ),
        (
            0.5 - AUC_BAND,
            "the teacher's gap barely separates correct from wrong rollouts (AUC 0.45, 120 pairs)",
            "use GRPO or compare with flip=false",
        ),
        (0.51, "the teacher's gap barely separates correct from wrong rollouts (AUC 0.51, 120 pairs)", "flip=false"),
        (0.5 + AUC_BAND, "the teacher's gap barely separates", "compare with flip=false"),
        (0.63, "the teacher's gap ranks correct rollouts above wrong ones (AUC 0.63, 120 pairs)",
         "expect CAST at or below GRPO and compare with flip=false"),
    ],
)
def test_verdict_branches(auc, start, ending):
    line = gap_verdict(auc, 120)
    assert line.startswith(start) and line.endswith(ending) and "\n" not in line


def test_verdict_cites_the_positive_control_point_at_or_below_the_auc():
    """The evidence quoted is the control's teacher with the largest AUC not above the measured one; the
    threshold between 'still worse' and 'no longer worse' is the control's lowest AUC reaching 0."""
    from castrl.diagnostics.analysis import AUC_NO_WORSE, CONTROL_CURVE, control_evidence

    ordered = sorted((p for p in CONTROL_CURVE if p.signal), key=lambda p: p.auc)  # no-signal points anchor nothing
    assert AUC_NO_WORSE == min((p.auc for p in ordered if p.hi >= 0), default=math.inf)
    for point in ordered:
        text = control_evidence(point.auc + 0.001)
        assert f"a teacher at AUC {point.auc:.3f} left CAST {point.outcome()} GRPO" in text
        assert f"Δ {point.delta:+.3f} [{point.lo:+.3f}, {point.hi:+.3f}]" in text
    assert f"AUC {ordered[0].auc:.3f}" in control_evidence(0.1)  # below every teacher: the weakest one
    strongest = gap_verdict(0.99, 100)
    if math.isinf(AUC_NO_WORSE):  # CAST lost with every teacher: no 'precondition holds' branch is reachable
        assert "stronger than any the control measured" in strongest and "left CAST worse than GRPO" in strongest
    else:
        assert "a gain over GRPO is not established by it" in strongest
        assert f"below AUC {AUC_NO_WORSE:.2f}" in gap_verdict((0.5 + AUC_BAND + AUC_NO_WORSE) / 2, 100)


def test_verdict_without_pairs_and_with_few():
    assert gap_verdict(float("nan"), 0).startswith("no mixed group")
    assert gap_verdict(0.7, 0).startswith("no mixed group")
    few = gap_verdict(0.3, MIN_VERDICT_PAIRS - 1)
    assert few.startswith("the teacher's gap ranks wrong") and few.endswith(
        f"[only {MIN_VERDICT_PAIRS - 1} pairs: a noisy estimate]"
    )
    assert "noisy" not in gap_verdict(0.3, MIN_VERDICT_PAIRS)


def test_peer_texts_follow_the_trainers_choice():
    """Another correct, untruncated, scorable rollout of the same group; never the row itself."""
    texts = [f"t{i}" for i in range(8)]
    rewards = [1.0, 0.0, 1.0, 1.0, 1.0, 0.0, None, 1.0]
    groups = [0, 0, 0, 0, 1, 1, 1, 2]
    truncated = [False, False, False, True, False, False, False, False]
    assert peer_texts(texts, rewards, groups, 0.5, truncated) == [
        "t2",
        "t0",
        "t0",
        "t0",
        None,
        "t4",
        "t4",
        None,
    ]
    assert peer_texts(texts, rewards, groups, 0.5)[3] == "t0"  # a truncated row still gets a peer


def test_peer_context_falls_back_to_answer_free_without_a_peer(run):
    """with_peer_success scores a row without a peer exactly as answer_free does, and reads the peer otherwise."""
    kept = run.kept
    peers = [p for p, k in zip(run.peers, kept.tolist(), strict=True) if k]
    assert peers == [
        p
        for p, k in zip(
            peer_texts(
                run.rollouts.texts,
                REWARDS,
                run.rollouts.group_ids.tolist(),
                0.5,
                run.rollouts.truncated.tolist(),
            ),
            kept.tolist(),
            strict=True,
        )
        if k
    ]
    none = torch.tensor([p is None for p in peers])
    assert none.any() and (~none).any()  # the all-wrong group has no peer; the all-correct group has
    peer, free = run.teacher_logps["with_peer_success"], run.teacher_logps["answer_free"]
    torch.testing.assert_close(peer[none], free[none], atol=1e-5, rtol=0)
    assert not torch.allclose(peer[~none], free[~none])
    results = run.results["teachers"]["with_peer_success"]
    assert results["peer_fallback_count"] == float(none.sum())
    assert "scored with the answer_free context" in run.notes["with_peer_success"]


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
        CastConfig(flip_margin=0.15),
    )
    t = out["teachers"]["t"]
    assert t["nonfinite_count"] == 1
    assert t["quadrants"]["correct_pos"]["count"] == 2 and t["quadrants"]["correct_pos"][
        "mean"
    ] == pytest.approx(0.4)
    assert t["quadrants"]["correct_neg"]["count"] == 1
    assert t["quadrants"]["correct_all"]["zero_count"] == 2  # the g = 0 token and the NaN one
    assert t["quadrants"]["wrong_pos"]["count"] == 4 and t["quadrants"]["wrong_neg"]["count"] == 2
    # margin 0.15: all-correct group (B = +1): -0.25 flips down; all-wrong (B = -1): 0.2, 0.7, 1.0 flip up, 0.1 not
    flips = t["flips"]
    assert flips["flip_down_count"] == 1 and flips["flip_up_count"] == 3 and flips["margin"] == 0.15
    assert flips["flip_frac_correct"] == pytest.approx(1 / 5)
    assert flips["flip_frac_wrong"] == pytest.approx(3 / 6)
    assert flips["frac_flipped"] == pytest.approx(4 / 11)
    sweep = {m: v["all"] for m, v in flips["sweep"].items()}  # the configured margin is added to the sweep
    assert sweep == pytest.approx({"0": 5 / 11, "0.05": 5 / 11, "0.1": 4 / 11, "0.2": 3 / 11, "0.15": 4 / 11})
    # against the verifier: independent of the margin; 2 tokens have g = 0 (one of them the NaN)
    against = t["against_verifier"]
    assert against["n_tokens"] == 11 and against["frac"] == pytest.approx(5 / 11)
    assert against["frac_correct_negative"] == pytest.approx(1 / 11)
    assert against["frac_incorrect_positive"] == pytest.approx(4 / 11)
    assert against["frac_agree"] == pytest.approx(4 / 11)
    assert out["groups"]["frac_all_correct"] == out["groups"]["frac_all_wrong"] == 0.5
    assert t["sequences"]["n_pairs"] == 0 and t["verdict"].startswith("no mixed group")
    assert [e[:2] for e in t["extremes"]["wrong_most_positive"][:2]] == [(3, 2), (3, 0)]


# ---------------------------------------------------------------------------------------------
# outputs


def test_report_files(run, tmp_path):
    payload = {
        "command": "castrl diagnose --n_prompts 4",
        "argv": ["--n_prompts", "4"],
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
        "gap_hist_answer_free.png",
        "gap_hist_with_peer_success.png",
        "gap_hist_with_reference.png",
        "gap_position.png",
    ]
    for png in pngs:
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "diagnostics.json").read_text())
    assert saved["command"] == payload["command"]
    q = saved["results"]["teachers"]["with_reference"]["quadrants"]["wrong_neg"]
    assert q["mean"] == run.results["teachers"]["with_reference"]["quadrants"]["wrong_neg"]["mean"]
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(pngs)
    assert "src='http" not in page and "<link" not in page and "<script" not in page
    md = (tmp_path / "diagnostics.md").read_text()
    assert "| with_peer_success | wrong |" in md and payload["command"] in md
    assert "| paper, Qwen3-4B CAST (Table 9) |  | 26.4 % | 19.4 % (derived) | 7.0 % |" in md
    assert "tau" not in md and "threshold" not in md.replace("correct_threshold", "")
    last = md.rstrip().splitlines()[-3:]  # the report ends with one verdict per teacher
    for line, name in zip(last, run.settings.teachers, strict=True):
        assert line == f"- {name}: {run.results['teachers'][name]['verdict']}"
    assert "positive control" in md and "Verdict" in page
    assert paths["html"] == str(tmp_path / "report.html")


def test_cli_end_to_end_on_a_saved_tiny_model(tmp_path, capsys):
    model_dir = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "out"
    argv = [
        "--model",
        str(model_dir),
        "--n_prompts",
        "2",
        "--group_size",
        "2",
        "--max_new_tokens",
        "6",
        "--output_dir",
        str(out),
        "--no_progress",
        "--threads",
        "0",
        "--prompt_style",
        "plain",
        "--mask_truncated_completions",  # a random model rarely ends within 6 tokens
        "false",
    ]
    assert main(argv) == 0
    saved = json.loads((out / "diagnostics.json").read_text())
    assert saved["argv"] == argv and saved["command"].startswith("castrl diagnose --model")
    assert saved["settings"]["teachers"] == ["answer_free", "with_reference"]
    assert saved["settings"]["teacher_weights"] == "refresh:10" and saved["cast_config"]["flip_margin"] == 0
    assert saved["notes"]["teacher_weights"].startswith("refresh:10: equals the policy")
    assert saved["results"]["groups"]["n_rollouts"] == 4 and saved["timings_s"]["total_s"] > 0
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert any("report:" in line for line in lines)
    for line, name in zip(
        lines[-2:], ("answer_free", "with_reference"), strict=True
    ):  # ends with the verdicts
        assert line == f"[castrl diagnose] verdict, {name}: {saved['results']['teachers'][name]['verdict']}"


def test_every_flag_has_help():
    actions = [a for a in build_parser()._actions if a.dest != "help"]
    assert {a.dest for a in actions} == set(DiagnoseSettings.__dataclass_fields__)
    assert all(a.help and len(a.help) > 10 for a in actions)
    flags = {flag for a in actions for flag in a.option_strings}
    assert {"--n_prompts", "--teacher_weights", "--flip_margin", "--no_flip_correct", "--no_progress"} <= flags


def test_teachers_space_or_comma_separated():
    from castrl.commands.diagnose import parse_settings

    spaced = parse_settings(["--teachers", "answer_free", "with_peer_success", "--model", "/nonexistent/model"])
    commas = parse_settings(["--teachers", "answer_free,with_peer_success", "--model", "/nonexistent/model"])
    assert spaced.teachers == commas.teachers == ["answer_free", "with_peer_success"]
    assert parse_settings(["--no_flip_correct", "--model", "/nonexistent/model"]).flip_correct is False


def test_a_teacher_may_be_a_template_as_in_castrl_train():
    from castrl.commands.diagnose import parse_settings

    template = "Q: {problem} (answer: {answer})\nA:"
    assert parse_settings(["--teachers", template, "--model", "/nonexistent/model"]).teachers == [template]


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--teachers", "answer_free,oracle"], "unknown teacher context(s) ['oracle']"),
        (["--teachers", "Q: {question}"], "unknown teacher context(s) ['Q: {question}']"),  # not a template's field
        (["--teachers", ""], "--teachers is empty"),
        (["--teachers", "answer_free,answer_free"], "lists a context twice"),
        (["--teachers", "student", "--teacher_weights", "policy"], "gap g is always 0"),
        (["--teachers", "student", "--teacher_weights", "refresh:1"], "gap g is always 0"),
        (["--teachers", "student"], "its gap is always 0"),  # refresh:10 equals the policy without training
        (["--teachers", "student", "--teacher_weights", "ema"], "its gap is always 0"),
        (["--teacher_weights", "sometimes"], "teacher_weights must be"),
        (["--teacher_weights", "lagged:3"], "teacher_weights must be 'refresh:<K>'"),
        (["--group_size", "1"], "--group_size must be an integer >= 2"),
        (["--n_prompts", "0"], "--n_prompts must be an integer >= 1"),
        (["--temperature", "0"], "--temperature must be a finite number > 0"),
        (["--flip_margin", "-0.1"], "flip_margin must be a finite number >= 0"),
        (["--prompt_style", "poem"], "--prompt_style must be one of"),
        (["--n_prompts", "100000"], "lower --n_prompts"),
        (["--data", "missing.jsonl"], "no such file"),
        (["--lora_adapter", "/nonexistent/adapter"], "not a PEFT adapter folder"),
    ],
)
def test_bad_flags_fail_before_the_model_loads(argv, message, capsys):
    assert main(argv + ["--model", "/nonexistent/model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("castrl diagnose: error:") and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, new, message",
    [
        (["--style", "poem"], "--prompt_style", "--prompt_style must be one of"),
        (["--adapter", "/nonexistent/adapter"], "--lora_adapter", "not a PEFT adapter folder"),
    ],
)
def test_old_flag_names_still_work_with_a_deprecation_line(argv, new, message, capsys):
    """`--style` and `--adapter` (the spellings before the shared vocabulary) are read as the new flags until
    the next release: one deprecation line naming the new flag, then the same check."""
    assert main(argv + ["--model", "/nonexistent/model"]) == 2
    first, *rest = capsys.readouterr().err.strip().splitlines()
    assert first == (f"castrl diagnose: warning: {argv[0]} is deprecated and will be removed in the next release; "
                     f"use {new}")
    assert rest[-1].startswith("castrl diagnose: error:") and message in rest[-1]


def test_teacher_context_needs_its_column(tmp_path, capsys):
    data = tmp_path / "probs.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"id": str(i), "problem": f"What is {i} + 1?", "answer": str(i + 1)}) for i in range(3)
        )
    )
    assert main(["--data", str(data), "--n_prompts", "2", "--teachers", "answer_free,with_solution"]) == 2
    assert "with_solution reads the 'solution' column" in capsys.readouterr().err
    with pytest.raises(ValueError, match="with_reference reads the 'answer' column.*id 'b'"):
        check_context_columns(
            [{"id": "a", "answer": "1"}, {"id": "b", "answer": ""}], ["with_reference"], "rows"
        )
    for context in ("answer_free", "with_peer_success"):  # no column needed
        check_context_columns([{"id": "b", "answer": ""}], [context], "rows")


def test_nan_free_json(run):
    """Every number is finite or null in the JSON (strict JSON has no NaN)."""
    from castrl.formatting import jsonable

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


def test_truncated_completions_are_left_out_as_the_trainer_does(run, tiny):
    """With the default mask, a completion without an end token has no valid token (the trainer's loss
    mask), while its reward still counts: same groups and rewards, fewer tokens."""
    from dataclasses import replace

    model, tokenizer = tiny
    masked = run_diagnostics(replace(run.settings, mask_truncated_completions=True), model=model,
                             tokenizer=tokenizer, reward_fn=lambda texts, golds: list(REWARDS))
    truncated = masked.rollouts.truncated[masked.kept]
    assert truncated.any() and (~truncated).any()
    assert (masked.mask[truncated] == 0).all()
    assert torch.equal(masked.mask[~truncated], run.mask[~truncated])
    assert torch.equal(masked.rewards, run.rewards)


def test_all_truncated_with_masking_fails_with_the_fix(run, tiny):
    from dataclasses import replace

    model, tokenizer = tiny
    settings = replace(run.settings, mask_truncated_completions=True, max_new_tokens=1)
    with pytest.raises(ValueError, match="every scored rollout hit --max_new_tokens 1 .* --mask_truncated_completions false"):
        run_diagnostics(settings, model=model, tokenizer=tokenizer, reward_fn=lambda texts, golds: list(REWARDS))
