"""`castrl_sync`: verl 0.9's v1 sync PPO trainer plus CAST's self-teacher pass.

One method is overridden, `_compute_advantage`, which verl runs after `old_log_probs` (and the
reference / critic passes) and before the actor update; it calls `super()` for everything verl does:
0. with `castrl.mask_truncated_completions` (the default), zero the `response_mask` of completions that
   used the whole response budget without an end token (`truncation.py`), in TransferQueue, so that
   the estimator and verl's actor update both leave them out; their rewards still count in groups;
1. read `responses`, `raw_prompt`, `reward_model`, `extra_info` of the batch from TransferQueue and
   build the teacher inputs (`teacher_inputs.py`); for a context that reads `{peer}` (RLRT's
   `with_peer_success`) also `uid` and the verifier's `rm_scores`, to give each row a successful
   rollout of its group;
2. score them without gradient at the rollout temperature: `teacher_weights=policy` -> the actor
   worker's `compute_log_prob` (current weights, as for `old_log_probs`); `frozen` -> the
   reference model (`compute_ref_log_prob`, or the actor with its LoRA adapter disabled);
   `refresh:<K>` / `ema` -> the actor with its teacher snapshot swapped in
   (`castrl_compute_teacher_log_prob`, `worker.py`; the snapshot's schedule and checkpoints are
   `CastrlTeacherSnapshotMixin`'s, `teacher_snapshot.py`);
3. bind student/teacher log-probs and the step to the registered castrl estimator and call verl's
   `_compute_advantage`, which applies KL-in-reward / rollout correction as usual and writes
   `advantages`; the policy loss and its `loss_agg_mode` stay verl's.
The step castrl's schedules read (RLSD's and GRPO+OPSD's anneals, CAST's `shaping_cutoff_step`) is
the number of completed verl training steps, `global_steps - 1` (verl counts from 1), as TRL's
`state.global_step` at the same point.
The trainer is registered as `castrl_sync` but runs as verl's `sync` mode (its copy of the config
says so, since verl branches on that name).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
import transfer_queue as tq
from omegaconf import open_dict
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl import DataProto
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import tensordict_utils as tu
from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

from .config import CastrlVerlConfig, check_verl_config
from .estimator import BoundInputs, bind_estimator_inputs
from .jagged import padded, row_lengths
from .teacher_inputs import (
    NON_TENSOR_KEYS,
    batch_peer_texts,
    dataproto_from_nested,
    teacher_batch_from_dataproto,
)
from .teacher_snapshot import CastrlTeacherSnapshotMixin
from .truncation import last_tokens_of, mask_rows, truncated_rows

TRAINER_NAME = "castrl_sync"


class CastrlTrainerMixin(CastrlTeacherSnapshotMixin):
    """Adds the teacher pass to a verl v1 `PPOTrainer`; put it first in the bases."""

    castrl: CastrlVerlConfig
    verl_mode = "sync"  # the verl trainer mode this class behaves as

    def __init__(self, config: Any) -> None:
        self.castrl = check_verl_config(config)  # config errors before any worker starts
        # verl branches on `trainer_mode == "sync"` (replay buffer, refills, checkpoints): give the
        # base class its own copy of the config that names the mode it really runs.
        config = copy.deepcopy(config)
        with open_dict(config):
            config.trainer.v1.trainer_mode = self.verl_mode
        self._castrl_init_schedule(config)  # refresh:K / ema: says what K means in this run
        super().__init__(config)  # type: ignore[call-arg]

    @property
    def castrl_step(self) -> int:
        """Completed training steps before this one: verl's `global_steps` counts from 1."""
        return max(int(self.global_steps) - 1, 0)

    # -- hook -------------------------------------------------------------------------------------

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        in_groups = None
        if self.castrl.mask_truncated_completions:
            batch, in_groups = self._castrl_mask_truncated(batch, metrics)
        start = time.perf_counter()
        teacher = self._castrl_teacher_log_probs(batch, metrics) if self.castrl.needs_teacher else None
        metrics["cast/time_teacher_s"] = time.perf_counter() - start
        uids, student, rewards = self._castrl_student_inputs(batch)
        bound = BoundInputs(uids, student, teacher, self.castrl, self.castrl_step, rewards, in_groups)
        start = time.perf_counter()
        with bind_estimator_inputs(bound):
            batch = super()._compute_advantage(batch, metrics)  # type: ignore[misc]
        metrics["cast/time_advantage_s"] = time.perf_counter() - start
        metrics.update(bound.stats)
        return batch

    def _castrl_mask_truncated(self, batch: KVBatchMeta, metrics: dict) -> tuple[KVBatchMeta, torch.Tensor]:
        """Zero truncated rows' `response_mask` in TransferQueue; (batch, (B,) rows that form groups)."""
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=["responses", "response_mask"]
        )
        lengths = row_lengths(data["responses"])
        # rows in the groups: those with a response token before masking (verl's padding rows have none)
        in_groups = padded(data["response_mask"], 0).bool().any(dim=1)
        budget = int(self.config.actor_rollout_ref.rollout.response_length)
        end_ids = {self.tokenizer.eos_token_id} - {None}
        truncated = truncated_rows(lengths, last_tokens_of(data["responses"]), budget, end_ids) & in_groups
        metrics["cast/frac_truncated"] = float(truncated.sum()) / max(int(in_groups.sum()), 1)
        if truncated.any():
            masked = mask_rows(data["response_mask"], truncated)
            fields = TensorDict({"response_mask": masked}, batch_size=len(lengths))
            batch = tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields)
        return batch, in_groups

    # -- inputs -----------------------------------------------------------------------------------

    def _castrl_student_inputs(
        self, batch: KVBatchMeta
    ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor | None]:
        """uids (B,), old_log_probs (B, T) and, for reward_key=token_level_scores, r_i (B,), in verl's row order."""
        fields = ["uid", "old_log_probs"]
        if self.castrl.reward_key == "token_level_scores":
            fields.append("rm_scores")  # verl: token_level_scores = rm_scores, before KL-in-reward
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        uids = np.array(tu.get(data, "uid"), dtype=object)
        student = padded(data["old_log_probs"], 0.0).float()
        rewards = padded(data["rm_scores"], 0.0).float().sum(-1) if "rm_scores" in fields else None
        return uids, student, rewards

    def _castrl_teacher_log_probs(self, batch: KVBatchMeta, metrics: dict) -> torch.Tensor:
        """(B, T) fp32 teacher log-probs of every row's response tokens, rows in `batch.keys` order."""
        fields = ["responses", "response_mask", *NON_TENSOR_KEYS]
        if self.castrl.needs_peers:
            fields += ["uid", "rm_scores"]  # the verifier's score, before any KL-in-reward
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        pad = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        source = dataproto_from_nested(data, pad)
        peers = None
        if self.castrl.needs_peers:
            scores = padded(data["rm_scores"], 0.0).float().sum(-1)
            threshold = self.castrl.estimator_config.correct_threshold
            peers = batch_peer_texts(source, self.tokenizer, scores, threshold, self.castrl_step)
            metrics["cast/teacher_peer_frac"] = sum(p is not None for p in peers) / max(len(peers), 1)
        chat_kwargs = self.config.data.get("apply_chat_template_kwargs", None) or {}
        teacher, n_truncated = teacher_batch_from_dataproto(
            source, self.tokenizer, self.castrl, chat_kwargs, peers
        )
        metrics["cast/teacher_truncated_count"] = float(n_truncated)
        lag = self.castrl_teacher_lag()
        if lag is not None:
            metrics["cast/teacher_lag_steps"] = float(lag)  # optimizer steps since the snapshot was taken
        prompt_width = teacher.batch["prompts"].shape[1]
        metrics["cast/teacher_prompt_len_mean"] = float(
            teacher.batch["attention_mask"][:, :prompt_width].sum(-1).float().mean()
        )
        return self._castrl_score(teacher)

    def _castrl_score(self, teacher: DataProto) -> torch.Tensor:
        """No-grad log-probs of `teacher`'s responses with the configured teacher weights (as verl's ref pass)."""
        td = left_right_2_no_padding(teacher.to_tensordict())
        temperature = self.config.actor_rollout_ref.rollout.temperature  # spec §3: same as the student's
        tu.assign_non_tensor(td, calculate_entropy=False, compute_loss=False, temperature=temperature)
        if self.castrl.teacher_snapshot:  # refresh:K / ema: the actor with the snapshot swapped in
            output = self.actor_rollout_wg.castrl_compute_teacher_log_prob(td)
        elif self.castrl.teacher_is_reference and self.ref_in_actor:
            tu.assign_non_tensor(td, no_lora_adapter=True)  # LoRA: base model = the initial weights
            output = self.actor_rollout_wg.compute_log_prob(td)
        elif self.castrl.teacher_is_reference:
            output = self.ref_policy_wg.compute_ref_log_prob(td)
        else:
            output = self.actor_rollout_wg.compute_log_prob(td)
        return no_padding_2_padding(tu.get(output, "log_probs"), td).float()


@register_trainer(TRAINER_NAME)
class CastrlPPOTrainerSync(CastrlTrainerMixin, PPOTrainerSync):
    """verl's synchronous v1 trainer with CAST's teacher pass (`trainer.v1.trainer_mode=castrl_sync`)."""
