"""`castrl diagnose` settings and problem selection: everything a user can get wrong is checked here,
before the model loads, with errors that name the flag and say how to fix it.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from castrl.arguments import (
    DataArguments,
    ModelArguments,
    OutputArguments,
    RuntimeArguments,
    SamplingArguments,
    VerifierArguments,
    check_prompt_style,
    renamed_init,
)
from castrl.config_fields import adapted, with_fields_of
from castrl.core import CastConfig
from castrl.data import load_problems
from castrl.diagnostics.noise import VARIANTS as NOISE_VARIANTS
from castrl.teacher import TAG_PLACEMENTS, TEACHER_CONTEXTS, TeacherConfig, WeightsSpec, context_uses
from castrl.teacher.contexts import validate_teacher_context

# The contexts a default diagnosis scores with: the paper's answer-free teacher (CAST's default, spec §3)
# and its ablation with the ground-truth answer (Table 7).
DEFAULT_TEACHERS: tuple[str, ...] = ("answer_free", "with_reference")


# CastConfig's fields a diagnosis applies: the flip rule, the correctness threshold and the gap control.
CAST_FIELDS: tuple[str, ...] = ("flip_margin", "flip_correct", "flip_incorrect", "correct_threshold", "gap_control")


def _is_context(context: str) -> bool:
    """A built-in context name or a valid template (`castrl.teacher.contexts.validate_teacher_context`)."""
    try:
        validate_teacher_context(context)
    except ValueError:
        return False
    return True


@renamed_init
@dataclass(frozen=True)
@with_fields_of(CastConfig, only=CAST_FIELDS)
@with_fields_of(TeacherConfig, prefix="teacher_", only=("weights", "max_prompt_length", "model", "tag_placement"))
@with_fields_of(OutputArguments, convert=adapted(defaults={"output_dir": "outputs/castrl-diagnose"}, notes={
    "output_dir": "Gets diagnostics.json, diagnostics.md, report.html and the PNGs."}))
@with_fields_of(VerifierArguments, only=("verifier_timeout_s",))
@with_fields_of(RuntimeArguments, only=("threads", "seed"), convert=adapted(notes={
    "seed": "It draws the problems and the samples."}))
@with_fields_of(SamplingArguments, only=("group_size", "temperature", "max_new_tokens", "decoder"), convert=adapted(
    defaults={"temperature": 1.0, "max_new_tokens": 64},
    notes={"temperature": "Also applied to every score.", "group_size": "At least 2: a group of one has no group "
           "statistics."}))
@with_fields_of(DataArguments, only=("data", "split", "prompt_style"), convert=adapted(defaults={"split": "train"}))
@with_fields_of(ModelArguments, convert=adapted(notes={
    "lora_adapter": "With --teacher_weights frozen the teacher is the model with this adapter disabled.",
    "dtype": "Here float32 or bfloat16."}))
class DiagnoseSettings:
    """What to diagnose and how; every field is a `castrl diagnose` flag (`group_size` -> --group_size).

    The model, data, sampling, verifier, output and runtime fields are the shared vocabulary's
    (`castrl.arguments`), as in `castrl train` and `castrl eval`; `teacher_weights`,
    `teacher_max_prompt_length`, `teacher_model` and `teacher_tag_placement` are
    `castrl.teacher.TeacherConfig`'s; `flip_margin`, `flip_correct`, `flip_incorrect`, `correct_threshold`
    and `gap_control` are `castrl.core.CastConfig`'s. `teachers` lists several contexts, each checked as a
    `TeacherConfig` with those settings; `context@placement` scores one context with another tag placement,
    so several placements are compared on the very same rollouts. The old names `style`, `adapter` and
    `out` are still accepted (and readable) until the next release."""

    teachers: list[str] = field(
        default_factory=lambda: list(DEFAULT_TEACHERS),
        metadata={
            "help": "Teacher contexts to score with, space- or comma-separated: "
            f"{', '.join(TEACHER_CONTEXTS)} (spec §3). with_peer_success reads another correct "
            "rollout of the same group (rows without one fall back to answer_free). context@placement scores "
            f"a context with another --teacher_tag_placement ({', '.join(TAG_PLACEMENTS)}), e.g. "
            "answer_free@every_user."
        },
    )
    n_prompts: int = field(default=16, metadata={"help": "Problems drawn (seeded) from the data."})
    gen_batch_size: int = field(default=32, metadata={"help": "Rollouts per generate call (whole groups)."})
    score_batch_size: int = field(default=16, metadata={"help": "Rollouts per scoring forward pass."})
    mask_truncated_completions: bool = field(
        default=True,
        metadata={"help": "Leave completions that hit --max_new_tokens without an end token out of every token "
                  "statistic, as the trainer leaves them out of the loss (spec §4); their rewards still count in "
                  "the group statistics, as in training."},
    )
    noise_floor: bool = field(
        default=True,
        metadata={"help": "Re-score the same tokens in ways that should not matter (another micro-batch split, a "
                  "shared prompt cache, the student's pass with autograd on, bf16) and report how far the gap moves and "
                  "how many of CAST's flips lie below that (docs/diagnostics.md); false skips these passes."},
    )
    noise_variants: str = field(
        default="auto",
        metadata={"help": "Comma-separated noise-floor variants of batch_split, prompt_cache, grad_forward, bf16; "
                  "auto: all of them, bf16 only where the device computes it natively."},
    )
    position_bins: int = field(default=10, metadata={"help": "Bins of relative position in the completion."})

    def __post_init__(self) -> None:
        # `--teachers a b` and `--teachers a,b` give the same list (frozen: set through object)
        names = [t.strip() for item in self.teachers for t in str(item).split(",") if t.strip()]
        object.__setattr__(self, "teachers", names)
        minimums = {
            "group_size": 2,
            "n_prompts": 1,
            "max_new_tokens": 1,
            "gen_batch_size": 1,
            "score_batch_size": 1,
            "position_bins": 1,
            "threads": 0,
        }
        for name, low in minimums.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                why = " (a group of one has no group statistics)" if name == "group_size" else ""
                raise ValueError(f"--{name} must be an integer >= {low}, got {value!r}{why}")
        if not (
            isinstance(self.temperature, (int, float))
            and math.isfinite(self.temperature)
            and self.temperature > 0
        ):
            raise ValueError(f"--temperature must be a finite number > 0, got {self.temperature!r}")
        check_prompt_style(self.prompt_style)
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"--dtype must be float32 or bfloat16, got {self.dtype!r}")
        self._check_teachers()
        self._check_model_paths()
        self.noise_variant_list()
        self.cast_config()  # validates --flip_margin and --correct_threshold

    def _check_teachers(self) -> None:
        if not self.teachers:
            raise ValueError(f"--teachers is empty; name one or more of {', '.join(TEACHER_CONTEXTS)}")
        unknown = [t for t in self.teachers if not _is_context(t.partition("@")[0])]
        if unknown:
            raise ValueError(
                f"--teachers: unknown teacher context(s) {unknown}; valid: {', '.join(TEACHER_CONTEXTS)}, or a "
                "template with {problem} or {user_turn} (as castrl train's --teacher_context takes)"
            )
        if len(set(self.teachers)) != len(self.teachers):
            raise ValueError(f"--teachers lists a context twice: {list(self.teachers)}")
        for name in self.teachers:
            try:
                self.teacher_config(name).check_host("diagnose")
            except ValueError as err:
                raise ValueError(f"--teachers {name}: {err}") from err
        kind = WeightsSpec.parse(self.teacher_weights).kind
        contexts = [self.teacher_config(name).context for name in self.teachers]
        if "student" in contexts and not (kind == "frozen" and self.lora_adapter) and self.teacher_model is None:
            # without training, refresh / ema / frozen-without-adapter weights are the policy's
            raise ValueError(
                f"--teachers student with --teacher_weights {self.teacher_weights} scores with the student's own "
                "weights in a run without training, so its gap is always 0; use --teacher_weights frozen with "
                "--lora_adapter (the base model as teacher), or drop student from --teachers"
            )

    def teacher_config(self, name: str) -> TeacherConfig:
        """The validated settings of the teacher `name` of --teachers: a context, or `context@placement`
        (without training, refresh:K and ema weights equal the policy; frozen differs only with --lora_adapter)."""
        context, _, placement = name.partition("@")
        return TeacherConfig(context=context, weights=self.teacher_weights,
                             max_prompt_length=self.teacher_max_prompt_length, model=self.teacher_model,
                             tag_placement=placement or self.teacher_tag_placement)  # fmt: skip

    def _check_model_paths(self) -> None:
        if os.path.isfile(os.path.join(os.path.expanduser(self.model), "adapter_config.json")):
            raise ValueError(
                f"--model {self.model!r} is a LoRA adapter folder; pass its base model as --model "
                "and this folder as --lora_adapter"
            )
        if self.lora_adapter and not os.path.isfile(
            os.path.join(os.path.expanduser(self.lora_adapter), "adapter_config.json")
        ):
            raise ValueError(
                f"--lora_adapter {self.lora_adapter!r} is not a PEFT adapter folder (no adapter_config.json)"
            )

    def noise_variant_list(self) -> list[str] | None:
        """--noise_variants as a list (None: auto, the device decides); ValueError naming an unknown one."""
        if self.noise_variants.strip() == "auto":
            return None
        names = [v.strip() for v in self.noise_variants.split(",") if v.strip()]
        unknown = [v for v in names if v not in NOISE_VARIANTS]
        if not names or unknown:
            raise ValueError(f"--noise_variants must be auto or some of {', '.join(NOISE_VARIANTS)}, got "
                             f"{self.noise_variants!r}")
        return names

    def cast_config(self) -> CastConfig:
        """The CastConfig whose flip rule, correctness threshold and gap control the report applies
        (defaults otherwise)."""
        try:
            return CastConfig(**{name: getattr(self, name) for name in CAST_FIELDS})
        except (TypeError, ValueError) as err:
            raise ValueError(f"--{' / --'.join(CAST_FIELDS)}: {err}") from err


def select_problems(settings: DiagnoseSettings) -> list[dict[str, Any]]:
    """Load the data, check the teacher contexts' columns, and draw `n_prompts` problems (seeded)."""
    problems = load_problems(settings.data, split=settings.split)
    if settings.n_prompts > len(problems):
        raise ValueError(
            f"--n_prompts {settings.n_prompts} but {settings.data!r} ({settings.split}) holds only "
            f"{len(problems)} problems; lower --n_prompts"
        )
    chosen = random.Random(settings.seed).sample(problems, settings.n_prompts)
    check_context_columns(chosen, [settings.teacher_config(t).context for t in settings.teachers], settings.data)
    return chosen


def check_context_columns(problems: Sequence[dict[str, Any]], teachers: Sequence[str], source: str) -> None:
    """Raise ValueError when a teacher context reads a column (answer, solution) some problem lacks."""
    for context in teachers:
        for column in ("answer", "solution"):
            if not context_uses(context, column):
                continue
            missing = [p.get("id", "?") for p in problems if not p.get(column)]
            if missing:
                raise ValueError(
                    f"--teachers {context} reads the {column!r} column, but {len(missing)} problem(s) of {source!r} "
                    f"have none (first: id {missing[0]!r}); drop {context} from --teachers or use data with a "
                    f"{column!r} column"
                )
