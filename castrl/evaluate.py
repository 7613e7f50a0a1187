"""`castrl.evaluate`: the import path of castrl's evaluation functions before `castrl.evaluation` and
`castrl.rollouts` became their home; every public name is still importable from here.

Metrics and the held-out accuracy rule: `castrl.evaluation`; generation (`generate_completions`,
`Completion`, `Prompt`): `castrl.rollouts`.
"""

from castrl.evaluation import (
    aggregate,
    counted_correct,
    cut_at_budget,
    heldout_accuracy,
    is_boxed,
    maj_at_k,
    majority_vote,
    pass_at_k,
    problem_metrics,
    vote_key,
)
from castrl.rollouts.generate import Completion, generate_completions
from castrl.rollouts.render import Prompt

__all__ = [
    "Completion",
    "Prompt",
    "aggregate",
    "counted_correct",
    "cut_at_budget",
    "generate_completions",
    "heldout_accuracy",
    "is_boxed",
    "maj_at_k",
    "majority_vote",
    "pass_at_k",
    "problem_metrics",
    "vote_key",
]
