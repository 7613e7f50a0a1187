"""Run an estimator step on some rows of a batch and write its output back at full batch size.

Both adapters keep rows out of the estimator (TRL: rows no reward function could score; verl:
padding rows without a response token), yet hand their framework one advantage per row of the
batch. `run_on_rows` is that select -> step -> write-back, once: the rows left out get 0, so no
advantage and no gradient. Pure torch (no TRL, no verl), used by `castrl.trl` and
`castrl.integrations.verl`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

# An estimator's `fn`, `base_step` or `token_step` (`castrl.core.EstimatorSpec`): (out, stats).
RowStep = Callable[..., tuple[torch.Tensor, dict[str, float]]]


def run_on_rows(
    step_fn: RowStep,
    keep: torch.Tensor,
    row_inputs: Sequence[torch.Tensor | None],
    *args: object,
) -> tuple[torch.Tensor, dict[str, float]]:
    """`step_fn(*(x[keep] for x in row_inputs), *args)`, its output scattered back over all B rows.

    Args:
        step_fn: returns `(out, stats)` for the b kept rows, `out` (b,) or (b, T).
        keep: (B,) bool, the rows `step_fn` sees.
        row_inputs: tensors of B rows ((B,) or (B, T)), passed positionally, kept rows only, in
            order; a None entry is passed as None (a teacher-free estimator's teacher log-probs).
        *args: passed after them unchanged (the estimator config, the step).

    Returns:
        (B,) or (B, T) fp32 on `out`'s device: `out` at the kept rows, 0 at the others; and the
        step's stats as it returned them (they describe the kept rows only).
    """
    if keep.dtype != torch.bool or keep.ndim != 1:
        raise ValueError(f"keep must be a (B,) bool tensor, got {keep.dtype} of shape {tuple(keep.shape)}")
    n_rows = keep.shape[0]
    if any(x is not None and x.shape[0] != n_rows for x in row_inputs):
        shapes = [None if x is None else tuple(x.shape) for x in row_inputs]
        raise ValueError(f"every row input must have keep's {n_rows} rows, got shapes {shapes}")
    rows = keep.nonzero().flatten()
    out, stats = step_fn(*(None if x is None else x[rows] for x in row_inputs), *args)
    full = torch.zeros((n_rows, *out.shape[1:]), dtype=torch.float32, device=out.device)
    return full.index_copy_(0, rows, out.float()), stats
