"""Verifier reward: answer extraction, gold normalization, pool timeouts/crash recovery, TRL wrapper.

Pool tests share one 2-worker Verifier with a 1 s timeout; tests that kill workers prove it recovers,
so later tests running on the same pool is part of what is checked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from castrl.rewards import Verifier, extract_final_answer, make_trl_reward, normalize_gold

TIMEOUT_S = 1.0
SLACK_S = 1.5  # select wake-up, SIGKILL + wait, JSON round trip on a loaded 2-core machine
HANG = "\\boxed{9^{9^{9}}}"  # sympy evaluates 9**387420489 in Python code: minutes without a timeout

# (completion, gold, expected reward)
CASES = [
    ("The answer is \\boxed{42}.", "42", 1.0),
    ("\\boxed{41}", "42", 0.0),
    ("so \\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", 1.0),
    ("first \\boxed{1}, then corrected: \\boxed{2}", "2", 1.0),
    ("first \\boxed{2}, then corrected: \\boxed{1}", "2", 0.0),
    ("\\boxed{\\boxed{7}}", "7", 1.0),
    ("1/2", "0.5", 1.0),
    ("0.5", "1/2", 1.0),
    ("\\boxed{6,966}", "6966", 1.0),
    ("\\boxed{6966}", "Total: 6,000 + 966 = 6,966\n#### 6,966", 1.0),
    ("She has 5 + 3 = 8 apples.\n#### 8", "8", 1.0),
    ("**73**", "73", 1.0),
    ("\\boxed{}", "42", 0.0),
    ("\\boxed{number}", "42", 0.0),
    ("\\boxed{42", "42", 0.0),  # truncated box: no answer, no fallback to the bare 42
    ("no idea", "42", 0.0),
    ("", "42", 0.0),
    ("\\boxed{x = 5}", "5", 1.0),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}", 1.0),
]


@pytest.fixture(scope="module")
def pool():
    with Verifier(timeout_s=TIMEOUT_S, num_workers=2) as v:
        yield v


@pytest.fixture(scope="module")
def inproc():
    return Verifier(timeout_s=TIMEOUT_S, use_pool=False)


def _wait_ready(v: Verifier, limit_s: float = 60.0) -> None:
    """Timed tests must not include worker start-up (or a restart's): score until every worker reported in."""
    t0 = time.monotonic()
    while not all(w.ready for w in v._pool.workers):
        assert time.monotonic() - t0 < limit_s, "verifier workers did not start"
        v.score_batch(["\\boxed{1}"], ["1"])
        time.sleep(0.05)


def _timed(v: Verifier, completions: list[str], golds: list[str]) -> tuple[list, float]:
    t0 = time.monotonic()
    out = v.score_batch(completions, golds)
    return out, time.monotonic() - t0


def _assert_scores_normally(v: Verifier) -> None:
    out = v.score_batch([c for c, _, _ in CASES], [g for _, g, _ in CASES])
    assert out == [e for _, _, e in CASES]


# ---- pure extraction ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("\\boxed{42}", "42"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{1} and \\boxed{2}", "2"),
    ("\\fbox{3}", "3"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\boxed{a \\\\}", "a \\\\"),  # `\\` then `}`: the brace closes the box
    ("\\boxed{}", None),
    ("\\boxed{ }", None),
    ("\\boxed{12", None),
    ("**73**", "73"),
    ("It costs $1,234.50 in total", "1,234.50"),
    ("3/4 of them", "3/4"),
    ("... 5 apples\n#### 5\nthanks", "5"),
    ("no digits", None),
    ("", None),
    ("\\boxed{" + "9" * 101 + "}", None),
    ("a" * 1_000_000 + "\\boxed{5}", "5"),
    ("\\boxed{5}" + "x" * 20_000, None),  # the box lies outside the last max_chars characters
])
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


def test_extract_require_boxed_and_limits():
    assert extract_final_answer("**73**", require_boxed=True) is None
    assert extract_final_answer("\\boxed{73}", require_boxed=True) == "73"
    assert extract_final_answer("\\boxed{" + "1" * 20 + "}", max_digits=10) is None
    assert extract_final_answer("\\boxed{" + "x+" * 300 + "}", max_answer_chars=500) is None
    with pytest.raises(TypeError, match="completion must be a str"):
        extract_final_answer(42)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("\\boxed{}#0123456789,./ -x$")), max_size=300))
def test_extract_never_raises_and_respects_limits(text):
    answer = extract_final_answer(text)
    assert answer is None or (0 < len(answer) <= 500 and answer == answer.strip())


