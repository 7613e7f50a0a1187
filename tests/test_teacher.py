"""Teacher contexts and teacher weights (spec §3)."""

from __future__ import annotations

import pytest
import torch

from castrl.teacher import (
    TeacherConfig,
    TeacherWeights,
    WeightsSpec,
    build_teacher_prompt,
    check_teacher_config,
    context_uses,
    successful_peers,
    validate_teacher_context,
)

EXAMPLE = {
    "prompt": [
        {"role": "user", "content": "What is 4 + 3?"},
        {"role": "assistant", "content": "4 + 3 = 7."},
        {"role": "user", "content": "What is 2 + 2? Please reason step by step."},
    ],
    "problem": "What is 2 + 2?",
    "answer": "4",
    "solution": "2 + 2 = 4.",
}


def test_self_teach_never_sees_the_answer_and_keeps_few_shot_turns():
    prompt = build_teacher_prompt(EXAMPLE, "self_teach")
    assert prompt[:2] == EXAMPLE["prompt"][:2]
    text = prompt[-1]["content"]
    assert text.startswith("What is 2 + 2?") and "careful teacher" in text
    assert "4" not in text.replace("2 + 2", "")
    assert not context_uses("self_teach", "answer") and context_uses("with_answer", "answer")


def test_answer_free_is_the_papers_T_AF():
    # §8.4: T_AF(x) = x || "\n\n[Student response]\n", x = the student's problem turn as written
    prompt = build_teacher_prompt(EXAMPLE, "answer_free")
    assert prompt[:2] == EXAMPLE["prompt"][:2]  # few-shot turns kept
    assert prompt[-1]["content"] == "What is 2 + 2? Please reason step by step.\n\n[Student response]\n"
    assert not context_uses("answer_free", "answer")


def test_with_reference_is_the_papers_T_GT():
    text = build_teacher_prompt(EXAMPLE, "with_reference")[-1]["content"]
    assert text == "What is 2 + 2? Please reason step by step.\n\n[Reference solution]\n4\n\n[Student response]\n"
    with pytest.raises(ValueError, match="non-empty 'answer'"):
        build_teacher_prompt({**EXAMPLE, "answer": ""}, "with_reference")


def test_peer_context_and_its_fallback():
    text = build_teacher_prompt(EXAMPLE, "with_peer_success", peer="2 + 2 = 4. \\boxed{4}")[-1]["content"]
    assert text.endswith("[Successful response]\n2 + 2 = 4. \\boxed{4}\n\n[Student response]\n")
    assert build_teacher_prompt(EXAMPLE, "with_peer_success") == build_teacher_prompt(EXAMPLE, "answer_free")


def test_successful_peers_are_sampled_among_the_other_successes():
    # group 0: rows 0, 2, 5 correct, 1 wrong; group 1: row 3 the only success; group 2: none
    correct = [True, False, True, True, False, True, False]
    groups = [0, 0, 0, 1, 1, 0, 2]
    draws = set()
    for seed in range(30):
        peers = successful_peers(correct, groups, seed)
        assert peers[3] is None and peers[4] == 3 and peers[6] is None  # never itself; none without a success
        for i in (0, 1, 2, 5):
            assert peers[i] in {0, 2, 5} - {i}
        assert peers == successful_peers(correct, groups, seed)  # reproducible
        draws.add(tuple(peers))
    assert len(draws) > 1  # sampled, not always the first success
    with pytest.raises(ValueError, match="group keys"):
        successful_peers([True], [0, 0])


def test_privileged_contexts_and_student_context():
    assert "The correct final answer is 4." in build_teacher_prompt(EXAMPLE, "with_answer")[-1]["content"]
    assert "2 + 2 = 4." in build_teacher_prompt(EXAMPLE, "with_solution")[-1]["content"]
    assert build_teacher_prompt(EXAMPLE, "student") == EXAMPLE["prompt"]


def test_custom_template_and_string_prompts():
    out = build_teacher_prompt({**EXAMPLE, "prompt": "Q: What is 2 + 2?"}, "Teacher mode. {problem} (gold {answer})")
    assert out == "Teacher mode. What is 2 + 2? (gold 4)"
    # problem falls back to the last user turn when the dataset has no problem column
    no_problem = {k: v for k, v in EXAMPLE.items() if k != "problem"}
    assert build_teacher_prompt(no_problem, "{problem}!")[-1]["content"].startswith("What is 2 + 2? Please")


def test_bad_contexts_raise():
    with pytest.raises(ValueError, match="user_turn"):
        validate_teacher_context("no placeholder here")
    validate_teacher_context("{user_turn} -- grade this")
    with pytest.raises(ValueError, match="unknown fields"):
        validate_teacher_context("{problem} {hint}")
    with pytest.raises(ValueError, match="non-empty 'answer'"):
        build_teacher_prompt({**EXAMPLE, "answer": ""}, "with_answer")


