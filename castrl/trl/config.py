"""`CASTTrainerConfig`: TRL's `GRPOConfig` plus the advantage-estimator and self-teacher knobs.

Named for the trainer it configures, so it does not collide with the core's `CastConfig` (the CAST
rule's own fields); `CASTConfig` stays importable as an alias of it for existing code.

No field is written twice: the estimator fields are injected from the core dataclasses
(`CastConfig`, `RLSDConfig`, ...) and the teacher fields (`teacher_context`, `teacher_weights`,
`teacher_ema_decay`, `teacher_max_prompt_length`) from `castrl.teacher.TeacherConfig`, help text
included, so `castrl train --help`, YAML files and the logged hyperparameters come from one source.
Bands become 2-element lists on the command line.
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields
from typing import Any

from trl import GRPOConfig

from castrl.config_fields import same_field, values_of, with_fields_of
from castrl.core import CastConfig, EstimatorConfig, GRPOOPSDConfig, RLRTConfig, RLSDConfig, get_estimator
from castrl.rollouts.decode import check_decoder
from castrl.teacher import TeacherConfig

from .head_tile import check_vocab_tile


def _cli_field(f: Field, hint: Any) -> tuple[Any, Any]:
    """A core field in a form HfArgumentParser can parse: a (lo, hi) band becomes a list of floats."""
    if isinstance(f.default, tuple):
        return list[float], field(default_factory=lambda d=f.default: list(d), metadata=dict(f.metadata))
    return same_field(f, hint)


@dataclass
@with_fields_of(TeacherConfig, prefix="teacher_")
@with_fields_of(CastConfig, RLSDConfig, RLRTConfig, GRPOOPSDConfig, convert=_cli_field)
class CASTTrainerConfig(GRPOConfig):
    """GRPOConfig for CAST and its baselines; see `castrl.core.config` for the estimator fields and
    `castrl.teacher.TeacherConfig` for the teacher fields."""

    advantage_estimator: str = field(
        default="cast",
        metadata={"help": "Token-advantage estimator: cast, grpo, dr_grpo, rlsd, rlrt, opsd or grpo_opsd (spec §5)."},
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
    lm_head_vocab_tile: int = field(
        default=0,
        metadata={
            "help": "Vocabulary columns per tile of TRL's fused LM head (castrl's option). 0 = auto: 2048 off "
            "CUDA/XPU, where the torch fold leaves a tokens x tile temporary per op (on 2 CPU threads, one "
            "micro-batch: 4.5 GB and 21 s at 2048 vs 6.7 GB and 29 s at TRL's 32768), TRL's own on CUDA/XPU."
        },
    )
    trim_completion_padding: bool = field(
        default=True,
        metadata={
            "help": "Cut each training micro-batch's trailing completion columns that no row scores before the "
            "loss's forward (castrl's option): TRL pads every completion to the generation batch's longest, so a "
            "micro-batch of short completions otherwise trains over the longest's width. Same loss and gradients "
            "up to float rounding."
        },
    )
    rollout_decoder: str = field(
        default="castrl",
        metadata={
            "help": "castrl (castrl's option): TRL's transformers rollouts decode with castrl.rollouts.decode "
            "(each distinct prompt prefilled once, sampling among the top-k only, finished rows leave the batch; "
            "the same distribution as generate, other draws), falling back to generate for settings it does not "
            "cover; transformers: TRL's model.generate. vLLM rollouts are vLLM's either way."
        },
    )
    teacher_offload: bool = field(
        default=False,
        metadata={
            "help": "Keep the self-teacher's copy of the trainable parameters (refresh:K, ema, frozen without LoRA) "
            "on the CPU, each rank its own shard under FSDP: for full fine-tuning of a large model. Each teacher "
            "pass then copies it onto the device and back, one tensor at a time."
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
            self.teacher_config().check_host("trl")
        check_vocab_tile(self.lm_head_vocab_tile)
        check_decoder(self.rollout_decoder, "rollout_decoder")
        if self.epsilon < 0 or (self.epsilon_high is not None and self.epsilon_high < 0):
            raise ValueError(f"epsilon / epsilon_high must be >= 0, got {self.epsilon} / {self.epsilon_high}")

    def teacher_config(self) -> TeacherConfig:
        """The validated teacher settings, built from the flat `teacher_*` fields of this config."""
        return TeacherConfig(**values_of(self, TeacherConfig, prefix="teacher_"))

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


CASTConfig = CASTTrainerConfig  # the earlier name, kept for existing code (it differs from core's CastConfig by case)
