"""`castrl bench steptime`: seconds per training step, split rollout / student / teacher / advantage /
train, for several estimators on the same model, data, seed and batch, in one process.

With the same seed and starting weights the first step of every method samples the same rollouts,
so that step is an exactly paired comparison; later steps drift as the weights do. Every method
starts from a fresh copy of the model. Prints a markdown table, the ratio to the first method, and
the command that reproduces it. Each estimator's teacher reads the context the paper pairs it with.
"""

from __future__ import annotations

import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback

from castrl.arguments import RuntimeArguments
from castrl.bench.common.arguments import BenchArguments
from castrl.bench.common.roofs import FORMULA, matmul_params, measure_roofs, phase_row
from castrl.command_line import dataclass_parser, user_input
from castrl.config_fields import adapted, with_fields_of
from castrl.core import get_estimator
from castrl.formatting import num, write_json

PARTS = ("rollout", "student", "teacher", "advantage")
ROOF_SIZES = (256, 512, 1024)  # --roofline: a few seconds, before the first method


@dataclass
@with_fields_of(BenchArguments, only=("methods", "steps", "json"), convert=adapted(
    defaults={"methods": "grpo,cast", "steps": 3}, notes={"methods": "A setting is any castrl train flag."}))
@with_fields_of(RuntimeArguments, only=("threads",), convert=adapted(defaults={"threads": 2}))
class SteptimeArguments:
    """The flags of `castrl bench steptime` itself (TRL-style underscores); every other flag is
    `castrl train`'s and applies to every method. `methods`, `steps` and `json` are the bench's vocabulary
    (`castrl.bench.common.arguments`), `threads` the shared one (`castrl.arguments`)."""

    roofline: bool = field(default=False, metadata={
        "help": "Also measure the machine's matmul roof (fp32, or bf16 with --bf16 true) and print the rollout's "
        "and the update's FLOP/s as fractions of it (castrl bench roofline's formulas)."})

    def __post_init__(self) -> None:
        if self.steps is None or self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.threads < 0:
            raise ValueError(f"--threads must be >= 0, got {self.threads}")
        if not self.method_list():
            raise ValueError("--methods is empty; pass e.g. --methods grpo,cast")

    def method_list(self) -> list[str]:
        return [m.strip() for m in (self.methods or "").split(",") if m.strip()]


def parse_args(argv: list[str]) -> tuple[SteptimeArguments, list[str]]:
    """The bench's own flags and the rest (`castrl train` flags, shared by every method).

    `--config run.yaml` is left to `castrl train`'s parser, which reads it with the types of its fields."""
    first_paragraph = " ".join(__doc__.split("\n\n")[0].split())
    parser = dataclass_parser([SteptimeArguments], prog="castrl bench steptime",
                              description=first_paragraph + " Any other flag (--config included) is "
                              "castrl train's and applies to every method.")
    args, train_flags = parser.parse_args_into_dataclasses(args=list(argv), return_remaining_strings=True)
    return args, list(train_flags)


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


def prepare_method(method: str, steps: int, train_flags: Sequence[str], output_dir: str):
    """(run arguments, trainer config, training records, model path) of one method; ValueError (or
    TypeError, FileNotFoundError) on a bad method, flag, data file or model path."""
    from castrl.data import load_problems
    from castrl.models import resolve_model
    from castrl.trl.run import parse_args as parse_train_args

    flags = [*train_flags, *method_flags(method, train_flags), "--max_steps", str(steps), "--output_dir", output_dir,
             "--save_strategy", "no", "--skip_eval", "true"]
    run, config = parse_train_args(flags)
    records = load_problems(run.data, split="train", **({"n_per_level": run.n_per_level} if run.n_per_level else {}))
    return run, config, records, resolve_model(run.model, run.cache_dir)


