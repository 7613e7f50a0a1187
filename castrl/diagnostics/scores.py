"""A diagnosis's log-probs: the student's and every teacher's, of every sampled token, with the passes
of `castrl.rollouts` and the teacher `castrl.teacher.build_teacher` builds, as a trainer would at its
first step (no optimizer step has run, so a snapshot or EMA teacher is the policy: `untrained`).

Teacher prompts are the trainer's (`castrl.teacher.teacher_prompt_ids`), tokenised as the student's
prompts are (`castrl.rollouts.prompt_ids`) and cut from the left to the teacher's max_prompt_length
(`castrl.rollouts.left_cut`). RLRT's `with_peer_success` reads another correct rollout of the group,
chosen as the trainer chooses it (`peer_texts`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from castrl.rollouts import Rollouts, completion_logps, left_cut, prompt_ids, scorer
from castrl.rollouts.peers import peer_texts as draw_peer_texts
from castrl.teacher import (
    TeacherConfig,
    WeightsSpec,
    build_teacher,
    context_uses,
    has_adapter,
    teacher_prompt_ids,
)

from .settings import DiagnoseSettings


def peer_texts(
    texts: Sequence[str],
    rewards: Sequence[float | None],
    group_ids: Sequence[int],
    correct_threshold: float,
    truncated: Sequence[bool] | None = None,
) -> list[str | None]:
    """Per row, the text of another successful rollout of its group for `with_peer_success` (RLRT's
    teacher, spec §5), chosen as the trainer chooses it (`castrl.rollouts.peers`: drawn among the group's
    other correct rows, seeded; a row is never its own peer), or None. Rows with an unparseable gold
    (reward None) and truncated rows are never peers (the trainer masks truncated completions)."""
    truncated = [False] * len(texts) if truncated is None else list(truncated)
    correct = [
        r is not None and r >= correct_threshold and not cut
        for r, cut in zip(rewards, truncated, strict=True)
    ]
    return draw_peer_texts(correct, [int(g) for g in group_ids], texts.__getitem__)


def teacher_prompt_rows(
    tokenizer: Any,
    examples: Sequence[dict[str, Any]],
    teacher: TeacherConfig,
    rows: list[int],
    peers: Sequence[str | None],
) -> tuple[list[list[int]], int]:
    """The teacher prompt ids of every row (`castrl.teacher.teacher_prompt_ids`, tokenised as the
    student's prompts are), cut from the left to the teacher's max_prompt_length, and how many were cut.
    One prompt per problem, or per row for contexts that read a peer rollout (without a peer they fall
    back to PEER_FALLBACK_CONTEXT)."""
    tokenize = partial(prompt_ids, tokenizer)
    placement = dict(placement=teacher.tag_placement,
                     encode_text=lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])
    if context_uses(teacher.context, "peer"):
        ids = teacher_prompt_ids([examples[i] for i in rows], teacher.context, tokenize, peers, **placement)
    else:
        per_problem = teacher_prompt_ids(examples, teacher.context, tokenize, **placement)
        ids = [per_problem[i] for i in rows]
    return left_cut(ids, teacher.max_prompt_length)


@dataclass
class Scored:
    """Every sampled token's log-probs under the student and each teacher, and how they were scored:
    the prompt rows (one per rollout) and the scope in which a teacher's weights score (`scope(name)`
    yields the module to run), so other passes (the noise floor) can re-score the same tokens."""

    student: torch.Tensor  # (B_all, T)
    teachers: dict[str, torch.Tensor]  # name -> (B_all, T)
    student_rows: list[list[int]]
    teacher_rows: dict[str, list[list[int]]]
    scope: Callable[[str], AbstractContextManager[Any]]
    prompts_cut: dict[str, int]  # teacher name -> prompts longer than teacher_max_prompt_length


def score_rollouts(
    settings: DiagnoseSettings,
    model: Any,
    tokenizer: Any,
    examples: Sequence[dict[str, Any]],
    student_ids: list[list[int]],
    rollouts: Rollouts,
    peers: Sequence[str | None],
    timings: dict[str, float],
) -> Scored:
    """The student's and every teacher's (`settings.teachers`) log-probs of every sampled token.
    `examples`: one dataset row per problem, its `prompt` the student's; `timings` gets each pass's seconds."""
    rows = rollouts.group_ids.tolist()
    score = dict(temperature=settings.temperature, pad_id=tokenizer.pad_token_id,
                 batch_size=settings.score_batch_size, progress=settings.progress)  # fmt: skip
    start = time.perf_counter()
    student_rows = [student_ids[i] for i in rows]
    student = completion_logps(model, student_rows, rollouts.completion_ids, rollouts.mask, desc="student", **score)
    timings["score_student_s"] = time.perf_counter() - start
    # one teacher for every context: weights and model are settings of the run, not of a context
    teacher = build_teacher(settings.teacher_config(settings.teachers[0]), model, tokenizer, untrained=True)

    @contextmanager
    def scope(name: str) -> Iterator[Any]:
        with scorer(teacher, model) as module:
            yield module

    teachers, teacher_rows, prompts_cut = {}, {}, {}
    for name in settings.teachers:  # a context name, or context@placement
        ids, prompts_cut[name] = teacher_prompt_rows(tokenizer, examples, settings.teacher_config(name), rows, peers)
        teacher_rows[name] = ids
        start = time.perf_counter()
        with scope(name) as module:
            teachers[name] = completion_logps(module, ids, rollouts.completion_ids, rollouts.mask,
                                              desc=f"teacher {name}", **score)  # fmt: skip
        timings[f"score_{name}_s"] = time.perf_counter() - start
    return Scored(student, teachers, student_rows, teacher_rows, scope, prompts_cut)


def teacher_weights_note(spec: str, model: Any) -> str:
    """What `spec` means in a run without training; raises ValueError on a malformed spec."""
    kind = WeightsSpec.parse(spec).kind
    if kind == "policy":
        return "policy: the sampling weights"
    if kind in ("ema", "refresh"):
        copy = "snapshot" if kind == "refresh" else "ema copy"
        return f"{spec}: equals the policy (no optimizer step has run, so the {copy} is the policy)"
    if has_adapter(model):
        return "frozen: the base model, LoRA adapter disabled"
    return "frozen: no adapter loaded, so the initial model is the policy"
