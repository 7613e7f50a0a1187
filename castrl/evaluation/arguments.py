"""`EvalArguments`: what `castrl eval` evaluates and how; every field is one of its flags.

A library module, not the command's: the bench's final evaluation builds the same arguments and calls
the same `evaluate_model`, so a cell is evaluated exactly as `castrl eval` evaluates a model.
"""

from __future__ import annotations

import math
from dataclasses import Field, dataclass, field
from pathlib import Path
from typing import Any

import torch

from castrl.arguments import (
    DataArguments,
    ModelArguments,
    OutputArguments,
    RuntimeArguments,
    SamplingArguments,
    VerifierArguments,
    check_prompt_style,
    renamed_init,
)
from castrl.config_fields import adapted, with_fields_of


def _several(f: Field, hint: Any) -> tuple[Any, Any]:
    """The vocabulary's `--model`, taking one or more models."""
    note = (" Several: one section and one budget line each. A `castrl train` checkpoint-N or final/ folder "
            "works; a LoRA adapter folder loads onto the base model it names.")
    return list[str], field(default_factory=lambda: [f.default], metadata={"help": f.metadata["help"] + note})


@renamed_init
@dataclass
@with_fields_of(OutputArguments, convert=adapted(
    defaults={"output_dir": "outputs/castrl-eval"},
    notes={"output_dir": "Gets eval.json, eval.md, and eval_budgets.png with --budgets."}))
@with_fields_of(VerifierArguments)
@with_fields_of(RuntimeArguments, convert=adapted(notes={
    "seed": "Set right before each model's sampling (--data_seed draws the arithmetic problems)."}))
@with_fields_of(SamplingArguments, only=("temperature", "top_p", "top_k", "max_new_tokens", "decoder"), convert=adapted(notes={
    "temperature": "spec §7. [P]", "max_new_tokens": "Default: the largest of --budgets, else 128."}))
@with_fields_of(DataArguments)
@with_fields_of(ModelArguments, only=("lora_adapter", "dtype", "cache_dir"), convert=adapted(notes={
    "lora_adapter": "Merged into every --model (an adapter folder given as --model needs none)."}))
@with_fields_of(ModelArguments, only=("model",), convert=_several)
class EvalArguments:
    """What to evaluate and how; every field is a `castrl eval` flag. The model, data, sampling, verifier,
    output and runtime fields are the shared vocabulary's (`castrl.arguments`)."""

    data_seed: int = field(default=0, metadata={"help": "Seed of the arithmetic problem draw (not of sampling)."})
    k: int = field(default=16, metadata={"help": "k of avg@k, pass@k and maj@k (1 <= k <= n); spec §7: 16."})
    n: int | None = field(
        default=None,
        metadata={
            "help": "Samples per problem (>= k; default k). pass@k: unbiased estimator over all n; avg@k: mean "
            "of all n; maj@k: the n // k disjoint blocks of k."
        },
    )
    budgets: str = field(
        default="",
        metadata={
            "help": "Comma-separated token budgets, e.g. 32,64,128,256: the same completions re-scored cut at "
            "each budget (spec §7, paper Table 14); each <= --max_new_tokens. Empty: no sweep."
        },
    )
    batch_size: int = field(default=32, metadata={"help": "Sequences per generate call (greedy and sampled)."})
    skip_greedy: bool = field(default=False, metadata={"help": "Skip the greedy pass (greedy_* metrics null)."})

    def __post_init__(self) -> None:
        self.n = self.k if self.n is None else self.n
        if self.k < 1:
            raise ValueError(f"--k must be >= 1, got {self.k}")
        if self.n < self.k:
            raise ValueError(f"--k ({self.k}) must be <= --n ({self.n}); pass --n >= --k, or leave --n out (n = k)")
        self._check_numbers()
        self._check_budgets()
        check_prompt_style(self.prompt_style)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available; use --device cpu or auto")
        if self.lora_adapter is not None and not is_adapter_folder(self.lora_adapter):
            raise ValueError(
                f"--lora_adapter {self.lora_adapter!r} is not a PEFT adapter folder (no adapter_config.json); "
                "pass the final/ folder of a LoRA `castrl train` run"
            )

    def _check_numbers(self) -> None:
        positive = {
            "--batch_size": self.batch_size,
            "--temperature": self.temperature,
            "--top_p": self.top_p,
            "--verifier_timeout_s": self.verifier_timeout_s,
            "--verifier_workers": self.verifier_workers,
        }
        for flag, value in positive.items():
            if not value > 0 or not math.isfinite(value):
                raise ValueError(f"{flag} must be > 0, got {value}")
        at_least = {
            "--top_k": (self.top_k, 0),
            "--threads": (self.threads, 0),
            "--max_new_tokens": (self.max_new_tokens, 1),
            "--n_per_level": (self.n_per_level, 1),
        }
        for flag, (value, low) in at_least.items():
            if value is not None and value < low:
                raise ValueError(f"{flag} must be >= {low}, got {value}")
        if self.top_p > 1:
            raise ValueError(f"--top_p must be in (0, 1], got {self.top_p}")

    def _check_budgets(self) -> None:
        budgets = self.budget_list()
        if self.max_new_tokens is None:
            self.max_new_tokens = max(budgets, default=128)
        elif budgets and budgets[-1] > self.max_new_tokens:
            raise ValueError(
                f"--budgets {self.budgets} exceeds --max_new_tokens {self.max_new_tokens}: a completion cannot be cut "
                "beyond its limit; raise --max_new_tokens or leave it out (it then defaults to the largest budget)"
            )

    def budget_list(self) -> list[int]:
        """The token budgets of `--budgets`, ascending; ValueError unless each is an integer >= 1."""
        items = [b.strip() for b in self.budgets.split(",") if b.strip()]
        if not all(b.isdigit() and int(b) >= 1 for b in items):
            raise ValueError(f"--budgets must be comma-separated integers >= 1, e.g. 32,64,128, got {self.budgets!r}")
        return sorted({int(b) for b in items})


def is_adapter_folder(folder: str) -> bool:
    """Whether `folder` holds a PEFT adapter (its adapter_config.json)."""
    return (Path(folder).expanduser() / "adapter_config.json").is_file()
