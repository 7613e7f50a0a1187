"""`castrl train`: CAST (or a baseline) on a model and dataset, with held-out before/after accuracy.

Reads one `RunArguments` + one `CASTTrainerConfig` (every field is a flag; `--config run.yaml` works as
in TRL). Flags, data and model path are checked before the model loads. Held-out accuracy is
`castrl.evaluate.heldout_accuracy` (greedy; unscorable answers count as wrong), as in `castrl eval`
and the bench. Outputs in `--output_dir`: checkpoints (`checkpoint-N`, complete ones marked),
`metrics.jsonl`, `training.png`, `summary.json`.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from castrl.arguments import (
    DataArguments,
    ModelArguments,
    RuntimeArguments,
    VerifierArguments,
    check_prompt_style,
)
from castrl.command_line import parse_dataclasses, user_input
from castrl.config_fields import adapted, with_fields_of
from castrl.data import build_prompt, load_problems, to_trl_dataset
from castrl.evaluate import heldout_accuracy
from castrl.formatting import num, write_json
from castrl.models import LoraSettings, default_lora_for, load_checked, peft_config, resolve_model
from castrl.rewards import Verifier, make_trl_reward
from castrl.run_logging import MetricsJsonl, append_metrics, drift_warning, plot_run, read_metrics
from castrl.trl import CASTTrainer, CASTTrainerConfig
from castrl.trl.checkpoint import last_complete_checkpoint


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


# What `castrl train` with no arguments runs: CAST on the bundled model, sized for 2 CPU cores.
DEMO_DEFAULTS = dict(
    output_dir="outputs/castrl-train",
    max_steps=4,  # a CAST step at 128 tokens takes ~116 s on 2 cores: make demo took 13:41 on a fresh clone
    # 32 rollouts per step = 4 prompts x 8, trained in micro-batches of 8 with gradient checkpointing:
    # peak RSS of a step 4.6 GB instead of 11.8 GB (micro-batches of 16, no checkpointing), at about the
    # same step time on 2 CPU cores (81 s vs 76-85 s, CAST, smollm2 + LoRA)
    per_device_train_batch_size=8,
    gradient_accumulation_steps=4,
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


def _heldout(model, tokenizer, records, verifier, run, label: str) -> dict[str, Any]:
    if not records:
        return {}
    start = time.perf_counter()
    levels = [r.get("level") for r in records]
    result = heldout_accuracy(
        model, tokenizer, [build_prompt(r["problem"], run.prompt_style) for r in records],
        [r["answer"] for r in records], verifier, levels=levels if any(levels) else None,
        max_new_tokens=run.eval_max_new_tokens,
    )
    unscorable = f", {result['n_unscorable']} unscorable (counted wrong)" if result["n_unscorable"] else ""
    print(f"[castrl] held-out {label}: accuracy {num(result['accuracy'])} on {result['n']} problems{unscorable} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    return result


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


def train(run: RunArguments, config: CASTTrainerConfig) -> dict:
    """The whole run; returns the summary written to `summary.json`.

    Input mistakes (data rows, model path, a model that cannot load) raise `UserInputError`.
    """
    if run.threads:
        torch.set_num_threads(run.threads)
    with user_input():
        train_records, held_out = load_data(run, config)
        model_path = resolve_model(run.model, run.cache_dir)
    resume_from = last_complete_checkpoint(config.output_dir) if run.resume else None
    if run.resume and resume_from is None:
        print(f"[castrl] --resume: no complete checkpoint in {config.output_dir}; starting fresh", flush=True)
    with user_input():
        model, tokenizer = load_checked(model_path, dtype=run.dtype)
    verifier = Verifier(timeout_s=run.verifier_timeout_s, num_workers=run.verifier_workers)
    try:
        before = {} if resume_from else _heldout(model, tokenizer, held_out, verifier, run, "before")
        trainer = make_trainer(run, config, model, tokenizer, verifier, train_records)
        trainer.add_callback(MetricsJsonl(config.output_dir))
        if before:
            append_metrics(config.output_dir, {"step": 0, "heldout/accuracy": before["accuracy"]})
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=resume_from)
        train_seconds = time.perf_counter() - start
        trainer.save_model(os.path.join(config.output_dir, "final"))
        after = _heldout(trainer.model, tokenizer, held_out, verifier, run, "after")
        if after:
            append_metrics(config.output_dir, {"step": trainer.state.global_step, "heldout/accuracy": after["accuracy"]})
    finally:
        verifier.close()
    summary = {
        "advantage_estimator": config.advantage_estimator,
        "steps": trainer.state.global_step,
        "train_seconds": train_seconds,
        "heldout_before": before,
        "heldout_after": after,
        "run_args": asdict(run),
        "plot": plot_run(config.output_dir),
        "warnings": [w for w in [drift_warning(read_metrics(config.output_dir), before, after)] if w],
    }
    write_json(os.path.join(config.output_dir, "summary.json"), summary, indent=2)
    _print_summary(summary)
    return summary


def _print_summary(summary: dict) -> None:
    before, after = summary["heldout_before"], summary["heldout_after"]
    print(f"\n[castrl] {summary['advantage_estimator']}: {summary['steps']} steps in {summary['train_seconds']:.0f} s")
    if after:
        print("| held-out | before | after |\n|---|---|---|")
        for key in ("accuracy", "boxed_rate", "mean_tokens"):
            print(f"| {key} | {num(before.get(key))} | {num(after[key])} |")
    if summary["plot"]:
        print(f"[castrl] plot: {summary['plot']}")
    for warning in summary["warnings"]:
        print(warning)


def main(argv: list[str] | None = None) -> int:
    """Entry of `castrl train`; input mistakes raise `UserInputError` (`castrl.cli` prints it, exit 2)."""
    # transformers 5 warns on every TRL config that `gradient_checkpointing` is being renamed: noise here.
    warnings.filterwarnings("ignore", message=".*is deprecated and will be removed in v6", category=FutureWarning)
    with user_input():
        run, config = parse_args(sys.argv[1:] if argv is None else argv)
    train(run, config)
    return 0
