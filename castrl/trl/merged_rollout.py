"""LoRA rollouts on merged weights, with the base weights given back bit for bit.

TRL's transformers rollout decodes through the PEFT model as it is: every adapted linear layer runs
its base matmul plus the adapter's two small ones, each decode step. Decoding a few dozen rows on a
CPU is bound by that per-op overhead, not by FLOPs, so folding the adapter into the base weight for
the rollout is cheaper: 32 rows x 128 tokens of the bundled model with castrl's default LoRA, 2
threads, took 38.0-44.3 s merged against 46.0-47.7 s unmerged (docs/steptime.md, "Decoding").

Merging is `W += B A` in place; undoing it by subtraction does not give the same bits back in fp32,
and the drift would accumulate over a run. So the base weights are copied before the merge and
copied back after: the policy the update trains is exactly the one it was. The copy costs the
adapted weights' size in memory for the length of the rollout (~0.4 GB for the bundled model).

Only where it is safe: a plain (or DDP-wrapped) PEFT LoRA model, adapters without dropout in
effect (a merged layer cannot drop its input); not under FSDP or DeepSpeed, whose parameters are
sharded; not with vLLM, which merges for itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def _lora_layers(model: Any) -> list[Any]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft is optional: without it there is nothing to merge
        return []
    return [module for module in model.modules() if isinstance(module, LoraLayer)]


def _dropout_in_effect(layer: Any) -> bool:
    return layer.training and any(not isinstance(d, torch.nn.Identity) for d in layer.lora_dropout.values())


def can_merge_for_rollout(model: Any) -> bool:
    """True when `model` has LoRA layers, none merged already and none with dropout in effect."""
    layers = _lora_layers(model)
    return bool(layers) and not any(layer.merged or _dropout_in_effect(layer) for layer in layers)


@contextmanager
def merged_lora(model: Any, enabled: bool = True) -> Iterator[bool]:
    """Inside the block `model`'s LoRA adapters are merged into its base weights (yields True), or,
    when `enabled` is False or `can_merge_for_rollout` is not, nothing changes (yields False). On
    exit, however the block ends, the base weights are copied back exactly and the layers unmerged."""
    if not enabled or not can_merge_for_rollout(model):
        yield False
        return
    layers = _lora_layers(model)
    # the weight and, where a merge can touch it (PEFT's lora_bias), the bias
    saved = [(param, param.detach().clone()) for layer in layers
             for param in (layer.get_base_layer().weight, layer.get_base_layer().bias) if param is not None]  # fmt: skip
    merged: list[Any] = []
    try:
        with torch.no_grad():
            for layer in layers:
                layer.merge()
                merged.append(layer)
        yield True
    finally:
        with torch.no_grad():
            for layer in merged:
                layer.unmerge()  # PEFT's bookkeeping; the values themselves come from the copies below
            for param, value in saved:
                param.copy_(value)
