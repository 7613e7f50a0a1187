"""Crash and resume: SIGKILL `castrl train` at a random point, resume, and land on exactly the
weights and metrics of an uninterrupted run (CPU, fixed seed, constant learning rate)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from castrl.run_logging import read_metrics
from castrl.testing import save_tiny_model

TIMING_KEYS = ("time", "runtime", "per_second", "step_time")


def _cmd(model_dir: str, out: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "castrl", "train", "--model", model_dir, "--output_dir", out,
        "--data", "arithmetic:add1", "--n_per_level", "8", "--skip_eval", "true", "--lora", "off",
        "--max_steps", "4", "--save_steps", "1", "--save_total_limit", "2", "--lr_scheduler_type", "constant",
        "--learning_rate", "0.01", "--max_completion_length", "6", "--per_device_train_batch_size", "8",
        "--gradient_accumulation_steps", "1", "--num_generations", "4", "--teacher_weights", "ema",
        "--teacher_context", "student", "--verifier_workers", "1", "--threads", "1", "--seed", "0", *extra,
    ]


def _run(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - start


def _final_weights(out: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(out, "final", "model.safetensors"))


def _per_step(out: str) -> dict[int, dict]:
    """Last logged record of each step, without wall-clock quantities (a resumed step is re-logged)."""
    steps = {}
    for record in read_metrics(out):
        if "loss" in record:
            steps[record["step"]] = {k: v for k, v in record.items() if not any(t in k for t in TIMING_KEYS)}
    return steps


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    model_dir = str(save_tiny_model(tmp_path / "tiny"))
    reference = str(tmp_path / "reference")
    duration = _run(_cmd(model_dir, reference))

    crashed = str(tmp_path / "crashed")
    proc = subprocess.Popen(_cmd(model_dir, crashed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    time.sleep(random.Random().uniform(0.3 * duration, 0.9 * duration))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _run(_cmd(model_dir, crashed, "--resume", "true"))

    expected, got = _final_weights(reference), _final_weights(crashed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert _per_step(reference) == _per_step(crashed)
