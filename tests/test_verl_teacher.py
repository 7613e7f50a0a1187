"""castrl's refresh:K / ema teacher on verl, on CPU: schedule, worker methods, scoring, checkpoints, resume.

verl's FSDP engine needs CUDA, so the worker subclass runs here on a stand-in engine whose `module` is a
tiny CPU model (the shard-local swap itself is tested on FSDP1/FSDP2 with 2 gloo ranks in
tests/test_teacher_sharded.py). The driver side runs verl's real `_update_actor`, `_save_checkpoint`
and `_load_checkpoint` against a worker group that forwards each call to a local worker, so a run can
be interrupted, resumed from verl's checkpoint folder and compared with the uninterrupted one.
The GPU check is scripts/gpu/verl_refresh_smoke.sh (docs/verl.md says whether it has run).
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("verl")
pytest.importorskip("transfer_queue")

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from transfer_queue import KVBatchMeta  # noqa: E402
from verl.single_controller.base.decorator import MAGIC_ATTR, Dispatch  # noqa: E402
from verl.trainer.ppo.utils import Role  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402

from castrl.integrations.verl import trainer as trainer_module  # noqa: E402
from castrl.integrations.verl.schedule import TeacherSchedule, optimizer_steps_per_update  # noqa: E402
from castrl.integrations.verl.teacher_files import (  # noqa: E402
    load_schedule,
    load_shard,
    save_schedule,
    save_shard,
    teacher_dir,
)
from castrl.integrations.verl.teacher_inputs import assemble_teacher_batch  # noqa: E402
from castrl.integrations.verl.worker import CastrlActorRolloutRefWorker  # noqa: E402
from castrl.testing import build_char_tokenizer, build_tiny_model  # noqa: E402

torch.set_num_threads(1)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "verl"


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(EXAMPLES), version_base=None):
        return compose(config_name="cast_gsm8k", overrides=list(overrides))


# -- the schedule: K counts optimizer steps --------------------------------------------------------


def test_refresh_counts_optimizer_steps_across_updates():
    one = TeacherSchedule("refresh:2")  # one optimizer step per update: every 2nd update
    assert [one.after_update(1) for _ in range(5)] == [None, ("take", 0.0), None, ("take", 0.0), None]
    four = TeacherSchedule("refresh:10")  # 4 per update: at the first boundary at or after 10, 20, 30, ...
    taken = [four.optimizer_steps for _ in range(10) if four.after_update(4)]
    assert taken == [12, 20, 32, 40] and four.snapshot_step == 40
    assert four.after_update(0) is None and four.optimizer_steps == 40  # critic warm-up: no actor update
    ema = TeacherSchedule("ema", ema_decay=0.9)
    assert ema.after_update(3) == ("ema", pytest.approx(1 - 0.9**3))


def test_optimizer_steps_per_update_follows_verls_mini_batches():
    assert optimizer_steps_per_update(rows=64, mini_batch_prompts=4, n=4, epochs=2) == 8
    with pytest.raises(ValueError, match="do not split"):
        optimizer_steps_per_update(rows=30, mini_batch_prompts=4, n=4, epochs=1)


def test_the_start_message_says_what_k_means(capsys):
    trainer = trainer_module.CastrlPPOTrainerSync(_compose("castrl.teacher_weights=refresh:10"))  # 256 / 64
    note = capsys.readouterr().out
    assert note.strip() == trainer.castrl_schedule_note
    assert "counts optimizer steps" in note and "4 optimizer step(s) per verl training step" in note
    assert "12, 20, 32, 40" in note and "not every 10" in note and "ppo_mini_batch_size=train_batch_size" in note
    exact = TeacherSchedule("refresh:8").describe(4, "x")
    assert "every 2 training step(s), exactly every 8 optimizer steps" in exact
    assert "decay^4" in TeacherSchedule("ema").describe(4, "x")


def test_schedule_state_refuses_another_teacher():
    state = TeacherSchedule("refresh:10", optimizer_steps=7, snapshot_step=0).state_dict()
    resumed = TeacherSchedule("refresh:10")
    resumed.load_state_dict(state)
    assert (resumed.optimizer_steps, resumed.snapshot_step) == (7, 0)
    with pytest.raises(ValueError, match="'refresh:10'.*this run uses 'refresh:5'"):
        TeacherSchedule("refresh:5").load_state_dict(state)
    with pytest.raises(ValueError, match="ema_decay"):
        TeacherSchedule("ema", 0.9).load_state_dict(TeacherSchedule("ema", 0.99).state_dict())


def test_teacher_files_refuse_missing_other_world_and_other_weights(tmp_path):
    folder = str(tmp_path / "castrl_teacher")
    with pytest.raises(ValueError, match="schedule.json is missing"):
        load_schedule(folder)
    with pytest.raises(ValueError, match="holds no castrl teacher"):
        load_shard(folder, 0, 1, "refresh:2")
    save_shard(folder, {"weights": "refresh:2", "rank": 1, "world_size": 2, "shadow": {}})
    save_schedule(folder, {"weights": "refresh:2"})
    assert load_schedule(folder) == {"weights": "refresh:2"}
    with pytest.raises(ValueError, match=r"\[2\] worker processes, this run has 4"):
        load_shard(folder, 1, 4, "refresh:2")
    with pytest.raises(ValueError, match="teacher_weights='refresh:2', but this run uses 'refresh:4'"):
        load_shard(folder, 1, 2, "refresh:4")
    assert sorted(os.listdir(folder)) == ["rank1-of-2.pt", "schedule.json"]  # no temporary files left


# -- the worker, on a stand-in engine ----------------------------------------------------------------


def _logps(model, td) -> torch.Tensor:
    """verl's no-padding layout: log-prob of each next token (0 at the end), per row."""
    out = []
    for ids, pos in zip(td["input_ids"].unbind(), td["position_ids"].unbind(), strict=True):
        logits = model(ids[None], position_ids=pos[None]).logits[0].float()
        logp = torch.log_softmax(logits[:-1], -1).gather(-1, ids[1:, None])[:, 0]
        out.append(torch.cat([logp, torch.zeros(1)]))
    return torch.nested.as_nested_tensor(out, layout=torch.jagged)


