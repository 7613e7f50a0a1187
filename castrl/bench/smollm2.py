"""`castrl bench smollm2`: every method on the bundled SmolLM2-135M-Instruct with LoRA, on CPU.

This tier's model reads instructions, so every teacher is the paper's: the context the paper pairs
each estimator with (CAST answer-free, RLSD / GRPO+OPSD the reference answer, RLRT a successful
peer rollout) and a policy snapshot refreshed every 10 steps. The grid is the paper's methods and
CAST ablations (Tables 4, 7). Every method gets the same step budget. Sized so one cell stays under
~25 minutes on 2 busy cores (about 2 min per step of 32 rollouts x 64 tokens, plus three held-out
evaluations).

    castrl bench smollm2 [--seeds 2] [--methods all] [--cache_dir bench_cache] [--quick]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from castrl.bench.harness import Cell, RLSettings, Tier, tier_main, trainer_config

METHODS = (
    "grpo", "cast",
    # CAST ablations of the paper (Table 7, and Table 4's flip directions one at a time)
    "cast@flip=false", "cast@mixed_only=true", "cast@teacher_context=with_reference",
    "cast@flip_correct=false", "cast@flip_incorrect=false",
    # the paper's baselines (Table 8)
    "rlsd", "rlrt", "grpo_opsd",
)  # fmt: skip


@dataclass(frozen=True)
class SmolSettings(RLSettings):
    """Everything that determines a smollm2 cell besides the method and seed."""

    levels: tuple[str, ...] = ("add1", "add2", "mul21")
    prompt_style: str = "oneshot"
    micro_batch: int = 16  # training micro-batch; 64 sequences at once exceed 24 GB (env-measurements §4)
    lora_r: int = 16
    lora_alpha: int = 32

    def batch_layout(self) -> tuple[int, int]:
        """prompts x generations rollouts per optimizer step, in micro-batches of `micro_batch`."""
        rollouts = self.prompts_per_step * self.num_generations
        if rollouts % self.micro_batch:
            raise ValueError(f"prompts_per_step x num_generations = {rollouts} must be a multiple of "
                             f"micro_batch = {self.micro_batch}")
        return self.micro_batch, rollouts // self.micro_batch


SETTINGS = SmolSettings(
    steps=10, prompts_per_step=4, num_generations=8, max_completion_length=64, learning_rate=5e-5,
    train_n_per_level=48, eval_n_per_level=16, eval_every=5, eval_max_new_tokens=64,
)  # fmt: skip
QUICK = replace(SETTINGS, steps=2, eval_every=1, eval_n_per_level=4, train_n_per_level=8, max_completion_length=32,
                eval_max_new_tokens=32)


def run_smol_cell(cell: Cell, settings: SmolSettings, scratch: Path, prepared: None = None) -> dict[str, Any]:
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
                            str(scratch / cell.slug()))
    lora = peft_config(LoraSettings(r=settings.lora_r, alpha=settings.lora_alpha))
    with Verifier() as verifier:
        return run_rl_cell(model=model, tokenizer=tokenizer, config=config,
                           train_dataset=to_trl_dataset(train, style=settings.prompt_style), held_out=held_out,
                           verifier=verifier, eval_every=settings.eval_every,
                           eval_max_new_tokens=settings.eval_max_new_tokens, peft_config=lora)


def report_notes(settings: SmolSettings, cache_dir: str) -> list[str]:
    return [f"Model: bundled SmolLM2-135M-Instruct with LoRA r={settings.lora_r}; data {', '.join(settings.levels)}, "
            f"{settings.prompt_style} chat prompts."]


TIER = Tier(
    name="smollm2", title="smollm2 tier: SmolLM2-135M + LoRA (CPU)", about=__doc__.splitlines()[0],
    settings=SETTINGS, quick=QUICK, methods=METHODS, quick_methods=("grpo", "cast"), seeds=2, quick_seeds=1,
    baseline="grpo", headline="cast", run_cell=run_smol_cell, notes=report_notes, threads=2,
)  # fmt: skip


def main(argv: list[str]) -> int:
    """`castrl bench smollm2 [flags]`: fill the missing cells of the grid."""
    return tier_main(TIER, argv)
