"""`CASTTrainer`: TRL's GRPOTrainer with token-level advantages from the castrl.core registry.

It overrides a few hooks and calls `super()` in each, so TRL's loss types, vLLM importance
sampling, entropy options and PEFT keep working:
- `_calculate_rewards`: keep the raw, globally gathered per-function rewards;
- `_generate_and_score_completions`: after TRL's rollout, run the student and teacher no-grad
  passes and replace TRL's (B,) advantages by the estimator's (B, T) ones;
- `_compute_loss` / `_get_per_token_logps_and_entropies` (on-policy, `fuse_student_pass`): the
  student pass is skipped; the estimator's base step runs after the rollout and its row-local token
  step runs inside the loss, on the log-probs of the training forward pass (see `_DeferredBatch`);
- `_save_checkpoint` / `_load_optimizer_and_scheduler`: persist the teacher's snapshot/EMA weights and
  commit each checkpoint atomically (staging folder + rename, `castrl.trl.checkpoint`).
Advantages are computed on the batch gathered from all processes, since a group can straddle them.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import rotate_checkpoints
from transformers.utils import logging
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import pad

from castrl.core import get_estimator
from castrl.teacher import TeacherWeights, build_teacher_prompt, context_uses, successful_peers

from .checkpoint import (
    commit_checkpoint,
    fsync_tree,
    remove_stale_staging,
    staging_root,
    write_complete_marker,
)
from .config import CASTConfig
from .prompt_cache import completion_logps_shared_prompts

TEACHER_STATE_FILE = "castrl_teacher.pt"
logger = logging.get_logger(__name__)


class _TeacherUpdate(TrainerCallback):
    """Refreshes the teacher snapshot (`refresh:K`) or its EMA after every optimizer step."""

    def __init__(self, trainer: CASTTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer.teacher_weights is not None:
            trainer.teacher_weights.update(trainer.accelerator.unwrap_model(trainer.model), state.global_step)


def _scored_tokens(batch: dict) -> torch.Tensor:
    """(B, T) mask of the completion tokens that get an advantage: TRL's completion mask, less tool output."""
    mask = batch["completion_mask"]
    return mask * batch["tool_mask"] if "tool_mask" in batch else mask


@dataclass
class _DeferredBatch:
    """One generation batch whose token advantages are computed inside the loss (fused student pass).

    Global tensors (all processes' rows, as the estimator's base step saw them): base, rewards,
    scorable, teacher, mask. Local: the student log-probs collected micro-batch by micro-batch and
    which rows arrived; `offset` is this process's first global row.
    """

    base: torch.Tensor
    rewards: torch.Tensor
    scorable: torch.Tensor
    teacher: torch.Tensor
    mask: torch.Tensor
    student: torch.Tensor
    seen: torch.Tensor
    offset: int
    step: int

    def statistics(self, trainer: CASTTrainer) -> dict[str, float]:
        """The token step's metrics over the whole global batch, as the one-call estimator logs them."""
        student = trainer._gather_rows(self.student)
        rows = self.scorable.nonzero().flatten()
        t = student.shape[1]
        _, stats = trainer.estimator.token_step(
            self.base[rows], self.rewards[rows], student[rows], self.teacher[rows, :t], self.mask[rows, :t],
            trainer.estimator_config, self.step,
        )  # fmt: skip
        return stats