class _Engine:
    def __init__(self, module):
        self.module, self.is_param_offload_enabled, self.eval_contexts = module, False, 0

    @contextmanager
    def eval_mode(self, **kwargs):
        self.eval_contexts += 1
        yield


class _Actor:
    """The actor's TrainingWorker: `infer_batch` scores with whatever the engine's module holds."""

    def __init__(self, module):
        self.engine, self.seen = _Engine(module), []

    @torch.no_grad()
    def infer_batch(self, data):
        self.seen.append(tu.get(data, "disable_auto_offload", default=False))
        return tu.get_tensordict({"log_probs": _logps(self.engine.module, data)})


def _worker(model) -> CastrlActorRolloutRefWorker:
    worker = object.__new__(CastrlActorRolloutRefWorker)  # verl's __init__ needs Ray; the methods do not
    worker.actor = _Actor(model)
    return worker


def _model(seed: int = 1):
    return build_tiny_model(build_char_tokenizer(), hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, seed=seed)


def _nudge(model, k: int) -> None:
    """One stand-in optimizer step: every trainable parameter moves (deterministically)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.sin(p * (k + 1)))


def _teacher_batch(seed: int = 0, rows: int = 3):
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 60, (int(torch.randint(3, 7, (1,), generator=gen)),), generator=gen).tolist()
               for _ in range(rows)]  # fmt: skip
    lengths = torch.randint(2, 6, (rows,), generator=gen)
    mask = (torch.arange(5)[None] < lengths[:, None]).long()
    responses = torch.randint(3, 60, (rows, 5), generator=gen) * mask
    batch, _ = assemble_teacher_batch(prompts, responses, mask, mask, 2, 64)
    return batch


def _score_td(batch):
    from verl.workers.utils.padding import left_right_2_no_padding

    return left_right_2_no_padding(batch.to_tensordict())


def _expected(model, batch) -> torch.Tensor:
    """(B, T) response log-probs under `model`, as the trainer's `_castrl_score` lays them out."""
    from verl.workers.utils.padding import no_padding_2_padding

    td = _score_td(batch)
    return no_padding_2_padding(_logps(model, td), td).float()