@pytest.mark.parametrize(("gold", "expected"), [
    ("42", "42"),
    (42, "42"),
    ("Natalia sold 48/2 = 24 clips.\n#### 1,234", "1234"),
    ("#### -3", "-3"),
    ("$\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("so the answer is $\\boxed{\\frac{\\pi}{2}}$", "\\frac{\\pi}{2}"),
    ("(1,2)", "(1,2)"),
    ("", None),
    ("####", None),
    ("#### ", None),
    ("\\boxed{}", None),
    ("  $ $ ", None),
    (None, None),
    (True, None),
])
def test_normalize_gold(gold, expected):
    assert normalize_gold(gold) == expected


def test_normalize_gold_rejects_wrong_type():
    with pytest.raises(TypeError, match="gold answer must be a str"):
        normalize_gold(["42"])


# ---- scoring -----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["pool", "inproc"])
def test_score_batch_cases(which, request):
    v = request.getfixturevalue(which)
    v.pop_stats()
    _assert_scores_normally(v)
    stats = v.pop_stats()
    assert stats["rewards/checked"] == len(CASES)
    # "\boxed{}", "\boxed{42" (unclosed), "no idea", "": no answer found
    assert stats["rewards/parse_failures"] == 4
    assert stats["rewards/timeouts"] == stats["rewards/unparseable_gold"] == 0
    assert v.stats()["rewards/checked"] == 0  # pop_stats reset the counters


def test_unparseable_gold_is_none_and_counted(pool):
    pool.pop_stats()
    golds = ["", "####", "\\boxed{}", "\\text{}", None, "42"]
    out = pool.score_batch(["\\boxed{42}"] * len(golds), golds)
    assert out == [None] * 5 + [1.0]
    assert pool.pop_stats()["rewards/unparseable_gold"] == 5


def test_score_batch_validates_inputs(pool):
    with pytest.raises(ValueError, match="equal length"):
        pool.score_batch(["\\boxed{1}"], ["1", "2"])
    with pytest.raises(TypeError, match="completion must be a str"):
        pool.score_batch([None], ["1"])
    for bad in ({"timeout_s": 0}, {"num_workers": 0}, {"max_chars": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Verifier(use_pool=False, **bad)


def test_hanging_expression_hangs_in_process_without_timeout():
    """The premise of the pool: with no alarm (as off the main thread) this check outlives the timeout."""
    code = "from castrl.rewards.pool import check; check('9^{9^{9}}', '42', 0.0)"
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", code], timeout=3 * TIMEOUT_S + 1, capture_output=True)


@pytest.mark.slow
def test_hanging_expression_hangs_in_process_over_10s():
    code = "from castrl.rewards.pool import check; check('9^{9^{9}}', '42', 0.0)"
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", code], timeout=12, capture_output=True)


@pytest.mark.parametrize("which", ["pool", "inproc"])
def test_hanging_expression_times_out(which, request):
    v = request.getfixturevalue(which)
    if which == "pool":
        _wait_ready(v)
    v.pop_stats()
    out, elapsed = _timed(v, [HANG, "\\boxed{42}"], ["42", "42"])
    assert out == [0.0, 1.0]
    assert elapsed < TIMEOUT_S + SLACK_S
    assert v.pop_stats()["rewards/timeouts"] == 1
    _assert_scores_normally(v)


def test_pool_times_out_off_the_main_thread(pool):
    """Where math-verify's SIGALRM cannot work at all, the pool's deadline still holds."""
    _wait_ready(pool)
    result: dict[str, object] = {}

    def work() -> None:
        result["out"], result["elapsed"] = _timed(pool, [HANG, "\\boxed{7}"], ["42", "7"])

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=3 * TIMEOUT_S + SLACK_S)
    assert not thread.is_alive()
    assert result["out"] == [0.0, 1.0] and result["elapsed"] < TIMEOUT_S + SLACK_S


def test_worker_that_cannot_start_raises_instead_of_hanging():
    with Verifier(timeout_s=TIMEOUT_S, num_workers=1, memory_limit_mb=16) as v:
        with pytest.raises(RuntimeError, match="exited during start-up.*memory_limit_mb"):
            v.score_batch(["\\boxed{1}"], ["1"])


def test_frozen_worker_is_killed_and_replaced(pool):
    """A worker stuck where no signal reaches (SIGSTOP stands in for a C-level stall) is hard-killed."""
    _wait_ready(pool)
    pool.pop_stats()
    before = pool.worker_pids()
    os.kill(before[0], signal.SIGSTOP)  # the first idle worker gets the next task
    out, elapsed = _timed(pool, ["\\boxed{42}"], ["42"])
    # It froze before reporting the gold parsed, so which side hung is unknown: scored as a gold failure.
    assert out == [None]
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + SLACK_S
    stats = pool.pop_stats()
    assert stats["rewards/timeouts"] == stats["rewards/worker_restarts"] == 1
    after = pool.worker_pids()
    assert after[0] != before[0] and after[1] == before[1]
    _assert_scores_normally(pool)


def test_worker_crash_mid_task_scores_zero_and_recovers():
    with Verifier(timeout_s=5.0, num_workers=1) as v:
        v.score_batch(["\\boxed{1}"], ["1"])  # wait until the worker is ready
        pid = v.worker_pids()[0]
        os.kill(pid, signal.SIGSTOP)  # hold it mid-task, then crash it
        threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()
        out, elapsed = _timed(v, ["\\boxed{42}"], ["42"])
        assert out == [0.0] and elapsed < 2.5  # the crash is noticed at once, not after timeout_s
        assert v.pop_stats()["rewards/worker_restarts"] == 1
        assert v.score_batch(["\\boxed{42}"], ["42"]) == [1.0]


def test_idle_worker_death_is_recovered(pool):
    pool.pop_stats()
    victim = pool._pool.workers[1].proc
    victim.kill()
    victim.wait(timeout=10)  # dead before the batch, so this is not a mid-task crash
    _assert_scores_normally(pool)
    assert pool.pop_stats()["rewards/worker_restarts"] == 1
    assert all(w.proc.poll() is None for w in pool._pool.workers)


def test_close_kills_workers():
    v = Verifier(timeout_s=TIMEOUT_S, num_workers=2)
    procs = [w.proc for w in v._pool.workers]
    with v:
        assert v.score_batch(["\\boxed{3}"], ["3"]) == [1.0]
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(RuntimeError, match="closed"):
        v.score_batch(["\\boxed{3}"], ["3"])
    v.close()  # idempotent


# ---- TRL wrapper -------------------------------------------------------------------------------


def test_trl_reward_handles_string_and_conversational_completions(inproc):
    inproc.pop_stats()
    reward = make_trl_reward(inproc)
    assert reward.__name__ == "accuracy"
    logged: dict[str, float] = {}
    conv = [[{"role": "assistant", "content": "\\boxed{4}"}], [{"role": "assistant", "content": "\\boxed{5}"}]]
    out = reward(prompts=[[{"role": "user", "content": "2+2?"}]] * 2, completions=conv, answer=["4", "4"],
                 completion_ids=[[1], [2]], trainer_state=None, log_metric=logged.__setitem__)
    assert out == [1.0, 0.0]
    assert logged["rewards/checked"] == 2.0 and "rewards/timeouts" in logged
    assert reward(completions=["so 12", "#### 7"], answer=[12, "#### 8"]) == [1.0, 0.0]
    assert make_trl_reward(inproc, name="correct").__name__ == "correct"
    with pytest.raises(TypeError, match="list of message dicts"):
        reward(completions=[{"content": "4"}], answer=["4"])


# ---- adversarial corpus ------------------------------------------------------------------------

# Expressions sympy evaluates for minutes, or in C code, when given no timeout.
SYMPY_BOMBS = [
    "9^{9^{9}}", "9^{9^{9^{9}}}", "10^{10^{10}}", "(10^{7})!", "10^{10^{10}}!", "\\frac{1}{10^{10^{10}}}",
    "2^{2^{2^{2^{2^{2}}}}}", "e^{10^{10}}", "\\sqrt[10^{9}]{2}", "\\binom{10^{9}}{5 \\cdot 10^{8}}",
    "\\prod_{k=1}^{10^{9}} k", "\\sum_{k=1}^{10^{10}} k^{k}", "\\int_0^1 x^{10^{9}} dx",
    "x^{10^{10}} - x^{10^{10}}", "\\left(1+\\frac{1}{10^{9}}\\right)^{10^{9}}", "10^{-10^{10}}",
    "(9^{9^{9}}) \\bmod 7", "\\lfloor 9^{9^{9}} / 7 \\rfloor", "\\gcd(9^{9^{9}}, 6)", "99999^{99999^{9}}",
]
LOOKALIKES = [
    "\uff14\uff12", "\u0664\u0662", "\u096a\u0968", "\U0001d7d2\U0001d7d0", "\u2074\u00b2", "4\u200b2",
    "\u202e24", "\u0417", "\u039f", "4\ufe0f\u20e32", "\ud800", "4\x002", "\u2212 42", "42\u0301",
]


def _adversarial_corpus() -> list[tuple[str, str]]:
    """(completion, gold) pairs; the gold is usually "42" so a wrong parse could score 1.0."""
    mb = 1 << 20
    items = [(f"\\boxed{{{b}}}", "42") for b in SYMPY_BOMBS]
    items += [(f"I think it is $${b}$$, done.", "42") for b in SYMPY_BOMBS[:8]]  # unboxed: fallback path
    items += [(f"\\boxed{{{s}}}", "42") for s in LOOKALIKES] + [(f"answer: {s}", "42") for s in LOOKALIKES]
    for depth in (10, 100, 240, 1000, 100_000):
        items += [("\\boxed{" + "{" * depth + "42" + "}" * depth + "}", "42"),
                  ("\\boxed{" + "{" * depth + "42", "42"),
                  ("\\boxed{" + "\\frac{1}{" * depth + "2" + "}" * depth + "}", "42"),
                  ("\\boxed{" + "(" * depth + "1" + ")" * depth + "}", "42")]
    for digits in (101, 4301, 10**6):
        items += [("9" * digits, "42"), ("\\boxed{" + "9" * digits + "}", "42"), ("#### " + "1" * digits, "42"),
                  ("\\boxed{0." + "3" * digits + "}", "1/3"), ("\\boxed{1" + ",000" * (digits // 3) + "}", "42")]
    items += [("\\boxed{1}" * n, "1") for n in (2, 1000, 100_000)] + [("\\boxed{" * 10**5, "42")]
    items += [("**73**", "73"), ("**73**", "74"), ("__42__", "42"), ("", "42"), (" ", "42"), ("\n" * 100, "42"),
              ("a" * mb, "42"), ("\\" * mb, "42"), ("{" * mb, "42"), ("}" * mb, "42"), ("$" * mb, "42"),
              ("1," * (mb // 2), "42"), ("1." * (mb // 2), "42"), ("1/" * (mb // 2), "42"),
              ("#" * mb, "42"), ("\\boxed{42}" + " " * mb, "42"), ("x" * mb + "\\boxed{42}", "42"),
              ("\\boxed{\\begin{pmatrix}" + "1 & " * 200 + "1\\end{pmatrix}}", "42"),
              ("\\boxed{\\text{" + "a" * 400 + "}}", "42"), ("\\boxed{\\\\}", "42"), ("\\boxed{\\}", "42"),
              ("\\boxed{}}}}}", "42"), ("}\\boxed{42}{", "42"), ("\\boxed{42}", "\\boxed{9^{9^{9}}}"),
              ("\\boxed{42}", "9" * 10**5), ("\\boxed{42}", "#### " + "{" * 1000), ("\\boxed{42}", "\\text{}"),
              ("\\boxed{42}", "x" * mb), ("\\boxed{1/0}", "1/0"), ("\\boxed{\\infty}", "\\infty"),
              ("\\boxed{nan}", "nan"), ("\\boxed{0/0}", "42"), ("\\boxed{\\frac{0}{0}}", "\\frac{0}{0}")]
    return items


def _check_corpus(v: Verifier, items: list[tuple[str, str]]) -> dict[str, int]:
    """Every batch returns in time, rewards are 0/1/None, no exception escapes, and the pool stays healthy."""
    _wait_ready(v)
    v.pop_stats()
    batch = 8
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        out, elapsed = _timed(v, [c for c, _ in chunk], [g for _, g in chunk])
        # Worst case: every check in the chunk hits the timeout, the two workers taking them in turns.
        bound = -(-len(chunk) // 2) * TIMEOUT_S + SLACK_S
        assert elapsed < bound, f"batch at {start} took {elapsed:.1f} s > {bound:.1f} s"
        assert all(r in (0.0, 1.0, None) for r in out), out
    stats = v.pop_stats()
    assert stats["rewards/checked"] == len(items)
    _assert_scores_normally(v)
    return stats


def test_adversarial_corpus_fast_subset(pool):
    items = _adversarial_corpus()
    assert len(items) >= 100
    stats = _check_corpus(pool, items[::4])  # every category, a quarter of the items
    assert stats["rewards/timeouts"] >= 3  # the bombs in the subset really were bombs


@pytest.mark.slow
def test_adversarial_corpus_full(pool):
    stats = _check_corpus(pool, _adversarial_corpus())
    assert stats["rewards/timeouts"] >= len(SYMPY_BOMBS) // 2
