"""The self-teacher (spec §3): which context it reads, and which weights it scores with.

The teacher is the model itself, run without gradient on the same completion tokens. Two
reconstructed [R] axes decide how it differs from the student, or the gap g = u - s is zero:
- context: what the teacher reads before the completion (`TEACHER_CONTEXTS`, or a template);
- weights: the current policy, an EMA of it, the initial model, or a copy lagging K steps.
Training-time teacher contexts never include the answer unless the user asks for the privileged
baselines (`with_answer`, `with_solution`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

SELF_TEACH_INSTRUCTION = (
    "You are a careful teacher. Solve the problem yourself and check every step of the reasoning "
    "and every calculation before you write it down."
)
# Built-in contexts: a template over {problem}, {answer}, {solution}, or None for the student prompt.
TEACHER_CONTEXTS: dict[str, str | None] = {
    "self_teach": "{problem}\n" + SELF_TEACH_INSTRUCTION + "{format}",
    "student": None,
    "with_answer": "{problem}\n" + SELF_TEACH_INSTRUCTION + " The correct final answer is {answer}.{format}",
    "with_solution": "{problem}\nHere is a reference solution:\n{solution}\n"
    "Now write your own solution.{format}",
}
PRIVILEGED_CONTEXTS = ("with_answer", "with_solution")
_FIELDS = re.compile(r"\{(\w+)\}")
_ALLOWED_FIELDS = {"problem", "answer", "solution", "format"}
BOXED_FORMAT = " Please reason step by step, and put your final answer within \\boxed{}."


def validate_teacher_context(context: str) -> None:
    """Raise ValueError unless `context` is a built-in name or a template using only known fields."""
    if context in TEACHER_CONTEXTS:
        return
    fields = set(_FIELDS.findall(context))
    if "problem" not in fields:
        raise ValueError(
            f"teacher_context must be one of {sorted(TEACHER_CONTEXTS)} or a template containing "
            f"'{{problem}}', got {context!r}"
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


def build_teacher_prompt(example: Mapping[str, Any], context: str) -> Any:
    """The teacher's prompt for one dataset row: same form (chat list or string) as `example["prompt"]`.

    In a chat prompt only the last user turn is replaced, so few-shot turns and the system prompt
    (format cues the student relies on) are kept. `problem` falls back to that user turn's text.
    """
    prompt = example["prompt"]
    template = TEACHER_CONTEXTS.get(context, context)
    if template is None:
        return prompt
    values = {
        "problem": example.get("problem") or _last_user_text(prompt),
        "answer": example.get("answer"),
        "solution": example.get("solution"),
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


# ---------------------------------------------------------------------------------------------
# Teacher weights


@dataclass(frozen=True)
class WeightsSpec:
    """Parsed `teacher_weights`: kind in {policy, ema, frozen, lagged} and K for lagged."""

    kind: str
    lag: int = 0

    @staticmethod
    def parse(spec: str) -> WeightsSpec:
        if spec in ("policy", "ema", "frozen"):
            return WeightsSpec(spec)
        match = re.fullmatch(r"lagged:(\d+)", spec)
        if match and int(match[1]) > 0:
            return WeightsSpec("lagged", int(match[1]))
        raise ValueError(f"teacher_weights must be 'policy', 'ema', 'frozen' or 'lagged:<K>' with K > 0, got {spec!r}")


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
        """Call after each optimizer step: EMA update, or a refresh every K steps for `lagged:K`."""
        if self.shadow is None or self.spec.kind == "frozen":
            return
        params = self._params(model)
        if self.spec.kind == "ema":
            for p, s in zip(params, self.shadow, strict=True):
                s.lerp_(p.detach().to(s.dtype), 1.0 - self.ema_decay)
        elif self.spec.kind == "lagged" and global_step % self.spec.lag == 0:
            for p, s in zip(params, self.shadow, strict=True):
                s.copy_(p.detach())

    def state_dict(self) -> dict[str, Any]:
        shadow = None if self.shadow is None else dict(zip(self.names, (s.cpu() for s in self.shadow), strict=True))
        return {"spec": self.spec.kind, "lag": self.spec.lag, "ema_decay": self.ema_decay, "shadow": shadow}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["spec"] != self.spec.kind or state["lag"] != self.spec.lag:
            raise ValueError(
                f"checkpoint teacher state is {state['spec']}:{state['lag']}, but this run uses "
                f"teacher_weights {self.spec.kind}:{self.spec.lag}"
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
    """Reject configurations whose gap is identically zero, before any model loads (spec §3)."""
    validate_teacher_context(context)
    WeightsSpec.parse(weights)
    if context == "student" and weights == "policy":
        raise ValueError(
            "teacher_context='student' with teacher_weights='policy' makes the teacher identical to the "
            "student, so the gap g is always 0. Change teacher_context (e.g. 'self_teach') or "
            "teacher_weights (e.g. 'ema', 'frozen' or 'lagged:10')."
        )
