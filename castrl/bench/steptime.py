"""`castrl bench steptime`: seconds per training step, split rollout / student / teacher / advantage /
train, for several estimators on the same model, data, seed and batch, in one process.

With the same seed and starting weights the first step of every method samples the same rollouts,
so that step is an exactly paired comparison; later steps drift as the weights do. Every method
starts from a fresh copy of the model. Prints a markdown table, the ratio to the first method, and
the command that reproduces it. Each estimator's teacher reads the context the paper pairs it with.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

import torch
from transformers import TrainerCallback

from castrl.core import get_estimator

PARTS = ("rollout", "student", "teacher", "advantage")


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="castrl bench steptime", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--methods", default="grpo,cast",
        help="Comma-separated advantage estimators, each optionally with train flags as name@flag=value[@...], "
        "e.g. cast@fuse_student_pass=false.",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=3, help="Optimizer steps per method.")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    parser.add_argument("--json", default=None, help="Also write the measurements to this JSON file.")
    args, train_flags = parser.parse_known_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    return args, train_flags


def method_flags(method: str, train_flags: Sequence[str] = ()) -> list[str]:
    """`cast@fuse_student_pass=false` -> ["--advantage_estimator", "cast", "--teacher_context", "answer_free",
    "--fuse_student_pass", "false"]. An estimator with a teacher reads the context the paper pairs it with
    (the registry's `paper_teacher_context`) unless the method or the shared `train_flags` set one."""
    name, *settings = method.split("@")
    flags = ["--advantage_estimator", name]
    keys = []
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise ValueError(f"bad setting {setting!r} in method {method!r}: expected flag=value")
        flags += [f"--{key}", value]
        keys.append(key)
    context = get_estimator(name).paper_teacher_context
    shared = any(f == "--teacher_context" or f.startswith("--teacher_context=") for f in train_flags)
    if context and "teacher_context" not in keys and not shared:
        flags[2:2] = ["--teacher_context", context]
    return flags


class _CPUSeconds(TrainerCallback):
    """CPU seconds of this process per optimizer step (all its threads). Time slices given to other
    jobs on the same cores do not count, so on a busy machine it is steadier than wall time (cache and
    memory-bandwidth contention still show)."""

    def __init__(self) -> None:
        self.per_step: dict[int, float] = {}
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self.per_step[state.global_step] = time.process_time() - self._start


def _measure(method: str, steps: int, train_flags: list[str]) -> list[dict[str, float]]:
    from castrl.data import load_problems
    from castrl.models import load_model_and_tokenizer
    from castrl.rewards import Verifier
    from castrl.train import make_trainer, parse_args

    with tempfile.TemporaryDirectory() as out:
        flags = [*train_flags, *method_flags(method, train_flags), "--max_steps", str(steps), "--output_dir", out,
                 "--save_strategy", "no", "--skip_eval", "true"]
        run, config = parse_args(flags)
        records = load_problems(run.data, split="train", **({"n_per_level": run.n_per_level} if run.n_per_level else {}))
        model, tokenizer = load_model_and_tokenizer(run.model, dtype=run.dtype, cache_dir=run.cache_dir)
        with Verifier(timeout_s=run.verifier_timeout_s, num_workers=run.verifier_workers) as verifier:
            trainer = make_trainer(run, config, model, tokenizer, verifier, records)
            cpu = _CPUSeconds()
            trainer.add_callback(cpu)
            trainer.train()
    rows = []
    for log in trainer.state.log_history:
        if "step_time" not in log:
            continue
        row = {"step": log["step"], "total": log["step_time"], "cpu": cpu.per_step.get(log["step"], float("nan"))}
        for part in PARTS:
            row[part] = log.get(f"cast/time_{part}_s", 0.0)
        row["train"] = row["total"] - sum(row[p] for p in PARTS)
        row["mean_length"] = log.get("completions/mean_length", float("nan"))
        rows.append(row)
    return rows


def _table(results: dict[str, list[dict[str, float]]]) -> str:
    first = next(iter(results))
    base = results[first]
    lines = ["| method | step | total s | rollout | student | teacher | advantage | train | CPU s | mean length | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, rows in results.items():
        for row, base_row in zip(rows, base, strict=True):
            cells = [f"{row[k]:.1f}" for k in ("total", *PARTS, "train", "cpu")]
            lines.append(f"| {method} | {row['step']} | " + " | ".join(cells)
                         + f" | {row['mean_length']:.1f} | {row['total'] / base_row['total']:.2f} |")
    lines.append("")
    ref, cpu_ref = (statistics.fmean(r[k] for r in base) for k in ("total", "cpu"))
    for method, rows in results.items():
        mean, cpu = (statistics.fmean(r[k] for r in rows) for k in ("total", "cpu"))
        lines.append(f"{method}: mean step {mean:.1f} s, ratio to {first} {mean / ref:.2f}; "
                     f"CPU {cpu:.1f} s/step, ratio {cpu / cpu_ref:.2f}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args, train_flags = _parse(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for method in args.methods.split(","):
        start = time.perf_counter()
        results[method] = _measure(method, args.steps, train_flags)
        print(f"[bench steptime] {method}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print(_table(results))
    print(f"\nreproduce: castrl bench steptime {shlex.join(argv)}  (torch threads {torch.get_num_threads()})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": argv, "results": results}, f, indent=2)
    return 0
