"""`castrl eval`: avg@k, unbiased pass@k, maj@k, greedy accuracy, boxed rate, length, and the
token-budget sweep of spec §7 (paper Table 14), for one model or several (base model, checkpoints).

Flags are the fields of `EvalArguments` (`castrl.evaluation.arguments`); sampling defaults are spec §7's (temperature 0.7, top-p 0.8,
top-k 20). `--budgets 32,64,128` generates once with max_new_tokens = the largest budget and
re-scores the same completions cut at each budget (`castrl.evaluation.run.evaluate_model`). Flags, data and
model paths are checked before any weights load. Unscorable answers count as wrong (reported as
`n_unscorable`), as in `castrl train` and the bench. `--seed` drives sampling only; `--data_seed`
picks the arithmetic problems. Outputs in `--output_dir` (`--out` is read until the next release):
eval.json, eval.md, and eval_budgets.png with budgets (`castrl.commands.eval_report`).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from castrl.command_line import dataclass_parser, parse_dataclasses, user_input
from castrl.commands.eval_report import render_markdown, write_report
from castrl.data import load_problems
from castrl.evaluation.arguments import EvalArguments, is_adapter_folder
from castrl.evaluation.run import BUDGET_KEYS, budget_sweep, evaluate_model, score_problems
from castrl.models import load_checked, resolve_model
from castrl.rewards import Verifier

# The evaluation itself is library code (`castrl.evaluation`, which the bench calls too); these names stay
# importable from here.
__all__ = ["ARGUMENTS", "BUDGET_KEYS", "EvalArguments", "budget_sweep", "evaluate_model", "main", "score_problems"]

PROG = "castrl eval"
DESCRIPTION = "Evaluate models: avg@k, pass@k, maj@k, greedy accuracy, boxed rate, length, token-budget sweep."


def locate_model(spec: str, args: EvalArguments) -> tuple[str, str | None]:
    """(base model path, adapter folder or None) of one --model entry; ValueError when it cannot be found.

    A LoRA adapter folder (a LoRA run's checkpoint-N or final/) loads onto the base model its
    adapter_config.json names; otherwise --lora_adapter (if any) goes onto the model.
    """
    if args.lora_adapter is None and is_adapter_folder(spec):
        config = json.loads((Path(spec).expanduser() / "adapter_config.json").read_text())
        base = config.get("base_model_name_or_path")
        if not base:
            raise ValueError(f"--model {spec!r} is an adapter folder that names no base model; pass "
                             "the base model as --model and this folder as --lora_adapter")
        return resolve_model(base, args.cache_dir), spec
    return resolve_model(spec, args.cache_dir), args.lora_adapter


def load_records(args: EvalArguments) -> list[dict[str, Any]]:
    """Problems of --data/--split, validated row by row (DataError names file, row and column)."""
    kwargs: dict[str, Any] = {}
    if args.data.strip().startswith("arithmetic"):
        kwargs["seed"] = args.data_seed
        if args.n_per_level is not None:
            kwargs["n_per_level"] = args.n_per_level
    elif args.n_per_level is not None:
        raise ValueError(f"--n_per_level applies to the arithmetic suite only, not to --data {args.data!r}")
    return list(load_problems(args.data, split=args.split, **kwargs))


def load_model(args: EvalArguments, path: str, adapter: str | None) -> tuple[Any, Any]:
    """Model (with `adapter` merged in) and tokenizer on the chosen device; load errors become ValueError."""
    model, tokenizer = load_checked(path, dtype=args.dtype)
    if adapter is not None:
        from peft import PeftModel

        # Merging folds the adapter into the weights: same outputs, no per-layer adapter cost.
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    return model.to(device).eval(), tokenizer


def prepare(argv: list[str]) -> tuple[EvalArguments, list[dict[str, Any]], list[tuple[str, str | None]]]:
    """Flags, data and model locations, all checked before any weights load (ValueError naming the flag)."""
    (args,) = parse_dataclasses(ARGUMENTS, argv, prog=PROG, description=DESCRIPTION)
    records = load_records(args)
    return args, records, [locate_model(spec, args) for spec in args.model]


def run_eval(args: EvalArguments, argv: list[str], records: list[dict[str, Any]],
             located: list[tuple[str, str | None]]) -> dict[str, Any]:
    """Evaluate every --model in turn (one loaded at a time); returns the report of eval.json."""
    report: dict[str, Any] = {
        "command": shlex.join(["castrl", "eval", *argv]),
        "args": asdict(args),
        "versions": {"torch": torch.__version__, "transformers": _version("transformers")},
        "models": [],
    }
    with Verifier(timeout_s=args.verifier_timeout_s, num_workers=args.verifier_workers) as verifier:
        for spec, (path, adapter) in zip(args.model, located, strict=True):
            start = time.perf_counter()
            with user_input():
                model, tokenizer = load_model(args, path, adapter)
            load_seconds = time.perf_counter() - start
            entry = {"model": spec, "model_path": path, "lora_adapter": adapter, "device": str(model.device)}
            entry.update(evaluate_model(args, records, model, tokenizer, verifier))
            entry["seconds"]["load"] = load_seconds
            entry["seconds"]["total"] = time.perf_counter() - start
            report["models"].append(entry)
            del model
    return report


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


# The dataclasses that are `castrl eval`'s command line (tests/test_arguments.py checks the vocabulary).
ARGUMENTS: tuple[type, ...] = (EvalArguments,)


def build_parser() -> Any:
    """The `castrl eval` parser (for --help and tests)."""
    return dataclass_parser(ARGUMENTS, prog=PROG, description=DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    """Entry of `castrl eval`; input mistakes raise `UserInputError` before weights load (`castrl.cli`: exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with user_input():
        args, records, located = prepare(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_eval(args, argv, records, located)
    paths = write_report(report, args.output_dir)
    print(render_markdown(report))
    print(f"[castrl] wrote {', '.join(str(p) for p in paths)}", flush=True)
    return 0
