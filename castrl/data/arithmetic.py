"""Built-in procedural arithmetic suite: offline, seeded problems the bundled 135M model can learn.

Levels follow env-measurements §3 (``add1`` ~0.9 greedy one-shot accuracy down to ``mul22`` ~0), so
``add1,add2,mul21`` gives GRPO groups with reward variance. Train and test are disjoint by
construction: a problem's split is a hash of its underlying equation (``a + b``, ``b + a`` and the
word problems computing them share one), so no text, nor a commuted or renamed twin, is in both.
The one-shot example (4 + 3) is in neither split. Each level has its own ``random.Random`` seeded
by (seed, level, split): adding a level or changing counts never changes another level's problems.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import NamedTuple

from .records import Problem

LEVELS: tuple[str, ...] = ("add1", "add2", "mul21", "mul22", "word")
DEFAULT_LEVELS: tuple[str, ...] = ("add1", "add2", "mul21")
SPLITS: tuple[str, ...] = ("train", "test")
TEST_FRACTION = 0.2
# Per-split default counts: add1 holds only 63 train / 16 test problems (4 + 3 excluded).
DEFAULT_N_PER_LEVEL: dict[str, int] = {"train": 48, "test": 16}
# After this many draws in a row without a new problem the level's pool counts as exhausted
# (add1 has only ~16 distinct test problems); the chance of stopping early is ~(1 - 1/81)**2000.
_MAX_MISSES = 2000

NAMES = ("Tom", "Sara", "Ali", "Mia", "Ben", "Lena", "Omar", "Zoe", "Max", "Ivy")
ITEMS = ("apples", "marbles", "stickers", "books", "pencils", "cookies", "cards", "shells")


class Draft(NamedTuple):
    """One generated problem before it gets an id; ``key`` decides its split."""

    key: str
    text: str
    answer: int
    solution: str


def _final(answer: int) -> str:
    return f"The final answer is \\boxed{{{answer}}}."


def _binary(op: str, a: int, b: int) -> Draft:
    """``What is a op b?``; the key sorts the operands so commuted twins share a split."""
    answer = a + b if op == "+" else a * b
    lo, hi = sorted((a, b))
    equation = f"{a} {op} {b} = {answer}."
    return Draft(f"{op}:{lo}:{hi}", f"What is {a} {op} {b}?", answer, f"{equation} {_final(answer)}")


def _add1(rng: random.Random, _: int) -> Draft:
    return _binary("+", rng.randint(1, 9), rng.randint(1, 9))


def _add2(rng: random.Random, _: int) -> Draft:
    return _binary("+", rng.randint(10, 99), rng.randint(10, 99))


def _mul21(rng: random.Random, _: int) -> Draft:
    return _binary("*", rng.randint(11, 99), rng.randint(2, 9))


def _mul22(rng: random.Random, _: int) -> Draft:
    return _binary("*", rng.randint(11, 99), rng.randint(11, 99))


def _word(rng: random.Random, accepted: int) -> Draft:
    """Buy more / give away / boxes x items, rotating kinds so every kind is a third of the level.

    The key is the underlying equation, not the text, so renaming Tom or his apples cannot carry a
    test problem into train (and "buys 7 more" shares a split with "What is 12 + 7?").
    """
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = accepted % 3
    if kind == 0:
        a, b = rng.randint(5, 30), rng.randint(2, 20)
        text = f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?"
        op, answer = "+", a + b
    elif kind == 1:
        a = rng.randint(15, 40)
        b = rng.randint(2, a - 1)
        text = (
            f"{name} had {a} {item} and gave {b} of them to a friend. How many {item} does {name} have left?"
        )
        op, answer = "-", a - b
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 12)
        text = f"{name} has {a} boxes with {b} {item} in each box. How many {item} does {name} have in total?"
        op, answer = "*", a * b
    key = f"-:{a}:{b}" if op == "-" else f"{op}:{min(a, b)}:{max(a, b)}"
    return Draft(key, text, answer, f"{a} {op} {b} = {answer}. {_final(answer)}")


_GENERATORS: dict[str, Callable[[random.Random, int], Draft]] = {
    "add1": _add1,
    "add2": _add2,
    "mul21": _mul21,
    "mul22": _mul22,
    "word": _word,
}
_EXCLUDED_KEYS = frozenset({"+:3:4"})  # the one-shot example "What is 4 + 3?" (prompts.ONESHOT_QUESTION)


def split_of(key: str, test_fraction: float = TEST_FRACTION) -> str:
    """``"test"`` for a fixed ``test_fraction`` of keys, else ``"train"``; pure function of the key."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "train"


