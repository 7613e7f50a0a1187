"""castrl problems -> rows of verl's RL parquet format (what `RLHFDataset` and its rewards read).

`prompt` holds the student's chat messages (castrl's prompt styles); `reward_model.ground_truth`
the answer; `extra_info.question` / `extra_info.solution` the raw problem and reference solution
for the teacher contexts. The default `data_source` "lighteval/MATH" makes verl's default reward
score the last `\\boxed{}` against the answer, matching castrl's boxed prompts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from castrl.data import Problem, build_prompt

DEFAULT_DATA_SOURCE = "lighteval/MATH"


def verl_rows(
    problems: Iterable[Problem], split: str, style: str = "cot", data_source: str = DEFAULT_DATA_SOURCE
) -> list[dict[str, Any]]:
    """One verl row per problem; `extra_info.index` is the position, `extra_info.id` castrl's id."""
    rows = []
    for index, problem in enumerate(problems):
        rows.append(
            {
                "data_source": data_source,
                "prompt": build_prompt(problem["problem"], style),
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": problem["answer"]},
                "extra_info": {
                    "split": split,
                    "index": index,
                    "id": problem["id"],
                    "question": problem["problem"],
                    "solution": problem.get("solution") or "",
                },
            }
        )
    return rows
