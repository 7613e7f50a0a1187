"""One diagnosis end to end: settings -> problems -> groups -> rewards -> student/teacher scores -> numbers.

The groups and the scores are `castrl.rollouts`'s (the passes castrl runs without a trainer), the teachers
`castrl.teacher.build_teacher`'s (`scores.py`), the rewards the verifier's, the numbers `analysis.py`'s
(and `noise.py`'s noise floor).

Settings and problems are validated in `settings` before the model loads; the defaults fit the
10-minute budget of the bundled SmolLM2-135M on 2 CPU cores.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from castrl.data import build_prompt
from castrl.models import load_checked
from castrl.rollouts import Rollouts, prompt_ids, sample_groups
from castrl.teacher import PEER_FALLBACK_CONTEXT, context_uses

from . import noise
from .analysis import analyze
from .scores import Scored, peer_texts, score_rollouts, teacher_weights_note
from .settings import DiagnoseSettings, check_context_columns, select_problems

__all__ = [
    "DiagnoseSettings",
    "DiagnosticsRun",
    "check_context_columns",
    "peer_texts",
    "run_diagnostics",
    "select_problems",
]

RewardFn = Callable[[list[str], list[str]], list[float | None]]


@dataclass
class DiagnosticsRun:
    """A finished diagnosis: the raw tensors (scorable rows only, B rows) and every number."""

    settings: DiagnoseSettings
    problems: list[dict[str, Any]]
    rollouts: Rollouts  # all sampled rows
    kept: torch.Tensor  # (B_all,) bool, rows whose gold the verifier could parse
    rewards: torch.Tensor  # (B,) fp32
    group_ids: torch.Tensor  # (B,) long
    mask: torch.Tensor  # (B, T) fp32
    student_logps: torch.Tensor  # (B, T) fp32
    teacher_logps: dict[str, torch.Tensor]  # name -> (B, T) fp32
    results: dict[str, Any]
    timings: dict[str, float]
    notes: dict[str, str]
    peers: list[str | None] | None = None  # all sampled rows: the with_peer_success peer text, or None


def load_model(settings: DiagnoseSettings) -> tuple[Any, Any]:
    """Model (with `--adapter` on it, in eval mode) and tokenizer; ValueError naming --model if it cannot load."""
    model, tokenizer = load_checked(settings.model, dtype=settings.dtype, cache_dir=settings.cache_dir)
    if settings.lora_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, settings.lora_adapter)
    return model.eval(), tokenizer


def _verify(settings: DiagnoseSettings, texts: list[str], golds: list[str]) -> list[float | None]:
    from castrl.rewards import Verifier

    with Verifier(timeout_s=settings.verifier_timeout_s, num_workers=2) as verifier:
        return verifier.score_batch(texts, golds)


def _sample_and_verify(
    settings: DiagnoseSettings,
    model: Any,
    tokenizer: Any,
    problems: Sequence[dict[str, Any]],
    student_ids: list[list[int]],
    reward_fn: RewardFn | None,
    timings: dict[str, float],
) -> tuple[Rollouts, list[float | None]]:
    """Sampled groups and one reward per row (None where the gold cannot be parsed)."""
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    rollouts = sample_groups(
        model,
        tokenizer,
        student_ids,
        group_size=settings.group_size,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        batch_size=settings.gen_batch_size,
        decoder=settings.decoder,
        progress=settings.progress,
    )
    timings["sample_s"] = time.perf_counter() - start
    start = time.perf_counter()
    golds = [problems[int(i)]["answer"] for i in rollouts.group_ids]
    rewards = (reward_fn or (lambda t, g: _verify(settings, t, g)))(rollouts.texts, golds)
    timings["verify_s"] = time.perf_counter() - start
    if len(rewards) != len(golds):
        raise ValueError(f"reward_fn returned {len(rewards)} rewards for {len(golds)} completions")
    return rollouts, rewards


def _analysed_mask(settings: DiagnoseSettings, mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """The tokens every statistic reads: with --mask_truncated_completions (the trainer's default, spec §4)
    no token of a cut-off completion counts; ValueError when that leaves none."""
    if not settings.mask_truncated_completions:
        return mask
    mask = mask * (~truncated).to(mask.dtype)[:, None]
    if not (mask > 0).any():
        raise ValueError(
            f"every scored rollout hit --max_new_tokens {settings.max_new_tokens} without an end token, so "
            "with --mask_truncated_completions true (the trainer's default) no token is left to analyse; "
            "raise --max_new_tokens, or pass --mask_truncated_completions false to score cut-off completions"
        )
    return mask


def run_diagnostics(
    settings: DiagnoseSettings,
    *,
    model: Any = None,
    tokenizer: Any = None,
    reward_fn: RewardFn | None = None,
    problems: list[dict[str, Any]] | None = None,
    student_prompts: list[Any] | None = None,
) -> DiagnosticsRun:
    """Sample, verify, score and analyse. `model`/`tokenizer` skip loading, `problems` skips
    `select_problems`, `reward_fn(texts, golds)` replaces the math-verify verifier (tests), and
    `student_prompts` (one per problem: chat messages, or plain strings for a model without a chat
    template, e.g. the bench's from-scratch model) replace `build_prompt(problem, settings.prompt_style)`."""
    timings: dict[str, float] = {}
    problems = select_problems(settings) if problems is None else problems
    if settings.threads:
        torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    if model is None or tokenizer is None:
        model, tokenizer = load_model(settings)
    timings["load_s"] = time.perf_counter() - start
    student_prompts = _student_prompts(settings, problems, student_prompts)
    student_ids = prompt_ids(tokenizer, student_prompts)
    # rollouts and their rewards (castrl.rollouts, the verifier)
    rollouts, rewards = _sample_and_verify(settings, model, tokenizer, problems, student_ids, reward_fn, timings)
    kept = torch.tensor([r is not None for r in rewards])
    if not kept.any():
        raise ValueError(
            f"no rollout could be scored: the verifier cannot parse any gold answer of {settings.data!r}"
        )
    # the student's and every teacher's log-probs (scores.py)
    peers = peer_texts(rollouts.texts, rewards, rollouts.group_ids.tolist(), settings.correct_threshold,
                       rollouts.truncated.tolist())  # fmt: skip
    examples = [{**p, "prompt": prompt} for p, prompt in zip(problems, student_prompts, strict=True)]
    scored = score_rollouts(settings, model, tokenizer, examples, student_ids, rollouts, peers, timings)
    # the numbers, on the rows whose gold the verifier could parse (analysis.py, noise.py)
    start = time.perf_counter()
    reward_t = torch.tensor([r for r in rewards if r is not None], dtype=torch.float32)
    mask, group_ids, student = rollouts.mask[kept], rollouts.group_ids[kept], scored.student[kept]
    mask = _analysed_mask(settings, mask, rollouts.truncated[kept])
    teachers = {k: v[kept] for k, v in scored.teachers.items()}
    config = settings.cast_config()
    results = analyze(
        reward_t, group_ids, student, teachers, mask, config, position_bins=settings.position_bins
    )
    timings["analysis_s"] = time.perf_counter() - start
    if settings.noise_floor:
        _add_noise_floor(settings, model, tokenizer, rollouts, scored, kept, results, timings,
                         (reward_t, group_ids, student, teachers, mask, config))  # fmt: skip
    start = time.perf_counter()
    results["groups"]["unscorable_count"] = float((~kept).sum())
    results["groups"]["truncated_frac"] = float(rollouts.truncated[kept].float().mean())
    _describe_extremes(results, rollouts, kept, tokenizer, problems)
    timings["analysis_s"] += time.perf_counter() - start
    notes = _notes(settings, model, results, scored.prompts_cut, kept, peers)
    tensors = dict(kept=kept, rewards=reward_t, group_ids=group_ids, mask=mask, student_logps=student)
    return DiagnosticsRun(
        settings,
        problems,
        rollouts,
        **tensors,
        teacher_logps=teachers,
        results=results,
        timings=timings,
        notes=notes,
        peers=peers,
    )


def _student_prompts(
    settings: DiagnoseSettings, problems: Sequence[dict[str, Any]], given: list[Any] | None
) -> list[Any]:
    """One student prompt per problem: `given`, or each problem in `settings.prompt_style`."""
    if given is None:
        return [build_prompt(p["problem"], settings.prompt_style) for p in problems]
    if len(given) != len(problems):
        raise ValueError(f"student_prompts has {len(given)} prompts for {len(problems)} problems")
    return given


def _notes(
    settings: DiagnoseSettings,
    model: Any,
    results: dict[str, Any],
    prompts_cut: dict[str, int],
    kept: torch.Tensor,
    peers: Sequence[str | None],
) -> dict[str, str]:
    """The report's notes on how the teachers scored: their weights, cut prompts and peer fallbacks (each
    count also goes into the teacher's results)."""
    notes = {"teacher_weights": teacher_weights_note(settings.teacher_weights, model)}
    if settings.teacher_model is not None:
        notes["teacher_weights"] = f"external teacher model {settings.teacher_model!r} (teacher_weights does not apply)"
    for context, n_cut in prompts_cut.items():
        results["teachers"][context]["teacher_prompts_cut"] = float(n_cut)
        if n_cut:
            notes[f"{context} prompts"] = (
                f"{n_cut} teacher prompts were longer than --teacher_max_prompt_length "
                f"{settings.teacher_max_prompt_length} and were cut from the left"
            )
    for context in settings.teachers:
        if context_uses(settings.teacher_config(context).context, "peer"):
            fallback = sum(
                1 for keep, peer in zip(kept.tolist(), peers, strict=True) if keep and peer is None
            )
            results["teachers"][context]["peer_fallback_count"] = float(fallback)
            notes[context] = (
                f"{fallback} of {int(kept.sum())} scored rollouts had no other correct, untruncated rollout in "
                f"their group and were scored with the {PEER_FALLBACK_CONTEXT} context instead"
            )
    return notes


def _add_noise_floor(settings, model, tokenizer, rollouts, scored: Scored, kept, results, timings, analysed) -> None:
    """Re-score the diagnosis's tokens each `noise.VARIANTS` way; per teacher, `results["teachers"][name]
    ["noise_floor"]`, and the verdict gets `noise.noise_warning`'s clause when many flips lie below it."""
    start = time.perf_counter()
    variants = noise.measure(
        model, scored.student_rows, scored.teacher_rows, rollouts.completion_ids, rollouts.mask,
        temperature=settings.temperature, pad_id=tokenizer.pad_token_id, batch_size=settings.score_batch_size,
        teacher_scope=scored.scope, variants=settings.noise_variant_list(),
        progress=(lambda v: print(f"[diagnose] noise floor: {v}", flush=True)) if settings.progress else None,
        timings=timings,
    )  # fmt: skip
    skipped = [v for v in noise.VARIANTS if v not in variants]
    if skipped:
        results["groups"]["noise_variants_skipped"] = skipped
    rewards, group_ids, student, teachers, mask, config = analysed
    for name, teacher in teachers.items():
        rescored = {v: (r.student[kept], r.teachers[name][kept] if name in r.teachers else teacher)
                    for v, r in variants.items()}
        floor = noise.teacher_noise_floor(rewards, group_ids, student, teacher, mask, config, rescored)
        entry = results["teachers"][name]
        entry["noise_floor"] = floor
        warning = noise.noise_warning(floor)
        if warning:
            entry["verdict"] = f"{entry['verdict']}; {warning}"
    timings["noise_floor_s"] = time.perf_counter() - start


def _describe_extremes(
    results: dict[str, Any],
    rollouts: Rollouts,
    kept: torch.Tensor,
    tokenizer: Any,
    problems: Sequence[dict[str, Any]],
    context_tokens: int = 12,
) -> None:
    """Replace (row, t, g) triples by readable records: problem id, token text, preceding text."""
    rows = kept.nonzero().flatten().tolist()
    for teacher in results["teachers"].values():
        for kind, triples in teacher["extremes"].items():
            described = []
            for row, t, g in triples:
                ids = rollouts.completion_ids[rows[row]]
                described.append(
                    {
                        "problem_id": problems[int(rollouts.group_ids[rows[row]])]["id"],
                        "rollout": rows[row],
                        "position": t,
                        "gap": g,
                        "token": tokenizer.decode(ids[t : t + 1]),
                        "before": tokenizer.decode(ids[max(0, t - context_tokens) : t]),
                    }
                )
            teacher["extremes"][kind] = described
