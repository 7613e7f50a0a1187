"""`ParamSnapshot`: a shard-local copy of a model's trainable parameters, swapped in by value.

The one mechanism behind every teacher that is not the policy itself (`refresh:K`, `ema`, `frozen`
without LoRA), on a plain module, DDP, FSDP1 or FSDP2, for the TRL trainer (`TeacherWeights`) and the
verl worker (`castrl.integrations.verl.worker`). `shards.py` says why the swap is by value and what a
"local" tensor is. Each rank keeps only its shard, optionally on the CPU (`offload`).

A snapshot taken from whole tensors is re-laid out the first time it meets the model sharded (the TRL
trainer builds its teacher before accelerate wraps the model in FSDP): the whole tensors are written
into the shards, read back shard-local, and the student's shards put back, all exact copies. A sharded
snapshot never changes layout: a checkpoint written with another world size is refused on load.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from .shards import (
    is_sharded,
    layout_of,
    load_full_values,
    rank_and_world,
    refuse_partitioned,
    release_gathered,
    swap_values,
    trainable_locals,
)


class ParamSnapshot:
    """A copy of `model`'s trainable parameters as this rank holds them (taken at construction)."""

    def __init__(self, model: torch.nn.Module, offload: bool = False, zero3: bool = False) -> None:
        refuse_partitioned(model, zero3)
        self.offload = offload
        self.sharded = is_sharded(model)
        self._adopt(trainable_locals(model))

    def _adopt(self, local: dict[str, torch.Tensor]) -> None:
        """Become a fresh copy of `local` (names, values, layout)."""
        self.names = list(local)
        self.layout = layout_of(local)
        self.shadow = [self._store(t) for t in local.values()]

    def _store(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", copy=True) if self.offload else t.detach().clone()

    # -- binding to the model as it is now -----------------------------------------------------------

    @torch.no_grad()
    def _locals(self, model: torch.nn.Module) -> list[torch.Tensor]:
        """`model`'s local trainable tensors in this snapshot's order, after re-laying out a whole-tensor
        snapshot onto a model sharded since; ValueError when the two cannot be matched."""
        refuse_partitioned(model)
        local = trainable_locals(model)
        if layout_of(local) == self.layout:
            return list(local.values())
        if self.sharded or not is_sharded(model):
            raise ValueError(_mismatch("the model's trainable parameters", layout_of(local), self.layout))
        self._adopt_whole(model, dict(zip(self.names, self.shadow, strict=True)))
        return list(trainable_locals(model).values())

    @torch.no_grad()
    def _adopt_whole(self, model: torch.nn.Module, whole: Mapping[str, torch.Tensor]) -> None:
        """Take `whole` (unsharded tensors by name) as this snapshot, laid out as `model`'s shards; the
        model's own values are put back exactly afterwards. Collective: every rank calls it."""
        student = {name: t.clone() for name, t in trainable_locals(model).items()}
        load_full_values(model, dict(whole))
        self.sharded = True
        self._adopt(trainable_locals(model))
        for t, held in zip(trainable_locals(model).values(), student.values(), strict=True):
            t.copy_(held)

    # -- the three things a teacher does ---------------------------------------------------------------

    @torch.no_grad()
    def take(self, model: torch.nn.Module) -> None:
        """Copy `model`'s current values into the snapshot (`refresh:K`)."""
        for t, s in zip(self._locals(model), self.shadow, strict=True):
            s.copy_(t)

    @torch.no_grad()
    def ema_(self, model: torch.nn.Module, weight: float) -> None:
        """snapshot += weight * (model - snapshot), per tensor (`ema`: weight = 1 - decay)."""
        for t, s in zip(self._locals(model), self.shadow, strict=True):
            s.lerp_(t.to(s.device, s.dtype), weight)

    @contextmanager
    def swapped(self, model: torch.nn.Module) -> Iterator[None]:
        """Inside, `model` computes with the snapshot's values; on exit (also on error) the student's
        values are back, bit-exactly. Every rank must enter together under FSDP (the forward is)."""
        with torch.no_grad():
            local = self._locals(model)
            swap_values(local, self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                release_gathered(model)  # the teacher's gathered copies must not serve the next forward
                local = trainable_locals(model)
                if layout_of(local) != self.layout:  # pragma: no cover - FSDP never re-lays out in a forward
                    raise RuntimeError(_mismatch("the model after scoring", layout_of(local), self.layout))
                swap_values(list(local.values()), self.shadow)

    # -- checkpoints ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The snapshot on the CPU, with what a resumed run must match: layout, and rank / world size
        when sharded (each rank then saves its own)."""
        rank, world = rank_and_world()
        return {
            "shadow": dict(zip(self.names, (s.detach().cpu() for s in self.shadow), strict=True)),
            "layout": [list(entry) for entry in self.layout],
            "sharded": self.sharded,
            "rank": rank if self.sharded else 0,
            "world_size": world if self.sharded else 1,
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any], model: torch.nn.Module | None = None) -> None:
        """Restore a `state_dict`. A sharded state must come from this rank of a run with this world
        size, and is laid out as `model`'s shards (pass `model` when it was sharded after this snapshot
        was taken). A whole-tensor state loads into a whole-tensor snapshot, re-laid out on first use."""
        shadow = state["shadow"]
        if not state.get("sharded"):
            if self.sharded:
                raise ValueError(
                    "the checkpoint's teacher snapshot holds whole tensors (saved without FSDP), but this run's "
                    "teacher is already sharded: resume with the sharding the checkpoint was written with"
                )
            missing = [name for name in self.names if name not in shadow]
            if missing:
                raise ValueError(f"checkpoint teacher state lacks parameters {missing[:3]}...")
        else:
            rank, world = rank_and_world()
            if (state.get("world_size"), state.get("rank")) != (world, rank):
                raise ValueError(
                    f"the teacher snapshot was saved by rank {state.get('rank')} of {state.get('world_size')} "
                    f"processes, but this is rank {rank} of {world}: a sharded snapshot holds one rank's shards "
                    "and resumes only with the same world size and sharding"
                )
            if model is not None and not self.sharded:
                self._locals(model)  # lay this snapshot out as the model's shards first
            saved = [(e[0], tuple(e[1]), e[2]) for e in state["layout"]]
            if saved != self.layout:
                raise ValueError(_mismatch("the checkpoint's teacher snapshot", saved, self.layout))
        for name, s in zip(self.names, self.shadow, strict=True):
            s.copy_(shadow[name].to(s.device, s.dtype))


def _mismatch(what: str, got: list, want: list) -> str:
    got_names, want_names = [g[0] for g in got], [w[0] for w in want]
    if got_names != want_names:
        diff = sorted(set(got_names) ^ set(want_names))[:3]
        detail = f"parameter names differ ({len(got_names)} vs {len(want_names)}; e.g. {diff})"
    else:
        first = next(g for g, w in zip(got, want, strict=True) if g != w)
        wanted = dict((w[0], w[1:]) for w in want)[first[0]]
        detail = f"{first[0]} is {first[1:]} here, {wanted} in the snapshot"
    return (
        f"{what} do not match the teacher snapshot: {detail}. The snapshot holds one rank's shards of the "
        "trainable parameters as they were laid out when it was taken (same model, sharding and world size)"
    )
