"""`castrl bench tiny`: every method on a ~1M-parameter Llama trained from scratch, on 2 CPU cores.

The model follows no instructions, so its teacher differs from the student by *weights* only: CAST
here uses the student's own prompt (`teacher_context="student"`) with an EMA teacher, and the teacher
variants swap the weights (frozen SFT model, a copy lagging 5 steps). The answer-aware teacher
(rlsd, rlrt, cast_with_answer) reads `ANSWER_TEMPLATE`, a prompt the SFT taught the model to use.
Prompts are plain strings ("Q: What is 12 + 7?\\nA:"), the same for SFT, RL and evaluation.
Sized so the main grid (10 methods x 5 seeds) fits in about an hour on 2 quiet cores; the three
knob-study methods (`cast@lam=0`, `cast@lam=0.5`, `cast@flip_threshold=zero`) add about 20 minutes.

    castrl bench tiny [--seeds 5] [--methods all] [--cache-dir bench_cache] [--quick]
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
from castrl.bench.tiny_sft import (
    ANSWER_TEMPLATE,
    SFTSettings,
    held_out_of,
    prompt_text,
    records,
    sft_checkpoint,
    sft_info,
)

TIER = "tiny"
TEACHERS = TeacherDefaults(
    cast_context="student",
    cast_weights="ema",
    answer_context=ANSWER_TEMPLATE,
    weight_variants={"frozen": "frozen", "lagged5": "lagged:5"},
    # Knob study (issue: which knob moves CAST vs GRPO): no token shaping, half shaping, flip every
    # disagreeing token. Teacher weights/context and flip on/off are covered by the variants above.
    knobs=("cast@lam=0", "cast@lam=0.5", "cast@flip_threshold=zero"),
)


@dataclass(frozen=True)
class TinySettings:
    """RL and evaluation settings of the tier; with the SFT settings, they are the cells' config."""

    sft: SFTSettings = SFTSettings()
    steps: int = 80
    prompts_per_step: int = 8
    num_generations: int = 8
    max_completion_length: int = 32
    learning_rate: float = 2e-4
    # EMA decay sized to the run: 0.95 has a half-life of ~14 steps in an 80-step run (0.99 would
    # leave the teacher almost equal to the frozen SFT model, duplicating `cast_frozen`).
    teacher_ema_decay: float = 0.95
    train_n_per_level: int = 48
    train_seed: int = 0
    eval_n_per_level: int = 96  # add1 has only 16 test problems; 208 held-out problems in all
    eval_every: int = 10
    eval_max_new_tokens: int = 32


QUICK = TinySettings(
    sft=SFTSettings(max_steps=200, eval_every=100, n_per_level=200),
    steps=6, prompts_per_step=4, eval_every=3, train_n_per_level=16, eval_n_per_level=16,
)
QUICK_METHODS = "grpo,cast"
QUICK_SEEDS = 2


def cell_config(settings: TinySettings, method: str) -> dict[str, Any]:
    """The JSON config of one cell: all tier settings plus the method's CASTConfig overrides."""
    return {"settings": asdict(settings), "overrides": method_overrides(method, TEACHERS)}


def trainer_config(settings: TinySettings, overrides: dict[str, Any], seed: int, output_dir: str):
    """CASTConfig of one cell: one generation per step (prompts x generations rollouts), no checkpoints."""
    from castrl.trl import CASTConfig

    batch = settings.prompts_per_step * settings.num_generations
    return CASTConfig(
        output_dir=output_dir, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        max_steps=settings.steps, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        num_generations=settings.num_generations, max_completion_length=settings.max_completion_length,
        learning_rate=settings.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
        logging_steps=1, gradient_checkpointing=False, seed=seed, data_seed=seed,
        teacher_ema_decay=settings.teacher_ema_decay, disable_tqdm=True, **CELL_CODE_PATHS, **overrides,
    )


