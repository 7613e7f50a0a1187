"""`castrl bench smollm2`: every method on the bundled SmolLM2-135M-Instruct with LoRA, on CPU or a visible GPU (tier v2).

Every teacher is the paper's (the model reads instructions): the context the paper pairs each estimator
with and a policy snapshot refreshed every 10 steps; the grid is the paper's methods and CAST ablations
(Tables 4, 7, 8), all with the same settings. Rollouts use spec §4's sampling and truncation masking
(the trainer's defaults; no cell overrides them). Each cell ends with a final evaluation
(`castrl.bench.final_eval`: Avg@4, Pass@4, maj@4, greedy, budget sweep); the base model's is one shared cell.

    castrl bench smollm2 [--methods all] [--seeds N] [--cache_dir bench/cells] [--quick]
    castrl bench smollm2 --methods grpo --seeds 1 --learning_rate 1e-4 --steps 10   # a tuning run
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from castrl.bench.diagnosis import DiagnosisSettings, diagnosis_cell, diagnosis_config, run_diagnosis
from castrl.bench.final_eval import FinalEvalSettings, base_cell, eval_arguments, evaluate_final
from castrl.bench.harness import Cell, RLSettings, Tier, load_cell, save_cell, tier_main, trainer_config
from castrl.bench.report_paper import paper_sections

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


@dataclass(frozen=True)
class SmolSettings(RLSettings):
    """Everything that determines a smollm2 cell besides the method and seed."""

    model: str = "smollm2-135m"
    levels: tuple[str, ...] = ("add1", "add2", "mul21")
    prompt_style: str = "oneshot"
    # 32 rollouts per step in micro-batches of 8 with gradient checkpointing: peak RSS 4.6 GB instead of
    # 11.8 GB (micro-batches of 16 without), same step time (castrl train's demo, 2 CPU cores)
    micro_batch: int = 8
    gradient_checkpointing: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    final: FinalEvalSettings = field(default_factory=FinalEvalSettings)

    def batch_layout(self) -> tuple[int, int]:
        """prompts x generations rollouts per optimizer step, in micro-batches of `micro_batch`."""
        rollouts = self.prompts_per_step * self.num_generations
        if rollouts % self.micro_batch:
            raise ValueError(f"prompts_per_step x num_generations = {rollouts} must be a multiple of "
                             f"micro_batch = {self.micro_batch}")
        return self.micro_batch, rollouts // self.micro_batch

    def trainer_kwargs(self) -> dict[str, Any]:
        return {"gradient_checkpointing": self.gradient_checkpointing}

    def code_paths(self) -> dict[str, Any]:
        """The trainer's defaults (fused student pass, shared prompt KV cache): CAST's step 1.06x GRPO's
        instead of 1.39x with separate passes at this tier's budget (docs/steptime.md), same advantages."""
        return {}

    def base_cell(self) -> Cell:
        """The untrained model's final-evaluation cell of these settings."""
        return base_cell(TIER_NAME, self.model, self.levels, self.prompt_style, self.final)

    def diagnosis_cell(self) -> Cell:
        """The untrained model's `castrl diagnose` cell: the training problems, group size and budget."""
        return diagnosis_cell(TIER_NAME, diagnosis_config(self.model, self.levels, self.prompt_style,
                                                          self.num_generations, self.max_completion_length, DIAGNOSIS))