def check_levels(levels: Sequence[str]) -> tuple[str, ...]:
    """Validate level names (non-empty, known, no repeats) and return them as a tuple."""
    if isinstance(levels, str):
        levels = tuple(part.strip() for part in levels.split(","))
    levels = tuple(levels)
    if not levels:
        raise ValueError(f"levels must name at least one level; valid levels: {', '.join(LEVELS)}")
    unknown = [level for level in levels if level not in _GENERATORS]
    if unknown:
        raise ValueError(f"unknown arithmetic level(s) {unknown}; valid levels: {', '.join(LEVELS)}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"levels {list(levels)} repeat a level; list each level once")
    return levels


def _draw_level(level: str, split: str, n: int, seed: int, test_fraction: float) -> list[Draft]:
    """Draw ``n`` distinct problems of ``level`` whose key hashes into ``split``."""
    rng = random.Random(f"castrl-arithmetic:{seed}:{level}:{split}")
    generate = _GENERATORS[level]
    drafts: list[Draft] = []
    seen: set[str] = set()
    misses = 0
    while len(drafts) < n:
        draft = generate(rng, len(drafts))
        usable = draft.key not in _EXCLUDED_KEYS and split_of(draft.key, test_fraction) == split
        if usable and draft.text not in seen:
            seen.add(draft.text)
            drafts.append(draft)
            misses = 0
            continue
        misses += 1
        if misses >= _MAX_MISSES:
            raise ValueError(
                f"level {level!r} has only {len(drafts)} distinct {split} problems but "
                f"n_per_level={n} was asked; lower n_per_level or drop level {level!r}"
            )
    return drafts


def make_arithmetic(
    split: str = "train",
    levels: Sequence[str] = DEFAULT_LEVELS,
    n_per_level: int | None = None,
    seed: int = 0,
    test_fraction: float = TEST_FRACTION,
) -> list[Problem]:
    """Seeded arithmetic problems, ``n_per_level`` per level, grouped by level in ``levels`` order.

    Args:
        split: ``"train"`` or ``"test"``; the two are disjoint for any seed (split by key hash).
        levels: names from ``LEVELS`` (a comma-separated string also works).
        n_per_level: problems per level (> 0); ``None`` takes ``DEFAULT_N_PER_LEVEL[split]``.
            Pools per level (train / test): add1 63 / 16, mul21 580 / 132, the rest thousands.
        seed: same seed, same problems; a different seed draws another sample of the same split.
        test_fraction: share of the key space in the test split, in (0, 1); keep it fixed between
            the train and test calls of one experiment, or the splits are no longer disjoint.

    Returns:
        ``Problem`` dicts with ids ``"{level}-{split}-s{seed}-{i:04d}"``, the integer answer as a
        string, and a one-line worked solution ending in ``\\boxed{answer}``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n_per_level is None:
        n_per_level = DEFAULT_N_PER_LEVEL[split]
    if isinstance(n_per_level, bool) or not isinstance(n_per_level, int) or n_per_level <= 0:
        raise ValueError(f"n_per_level must be a positive int, got {n_per_level!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    records: list[Problem] = []
    for level in check_levels(levels):
        for i, draft in enumerate(_draw_level(level, split, n_per_level, seed, test_fraction)):
            records.append(
                Problem(
                    id=f"{level}-{split}-s{seed}-{i:04d}",
                    problem=draft.text,
                    answer=str(draft.answer),
                    solution=draft.solution,
                    level=level,
                )
            )
    return records
