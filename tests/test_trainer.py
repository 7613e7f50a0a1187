"""CASTTrainer on a tiny random model: training changes weights, GRPO parity with stock TRL,
all-wrong groups carry gradient under CAST only, the teacher pass reproduces the student pass,
checkpoints carry the teacher state."""

from __future__ import annotations

import os

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer

from castrl.trl import CASTTrainer, CASTTrainerConfig
from castrl.trl.checkpoint import COMPLETE_MARKER, TEACHER_STATE_FILE, last_complete_checkpoint

from .trl_helpers import parity_reward, tiny_config, tiny_model_and_tokenizer, toy_dataset, zero_reward


def _trainer(tmp_path, reward=parity_reward, seed=0, **overrides) -> CASTTrainer:
    model, tokenizer = tiny_model_and_tokenizer(seed)
    args = tiny_config(tmp_path, **overrides)
    model.train()  # as inside Trainer.train(): metrics of direct hook calls land under "train"
    return CASTTrainer(model=model, reward_funcs=reward, args=args, train_dataset=toy_dataset(), processing_class=tokenizer)


def _batch(trainer) -> list[dict]:
    rows = toy_dataset()
    # Two prompts x num_generations copies, as TRL's RepeatSampler lays out a generation batch.
    return [dict(rows[i]) for i in (0, 1) for _ in range(trainer.num_generations)]


def test_cast_two_steps_change_parameters_and_log_cast_metrics(tmp_path):
    trainer = _trainer(tmp_path, teacher_weights="ema")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = sum((p.detach() - before[n]).abs().sum().item() for n, p in trainer.model.named_parameters())
    assert changed > 0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for key in ("cast/frac_all_correct", "cast/frac_all_wrong", "cast/frac_mixed", "cast/frac_nonzero_adv",
                "cast/gap_abs_p95", "cast/flip_frac_wrong", "cast/adv_max", "cast/time_teacher_s", "entropy"):
        assert key in logs[-1], key


def test_grpo_mode_matches_stock_trl(tmp_path):
    cast = _trainer(tmp_path / "a", advantage_estimator="grpo", epsilon_high=0.28)
    model, tokenizer = tiny_model_and_tokenizer(0)
    model.train()
    stock_args = GRPOConfig(**{k: getattr(cast.args, k) for k in (
        "use_cpu", "bf16", "max_steps", "per_device_train_batch_size", "num_generations", "max_completion_length",
        "report_to", "save_strategy", "gradient_checkpointing", "learning_rate", "seed", "epsilon_high")},
        output_dir=str(tmp_path / "b"))
    stock = GRPOTrainer(model=model, reward_funcs=parity_reward, args=stock_args, train_dataset=toy_dataset(),
                        processing_class=tokenizer)
    batch = _batch(cast)
    torch.manual_seed(123)
    ours = cast._generate_and_score_completions([dict(x) for x in batch])
    torch.manual_seed(123)
    theirs = stock._generate_and_score_completions([dict(x) for x in batch])
    assert torch.equal(ours["completion_ids"], theirs["completion_ids"])
    assert theirs["advantages"].abs().sum() > 0, "the test batch must have mixed groups"
    mask = ours["completion_mask"].float()
    torch.testing.assert_close(ours["advantages"], theirs["advantages"][:, None] * mask)
    cast.current_gradient_accumulation_steps = stock.current_gradient_accumulation_steps = 1  # set by train()
    loss_ours = cast.compute_loss(cast.model, ours)
    loss_theirs = stock.compute_loss(stock.model, theirs)
    torch.testing.assert_close(loss_ours, loss_theirs)


@pytest.mark.parametrize("estimator, expect_grad", [("cast", True), ("grpo", False)])
def test_all_wrong_batch_gradient(tmp_path, estimator, expect_grad):
    trainer = _trainer(tmp_path, reward=zero_reward, advantage_estimator=estimator)
    torch.manual_seed(0)
    inputs = trainer._generate_and_score_completions(_batch(trainer))
    trainer.current_gradient_accumulation_steps = 1  # set by train()
    trainer.model.zero_grad(set_to_none=False)
    trainer.compute_loss(trainer.model, inputs).backward()
    grad_norm = sum(p.grad.abs().sum().item() for p in trainer.model.parameters() if p.grad is not None)
    assert (grad_norm > 0) == expect_grad


