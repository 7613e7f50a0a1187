"""Student prompt styles, and the TRL dataset: how a raw problem becomes the chat the policy sees.

The default is ``"oneshot"`` because the bundled SmolLM2-135M only boxes its answer reliably after
one worked example (env-measurements §3: 86 % boxed greedy vs 6 % with the plain step-by-step
prompt). The problem text itself is never modified, so the teacher can wrap it differently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Literal

from .records import DataError, check_record, check_unique_ids

if TYPE_CHECKING:
    from datasets import Dataset

Style = Literal["oneshot", "cot", "plain"]
STYLES: tuple[str, ...] = ("oneshot", "cot", "plain")

BOXED_SUFFIX = " Please reason step by step, and put your final answer within \\boxed{}."
# The worked example of the one-shot style; arithmetic.py keeps it out of both splits.
ONESHOT_QUESTION = "What is 4 + 3?"
ONESHOT_ANSWER = "4 + 3 = 7. The final answer is \\boxed{7}."


def build_prompt(problem: str, style: str = "oneshot") -> list[dict[str, str]]:
    """Chat messages (TRL conversational format) for ``problem`` in ``style``.

    Args:
        problem: the raw problem text.
        style: ``"oneshot"`` (one worked example turn, then the question with ``BOXED_SUFFIX``),
            ``"cot"`` (the question with ``BOXED_SUFFIX``), or ``"plain"`` (the question alone, for
            sources whose problem text already carries its own answer-format instruction).

    Returns:
        A list of ``{"role", "content"}`` dicts; no system message, so the tokenizer's chat
        template adds its default one.
    """
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError(f"problem must be a non-empty string, got {problem!r}")
    if style == "plain":
        return [{"role": "user", "content": problem}]
    question = {"role": "user", "content": problem + BOXED_SUFFIX}
    if style == "cot":
        return [question]
    if style == "oneshot":
        return [
            {"role": "user", "content": ONESHOT_QUESTION + BOXED_SUFFIX},
            {"role": "assistant", "content": ONESHOT_ANSWER},
            question,
        ]
    raise ValueError(f"unknown prompt style {style!r}; valid styles: {', '.join(STYLES)}")


def to_trl_dataset(records: Iterable[Mapping[str, object]], style: str = "oneshot") -> Dataset:
    """A ``datasets.Dataset`` for TRL: ``prompt`` (chat messages) plus the raw record columns.

    Records are re-checked (hand-made lists reach this too), so a bad one fails here, not inside
    the trainer. ``solution`` and ``level`` become ``""`` when absent: Arrow needs one column type,
    and TRL forwards every column to the reward functions as a list of strings.

    Args:
        records: ``Problem`` dicts, e.g. from ``load_problems`` or ``make_arithmetic``.
        style: prompt style, see ``build_prompt``.

    Returns:
        Columns ``prompt``, ``problem``, ``answer``, ``solution``, ``id``, ``level``, one row per record.
    """
    from datasets import Dataset

    if style not in STYLES:
        raise ValueError(f"unknown prompt style {style!r}; valid styles: {', '.join(STYLES)}")
    checked = [check_record(raw, i) for i, raw in enumerate(records)]
    if not checked:
        raise DataError("<records>", "", None, "is empty.", "pass at least one problem.")
    check_unique_ids(checked, [f"record {i}" for i in range(len(checked))], "<records>")
    rows = [
        {
            "prompt": build_prompt(rec["problem"], style),
            "problem": rec["problem"],
            "answer": rec["answer"],
            "solution": rec["solution"] or "",
            "id": rec["id"],
            "level": rec["level"] or "",
        }
        for rec in checked
    ]
    return Dataset.from_list(rows)
