"""Token rows to tensors: the left cut of over-long prompts and the left padding every pass uses.

Decoder-only models continue on the right, so prompts sit flush right: padding goes on the left, and a
prompt longer than its budget loses its beginning, keeping the end of the context next to the completion.
One function each, so the teacher prompts of every host (`castrl.teacher.teacher_prompt_batch`, verl's
teacher batch, `castrl diagnose`) are cut and counted the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def left_cut(rows: Sequence[Sequence[int]], max_length: int | None) -> tuple[list[list[int]], int]:
    """Each row cut from the left to at most `max_length` tokens (None: unchanged), and how many were cut."""
    if max_length is None:
        return [list(r) for r in rows], 0
    n_cut = sum(len(r) > max_length for r in rows)
    return [list(r)[len(r) - min(len(r), max_length) :] for r in rows], n_cut


def left_pad(
    rows: Sequence[Sequence[int]], pad_id: int, max_length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ids, mask) both (N, width) long, rows flush right, and how many rows were longer than `max_length`;
    those are cut from the left (`left_cut`). An empty row is all padding."""
    kept, n_cut = left_cut(rows, max_length)
    width = max((len(r) for r in kept), default=0)
    ids = torch.full((len(kept), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(kept), width), dtype=torch.long)
    for i, row in enumerate(kept):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask, n_cut


def scored_widths(mask: torch.Tensor) -> torch.Tensor:
    """(N,) 1 + the last column each row of a (N, T) completion mask scores; 0 for a row scoring none.
    Columns after it change none of the row's scores under causal attention, so passes may stop there."""
    columns = torch.arange(1, mask.size(1) + 1, device=mask.device)
    return (mask.bool() * columns).amax(1) if mask.size(1) else mask.new_zeros(mask.size(0), dtype=torch.long)