@pytest.mark.parametrize("fuse", [False, True])
def test_student_context_teacher_reproduces_student_logps(tmp_path, fuse):
    """With the student's own context and an EMA copy equal to the policy, the gap is exactly 0:
    the teacher pass reproduces the separate student pass and, fused, the loss's forward pass."""
    trainer = _trainer(tmp_path, teacher_context="student", teacher_weights="ema", fuse_student_pass=fuse)
    torch.manual_seed(0)
    inputs = trainer._generate_and_score_completions(_batch(trainer))
    if fuse:
        assert inputs.get("old_per_token_logps") is None and inputs["advantages"].isnan().all()
        trainer.current_gradient_accumulation_steps = 1  # set by train()
        trainer.compute_loss(trainer.model, inputs)
        assert inputs["advantages"].shape == inputs["completion_ids"].shape
    else:
        assert inputs["old_per_token_logps"].shape == inputs["completion_ids"].shape
    metrics = trainer._metrics["train"]
    assert metrics["cast/gap_abs_p95"][-1] == pytest.approx(0.0, abs=1e-5)
    assert metrics["cast/gap_std"][-1] == pytest.approx(0.0, abs=1e-5)


def test_self_teach_context_gives_nonzero_gap(tmp_path):
    trainer = _trainer(tmp_path, fuse_student_pass=False)
    torch.manual_seed(0)
    trainer._generate_and_score_completions(_batch(trainer))
    assert trainer._metrics["train"]["cast/gap_std"][-1] > 0


def test_checkpoint_holds_teacher_state_and_resume_restores_it(tmp_path):
    trainer = _trainer(tmp_path, teacher_weights="ema", teacher_ema_decay=0.5, save_strategy="steps", save_steps=1)
    trainer.train()
    ckpt = last_complete_checkpoint(trainer.args.output_dir)
    assert ckpt is not None and ckpt.endswith("checkpoint-2")
    assert os.path.exists(os.path.join(ckpt, COMPLETE_MARKER))
    saved = torch.load(os.path.join(ckpt, TEACHER_STATE_FILE), weights_only=True)["shadow"]
    resumed = _trainer(tmp_path, teacher_weights="ema", teacher_ema_decay=0.5, max_steps=3)
    resumed.train(resume_from_checkpoint=ckpt)
    assert resumed.state.global_step == 3
    os.remove(os.path.join(ckpt, COMPLETE_MARKER))
    assert last_complete_checkpoint(trainer.args.output_dir).endswith("checkpoint-1")
    # After loading step 2's EMA and one more update, the shadow moved from the saved one.
    shadow = dict(zip(resumed.teacher_weights.names, resumed.teacher_weights.shadow, strict=True))
    assert set(shadow) == set(saved)
    assert any(not torch.equal(shadow[n], saved[n]) for n in saved)


def test_zero_gap_config_is_rejected_before_model_load(tmp_path):
    for weights in ("policy", "refresh:1"):
        with pytest.raises(ValueError, match="teacher_context.*teacher_weights"):
            tiny_config(tmp_path, teacher_context="student", teacher_weights=weights)
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        tiny_config(tmp_path, advantage_estimator="ppo")
    with pytest.raises(ValueError, match="band_pos"):
        tiny_config(tmp_path, band_pos=[1.1, 0.9])
    # grpo needs no teacher, so the teacher knobs are not checked
    assert tiny_config(tmp_path, advantage_estimator="grpo", teacher_context="student").advantage_estimator == "grpo"


def test_trainer_requires_cast_config(tmp_path):
    model, tokenizer = tiny_model_and_tokenizer()
    with pytest.raises(TypeError, match="CASTTrainerConfig"):
        CASTTrainer(model=model, reward_funcs=parity_reward, args=GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False),
                    train_dataset=toy_dataset(), processing_class=tokenizer)


def test_estimator_config_round_trip(tmp_path):
    args = tiny_config(tmp_path, flip_margin=0.25, band_neg=[0.9, 1.3], lam=0.5, flip_correct=False,
                       shaping_cutoff_step=7)  # fmt: skip
    cfg = args.estimator_config()
    assert cfg.band_neg == (0.9, 1.3) and cfg.lam == 0.5 and cfg.flip_margin == 0.25
    assert cfg.flip_correct is False and cfg.flip_incorrect is True and cfg.shaping_cutoff_step == 7
    assert isinstance(args, CASTTrainerConfig)


