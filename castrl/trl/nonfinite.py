"""Skip optimizer steps whose gradients are not finite, instead of writing NaN into the weights.

One non-finite loss (a NaN reward that slipped through, an overflow) would otherwise poison the
weights and the optimizer state for the rest of the run. `CASTTrainer.create_optimizer` installs the
guard and counts the skipped steps (`cast/skipped_nonfinite_steps`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def guard_nonfinite_steps(optimizer: torch.optim.Optimizer, on_skip: Callable[[], None]) -> None:
    """Make `optimizer.step()` a no-op (weights and optimizer state untouched) when any gradient is
    NaN/Inf, e.g. after a non-finite loss; gradients are zeroed and `on_skip()` is called instead."""
    inner_step = optimizer.step

    def step(*args: Any, **kwargs: Any):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and not all(bool(torch.isfinite(g).all()) for g in grads):
            optimizer.zero_grad(set_to_none=True)
            on_skip()
            return None
        return inner_step(*args, **kwargs)

    optimizer.step = step
