"""`CASTConfig`: TRL's `GRPOConfig` plus the advantage-estimator and self-teacher knobs.

The estimator fields are not written twice: they are injected from the core dataclasses
(`CastConfig`, `RLSDConfig`), help text included, so `castrl train --help`, YAML files and the
logged hyperparameters all come from one source. Bands become 2-element lists on the command line.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from trl import GRPOConfig

from castrl.core import CastConfig, EstimatorConfig, RLSDConfig, get_estimator
from castrl.teacher import check_teacher_config


def _cli_field(f) -> tuple[Any, Any]:
    """(type, dataclasses.field) for a core config field, in a form HfArgumentParser can parse."""
    default = f.default
    if isinstance(default, tuple):
        return list[float], field(default_factory=lambda d=default: list(d), metadata=dict(f.metadata))
    if f.name == "flip_threshold":  # "tau" | "band" | "zero" | "<float>" | "quantile:<q>"
        return str, field(default=str(default), metadata=dict(f.metadata))
    return type(default), field(default=default, metadata=dict(f.metadata))


def _with_fields_of(*sources: type[EstimatorConfig]):
    """Class decorator (applied before @dataclass): add every field of `sources` not already declared."""

    def inject(cls):
        annotations = cls.__dict__.get("__annotations__", {})
        for source in sources:
            for f in fields(source):
                if f.name in annotations:
                    continue
                annotations[f.name], value = _cli_field(f)
                setattr(cls, f.name, value)
        cls.__annotations__ = annotations
        return cls

    return inject


@dataclass
@_with_fields_of(CastConfig, RLSDConfig)
class CASTConfig(GRPOConfig):
    """GRPOConfig for CAST and its baselines; see `castrl.core.config` for the estimator fields."""

    advantage_estimator: str = field(
        default="cast",
        metadata={"help": "Token-advantage estimator: cast, grpo, dr_grpo, rlsd, rlrt or opsd (spec §4)."},
    )
    teacher_context: str = field(
        default="self_teach",
        metadata={
            "help": "What the self-teacher reads: self_teach (answer-free, default), student, with_answer, "
            "with_solution (privileged baselines), or a template with {problem} [{answer}] [{solution}]. [R]"
        },
    )
    teacher_weights: str = field(
        default="policy",
        metadata={"help": "Teacher weights: policy (default), ema, frozen (initial model) or lagged:<K>. [R]"},
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
        default=0.28, metadata={"help": "Upper ratio clip (DAPO clip-higher); CAST uses 0.28 (spec §2.6). [S]"}
    )

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


CORE_FIELD_NAMES = tuple(
    f.name for src in (CastConfig, RLSDConfig) for f in fields(src) if f.default is not MISSING
)
