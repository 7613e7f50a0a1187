"""The vocabulary tile of TRL's fused LM head, sized for the device it runs on.

TRL 1.16's fused head (`add_fused_lm_head`) projects the hidden states onto the vocabulary one tile
of `trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE` = 32768 columns at a time. On CUDA a Triton kernel
folds each tile in place; elsewhere torch ops do, and every op leaves a (tokens x tile) fp32
temporary, in the forward pass and again in the backward (twice under gradient checkpointing).
Measured on the bundled model with LoRA, 2 threads, one training micro-batch (fwd+bwd, fused head,
checkpointing; `8 x 237` = rows x tokens): tile 32768 peaks at 6.67 GB RSS in 28.8 s, 8192 at 5.16 GB
in 23.5 s, 2048 at 4.48 GB in 20.7 s; `4 x 237` rows at tile 2048: 2.62 GB in 9.5 s (docs/steptime.md,
"Memory"). Smaller tiles are smaller temporaries that stay in cache: less memory and faster on CPU.

The tile is a module constant TRL reads at call time, so castrl sets it for the duration of its own
calls (`vocab_tile`) and puts the old value back: other models in the process keep TRL's default.
A different tile changes only the order of the log-sum-exp fold (float rounding).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import trl.trainer.utils as trl_utils

# ours: the tile `lm_head_vocab_tile=0` (auto) picks off CUDA/XPU, where TRL's torch fold runs (measured above)
CPU_VOCAB_TILE = 2048


def check_vocab_tile(requested: int) -> None:
    """Refuse a negative `lm_head_vocab_tile` (0 = auto); the config calls it before any model loads."""
    if requested < 0:
        raise ValueError(f"lm_head_vocab_tile must be >= 0 (0 = auto), got {requested}")


def resolve_vocab_tile(requested: int, device: torch.device) -> int | None:
    """The tile to use: `requested` when > 0; for 0 (auto), `CPU_VOCAB_TILE` on devices without TRL's
    Triton kernel and None (TRL's own) on CUDA/XPU. Negative sizes are refused."""
    check_vocab_tile(requested)
    if requested > 0:
        return requested
    return None if device.type in ("cuda", "xpu") else CPU_VOCAB_TILE


@contextmanager
def vocab_tile(size: int | None) -> Iterator[None]:
    """TRL's fused-head vocabulary tile set to `size` inside the block (None: leave TRL's)."""
    if size is None:
        yield
        return
    previous = trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE
    trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = size
    try:
        yield
    finally:
        trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = previous
