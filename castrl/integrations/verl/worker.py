"""`CastrlActorRolloutRefWorker`: verl's actor worker plus the `refresh:K` / `ema` teacher snapshot.

verl's workers hold the actor's current weights and a reference model; the paper's teacher is a third
set, a snapshot of the actor re-taken every K optimizer steps. Each worker keeps its own shards of the
actor's trainable parameters (LoRA: the adapter; full fine-tuning: all of them, on the CPU when verl
offloads the actor's parameters) in a `castrl.teacher.snapshot.ParamSnapshot`, the mechanism the TRL
trainer uses too, swapped into the FSDP1 / FSDP2 module by value around the actor's own `infer_batch`.
A second PEFT adapter would not do: FSDP would flatten it into frozen units whose shards do not line
up with the trainable adapter's.

The methods the `castrl_sync` trainer calls (`teacher_snapshot.py`):
- `castrl_snapshot` (every rank): create the snapshot, re-take it, or move it as an EMA;
- `castrl_compute_teacher_log_prob` (dispatched like `compute_log_prob`): log-probs with the snapshot in;
- `castrl_save_teacher` / `castrl_load_teacher` (every rank): its shards beside the actor checkpoint.
Megatron and the other engines are refused at config time (`config.py`): their parameters are not
FSDP's. verl's FSDP engine needs CUDA, so on CPU this class is tested with a stand-in engine
(tests/test_verl_teacher.py); the GPU check is scripts/gpu/verl_refresh_smoke.sh.
"""

from __future__ import annotations

from tensordict import TensorDict
from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.workers.engine_workers import ActorRolloutRefWorker

from castrl.teacher.shards import rank_and_world
from castrl.teacher.snapshot import ParamSnapshot

from .teacher_files import load_shard, save_shard

SNAPSHOT_ACTIONS = ("take", "ema")


class CastrlActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's `ActorRolloutRefWorker` with a shard-local teacher snapshot of the actor."""

    castrl_teacher: ParamSnapshot | None = None

    def _castrl_new_snapshot(self) -> ParamSnapshot:
        engine = self.actor.engine
        return ParamSnapshot(engine.module, offload=bool(engine.is_param_offload_enabled))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def castrl_snapshot(self, action: str = "take", weight: float = 0.0) -> dict:
        """The first call copies the actor's current shards; later ones re-take them (`take`) or move the
        copy toward them (`ema`, by `weight` = 1 - decay^steps). Returns this rank's kept element count."""
        if action not in SNAPSHOT_ACTIONS:
            raise ValueError(f"castrl_snapshot action must be one of {SNAPSHOT_ACTIONS}, got {action!r}")
        module = self.actor.engine.module
        if self.castrl_teacher is None:
            self.castrl_teacher = self._castrl_new_snapshot()
        elif action == "take":
            self.castrl_teacher.take(module)
        else:
            self.castrl_teacher.ema_(module, weight)
        return {"local_numel": sum(s.numel() for s in self.castrl_teacher.shadow)}

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def castrl_compute_teacher_log_prob(self, data: TensorDict) -> TensorDict:
        """The actor's `infer_batch` on `data` with the snapshot swapped in; the actor's own values are
        back, bit-exactly, when it returns (also on error)."""
        if self.castrl_teacher is None:
            raise RuntimeError("castrl_compute_teacher_log_prob before castrl_snapshot: no teacher snapshot yet")
        engine = self.actor.engine
        # One eval context around swap and pass: offloaded parameters come onto the device once, and the
        # inner pass must not offload them between the swap and the restore.
        with engine.eval_mode():
            with self.castrl_teacher.swapped(engine.module):
                tu.assign_non_tensor(data, disable_auto_offload=True)
                output = self.actor.infer_batch(data)
        return output.cpu() if output is not None else None

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def castrl_save_teacher(self, folder: str, weights: str) -> str:
        """Save this rank's shards of the snapshot into `folder`; returns the file."""
        if self.castrl_teacher is None:
            raise RuntimeError("castrl_save_teacher before castrl_snapshot: no teacher snapshot to save")
        state = {"weights": weights, **self.castrl_teacher.state_dict()}
        rank, world = rank_and_world()
        state.update(rank=rank, world_size=world)  # one file per rank, also for a replicated snapshot
        return save_shard(folder, state)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def castrl_load_teacher(self, folder: str, weights: str) -> str:
        """Restore this rank's shards from `folder` (ValueError when missing or mismatched)."""
        rank, world = rank_and_world()
        state = load_shard(folder, rank, world, weights)
        if self.castrl_teacher is None:
            self.castrl_teacher = self._castrl_new_snapshot()
        if not state.get("sharded"):
            state = {**state, "rank": 0, "world_size": 1}  # a replicated snapshot: every rank's file is whole
        self.castrl_teacher.load_state_dict(state, self.actor.engine.module)
        return f"rank {rank} of {world}: {len(self.castrl_teacher.names)} tensors"
