"""`castrl eval`: avg@k, unbiased pass@k, maj@k, greedy accuracy, boxed rate and length of a model.

Inputs (flags, data spec, k/n, model path, adapter folder) are checked and the data loaded before
the model loads, so a typo costs no model load. Only the verifier is shared with training rewards.
Outputs in `--out`: `eval.json` (command, arguments, summary, per-level summaries, every problem
with every sample) and `eval.md` (the same summary as tables). `--seed` drives sampling only;
`--data_seed` picks the arithmetic problems, so changing one never changes the other.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from castrl.data import STYLES, build_prompt, load_problems
from castrl.evaluate import aggregate, generate_completions, is_boxed, problem_metrics
from castrl.models import DEFAULT_MODEL, load_model_and_tokenizer, resolve_model
from castrl.rewards import Verifier, extract_final_answer

PROG = "castrl eval"


# Every `castrl eval` flag: (name, argparse keyword arguments). Help text lives here only.
FLAGS: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "--model",
        dict(
            default=DEFAULT_MODEL,
            help="Folder saved with save_pretrained, a cached Hugging Face id, "
            f"or {DEFAULT_MODEL!r} (the bundled SmolLM2-135M-Instruct).",
        ),
    ),
    (
        "--lora_adapter",
        dict(
            default=None,
            help="PEFT adapter folder applied to --model and merged, e.g. the "
            "final/ folder of a LoRA `castrl train` run.",
        ),
    ),
    (
        "--data",
        dict(
            default="arithmetic:add1,add2,mul21",
            help="Data spec: arithmetic[:LEVELS] or a "
            ".jsonl/.json/.parquet PATH[:PRESET] ('{split}' in PATH becomes --split).",
        ),
    ),
    (
        "--split",
        dict(default="test", help="Arithmetic split (train/test), or the value of '{split}' in a path."),
    ),
    (
        "--n_per_level",
        dict(
            type=int,
            default=None,
            help="Arithmetic problems per level (default: the "
            "suite's per-split default, 16 for test). Arithmetic only.",
        ),
    ),
    ("--data_seed", dict(type=int, default=0, help="Seed of the arithmetic problem draw (not of sampling).")),
    ("--k", dict(type=int, default=16, help="k of avg@k, pass@k and maj@k (1 <= k <= n).")),
    (
        "--n",
        dict(
            type=int,
            default=None,
            help="Samples per problem (>= k; default k). pass@k uses the unbiased "
            "estimator over all n, avg@k the mean of all n, maj@k the n // k disjoint blocks of k.",
        ),
    ),
    ("--temperature", dict(type=float, default=1.0, help="Sampling temperature (> 0); top_p=1, top_k=0.")),
    ("--max_new_tokens", dict(type=int, default=128, help="Token limit of every completion.")),
    ("--batch_size", dict(type=int, default=32, help="Sequences per generate call (greedy and sampled).")),
    ("--prompt_style", dict(default="oneshot", choices=STYLES, help="Student prompt style, as in training.")),
    ("--skip_greedy", dict(action="store_true", help="Skip the greedy pass (greedy_* metrics become null).")),
    ("--seed", dict(type=int, default=0, help="torch seed set right before sampling.")),
    ("--dtype", dict(default="float32", choices=("float32", "bfloat16", "float16"), help="Weights dtype.")),
    ("--device", dict(default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when available.")),
    ("--threads", dict(type=int, default=0, help="torch CPU threads (0 leaves torch's default).")),
    (
        "--verifier_timeout_s",
        dict(type=float, default=5.0, help="Hard timeout of one answer check (seconds)."),
    ),
    ("--verifier_workers", dict(type=int, default=2, help="Verifier worker processes.")),
    ("--cache_dir", dict(default=None, help="Cache of converted models (default $CASTRL_CACHE/models).")),
    ("--out", dict(default="outputs/castrl-eval", help="Output folder for eval.json and eval.md.")),
    ("--no_progress", dict(action="store_true", help="Hide the progress bars.")),
)


def build_parser() -> argparse.ArgumentParser:
    """The `castrl eval` parser, built from `FLAGS`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Evaluate a model: avg@k, pass@k, maj@k, greedy accuracy, boxed rate, completion length.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for name, kwargs in FLAGS:
        parser.add_argument(name, **kwargs)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Raise ValueError naming the flag for every value that cannot work; fills the default of --n."""
    args.n = args.k if args.n is None else args.n
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    if args.n < args.k:
        raise ValueError(
            f"--k ({args.k}) must be <= --n ({args.n}); pass --n >= --k, or leave --n out (n = k)"
        )
    positive = {
        "--max_new_tokens": args.max_new_tokens,
        "--batch_size": args.batch_size,
        "--temperature": args.temperature,
        "--verifier_timeout_s": args.verifier_timeout_s,
        "--verifier_workers": args.verifier_workers,
    }
    for flag, value in positive.items():
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"{flag} must be > 0, got {value}")
    if args.n_per_level is not None and args.n_per_level < 1:
        raise ValueError(f"--n_per_level must be >= 1, got {args.n_per_level}")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0 (0 = torch's default), got {args.threads}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu or auto")
    if args.lora_adapter is not None and not (Path(args.lora_adapter) / "adapter_config.json").is_file():
        raise ValueError(
            f"--lora_adapter {args.lora_adapter!r} is not a PEFT adapter folder (no adapter_config.json); "
            "pass the final/ folder of a LoRA `castrl train` run"
        )


def load_records(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Problems of --data/--split, validated row by row (DataError names file, row and column)."""
    kwargs: dict[str, Any] = {}
    if args.data.strip().startswith("arithmetic"):
        kwargs["seed"] = args.data_seed
        if args.n_per_level is not None:
            kwargs["n_per_level"] = args.n_per_level
    elif args.n_per_level is not None:
        raise ValueError(f"--n_per_level applies to the arithmetic suite only, not to --data {args.data!r}")
    return list(load_problems(args.data, split=args.split, **kwargs))