TIER_NAME = "smollm2"
# The diagnosis before training: every teacher context the grid trains with, on the first training problems
# (kept out of SmolSettings so adding it did not re-key the cells).
DIAGNOSIS = DiagnosisSettings()
# Training budget 128 tokens: ~4x the base model's mean sampled completion (32.9 tokens, p95 84, 1 % over
# 128: `castrl eval`, 24 test problems x 4 samples at spec §7 sampling, 256-token cap); the final
# evaluation's 256 is 2x that. Steps: the 30-minute cell budget on 2 cores. Measured (2026-11-29): a step
# takes ~80 s (grpo) / ~100 s (cast, the trainer's default code paths); a greedy checkpoint 15 s; the final
# evaluation 456 s (a 2-step grpo model) to 988 s (the base model, longer completions) in float32; so 10
# steps keep a cast cell under ~30 min. lr 2e-4 and 10 steps, chosen on GRPO alone (the report's "Tuning
# runs"): GRPO seed 0 reached Avg@4 0.408 against the base model's 0.277 (bf16 evaluation, 192 problems);
# that tuning cell is the grid's grpo seed 0.
SETTINGS = SmolSettings(
    steps=10, prompts_per_step=4, num_generations=8, max_completion_length=128, learning_rate=2e-4,
    train_n_per_level=48, eval_n_per_level=8, eval_every=4, eval_max_new_tokens=128,
    # add1 has 16 test problems: 16 + 88 + 88 = 192 held out. bf16 evaluation: 1.5-1.6x faster than fp32 on
    # this CPU (AMX), which keeps a cast cell near 30 min; every cell and the base model use the same dtype.
    final=FinalEvalSettings(n_per_level=88, dtype="bfloat16"),
)  # fmt: skip
QUICK = replace(SETTINGS, steps=2, eval_every=1, eval_n_per_level=2, train_n_per_level=8, max_completion_length=32,
                eval_max_new_tokens=32, final=FinalEvalSettings(n_per_level=4, max_new_tokens=64, budgets=(32, 64)))


def held_out_records(settings: SmolSettings, n_per_level: int) -> list[dict[str, Any]]:
    """The first `n_per_level` test problems of each level (the checkpoints' subset is a prefix of each)."""
    from castrl.bench.rl_cell import arithmetic_records

    return arithmetic_records("test", settings.levels, n_per_level, settings.final.data_seed)


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
        problems = _training_problems(settings, -(-DIAGNOSIS.n_prompts // n_levels))[: DIAGNOSIS.n_prompts]
        save_cell(cell, run_diagnosis(dict(cell.config), problems, progress), cache_dir)
    return evaluate_base(settings, cache_dir, scratch_dir, progress)


def _training_problems(settings: SmolSettings, n_per_level: int) -> list[dict[str, Any]]:
    """The first `n_per_level` RL training problems of each level (a prefix of the grid's training set)."""
    from castrl.bench.rl_cell import arithmetic_records

    return arithmetic_records("train", settings.levels, n_per_level, settings.train_seed)


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
    from castrl.bench.rl_cell import HeldOut, run_rl_cell
    from castrl.data import build_prompt, to_trl_dataset
    from castrl.models import LoraSettings, load_model_and_tokenizer, peft_config
    from castrl.rollouts import render_prompt

    torch.manual_seed(cell.seed)
    model, tokenizer = load_model_and_tokenizer(settings.model)
    train = _training_problems(settings, settings.train_n_per_level)
    subset = held_out_records(settings, settings.eval_n_per_level)
    prompts = [render_prompt(tokenizer, build_prompt(r["problem"], settings.prompt_style)) for r in subset]
    held_out = HeldOut(prompts, [r["answer"] for r in subset], [r["level"] or "" for r in subset])
    config = trainer_config(settings, dict(cell.config["overrides"]), cell.seed, str(scratch / cell.slug()))
    lora = peft_config(LoraSettings(r=settings.lora_r, alpha=settings.lora_alpha))
    final_records = held_out_records(settings, settings.final.n_per_level)
    args = eval_arguments(settings.final, settings.prompt_style, seed=cell.seed)
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
    prepare=prepare, notes=report_notes, report_sections=lambda view, figures, md_dir: paper_sections(view),
    base_cell=SmolSettings.base_cell, diagnosis_cell=SmolSettings.diagnosis_cell, threads=2,
)  # fmt: skip


def main(argv: list[str]) -> int:
    """`castrl bench smollm2 [flags]`: fill the missing cells of the grid."""
    return tier_main(TIER, argv)

