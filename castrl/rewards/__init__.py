"""Rewards: the verifier's score of a completion against its gold (spec §4's binary reward).

- `answers`: the final answer of a completion and of a gold, as short strings (`extract_final_answer`,
  `normalize_gold`);
- `verifier`: `Verifier` (math-verify equivalence of the two, with hard timeouts; `score_batch`) and
  `make_trl_reward`, its adapter to TRL's reward functions;
- `pool`: the killable worker processes the checks run in.

Every command, the bench and the TRL trainer score with the same `Verifier` (`castrl.rewards.Verifier`).
"""

from .answers import extract_final_answer, normalize_gold
from .verifier import STAT_KEYS, Verifier, benchmark, make_trl_reward

__all__ = ["STAT_KEYS", "Verifier", "benchmark", "extract_final_answer", "make_trl_reward", "normalize_gold"]
