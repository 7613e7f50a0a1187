"""A `castrl train` run in TRL: its command line (`RunArguments` + `CASTTrainerConfig`, on the demo's
defaults), its data (checked before the model loads) and its `CASTTrainer`.

A library module, not the command's: `castrl bench steptime` parses `castrl train`'s flags and builds the
same trainer for every method it times, so a timed step is exactly a `castrl train` step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from castrl.arguments import (
    DataArguments,
    ModelArguments,
    RuntimeArguments,
    VerifierArguments,
    check_prompt_style,
)
from castrl.command_line import parse_dataclasses
from castrl.config_fields import adapted, with_fields_of
from castrl.data import load_problems, to_trl_dataset
from castrl.models import LoraSettings, default_lora_for, peft_config
from castrl.rewards import Verifier, make_trl_reward

from .config import CASTTrainerConfig
from .trainer import CASTTrainer


@dataclass
@with_fields_of(RuntimeArguments, only=("threads",))
@with_fields_of(VerifierArguments)
@with_fields_of(DataArguments, only=("data", "n_per_level", "prompt_style"),
                convert=adapted(notes={"data": "The training problems (split train).",
                                       "n_per_level": "Held-out: --eval_n_per_level."}))
@with_fields_of(ModelArguments, only=("model", "dtype", "cache_dir"))
class RunArguments:
    """What to train on; the algorithm and optimisation knobs live in CASTTrainerConfig (`--output_dir`,
    `--seed` and the rollout sampling are TRL's fields there). `model`, `dtype`, `cache_dir`, `data`,
    `n_per_level`, `prompt_style`, the verifier fields and `threads` are the shared vocabulary's
    (`castrl.arguments`)."""

    eval_data: str | None = field(
        default=None, metadata={"help": "Held-out data spec (default: the test split of --data)."}
    )
    eval_n_per_level: int = field(default=16, metadata={"help": "Arithmetic problems per level (held-out)."})
    eval_max_new_tokens: int = field(default=128, metadata={"help": "Greedy tokens per held-out problem."})
    eval_batch_size: int = field(default=64, metadata={
        "help": "Held-out sequences per decoding batch (48 problems on 2 CPU threads: 21-23 s at 48, 25-27 s at 16)."})
    skip_eval: bool = field(default=False, metadata={"help": "Skip the held-out before/after evaluation."})
    lora: str = field(default="auto", metadata={"help": "LoRA adapter: auto (on for the bundled model), on, off."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    resume: bool = field(default=False, metadata={"help": "Continue from the last complete checkpoint."})

    def __post_init__(self) -> None:
        if self.lora not in ("auto", "on", "off"):
            raise ValueError(f"--lora must be auto, on or off, got {self.lora!r}")
        check_prompt_style(self.prompt_style)
        if self.eval_max_new_tokens < 1:
            raise ValueError(f"--eval_max_new_tokens must be >= 1, got {self.eval_max_new_tokens}")
        if self.eval_batch_size < 1:
            raise ValueError(f"--eval_batch_size must be >= 1, got {self.eval_batch_size}")


# What `castrl train` with no arguments runs: CAST on the bundled model, sized for 2 CPU cores.
DEMO_DEFAULTS = dict(
    output_dir="outputs/castrl-train",
    max_steps=4,  # a CAST step at 128 tokens takes ~138 s on 2 cores: make demo took 11:05 after install
    # 32 rollouts per step = 4 prompts x 8, trained in micro-batches of 4 with gradient checkpointing and
    # the fused head's CPU vocabulary tile (castrl.trl.head_tile): one micro-batch's fwd+bwd peaks at
    # 2.6 GB RSS in 9.5 s, against 6.7 GB in 28.8 s for micro-batches of 8 at TRL's tile (2 threads)
    per_device_train_batch_size=4,
    gradient_accumulation_steps=8,
    num_generations=8,
    # the smollm2 bench tier's budget: ~4x the bundled model's mean sampled completion (32.9 tokens), so CAST's
    # longer outputs are not cut off before their answer (at 64, 28-44 % of the demo's rollouts were truncated)
    max_completion_length=128,
    learning_rate=5e-5,
    lr_scheduler_type="constant",
    logging_steps=1,
    save_strategy="steps",
    save_steps=5,
    save_total_limit=2,
    gradient_checkpointing=True,
    bf16=False,
    report_to="none",
)


# The dataclasses that are `castrl train`'s command line (tests/test_arguments.py checks the vocabulary).
ARGUMENTS: tuple[type, ...] = (RunArguments, CASTTrainerConfig)


def parse_args(argv: list[str]) -> tuple[RunArguments, CASTTrainerConfig]:
    """`RunArguments` and `CASTTrainerConfig` from flags (and `--config`), on the demo defaults; ValueError when invalid."""
    defaults = dict(DEMO_DEFAULTS)
    if not torch.cuda.is_available():
        defaults["use_cpu"] = True
    run, config = parse_dataclasses(
        ARGUMENTS, argv, prog="castrl train", defaults=defaults,
        description="Train with CAST (or a baseline) on a model and dataset; held-out accuracy before and after.",
    )
    return run, config


def _lora(run: RunArguments) -> LoraSettings | None:
    if run.lora == "off" or (run.lora == "auto" and default_lora_for(run.model) is None):
        return None
    return LoraSettings(r=run.lora_r, alpha=run.lora_alpha)


def load_data(run: RunArguments, config: CASTTrainerConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and held-out records; every row is validated here, before the model loads."""
    train = load_problems(run.data, split="train", **({"n_per_level": run.n_per_level} if run.n_per_level else {}))
    held_out = []
    if not run.skip_eval:
        spec = run.eval_data or run.data
        kwargs = {"n_per_level": run.eval_n_per_level} if spec.startswith("arithmetic") else {}
        held_out = load_problems(spec, split="test", **kwargs)
    prompts_per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps
    if prompts_per_step % config.num_generations:
        raise ValueError(
            f"per_device_train_batch_size x gradient_accumulation_steps = {prompts_per_step} must be a multiple "
            f"of num_generations = {config.num_generations} (whole groups per step)"
        )
    return train, held_out


def make_trainer(run: RunArguments, config: CASTTrainerConfig, model, tokenizer, verifier: Verifier, records) -> CASTTrainer:
    """The CASTTrainer of a run: verifier reward, TRL dataset in the run's prompt style, optional LoRA."""
    lora = _lora(run)
    return CASTTrainer(
        model=model,
        reward_funcs=make_trl_reward(verifier),
        args=config,
        train_dataset=to_trl_dataset(records, style=run.prompt_style),
        processing_class=tokenizer,
        peft_config=peft_config(lora) if lora else None,
    )
