"""`teacher_model`: an external frozen teacher (OPD-style) that shares the student's tokenizer."""

from __future__ import annotations

import pytest
import torch

from castrl.teacher import ExternalTeacher, TeacherConfig, check_same_tokenizer
from castrl.testing import build_char_tokenizer, build_tiny_model, save_tiny_model

from .test_trainer import _batch, _trainer


def test_external_teacher_scores_with_its_own_model_and_leaves_the_policy_alone(tmp_path):
    """With the student's own context, the gap is exactly teacher-model minus policy log-probs: the
    teacher pass equals a pass of the external model, and the policy's weights are untouched."""
    folder = save_tiny_model(tmp_path / "teacher", seed=7)
    trainer = _trainer(tmp_path, teacher_context="student", teacher_model=str(folder), fuse_student_pass=False,
                       share_prompt_cache=False)  # fmt: skip
    assert isinstance(trainer.teacher_weights, ExternalTeacher)
    assert not any(p.requires_grad for p in trainer.teacher_weights.model.parameters())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    torch.manual_seed(0)
    output = trainer._generate_and_score_completions(_batch(trainer))
    teacher = trainer._teacher_logps(_batch(trainer), output)
    student = output["old_per_token_logps"]
    direct = trainer._completion_logps(output["prompt_ids"], output["prompt_mask"], output,
                                       trainer.teacher_weights.model)  # fmt: skip
    mask = output["completion_mask"].bool()
    torch.testing.assert_close(teacher[mask], direct[mask])
    assert (teacher - student)[mask].abs().max() > 1e-3  # another model: a real gap
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    state = trainer.teacher_weights.state_dict()
    assert state == {"spec": "external", "model": str(folder)}
    with pytest.raises(ValueError, match="teacher_model"):
        ExternalTeacher("other", build_tiny_model(build_char_tokenizer())).load_state_dict(state)


def test_a_teacher_with_another_tokenizer_is_rejected(tmp_path):
    student = build_char_tokenizer()
    other = build_char_tokenizer()
    other.add_tokens(["<extra>"])
    with pytest.raises(ValueError, match="does not share the student's tokenizer.*only in the teacher"):
        check_same_tokenizer(student, other, "big-teacher")
    check_same_tokenizer(student, build_char_tokenizer(), "same")


def test_teacher_model_config():
    config = TeacherConfig(context="student", weights="policy", model="some/teacher")  # a real gap: allowed
    config.check_host("trl")
    with pytest.raises(ValueError, match="teacher_model='some/teacher' is not supported on verl"):
        config.check_host("verl")
    with pytest.raises(ValueError, match="teacher_model must be"):
        TeacherConfig(model="  ")
    from castrl.teacher import load_external_teacher

    with pytest.raises(ValueError, match="teacher_model '/nonexistent/teacher': .*does not exist"):
        load_external_teacher("/nonexistent/teacher", build_char_tokenizer(), torch.nn.Linear(1, 1))


def test_diagnose_scores_with_the_external_teacher(tmp_path):
    """`castrl diagnose --teacher_model`: the student's own context read by another model gives that
    model's log-probs minus the policy's, so the gap is not 0 (it would be 0 with the self-teacher)."""
    from castrl.diagnostics import DiagnoseSettings, run_diagnostics

    folder = save_tiny_model(tmp_path / "teacher", seed=5)
    tokenizer = build_char_tokenizer()
    settings = DiagnoseSettings(
        n_prompts=2, group_size=2, max_new_tokens=6, teachers=["student"], teacher_model=str(folder),
        progress=False, threads=0, prompt_style="plain", mask_truncated_completions=False,  # a random model never ends
    )  # fmt: skip
    run = run_diagnostics(settings, model=build_tiny_model(tokenizer), tokenizer=tokenizer,
                          reward_fn=lambda texts, golds: [1.0, 0.0, 0.0, 1.0])  # fmt: skip
    gap = (run.teacher_logps["student"] - run.student_logps)[run.mask > 0]
    assert gap.abs().max() > 1e-3
    assert "external teacher model" in run.notes["teacher_weights"]
    # the teacher context is named `student`: its re-scored log-probs must not stand in for the student's,
    # which made the noise floor the whole gap (the control's profiles quoted a p95 |Δg| of 0.78 in fp32)
    for variant, floor in run.results["teachers"]["student"]["noise_floor"]["variants"].items():
        assert floor["abs_delta_max"] < 1e-3, (variant, floor)
