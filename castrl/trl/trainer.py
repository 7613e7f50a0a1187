"""`CASTTrainer`: TRL's GRPOTrainer with token-level advantages from the castrl.core registry.

This module holds the hooks; each calls `super()`, so TRL's loss types, vLLM importance sampling,
entropy options and PEFT keep working:
- `training_step` / `prediction_step`: the fused LM head's vocabulary tile (`castrl.trl.head_tile`);
- `create_optimizer`: skip steps whose gradients are not finite (`castrl.trl.nonfinite`);
- `__init__` / `_generate_single_turn`: `--bf16 true` means bf16 autocast over fp32 weights with and
  without LoRA, and `cast_lm_head_to_fp32` works on tied PEFT models (`castrl.trl.precision`); TRL's
  transformers rollouts decode with `castrl.rollouts.decode` (`rollout_decoder`);
- `_calculate_rewards`: keep the raw, globally gathered per-function rewards;
- `_generate_and_score_completions`: after TRL's rollout, run the student and teacher no-grad
  passes (`castrl.trl.scoring`) and replace TRL's (B,) advantages by the estimator's (B, T) ones;
- `_compute_loss`: a micro-batch's trailing completion columns no row scores are cut first
  (`castrl.trl.trim`, `trim_completion_padding`);
- `_compute_loss` / `_get_per_token_logps_and_entropies` (on-policy, `fuse_student_pass`): the
  student pass is skipped; the estimator's base step runs after the rollout and its row-local token
  step inside the loss, on the log-probs of the training forward pass (`castrl.trl.fused`);
- `_save_checkpoint` / `_load_optimizer_and_scheduler`: teacher state, atomic commits (`castrl.trl.checkpoint`).
Advantages are computed on the batch gathered from all processes, since a group can straddle them.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from trl import GRPOTrainer

from castrl.core import get_estimator
from castrl.rollouts.decode import generate_with_decode
from castrl.rows import run_on_rows
from castrl.teacher import ExternalTeacher, TeacherWeights, build_teacher, context_uses, teacher_prompt_batch

from .checkpoint import (
    commit_staged_checkpoint,
    load_teacher_state,
    remove_stale_staging,
    save_rank_teacher_state,
    staging_root,
)
from .config import CASTTrainerConfig
from .fused import FusedStudentPass, can_fuse_student_pass
from .head_tile import resolve_vocab_tile, vocab_tile
from .nonfinite import guard_nonfinite_steps
from .precision import install_fp32_fused_head, rollout_autocast, skip_trl_head_cast, warn_bf16_logits
from .scoring import completion_logps, fused_lm_head_for, peer_texts, tokenize_prompts
from .trim import trim_completion_padding


class _TeacherUpdate(TrainerCallback):
    """Refreshes the teacher snapshot (`refresh:K`) or its EMA after every optimizer step. It reads the
    model as prepared (under FSDP, the wrapped root: the snapshot is shard-local and must be read
    through the wrapper that owns the shards)."""

    def __init__(self, trainer: CASTTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer.teacher_weights is not None:
            trainer.teacher_weights.update(trainer.model, state.global_step)


def _scored_tokens(batch: dict) -> torch.Tensor:
    """(B, T) mask of the completion tokens that get an advantage: TRL's completion mask, less tool output."""
    mask = batch["completion_mask"]
    return mask * batch["tool_mask"] if "tool_mask" in batch else mask


