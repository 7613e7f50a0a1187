"""Binary verifier reward: math-verify equivalence of a completion's final answer with the gold.

The answer is extracted first (`answers.py`: last `\\boxed{}` wins, braces matched; math-verify's own
boxed mode joins *all* boxes into a set) and math-verify gets only that short string, wrapped in
`\\boxed{}`, after cheap limits (last 10k characters, answer length, digit runs) that defuse adversarial
text. Checks run in killable worker processes (`pool.py`) so a sympy stall cannot hang the trainer.
Reward: 1.0 correct, 0.0 wrong, unparseable or timed out, None when the gold itself cannot be parsed
(TRL turns None into NaN and leaves the sample out of the group statistics).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from .answers import extract_final_answer, normalize_gold
from .pool import (
    BAD_GOLD,
    GOLD_TIMEOUT,
    PARSE_FAILURE,
    TIMEOUT,
    Pool,
    check,
    kill_all,
    warm_up,
)

# Counters each check outcome bumps, per completion; the keys `Verifier.stats()` reports. parse_failures:
# no answer found, or math-verify could not parse it; worker_restarts counts events, not completions.
_COUNTERS = {PARSE_FAILURE: ("rewards/parse_failures",), BAD_GOLD: ("rewards/unparseable_gold",),
             TIMEOUT: ("rewards/timeouts",), GOLD_TIMEOUT: ("rewards/timeouts", "rewards/unparseable_gold")}
STAT_KEYS = ("rewards/checked", "rewards/parse_failures", "rewards/timeouts",
             "rewards/unparseable_gold", "rewards/worker_restarts")

class Verifier:
    """Scores completions against golds with a hard per-check timeout; see `score_batch`.

    Args:
        timeout_s: seconds one unique (answer, gold) check may take; the worker running it is then
            SIGKILLed and replaced. Its own SIGALRM fires at 0.8 x this, ending Python-level stalls
            without a restart. A batch takes at most about ceil(unique checks / workers) x timeout_s.
        num_workers: worker processes, started at construction (about 1-2 s, in the background).
        use_pool: False checks in this process: no start-up or IPC cost, but only a SIGALRM timeout
            on the main thread and none at all on other threads, so a sympy stall in C code (or off
            the main thread, any stall) hangs the caller. For tests and platforms without fork/exec.
        max_chars, max_answer_chars, max_digits, require_boxed: see `extract_final_answer`.
        memory_limit_mb: address-space cap per worker (RLIMIT_AS); None for no cap.

    Counters accumulate from construction or the last `pop_stats()`. Concurrent calls are serialized.
    """

    def __init__(self, timeout_s: float = 5.0, num_workers: int = 2, use_pool: bool = True, *,
                 max_chars: int = 10_000, max_answer_chars: int = 500, max_digits: int = 100,
                 require_boxed: bool = False, memory_limit_mb: int | None = 2048) -> None:
        positive = {"timeout_s": timeout_s, "num_workers": num_workers, "max_chars": max_chars,
                    "max_answer_chars": max_answer_chars, "max_digits": max_digits}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"Verifier {name} must be > 0, got {value!r}")
        self.timeout_s = float(timeout_s)
        self._limits = {"max_chars": max_chars, "max_answer_chars": max_answer_chars,
                        "max_digits": max_digits, "require_boxed": require_boxed}
        self._stats = dict.fromkeys(STAT_KEYS, 0)
        self._lock = threading.Lock()
        self._pool = Pool(num_workers, self.timeout_s, memory_limit_mb) if use_pool else None
        if self._pool is None:
            warm_up()
        self._finalizer = weakref.finalize(self, kill_all, self._pool.workers if self._pool else [], os.getpid())
        self._closed = False

    def score_batch(self, completions: Sequence[str], golds: Sequence[object]) -> list[float | None]:
        """1.0/0.0 per completion, None where its gold is unparseable. Equal (answer, gold) pairs are checked once."""
        if len(completions) != len(golds):
            raise ValueError(f"completions and golds must have equal length, got {len(completions)} and {len(golds)}")
        if self._closed:
            raise RuntimeError("Verifier is closed; create a new one")
        with self._lock:
            rewards: list[float | None] = [None] * len(completions)
            pending = self._prepare(completions, golds, rewards)
            keys = list(pending)
            if self._pool is None:
                outcomes = [check(a, g, self.timeout_s) for a, g in keys]
            else:
                outcomes = self._pool.run(keys)
                self._stats["rewards/worker_restarts"] += self._pool.restarts
                self._pool.restarts = 0
            for key, (reward, outcome) in zip(keys, outcomes, strict=True):
                for i in pending[key]:
                    rewards[i] = reward
                    self._count(outcome)
            self._stats["rewards/checked"] += len(completions)
            return rewards

    def _prepare(self, completions: Sequence[str], golds: Sequence[object],
                 rewards: list[float | None]) -> dict[tuple[str, str], list[int]]:
        """Settle what needs no sympy (bad gold: None, no answer: 0.0); group the rest by (answer, gold)."""
        pending: dict[tuple[str, str], list[int]] = {}
        for i, (completion, gold) in enumerate(zip(completions, golds, strict=True)):
            gold_n = normalize_gold(gold, max_answer_chars=self._limits["max_answer_chars"])
            answer = extract_final_answer(completion, **self._limits)
            if gold_n is None:
                self._count(BAD_GOLD)
            elif answer is None:
                rewards[i] = 0.0
                self._count(PARSE_FAILURE)
            else:
                pending.setdefault((answer, gold_n), []).append(i)
        return pending

    def _count(self, outcome: str) -> None:
        for key in _COUNTERS.get(outcome, ()):
            self._stats[key] += 1

    def stats(self) -> dict[str, int]:
        """Counters since construction or the last `pop_stats()` (items, except worker_restarts: events)."""
        return dict(self._stats)

    def pop_stats(self) -> dict[str, int]:
        """`stats()`, then reset the counters to zero (call once per logged step)."""
        out, self._stats = self.stats(), dict.fromkeys(STAT_KEYS, 0)
        return out

    def worker_pids(self) -> list[int]:
        """PIDs of the live workers (for monitoring and tests); empty without a pool."""
        return [w.proc.pid for w in self._pool.workers] if self._pool else []

    def close(self) -> None:
        """Kill the workers; idempotent. Also runs at garbage collection and interpreter exit."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _completion_text(completion: object) -> str:
    """Text of a TRL completion: a str, or a conversation whose assistant turns are joined."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "\n".join(str(m.get("content") or "") for m in completion
                         if isinstance(m, dict) and m.get("role", "assistant") == "assistant")
    raise TypeError(f"completion must be a str or a list of message dicts, got {type(completion).__name__}")


def make_trl_reward(verifier: Verifier, name: str = "accuracy", log_stats: bool = True) -> Callable[..., list]:
    """A TRL GRPO reward function reading the gold from the dataset column `answer`.

    TRL names the metric `rewards/<name>/mean` after `__name__`. When TRL passes `log_metric` and
    `log_stats` is set, the verifier's counters are popped and logged on every call (TRL averages
    them per logging step, so they read as per-call counts).
    """
    def reward(completions: Sequence[Any], answer: Sequence[object], **kwargs: Any) -> list[float | None]:
        rewards = verifier.score_batch([_completion_text(c) for c in completions], list(answer))
        log_metric = kwargs.get("log_metric")
        if log_stats and log_metric is not None:
            for key, value in verifier.pop_stats().items():
                log_metric(key, float(value))
        return rewards

    reward.__name__ = reward.__qualname__ = name
    return reward


def benchmark(n: int = 500, use_pool: bool = True, num_workers: int = 2, seed: int = 0) -> float:
    """Checks per second on `n` short GSM8K-style completions (about 70 % correct, distinct golds).

    Worker start-up is excluded (a first small batch waits for it); the one big batch is timed.
    """
    import random
    import time
    rng = random.Random(seed)
    golds = [str(rng.randint(1, 10_000)) for _ in range(n)]
    completions = [f"Step 1: {rng.randint(1, 99)} + {rng.randint(1, 99)}. So the total is "
                   f"\\boxed{{{g if rng.random() < 0.7 else int(g) + 1}}}." for g in golds]
    with Verifier(num_workers=num_workers, use_pool=use_pool) as v:
        v.score_batch(completions[:4], golds[:4])
        t0 = time.perf_counter()
        v.score_batch(completions, golds)
        return n / (time.perf_counter() - t0)
