"""Generation-based evaluation: one held-out accuracy rule and one model evaluation, behind `castrl train`
(held-out before/after), `castrl eval` and the bench.

- `metrics`: pure functions of per-sample correctness and answers (`counted_correct`, `pass_at_k`,
  `majority_vote`, `maj_at_k`, `problem_metrics`, `aggregate`) and `cut_at_budget`;
- `heldout`: greedy held-out accuracy (`heldout_accuracy`);
- `arguments` / `run`: `castrl eval`'s `EvalArguments` and `evaluate_model` (greedy pass, n samples,
  metrics, budget sweep), which the bench's final evaluation calls as they are.

Generation is `castrl.rollouts`'s; evaluation shares only the verifier with the training reward path.
"""

from .heldout import heldout_accuracy
from .metrics import (
    aggregate,
    counted_correct,
    cut_at_budget,
    is_boxed,
    maj_at_k,
    majority_vote,
    pass_at_k,
    problem_metrics,
    vote_key,
)

__all__ = [
    "aggregate",
    "counted_correct",
    "cut_at_budget",
    "heldout_accuracy",
    "is_boxed",
    "maj_at_k",
    "majority_vote",
    "pass_at_k",
    "problem_metrics",
    "vote_key",
]