@pytest.mark.parametrize("weights", ["policy", "refresh:1"])
def test_zero_gap_combination_is_rejected_with_both_ways_out(weights):
    with pytest.raises(ValueError, match="teacher_context.*teacher_weights") as err:
        check_teacher_config("student", weights)
    assert "answer_free" in str(err.value) and "refresh:10" in str(err.value)


@pytest.mark.parametrize(("context", "weights"), [("student", "ema"), ("student", "refresh:2"),
                                                  ("answer_free", "policy"), ("answer_free", "refresh:1")])  # fmt: skip
def test_teachers_that_can_differ_are_accepted(context, weights):
    check_teacher_config(context, weights)


@pytest.mark.parametrize("spec", ["refresh:0", "refresh", "ema:3", "best", "refresh:-2", "lagged:5"])
def test_bad_weight_specs(spec):
    with pytest.raises(ValueError, match="teacher_weights"):
        WeightsSpec.parse(spec)


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    model[1].weight.requires_grad_(False)  # frozen params are never shadowed
    return model


def _step(model, value):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(value)


def test_ema_teacher_tracks_with_decay_and_swaps_back():
    model = _model()
    teacher = TeacherWeights("ema", model, ema_decay=0.5)
    assert teacher.names == ["0.weight", "0.bias", "1.bias"]
    init = model[0].weight.detach().clone()
    _step(model, 1.0)
    teacher.update(model, global_step=1)
    current = model[0].weight.detach().clone()
    with teacher.scoring(model):
        torch.testing.assert_close(model[0].weight, init + 0.5)  # lerp halfway
    torch.testing.assert_close(model[0].weight, current)


def test_frozen_and_refresh_teachers():
    model = _model()
    frozen, refresh = TeacherWeights("frozen", model), TeacherWeights("refresh:2", model)
    init = model[0].bias.detach().clone()
    with refresh.scoring(model):  # the snapshot taken at step 0
        torch.testing.assert_close(model[0].bias, init)
    for step in (1, 2, 3):
        _step(model, 1.0)
        frozen.update(model, step)
        refresh.update(model, step)
    with frozen.scoring(model):
        torch.testing.assert_close(model[0].bias, init)
    with refresh.scoring(model):
        torch.testing.assert_close(model[0].bias, init + 2.0)  # refreshed at step 2, not at 3


def test_policy_teacher_is_the_model_itself():
    model = _model()
    teacher = TeacherWeights("policy", model)
    assert teacher.shadow is None
    before = model[0].weight.detach().clone()
    with teacher.scoring(model):
        torch.testing.assert_close(model[0].weight, before)


def test_state_dict_round_trip_and_mismatch():
    model = _model()
    teacher = TeacherWeights("ema", model, ema_decay=0.9)
    _step(model, 3.0)
    teacher.update(model, 1)
    state = teacher.state_dict()
    other = TeacherWeights("ema", _model(), ema_decay=0.9)
    other.load_state_dict(state)
    for a, b in zip(teacher.shadow, other.shadow, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="teacher_weights"):
        TeacherWeights("refresh:3", _model()).load_state_dict(state)
    with pytest.raises(ValueError, match="ema_decay"):
        TeacherConfig(weights="ema", ema_decay=1.0)


def test_teacher_fields_are_declared_once_and_injected_into_the_trl_config():
    from dataclasses import fields

    from castrl.trl import CASTTrainerConfig

    host = {f.name: f for f in fields(CASTTrainerConfig)}
    for f in fields(TeacherConfig):
        injected = host[f"teacher_{f.name}"]
        assert injected.default == f.default and injected.metadata["help"] == f.metadata["help"], f.name


@pytest.mark.parametrize(
    ("host", "weights", "ok"),
    [("trl", "refresh:10", True), ("trl", "ema", True), ("verl", "policy", True), ("verl", "refresh:1", True),
     ("verl", "frozen", True), ("verl", "refresh:10", True), ("verl", "ema", True), ("narrow", "ema", False)],
)  # fmt: skip
def test_which_weights_each_host_supports(host, weights, ok, monkeypatch):
    """Every host scores with every kind since #27 (verl: refresh:K / ema on FSDP actors); a host whose
    table lacks a kind still refuses it, naming the teacher."""
    from castrl.teacher import config as teacher_config

    monkeypatch.setitem(teacher_config.HOST_WEIGHTS, "narrow", ("policy",))
    config = TeacherConfig(weights=weights)
    if ok:
        config.check_host(host)
    else:
        with pytest.raises(ValueError, match=f"not supported on {host}. This teacher is"):
            config.check_host(host)