def load_model(args: argparse.Namespace, path: str) -> tuple[Any, Any]:
    """Model (with --lora_adapter merged in) and tokenizer on the chosen device; load errors become ValueError."""
    try:
        model, tokenizer = load_model_and_tokenizer(path, dtype=args.dtype)
    except OSError as err:
        raise ValueError(
            f"--model {args.model!r} could not be loaded ({err}); pass a folder saved with "
            f"save_pretrained, a Hugging Face id in the local cache, or {DEFAULT_MODEL!r}"
        ) from err
    if args.lora_adapter is not None:
        from peft import PeftModel

        # Merging folds the adapter into the weights: same outputs, no per-layer adapter cost.
        model = PeftModel.from_pretrained(model, args.lora_adapter).merge_and_unload()
    device = (
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    return model.to(device).eval(), tokenizer


def _sample_row(text: str, tokens: int, correct: float | None) -> dict[str, Any]:
    return {
        "text": text,
        "answer": extract_final_answer(text),
        "correct": correct,
        "tokens": tokens,
        "boxed": is_boxed(text),
    }


def score_problems(
    records: list[dict[str, Any]],
    greedy: list[Any] | None,
    samples: list[list[Any]],
    verifier: Verifier,
    k: int,
) -> list[dict[str, Any]]:
    """Per-problem rows: every sample and the greedy completion verified, with the problem's metrics."""
    flat = [c for group in samples for c in group]
    golds = [r["answer"] for r in records for _ in samples[0]]
    scores = verifier.score_batch([c.text for c in flat], golds)
    greedy_scores = (
        verifier.score_batch([c.text for c in greedy], [r["answer"] for r in records]) if greedy else []
    )
    rows, n = [], len(samples[0])
    for i, record in enumerate(records):
        got = scores[i * n : (i + 1) * n]
        row = {
            "id": record["id"],
            "level": record.get("level"),
            "problem": record["problem"],
            "gold": record["answer"],
            "skipped": any(s is None for s in got),
        }
        row["samples"] = [_sample_row(c.text, c.tokens, s) for c, s in zip(samples[i], got, strict=True)]
        row["greedy"] = _sample_row(greedy[i].text, greedy[i].tokens, greedy_scores[i]) if greedy else None
        if not row["skipped"]:  # None = the verifier could not parse the gold: no metric for this problem
            row.update(problem_metrics(got, [s["answer"] for s in row["samples"]], k))
        rows.append(row)
    return rows


def prepare(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    """Check the flags, load the data and locate the model, all before any weights load.

    Raises ValueError/TypeError/FileNotFoundError with a message naming the flag, file or row.
    """
    check_args(args)
    records = load_records(args)
    return records, resolve_model(args.model, args.cache_dir)


def run_eval(
    args: argparse.Namespace,
    argv: list[str],
    records: list[dict[str, Any]],
    model_path: str,
    model: Any,
    tokenizer: Any,
) -> dict[str, Any]:
    """Greedy pass, n samples per problem, verification and metrics; returns the report of eval.json."""
    prompts = [build_prompt(r["problem"], args.prompt_style) for r in records]
    gen = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=not args.no_progress)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with Verifier(timeout_s=args.verifier_timeout_s, num_workers=args.verifier_workers) as verifier:
        greedy = None
        if not args.skip_greedy:
            greedy = [g[0] for g in generate_completions(model, tokenizer, prompts, desc="greedy", **gen)]
            seconds["greedy"] = time.perf_counter() - start
        t0 = time.perf_counter()
        torch.manual_seed(args.seed)
        samples = generate_completions(
            model,
            tokenizer,
            prompts,
            do_sample=True,
            temperature=args.temperature,
            num_return_sequences=args.n,
            desc=f"sample x{args.n}",
            **gen,
        )
        seconds["sampling"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = score_problems(records, greedy, samples, verifier, args.k)
        seconds["verify"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - start
    levels = sorted({r["level"] for r in rows if r["level"]})
    return {
        "command": shlex.join(["castrl", "eval", *argv]),
        "args": vars(args),
        "model_path": model_path,
        "device": str(model.device),
        "versions": {"torch": torch.__version__, "transformers": _version("transformers")},
        "summary": aggregate(rows, args.k),
        "per_level": {lv: aggregate([r for r in rows if r["level"] == lv], args.k) for lv in levels},
        "seconds": seconds,
        "problems": rows,
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render_markdown(report: dict[str, Any]) -> str:
    """eval.md: the command, the setting, the summary table and (when problems have levels) a per-level table."""
    a, s, k = report["args"], report["summary"], report["args"]["k"]
    adapter = f" + adapter `{a['lora_adapter']}`" if a["lora_adapter"] else ""
    lines = [
        "# castrl eval",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"Model `{a['model']}`{adapter} · data `{a['data']}` (split {a['split']}, {s['n_problems']} problems, "
        f"{s['n_scored']} scored) · n = {a['n']} samples per problem, k = {k}, temperature {a['temperature']}, "
        f"max_new_tokens {a['max_new_tokens']}, prompt {a['prompt_style']}, seed {a['seed']} · "
        f"{report['device']}, {report['seconds']['total']:.0f} s + {report['seconds'].get('load', 0):.0f} s model load",
        "",
        "| metric | value |",
        "|---|---|",
        f"| avg@{k} | {_fmt(s['avg_at_k'])} |",
        f"| pass@{k} (unbiased, n = {a['n']}) | {_fmt(s['pass_at_k'])} |",
        f"| maj@{k} | {_fmt(s['maj_at_k'])} |",
        f"| greedy accuracy | {_fmt(s['greedy_accuracy'])} |",
        f"| boxed rate (samples / greedy) | {_fmt(s['boxed_rate'])} / {_fmt(s['greedy_boxed_rate'])} |",
        f"| answer extracted (samples) | {_fmt(s['answered_rate'])} |",
        f"| mean completion tokens (samples / greedy) | {_fmt(s['mean_tokens'], 1)} / "
        f"{_fmt(s['greedy_mean_tokens'], 1)} |",
    ]
    if report["per_level"]:
        lines += [
            "",
            f"| level | problems | avg@{k} | pass@{k} | maj@{k} | greedy | boxed | tokens |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for level, m in report["per_level"].items():
            lines.append(
                f"| {level} | {m['n_scored']} | {_fmt(m['avg_at_k'])} | {_fmt(m['pass_at_k'])} | "
                f"{_fmt(m['maj_at_k'])} | {_fmt(m['greedy_accuracy'])} | {_fmt(m['boxed_rate'])} | "
                f"{_fmt(m['mean_tokens'], 1)} |"
            )
    return "\n".join(lines) + "\n"


def _json_safe(value: Any) -> Any:
    """NaN/inf become null so eval.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(report: dict[str, Any], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write eval.json and eval.md into `out_dir` (created if missing); returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "eval.json", out / "eval.md"
    json_path.write_text(json.dumps(_json_safe(report), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report), encoding="utf-8")
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    """Entry of `castrl eval`; returns 0, or 2 (message on stderr) when an input is unusable."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:  # only input problems are caught: a failure mid-evaluation keeps its traceback
        records, model_path = prepare(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        start = time.perf_counter()
        model, tokenizer = load_model(args, model_path)
        load_seconds = time.perf_counter() - start
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    report = run_eval(args, argv, records, model_path, model, tokenizer)
    report["seconds"]["load"] = load_seconds
    json_path, md_path = write_report(report, args.out)
    print(render_markdown(report))
    print(f"[castrl] wrote {json_path} and {md_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
