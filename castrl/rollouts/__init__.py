"""Rollouts and their scores, host-free: everything between a prompt and the log-probs an estimator reads,
for the passes castrl runs itself (`castrl eval`, `castrl diagnose`, the bench, TRL's no-grad scoring).

    prompts ──► render ──► generate ──► groups ──► peers ──► teacher prompts ──► scoring
               (ids)      (the one     (G per     (RLRT's    (cut from the left,  (log-probs, one pass
                          model.generate) prompt)   texts)     padded: batching)    or a shared prompt cache)

- `render`: a prompt (chat messages or a rendered string) to token ids, the one renderer;
- `batching`: the left cut of over-long prompts and left padding;
- `generate`: the one `model.generate` call (`generate_ids`) and greedy / sampled completions per prompt;
- `decode`: castrl's decoding loop behind them (and behind TRL's rollouts, `generate_with_decode`): each
  distinct prompt prefilled once, top-k-first sampling, finished rows dropped from the batch;
- `groups`: GRPO groups of G samples per prompt (`sample_groups`, `Rollouts`), as a diagnosis draws them;
- `peers`: the text of another correct rollout of the group, for RLRT's teacher context;
- `scoring`: log-probs of sampled tokens after any prompt (`completion_logps`), and the module a teacher
  built by `castrl.teacher.build_teacher` scores with (`scorer`);
- `prompt_cache`: the same log-probs with each distinct prompt run once (its KV cache shared by its rows).

The TRL and verl adapters keep what is truly theirs: their hosts' rollout engines and tokenisation.
"""

from .batching import left_cut, left_pad
from .decode import Sampling, generate_with_decode
from .generate import Completion, generate_completions, generate_ids, stop_ids
from .groups import Rollouts, completion_mask, eos_ids, sample_groups
from .peers import peer_texts
from .prompt_cache import completion_logps_shared_prompts
from .render import Prompt, prompt_ids, render_prompt
from .scoring import chunk_logps, completion_logps, scorer

__all__ = [
    "Completion",
    "Prompt",
    "Rollouts",
    "Sampling",
    "chunk_logps",
    "completion_logps",
    "completion_logps_shared_prompts",
    "completion_mask",
    "eos_ids",
    "generate_completions",
    "generate_ids",
    "generate_with_decode",
    "left_cut",
    "left_pad",
    "peer_texts",
    "prompt_ids",
    "render_prompt",
    "sample_groups",
    "scorer",
    "stop_ids",
]
