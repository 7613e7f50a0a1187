"""Bench methods: `estimator[@field=value...]` -> the CASTTrainerConfig overrides of one cell.

A method is a registered estimator name (`castrl.core.ADVANTAGE_ESTIMATORS`), optionally followed by
knobs that change single fields (`cast@flip=false`, `cast@teacher_context=with_reference`), so an
ablation changes exactly one thing relative to its estimator and a paired difference isolates it.
Nothing here knows an estimator by name: its fields, whether it has a teacher and which teacher the
paper pairs it with all come from the registry.

Teachers: an estimator with a teacher gets the context the paper pairs it with
(`paper_teacher_context`) and the paper's weights (`refresh:10`), unless the tier realises that
context differently for its model (`Teacher`): a model trained from scratch cannot read the paper's
chat-style contexts, so the tiny tier maps them to prompts its SFT taught it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from castrl.core import ADVANTAGE_ESTIMATORS, get_estimator
from castrl.teacher import DEFAULT_TEACHER_CONTEXT, DEFAULT_TEACHER_WEIGHTS

# Trainer fields a method may set besides its estimator's and the teacher's: the policy loss that
# pairs with an estimator (Dr. GRPO's constant-length normaliser: `dr_grpo@loss_type=dr_grpo`).
TRAINER_KNOBS = ("loss_type",)


@dataclass(frozen=True)
class Teacher:
    """How a tier realises one of the paper's teacher contexts: the context its model can read (a
    `castrl.teacher` context name or a template) and the weights it scores with."""

    context: str
    weights: str = DEFAULT_TEACHER_WEIGHTS


def tier_teacher(paper_context: str, teachers: Mapping[str, Teacher]) -> Teacher:
    """The tier's teacher for `paper_context`; the paper's own (that context, refresh:10) when unmapped."""
    return teachers.get(paper_context, Teacher(paper_context))


def teacher_fields() -> tuple[str, ...]:
    """The CASTTrainerConfig teacher fields a knob may set (teacher_context, teacher_weights, ...)."""
    from castrl.trl import CASTTrainerConfig

    return tuple(f.name for f in fields(CASTTrainerConfig) if f.name.startswith("teacher_"))


def estimator_fields(name: str) -> tuple[str, ...]:
    """Fields of estimator `name`'s config class, from the registry."""
    return tuple(f.name for f in fields(get_estimator(name).config_cls))


def method_overrides(method: str, teachers: Mapping[str, Teacher] | None = None) -> dict[str, Any]:
    """CASTTrainerConfig overrides of `method` on a tier whose teachers are `teachers` (see `Teacher`).

    Knob values are read as JSON where they parse (numbers, true/false, lists, null), else as strings
    (`cast@teacher_weights=refresh:5`). A `teacher_context` knob naming one of the paper's contexts
    gets the tier's realisation of it, so `cast@teacher_context=with_reference` means the same
    ablation on every tier.
    """
    teachers = teachers or {}
    name, *knobs = method.split("@")
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r} in bench method {method!r}; registered estimators: "
                         f"{', '.join(ADVANTAGE_ESTIMATORS.names())}, each optionally followed by @field=value")
    spec = get_estimator(name)
    out: dict[str, Any] = {"advantage_estimator": name}
    if spec.needs_teacher:
        teacher = tier_teacher(spec.paper_teacher_context or DEFAULT_TEACHER_CONTEXT, teachers)
        out.update(teacher_context=teacher.context, teacher_weights=teacher.weights)
    for knob in knobs:
        key, value = parse_knob(method, knob)
        if key == "teacher_context" and isinstance(value, str):
            value = tier_teacher(value, teachers).context
        out[key] = value
    return out


def parse_knob(method: str, knob: str) -> tuple[str, Any]:
    """`field=value` of method `method` -> (field, value). The field must belong to the method's
    estimator config (from the registry), the teacher (when the estimator has one) or `TRAINER_KNOBS`."""
    name = method.split("@")[0]
    key, sep, text = knob.partition("=")
    known = set(estimator_fields(name)) | set(TRAINER_KNOBS)
    if get_estimator(name).needs_teacher:
        known |= set(teacher_fields())
    if not sep or key not in known:
        owners = [n for n in ADVANTAGE_ESTIMATORS.names() if key in estimator_fields(n)]
        hint = f" ({key!r} is a field of {', '.join(owners)})" if owners else ""
        raise ValueError(f"bad knob {knob!r} in bench method {method!r}: expected field=value with field one of "
                         f"{', '.join(sorted(known))}{hint}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    return key, value


def parse_methods(spec: str | None, grid: Sequence[str], teachers: Mapping[str, Teacher] | None = None
                  ) -> tuple[str, ...]:
    """`--methods a,b,c` (None or 'all' = the tier's full `grid`); a bad method fails naming what is valid."""
    if spec is None or spec == "all":
        return tuple(grid)
    names = tuple(part.strip() for part in spec.split(",") if part.strip())
    if not names:
        raise ValueError(f"--methods is empty; the tier's grid: {', '.join(grid)}")
    for name in names:
        method_overrides(name, teachers)  # raises with the registered names or the valid fields
    return names
