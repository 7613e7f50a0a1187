"""An external teacher (OPD-style): another frozen model scores the student's sampled tokens.

`teacher_model=<name or folder>` replaces the self-teacher's weights by a separate model, read under
any `teacher_context`, with CAST's correctness-aware rule unchanged (e.g. an 8B teacher for a 1.7B
student). The gap compares log-probs of the same token ids, so the teacher must share the student's
tokenizer: checked when the trainer is built, before any step. The model is frozen (eval mode, no
gradient) and never changes, so a checkpoint stores only its name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from .config import TeacherConfig
from .weights import TeacherWeights, WeightsSpec, has_adapter


def check_same_tokenizer(student: Any, teacher: Any, name: str) -> None:
    """Raise ValueError unless `teacher` maps every token string to the student's id, and back."""
    a, b = student.get_vocab(), teacher.get_vocab()
    if a == b:
        return
    only_student = sorted(set(a) - set(b))[:3]
    only_teacher = sorted(set(b) - set(a))[:3]
    moved = sorted(t for t in set(a) & set(b) if a[t] != b[t])[:3]
    raise ValueError(
        f"teacher_model {name!r} does not share the student's tokenizer ({len(a)} vs {len(b)} tokens; only in "
        f"the student: {only_student}, only in the teacher: {only_teacher}, different ids: {moved}). CAST's gap "
        "compares the two models' log-probs of the same token ids, so pick a teacher of the student's family "
        "(same vocabulary), or leave teacher_model unset for the self-teacher"
    )


class ExternalTeacher:
    """A frozen teacher model with the self-teacher's interface (`scoring`, `update`, state)."""

    def __init__(self, name: str, model: torch.nn.Module) -> None:
        self.name = name
        self.model = model.eval().requires_grad_(False)

    @contextmanager
    def scoring(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Yields the model that scores as the teacher: this one, not the policy."""
        yield self.model

    def update(self, model: torch.nn.Module, global_step: int) -> None:
        """Frozen: nothing to refresh."""

    def state_dict(self) -> dict[str, Any]:
        return {"spec": "external", "model": self.name}

    def load_state_dict(self, state: Mapping[str, Any], model: torch.nn.Module | None = None) -> None:
        """Check the checkpoint names this teacher model (`model`, the policy, is not needed: nothing is loaded)."""
        if state.get("spec") != "external" or state.get("model") != self.name:
            raise ValueError(
                f"checkpoint teacher state is {state.get('spec')} {state.get('model', '')!r}, but this run's "
                f"teacher_model is {self.name!r}"
            )


def load_external_teacher(
    name: str, student_tokenizer: Any, like: torch.nn.Module, prepare: Callable[[Any], None] | None = None
) -> ExternalTeacher:
    """Load `name` (HF id, folder, or 'smollm2-135m') on `like`'s device and dtype, frozen, after
    checking that it shares the student's tokenizer; `prepare(model)` adapts it to the host (TRL: its
    fused LM head, as for its own reference model)."""
    from castrl.models import load_checked

    parameter = next(like.parameters())
    try:
        model, tokenizer = load_checked(name, flag="teacher_model", dtype=parameter.dtype)
    except ValueError as err:
        raise ValueError(f"teacher_model {name!r}: {err}") from err
    check_same_tokenizer(student_tokenizer, tokenizer, name)
    if prepare is not None:
        prepare(model)
    return ExternalTeacher(name, model.to(parameter.device))


def build_teacher(
    config: TeacherConfig,
    policy: torch.nn.Module,
    student_tokenizer: Any,
    prepare: Callable[[Any], None] | None = None,
    zero3: bool = False,
    offload: bool = False,
    untrained: bool = False,
) -> TeacherWeights | ExternalTeacher:
    """The teacher a host scores with: the self-teacher's weights over `policy` (snapshot, EMA,
    frozen or the policy itself), or the external `config.model` (`prepare`: see load_external_teacher).
    `zero3`: the host runs DeepSpeed ZeRO-3, refused for a self-teacher that keeps a copy; `offload`:
    keep that copy on the CPU. `untrained`: the host takes no optimizer step (`castrl diagnose`), so a
    snapshot, an EMA or the initial weights equal the policy and no copy is kept; only `frozen` on a model
    with a LoRA adapter differs (the adapter is switched off)."""
    if config.model is None:
        weights = config.weights
        if untrained and not (WeightsSpec.parse(weights).kind == "frozen" and has_adapter(policy)):
            weights = "policy"  # before any step, every other self-teacher scores with the policy's weights
        return TeacherWeights(weights, policy, config.ema_decay, offload=offload, zero3=zero3)
    return load_external_teacher(config.model, student_tokenizer, policy, prepare)
