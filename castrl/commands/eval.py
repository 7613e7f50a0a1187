"""`castrl eval`: avg@k, unbiased pass@k, maj@k, greedy accuracy, boxed rate, length, and the
token-budget sweep of spec §7 (paper Table 14), for one model or several (base model, checkpoints).

Flags are the fields of `EvalArguments`; sampling defaults are spec §7's (temperature 0.7, top-p 0.8,
top-k 20). `--budgets 32,64,128` generates once with max_new_tokens = the largest budget and
re-scores the same completions cut at each budget (`castrl.evaluate.cut_at_budget`). Flags, data and
model paths are checked before any weights load. Unscorable answers count as wrong (reported as
`n_unscorable`), as in `castrl train` and the bench. `--seed` drives sampling only; `--data_seed`
picks the arithmetic problems. Outputs in `--output_dir` (`--out` is read until the next release):
eval.json, eval.md, and eval_budgets.png with budgets (`castrl.commands.eval_report`).
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from dataclasses import Field, asdict, dataclass, field
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
from castrl.command_line import dataclass_parser, parse_dataclasses, user_input
from castrl.commands.eval_report import render_markdown, write_report
from castrl.config_fields import adapted, with_fields_of
from castrl.data import build_prompt, load_problems
from castrl.evaluate import (
    aggregate,
    cut_at_budget,
    generate_completions,
    is_boxed,
    problem_metrics,
)
from castrl.models import load_checked, resolve_model
from castrl.rewards import Verifier, extract_final_answer

PROG = "castrl eval"
DESCRIPTION = "Evaluate models: avg@k, pass@k, maj@k, greedy accuracy, boxed rate, length, token-budget sweep."
# What a budget row reports (a subset of `aggregate`'s summary, over the sampled completions).
BUDGET_KEYS = ("avg_at_k", "pass_at_k", "maj_at_k", "pass_at", "mean_tokens", "answered_rate", "n_unscorable")


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
@with_fields_of(SamplingArguments, only=("temperature", "top_p", "top_k", "max_new_tokens"), convert=adapted(notes={
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
        if self.lora_adapter is not None and not _is_adapter(self.lora_adapter):
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


def _is_adapter(folder: str) -> bool:
    return (Path(folder).expanduser() / "adapter_config.json").is_file()


def locate_model(spec: str, args: EvalArguments) -> tuple[str, str | None]:
    """(base model path, adapter folder or None) of one --model entry; ValueError when it cannot be found.

    A LoRA adapter folder (a LoRA run's checkpoint-N or final/) loads onto the base model its
    adapter_config.json names; otherwise --lora_adapter (if any) goes onto the model.
    """
    if args.lora_adapter is None and _is_adapter(spec):
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


def _sample_row(text: str, tokens: int, score: float | None) -> dict[str, Any]:
    return {"text": text, "answer": extract_final_answer(text), "correct": score, "tokens": tokens,
            "boxed": is_boxed(text)}


def score_problems(
    records: list[dict[str, Any]], greedy: list[Any] | None, samples: list[list[Any]], verifier: Verifier, k: int
) -> list[dict[str, Any]]:
    """Per-problem rows: every sample and the greedy completion verified, with the problem's metrics.

    A sample's `correct` is the verifier's score (None = unscorable); metrics count None as wrong.
    """
    flat = [c for group in samples for c in group]
    golds = [r["answer"] for r in records for _ in samples[0]]
    scores = verifier.score_batch([c.text for c in flat], golds)
    greedy_scores = verifier.score_batch([c.text for c in greedy], [r["answer"] for r in records]) if greedy else []
    rows, n = [], len(samples[0])
    for i, record in enumerate(records):
        got = scores[i * n : (i + 1) * n]
        row = {"id": record["id"], "level": record.get("level"), "problem": record["problem"], "gold": record["answer"]}
        row["samples"] = [_sample_row(c.text, c.tokens, s) for c, s in zip(samples[i], got, strict=True)]
        row["greedy"] = _sample_row(greedy[i].text, greedy[i].tokens, greedy_scores[i]) if greedy else None
        row.update(problem_metrics(got, [s["answer"] for s in row["samples"]], k))
        rows.append(row)
    return rows


def budget_sweep(
    records: list[dict[str, Any]], samples: list[list[Any]], verifier: Verifier, args: EvalArguments, tokenizer: Any
) -> list[dict[str, Any]]:
    """One row per budget: BUDGET_KEYS of the sampled completions cut at that budget (no regeneration)."""
    out = []
    for budget in args.budget_list():
        cut = [[cut_at_budget(c, budget, tokenizer) for c in group] for group in samples]
        summary = aggregate(score_problems(records, None, cut, verifier, args.k), args.k)
        out.append({"budget": budget, **{key: summary[key] for key in BUDGET_KEYS}})
    return out


def evaluate_model(
    args: EvalArguments, records: list[dict[str, Any]], model: Any, tokenizer: Any, verifier: Verifier
) -> dict[str, Any]:
    """Greedy pass, n samples per problem, verification, metrics and budget sweep of one model."""
    prompts = [build_prompt(r["problem"], args.prompt_style) for r in records]
    gen = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=args.progress)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    greedy = None
    if not args.skip_greedy:
        greedy = [g[0] for g in generate_completions(model, tokenizer, prompts, desc="greedy", **gen)]
        seconds["greedy"] = time.perf_counter() - start
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    samples = generate_completions(
        model, tokenizer, prompts, do_sample=True, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, num_return_sequences=args.n, desc=f"sample x{args.n}", **gen,
    )
    seconds["sampling"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = score_problems(records, greedy, samples, verifier, args.k)
    budgets = budget_sweep(records, samples, verifier, args, tokenizer)
    seconds["verify"] = time.perf_counter() - t0
    levels = sorted({r["level"] for r in rows if r["level"]})
    return {
        "summary": aggregate(rows, args.k),
        "per_level": {lv: aggregate([r for r in rows if r["level"] == lv], args.k) for lv in levels},
        "budgets": budgets,
        "seconds": seconds,
        "problems": rows,
    }


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
