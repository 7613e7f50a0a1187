"""Which weights the self-teacher scores with (spec §3): `refresh:K` (the paper's: a stop-gradient
snapshot of the policy taken at step 0 and every K optimizer steps), the current `policy`, an `ema`
of it, or the initial model (`frozen`). Only trainable parameters are shadowed (with LoRA: the
adapter), since frozen ones are the same for teacher and student.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

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

    Only trainable parameters are shadowed (with LoRA: the adapter only), since frozen ones are
    identical for teacher and student. Scoring swaps `.data` pointers (no copy) and swaps back.
    `frozen` on a PEFT model disables the adapter instead of keeping any copy.
    """

    def __init__(self, spec: str, model: torch.nn.Module, ema_decay: float = 0.99) -> None:
        self.spec = WeightsSpec.parse(spec)  # ema_decay is checked by TeacherConfig
        self.ema_decay = ema_decay
        self.use_adapter_off = self.spec.kind == "frozen" and has_adapter(model)
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.shadow: list[torch.Tensor] | None = None
        if self.spec.kind != "policy" and not self.use_adapter_off:
            self.shadow = [p.detach().clone() for p in self._params(model)]

    def _params(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        named = dict(model.named_parameters())
        return [named[n] for n in self.names]

    @contextmanager
    def scoring(self, model: torch.nn.Module) -> Iterator[None]:
        """Context in which `model` computes with the teacher's weights (yields None: score with the
        policy's module itself; an external teacher yields its own model instead)."""
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