class CASTTrainer(GRPOTrainer):
    """GRPOTrainer whose advantages come from `args.advantage_estimator` (default: CAST)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        config = kwargs.get("args")
        if not isinstance(config, CASTConfig):
            raise TypeError(f"CASTTrainer needs args=CASTConfig(...), got {type(config).__name__}")
        super().__init__(*args, **kwargs)
        self.estimator = get_estimator(self.args.advantage_estimator)
        self.estimator_config = self.args.estimator_config()
        self.teacher_weights: TeacherWeights | None = None
        if self.estimator.needs_teacher:
            unwrapped = self.accelerator.unwrap_model(self.model)
            self.teacher_weights = TeacherWeights(self.args.teacher_weights, unwrapped, self.args.teacher_ema_decay)
        self.add_callback(_TeacherUpdate(self))
        self._rewards_per_func: torch.Tensor | None = None
        self._deferred: dict[str, _DeferredBatch] = {}  # mode -> batch whose token step runs in the loss
        self._fuse_into: dict | None = None  # the micro-batch whose loss forward is running
        self._share_prompt_cache = self.args.share_prompt_cache

    # -- hooks ----------------------------------------------------------------------------------

    def create_optimizer(self, *args: Any, **kwargs: Any):
        optimizer = super().create_optimizer(*args, **kwargs)
        guard_nonfinite_steps(optimizer, self._count_skipped_step)
        return optimizer

    def _count_skipped_step(self) -> None:
        self._metrics["train"]["cast/skipped_nonfinite_steps"].append(1.0)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_per_func = rewards_per_func  # (B_global, n_funcs), NaN where a function skipped
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        mode = "train" if self.model.training else "eval"
        start = time.perf_counter()
        output = super()._generate_and_score_completions(inputs)
        timings = {"cast/time_rollout_s": time.perf_counter() - start}
        mask = _scored_tokens(output)
        student = teacher = None
        fuse = False
        if self.estimator.needs_teacher:
            fuse = self._can_fuse_student_pass(output)
            start = time.perf_counter()
            if output.get("old_per_token_logps") is None and not fuse:  # TRL skipped it, the gap needs it
                output["old_per_token_logps"] = self._completion_logps(output["prompt_ids"], output["prompt_mask"], output)
            student = output.get("old_per_token_logps")
            timings["cast/time_student_s"] = time.perf_counter() - start
            start = time.perf_counter()
            teacher = self._teacher_logps(inputs, output)
            timings["cast/time_teacher_s"] = time.perf_counter() - start
        start = time.perf_counter()
        if fuse:
            stats = self._defer_token_advantages(output, mask, teacher, mode)
        else:
            output["advantages"], stats = self._token_advantages(mask, student, teacher, mode)
        timings["cast/time_advantage_s"] = time.perf_counter() - start
        # TRL measured it on every completion; castrl's name keeps TRL and verl runs comparable (spec §6)
        stats["cast/frac_truncated"] = self._metrics[mode]["completions/clipped_ratio"][-1]
        for name, value in {**stats, **timings}.items():
            self._metrics[mode][name].append(value)
        return output

    # -- teacher and student passes ---------------------------------------------------------------

    @torch.no_grad()
    def _completion_logps(self, prompt_ids, prompt_mask, output) -> torch.Tensor:
        """(B, T) fp32 log-probs of the completion tokens after `prompt_ids`, no grad, at TRL's temperature."""
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if self._share_prompt_cache and prompt_ids.size(1) > 1:
                logps = completion_logps_shared_prompts(
                    self.model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                    batch_size=self.args.per_device_train_batch_size, autocast=self.accelerator.autocast,
                )  # fmt: skip
                if logps is not None:
                    return logps
                self._share_prompt_cache = False  # not a plain key/value cache: full passes from now on
                logger.warning("share_prompt_cache: this model's KV cache cannot be shared; "
                               "scoring with one full forward per rollout")  # fmt: skip
            input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
            attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model,
                input_ids,
                attention_mask,
                completion_ids.size(1),
                batch_size=self.args.per_device_train_batch_size,
            )
        return logps.float()

    def _tokenize_teacher_prompts(self, teacher_prompts: list) -> list[list[int]]:
        if isinstance(teacher_prompts[0], str):
            return self.processing_class(text=teacher_prompts)["input_ids"]
        return self.processing_class.apply_chat_template(
            conversation=teacher_prompts,
            chat_template=self.chat_template,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            **self.chat_template_kwargs,
        )["input_ids"]

    def _teacher_logps(self, inputs: list[dict], output: dict) -> torch.Tensor:
        """(B, T) teacher log-probs of the sampled completion tokens under the teacher context/weights."""
        context = self.args.teacher_context
        peers = self._peer_texts(output) if context_uses(context, "peer") else [None] * len(inputs)
        teacher_prompts = [build_teacher_prompt(x, context, peer=p) for x, p in zip(inputs, peers, strict=True)]
        ids = self._tokenize_teacher_prompts(teacher_prompts)
        limit = self.args.teacher_max_prompt_length
        n_truncated = sum(len(x) > limit for x in ids)
        device = self.accelerator.device
        rows = [torch.tensor(x[-limit:]) for x in ids]  # cut from the left: keep the end of the context
        prompt_ids = pad(rows, padding_value=self._tokenizer.pad_token_id, padding_side="left").to(device)
        prompt_mask = pad([torch.ones_like(r) for r in rows], padding_value=0, padding_side="left").to(device)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["cast/teacher_truncated_count"].append(float(n_truncated))
        model = self.accelerator.unwrap_model(self.model)
        with self.teacher_weights.scoring(model):
            return self._completion_logps(prompt_ids, prompt_mask, output)

    def _peer_texts(self, output: dict) -> list[str | None]:
        """For each local row, the text of another correct rollout of its group (RLRT's teacher), or None
        (`castrl.teacher.successful_peers`).

        Groups may straddle processes, so the completions are gathered; only valid (unmasked) tokens
        are decoded, so a truncated completion that TRL masked is never anyone's peer."""
        mode = "train" if self.model.training else "eval"
        rewards, group_ids, scorable = self._global_rewards(mode)
        mask = self._gather_rows(output["completion_mask"])
        ids = self._gather_rows(output["completion_ids"])
        correct = scorable & (rewards >= self.estimator_config.correct_threshold) & (mask.sum(dim=1) > 0)
        peers = successful_peers(correct.tolist(), group_ids.tolist(), seed=self.state.global_step)
        n_local = output["completion_ids"].shape[0]
        start = self.accelerator.process_index * n_local
        decode = self.processing_class.decode if hasattr(self.processing_class, "decode") else self._tokenizer.decode
        return [
            None if j is None else decode(ids[j][mask[j] > 0].tolist(), skip_special_tokens=True)
            for j in peers[start : start + n_local]
        ]

    # -- advantages -----------------------------------------------------------------------------

    def _gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """(B_local, T_local) -> (B_global, T_max), padding T with zeros across processes."""
        x = self.accelerator.pad_across_processes(x, dim=1, pad_index=0)
        return self.accelerator.gather(x)

    def _global_rewards(self, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rewards, group_ids, scorable), each (B_global,), from the gathered per-function rewards."""
        weights = self.reward_weights.to(self._rewards_per_func.device)
        per_func = self._rewards_per_func
        rewards = (per_func * weights.unsqueeze(0)).nansum(dim=1)
        # As TRL, rows no reward function could score carry no signal; so do non-finite (+-inf) sums.
        scorable = ~torch.isnan(per_func).all(dim=1) & torch.isfinite(rewards)
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        group_ids = torch.arange(rewards.numel(), device=rewards.device) // group_size
        return rewards, group_ids, scorable

    @staticmethod
    def _reward_counts(rewards: torch.Tensor, scorable: torch.Tensor) -> dict[str, float]:
        return {
            "cast/unscorable_count": float((~scorable).sum().item()),
            "cast/nonfinite_reward_count": float((torch.isinf(rewards)).sum().item()),
        }

    def _token_advantages(self, mask, student, teacher, mode: str) -> tuple[torch.Tensor, dict[str, float]]:
        """Global estimator call on scorable rows; returns this process's (B, T) slice and the stats."""
        rewards, group_ids, scorable = self._global_rewards(mode)
        n_local, t_local = mask.shape
        g_mask = self._gather_rows(mask.float())
        g_student = self._gather_rows(student) if student is not None else torch.zeros_like(g_mask)
        g_teacher = self._gather_rows(teacher) if teacher is not None else None
        rows = scorable.nonzero().flatten()
        adv, stats = self.estimator.fn(
            rewards[rows],
            group_ids[rows],
            g_student[rows],
            None if g_teacher is None else g_teacher[rows],
            g_mask[rows],
            self.estimator_config,
            self.state.global_step,
        )
        full = torch.zeros_like(g_mask).index_copy_(0, rows, adv.float())
        stats.update(self._reward_counts(rewards, scorable))
        start = self.accelerator.process_index * n_local
        return full[start : start + n_local, :t_local], stats

    # -- the fused student pass -----------------------------------------------------------------

    def _can_fuse_student_pass(self, output: dict) -> bool:
        """On-policy (TRL skipped old log-probs), so the training forward pass sees the sampling
        weights and its detached log-probs are the student's. A TRL whose loss stops computing them
        through `_get_per_token_logps_and_entropies` makes `_compute_loss` raise, not train blind."""
        return self.args.fuse_student_pass and output.get("old_per_token_logps") is None

    def _defer_token_advantages(self, output: dict, mask, teacher, mode: str) -> dict[str, float]:
        """Run the estimator's base step on the global batch now; leave the token step to the loss."""
        rewards, group_ids, scorable = self._global_rewards(mode)
        rows = scorable.nonzero().flatten()
        base_rows, stats = self.estimator.base_step(
            rewards[rows], group_ids[rows], self.estimator_config, self.state.global_step
        )
        n_local, t_local = mask.shape
        self._deferred[mode] = _DeferredBatch(
            base=torch.zeros_like(rewards).index_copy_(0, rows, base_rows.float()),
            rewards=torch.where(scorable, rewards, torch.zeros_like(rewards)),
            scorable=scorable,
            teacher=self._gather_rows(teacher),
            mask=self._gather_rows(mask.float()),
            student=torch.full((n_local, t_local), math.nan, device=mask.device),
            seen=torch.zeros(n_local, dtype=torch.bool, device=mask.device),
            offset=self.accelerator.process_index * n_local,
            step=self.state.global_step,
        )
        output["castrl_row"] = torch.arange(n_local, device=mask.device)  # follows TRL's shuffle and split
        # Filled per micro-batch in `_get_per_token_logps_and_entropies`; NaN until then, so a loss that
        # bypassed the hook could never train on it (and `_compute_loss` says why).
        output["advantages"] = torch.full((n_local, t_local), math.nan, device=mask.device)
        stats.update(self._reward_counts(rewards, scorable))
        return stats

    def _compute_loss(self, model, inputs):
        if inputs.get("castrl_row") is None:
            return super()._compute_loss(model, inputs)
        self._fuse_into = inputs
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            missed, self._fuse_into = self._fuse_into is not None, None
        if missed:
            raise RuntimeError(
                "fuse_student_pass: TRL's loss did not compute the policy log-probs through "
                "_get_per_token_logps_and_entropies, so no advantages were filled in; set fuse_student_pass=False"
            )
        return loss

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any):
        result = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        inputs, self._fuse_into = self._fuse_into, None
        if inputs is not None:  # the loss's forward pass: its log-probs give this micro-batch's advantages
            inputs["advantages"] = self._fused_token_advantages(inputs, result[0])
        return result

    def _fused_token_advantages(self, inputs: dict, logps: torch.Tensor) -> torch.Tensor:
        """(b, T) advantages of a micro-batch from the estimator's row-local token step; once every
        row of the generation batch was seen, the step's statistics over the whole batch are logged."""
        mode = "train" if self.model.training else "eval"
        state = self._deferred[mode]
        local = inputs["castrl_row"]
        rows = local + state.offset
        mask = _scored_tokens(inputs)
        student = logps.detach().float()
        t = mask.shape[1]
        adv, _ = self.estimator.token_step(
            state.base[rows], state.rewards[rows], student, state.teacher[rows, :t], mask.float(),
            self.estimator_config, state.step,
        )  # fmt: skip
        adv = torch.where(state.scorable[rows, None], adv.float(), torch.zeros((), device=adv.device))
        state.student[local] = student
        state.seen[local] = True
        if bool(state.seen.all()):
            for name, value in state.statistics(self).items():
                self._metrics[mode][name].append(value)
        return adv

    # -- checkpoints ----------------------------------------------------------------------------

    def _save_checkpoint(self, model, trial):
        """Let TRL/HF write the checkpoint into a staging folder, then commit it with one rename
        (see `castrl.trl.checkpoint`): a `checkpoint-N/` is never half-written."""
        run_dir = self._get_output_dir(trial=trial)
        step = self.state.global_step
        staging = staging_root(run_dir, step)
        staged = os.path.join(staging, f"checkpoint-{step}")
        final = os.path.join(run_dir, f"checkpoint-{step}")
        if self.args.should_save:
            remove_stale_staging(run_dir)
        self.accelerator.wait_for_everyone()
        # An instance attribute shadows the method for the duration of super()'s call only, so the
        # model, optimizer, RNG states (every process) and trainer state all land in staging; HF's
        # rotation then sees a folder with one checkpoint and deletes nothing.
        self._get_output_dir = lambda trial=None: staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir
        self.accelerator.wait_for_everyone()  # every rank's files are in staging before the commit
        if self.args.should_save:
            if self.state.best_model_checkpoint == staged:
                self.state.best_model_checkpoint = final
                self.state.save_to_json(os.path.join(staged, "trainer_state.json"))
            if self.teacher_weights is not None:
                torch.save(self.teacher_weights.state_dict(), os.path.join(staged, TEACHER_STATE_FILE))
            write_complete_marker(staged, step)
            fsync_tree(staged)
            commit_checkpoint(staged, final)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or self.teacher_weights is None:
            return
        path = os.path.join(checkpoint, TEACHER_STATE_FILE)
        if os.path.exists(path):
            self.teacher_weights.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def guard_nonfinite_steps(optimizer: torch.optim.Optimizer, on_skip) -> None:
    """Make `optimizer.step()` a no-op (weights and optimizer state untouched) when any gradient is
    NaN/Inf, e.g. after a non-finite loss; gradients are zeroed and `on_skip()` is called instead."""
    inner_step = optimizer.step

    def step(*args: Any, **kwargs: Any):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and not all(bool(torch.isfinite(g).all()) for g in grads):
            optimizer.zero_grad(set_to_none=True)
            on_skip()
            return None
        return inner_step(*args, **kwargs)

    optimizer.step = step
