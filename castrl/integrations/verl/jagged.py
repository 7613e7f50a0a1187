"""TransferQueue's per-row tensors as plain torch: jagged (nested, one length per row) or, when every row
has the same length, an ordinary (B, T) tensor. Every reader of those fields goes through these two
functions, so neither case is handled twice. Pure torch; no verl import.
"""

from __future__ import annotations

import torch


def padded(tensor: torch.Tensor, padding: float) -> torch.Tensor:
    """(B, T) from a jagged per-row tensor; TransferQueue returns a plain tensor when all rows match."""
    return tensor.to_padded_tensor(padding=padding) if tensor.is_nested else tensor


def row_lengths(tensor: torch.Tensor) -> torch.Tensor:
    """(B,) long length of each row of a jagged (or plain, full-width) tensor."""
    if tensor.is_nested:
        return tensor.offsets().diff()
    return torch.full((tensor.shape[0],), tensor.shape[1], dtype=torch.long)
