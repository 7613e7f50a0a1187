"""Isolated math-verify checks: worker subprocesses with a soft (SIGALRM) and a hard (SIGKILL) timeout.

math-verify's own timeout is SIGALRM-based, so it does nothing off the main thread, and sympy can
stall in C code that no signal interrupts. Each check therefore runs in a worker that is killed and
replaced when it exceeds its deadline. Workers are plain `python -c` processes, not multiprocessing,
so they never re-import the trainer's `__main__` (torch, trl) and (re)start in about a second.
POSIX only (select on pipes, SIGALRM, RLIMIT_AS); `castrl.rewards.Verifier` calls `check` in-process otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

# Outcome of one check, reported next to its reward (GOLD_TIMEOUT: the gold's parse timed out).
OK, PARSE_FAILURE, BAD_GOLD, TIMEOUT, GOLD_TIMEOUT, CRASH = (
    "ok", "parse_failure", "bad_gold", "timeout", "gold_timeout", "crash")

_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above castrl/


class _SoftTimeout(BaseException):
    """BaseException so that math-verify's and sympy's `except Exception` cannot swallow it."""


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise _SoftTimeout after `seconds` (float, unlike math-verify's int alarm); no-op off the main thread."""
    if seconds <= 0 or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise _SoftTimeout()

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple:
    """Parsed gold, cached: the G completions of a group share it and sympy parsing costs ms."""
    from math_verify import parse
    return tuple(parse(f"\\boxed{{{gold}}}", parsing_timeout=None))


def check(answer: str, gold: str, soft_timeout_s: float,
          on_gold: Callable[[], None] | None = None) -> tuple[float | None, str]:
    """(reward, outcome) for one extracted answer against one normalized gold; never raises."""
    from math_verify import parse, verify
    phase = "gold"
    try:
        with _alarm(soft_timeout_s):
            gold_parsed = _parse_gold(gold)
            if not gold_parsed:
                return None, BAD_GOLD
            phase = "answer"
            if on_gold is not None:
                on_gold()
            pred = parse(f"\\boxed{{{answer}}}", parsing_timeout=None)
            if not pred:
                return 0.0, PARSE_FAILURE
            return float(verify(list(gold_parsed), pred, timeout_seconds=None)), OK
    except _SoftTimeout:
        return (None, GOLD_TIMEOUT) if phase == "gold" else (0.0, TIMEOUT)
    except Exception:  # math-verify/sympy bugs, RecursionError, MemoryError: the input is at fault
        return (None, BAD_GOLD) if phase == "gold" else (0.0, PARSE_FAILURE)


def warm_up() -> None:
    """Pay sympy's lazy imports (~1 s on the first comparisons) before any timed check."""
    for answer, gold in (("0", "0"), ("number", "42"), ("(1,2)", "\\{1,2\\}"), ("x^2+1", "\\sqrt{2}")):
        check(answer, gold, 0.0)


def serve(soft_timeout_s: float, memory_limit_mb: int | None) -> None:
    """Worker main loop: JSON lines in on stdin ({"a", "g"}), JSON lines out on the original stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # a library print() must not corrupt the protocol
    if memory_limit_mb:
        import resource  # POSIX only, like the pool
        limit = memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    warm_up()

    def send(msg: dict) -> None:
        out.write(json.dumps(msg) + "\n")

    send({"ready": True})
    for line in sys.stdin:
        req = json.loads(line)
        reward, outcome = check(req["a"], req["g"], soft_timeout_s, on_gold=lambda: send({"gold_ok": True}))
        send({"r": reward, "s": outcome})


class _Worker:
    """One `serve` subprocess with at most one task in flight and its own deadline."""

    def __init__(self, soft_timeout_s: float, memory_limit_mb: int | None) -> None:
        code = f"from castrl.rewards.pool import serve; serve({soft_timeout_s!r}, {memory_limit_mb!r})"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_PKG_ROOT, os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, "-W", "ignore", "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        self.fd = self.proc.stdout.fileno()
        self.buf, self.ready, self.started = b"", False, time.monotonic()
        self.task: int | None = None
        self.deadline, self.gold_ok = float("inf"), False

    def submit(self, task: int, answer: str, gold: str, timeout_s: float) -> bool:
        """Send a task; False when the worker has died (the caller restarts it and requeues the task)."""
        try:
            self.proc.stdin.write((json.dumps({"a": answer, "g": gold}) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        self.task, self.deadline, self.gold_ok = task, time.monotonic() + timeout_s, False
        return True

    def read(self) -> list[dict] | None:
        """Complete messages available now; None at EOF (the worker died)."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            return None
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        return [json.loads(line) for line in lines if line]

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
            self.proc.wait()
            self.proc.stdin.close()
        self.proc.stdout.close()


