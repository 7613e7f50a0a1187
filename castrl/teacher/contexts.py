"""What the self-teacher reads (spec §3): the built-in contexts, custom templates, and RLRT's peers.

The paper's contexts (§8.4): `answer_free` (its T_AF, castrl's default) and `with_reference` (T_GT,
Table 7's ablation with the ground-truth answer); RLRT's `with_peer_success` (the problem plus a
successful rollout of the same group). castrl's earlier contexts stay as options [R]: `self_teach`,
`student` (the student's own prompt), `with_answer`, `with_solution`.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

STUDENT_RESPONSE_TAG = "\n\n[Student response]\n"
SELF_TEACH_INSTRUCTION = (
    "You are a careful teacher. Solve the problem yourself and check every step of the reasoning "
    "and every calculation before you write it down."
)
# Built-in contexts: a template over the fields below, or None for the student prompt.
# {user_turn} is the student's last user message as written (problem and format cues), the paper's x.
TEACHER_CONTEXTS: dict[str, str | None] = {
    # the paper's (§8.4): T_AF(x) and T_GT(x, y*); the chat template is applied as for the student [R]
    "answer_free": "{user_turn}" + STUDENT_RESPONSE_TAG,
    "with_reference": "{user_turn}\n\n[Reference solution]\n{answer}" + STUDENT_RESPONSE_TAG,
    # RLRT's teacher (§8.4): the problem plus a successful rollout of the same group; the tag is ours [R]
    "with_peer_success": "{user_turn}\n\n[Successful response]\n{peer}" + STUDENT_RESPONSE_TAG,
    # castrl's earlier contexts [R]
    "self_teach": "{problem}\n" + SELF_TEACH_INSTRUCTION + "{format}",
    "student": None,
    "with_answer": "{problem}\n" + SELF_TEACH_INSTRUCTION + " The correct final answer is {answer}.{format}",
    "with_solution": "{problem}\nHere is a reference solution:\n{solution}\nNow write your own solution.{format}",
}
DEFAULT_TEACHER_CONTEXT = "answer_free"
# Where the `[Student response]` tag goes in a chat prompt (`teacher_tag_placement`), three readings of the
# paper's x ∥ tag [R]: `last_user` (the tag closes the last user turn, the problem's; the default: the
# paper's prompt is one user turn, and T_AF appends the tag to it), `every_user` (every user turn closes
# with it, few-shot examples included, so their answers read as student responses too) and
# `assistant_prefix` (the tag opens the assistant turn, right before the completion). The paper's
# single-turn prompts make the first two identical; a plain-text prompt has one place only.
TAG_PLACEMENTS: tuple[str, ...] = ("last_user", "every_user", "assistant_prefix")
DEFAULT_TAG_PLACEMENT = "last_user"
ASSISTANT_PREFIX = STUDENT_RESPONSE_TAG.lstrip("\n")  # "[Student response]\n": it opens a turn
PRIVILEGED_CONTEXTS = ("with_reference", "with_answer", "with_solution")
PEER_FALLBACK_CONTEXT = "answer_free"  # a row with no successful peer in its group [R]
_FIELDS = re.compile(r"\{(\w+)\}")
_ALLOWED_FIELDS = {"problem", "user_turn", "answer", "solution", "peer", "format"}
BOXED_FORMAT = " Please reason step by step, and put your final answer within \\boxed{}."


def validate_teacher_context(context: str) -> None:
    """Raise ValueError unless `context` is a built-in name or a template using only known fields."""
    if context in TEACHER_CONTEXTS:
        return
    fields = set(_FIELDS.findall(context))
    if not fields & {"problem", "user_turn"}:
        raise ValueError(
            f"teacher_context must be one of {sorted(TEACHER_CONTEXTS)} or a template containing "
            f"'{{user_turn}}' or '{{problem}}', got {context!r}"
        )
    unknown = fields - _ALLOWED_FIELDS
    if unknown:
        raise ValueError(f"teacher_context template uses unknown fields {sorted(unknown)}; allowed: {sorted(_ALLOWED_FIELDS)}")


def context_uses(context: str, field_name: str) -> bool:
    """Whether the teacher context reads `field_name` (e.g. 'answer': privileged information)."""
    template = TEACHER_CONTEXTS.get(context, context)
    return template is not None and ("{" + field_name + "}") in template


def _last_user_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return message["content"]
    raise ValueError("cannot find a user message with text content in the prompt")


def places_tag(context: str) -> bool:
    """Whether `context` ends with the `[Student response]` tag, so `teacher_tag_placement` can move it."""
    template = TEACHER_CONTEXTS.get(context, context)
    return template is not None and template.endswith(STUDENT_RESPONSE_TAG)


def validate_tag_placement(placement: str, context: str) -> None:
    """Raise ValueError for an unknown placement, or one other than the default for a context without the tag."""
    if placement not in TAG_PLACEMENTS:
        raise ValueError(f"teacher_tag_placement must be one of {', '.join(TAG_PLACEMENTS)}, got {placement!r}")
    if placement != DEFAULT_TAG_PLACEMENT and not places_tag(context):
        raise ValueError(
            f"teacher_tag_placement={placement!r} moves the {STUDENT_RESPONSE_TAG.strip()!r} tag, but "
            f"teacher_context={context!r} does not end with it; use {DEFAULT_TAG_PLACEMENT!r} or a context "
            "that does (answer_free, with_reference, with_peer_success)"
        )


def needs_assistant_prefix(prompt: Any, placement: str) -> bool:
    """Whether the tag of this teacher prompt opens the assistant turn: it then follows the chat template's
    generation prompt as token ids (`castrl.teacher.prompts`), not as part of any message."""
    return placement == "assistant_prefix" and not isinstance(prompt, str)


def build_teacher_prompt(
    example: Mapping[str, Any], context: str, peer: str | None = None, placement: str = DEFAULT_TAG_PLACEMENT
) -> Any:
    """The teacher's prompt for one dataset row: same form (chat list or string) as `example["prompt"]`.

    In a chat prompt only the last user turn is replaced, so few-shot turns and the system prompt
    (format cues the student relies on) are kept. `user_turn` is that turn's text; `problem` is the
    row's `problem` column, falling back to `user_turn`. `peer` is the text of a successful rollout
    of the same group, for contexts that read `{peer}`; without one they fall back to
    `PEER_FALLBACK_CONTEXT` [R]. `placement` (`TAG_PLACEMENTS`) moves the closing tag of a chat prompt:
    `every_user` also closes the earlier user turns with it; `assistant_prefix` leaves it out of the
    messages (`needs_assistant_prefix`: the host appends `ASSISTANT_PREFIX` after the generation prompt).
    """
    prompt = example["prompt"]
    template = TEACHER_CONTEXTS.get(context, context)
    if template is None:
        return prompt
    if "{peer}" in template and not peer:
        return build_teacher_prompt(example, PEER_FALLBACK_CONTEXT, placement=placement)
    if needs_assistant_prefix(prompt, placement) and places_tag(context):
        template = template.removesuffix(STUDENT_RESPONSE_TAG)
    user_turn = _last_user_text(prompt)
    values = {
        "problem": example.get("problem") or user_turn,
        "user_turn": user_turn,
        "answer": example.get("answer"),
        "solution": example.get("solution"),
        "peer": peer,
        "format": BOXED_FORMAT,
    }
    for name in ("answer", "solution"):
        if ("{" + name + "}") in template and not values[name]:
            raise ValueError(f"teacher_context {context!r} needs a non-empty {name!r} column in the dataset")
    text = template.format(**{k: ("" if v is None else str(v)) for k, v in values.items()})
    if isinstance(prompt, str):
        return text
    last_user = max(i for i, m in enumerate(prompt) if m.get("role") == "user")
    earlier = list(prompt[:last_user])
    if placement == "every_user" and places_tag(context):
        earlier = [
            {**m, "content": m["content"] + STUDENT_RESPONSE_TAG}
            if m.get("role") == "user" and isinstance(m.get("content"), str) else m
            for m in earlier
        ]
    return [*earlier, {**prompt[last_user], "content": text}, *prompt[last_user + 1 :]]


def successful_peers(correct: Sequence[bool], group_keys: Sequence[Hashable], seed: int = 0) -> list[int | None]:
    """For each rollout, the index of another correct rollout of its group, or None (RLRT's teacher).

    The paper's RLRT teacher reads "the problem plus a successful rollout sampled for the same prompt
    group when available" (§8.4). The peer is drawn uniformly among the group's *other* correct
    rollouts [R]: a rollout never reads its own text, so a group's only success gets None (and
    `build_teacher_prompt` falls back to the answer-free context). Draws are seeded by `seed` (the
    optimizer step) and the group key, so every host (TRL, verl, diagnose) picks the same peers for
    the same batch, wherever its rows sit.
    """
    if len(correct) != len(group_keys):
        raise ValueError(f"successful_peers: {len(correct)} correctness flags but {len(group_keys)} group keys")
    rows: dict[Hashable, list[int]] = {}
    for i, key in enumerate(group_keys):
        rows.setdefault(key, []).append(i)
    out: list[int | None] = [None] * len(correct)
    for key, members in rows.items():
        winners = [j for j in members if correct[j]]
        if not winners:
            continue
        draws = random.Random(f"{max(int(seed), 0)}:{zlib.crc32(str(key).encode())}")
        for i in members:
            others = [j for j in winners if j != i]
            out[i] = others[draws.randrange(len(others))] if others else None
    return out
