"""`castrl train`: CAST (or a baseline) on a model and dataset, with held-out before/after accuracy.

Reads one `RunArguments` + one `CASTTrainerConfig` (`castrl.trl.run`; every field is a flag; `--config run.yaml` works as
in TRL). Flags, data and model path are checked before the model loads. Held-out accuracy is
`castrl.evaluation.heldout_accuracy` (greedy; unscorable answers count as wrong), as in `castrl eval`
and the bench. Outputs in `--output_dir`: checkpoints (`checkpoint-N`, complete ones marked),
`metrics.jsonl`, `training.png`, `summary.json`.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import asdict
from typing import Any

import torch

from castrl.command_line import user_input
from castrl.data import build_prompt
from castrl.evaluation import heldout_accuracy
from castrl.formatting import num, write_json
from castrl.models import load_checked, resolve_model
from castrl.rewards import Verifier
from castrl.run_logging import MetricsJsonl, append_metrics, drift_warning, plot_run, read_metrics
from castrl.trl import CASTTrainerConfig
from castrl.trl.checkpoint import last_complete_checkpoint
from castrl.trl.run import ARGUMENTS, DEMO_DEFAULTS, RunArguments, load_data, make_trainer, parse_args

# The run's arguments, data and trainer are library code (`castrl.trl.run`, which the bench calls too);
# these names stay importable from here.
__all__ = ["ARGUMENTS", "DEMO_DEFAULTS", "RunArguments", "load_data", "main", "make_trainer", "parse_args", "train"]


def _heldout(model, tokenizer, records, verifier, run, decoder: str, label: str) -> dict[str, Any]:
    if not records:
        return {}
    start = time.perf_counter()
    levels = [r.get("level") for r in records]
    result = heldout_accuracy(
        model, tokenizer, [build_prompt(r["problem"], run.prompt_style) for r in records],
        [r["answer"] for r in records], verifier, levels=levels if any(levels) else None,
        max_new_tokens=run.eval_max_new_tokens, batch_size=run.eval_batch_size, decoder=decoder,
    )
    unscorable = f", {result['n_unscorable']} unscorable (counted wrong)" if result["n_unscorable"] else ""
    print(f"[castrl] held-out {label}: accuracy {num(result['accuracy'])} on {result['n']} problems{unscorable} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    return result


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
        before = {} if resume_from else _heldout(model, tokenizer, held_out, verifier, run, config.rollout_decoder, "before")
        trainer = make_trainer(run, config, model, tokenizer, verifier, train_records)
        trainer.add_callback(MetricsJsonl(config.output_dir))
        if before:
            append_metrics(config.output_dir, {"step": 0, "heldout/accuracy": before["accuracy"]})
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=resume_from)
        train_seconds = time.perf_counter() - start
        trainer.save_model(os.path.join(config.output_dir, "final"))
        after = _heldout(trainer.model, tokenizer, held_out, verifier, run, config.rollout_decoder, "after")
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
