"""`castrl bench roofline`: this machine's fp32 and bf16 matmul roofs, and how close each phase of a
castrl step comes to them (sampled decoding, greedy evaluation, the teacher's scoring pass, training
forward + backward), in fp32 and under bf16 autocast.

Why: a step time means nothing on its own across machines (a 2-core AMD EPYC without bf16 units, an
Intel core with AMX, an H200). The fraction of the machine's own matmul roof that each phase reaches
does: it says which phase is worth optimising and whether bf16 can help here at all.

FLOPs are counted from P, the weights of the model's linear layers (its LM head included, each shared
weight once; embedding lookups are free): 2·P per token forward; 6·P per token forward + backward
with full fine-tuning; ~4·P with LoRA (the activations' gradient, no gradient for frozen weights;
the adapters' own FLOPs are left out). Attention's length-dependent FLOPs, the decoding prompt's
prefill and the recomputation of gradient checkpointing are not counted: the fractions are of
useful work. Decoding counts useful tokens only (up to and including the first end token, as TRL's
`completions/mean_length`). Every phase is timed as best of `--repeats`; bf16 phases run the fp32
weights under `torch.autocast`, as `castrl train --bf16 true` does, and are set against the bf16 roof.
"""

from __future__ import annotations

import copy
import platform
import shlex
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from castrl.arguments import ModelArguments, OutputArguments, RuntimeArguments, SamplingArguments
from castrl.bench.common.arguments import BenchArguments
from castrl.bench.common.roofs import (
    FLOPS_PER_TOKEN,
    FORMULA,
    PRECISIONS,
    best_of,
    matmul_params,
    measure_roofs,
    phase_row,
    precision_context,
    resolve_device,
)
from castrl.command_line import parse_dataclasses, user_input
from castrl.config_fields import adapted, with_fields_of
from castrl.formatting import num, write_json

PHASES = ("decode", "greedy", "score", "train")
TRAIN_MODES = ("lora", "full")


@dataclass
@with_fields_of(ModelArguments, only=("model", "cache_dir"))
@with_fields_of(SamplingArguments, only=("group_size", "max_new_tokens", "decoder"), convert=adapted(
    defaults={"max_new_tokens": 128}, notes={"group_size": "decode: per prompt.", "max_new_tokens": "decode / greedy."}))
@with_fields_of(RuntimeArguments, only=("threads", "seed", "device"), convert=adapted(
    defaults={"threads": 2}, notes={"seed": "It seeds the sampled decoding and the random token ids."}))
@with_fields_of(OutputArguments, only=("output_dir",), convert=adapted(
    defaults={"output_dir": "outputs/bench_roofline"}, notes={"output_dir": "roofline.json goes there."}))
@with_fields_of(BenchArguments, only=("repeats",), convert=adapted(
    defaults={"repeats": 2}, notes={"repeats": "Here: runs per phase (the best is kept), after one warm-up."}))
