"""Which weights the self-teacher scores with (spec §3): `refresh:K` (the paper's: a stop-gradient
snapshot of the policy taken at step 0 and every K optimizer steps), the current `policy`, an `ema`
of it, or the initial model (`frozen`). Only trainable parameters are shadowed (with LoRA: the
adapter), since frozen ones are the same for teacher and student. The copy and the swap are
`ParamSnapshot`'s (`snapshot.py`), right on plain modules, DDP, FSDP1 and FSDP2.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from .shards import clean_name, unwrap_replicated
from .snapshot import ParamSnapshot

DEFAULT_TEACHER_WEIGHTS = "refresh:10"  # the paper's (Algorithm 1 line 35, §8.4)

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

    def describe(self) -> str:
        """What these weights are, in words (for error messages)."""
        return {
            "policy": "the policy's current weights",
            "ema": "an exponential moving average of the policy",
            "frozen": "the initial model",
            "refresh": f"a snapshot of the policy re-taken every {self.every} optimizer steps (the paper's teacher)",
        }[self.kind]

    def always_policy(self) -> bool:
        """True when the teacher scores with the weights that sampled the rollouts at every step:
        `policy`, or a snapshot refreshed after every optimizer step (`refresh:1`)."""
        return self.kind == "policy" or (self.kind == "refresh" and self.every == 1)


def has_adapter(model: Any) -> bool:
    """Whether `model` is a PEFT model whose adapter can be switched off (`frozen` = the base model)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class TeacherWeights:
    """Keeps the teacher's copy of the trainable parameters and swaps it in for scoring.

    Only trainable parameters are kept (with LoRA: the adapter only), since frozen ones are identical
    for teacher and student. The copy is a `ParamSnapshot`: shard-local under FSDP, swapped in by value
    (a `.data` pointer swap scores with the student under FSDP; `castrl.teacher.shards` says why).
    `frozen` on a PEFT model disables the adapter instead of keeping any copy. DeepSpeed ZeRO-3
    (`zero3`, or parameters that carry its attributes) is refused with the fixes that work.
    """

    def __init__(
        self, spec: str, model: torch.nn.Module, ema_decay: float = 0.99, offload: bool = False, zero3: bool = False
    ) -> None:
        self.spec = WeightsSpec.parse(spec)  # ema_decay is checked by TeacherConfig
        self.ema_decay = ema_decay
        self.use_adapter_off = self.spec.kind == "frozen" and has_adapter(model)
        self.snapshot: ParamSnapshot | None = None
        if self.spec.kind != "policy" and not self.use_adapter_off:
            self.snapshot = ParamSnapshot(model, offload=offload, zero3=zero3)
        self._names = [clean_name(n) for n, p in model.named_parameters() if p.requires_grad]

    @property
    def names(self) -> list[str]:
        """Names of the kept tensors (the trainable parameters; under FSDP1 without `use_orig_params`,
        its flat parameters)."""
        return self._names if self.snapshot is None else self.snapshot.names

    @property
    def shadow(self) -> list[torch.Tensor] | None:
        """The teacher's tensors, in `names` order (None: scores with the policy or the adapter off)."""
        return None if self.snapshot is None else self.snapshot.shadow

    @property
    def sharded(self) -> bool:
        """Whether each rank holds its own shards of the teacher (then each rank saves its own state)."""
        return self.snapshot is not None and self.snapshot.sharded

    @contextmanager
    def scoring(self, model: torch.nn.Module) -> Iterator[None]:
        """Context in which `model` computes with the teacher's weights (yields None: score with the
        policy's module itself; an external teacher yields its own model instead)."""
        if self.use_adapter_off:
            with unwrap_replicated(model).disable_adapter():
                yield
            return
        if self.snapshot is None:
            with nullcontext():
                yield
            return
        with self.snapshot.swapped(model):
            yield

    @torch.no_grad()
    def update(self, model: torch.nn.Module, global_step: int) -> None:
        """Call after each optimizer step: EMA update, or a snapshot every K steps for `refresh:K`."""
        if self.snapshot is None or self.spec.kind == "frozen":
            return
        if self.spec.kind == "ema":
            self.snapshot.ema_(model, 1.0 - self.ema_decay)
        elif self.spec.kind == "refresh" and global_step % self.spec.every == 0:
            self.snapshot.take(model)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"spec": self.spec.kind, "every": self.spec.every, "ema_decay": self.ema_decay}
        if self.snapshot is None:
            return {**state, "shadow": None}
        return {**state, **self.snapshot.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any], model: torch.nn.Module | None = None) -> None:
        """Restore a `state_dict`; raises ValueError on another teacher_weights or, for a sharded state, on
        another rank / world size / layout. `model`: the policy as it is now (needed when it was sharded
        after this teacher was built, as accelerate does when training starts)."""
        if state["spec"] != self.spec.kind or state.get("every", 0) != self.spec.every:
            raise ValueError(
                f"checkpoint teacher state is {state['spec']}:{state.get('every', 0)}, but this run uses "
                f"teacher_weights {self.spec.kind}:{self.spec.every}"
            )
        if self.snapshot is None or state["shadow"] is None:
            return
        self.snapshot.load_state_dict(state, model)
