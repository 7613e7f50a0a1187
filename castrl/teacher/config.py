"""The self-teacher's settings, declared once (spec §3): context, weights, EMA decay, prompt length.

Every host (the TRL trainer, the verl adapter, `castrl diagnose`) carries these as flat
`teacher_*` fields injected from `TeacherConfig` (`castrl.config_fields.with_fields_of`), and
builds a `TeacherConfig` from them to validate: one set of help texts, one set of checks, and one
table of which weights each host can score with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .contexts import (
    DEFAULT_TAG_PLACEMENT,
    DEFAULT_TEACHER_CONTEXT,
    validate_tag_placement,
    validate_teacher_context,
)
from .weights import DEFAULT_TEACHER_WEIGHTS, WeightsSpec

# Weight kinds each host can score with, and why a host cannot do the others.
HOST_WEIGHTS: dict[str, tuple[str, ...]] = {
    "trl": ("refresh", "policy", "ema", "frozen"),
    "diagnose": ("refresh", "policy", "ema", "frozen"),  # without training, refresh / ema are the policy
    "verl": ("refresh", "policy", "ema", "frozen"),  # refresh / ema on FSDP actors (castrl.integrations.verl.worker)
}
# Hosts that can score with an external teacher model (`teacher_model`), and why the others cannot.
HOST_EXTERNAL: dict[str, bool] = {"trl": True, "diagnose": True, "verl": False}
EXTERNAL_WHY: dict[str, str] = {
    "verl": (
        "verl 0.9's workers hold the actor and its reference model only; a third model would need a worker "
        "group of its own, sharded and scheduled beside them. Use castrl's TRL trainer (castrl.trl) for an "
        "external teacher."
    ),
}
UNSUPPORTED_WHY: dict[str, str] = {}  # every host scores with every kind of weights


@dataclass(frozen=True)
class TeacherConfig:
    """The stop-gradient self-teacher: what it reads and which weights score with (spec §3)."""

    context: str = field(
        default=DEFAULT_TEACHER_CONTEXT,
        metadata={
            "help": "What the self-teacher reads: answer_free (the paper's T_AF, default), with_reference (the "
            "ground-truth answer, Table 7's ablation; the paper's teacher of rlsd / opsd / grpo_opsd), "
            "with_peer_success (RLRT's: a successful rollout of the same group); castrl's own: self_teach, "
            "student, with_answer, with_solution, or a template with {user_turn} or {problem} "
            "[{answer}] [{solution}] [{peer}]."
        },
    )
    weights: str = field(
        default=DEFAULT_TEACHER_WEIGHTS,
        metadata={
            "help": "Teacher weights: refresh:<K> (a stop-gradient snapshot of the policy at step 0 and every K "
            "optimizer steps; the paper's refresh:10, default), policy (current weights), ema or frozen "
            "(initial model; with LoRA, the adapter off)."
        },
    )
    ema_decay: float = field(default=0.99, metadata={"help": "EMA decay for teacher weights 'ema'. [R]"})
    max_prompt_length: int = field(
        default=1024,
        metadata={"help": "Teacher prompts longer than this many tokens are cut from the left (and counted). [R]"},
    )
    model: str | None = field(
        default=None,
        metadata={
            "help": "An external teacher (OPD-style): another frozen model, HF id or folder, that shares the "
            "student's tokenizer, read under teacher_context; teacher_weights then does not apply. None = the "
            "paper's self-teacher. [R]"
        },
    )
    tag_placement: str = field(
        default=DEFAULT_TAG_PLACEMENT,
        metadata={
            "help": "Where the '[Student response]' tag of teacher_context goes in a chat prompt: last_user (it "
            "closes the problem's user turn; the paper's single-turn reading, default), every_user (every user "
            "turn, few-shot examples included) or assistant_prefix (it opens the assistant turn). [R]"
        },
    )

    def __post_init__(self) -> None:
        validate_teacher_context(self.context)
        validate_tag_placement(self.tag_placement, self.context)
        spec = WeightsSpec.parse(self.weights)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"teacher_ema_decay must be in [0, 1), got {self.ema_decay}")
        if isinstance(self.max_prompt_length, bool) or not isinstance(self.max_prompt_length, int) or (
            self.max_prompt_length <= 0
        ):
            raise ValueError(f"teacher_max_prompt_length must be an integer > 0, got {self.max_prompt_length!r}")
        if self.model is not None and not (isinstance(self.model, str) and self.model.strip()):
            raise ValueError(f"teacher_model must be a model name or folder, got {self.model!r}")
        if self.context == "student" and spec.always_policy() and self.model is None:
            raise ValueError(
                f"teacher_context='student' with teacher_weights={self.weights!r} makes the teacher identical to "
                "the student at every step, so the gap g is always 0. Change teacher_context (e.g. 'answer_free', "
                "the paper's) or teacher_weights (e.g. 'refresh:10', the paper's, 'ema' or 'frozen')."
            )

    @property
    def weights_spec(self) -> WeightsSpec:
        return WeightsSpec.parse(self.weights)

    def check_host(self, host: str) -> None:
        """Raise ValueError, saying why, when `host` cannot score with this teacher."""
        if self.model is not None:
            if not HOST_EXTERNAL[host]:
                raise ValueError(f"teacher_model={self.model!r} is not supported on {host}: {EXTERNAL_WHY[host]}")
            return  # an external teacher has no weights of the policy's to keep
        spec = self.weights_spec
        kind = "policy" if spec.always_policy() else spec.kind
        if kind not in HOST_WEIGHTS[host]:
            raise ValueError(
                f"teacher_weights={self.weights!r} is not supported on {host}. This teacher is {spec.describe()}; "
                f"{UNSUPPORTED_WHY.get(host, '')}"
            )


def check_teacher_config(context: str, weights: str) -> None:
    """Reject, before any model loads, a teacher that can never differ from the student (spec §3)."""
    TeacherConfig(context=context, weights=weights)