def kill_all(workers: list[_Worker], owner_pid: int) -> None:
    """Kill every worker (the `Verifier` finalizer: close(), garbage collection, interpreter exit)."""
    if os.getpid() == owner_pid:  # a fork of the trainer must not kill its parent's workers
        for w in workers:
            w.kill()


class Pool:
    """Fixed set of workers; a worker past its deadline is SIGKILLed and replaced, never waited on.

    `restarts` counts replacements (after a timeout or a crash) until the caller resets it.
    """

    def __init__(self, num_workers: int, timeout_s: float, memory_limit_mb: int | None,
                 start_timeout_s: float = 120.0) -> None:
        # The worker's own alarm fires first so Python-level stalls end without a restart.
        self.spawn = functools.partial(_Worker, 0.8 * timeout_s, memory_limit_mb)
        self.timeout_s, self.start_timeout_s, self.restarts = timeout_s, start_timeout_s, 0
        self.workers = [self.spawn() for _ in range(num_workers)]

    def _restart(self, i: int) -> None:
        self.workers[i].kill()
        self.workers[i] = self.spawn()
        self.restarts += 1

    def run(self, tasks: Sequence[tuple[str, str]]) -> list[tuple[float | None, str]]:
        """Outcome of each (answer, gold) task, in order; returns within about timeout_s per task and worker."""
        results: list[Any] = [None] * len(tasks)
        todo = deque(range(len(tasks)))
        while todo or any(w.task is not None for w in self.workers):
            for i, w in enumerate(self.workers):
                if w.ready and w.task is None and todo:
                    t = todo.popleft()
                    if not w.submit(t, *tasks[t], self.timeout_s):
                        todo.appendleft(t)
                        self._restart(i)
            self._collect(results)
            self._reap(results)
        return results

    def _collect(self, results: list[Any]) -> None:
        now = time.monotonic()
        wake = min(w.deadline if w.ready else w.started + self.start_timeout_s for w in self.workers)
        readable, _, _ = select.select([w.fd for w in self.workers], [], [], max(0.0, wake - now))
        for i, w in enumerate(self.workers):
            if w.fd not in readable:
                continue
            msgs = w.read()
            if msgs is None:
                self._on_death(i, results)
                continue
            for msg in msgs:
                if "ready" in msg:
                    w.ready = True
                elif "gold_ok" in msg:
                    w.gold_ok = True
                elif w.task is not None:
                    results[w.task] = (msg["r"], msg["s"])
                    w.task, w.deadline = None, float("inf")

    def _on_death(self, i: int, results: list[Any]) -> None:
        w = self.workers[i]
        if not w.ready:
            code = w.proc.wait()
            raise RuntimeError(
                f"verifier worker exited during start-up with code {code} (its stderr is above); check that "
                f"`{sys.executable} -c 'import castrl.rewards.pool, math_verify'` works, raise memory_limit_mb, "
                f"or use Verifier(use_pool=False)")
        if w.task is not None:
            results[w.task] = (0.0, CRASH)
        self._restart(i)

    def _reap(self, results: list[Any]) -> None:
        now = time.monotonic()
        for i, w in enumerate(self.workers):
            if not w.ready and now > w.started + self.start_timeout_s:
                raise RuntimeError(f"verifier worker not ready after {self.start_timeout_s:.0f} s; the machine "
                                   f"may be overloaded, or use Verifier(use_pool=False)")
            if w.task is not None and now >= w.deadline:
                results[w.task] = (0.0, TIMEOUT) if w.gold_ok else (None, GOLD_TIMEOUT)
                self._restart(i)
