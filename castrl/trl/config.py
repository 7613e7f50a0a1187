"""`CASTConfig`: TRL's `GRPOConfig` plus the advantage-estimator and self-teacher knobs.

The estimator fields are not written twice: they are injected from the core dataclasses
(`CastConfig`, `RLSDConfig`), help text included, so `castrl train --help`, YAML files and the
logged hyperparameters all come from one source. Bands become 2-element lists on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

from trl import GRPOConfig

from castrl.core import CastConfig, EstimatorConfig, GRPOOPSDConfig, RLRTConfig, RLSDConfig, get_estimator
from castrl.teacher import DEFAULT_TEACHER_CONTEXT, DEFAULT_TEACHER_WEIGHTS, check_teacher_config


def _cli_field(f, hint: Any) -> tuple[Any, Any]:
    """(type, dataclasses.field) for a core config field, in a form HfArgumentParser can parse."""
    default = f.default
    if isinstance(default, tuple):
        return list[float], field(default_factory=lambda d=default: list(d), metadata=dict(f.metadata))
    return hint, field(default=default, metadata=dict(f.metadata))


def _with_fields_of(*sources: type[EstimatorConfig]):
    """Class decorator (applied before @dataclass): add every field of `sources` not already declared."""

    def inject(cls):
        annotations = cls.__dict__.get("__annotations__", {})
        for source in sources:
            hints = get_type_hints(source)
            for f in fields(source):
                if f.name in annotations:
                    continue
                annotations[f.name], value = _cli_field(f, hints[f.name])
                setattr(cls, f.name, value)
        cls.__annotations__ = annotations
        return cls

    return inject


@dataclass
@_with_fields_of(CastConfig, RLSDConfig, RLRTConfig, GRPOOPSDConfig)
class CASTConfig(GRPOConfig):
    """GRPOConfig for CAST and its baselines; see `castrl.core.config` for the estimator fields."""

    advantage_estimator: str = field(
        default="cast",
        metadata={"help": "Token-advantage estimator: cast, grpo, dr_grpo, rlsd, rlrt, opsd or grpo_opsd (spec §5)."},
    )
    teacher_context: str = field(
        default=DEFAULT_TEACHER_CONTEXT,
        metadata={
            "help": "What the self-teacher reads: answer_free (the paper's, default), with_reference (the "
            "ground-truth answer, Table 7's ablation), with_peer_success (RLRT's: a successful rollout of the "
            "group); castrl's own: self_teach, student, with_answer, with_solution, or a template with "
            "{user_turn} or {problem} [{answer}] [{solution}] [{peer}]."
        },
    )
    teacher_weights: str = field(
        default=DEFAULT_TEACHER_WEIGHTS,
        metadata={
            "help": "Teacher weights: refresh:<K> (a snapshot of the policy at step 0 and every K optimizer steps; "
            "the paper's refresh:10, default), policy (current weights), ema or frozen (initial model)."
        },
    )
    teacher_ema_decay: float = field(default=0.99, metadata={"help": "EMA decay for teacher_weights='ema'. [R]"})
    teacher_max_prompt_length: int = field(
        default=1024,
        metadata={"help": "Teacher prompts longer than this many tokens are cut from the left (and counted)."},
    )
    fuse_student_pass: bool = field(
        default=True,
        metadata={
            "help": "On-policy steps (TRL skips old log-probs: num_iterations=1, no vLLM importance sampling): "
            "take the student log-probs of the teacher gap from the training forward pass instead of a "
            "separate no-grad pass. Same advantages up to float rounding, one forward pass fewer per step."
        },
    )
    share_prompt_cache: bool = field(
        default=True,
        metadata={
            "help": "castrl's no-grad scoring passes (teacher; student when not fused) run each distinct prompt "
            "once and share its KV cache among the group's completions: same log-probs up to float rounding, "
            "(G-1)/G of the prompt tokens saved. Models without a plain KV cache fall back to the full pass."
        },
    )
    epsilon_high: float | None = field(
        default=0.28, metadata={"help": "Upper ratio clip (DAPO clip-higher); the paper's 0.28 (Table 8). [P]"}
    )
    mask_truncated_completions: bool = field(
        default=True,
        metadata={
            "help": "Mask completions that reach max_completion_length without an end token from the loss, for "
            "every method (the paper's §8.4); their rewards still count in the group statistics. [P]"
        },
    )
    temperature: float = field(default=0.7, metadata={"help": "Rollout sampling temperature (§8.4). [P]"})
    top_p: float = field(default=0.95, metadata={"help": "Rollout nucleus sampling (§8.4). [P]"})
    top_k: int = field(default=20, metadata={"help": "Rollout top-k sampling (§8.4); 0 = off. [P]"})

    def __post_init__(self) -> None:
        super().__post_init__()
        spec = get_estimator(self.advantage_estimator)  # unknown names fail here, before any model loads
        self.estimator_config()  # validates every estimator field
        if spec.needs_teacher:
            check_teacher_config(self.teacher_context, self.teacher_weights)
        if self.epsilon < 0 or (self.epsilon_high is not None and self.epsilon_high < 0):
            raise ValueError(f"epsilon / epsilon_high must be >= 0, got {self.epsilon} / {self.epsilon_high}")
        if self.teacher_max_prompt_length <= 0:
            raise ValueError(f"teacher_max_prompt_length must be > 0, got {self.teacher_max_prompt_length}")

    def estimator_config(self) -> EstimatorConfig:
        """The core config of `advantage_estimator`, built from the flat fields of this config."""
        config_cls = get_estimator(self.advantage_estimator).config_cls
        kwargs = {}
        for f in fields(config_cls):
            value = getattr(self, f.name)
            if isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
        return config_cls(**kwargs)