def _reward_counts(global_rewards: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> dict[str, float]:
    rewards, _, scorable = global_rewards
    return {
        "cast/unscorable_count": float((~scorable).sum().item()),
        "cast/nonfinite_reward_count": float((torch.isinf(rewards)).sum().item()),
    }


class CASTTrainer(GRPOTrainer):
    """GRPOTrainer whose advantages come from `args.advantage_estimator` (default: CAST)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        config = kwargs.get("args")
        if not isinstance(config, CASTTrainerConfig):
            raise TypeError(f"CASTTrainer needs args=CASTTrainerConfig(...), got {type(config).__name__}")
        model = kwargs.get("model", args[0] if args else None)
        with skip_trl_head_cast(config, model, kwargs.get("peft_config")) as own_fp32_head:
            super().__init__(*args, **kwargs)
        if own_fp32_head:  # TRL cannot cast a tied head under PEFT; the fused head alone decides the precision
            install_fp32_fused_head(self.model, self.temperature)
        self.estimator = get_estimator(self.args.advantage_estimator)
        warn_bf16_logits(self.args, self.estimator.needs_teacher)
        self.estimator_config = self.args.estimator_config()
        self.teacher_weights: TeacherWeights | ExternalTeacher | None = None
        if self.estimator.needs_teacher:  # an external teacher model gets the policy's fused LM head
            self.teacher_weights = build_teacher(self.args.teacher_config(), self.accelerator.unwrap_model(self.model),
                                                 self.processing_class, fused_lm_head_for(self.args, self.temperature),
                                                 zero3=is_deepspeed_zero3_enabled(),
                                                 offload=self.args.teacher_offload)  # fmt: skip
        self.add_callback(_TeacherUpdate(self))
        self._rewards_per_func: torch.Tensor | None = None
        self._fused = FusedStudentPass(self.estimator, self.estimator_config)
        self._share_prompt_cache = self.args.share_prompt_cache
        self._vocab_tile = resolve_vocab_tile(self.args.lm_head_vocab_tile, self.accelerator.device)

    # -- hooks ----------------------------------------------------------------------------------

    def training_step(self, *args: Any, **kwargs: Any):
        with vocab_tile(self._vocab_tile):  # rollout scoring, teacher pass and the loss (castrl.trl.head_tile)
            return super().training_step(*args, **kwargs)

    def prediction_step(self, *args: Any, **kwargs: Any):
        with vocab_tile(self._vocab_tile):
            return super().prediction_step(*args, **kwargs)

    def create_optimizer(self, *args: Any, **kwargs: Any):
        optimizer = super().create_optimizer(*args, **kwargs)
        guard_nonfinite_steps(optimizer, lambda: self._log({"cast/skipped_nonfinite_steps": 1.0}, "train"))
        return optimizer

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_per_func = rewards_per_func  # (B_global, n_funcs), NaN where a function skipped
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        mode = self._mode
        start = time.perf_counter()
        output = super()._generate_and_score_completions(inputs)
        timings = {"cast/time_rollout_s": time.perf_counter() - start}
        mask = _scored_tokens(output)
        student = teacher = None
        fuse = False
        if self.estimator.needs_teacher:
            # a gap control mixes rows, so its token step needs the whole batch, not one micro-batch
            fuse = can_fuse_student_pass(output, self.args.fuse_student_pass and self.estimator_config.row_local)
            start = time.perf_counter()
            if output.get("old_per_token_logps") is None and not fuse:  # TRL skipped it, the gap needs it
                output["old_per_token_logps"] = self._completion_logps(output["prompt_ids"], output["prompt_mask"], output)
            student = output.get("old_per_token_logps")
            timings["cast/time_student_s"] = time.perf_counter() - start
            start = time.perf_counter()
            teacher = self._teacher_logps(inputs, output)
            timings["cast/time_teacher_s"] = time.perf_counter() - start
        start = time.perf_counter()
        global_rewards = self._global_rewards(mode)
        if fuse:
            stats = self._fused.defer(mode, output, mask, teacher, global_rewards, self._gather_rows,
                                      self.accelerator.process_index, self.state.global_step)  # fmt: skip
        else:
            output["advantages"], stats = self._token_advantages(mask, student, teacher, global_rewards)
        stats.update(_reward_counts(global_rewards))
        timings["cast/time_advantage_s"] = time.perf_counter() - start
        # TRL measured it on every completion; castrl's name keeps TRL and verl runs comparable (spec §6)
        stats["cast/frac_truncated"] = self._metrics[mode]["completions/clipped_ratio"][-1]
        self._log({**stats, **timings}, mode)
        return output

    def _generate_single_turn(self, *args: Any, **kwargs: Any):
        castrl_decoding = self.args.rollout_decoder == "castrl" and not self.use_vllm
        decoding = generate_with_decode(self.model) if castrl_decoding else nullcontext()
        with rollout_autocast(self.accelerator), decoding:  # PEFT's generate bypasses accelerate's autocast
            return super()._generate_single_turn(*args, **kwargs)

    def _compute_loss(self, model, inputs):
        if self.args.trim_completion_padding:
            inputs = trim_completion_padding(inputs)
        if inputs.get("castrl_row") is None:
            return super()._compute_loss(model, inputs)
        with self._fused.loss_forward(inputs):  # raises if the forward below never took `inputs`
            return super()._compute_loss(model, inputs)

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any):
        result = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        inputs = self._fused.take_armed()
        if inputs is not None:  # the loss's forward pass: its log-probs give this micro-batch's advantages
            inputs["advantages"] = self._fused_token_advantages(inputs, result[0])
        return result

    def _save_checkpoint(self, model, trial):
        """Let TRL/HF write the checkpoint into a staging folder, then commit it with one rename
        (see `castrl.trl.checkpoint`): a `checkpoint-N/` is never half-written."""
        run_dir = self._get_output_dir(trial=trial)
        staging = staging_root(run_dir, self.state.global_step)
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
        sharded = isinstance(self.teacher_weights, TeacherWeights) and self.teacher_weights.sharded
        if sharded:  # FSDP: each rank holds, and saves, its own shards of the teacher
            save_rank_teacher_state(os.path.join(staging, f"checkpoint-{self.state.global_step}"),
                                    self.teacher_weights.state_dict())  # fmt: skip
        self.accelerator.wait_for_everyone()  # every rank's files are in staging before the commit
        if self.args.should_save:
            teacher_state = None if self.teacher_weights is None or sharded else self.teacher_weights.state_dict()
            commit_staged_checkpoint(run_dir, self.state.global_step, self.state, teacher_state,
                                     self.args.save_total_limit)  # fmt: skip
        self.accelerator.wait_for_everyone()

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or self.teacher_weights is None:
            return
        accel = self.accelerator
        teacher_state = load_teacher_state(checkpoint, accel.process_index, accel.num_processes)
        if teacher_state is None and getattr(self.teacher_weights, "shadow", None) is not None:
            raise ValueError(
                f"{checkpoint} holds no teacher state, but teacher_weights={self.args.teacher_weights} keeps a "
                "snapshot of the policy: resuming would score with the resumed policy instead of the snapshot "
                "the interrupted run held. Resume from a checkpoint written by this trainer with this teacher"
            )
        if teacher_state is not None:
            self.teacher_weights.load_state_dict(teacher_state, self.model)

    # -- glue: the passes, the advantages and the metrics (castrl.trl.scoring, castrl.trl.fused) ---

    @property
    def _mode(self) -> str:
        return "train" if self.model.training else "eval"

    def _log(self, metrics: dict[str, float], mode: str) -> None:
        for name, value in metrics.items():
            self._metrics[mode][name].append(value)

    def _completion_logps(self, prompt_ids, prompt_mask, output, model=None) -> torch.Tensor:
        """(B, T) fp32 no-grad log-probs of the completion tokens after `prompt_ids`, at TRL's temperature,
        under `model` (default: the policy)."""
        logps, self._share_prompt_cache = completion_logps(
            self.model if model is None else model, self.args, prompt_ids, prompt_mask, output, self._get_per_token_logps_and_entropies,
            self.accelerator.autocast, self._share_prompt_cache,
        )  # fmt: skip
        return logps

    def _tokenize_teacher_prompts(self, teacher_prompts: list) -> list[list[int]]:
        return tokenize_prompts(self.processing_class, teacher_prompts, self.chat_template, self.chat_template_kwargs)

    def _encode_text(self, text: str) -> list[int]:
        return self._tokenizer(text, add_special_tokens=False)["input_ids"]

    def _teacher_logps(self, inputs: list[dict], output: dict) -> torch.Tensor:
        """(B, T) teacher log-probs of the sampled completion tokens under the teacher context/weights."""
        context, device = self.args.teacher_context, self.accelerator.device
        peers = self._peer_texts(output) if context_uses(context, "peer") else None
        prompt_ids, prompt_mask, n_truncated = teacher_prompt_batch(
            inputs, context, self._tokenize_teacher_prompts, self.args.teacher_max_prompt_length,
            self._tokenizer.pad_token_id, peers, self.args.teacher_tag_placement, self._encode_text,
        )  # fmt: skip
        self._log({"cast/teacher_truncated_count": float(n_truncated)}, self._mode)
        with self.teacher_weights.scoring(self.model) as external:  # the prepared model: see _TeacherUpdate
            return self._completion_logps(prompt_ids.to(device), prompt_mask.to(device), output, external)

    def _peer_texts(self, output: dict) -> list[str | None]:
        """For each local row, the text of another correct rollout of its group, or None (`scoring.peer_texts`)."""
        rewards, group_ids, scorable = self._global_rewards(self._mode)
        mask = self._gather_rows(output["completion_mask"])
        ids = self._gather_rows(output["completion_ids"])
        correct = scorable & (rewards >= self.estimator_config.correct_threshold)
        decode = self.processing_class.decode if hasattr(self.processing_class, "decode") else self._tokenizer.decode
        rows = self._local_rows(output["completion_ids"].shape[0])
        return peer_texts(ids, mask, correct, group_ids, self.state.global_step, rows, decode)

    def _local_rows(self, n_local: int) -> slice:
        """This process's rows of the gathered batch."""
        start = self.accelerator.process_index * n_local
        return slice(start, start + n_local)

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

    def _token_advantages(self, mask, student, teacher, global_rewards) -> tuple[torch.Tensor, dict[str, float]]:
        """One estimator call on the global batch's scorable rows; this process's (B, T) slice and the stats."""
        rewards, group_ids, scorable = global_rewards
        g_mask = self._gather_rows(mask.float())
        g_student = self._gather_rows(student) if student is not None else torch.zeros_like(g_mask)
        g_teacher = self._gather_rows(teacher) if teacher is not None else None
        adv, stats = run_on_rows(self.estimator.fn, scorable, (rewards, group_ids, g_student, g_teacher, g_mask),
                                 self.estimator_config, self.state.global_step)  # fmt: skip
        return adv[self._local_rows(mask.shape[0]), : mask.shape[1]], stats

    def _fused_token_advantages(self, inputs: dict, logps: torch.Tensor) -> torch.Tensor:
        """(b, T) advantages of a micro-batch from its loss forward's log-probs (`FusedStudentPass.advantages`)."""
        mode = self._mode
        adv, stats = self._fused.advantages(mode, inputs, _scored_tokens(inputs), logps, self._gather_rows)
        self._log(stats, mode)
        return adv

