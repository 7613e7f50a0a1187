"""A machine's matmul roofs and a phase's fraction of them: what `castrl bench roofline` measures and
`castrl bench steptime --roofline` reuses for a training step's phases.

FLOPs are counted from P, the weights of the model's linear layers (its LM head included, each shared
weight once; embedding lookups are free): 2·P per token forward, 6·P forward + backward with full
fine-tuning, ~4·P with LoRA (`FLOPS_PER_TOKEN`). The roof is the best FLOP/s of square matmuls laid out
as `nn.Linear` runs them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
# FLOPs per token in units of P (the linear layers' weights); the formula is printed with each row.
FLOPS_PER_TOKEN = {"forward": 2, "full": 6, "lora": 4}
FORMULA = {"forward": "2·P", "full": "6·P", "lora": "~4·P"}


def resolve_device(name: str) -> torch.device:
    """`auto` is cuda when available, else cpu."""
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn: Callable[[], Any], repeats: int, device: torch.device) -> tuple[float, Any]:
    """(seconds, result) of the fastest of `repeats` calls: the least disturbed by other work on the machine."""
    best, result = math.inf, None
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        seconds = time.perf_counter() - start
        if seconds < best:
            best, result = seconds, out
    return best, result


def matmul_roof(dtype: torch.dtype, sizes: Sequence[int], repeats: int, device: torch.device,
                max_seconds: float = 60.0) -> dict[str, Any]:
    """Best FLOP/s of square `n × n` matmuls in `dtype` (2·n³ FLOPs each), over `sizes`, laid out as
    `nn.Linear` runs them (`x @ Wᵀ`, `F.linear`): on a CPU without bf16 units the layout alone changes
    bf16 speed ~7x (this project's AMD EPYC, one thread: `torch.mm(a, b)` 1.5 GFLOP/s, `F.linear` 11).

    Sizes run smallest first; one whose warm-up and repeats would take more than `max_seconds` at the
    best rate so far is skipped (and named)."""
    by_size: dict[str, float] = {}
    skipped = []
    gen = torch.Generator().manual_seed(0)
    for n in sorted(sizes):
        if by_size and 2 * n**3 / max(by_size.values()) * (repeats + 1) > max_seconds:
            skipped.append(n)
            continue
        a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        torch.nn.functional.linear(a, b)  # warm-up: kernel selection, first-touch of the output
        seconds, _ = best_of(lambda a=a, b=b: torch.nn.functional.linear(a, b), repeats, device)
        by_size[str(n)] = 2 * n**3 / seconds
    return {"flops_per_s": max(by_size.values()), "by_size": by_size, "skipped_sizes": skipped}


def measure_roofs(device: torch.device, sizes: Sequence[int] = (512, 1024, 2048), repeats: int = 5,
                  precisions: Sequence[str] = tuple(PRECISIONS), max_seconds: float = 60.0) -> dict[str, dict[str, Any]]:
    """{precision: matmul_roof(...)}: the ceilings every phase is measured against."""
    return {p: matmul_roof(PRECISIONS[p], sizes, repeats, device, max_seconds) for p in precisions}


def matmul_params(model: torch.nn.Module) -> int:
    """P: the weights of the model's linear layers (the LM head included), a tied weight counted once."""
    seen: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            seen[id(module.weight)] = module.weight.numel()
    return sum(seen.values())


def precision_context(precision: str, device: torch.device) -> AbstractContextManager:
    """bf16: autocast over the fp32 weights (what accelerate does for `--bf16 true`); fp32: nothing."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def phase_row(phase: str, precision: str, mode: str, tokens: int, seconds: float, params: int,
              roofs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One table row: tokens/s, achieved FLOP/s (FLOPS_PER_TOKEN[mode] · P per token) and the fraction of
    the matching precision's roof."""
    flops_per_s = FLOPS_PER_TOKEN[mode] * params * tokens / seconds
    roof = roofs[precision]["flops_per_s"]
    return {"phase": phase, "precision": precision, "mode": mode, "formula": FORMULA[mode], "tokens": tokens,
            "seconds": seconds, "tokens_per_s": tokens / seconds, "flops_per_s": flops_per_s,
            "roof_flops_per_s": roof, "roof_fraction": flops_per_s / roof}