def run_tiny_cell(cell: Cell, sft_dir: Path, settings: TinySettings, scratch: Path) -> dict[str, Any]:
    """Load the SFT checkpoint, RL-train it with the cell's method and seed, return the measured result."""
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM

    from castrl.bench.rl_cell import run_rl_cell
    from castrl.rewards import Verifier

    torch.manual_seed(cell.seed)
    model = LlamaForCausalLM.from_pretrained(sft_dir)
    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    train = records("train", settings.sft.levels, settings.train_n_per_level, settings.train_seed)
    dataset = Dataset.from_list([{"prompt": prompt_text(r["problem"]), "problem": r["problem"],
                                  "answer": r["answer"], "level": r["level"]} for r in train])
    held_out = held_out_of(records("test", settings.sft.levels, settings.eval_n_per_level, 0))
    config = trainer_config(settings, dict(cell.config["overrides"]), cell.seed,
                            str(scratch / f"{cell.method}-s{cell.seed}"))
    with Verifier(use_pool=False) as verifier:  # integer answers: no sympy stall risk, no worker IPC
        return run_rl_cell(model=model, tokenizer=tokenizer, config=config, train_dataset=dataset,
                           held_out=held_out, verifier=verifier, eval_every=settings.eval_every,
                           eval_max_new_tokens=settings.eval_max_new_tokens)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="castrl bench tiny", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1, shared by every method (paired)")
    p.add_argument("--methods", default=None, help="comma-separated subset (default: the full grid)")
    p.add_argument("--steps", type=int, default=None, help="RL steps per cell (default: the tier's)")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help="cell and SFT cache folder")
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_METHODS}, {QUICK_SEEDS} seeds, "
                   f"{QUICK.steps} steps, a short SFT (minutes)")
    # 1 thread: for a ~1M-parameter model, 2 OpenMP threads on 2 shared cores were 15-40x slower per step
    # (thread sync dominates tiny matmuls, and a busy machine makes the spin-waits collide).
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for this model)")
    p.add_argument("--time-budget", type=float, default=None, help="seconds; start no new cell after it")
    p.add_argument("--list", action="store_true", help="print the cells and whether each is cached, then exit")
    p.add_argument("--no-progress", action="store_true")
    return p


def settings_from_args(args: argparse.Namespace) -> tuple[TinySettings, tuple[str, ...], list[int]]:
    """(settings, methods, seeds) of an invocation; --quick changes the defaults, flags still win."""
    settings = QUICK if args.quick else TinySettings()
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        settings = replace(settings, steps=args.steps)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    seeds = QUICK_SEEDS if args.quick and args.seeds == 5 else args.seeds
    methods = parse_methods(args.methods or (QUICK_METHODS if args.quick else None), TEACHERS)
    return settings, methods, list(range(seeds))


def main(argv: list[str]) -> int:
    """`castrl bench tiny [flags]`: fill the missing cells of the grid; prints what ran and what is left."""
    warnings.filterwarnings("ignore", message=".*is deprecated and will be removed in v6", category=FutureWarning)
    args = _parser().parse_args(argv)
    settings, methods, seeds = settings_from_args(args)
    torch.set_num_threads(args.threads)
    cells = make_cells(TIER, methods, seeds, lambda m, s: cell_config(settings, m))
    if args.list:  # before the SFT: listing must not train anything
        return grid_cli(TIER, cells, dict, args.cache_dir, list_only=True, progress=False, time_budget_s=None)
    sft_dir = sft_checkpoint(settings.sft, args.cache_dir, settings.train_seed, progress=not args.no_progress)
    info = sft_info(sft_dir)
    print(f"[bench] tiny SFT model: {info['params']:,} params, {info['steps']} steps, monitor accuracy "
          f"{info['history'][-1]['monitor_accuracy']:.3f}")
    scratch = Path(args.cache_dir) / TIER / "scratch"
    return grid_cli(TIER, cells, lambda c: run_tiny_cell(c, sft_dir, settings, scratch), args.cache_dir,
                    list_only=False, progress=not args.no_progress, time_budget_s=args.time_budget)
