"""Drop a training micro-batch's trailing completion columns that no row scores.

TRL pads every completion of a generation batch to that batch's longest, then splits the batch into
micro-batches, so a micro-batch of short completions still runs the forward and backward over the
longest completion's width: on the bundled model's rollouts (mean ~35 tokens, one or two rows at the
128-token limit in most steps) most micro-batches are mostly padding. Columns after the last scored
token of a micro-batch change nothing the loss reads (causal attention: earlier positions never see
them; every TRL loss and metric is masked, and no normaliser uses the padded width), so
`trim_completion_padding` slices them off before the loss's forward pass. Same loss and gradients up
to float rounding.

Only the keys listed here are sliced; a micro-batch with any other key (a vision model's inputs,
a future TRL field) is left whole, so an unknown completion-aligned tensor is never cut out of step.
"""

from __future__ import annotations

from typing import Any

import torch

from castrl.rollouts.batching import scored_widths

# (B, T) tensors aligned with the completion tokens, in TRL 1.16's micro-batches and castrl's
COMPLETION_KEYS = frozenset({
    "completion_ids", "completion_mask", "tool_mask", "advantages", "old_per_token_logps", "ref_per_token_logps",
    "sampling_per_token_logps", "importance_sampling_ratio",
})  # fmt: skip
# keys that are not completion-aligned and need no slicing
OTHER_KEYS = frozenset({"prompt_ids", "prompt_mask", "num_items_in_batch", "castrl_row"})


def scored_width(completion_mask: torch.Tensor) -> int:
    """1 + the last column any row scores (>= 1, so an all-masked micro-batch keeps one column)."""
    return max(int(scored_widths(completion_mask).max()), 1) if completion_mask.numel() else 1


def trim_completion_padding(inputs: dict[str, Any]) -> dict[str, Any]:
    """`inputs` with its completion-aligned tensors cut to `scored_width` columns (a new dict), or
    `inputs` itself when nothing can be cut or it holds a key this module does not know."""
    if set(inputs) - COMPLETION_KEYS - OTHER_KEYS or "completion_mask" not in inputs:
        return inputs
    mask = inputs["completion_mask"]
    width, full = scored_width(mask), mask.shape[1]
    if width >= full:
        return inputs
    return {
        key: value[:, :width] if key in COMPLETION_KEYS and torch.is_tensor(value) and value.dim() == 2
        and value.shape[1] == full else value
        for key, value in inputs.items()
    }
