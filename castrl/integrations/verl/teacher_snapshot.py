"""Driver side of the `refresh:K` / `ema` teacher on verl: role mapping, schedule, checkpoints.

`CastrlTeacherSnapshotMixin` (a base of `CastrlTrainerMixin`, `trainer.py`) overrides four of verl's
v1 trainer methods, each calling `super()`:
- `_init_resource_pool_mgr`: the actor role(s) run `CastrlActorRolloutRefWorker` (`worker.py`);
- `_load_checkpoint`: a fresh run snapshots the initial actor; a resumed one restores the snapshot
  and the schedule from `global_step_N/actor/castrl_teacher/` and raises when they are missing or
  mismatched (`teacher_files.py`);
- `_update_actor`: counts the update's optimizer steps and re-takes / EMA-updates the snapshot when
  the schedule says so (`schedule.py`);
- `_save_checkpoint`: writes the snapshot's shards (per worker rank) and the schedule before verl's
  own checkpoint, so verl's `latest_checkpointed_iteration.txt` never names a step without them.
At start it prints what K means in optimizer steps for the run's batch settings.
"""

from __future__ import annotations

import os
from typing import Any

import ray
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.utils import Role

from .config import CastrlVerlConfig
from .schedule import TeacherSchedule, optimizer_steps_per_update
from .teacher_files import load_schedule, save_schedule, teacher_dir
from .worker import CastrlActorRolloutRefWorker

ACTOR_ROLES = (Role.Actor, Role.ActorRollout, Role.ActorRolloutRef)


def planned_steps_per_training_step(config: Any) -> tuple[int, str]:
    """Optimizer steps one verl training step takes, from the config, and how that was computed."""
    arr, data = config.actor_rollout_ref, config.data
    mini, epochs, prompts = int(arr.actor.ppo_mini_batch_size), int(arr.actor.ppo_epochs), int(data.train_batch_size)
    steps = optimizer_steps_per_update(prompts, mini, 1, epochs)
    return steps, f"data.train_batch_size {prompts} / actor.ppo_mini_batch_size {mini} x actor.ppo_epochs {epochs}"


class CastrlTeacherSnapshotMixin:
    """Keeps the teacher snapshot of `castrl.teacher_weights=refresh:<K>` / `ema` on the actor workers."""

    castrl: CastrlVerlConfig
    castrl_schedule: TeacherSchedule | None = None
    castrl_schedule_note: str = ""

    def _castrl_init_schedule(self, config: Any) -> None:
        """Called from `CastrlTrainerMixin.__init__` after the castrl config is checked."""
        if not self.castrl.teacher_snapshot:
            return
        self.castrl_schedule = TeacherSchedule(self.castrl.teacher_weights, self.castrl.teacher_ema_decay)
        self.castrl_schedule_note = self.castrl_schedule.describe(*planned_steps_per_training_step(config))
        print(self.castrl_schedule_note, flush=True)

    # -- verl hooks ---------------------------------------------------------------------------------

    def _init_resource_pool_mgr(self) -> None:
        super()._init_resource_pool_mgr()  # type: ignore[misc]
        if self.castrl_schedule is None:
            return
        for role in ACTOR_ROLES:
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(CastrlActorRolloutRefWorker)

    def _load_checkpoint(self) -> None:
        super()._load_checkpoint()  # type: ignore[misc]
        if self.castrl_schedule is None:
            return
        if int(self.global_steps) == 0:  # a fresh run: the teacher starts as the initial actor
            self.actor_rollout_wg.castrl_snapshot("take")
            return
        folder = teacher_dir(os.path.join(self._castrl_resumed_folder(), "actor"))
        self.castrl_schedule.load_state_dict(load_schedule(folder))
        self.actor_rollout_wg.castrl_load_teacher(folder, self.castrl.teacher_weights)
        print(f"castrl: teacher snapshot restored from {folder} (optimizer step "
              f"{self.castrl_schedule.snapshot_step} of {self.castrl_schedule.optimizer_steps})", flush=True)  # fmt: skip

    def _update_actor(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        batch = super()._update_actor(batch, metrics)  # type: ignore[misc]
        if self.castrl_schedule is None:
            return batch
        arr = self.config.actor_rollout_ref
        steps = optimizer_steps_per_update(len(batch.keys), arr.actor.ppo_mini_batch_size, arr.rollout.n,
                                           arr.actor.ppo_epochs)  # fmt: skip
        action = self.castrl_schedule.after_update(steps)
        if action is not None:
            self.actor_rollout_wg.castrl_snapshot(*action)
        metrics["cast/teacher_refreshed"] = float(action is not None)
        metrics["cast/teacher_optimizer_steps"] = float(self.castrl_schedule.optimizer_steps)
        return batch

    def _save_checkpoint(self) -> None:
        if self.castrl_schedule is not None:
            step_folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
            folder = teacher_dir(os.path.join(step_folder, "actor"))
            self.actor_rollout_wg.castrl_save_teacher(folder, self.castrl.teacher_weights)
            save_schedule(folder, self.castrl_schedule.state_dict())
        super()._save_checkpoint()  # type: ignore[misc]

    # -- helpers ------------------------------------------------------------------------------------

    def castrl_teacher_lag(self) -> int | None:
        """Optimizer steps between the policy and the `refresh:K` snapshot it is scored against (None: no
        snapshot, or an EMA, which has no single step)."""
        if self.castrl_schedule is None or self.castrl_schedule.spec.kind != "refresh":
            return None
        return self.castrl_schedule.optimizer_steps - self.castrl_schedule.snapshot_step

    def _castrl_resumed_folder(self) -> str:
        """The `global_step_N` folder verl's `_load_checkpoint` resumed from (the same rule as verl's)."""
        trainer = self.config.trainer
        if trainer.resume_mode == "resume_path":
            folder = str(trainer.resume_from_path)
        else:
            folder = os.path.join(trainer.default_local_dir, f"global_step_{self.global_steps}")
        return folder if os.path.isabs(folder) else os.path.join(os.getcwd(), folder)
