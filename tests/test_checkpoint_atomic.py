"""Checkpoints are committed atomically: staging folder + rename, rotation only afterwards.

A kill in the middle of HF's save must leave no `checkpoint-N/` at all (neither castrl's resume
nor HF's `get_last_checkpoint` may pick a half-written one), must not have deleted the previous
checkpoint even with `save_total_limit=1`, and the next save must clean up the leftover staging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from transformers.trainer_utils import get_last_checkpoint

from castrl.trl import CASTTrainer
from castrl.trl.checkpoint import (
    COMPLETE_MARKER,
    STAGING_PREFIX,
    TEACHER_STATE_FILE,
    commit_checkpoint,
    last_complete_checkpoint,
)

from .trl_helpers import parity_reward, tiny_config, tiny_model_and_tokenizer, toy_dataset

CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
                    TEACHER_STATE_FILE, COMPLETE_MARKER)


def _trainer(tmp_path, **overrides) -> CASTTrainer:
    model, tokenizer = tiny_model_and_tokenizer(0)
    args = tiny_config(tmp_path, teacher_weights="ema", save_strategy="steps", save_steps=1, **overrides)
    return CASTTrainer(model=model, reward_funcs=parity_reward, args=args, train_dataset=toy_dataset(),
                       processing_class=tokenizer)


def _listing(out: str) -> list[str]:
    return sorted(os.listdir(out))


def test_saves_leave_only_complete_checkpoints_and_respect_the_limit(tmp_path):
    trainer = _trainer(tmp_path, max_steps=3, save_total_limit=2)
    trainer.train()
    out = trainer.args.output_dir
    assert [n for n in _listing(out) if n.startswith("checkpoint-")] == ["checkpoint-2", "checkpoint-3"]
    assert not [n for n in _listing(out) if n.startswith(".castrl-")]
    for step in (2, 3):
        files = set(os.listdir(os.path.join(out, f"checkpoint-{step}")))
        assert set(CHECKPOINT_FILES) <= files, set(CHECKPOINT_FILES) - files
        with open(os.path.join(out, f"checkpoint-{step}", "trainer_state.json")) as f:
            assert json.load(f)["global_step"] == step


def test_crash_inside_hf_save_leaves_no_checkpoint_and_keeps_the_previous_one(tmp_path):
    trainer = _trainer(tmp_path, max_steps=3, save_total_limit=1)
    inner = trainer._save_rng_state

    def failing_rng_save(output_dir):
        if trainer.state.global_step == 2:
            raise OSError("disk full (simulated)")
        inner(output_dir)

    trainer._save_rng_state = failing_rng_save
    with pytest.raises(OSError, match="simulated"):
        trainer.train()
    out = trainer.args.output_dir
    assert not os.path.exists(os.path.join(out, "checkpoint-2"))
    assert os.path.isdir(os.path.join(out, f"{STAGING_PREFIX}2"))  # the half-written save, out of the way
    # save_total_limit=1 did not delete step 1: rotation runs only after a commit.
    assert last_complete_checkpoint(out).endswith("checkpoint-1")
    assert get_last_checkpoint(out).endswith("checkpoint-1")

    resumed = _trainer(tmp_path, max_steps=3, save_total_limit=1)
    resumed.train(resume_from_checkpoint=last_complete_checkpoint(out))
    assert resumed.state.global_step == 3
    assert [n for n in _listing(out) if n.startswith(("checkpoint-", ".castrl-"))] == ["checkpoint-3"]


def test_sigkill_during_save_resumes_from_previous_checkpoint(tmp_path):
    """The process dies mid-save (after the model file, before the RNG state)."""
    out = tmp_path / "out"
    script = tmp_path / "killed_mid_save.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
        from pathlib import Path
        from tests.test_checkpoint_atomic import _trainer
        trainer = _trainer(Path({str(tmp_path)!r}), max_steps=3, save_total_limit=1)
        inner = trainer._save_rng_state
        def die_at_step_2(output_dir):
            if trainer.state.global_step == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            inner(output_dir)
        trainer._save_rng_state = die_at_step_2
        trainer.train()
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    staged = out / f"{STAGING_PREFIX}2" / "checkpoint-2"
    assert (staged / "model.safetensors").exists() and not (staged / "rng_state.pth").exists()
    assert not (out / "checkpoint-2").exists()
    assert last_complete_checkpoint(str(out)).endswith("checkpoint-1")

    resumed = _trainer(tmp_path, max_steps=3, save_total_limit=1)
    resumed.train(resume_from_checkpoint=last_complete_checkpoint(str(out)))
    assert resumed.state.global_step == 3
    assert (out / "checkpoint-3" / COMPLETE_MARKER).exists()
    assert not (out / f"{STAGING_PREFIX}2").exists()


def test_best_model_checkpoint_points_at_the_committed_folder(tmp_path):
    trainer = _trainer(tmp_path, save_only_model=True)  # no optimizer exists outside train()
    trainer.state.global_step = trainer.state.best_global_step = 5
    trainer._save_checkpoint(trainer.model, trial=None)
    final = os.path.join(trainer.args.output_dir, "checkpoint-5")
    assert trainer.state.best_model_checkpoint == final
    with open(os.path.join(final, "trainer_state.json")) as f:
        assert json.load(f)["best_model_checkpoint"] == final


def test_commit_replaces_an_existing_folder_of_the_same_step(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoint-4").mkdir(parents=True)
    (run_dir / "checkpoint-4" / "old.txt").write_text("old")
    staged = run_dir / f"{STAGING_PREFIX}4" / "checkpoint-4"
    staged.mkdir(parents=True)
    (staged / "new.txt").write_text("new")
    commit_checkpoint(str(staged), str(run_dir / "checkpoint-4"))
    assert sorted(os.listdir(run_dir)) == ["checkpoint-4"]
    assert os.listdir(run_dir / "checkpoint-4") == ["new.txt"]
