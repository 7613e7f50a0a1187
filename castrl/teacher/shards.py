"""Shard-local views of a model's trainable parameters, so the teacher can be swapped in by value.

Why not swap `.data` pointers: under FSDP the module computes from storage FSDP owns, not from what
a parameter's `.data` points at. FSDP2 all-gathers each DTensor parameter from its own sharded buffer;
FSDP1 all-gathers a FlatParameter from `_local_shard` (or its low-precision copy under mixed
precision), and a root module keeps its gathered parameters after a no-grad forward and reuses them
on the next one. A pointer swap therefore scores with the student. Writing values into the very
tensors FSDP gathers from, after releasing every gathered copy, scores with the teacher, and the same
swap again restores the student bit-exactly.

What "local" means here (`trainable_locals`): a plain or DDP parameter is itself; an FSDP2 DTensor
parameter is its local shard (`to_local()`, a view of FSDP's buffer); an FSDP1 FlatParameter
(`use_orig_params=False`) is its local padded shard; an FSDP1 `use_orig_params=True` parameter is
its sharded view into the flat shard (possibly empty on a rank). Every rank keeps only its shard.

DeepSpeed ZeRO-3 also partitions parameters, behind its own gather hooks; it is refused
(`refuse_partitioned`) with the fixes that work.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
ZERO3_FIX = (
    "castrl's refresh:<K> / ema / frozen-without-LoRA teachers keep a copy of the trainable parameters and "
    "swap it in by value, which needs the parameters the module computes from; DeepSpeed ZeRO-3 partitions "
    "them behind its own gather hooks, which castrl does not drive. Use DeepSpeed ZeRO-2 (zero_stage: 2; "
    "parameters stay whole on every rank), FSDP (accelerate's FSDP1 or FSDP2; castrl swaps the shard-local "
    "values), teacher_weights=policy (refresh:1 is the same teacher) or frozen with a LoRA adapter (the "
    "adapter is switched off, nothing is copied), or an external teacher_model."
)


def unwrap_replicated(model: torch.nn.Module) -> torch.nn.Module:
    """`model` without DDP / DataParallel wrappers (their parameters are the inner module's, replicated).
    FSDP wrappers stay: their hooks are what gathers the shards."""
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model


def clean_name(name: str) -> str:
    """A parameter name without FSDP1 / activation-checkpoint / compile wrapper prefixes, so the names
    of a model read before and after wrapping agree (`0.weight`, not `_fsdp_wrapped_module.0.weight`)."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def refuse_partitioned(model: torch.nn.Module, zero3: bool = False) -> None:
    """Raise ValueError under DeepSpeed ZeRO-3 (`zero3`, or parameters that carry its `ds_id`)."""
    if zero3 or any(hasattr(p, "ds_id") or hasattr(p, "ds_status") for p in model.parameters()):
        raise ValueError(f"DeepSpeed ZeRO-3 is not supported with this teacher: {ZERO3_FIX}")


def _fsdp1_modules(model: torch.nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return [m for m in model.modules() if isinstance(m, FullyShardedDataParallel)]


def _fsdp2_modules(model: torch.nn.Module) -> list[Any]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _is_dtensor(p: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without DTensor
        return False
    return isinstance(p, DTensor)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model`'s parameters are held per rank (FSDP1 or FSDP2), so each rank's copy differs."""
    model = unwrap_replicated(model)
    return bool(_fsdp1_modules(model) or _fsdp2_modules(model)) or any(_is_dtensor(p) for p in model.parameters())


@torch.no_grad()
def release_gathered(model: torch.nn.Module) -> None:
    """Free every gathered (unsharded) parameter, so the next forward gathers from the shards.

    FSDP2 root modules and FSDP1 root handles keep their gathered parameters after a forward (meant for
    the backward that follows); a forward after a value swap would reuse them and score with the old
    weights. FSDP2: `FSDPModule.reshard()` (public). FSDP1: the handle's own reshard, as FSDP runs it
    after a backward (`torch.distributed.fsdp._runtime_utils._reshard`; FSDP1 has no public call)."""
    model = unwrap_replicated(model)
    for module in _fsdp2_modules(model):
        module.reshard()
    fsdp1 = _fsdp1_modules(model)
    if not fsdp1:
        return
    from torch.distributed.fsdp._runtime_utils import _reshard

    for module in fsdp1:
        handle = getattr(module, "_handle", None)
        gathered = getattr(handle.flat_param, "_full_param_padded", None) if handle is not None else None
        # `_full_param_padded` exists after FSDP's lazy init; its storage is allocated while gathered
        if gathered is not None and handle.uses_sharded_strategy and gathered.untyped_storage().size() > 0:
            _reshard(module, handle, True)


def _local(p: torch.Tensor) -> torch.Tensor:
    """The tensor FSDP gathers `p` from (see the module docstring); shares `p`'s storage."""
    return p.to_local() if _is_dtensor(p) else p.detach()


@torch.no_grad()
def trainable_locals(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{clean name: shard-local tensor} of every trainable parameter, after `release_gathered`.

    Frozen parameters are left out: they are the same for teacher and student (with LoRA, all but the
    adapter)."""
    model = unwrap_replicated(model)
    release_gathered(model)
    return {clean_name(n): _local(p) for n, p in model.named_parameters() if p.requires_grad}


def layout_of(tensors: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, local shape, dtype) of each tensor: what a snapshot must match to be swapped in."""
    return [(name, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in tensors.items()]


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (0, 1 without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def swap_values(local: list[torch.Tensor], shadow: list[torch.Tensor]) -> None:
    """Exchange the values of each pair in place, one tensor at a time (one extra tensor of memory at
    most, not a second model); the same call again restores both sides bit-exactly."""
    for a, b in zip(local, shadow, strict=True):
        if a.numel() == 0:
            continue
        held = a.clone()
        a.copy_(b)
        b.copy_(held)


@torch.no_grad()
def load_full_values(model: torch.nn.Module, whole: dict[str, torch.Tensor]) -> None:
    """Write whole (unsharded) tensors, by clean name, into a sharded model's shards; every rank calls it
    with the whole tensors. FSDP2: each DTensor's own placements cut the local piece
    (`distribute_tensor` with `src_data_rank=None`: no communication). FSDP1: its public
    `summon_full_params(writeback=True)` gathers the parameters, castrl writes them, FSDP writes the
    shards back; so neither layout is re-derived here."""
    from torch.distributed.tensor import distribute_tensor

    model = unwrap_replicated(model)
    release_gathered(model)
    for name, p in model.named_parameters():
        key = clean_name(name)
        if key in whole and _is_dtensor(p):
            value = whole[key].to(p.device, p.dtype)
            p.to_local().copy_(distribute_tensor(value, p.device_mesh, p.placements, src_data_rank=None).to_local())
    if _fsdp1_modules(model):
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, writeback=True):
            for name, p in model.named_parameters():
                key = clean_name(name)
                if key in whole:
                    p.copy_(whole[key].to(p.device, p.dtype))
    release_gathered(model)