def test_worker_methods_are_dispatched_like_verls():
    for name in ("castrl_snapshot", "castrl_save_teacher", "castrl_load_teacher"):
        assert getattr(getattr(CastrlActorRolloutRefWorker, name), MAGIC_ATTR)["dispatch_mode"] == Dispatch.ONE_TO_ALL
    ours = getattr(CastrlActorRolloutRefWorker.castrl_compute_teacher_log_prob, MAGIC_ATTR)["dispatch_mode"]
    verls = getattr(CastrlActorRolloutRefWorker.compute_log_prob, MAGIC_ATTR)["dispatch_mode"]
    assert ours["dispatch_fn"].args == verls["dispatch_fn"].args == ("actor",)  # the actor's mesh, as compute_log_prob
    assert ours["dispatch_fn"].func is verls["dispatch_fn"].func


def test_worker_scores_with_the_snapshot_and_restores_the_actor():
    model = _model()
    worker = _worker(model)
    with pytest.raises(RuntimeError, match="before castrl_snapshot"):
        worker.castrl_compute_teacher_log_prob(_score_td(_teacher_batch()))
    assert worker.castrl_snapshot("take")["local_numel"] == sum(p.numel() for p in model.parameters())
    held = copy.deepcopy(model)  # the separately held snapshot
    _nudge(model, 0)
    bits = [p.detach().clone() for p in model.parameters()]
    td = _score_td(_teacher_batch())
    got = worker.castrl_compute_teacher_log_prob(td)["log_probs"]
    assert all(torch.equal(a, b) for a, b in zip(got.unbind(), _logps(held, td).unbind(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(got.unbind(), _logps(model, td).unbind(), strict=True))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), bits, strict=True))  # the actor is back
    assert worker.actor.seen == [True] and worker.actor.engine.eval_contexts == 1  # one eval context, no offload
    worker.castrl_snapshot("ema", 0.5)
    for s, p, h in zip(worker.castrl_teacher.shadow, model.parameters(), held.parameters(), strict=True):
        torch.testing.assert_close(s, h.detach().lerp(p.detach(), 0.5))
    with pytest.raises(ValueError, match="action must be one of"):
        worker.castrl_snapshot("swap")


# -- the driver: verl's own update / save / load around a local worker ---------------------------------


class _WorkerGroup:
    """`actor_rollout_wg` stand-in: forwards castrl's calls to one local worker (ONE_TO_ALL of one rank)
    and runs `update_actor` as stand-in optimizer steps, one per mini-batch per epoch, as verl does."""

    def __init__(self, worker, config):
        self.worker, self.config, self.optimizer_steps, self.snapshots = worker, config, 0, []

    def castrl_snapshot(self, *args):
        self.snapshots.append((self.optimizer_steps, *args))
        return [self.worker.castrl_snapshot(*args)]

    def castrl_compute_teacher_log_prob(self, td):
        return self.worker.castrl_compute_teacher_log_prob(td)

    def castrl_save_teacher(self, folder, weights):
        return [self.worker.castrl_save_teacher(folder, weights)]

    def castrl_load_teacher(self, folder, weights):
        return [self.worker.castrl_load_teacher(folder, weights)]

    def update_actor(self, batch):
        epochs, size = batch.extra_info["epochs"], batch.extra_info["mini_batch_size"]
        for _ in range(len(batch.keys) // size * epochs):
            _nudge(self.worker.actor.engine.module, self.optimizer_steps)
            self.optimizer_steps += 1
        return {"metrics": {"mfu": 0.0, "pg_loss": 0.0}}

    def save_checkpoint(self, local_path, hdfs_path=None, global_steps=0, max_ckpt_to_keep=None):
        os.makedirs(local_path, exist_ok=True)
        torch.save({"model": self.worker.actor.engine.module.state_dict(), "steps": self.optimizer_steps},
                   os.path.join(local_path, "actor.pt"))  # fmt: skip

    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False):
        state = torch.load(os.path.join(local_path, "actor.pt"), weights_only=True)
        self.worker.actor.engine.module.load_state_dict(state["model"])
        self.optimizer_steps = state["steps"]


