"""`castrl bench smollm2`: every method on the bundled SmolLM2-135M-Instruct with LoRA, on CPU or a visible GPU (tier v2).

Every teacher is the paper's (the model reads instructions): the context the paper pairs each estimator
with and a policy snapshot refreshed every 10 steps; the grid is the paper's methods and CAST ablations
(Tables 4, 7, 8), all with the same settings. Rollouts use spec §4's sampling and truncation masking
(the trainer's defaults; no cell overrides them). Each cell ends with a final evaluation
(`castrl.bench.common.final_eval`: Avg@4, Pass@4, maj@4, greedy, budget sweep); the base model's is one shared cell.

    castrl bench smollm2 [--methods all] [--seeds N] [--cells_dir bench/cells] [--quick]
    castrl bench smollm2 --methods grpo --seeds 1 --learning_rate 1e-4 --steps 10   # a tuning run
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from castrl.bench.common.cells import Cell, load_cell, save_cell
from castrl.bench.common.diagnosis import run_diagnosis
from castrl.bench.common.final_eval import FinalEvalSettings, eval_arguments, evaluate_final
from castrl.bench.common.smol import (
    DIAGNOSIS,
    SETTINGS,
    TIER_NAME,
    SmolSettings,
    held_out_records,
    training_problems,
)
from castrl.bench.common.tier import Tier, tier_main, trainer_config

METHODS = (
    "grpo", "cast",
    # CAST ablations of the paper (Table 7, and Table 4's flip directions one at a time)
    "cast@flip=false", "cast@mixed_only=true", "cast@teacher_context=with_reference",
    "cast@flip_correct=false", "cast@flip_incorrect=false",
    # the paper's baselines (Table 8)
    "rlsd", "rlrt", "grpo_opsd",
)  # fmt: skip
# Seeds per method (the issue: 3 for grpo / cast / cast without flips, >= 2 for the rest; the tier's
# default is 2). The grid runs seed-major, so seed 2 of these three comes after every method's seeds 0, 1.
METHOD_SEEDS = {"grpo": 3, "cast": 3, "cast@flip=false": 3}


QUICK = replace(SETTINGS, steps=2, eval_every=1, eval_n_per_level=2, train_n_per_level=8, max_completion_length=32,
                eval_max_new_tokens=32, final=FinalEvalSettings(n_per_level=4, max_new_tokens=64, budgets=(32, 64)))


def _verifier() -> Any:
    from castrl.rewards import Verifier

    return Verifier()


def prepare(settings: SmolSettings, cache_dir: str, scratch_dir: str, progress: bool) -> dict[str, Any]:
    """What the grid shares, each run once and cached as a cell of its own: the untrained model's
    `castrl diagnose` on the training problems (the predictions the report sets beside the outcomes),
    then its final evaluation."""
    cell = settings.diagnosis_cell()
    if load_cell(cell, cache_dir) is None:
        print(f"[bench] diagnosing the untrained model once for these settings -> {cell.path(cache_dir)}")
        n_levels = len(settings.levels)
        problems = training_problems(settings, -(-DIAGNOSIS.n_prompts // n_levels))[: DIAGNOSIS.n_prompts]
        save_cell(cell, run_diagnosis(dict(cell.config), problems, progress), cache_dir)
    return evaluate_base(settings, cache_dir, scratch_dir, progress)


def evaluate_base(settings: SmolSettings, cache_dir: str, scratch_dir: str, progress: bool) -> dict[str, Any]:
    """The base model's final evaluation: read from its cell, or run once and cached as that cell."""
    from castrl.models import load_model_and_tokenizer

    cell = settings.base_cell()
    cached = load_cell(cell, cache_dir)
    if cached is not None:
        return cached
    print(f"[bench] evaluating the base model once for these settings -> {cell.path(cache_dir)}")
    start = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(settings.model)
    args = eval_arguments(settings.final, settings.prompt_style, seed=cell.seed)
    with _verifier() as verifier:
        final = evaluate_final(model, tokenizer, held_out_records(settings, settings.final.n_per_level), args,
                               verifier)
    save_cell(cell, {"final": final, "wall_s": time.perf_counter() - start}, cache_dir)
    return load_cell(cell, cache_dir) or {}


