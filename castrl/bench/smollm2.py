"""`castrl bench smollm2`: every method on the bundled SmolLM2-135M-Instruct with LoRA, on CPU.

This tier's model reads instructions, so CAST's teacher differs by *context*: the answer-free
`self_teach` prompt with the policy weights (the spec's defaults); rlsd / rlrt / cast_with_answer
read `with_answer`, and the weight variants keep self_teach with EMA or frozen (adapter off) weights.
Every method gets the same step budget. Sized so one cell stays under ~25 minutes on 2 busy cores
(about 2 min per step of 32 rollouts x 64 tokens, plus three held-out evaluations).

    castrl bench smollm2 [--seeds 2] [--methods all] [--cache-dir bench_cache] [--quick]
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from castrl.bench.harness import (
    CELL_CODE_PATHS,
    DEFAULT_CACHE_DIR,
    Cell,
    TeacherDefaults,
    grid_cli,
    make_cells,
    method_overrides,
    parse_methods,
)

TIER = "smollm2"
TEACHERS = TeacherDefaults(
    cast_context="self_teach",
    cast_weights="policy",
    answer_context="with_answer",
    weight_variants={"ema": "ema", "frozen": "frozen"},
    # Knob study of CAST's parts on this model: less all-wrong push-down, base advantages only (no
    # token signal), the student's own prompt with EMA / frozen (adapter off) weights as teacher, and
    # one flip direction at a time (a tau of 20 is beyond the gap clamp, so that side never flips:
    # tau_neg=20 keeps only F+ in correct rollouts, tau_pos=20 only F- in wrong ones).
    # cast_mixed_only and cast_noflip (above) remove the zero-variance base term and the flips.
    knobs=("cast@b_wrong=0.25", "cast@flip=false@lam=0", "cast@teacher_context=student@teacher_weights=ema",
           "cast@teacher_context=student@teacher_weights=frozen", "cast@tau_neg=20", "cast@tau_pos=20"),
)


@dataclass(frozen=True)
class SmolSettings:
    """Everything that determines a smollm2 cell besides the method and seed."""

    levels: tuple[str, ...] = ("add1", "add2", "mul21")
    prompt_style: str = "oneshot"
    steps: int = 10
    prompts_per_step: int = 4
    num_generations: int = 8
    micro_batch: int = 16  # training micro-batch; 64 sequences at once exceed 24 GB (env-measurements §4)
    max_completion_length: int = 64
    learning_rate: float = 5e-5
    lora_r: int = 16
    lora_alpha: int = 32
    train_n_per_level: int = 48
    train_seed: int = 0
    eval_n_per_level: int = 16
    eval_every: int = 5
    eval_max_new_tokens: int = 64


QUICK = SmolSettings(steps=2, eval_every=1, eval_n_per_level=4, train_n_per_level=8, max_completion_length=32,
                     eval_max_new_tokens=32)
QUICK_METHODS = "grpo,cast"


def cell_config(settings: SmolSettings, method: str) -> dict[str, Any]:
    return {"settings": asdict(settings), "overrides": method_overrides(method, TEACHERS)}


def trainer_config(settings: SmolSettings, overrides: dict[str, Any], seed: int, output_dir: str):
    """One generation of prompts x generations rollouts per optimizer step, in micro-batches."""
    from castrl.trl import CASTConfig

    rollouts = settings.prompts_per_step * settings.num_generations
    if rollouts % settings.micro_batch:
        raise ValueError(f"prompts_per_step x num_generations = {rollouts} must be a multiple of "
                         f"micro_batch = {settings.micro_batch}")
    return CASTConfig(
        output_dir=output_dir, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        max_steps=settings.steps, per_device_train_batch_size=settings.micro_batch,
        gradient_accumulation_steps=rollouts // settings.micro_batch, num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length, learning_rate=settings.learning_rate,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, gradient_checkpointing=False,
        seed=seed, data_seed=seed, disable_tqdm=True, **CELL_CODE_PATHS, **overrides,
    )


def run_smol_cell(cell: Cell, settings: SmolSettings, scratch: Path) -> dict[str, Any]:
    """LoRA-train the bundled model with the cell's method and seed; held-out evals at fixed steps."""
    from castrl.bench.rl_cell import HeldOut, run_rl_cell
    from castrl.data import build_prompt, make_arithmetic, to_trl_dataset
    from castrl.models import LoraSettings, load_model_and_tokenizer, peft_config
    from castrl.rewards import Verifier

    torch.manual_seed(cell.seed)
    model, tokenizer = load_model_and_tokenizer("smollm2-135m")
    train = make_arithmetic("train", settings.levels, n_per_level=settings.train_n_per_level,
                            seed=settings.train_seed)
    test = make_arithmetic("test", settings.levels, n_per_level=settings.eval_n_per_level, seed=0)
    prompts = [tokenizer.apply_chat_template(build_prompt(r["problem"], settings.prompt_style), tokenize=False,
                                             add_generation_prompt=True) for r in test]
    held_out = HeldOut(prompts, [r["answer"] for r in test], [r["level"] or "" for r in test])
    config = trainer_config(settings, dict(cell.config["overrides"]), cell.seed,
                            str(scratch / f"{cell.method}-s{cell.seed}"))
    lora = peft_config(LoraSettings(r=settings.lora_r, alpha=settings.lora_alpha))
    with Verifier() as verifier:
        return run_rl_cell(model=model, tokenizer=tokenizer, config=config,
                           train_dataset=to_trl_dataset(train, style=settings.prompt_style), held_out=held_out,
                           verifier=verifier, eval_every=settings.eval_every,
                           eval_max_new_tokens=settings.eval_max_new_tokens, peft_config=lora)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="castrl bench smollm2", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1, shared by every method (paired)")
    p.add_argument("--methods", default=None, help="comma-separated subset (default: the full grid)")
    p.add_argument("--steps", type=int, default=None, help="RL steps per cell (default: the tier's)")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_METHODS}, 1 seed, {QUICK.steps} steps")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--time-budget", type=float, default=None, help="seconds; start no new cell after it")
    p.add_argument("--list", action="store_true", help="print the cells and whether each is cached, then exit")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str]) -> int:
    """`castrl bench smollm2 [flags]`: fill the missing cells of the grid."""
    warnings.filterwarnings("ignore", message=".*is deprecated and will be removed in v6", category=FutureWarning)
    args = _parser().parse_args(argv)
    settings = QUICK if args.quick else SmolSettings()
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        settings = replace(settings, steps=args.steps)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    seeds = list(range(1 if args.quick and args.seeds == 2 else args.seeds))
    methods = parse_methods(args.methods or (QUICK_METHODS if args.quick else None), TEACHERS)
    torch.set_num_threads(args.threads)
    cells = make_cells(TIER, methods, seeds, lambda m, s: cell_config(settings, m))
    scratch = Path(args.cache_dir) / TIER / "scratch"
    return grid_cli(TIER, cells, lambda c: run_smol_cell(c, settings, scratch), args.cache_dir,
                    list_only=args.list, progress=not args.no_progress, time_budget_s=args.time_budget)
