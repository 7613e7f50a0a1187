"""Micro-benchmark of the pure core: CAST token advantages vs the `grpo` estimator, on CPU.

Why: CAST adds per-token work (gap sanitising, weights, flips, gap statistics) on top of GRPO's
broadcast; the budget is CAST <= 3x GRPO time at B=512, T=2048 (the paper's rule is simpler than v1's). Both estimators are called
through their public entry points with their stats dicts, exactly as a trainer calls them; GRPO gets
no teacher log-probs (it needs none). Timings interleave the two so machine noise hits both alike.

    castrl bench core --B 512 --T 2048 --group_size 8 --repeats 20 --threads 1 --json bench_core.json

Tokens/s counts all B*T positions (padding included), the work the tensors actually do. The
verdict uses median wall time; the median process-CPU-time ratio is printed too, because on a busy
machine it is the steadier of the two.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from castrl.arguments import RuntimeArguments, SamplingArguments
from castrl.bench.common.arguments import BenchArguments
from castrl.command_line import parse_dataclasses, user_input
from castrl.config_fields import adapted, with_fields_of
from castrl.core import CastConfig, cast_advantages, compute_advantages
from castrl.formatting import num, write_json

TARGET_RATIO = 3.0  # cast must take <= 3x the grpo estimator's time


def make_batch(B: int, T: int, group_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Random batch: 0/1 rewards in groups of `group_size`, log-probs in (-3, 0], random-length padding.

    Gaps have std 0.2 (SmolLM2 shows 0.13-0.18, spec §2.4), so a realistic share of tokens flips.
    """
    gen = torch.Generator().manual_seed(seed)
    rewards = (torch.rand(B, generator=gen) < 0.5).float()
    group_ids = torch.arange(B) // group_size
    student = -3.0 * torch.rand(B, T, generator=gen)
    teacher = student + 0.2 * torch.randn(B, T, generator=gen)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return {"rewards": rewards, "group_ids": group_ids, "student": student, "teacher": teacher, "mask": mask}


def _time_once(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call; CPU time ignores waiting on a busy machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds per call of each fn; fns alternate in each repeat so load spikes hit all."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_time_once(fn))
    return times


def run_core_bench(
    B: int = 512, T: int = 2048, repeats: int = 20, warmup: int = 3, group_size: int = 8, seed: int = 0
) -> dict[str, float]:
    """Time `cast_advantages` (default CastConfig) and `grpo` on one random batch; medians and tokens/s."""
    batch = make_batch(B, T, group_size, seed)
    rewards, group_ids, mask = batch["rewards"], batch["group_ids"], batch["mask"]
    cfg = CastConfig()
    fns = {
        "grpo": lambda: compute_advantages("grpo", rewards, group_ids, batch["student"], None, mask),
        "cast": lambda: cast_advantages(rewards, group_ids, batch["student"], batch["teacher"], mask, cfg),
    }
    times = time_interleaved(fns, repeats, warmup)
    result: dict[str, float] = {"B": B, "T": T, "repeats": repeats, "threads": torch.get_num_threads()}
    for name, ts in times.items():
        wall = [t[0] for t in ts]
        median = statistics.median(wall)
        result[f"{name}_median_s"] = median
        result[f"{name}_min_s"] = min(wall)
        result[f"{name}_cpu_median_s"] = statistics.median(t[1] for t in ts)
        result[f"{name}_tokens_per_s"] = B * T / median if median > 0 else math.inf
    result["ratio_cast_over_grpo"] = result["cast_median_s"] / result["grpo_median_s"]
    grpo_cpu = result["grpo_cpu_median_s"]
    result["ratio_cpu_cast_over_grpo"] = result["cast_cpu_median_s"] / grpo_cpu if grpo_cpu > 0 else math.nan
    result["real_token_frac"] = float(mask.float().mean())
    return result


@dataclass
@with_fields_of(SamplingArguments, only=("group_size",))
@with_fields_of(RuntimeArguments, only=("threads", "seed"), convert=adapted(notes={"seed": "It draws the random batch."}))
@with_fields_of(BenchArguments, only=("repeats", "json"), convert=adapted(
    defaults={"repeats": 20}, notes={"repeats": "Here: calls per estimator (the median is reported)."}))
class CoreArguments:
    """The flags of `castrl bench core` (TRL-style underscores, as every castrl command); `group_size`,
    `threads` and `seed` are the shared vocabulary's (`castrl.arguments`), `repeats` and `json` the
    bench's (`castrl.bench.common.arguments`)."""

    B: int = field(default=512, metadata={"help": "Rollouts per batch."})
    T: int = field(default=2048, metadata={"help": "Completion tokens per rollout (padded length)."})
    warmup: int = field(default=3, metadata={"help": "Untimed calls per estimator first."})

    def __post_init__(self) -> None:
        for name in ("B", "T", "group_size", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")


def parse_args(argv: list[str]) -> CoreArguments:
    """`CoreArguments` from flags (and `--config`); ValueError naming the flag when invalid."""
    (args,) = parse_dataclasses([CoreArguments], argv, prog="castrl bench core", description=__doc__.splitlines()[0])
    return args


def reproduce_command(args: CoreArguments, threads: int) -> str:
    """The `castrl bench core` line that reruns this measurement (with the thread count it ran with)."""
    return (f"castrl bench core --B {args.B} --T {args.T} --group_size {args.group_size} --repeats {args.repeats} "
            f"--warmup {args.warmup} --threads {threads} --seed {args.seed}")


def main(argv: list[str]) -> int:
    """`castrl bench core [flags]`: run, print a summary (and the command that reproduces it).

    Input mistakes raise `UserInputError` (`castrl.cli` prints one line and exits 2)."""
    with user_input():
        args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_core_bench(args.B, args.T, args.repeats, args.warmup, args.group_size, args.seed)
    command = reproduce_command(args, result["threads"])
    verdict = "OK" if result["ratio_cast_over_grpo"] <= TARGET_RATIO else "ABOVE TARGET"
    print(
        f"castrl core bench: B={args.B} T={args.T} (real tokens {result['real_token_frac']:.0%}), "
        f"torch threads={result['threads']}, median of {args.repeats}"
    )
    for name in ("grpo", "cast"):
        print(
            f"  {name:4s}: {result[f'{name}_median_s'] * 1e3:8.2f} ms  "
            f"{result[f'{name}_tokens_per_s'] / 1e6:8.2f} M tokens/s"
        )
    print(
        f"  cast/grpo time ratio: {num(result['ratio_cast_over_grpo'], 2)} (target <= {TARGET_RATIO:g}: {verdict}); "
        f"CPU-time ratio {num(result['ratio_cpu_cast_over_grpo'], 2)}"
    )
    print(f"  reproduce: {command}")
    if args.json is not None:
        write_json(args.json, {**result, "command": command}, indent=2)
    return 0