@pytest.mark.parametrize("estimator", ["grpo", "cast", "rlsd"])
def test_truncated_completions_are_masked_from_the_loss(tmp_path, estimator):
    """Spec §4: a completion with no end token within the budget gets no loss and no advantage (for
    every method); the truncated ratio is logged. The tiny model rarely ends within 10 tokens."""
    trainer = _trainer(tmp_path, advantage_estimator=estimator, mask_truncated_completions=True,
                       fuse_student_pass=False, max_steps=1)  # fmt: skip
    torch.manual_seed(0)
    output = trainer._generate_and_score_completions(_batch(trainer))
    ends = {trainer.processing_class.eos_token_id, trainer.processing_class.pad_token_id}
    truncated = torch.tensor([ids[-1].item() not in ends for ids in output["completion_ids"]])
    assert truncated.any()
    assert (output["completion_mask"][truncated] == 0).all()
    assert (output["advantages"][truncated] == 0).all()
    assert (output["completion_mask"][~truncated].sum(dim=1) > 0).all()
    logged = trainer._metrics["train"]["cast/frac_truncated"]
    assert logged == [truncated.float().mean().item()]


def test_truncation_masking_is_on_by_default(tmp_path):
    args = CASTTrainerConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False)
    assert args.mask_truncated_completions is True
    assert (args.temperature, args.top_p, args.top_k) == (0.7, 0.95, 20)  # spec §4 rollout sampling
    assert (args.teacher_context, args.teacher_weights) == ("answer_free", "refresh:10")


def test_resumed_refresh_teacher_equals_the_uninterrupted_runs(tmp_path):
    """refresh:2 takes its snapshot at steps 0 and 2: resuming from step 1 restores the step-0 snapshot
    and refreshes at step 2 exactly as the uninterrupted run did, to the policy's step-2 weights."""
    from safetensors.torch import load_file

    kw = dict(teacher_weights="refresh:2", save_strategy="steps", save_steps=1, max_steps=3)
    full = _trainer(tmp_path / "full", **kw)
    initial = [s.clone() for s in full.teacher_weights.shadow]
    full.train()
    resumed = _trainer(tmp_path / "resumed", **kw)
    resumed.train(resume_from_checkpoint=os.path.join(full.args.output_dir, "checkpoint-1"))
    step2 = load_file(os.path.join(full.args.output_dir, "checkpoint-2", "model.safetensors"))
    for name, a, b, first in zip(full.teacher_weights.names, full.teacher_weights.shadow,
                                 resumed.teacher_weights.shadow, initial, strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        torch.testing.assert_close(a, step2[name], rtol=0, atol=0)  # the snapshot is the policy at step 2
        assert not torch.equal(a, first) or name.endswith("bias")


def test_rlrt_teacher_reads_a_successful_peer(tmp_path):
    trainer = _trainer(tmp_path, advantage_estimator="rlrt", teacher_context="with_peer_success")
    captured = []
    original = trainer._tokenize_teacher_prompts
    trainer._tokenize_teacher_prompts = lambda prompts: captured.append(prompts) or original(prompts)
    output = trainer._generate_and_score_completions(_batch(trainer))
    rewards, group_ids, _ = trainer._global_rewards("train")
    peers = trainer._peer_texts(output)
    texts = trainer.processing_class.batch_decode(output["completion_ids"], skip_special_tokens=True)
    for i, peer in enumerate(peers):
        group = [j for j in range(len(peers)) if group_ids[j] == group_ids[i] and j != i and rewards[j] >= 0.5]
        assert (peer is None) == (not group)
        if peer is not None:
            assert peer in {texts[j] for j in group}
            content = captured[0][i][-1]["content"]
            assert content.endswith(f"[Successful response]\n{peer}\n\n[Student response]\n")
        else:
            assert "[Successful response]" not in captured[0][i][-1]["content"]


def test_trainer_config_keeps_its_earlier_name():
    from castrl.trl import CASTConfig as earlier

    assert earlier is CASTTrainerConfig
