"""The smollm2 tier's settings and problems: the bundled SmolLM2-135M-Instruct with LoRA on the arithmetic
suite (`SmolSettings`, `SETTINGS`), its RL training problems and held-out problems, and the cells it shares
by every method (the base model's final evaluation, the diagnosis before training).

Shared by the `smollm2` tier and the `placement` suite, which diagnoses the same model on the same problems
at the same budget; the suite imports no tier.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .cells import Cell
from .diagnosis import DiagnosisSettings, diagnosis_cell, diagnosis_config
from .final_eval import FinalEvalSettings, base_cell
from .rl_cell import arithmetic_records
from .tier import RLSettings


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


def held_out_records(settings: SmolSettings, n_per_level: int) -> list[dict[str, Any]]:
    """The first `n_per_level` test problems of each level (the checkpoints' subset is a prefix of each)."""
    return arithmetic_records("test", settings.levels, n_per_level, settings.final.data_seed)


def training_problems(settings: SmolSettings, n_per_level: int) -> list[dict[str, Any]]:
    """The first `n_per_level` RL training problems of each level (a prefix of the grid's training set)."""
    return arithmetic_records("train", settings.levels, n_per_level, settings.train_seed)
