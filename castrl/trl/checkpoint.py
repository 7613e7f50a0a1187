"""Crash-safe checkpoints: write into a staging folder, then rename it into place.

HF's Trainer writes `checkpoint-N/` file by file, in place, and deletes old checkpoints
(`save_total_limit`) right after. A crash in between leaves a `checkpoint-N/` that looks like the
newest one but holds half the files, and `get_last_checkpoint` would resume from it. castrl
instead lets the Trainer write into `<run_dir>/.castrl-staging-N/checkpoint-N/`, adds the teacher
state and a completion marker, fsyncs everything, and only then renames the folder to
`<run_dir>/checkpoint-N`. A rename within one filesystem is atomic, so a `checkpoint-N/` either
does not exist or is complete; old checkpoints are rotated only after the rename, so at least one
complete checkpoint always exists, also with `save_total_limit=1`.

The completion marker stays as a second line of defence: resume only picks folders that carry
it, so a `checkpoint-N/` written by something else (an older castrl, a manual copy cut short)
is never chosen either.

`CASTTrainer._save_checkpoint` redirects HF's save into the staging folder and calls
`commit_staged_checkpoint`; `_load_optimizer_and_scheduler` calls `load_teacher_state`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import torch
from transformers.trainer_utils import rotate_checkpoints

TEACHER_STATE_FILE = "castrl_teacher.pt"  # the teacher's snapshot/EMA weights (`TeacherWeights.state_dict`)
COMPLETE_MARKER = "castrl_complete.json"
STAGING_PREFIX = ".castrl-staging-"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def staging_root(run_dir: str, step: int) -> str:
    """Where step `step`'s checkpoint is written before it is committed."""
    return os.path.join(run_dir, f"{STAGING_PREFIX}{step}")


def remove_stale_staging(run_dir: str) -> list[str]:
    """Delete staging folders left by a crash mid-save; returns what was removed."""
    if not os.path.isdir(run_dir):
        return []
    removed = []
    for name in os.listdir(run_dir):
        if name.startswith(STAGING_PREFIX) or name.startswith(".castrl-replaced-"):
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
            removed.append(name)
    return removed


def write_complete_marker(folder: str, step: int) -> None:
    """Mark `folder` as a complete checkpoint (the marker itself is written via rename)."""
    tmp = os.path.join(folder, COMPLETE_MARKER + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"global_step": step}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(folder, COMPLETE_MARKER))


def fsync_tree(folder: str) -> None:
    """Flush every file and directory under `folder` to disk, so the rename that follows cannot
    survive a power loss that the contents did not."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(root)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit_checkpoint(staged: str, final: str) -> None:
    """Move the finished `staged` folder to `final` atomically.

    If `final` already exists (a run restarted from an earlier checkpoint re-saves the same step),
    it is first moved aside and deleted only after the new folder is in place: at no moment is
    there a half-written folder under the name `final`.
    """
    run_dir = os.path.dirname(final)
    aside = None
    if os.path.exists(final):
        aside = os.path.join(run_dir, f".castrl-replaced-{os.path.basename(final)}")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(staged, final)
    _fsync_dir(run_dir)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(os.path.dirname(staged), ignore_errors=True)


def commit_staged_checkpoint(
    run_dir: str, step: int, state: Any, teacher_state: dict | None, save_total_limit: int | None
) -> None:
    """Commit the checkpoint of `step` that every process wrote into `staging_root(run_dir, step)`.

    Main process only, after a barrier. `state` is HF's `TrainerState`: a best checkpoint that
    points into staging is repointed at the committed folder. The teacher state (if any) and the
    complete marker are added, the tree fsynced and renamed into place; only then are old
    checkpoints rotated (HF's `rotate_checkpoints`, `save_total_limit`).
    """
    staged = os.path.join(staging_root(run_dir, step), f"checkpoint-{step}")
    final = os.path.join(run_dir, f"checkpoint-{step}")
    if state.best_model_checkpoint == staged:
        state.best_model_checkpoint = final
        state.save_to_json(os.path.join(staged, "trainer_state.json"))
    if teacher_state is not None:
        torch.save(teacher_state, os.path.join(staged, TEACHER_STATE_FILE))
    write_complete_marker(staged, step)
    fsync_tree(staged)
    commit_checkpoint(staged, final)
    rotate_checkpoints(output_dir=run_dir, save_total_limit=save_total_limit,
                       best_model_checkpoint=state.best_model_checkpoint, use_mtime=True)  # fmt: skip


def rank_teacher_state_file(rank: int, world_size: int) -> str:
    """The file of one rank's teacher shards (FSDP: each rank holds and saves its own)."""
    return f"castrl_teacher.rank{rank}-of-{world_size}.pt"


def save_rank_teacher_state(folder: str, state: dict) -> None:
    """Every rank of a sharded teacher writes its own state into the staged `folder` (before the
    barrier that precedes the commit), written to a temporary name and renamed."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, rank_teacher_state_file(state["rank"], state["world_size"]))
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_teacher_state(checkpoint: str, rank: int = 0, world_size: int = 1) -> dict | None:
    """The teacher state saved in `checkpoint` for this rank (on CPU): the single file of an unsharded
    teacher, else this rank's shard file; None if the checkpoint holds no teacher state. Raises
    ValueError when it holds only shard files of another world size (they cannot be re-sharded)."""
    path = os.path.join(checkpoint, TEACHER_STATE_FILE)
    if os.path.exists(path):
        return torch.load(path, map_location="cpu", weights_only=True)
    mine = os.path.join(checkpoint, rank_teacher_state_file(rank, world_size))
    if os.path.exists(mine):
        return torch.load(mine, map_location="cpu", weights_only=True)
    others = sorted(n for n in os.listdir(checkpoint) if re.fullmatch(r"castrl_teacher\.rank\d+-of-\d+\.pt", n))
    if others:
        raise ValueError(
            f"{checkpoint} holds the teacher's shards of another run layout ({others[0]}, ...), not "
            f"{rank_teacher_state_file(rank, world_size)}: a sharded teacher resumes only with the world size it "
            "was saved with"
        )
    return None


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The highest-step `checkpoint-N` in `output_dir` that carries the complete marker, else None."""
    if not os.path.isdir(output_dir):
        return None
    best, best_step = None, -1
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_NAME.match(name)
        path = os.path.join(output_dir, name)
        if match and int(match.group(1)) > best_step and os.path.exists(os.path.join(path, COMPLETE_MARKER)):
            best, best_step = path, int(match.group(1))
    return best
