"""A group that straddles two processes is scored as one group.

Two CPU processes (torchrun + gloo), 2 rollouts each per step, 4 generations per prompt: every
group is split across the processes. Each rank records what it fed the trainer and what it got
back; the test concatenates the ranks and checks the advantages equal one single-process core
call on the whole group -- and differ from scoring each half as its own group (the bug this
catches)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from castrl.core import compute_advantages
from castrl.trl import CASTTrainerConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RANK_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {repo!r})
from pathlib import Path
from castrl.trl import CASTTrainer
from tests.trl_helpers import parity_reward, tiny_config, tiny_model_and_tokenizer, toy_dataset

rank = int(os.environ["RANK"])
model, tokenizer = tiny_model_and_tokenizer(0)
args = tiny_config(Path({tmp!r}), per_device_train_batch_size=2, num_generations=4, max_steps=1,
                   teacher_weights="ema", advantage_estimator={estimator!r}, fuse_student_pass={fuse!r})
trainer = CASTTrainer(model=model, reward_funcs=parity_reward, args=args, train_dataset=toy_dataset(),
                      processing_class=tokenizer)
record = {{}}
inner_teacher, inner_score = trainer._teacher_logps, trainer._generate_and_score_completions

def teacher_logps(inputs, output):
    record["teacher"] = inner_teacher(inputs, output)
    return record["teacher"]

def score(inputs):
    out = inner_score(inputs)
    record.update(student=out.get("old_per_token_logps"), mask=out["completion_mask"],
                  advantages=out["advantages"], rewards=trainer._rewards_per_func.sum(dim=1))
    return out

inner_fused = trainer._fused_token_advantages

def fused(inputs, logps):  # fused student pass: the advantages appear in the loss, rows shuffled
    adv = inner_fused(inputs, logps)
    order = torch.argsort(inputs["castrl_row"])
    record.update(advantages=adv[order], student=logps.detach().float()[order])
    return adv

trainer._teacher_logps, trainer._generate_and_score_completions = teacher_logps, score
trainer._fused_token_advantages = fused
trainer.train()
torch.save(record, os.path.join({tmp!r}, f"rank{{rank}}.pt"))
# Leave without C++ teardown: gloo's threads, destroyed at interpreter shutdown (or even by an explicit
# destroy_process_group while the other rank exits), can abort a finished process ("terminate called
# without an active exception", SIGABRT, exit -6). Both ranks wait here until both records are on disk.
torch.distributed.barrier()
sys.stdout.flush(); sys.stderr.flush()
os._exit(0)
"""


def _pad_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])


@pytest.mark.parametrize("estimator, fuse", [("cast", True), ("cast", False), ("grpo", True)])
def test_group_straddling_two_processes_is_one_group(tmp_path, estimator, fuse):
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT.format(repo=REPO, tmp=str(tmp_path), estimator=estimator,
                                                         fuse=fuse)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(r["advantages"].shape[0] == 2 for r in ranks)  # 2 rows per process, 4 per group
    assert torch.equal(ranks[0]["rewards"], ranks[1]["rewards"])  # the global reward vector
    rewards = ranks[0]["rewards"].float()
    mask = _pad_cat([r["mask"].float() for r in ranks])
    student = _pad_cat([r["student"] if r["student"] is not None else torch.zeros_like(r["mask"], dtype=torch.float)
                        for r in ranks])
    teacher = _pad_cat([r["teacher"] for r in ranks]) if estimator == "cast" else None
    got = _pad_cat([r["advantages"] for r in ranks])

    config = CASTTrainerConfig(output_dir=str(tmp_path / "cfg"), use_cpu=True, teacher_weights="ema",
                        advantage_estimator=estimator).estimator_config()
    one_group, _ = compute_advantages(estimator, rewards, torch.zeros(4, dtype=torch.long), student, teacher, mask,
                                      config)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, one_group * mask)

    halves, _ = compute_advantages(estimator, rewards, torch.tensor([0, 0, 1, 1]), student, teacher, mask, config)
    if rewards.min() != rewards.max():  # a mixed group: its halves have other statistics
        assert not torch.allclose(got, halves * mask), "per-process scoring would have given the same answer"
