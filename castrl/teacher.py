"""The self-teacher (spec §3): which context it reads, and which weights it scores with.

The teacher is the model itself, run without gradient on the same completion tokens; the gap
g = u - s is zero unless its context or its weights differ from the student's.
- context (`TEACHER_CONTEXTS`, or a template): the paper's answer-free `answer_free` (default) and
  `with_reference` (Table 7's ablation with the ground-truth answer); `with_peer_success` (RLRT's
  teacher: the problem plus a successful rollout of the same group); and castrl's own earlier
  contexts, kept as options [R]: `self_teach`, `student`, `with_answer`, `with_solution`.
- weights: `refresh:K` (the paper: a stop-gradient snapshot of the policy taken at step 0 and every
  K optimizer steps), the current `policy`, an `ema` of it, or the initial model (`frozen`).
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

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
DEFAULT_TEACHER_WEIGHTS = "refresh:10"
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


def build_teacher_prompt(example: Mapping[str, Any], context: str, peer: str | None = None) -> Any:
    """The teacher's prompt for one dataset row: same form (chat list or string) as `example["prompt"]`.

    In a chat prompt only the last user turn is replaced, so few-shot turns and the system prompt
    (format cues the student relies on) are kept. `user_turn` is that turn's text; `problem` is the
    row's `problem` column, falling back to `user_turn`. `peer` is the text of a successful rollout
    of the same group, for contexts that read `{peer}`; without one they fall back to
    `PEER_FALLBACK_CONTEXT` [R].
    """
    prompt = example["prompt"]
    template = TEACHER_CONTEXTS.get(context, context)
    if template is None:
        return prompt
    if "{peer}" in template and not peer:
        return build_teacher_prompt(example, PEER_FALLBACK_CONTEXT)
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
    return [*prompt[:last_user], {**prompt[last_user], "content": text}, *prompt[last_user + 1 :]]


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


# ---------------------------------------------------------------------------------------------
# Teacher weights


@dataclass(frozen=True)
class WeightsSpec:
    """Parsed `teacher_weights`: kind in {policy, ema, frozen, refresh} and K for `refresh:K`."""

    kind: str
    every: int = 0

    @staticmethod
    def parse(spec: str) -> WeightsSpec:
        if spec in ("policy", "ema", "frozen"):
            return WeightsSpec(spec)
        match = re.fullmatch(r"refresh:(\d+)", spec) if isinstance(spec, str) else None
        if match and int(match[1]) > 0:
            return WeightsSpec("refresh", int(match[1]))
        raise ValueError(
            f"teacher_weights must be 'refresh:<K>' with K > 0 (the paper: refresh:10), 'policy', 'ema' or "
            f"'frozen', got {spec!r}"
        )

    def always_policy(self) -> bool:
        """True when the teacher scores with the weights that sampled the rollouts at every step:
        `policy`, or a snapshot refreshed after every optimizer step (`refresh:1`)."""
        return self.kind == "policy" or (self.kind == "refresh" and self.every == 1)


def _is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class TeacherWeights:
    """Keeps the teacher's copy of the trainable parameters and swaps it in for scoring.

    Only trainable parameters are shadowed (with LoRA: the adapter only), since frozen ones are
    identical for teacher and student. Scoring swaps `.data` pointers (no copy) and swaps back.
    `frozen` on a PEFT model disables the adapter instead of keeping any copy.
    """

    def __init__(self, spec: str, model: torch.nn.Module, ema_decay: float = 0.99) -> None:
        self.spec = WeightsSpec.parse(spec)
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"teacher_ema_decay must be in [0, 1), got {ema_decay}")
        self.ema_decay = ema_decay
        self.use_adapter_off = self.spec.kind == "frozen" and _is_peft(model)
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.shadow: list[torch.Tensor] | None = None
        if self.spec.kind != "policy" and not self.use_adapter_off:
            self.shadow = [p.detach().clone() for p in self._params(model)]

    def _params(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        named = dict(model.named_parameters())
        return [named[n] for n in self.names]

    @contextmanager
    def scoring(self, model: torch.nn.Module) -> Iterator[None]:
        """Context in which `model` computes with the teacher's weights."""
        if self.use_adapter_off:
            with model.disable_adapter():
                yield
            return
        if self.shadow is None:
            with nullcontext():
                yield
            return
        params = self._params(model)
        for p, s in zip(params, self.shadow, strict=True):
            p.data, s.data = s.data, p.data
        try:
            yield
        finally:
            for p, s in zip(params, self.shadow, strict=True):
                p.data, s.data = s.data, p.data

    @torch.no_grad()
    def update(self, model: torch.nn.Module, global_step: int) -> None:
        """Call after each optimizer step: EMA update, or a snapshot every K steps for `refresh:K`."""
        if self.shadow is None or self.spec.kind == "frozen":
            return
        params = self._params(model)
        if self.spec.kind == "ema":
            for p, s in zip(params, self.shadow, strict=True):
                s.lerp_(p.detach().to(s.dtype), 1.0 - self.ema_decay)
        elif self.spec.kind == "refresh" and global_step % self.spec.every == 0:
            for p, s in zip(params, self.shadow, strict=True):
                s.copy_(p.detach())

    def state_dict(self) -> dict[str, Any]:
        shadow = None if self.shadow is None else dict(zip(self.names, (s.cpu() for s in self.shadow), strict=True))
        return {"spec": self.spec.kind, "every": self.spec.every, "ema_decay": self.ema_decay, "shadow": shadow}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["spec"] != self.spec.kind or state.get("every", 0) != self.spec.every:
            raise ValueError(
                f"checkpoint teacher state is {state['spec']}:{state.get('every', 0)}, but this run uses "
                f"teacher_weights {self.spec.kind}:{self.spec.every}"
            )
        if self.shadow is None or state["shadow"] is None:
            return
        missing = set(self.names) - set(state["shadow"])
        if missing:
            raise ValueError(f"checkpoint teacher state lacks parameters {sorted(missing)[:3]}...")
        with torch.no_grad():
            for name, s in zip(self.names, self.shadow, strict=True):
                s.copy_(state["shadow"][name].to(s.device, s.dtype))


def check_teacher_config(context: str, weights: str) -> None:
    """Reject, before any model loads, a teacher that can never differ from the student (spec §3):
    the student's own context with the weights that sampled the rollouts."""
    validate_teacher_context(context)
    spec = WeightsSpec.parse(weights)
    if context == "student" and spec.always_policy():
        raise ValueError(
            f"teacher_context='student' with teacher_weights={weights!r} makes the teacher identical to the "
            "student at every step, so the gap g is always 0. Change teacher_context (e.g. 'answer_free', "
            "the paper's) or teacher_weights (e.g. 'refresh:10', the paper's, 'ema' or 'frozen')."
        )
