"""The gap's noise floor: how far g = u - s moves when the same tokens are scored in ways that should not
matter, and how many of CAST's flips lie below that.

CAST flips every token whose gap sign disagrees with its rollout's base advantage, with no threshold
(spec §2), so a token with |g| ~ 1e-4 flips at full |B| exactly like one with |g| ~ 1. A trainer's
gaps come from passes that differ from a diagnosis's in ways that are mathematically equivalent:
the student's log-probs from the training forward (`fuse_student_pass`), a shared prompt KV cache
(`share_prompt_cache`), another micro-batch split (other padding, other matmul shapes), bf16. Each
changes g by rounding only; where |g| is below that rounding, the flip's direction is decided by the
numerics, not by the teacher. `VARIANTS` re-scores the diagnosis's own tokens each of those ways:

- `batch_split`: a quarter of `score_batch_size` rows per forward pass (other padding, other shapes);
- `prompt_cache`: each distinct prompt run once and its KV cache reused by its rows (positions counted
  from the padded start, as TRL's passes count them; RoPE makes that offset a rounding difference);
- `grad_forward`: the student's log-probs from a forward with autograd on, in train mode, in
  micro-batches of half the size, as the fused student pass takes them from the loss's forward (the
  teacher is not re-scored: the trainer always scores it without gradient);
- `bf16`: both passes under bf16 autocast (log-softmax in fp32), where the hardware computes bf16 natively
  (`bf16_native`: a CUDA device that supports it, or a CPU with AVX512-BF16 / AMX). Elsewhere bf16 is
  emulated, several times slower than fp32, so nobody trains in it there and the variant is skipped
  (`variants_for`), unless asked for by name.

`noise_floor` turns the re-scored gaps into p50 / p95 of |Δg| per variant, pooled per precision and
over all, the share of CAST's flips whose |g| is at most that p95, and the share of tokens whose CAST
advantage changes sign. `noise_warning` is the line a verdict gets when that share is large.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from castrl.core import CastConfig, cast_advantages, cast_base, cast_flip_masks
from castrl.core.inputs import prepare_batch
from castrl.rollouts.batching import left_pad
from castrl.rollouts.prompt_cache import completion_logps_shared_prompts
from castrl.rollouts.scoring import chunk_logps, completion_logps

VARIANTS: tuple[str, ...] = ("batch_split", "prompt_cache", "grad_forward", "bf16")
PRECISION: dict[str, str] = {"batch_split": "fp32", "prompt_cache": "fp32", "grad_forward": "fp32", "bf16": "bf16"}
STUDENT_ONLY: tuple[str, ...] = ("grad_forward",)  # variants that change the student's pass only
# From this share of CAST's flips at or below the noise p95, the verdict says rounding decides them [R].
NOISE_SHARE_WARN = 0.10

Rows = Sequence[Sequence[int]]


@dataclass(frozen=True)
class Rescored:
    """One variant's re-scored log-probs: the student's, and each teacher's by its name. Kept apart (not one
    dict with a "student" key) because a teacher context may itself be named `student` (the student's own
    prompt read by other weights, as in the bench's positive control)."""

    student: torch.Tensor  # (B, T)
    teachers: dict[str, torch.Tensor]  # teacher name -> (B, T); empty for a STUDENT_ONLY variant


def _cached(model: Any, rows: Rows, completion_ids: torch.Tensor, mask: torch.Tensor, temperature: float,
            pad_id: int, batch_size: int) -> torch.Tensor:
    ids, attn, _ = left_pad(rows, pad_id)
    device = model.device
    out = completion_logps_shared_prompts(model, ids.to(device), attn.to(device), completion_ids.to(device),
                                          mask.to(device), batch_size, temperature=temperature)
    if out is None:
        raise ValueError("prompt_cache: this model's KV cache is not plain key/value; leave out the variant")
    return out.cpu() * mask


def _grad_forward(model: Any, rows: Rows, completion_ids: torch.Tensor, mask: torch.Tensor, temperature: float,
                  pad_id: int, batch_size: int) -> torch.Tensor:
    size = max(1, batch_size // 2)
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad():
            parts = [chunk_logps(model, rows[i : i + size], completion_ids[i : i + size], mask[i : i + size],
                                  temperature, pad_id).detach() for i in range(0, completion_ids.shape[0], size)]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def score_variant(variant: str, model: Any, rows: Rows, completion_ids: torch.Tensor, mask: torch.Tensor, *,
                  temperature: float, pad_id: int, batch_size: int) -> torch.Tensor:
    """(B, T) fp32 log-probs of `completion_ids` after `rows`, scored the `variant` way (`VARIANTS`)."""
    common = dict(temperature=temperature, pad_id=pad_id)
    if variant == "batch_split":
        return completion_logps(model, rows, completion_ids, mask, batch_size=max(1, batch_size // 4),
                                progress=False, **common)
    if variant == "prompt_cache":
        return _cached(model, rows, completion_ids, mask, batch_size=batch_size, **common)
    if variant == "grad_forward":
        return _grad_forward(model, rows, completion_ids, mask, batch_size=batch_size, **common)
    if variant == "bf16":
        device = model.device.type if hasattr(model, "device") else "cpu"
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            return completion_logps(model, rows, completion_ids, mask, batch_size=batch_size, progress=False,
                                    **common)
    raise ValueError(f"unknown noise variant {variant!r}; known: {', '.join(VARIANTS)}")


def bf16_native(device: str | torch.device) -> bool:
    """Whether `device` computes bf16 matmuls natively: CUDA with bf16 support, or a CPU whose flags list
    AVX512-BF16 or AMX-BF16 (Linux /proc/cpuinfo; False where it cannot be read)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def variants_for(device: str | torch.device) -> tuple[str, ...]:
    """The default `VARIANTS` on `device`: bf16 only where it is native (`bf16_native`)."""
    return VARIANTS if bf16_native(device) else tuple(v for v in VARIANTS if v != "bf16")


def _quantile(values: torch.Tensor, q: float) -> float:
    """Nearest-rank quantile (as `analysis.summarize`); NaN when empty."""
    if values.numel() == 0:
        return math.nan
    ordered = values.double().sort().values
    return float(ordered[round(q * (ordered.numel() - 1))])


def _share(hit: torch.Tensor, among: torch.Tensor) -> float:
    n = int(among.sum())
    return float((hit & among).sum()) / n if n else math.nan


def _summary(delta: torch.Tensor, gap: torch.Tensor, flipped: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """p50 / p95 / max of |Δg| over real tokens, and the share of flips with |g| <= that p95."""
    p95 = _quantile(delta, 0.95)
    return {
        "abs_delta_p50": _quantile(delta, 0.5),
        "abs_delta_p95": p95,
        "abs_delta_max": float(delta.max()) if delta.numel() else math.nan,
        "frac_flips_below_p95": _share(gap.abs() <= p95, flipped & real) if math.isfinite(p95) else math.nan,
        "n_flips": float((flipped & real).sum()),
    }


def noise_floor(
    gap: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    flipped: torch.Tensor,
    variants: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
) -> dict[str, Any]:
    """The noise floor of one teacher's gap. `gap` (B, T) the reference gap (sanitised, 0 on padding),
    `adv` its CAST advantages, `flipped` (B, T) bool the tokens CAST flips with it, `variants`:
    name -> (gap, CAST advantages) of the same tokens re-scored that way. Returns per variant and pooled
    per precision (`PRECISION`) and over `all`: `_summary`, plus `frac_sign_changed` (share of real tokens
    whose CAST advantage changes sign: >, <, or = 0)."""
    real = mask > 0
    out: dict[str, Any] = {"variants": {}, "pooled": {}}
    pooled: dict[str, list[torch.Tensor]] = {}
    changed: dict[str, list[torch.Tensor]] = {}
    for name, (gap_v, adv_v) in variants.items():
        delta = (gap_v - gap)[real].abs()
        sign_changed = torch.sign(adv_v) != torch.sign(adv)
        out["variants"][name] = {"precision": PRECISION.get(name, "fp32"), **_summary(delta, gap, flipped, real),
                                 "frac_sign_changed": _share(sign_changed, real)}
        for key in (PRECISION.get(name, "fp32"), "all"):
            pooled.setdefault(key, []).append(delta)
            changed.setdefault(key, []).append(sign_changed[real].float())
    for key, deltas in pooled.items():
        flat = torch.cat(deltas)
        summary = _summary(flat, gap, flipped, real)
        summary["frac_sign_changed"] = float(torch.cat(changed[key]).mean()) if flat.numel() else math.nan
        out["pooled"][key] = summary
    return out


def noise_warning(floor: Mapping[str, Any], threshold: float = NOISE_SHARE_WARN) -> str | None:
    """A verdict clause when at least `threshold` of CAST's flips lie at or below the pooled fp32 noise
    p95 (the bf16 share is named beside it); None when the share is smaller or there is no flip."""
    fp32 = floor.get("pooled", {}).get("fp32") or floor.get("pooled", {}).get("all")
    if not fp32 or not math.isfinite(fp32.get("frac_flips_below_p95", math.nan)):
        return None
    share, p95 = fp32["frac_flips_below_p95"], fp32["abs_delta_p95"]
    if share < threshold:
        return None
    bf16 = floor["pooled"].get("bf16")
    also = (f"; {bf16['frac_flips_below_p95']:.0%} below the bf16 noise (p95 |Δg| {bf16['abs_delta_p95']:.2g})"
            if bf16 and math.isfinite(bf16.get("frac_flips_below_p95", math.nan)) else "")
    return (f"{share:.0%} of CAST's flips have |g| at or below the fp32 scoring noise (p95 |Δg| {p95:.2g} over "
            f"{', '.join(n for n, v in floor['variants'].items() if v['precision'] == 'fp32')}){also}: rounding, "
            f"not the teacher, sets their direction; --flip_margin {p95:.2g} leaves them unflipped")


def measure(
    model: Any,
    student_rows: Rows,
    teacher_rows: Mapping[str, Rows],
    completion_ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float,
    pad_id: int,
    batch_size: int,
    teacher_scope: Callable[[str], AbstractContextManager[Any]] | None = None,
    variants: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, Rescored]:
    """variant -> `Rescored`: the student's and each teacher's (B, T) log-probs, every pass re-scored the
    variant's way (a `STUDENT_ONLY` variant leaves the teachers out: the caller keeps their reference
    scores). `teacher_scope(name)` is a context that yields the module scoring as that teacher (None:
    `model` itself). `variants` None: `variants_for` the model's device. `timings` gets `noise_<variant>_s`."""
    out: dict[str, Rescored] = {}
    kwargs = dict(temperature=temperature, pad_id=pad_id, batch_size=batch_size)
    unknown = [v for v in variants or () if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown noise variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    for variant in variants_for(getattr(model, "device", "cpu")) if variants is None else variants:
        if progress:
            progress(variant)
        start = time.perf_counter()
        student = score_variant(variant, model, student_rows, completion_ids, mask, **kwargs)
        teachers: dict[str, torch.Tensor] = {}
        if variant not in STUDENT_ONLY:
            for name, rows in teacher_rows.items():
                with teacher_scope(name) if teacher_scope else nullcontext(model) as scorer:
                    teachers[name] = score_variant(variant, scorer, rows, completion_ids, mask, **kwargs)
        out[variant] = Rescored(student, teachers)
        if timings is not None:
            timings[f"noise_{variant}_s"] = time.perf_counter() - start
    return out


def teacher_noise_floor(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor,
    config: CastConfig,
    rescored: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
) -> dict[str, Any]:
    """`noise_floor` of one teacher from log-probs: the reference (student, teacher) and, per variant,
    the re-scored (student, teacher), each (B, T). Gaps, flips and advantages are the core's, as a CAST
    training step (optimizer step 0) would compute them."""
    batch = prepare_batch(rewards, group_ids, student, teacher, mask, config, True, "cast")
    down, up = cast_flip_masks(cast_base(batch, config), batch.gap, config)
    adv, _ = cast_advantages(rewards, group_ids, student, teacher, mask, config)
    variants = {}
    for name, (student_v, teacher_v) in rescored.items():
        batch_v = prepare_batch(rewards, group_ids, student_v, teacher_v, mask, config, True, "cast")
        adv_v, _ = cast_advantages(rewards, group_ids, student_v, teacher_v, mask, config)
        variants[name] = (batch_v.gap, adv_v)
    return noise_floor(batch.gap, adv, mask, down | up, variants)