def _measure(run, config, records, model_path: str) -> list[dict[str, float]]:
    from castrl.models import load_checked
    from castrl.rewards import Verifier
    from castrl.trl.run import make_trainer

    with user_input():  # a model that cannot load (no weights in the folder) is the user's to fix
        model, tokenizer = load_checked(model_path, dtype=run.dtype)
    params = matmul_params(model)
    with Verifier(timeout_s=run.verifier_timeout_s, num_workers=run.verifier_workers) as verifier:
        trainer = make_trainer(run, config, model, tokenizer, verifier, records)
        cpu = _CPUSeconds()
        trainer.add_callback(cpu)
        trainer.train()
    rows = []
    seen_tokens = 0
    mode = "lora" if hasattr(trainer.model, "peft_config") else "full"
    for log in trainer.state.log_history:
        if "step_time" not in log:
            continue
        # what the roof fractions count: sampled completion tokens, and every prompt + completion token trained on
        rollout_tokens = config.generation_batch_size * log.get("completions/mean_length", float("nan"))
        train_tokens, seen_tokens = log.get("num_tokens", float("nan")) - seen_tokens, log.get("num_tokens", float("nan"))
        meta = {"params": params, "train_mode": mode, "precision": "bf16" if config.bf16 else "fp32",
                "rollout_tokens": rollout_tokens, "train_tokens": train_tokens}
        row = {"step": log["step"], "total": log["step_time"], "cpu": cpu.per_step.get(log["step"], float("nan"))}
        for part in PARTS:
            row[part] = log.get(f"cast/time_{part}_s", 0.0)
        row["train"] = row["total"] - sum(row[p] for p in PARTS)
        row["mean_length"] = log.get("completions/mean_length", float("nan"))
        rows.append({**row, **meta})
    return rows


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _table(results: dict[str, list[dict[str, float]]]) -> str:
    first = next(iter(results))
    base = results[first]
    lines = ["| method | step | total s | rollout | student | teacher | advantage | train | CPU s | mean length | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, rows in results.items():
        for row, base_row in zip(rows, base, strict=True):
            cells = [num(row[k], 1) for k in ("total", *PARTS, "train", "cpu", "mean_length")]
            lines.append(f"| {method} | {row['step']} | " + " | ".join(cells)
                         + f" | {num(_ratio(row['total'], base_row['total']), 2)} |")
    lines.append("")
    ref, cpu_ref = (statistics.fmean(r[k] for r in base) for k in ("total", "cpu"))
    for method, rows in results.items():
        mean, cpu = (statistics.fmean(r[k] for r in rows) for k in ("total", "cpu"))
        lines.append(f"{method}: mean step {num(mean, 1)} s, ratio to {first} {num(_ratio(mean, ref), 2)}; "
                     f"CPU {num(cpu, 1)} s/step, ratio {num(_ratio(cpu, cpu_ref), 2)}")
    return "\n".join(lines)


def _roof_table(results: dict[str, list[dict[str, float]]], roofs: dict[str, dict]) -> str:
    """Rollout (2·P per sampled token) and update (LoRA ~4·P, full 6·P per prompt + completion token) as
    fractions of the matching matmul roof (`castrl.bench.common.roofs.phase_row`), per step."""
    lines = ["| method | step | precision | rollout tokens/s | rollout roof fraction | train tokens/s | train roof fraction |",
             "|---|---|---|---|---|---|---|"]
    for method, rows in results.items():
        for row in rows:
            rollout = phase_row("rollout", row["precision"], "forward", row["rollout_tokens"], row["rollout"],
                                row["params"], roofs)
            update = phase_row("train", row["precision"], row["train_mode"], row["train_tokens"], row["train"],
                               row["params"], roofs)
            row["rollout_roof_fraction"], row["train_roof_fraction"] = rollout["roof_fraction"], update["roof_fraction"]
            lines.append(f"| {method} | {row['step']} | {row['precision']} | {num(rollout['tokens_per_s'], 1)} | "
                         f"{num(rollout['roof_fraction'], 3)} | {num(update['tokens_per_s'], 1)} | "
                         f"{num(update['roof_fraction'], 3)} |")
    roof_text = ", ".join(f"{p} {num(r['flops_per_s'] / 1e9, 1)} GFLOP/s" for p, r in roofs.items())
    return "\n".join([*lines, "", f"matmul roof: {roof_text}; train FLOPs {FORMULA['lora']} (LoRA) or "
                      f"{FORMULA['full']} (full) a token, recompute not counted"])


def main(argv: list[str]) -> int:
    """`castrl bench steptime [flags] [castrl train flags]`: measure every method, print the table.

    Every method's flags and data are checked before any model loads; input mistakes raise
    `UserInputError` (`castrl.cli` prints one line and exits 2)."""
    with tempfile.TemporaryDirectory() as out:
        with user_input():
            args, train_flags = parse_args(argv)
            methods = args.method_list()
            for method in methods:  # every method's name and settings first: cheap, nothing loaded yet
                method_flags(method, train_flags)
            prepared = {method: prepare_method(method, args.steps, train_flags, f"{out}/{i}")
                        for i, method in enumerate(methods)}
        if args.threads:
            torch.set_num_threads(args.threads)
        roofs = None
        if args.roofline:  # measured once, before any method, on the device the trainer uses
            configs = [setup[1] for setup in prepared.values()]
            device = torch.device("cpu" if configs[0].use_cpu or not torch.cuda.is_available() else "cuda")
            precisions = sorted({"bf16" if c.bf16 else "fp32" for c in configs})  # a method may set --bf16 itself
            roofs = measure_roofs(device, ROOF_SIZES, repeats=3, precisions=precisions, max_seconds=10.0)
        results = {}
        for method, setup in prepared.items():
            start = time.perf_counter()
            results[method] = _measure(*setup)
            print(f"[bench steptime] {method}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print(_table(results))
    if roofs is not None:
        print("\n" + _roof_table(results, roofs))
    print(f"\nreproduce: castrl bench steptime {shlex.join(argv)}  (torch threads {torch.get_num_threads()})")
    if args.json:
        write_json(args.json, {"argv": argv, "results": results, "roofs": roofs}, indent=2)
    return 0