class RooflineArguments:
    """The flags of `castrl bench roofline` (TRL-style underscores, as every castrl command); `model`,
    `cache_dir` (the converted-model cache), `group_size`, `max_new_tokens`, `threads`, `seed`, `device` and
    `output_dir` are the shared vocabulary's (`castrl.arguments`), `repeats` the bench's
    (`castrl.bench.common.arguments`)."""

    sizes: str = field(default="512,1024,2048", metadata={"help": "Square matmul sizes of the roof (best kept)."})
    matmul_repeats: int = field(default=5, metadata={"help": "Timed matmuls per size and dtype (best kept)."})
    precisions: str = field(default="fp32,bf16", metadata={"help": "fp32 and/or bf16 (autocast over fp32 weights)."})
    phases: str = field(default=",".join(PHASES), metadata={
        "help": "decode (sampled rollouts), greedy (final evaluation), score (no-grad forward: the teacher's pass), "
        "train (forward + backward)."})
    train_modes: str = field(default=",".join(TRAIN_MODES), metadata={
        "help": "lora (castrl train's default adapter) and/or full fine-tuning."})
    prompts: int = field(default=4, metadata={"help": "decode: prompts of the arithmetic suite per batch."})
    draws: int = field(default=4, metadata={
        "help": "decode: sampled batches per timed run (seeds seed, seed+1, ...), their tokens and seconds summed. "
        "A batch lasts as long as its longest row, so one draw's rate swings with one row's length."})
    eval_prompts: int = field(default=16, metadata={"help": "greedy: prompts in the one evaluation batch."})
    batch: int = field(default=8, metadata={"help": "score / train: rows per forward (a micro-batch)."})
    seq_len: int = field(default=160, metadata={"help": "score / train: tokens per row."})
    gradient_checkpointing: bool = field(default=True, metadata={
        "help": "train: as castrl train's default (its recomputed forward is not counted as useful FLOPs)."})
    max_phase_s: float = field(default=300.0, metadata={
        "help": "Skip a phase (and a roof's matmul size) whose warm-up and repeats would take longer than this "
        "at the roof itself, a lower bound: bf16 on a CPU without bf16 units is several times slower than fp32."})

    def __post_init__(self) -> None:
        if self.max_new_tokens is None:
            raise ValueError("--max_new_tokens must be set (decode / greedy need a token limit)")
        for name in ("matmul_repeats", "repeats", "prompts", "draws", "group_size", "max_new_tokens", "eval_prompts",
                     "batch", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not self.max_phase_s > 0:
            raise ValueError(f"--max_phase_s must be > 0, got {self.max_phase_s}")
        if self.threads < 0:
            raise ValueError(f"--threads must be >= 0, got {self.threads}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        if not self.size_list() or any(n < 1 for n in self.size_list()):
            raise ValueError(f"--sizes must be positive ints, got {self.sizes!r}")
        for flag, values, known in (("--precisions", self.precision_list(), PRECISIONS),
                                    ("--phases", self.phase_list(), PHASES),
                                    ("--train_modes", self.mode_list(), TRAIN_MODES)):
            unknown = [v for v in values if v not in known]
            if unknown or not values:
                raise ValueError(f"{flag}: expected a comma-separated subset of {', '.join(known)}, got {unknown or ''}")

    def size_list(self) -> list[int]:
        try:
            return [int(s) for s in self.sizes.split(",") if s.strip()]
        except ValueError as err:
            raise ValueError(f"--sizes must be comma-separated ints, got {self.sizes!r}") from err

    def precision_list(self) -> list[str]:
        return _items(self.precisions)

    def phase_list(self) -> list[str]:
        return _items(self.phases)

    def mode_list(self) -> list[str]:
        return _items(self.train_modes)


def _items(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _prompts(n: int, seed: int) -> list[list[dict[str, str]]]:
    """The first `n` problems of castrl train's default suite, in its default (oneshot) prompt style."""
    from castrl.data import build_prompt, load_problems

    problems = load_problems("arithmetic:add1,add2,mul21", split="train", seed=seed)
    if len(problems) < n:
        raise ValueError(f"asked for {n} prompts; the arithmetic suite's train split has {len(problems)}")
    return [build_prompt(p["problem"], "oneshot") for p in problems[:n]]


def _rollout_sampling() -> dict[str, Any]:
    """castrl train's rollout sampling (temperature, top-p, top-k), read from its config's defaults."""
    from castrl.trl import CASTTrainerConfig

    return {f.name: f.default for f in fields(CASTTrainerConfig) if f.name in ("temperature", "top_p", "top_k")}


def _decode(model, tokenizer, prompts, args: RooflineArguments, sampled: bool) -> Callable[[], int]:
    """A call that generates (castrl.rollouts' one generation engine) and returns the useful tokens."""
    from castrl.rollouts import generate_completions

    settings = (dict(do_sample=True, **_rollout_sampling(), num_return_sequences=args.group_size)
                if sampled else dict(do_sample=False))
    rows = len(prompts) * (args.group_size if sampled else 1)

    def run() -> int:
        tokens = 0
        for draw in range(args.draws if sampled else 1):
            torch.manual_seed(args.seed + draw)  # the same rollouts in every repeat
            done = generate_completions(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                        batch_size=rows, decoder=args.decoder, progress=False, **settings)
            tokens += sum(c.tokens for group in done for c in group)
        return tokens

    return run


def _next_token_logps(model, ids: torch.Tensor) -> torch.Tensor:
    """Log-probs of each next token, the log-softmax in fp32 (as every log-prob CAST reads)."""
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1]
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def _score(model, ids: torch.Tensor) -> Callable[[], int]:
    def run() -> int:
        model.eval()
        with torch.no_grad():
            _next_token_logps(model, ids)
        return ids.numel()

    return run


def _train(model, ids: torch.Tensor) -> Callable[[], int]:
    def run() -> int:
        model.train()
        model.zero_grad(set_to_none=True)
        (-_next_token_logps(model, ids).mean()).backward()
        return ids.numel()

    return run


def _train_model(base, mode: str, checkpointing: bool):
    """A copy of `base` to train in `mode`: LoRA with castrl train's default adapter, or every weight."""
    model = copy.deepcopy(base)
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if mode == "lora":
        from peft import get_peft_model

        from castrl.models import LoraSettings, peft_config

        model = get_peft_model(model, peft_config(LoraSettings()))
    else:
        model.requires_grad_(True)
    return model


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {"device": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
                            "cpu": platform.processor() or platform.machine(),
                            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


def run_roofline(args: RooflineArguments, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The roofs and one row per (phase, precision, mode); `log` hears each step as it finishes."""
    from castrl.models import load_checked, resolve_model

    device = resolve_device(args.device)
    roofs = measure_roofs(device, args.size_list(), args.matmul_repeats, args.precision_list(), args.max_phase_s)
    log("roofs: " + ", ".join(f"{p} {num(r['flops_per_s'] / 1e9, 1)} GFLOP/s" for p, r in roofs.items()))
    with user_input():
        model, tokenizer = load_checked(resolve_model(args.model, args.cache_dir), dtype="float32")
    model.to(device)
    params = matmul_params(model)
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len), generator=gen).to(device)
    rows = []
    for phase, mode, max_tokens, make in _jobs(args, model, tokenizer, ids):
        predicted = {p: FLOPS_PER_TOKEN[mode] * params * max_tokens / roofs[p]["flops_per_s"] * (args.repeats + 1)
                     for p in args.precision_list()}
        skipped = [p for p, seconds in predicted.items() if seconds > args.max_phase_s]
        for precision in skipped:
            rows.append({"phase": phase, "precision": precision, "mode": mode, "formula": FORMULA[mode],
                         "skipped_predicted_s": predicted[precision]})
            log(f"{phase} {mode} {precision}: skipped, >= {predicted[precision]:.0f} s predicted at the roof")
        if len(skipped) == len(predicted):
            continue
        call = make()
        for precision in args.precision_list():
            if precision in skipped:
                continue
            with precision_context(precision, device):
                call()  # warm-up
                seconds, tokens = best_of(call, args.repeats, device)
            rows.append(phase_row(phase, precision, mode, tokens, seconds, params, roofs))
            log(f"{phase} {mode} {precision}: {num(rows[-1]['tokens_per_s'], 1)} tokens/s, "
                f"{num(rows[-1]['roof_fraction'], 3)} of the roof")
        del call
    return {"machine": machine(device), "model": args.model, "params": params, "roofs": roofs, "rows": rows,
            "settings": asdict(args)}


def _jobs(args: RooflineArguments, model, tokenizer, ids: torch.Tensor) -> list[tuple[str, str, int, Callable]]:
    """(phase, mode, most tokens it can count, a maker of its timed call) for each phase asked for; the
    makers run only for phases that are measured (a LoRA copy of the model is not free)."""
    phases = args.phase_list()
    jobs: list[tuple[str, str, int, Callable]] = []
    if "decode" in phases:
        jobs.append(("decode", "forward", args.draws * args.prompts * args.group_size * args.max_new_tokens,
                     lambda: _decode(model, tokenizer, _prompts(args.prompts, args.seed), args, True)))
    if "greedy" in phases:
        jobs.append(("greedy", "forward", args.eval_prompts * args.max_new_tokens,
                     lambda: _decode(model, tokenizer, _prompts(args.eval_prompts, args.seed), args, False)))
    if "score" in phases:
        jobs.append(("score", "forward", ids.numel(), lambda: _score(model, ids)))
    if "train" in phases:
        for mode in args.mode_list():
            jobs.append(("train", mode, ids.numel(),
                         lambda mode=mode: _train(_train_model(model, mode, args.gradient_checkpointing), ids)))
    return jobs


def table(result: dict[str, Any]) -> str:
    """The markdown table of `run_roofline`'s result, roofs first."""
    lines = [f"machine: {result['machine']['cpu']}" + (f", {result['machine']['gpu']}" if "gpu" in result["machine"] else "")
             + f" ({result['machine']['device']}, {result['machine']['threads']} torch threads, "
             f"cpu capability {result['machine']['cpu_capability']}); P = {result['params'] / 1e6:.1f} M linear weights",
             "", "| roof | GFLOP/s | by matmul size |", "|---|---|---|"]
    for precision, roof in result["roofs"].items():
        sizes = ", ".join(f"{n}: {num(v / 1e9, 1)}" for n, v in roof["by_size"].items())
        sizes += "".join(f", {n}: skipped (too slow)" for n in roof.get("skipped_sizes", []))
        lines.append(f"| {precision} matmul | {num(roof['flops_per_s'] / 1e9, 1)} | {sizes} |")
    lines += ["", "| phase | mode | precision | tokens | s | tokens/s | FLOPs/token | GFLOP/s | fraction of roof |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "skipped_predicted_s" in r:
            lines.append(f"| {r['phase']} | {r['mode']} | {r['precision']} | skipped: >= {r['skipped_predicted_s']:.0f} s "
                         "predicted at the roof (--max_phase_s) | | | | | |")
            continue
        lines.append(f"| {r['phase']} | {r['mode']} | {r['precision']} | {r['tokens']} | {num(r['seconds'], 2)} | "
                     f"{num(r['tokens_per_s'], 1)} | {r['formula']} | {num(r['flops_per_s'] / 1e9, 1)} | "
                     f"{num(r['roof_fraction'], 3)} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> RooflineArguments:
    """`RooflineArguments` from flags (and `--config`); ValueError naming the flag when invalid."""
    (args,) = parse_dataclasses([RooflineArguments], list(argv), prog="castrl bench roofline",
                                description=" ".join(__doc__.split("\n\n")[0].split()))
    return args


def main(argv: list[str]) -> int:
    """`castrl bench roofline [flags]`: measure, print the table and the command that reproduces it.

    Input mistakes raise `UserInputError` (`castrl.cli` prints one line and exits 2)."""
    import sys

    with user_input():
        args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_roofline(args, log=lambda line: print(f"[bench roofline] {line}", file=sys.stderr, flush=True))
    command = f"castrl bench roofline {shlex.join(argv)}"
    result["command"] = command
    print(table(result))
    print(f"\nreproduce: {command}  (torch threads {torch.get_num_threads()})")
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(args.output_dir) / "roofline.json", result, indent=2)
    return 0
