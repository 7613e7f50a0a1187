"""The verl teacher snapshot in a checkpoint: `global_step_N/actor/castrl_teacher/`.

The folder sits inside verl's actor checkpoint, so verl's rotation (`max_actor_ckpt_to_keep`) removes
it with the actor it belongs to. It holds one file per worker rank (`rank{r}-of-{W}.pt`: that rank's
shards of the trainable parameters, `ParamSnapshot.state_dict`) and the driver's `schedule.json`
(`TeacherSchedule.state_dict`: optimizer steps so far, the step the snapshot holds, the teacher
spec). Loading raises on anything missing or mismatched (another K or decay, another world size), so
a resumed run never scores with the wrong teacher. Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch

TEACHER_DIR = "castrl_teacher"
SCHEDULE_FILE = "schedule.json"
_SHARD = re.compile(r"^rank(\d+)-of-(\d+)\.pt$")


def teacher_dir(actor_checkpoint: str) -> str:
    """Where the teacher's files of an actor checkpoint folder live."""
    return os.path.join(actor_checkpoint, TEACHER_DIR)


def shard_file(folder: str, rank: int, world_size: int) -> str:
    return os.path.join(folder, f"rank{rank}-of-{world_size}.pt")


def _replace_into(path: str, write) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write(path + ".tmp")
    os.replace(path + ".tmp", path)


def save_shard(folder: str, state: dict[str, Any]) -> str:
    """One worker rank's snapshot state (with its `rank` / `world_size`); returns the path."""
    path = shard_file(folder, int(state["rank"]), int(state["world_size"]))
    _replace_into(path, lambda tmp: torch.save(state, tmp))
    return path


def load_shard(folder: str, rank: int, world_size: int, weights: str) -> dict[str, Any]:
    """This rank's saved snapshot state; ValueError naming the cause when it is missing, from another
    world size, or of another `teacher_weights`."""
    path = shard_file(folder, rank, world_size)
    if not os.path.exists(path):
        found = sorted(n for n in os.listdir(folder) if _SHARD.match(n)) if os.path.isdir(folder) else []
        worlds = sorted({int(_SHARD.match(n)[2]) for n in found})
        why = (
            f"it holds the shards of a run with {worlds} worker processes, this run has {world_size}: a sharded "
            "teacher resumes only with the world size it was saved with"
            if found
            else "it holds no castrl teacher (a checkpoint written without castrl's refresh:K / ema teacher?)"
        )
        raise ValueError(f"cannot resume the teacher snapshot from {folder}: {path} is missing; {why}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("weights") != weights:
        raise ValueError(
            f"{path} holds the teacher of teacher_weights={state.get('weights')!r}, but this run uses {weights!r}"
        )
    return state


def save_schedule(folder: str, state: dict[str, Any]) -> None:
    """The driver's schedule counters (`TeacherSchedule.state_dict`)."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(state, f)

    _replace_into(os.path.join(folder, SCHEDULE_FILE), write)


def load_schedule(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, SCHEDULE_FILE)
    if not os.path.exists(path):
        raise ValueError(
            f"cannot resume the teacher snapshot: {path} is missing (the checkpoint was written without castrl's "
            "refresh:K / ema teacher, or by an interrupted save); resuming would score with the wrong teacher"
        )
    with open(path) as f:
        return json.load(f)