def run_smol_cell(cell: Cell, settings: SmolSettings, scratch: Path, prepared: Any = None) -> dict[str, Any]:
    """LoRA-train the bundled model with the cell's method and seed; greedy checkpoints on a subset of the
    held-out problems during training, then the final evaluation of the trained model on all of them."""
    from castrl.bench.common.rl_cell import HeldOut, run_rl_cell
    from castrl.data import build_prompt, to_trl_dataset
    from castrl.models import LoraSettings, load_model_and_tokenizer, peft_config
    from castrl.rollouts import render_prompt

    torch.manual_seed(cell.seed)
    model, tokenizer = load_model_and_tokenizer(settings.model)
    train = training_problems(settings, settings.train_n_per_level)
    subset = held_out_records(settings, settings.eval_n_per_level)
    prompts = [render_prompt(tokenizer, build_prompt(r["problem"], settings.prompt_style)) for r in subset]
    held_out = HeldOut(prompts, [r["answer"] for r in subset], [r["level"] or "" for r in subset])
    config = trainer_config(settings, dict(cell.config["overrides"]), cell.seed, str(scratch / cell.slug()))
    lora = peft_config(LoraSettings(r=settings.lora_r, alpha=settings.lora_alpha))
    final_records = held_out_records(settings, settings.final.n_per_level)
    args = eval_arguments(settings.final, settings.prompt_style, seed=cell.seed, decoder=config.rollout_decoder)
    with _verifier() as verifier:
        result = run_rl_cell(
            model=model, tokenizer=tokenizer, config=config,
            train_dataset=to_trl_dataset(train, style=settings.prompt_style), held_out=held_out, verifier=verifier,
            eval_every=settings.eval_every, eval_max_new_tokens=settings.eval_max_new_tokens, peft_config=lora,
            final_eval=lambda trained: evaluate_final(trained, tokenizer, final_records, args, verifier),
        )  # fmt: skip
    return {**result, "base_key": settings.base_cell().key()}


def report_notes(settings: SmolSettings, cache_dir: str) -> list[str]:
    f = settings.final
    n_final = len(held_out_records(settings, f.n_per_level))
    n_subset = len(held_out_records(settings, settings.eval_n_per_level))
    return [f"Model: bundled SmolLM2-135M-Instruct with LoRA r={settings.lora_r}; data {', '.join(settings.levels)}, "
            f"{settings.prompt_style} chat prompts; micro-batches of {settings.micro_batch}"
            f"{' with gradient checkpointing' if settings.gradient_checkpointing else ''}.",
            f"Final evaluation of every cell (and once of the base model): {n_final} held-out problems, "
            f"{f.k} samples each at spec §7 sampling plus greedy, ≤ {f.max_new_tokens} new tokens, budget sweep "
            f"{', '.join(map(str, f.budgets))} from the same generations ({f.dtype}). Greedy checkpoints during "
            f"training (≤ {settings.eval_max_new_tokens} tokens): the first {settings.eval_n_per_level} of each "
            f"level ({n_subset} problems)."]


TIER = Tier(
    name=TIER_NAME, title="smollm2 tier v2: SmolLM2-135M + LoRA", about=__doc__.splitlines()[0],
    settings=SETTINGS, quick=QUICK, methods=METHODS, quick_methods=("grpo", "cast"), seeds=2,
    method_seeds=METHOD_SEEDS, quick_seeds=1, baseline="grpo", headline="cast", run_cell=run_smol_cell,
    prepare=prepare, notes=report_notes,
    base_cell=SmolSettings.base_cell, diagnosis_cell=SmolSettings.diagnosis_cell, threads=2,
)  # fmt: skip


def main(argv: list[str]) -> int:
    """`castrl bench smollm2 [flags]`: fill the missing cells of the grid."""
    return tier_main(TIER, argv)