class _Loader:
    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _driver(out: Path, weights: str = "refresh:2", *extra: str):
    """A castrl_sync trainer (no Ray) with 4 prompts x 2 rollouts per step, 1 optimizer step per update."""
    config = _compose(f"castrl.teacher_weights={weights}", "data.train_batch_size=4", "actor_rollout_ref.rollout.n=2",
                      "actor_rollout_ref.actor.ppo_mini_batch_size=4", f"trainer.default_local_dir={out}",
                      "trainer.resume_mode=auto", *extra)  # fmt: skip
    trainer = trainer_module.CastrlPPOTrainerSync(config)
    trainer.actor_rollout_wg = _WorkerGroup(_worker(_model()), trainer.config)
    trainer.train_dataloader, trainer.use_critic = _Loader(), False
    trainer._load_checkpoint()  # verl's, then castrl's: a fresh snapshot, or the saved one
    return trainer


def _run(trainer, steps: range, save_at: tuple[int, ...] = ()) -> dict[int, torch.Tensor]:
    """verl's step order for the parts that matter here: teacher pass, actor update, checkpoint."""
    teacher = {}
    keys = [f"k{i}" for i in range(8)]
    for step in steps:
        trainer.global_steps = step
        teacher[step] = trainer._castrl_score(_teacher_batch(seed=3))
        trainer._update_actor(KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train"), {})
        if step in save_at:
            trainer._save_checkpoint()
    return teacher


def test_the_trainer_maps_the_actor_roles_to_castrls_worker(tmp_path):
    trainer = trainer_module.CastrlPPOTrainerSync(_compose("castrl.teacher_weights=refresh:10"))
    trainer._init_resource_pool_mgr()
    (role,) = [r for r in (Role.ActorRollout, Role.ActorRolloutRef) if r in trainer.role_worker_mapping]
    assert trainer.role_worker_mapping[role].__ray_actor_class__ is CastrlActorRolloutRefWorker
    policy = trainer_module.CastrlPPOTrainerSync(_compose("castrl.teacher_weights=policy"))
    policy._init_resource_pool_mgr()
    assert policy.castrl_schedule is None
    assert policy.role_worker_mapping[role].__ray_actor_class__ is not CastrlActorRolloutRefWorker


def test_snapshots_follow_optimizer_steps_and_score_the_teacher(tmp_path):
    trainer = _driver(tmp_path)
    wg = trainer.actor_rollout_wg
    model = wg.worker.actor.engine.module
    held = {0: copy.deepcopy(model)}
    for step in range(1, 6):
        trainer.global_steps = step
        snapshot = held[max(s for s in held if s <= wg.optimizer_steps)]
        metrics: dict = {}
        assert torch.equal(trainer._castrl_score(_teacher_batch(seed=3)), _expected(snapshot, _teacher_batch(seed=3)))
        keys = [f"k{i}" for i in range(8)]
        trainer._update_actor(KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train"), metrics)
        if wg.optimizer_steps % 2 == 0:
            held[wg.optimizer_steps] = copy.deepcopy(model)
        assert metrics["cast/teacher_refreshed"] == float(wg.optimizer_steps % 2 == 0)
        assert metrics["cast/teacher_optimizer_steps"] == wg.optimizer_steps == step
    assert [s[0] for s in wg.snapshots] == [0, 2, 4]  # the initial snapshot, then every 2 optimizer steps


def test_resume_across_a_refresh_boundary_scores_as_the_uninterrupted_run(tmp_path):
    full = _run(_driver(tmp_path / "full"), range(1, 6))
    _run(_driver(tmp_path / "cut"), range(1, 4), save_at=(3,))  # stops after step 3: snapshot of step 2
    folder = tmp_path / "cut" / "global_step_3" / "actor" / "castrl_teacher"
    assert sorted(os.listdir(folder)) == ["rank0-of-1.pt", "schedule.json"]
    resumed = _driver(tmp_path / "cut")  # verl's auto resume finds global_step_3
    assert resumed.global_steps == 3 and resumed.castrl_schedule.optimizer_steps == 3
    after = _run(resumed, range(4, 6))  # step 4 scores with step 2's snapshot, step 5 with step 4's
    for step in (4, 5):
        assert torch.equal(after[step], full[step]), step
    assert not torch.equal(full[4], full[5])  # the refresh after optimizer step 4 shows


@pytest.mark.parametrize(
    ("weights", "damage", "match"),
    [
        ("refresh:3", None, "this run uses 'refresh:3'"),
        ("refresh:2", "schedule", "schedule.json is missing"),
        ("refresh:2", "shard", "holds no castrl teacher"),
        ("refresh:2", "world", r"\[2\] worker processes, this run has 1"),
    ],
)
def test_resume_refuses_a_missing_or_mismatched_teacher(tmp_path, weights, damage, match):
    _run(_driver(tmp_path), range(1, 3), save_at=(2,))
    folder = Path(teacher_dir(str(tmp_path / "global_step_2" / "actor")))
    if damage == "schedule":
        (folder / "schedule.json").unlink()
    elif damage == "shard":
        (folder / "rank0-of-1.pt").unlink()
    elif damage == "world":
        (folder / "rank0-of-1.pt").rename(folder / "rank0-of-2.pt")
    with pytest.raises(ValueError, match=match):
        _driver(tmp_path, weights)


def test_worker_on_fsdp_ranks(tmp_path):
    """The worker's methods on real FSDP1 / FSDP2 modules, bf16 mixed precision, 2 gloo ranks
    (tests/verl_worker_rank.py): scoring equals the policy at the snapshot step, the actor comes back,
    and each rank's saved shards load into a fresh worker."""
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    script = str(Path(__file__).resolve().parent / "verl_worker_rank.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    for rank in (0, 1):
        records = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for wrap in ("fsdp1", "fsdp2"):
            rec = records[wrap]
            assert "error" not in rec, f"rank {rank} {wrap}: {rec['error']}"
            assert rec["step1_vs_step0"] > 1e-3
            assert rec["teacher_vs_step0"] == rec["student_after"] == 0.0
            assert rec["loaded_vs_step0"] == rec["student_after_loaded"] == 0.0
            assert rec["files"] == ["rank0-of-2.pt", "rank1-of-2.pt"]


def test_ema_moves_the_snapshot_after_every_update(tmp_path):
    trainer = _driver(tmp_path, "ema", "castrl.teacher_ema_decay=0.5")
    wg = trainer.actor_rollout_wg
    policy = [p.detach().clone() for p in wg.worker.actor.engine.module.parameters()]
    _run(trainer, range(1, 3))
    assert wg.snapshots == [(0, "take"), (1, "ema", 0.5), (2, "ema", 0.5)]
    assert trainer.castrl_teacher_lag() is None  # an EMA has no single snapshot step
    ema = [p.clone() for p in policy]
    for k in range(2):  # replay the stand-in optimizer steps and the EMA on copies
        policy = [p + 0.05 * torch.sin(p * (k + 1)) for p in policy]
        ema = [e.lerp(p, 0.5) for e, p in zip(ema, policy, strict=True)]
    for s, e in zip(wg.worker.castrl_teacher.shadow, ema, strict=True):
        torch.testing.assert_close(s, e)
