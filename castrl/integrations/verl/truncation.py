"""Truncated completions on verl: find them and take them out of the loss (spec §4, the paper's §8.4).

A completion is truncated when it used the whole response budget (`actor_rollout_ref.rollout.response_length`)
without ending on an end token. castrl's TRL trainer masks such rows (`mask_truncated_completions`, on by
default); verl 0.9 has no such option, so `castrl_sync` zeroes their `response_mask` in TransferQueue before
the advantage estimator and the actor update read it. Their rewards still count in the group statistics
(spec §4), so the trainer tells the estimator which rows form groups (`BoundInputs.in_groups`): rows with a
response token, before masking. verl's own padding rows (no response token) stay out, as before.
Pure torch on what TransferQueue returns (jagged tensors, or plain ones when every row has one length);
no TransferQueue calls here.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from .jagged import padded, row_lengths


def truncated_rows(
    lengths: torch.Tensor, last_tokens: torch.Tensor, max_length: int, end_token_ids: Collection[int]
) -> torch.Tensor:
    """(B,) bool: rows of `lengths` tokens that reached `max_length` and whose last token is no end token.

    Args:
        lengths: (B,) response lengths in tokens (0 for verl's padding rows).
        last_tokens: (B,) each row's last response token (any value where the length is 0).
        max_length: the rollout's response budget in tokens.
        end_token_ids: token ids that end a completion (the tokenizer's eos; an empty set means the
            length alone decides).
    """
    if lengths.ndim != 1 or last_tokens.shape != lengths.shape:
        raise ValueError(
            f"lengths and last_tokens must both be (B,), got {tuple(lengths.shape)} and {tuple(last_tokens.shape)}"
        )
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    at_limit = lengths >= max_length
    ends = torch.tensor(sorted(end_token_ids), dtype=last_tokens.dtype, device=last_tokens.device)
    ended = torch.isin(last_tokens, ends) if len(ends) else torch.zeros_like(at_limit)
    return at_limit & ~ended


def last_tokens_of(responses: torch.Tensor) -> torch.Tensor:
    """(B,) last token of each row of a jagged (B, *) or plain (B, T) `responses` tensor; -1 for an empty row."""
    lengths, dense = row_lengths(responses), padded(responses, -1)
    if dense.shape[1] == 0:  # every row empty
        return torch.full(lengths.shape, -1, dtype=dense.dtype)
    last = dense.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    return torch.where(lengths > 0, last, torch.full_like(last, -1))


def mask_rows(response_mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The jagged `response_mask` with every token of `rows` ((B,) bool) set to 0; lengths unchanged.

    verl recovers row lengths from the jagged offsets (`response_to_nested`), not from the mask's
    values, so a masked row keeps its length, its rewards and its log-probs. A plain (B, T) mask
    (every row of one length) stays plain.
    """
    if rows.shape != response_mask.shape[:1]:
        raise ValueError(f"rows must be ({response_mask.shape[0]},), got {tuple(rows.shape)}")
    if not response_mask.is_nested:
        return response_mask * (~rows).unsqueeze(1).to(response_mask.dtype)
    keep = (~rows).repeat_interleave(row_lengths(response_mask)).to(response_mask.values().dtype)
    return torch.nested.nested_tensor_from_jagged(response_mask.values() * keep, response_mask.offsets())
