"""Load problems from the built-in suite, local files or ``datasets`` objects; every row loads or raises.

Spec grammar of ``load_problems`` (files are read whole, so errors surface before any model loads):
    spec   := "arithmetic" [":" LEVELS] | PATH [":" PRESET]
    LEVELS := LEVEL ("," LEVEL)*   with LEVEL in castrl.data.arithmetic.LEVELS
    PATH   := a .jsonl / .json / .parquet file; "{split}" in it is replaced by the ``split`` argument
    PRESET := "generic" | "gsm8k" | "math" | "dapo"   (column layouts, see ``PRESETS``)
Examples: "arithmetic", "arithmetic:add1,add2", "data/train.jsonl", "gsm8k/{split}.jsonl:gsm8k".
Column keyword arguments override a preset; dotted keys ("reward_model.ground_truth") reach nested fields.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

from .arithmetic import DEFAULT_LEVELS, check_levels, make_arithmetic
from .records import DataError, Problem, as_text, check_unique_ids, last_boxed, optional_text

COLUMN_ARGS: tuple[str, ...] = ("problem_key", "answer_key", "solution_key", "id_key", "level_key")
FILE_TYPES: tuple[str, ...] = (".jsonl", ".json", ".parquet")
# DAPO-Math-17k wraps each problem in an "Answer: $Answer" instruction; castrl asks for \boxed{}
# instead, so the wrapper is removed and the raw problem kept.
_DAPO_HEAD = re.compile(r"^\s*Solve the following math problem.*?the answer to the problem\.\s*", re.DOTALL)
_DAPO_TAIL = re.compile(r"\s*Remember to put your answer on its own line after \"Answer:\"\.?\s*$")
_MISSING: Any = object()


@dataclass(frozen=True)
class Preset:
    """Where a layout keeps each field. ``answer_from``: ``"column"`` reads ``answer_key``;
    ``"gsm8k"`` takes the text after ``####`` in ``answer_key`` and keeps the whole text as solution;
    ``"boxed"`` reads ``answer_key`` when the row has it, else the last ``\\boxed{}`` of the solution."""

    problem_key: str = "problem"
    answer_key: str | None = "answer"
    solution_key: str | None = "solution"
    id_key: str | None = "id"
    level_key: str | None = "level"
    answer_from: Literal["column", "gsm8k", "boxed"] = "column"
    strip_dapo: bool = False
    required: frozenset[str] = frozenset({"problem_key", "answer_key"})


PRESETS: dict[str, Preset] = {
    "generic": Preset(),
    "gsm8k": Preset(
        problem_key="question", solution_key=None, id_key=None, level_key=None, answer_from="gsm8k"
    ),
    "math": Preset(id_key="unique_id", answer_from="boxed", required=frozenset({"problem_key"})),
    "dapo": Preset(
        problem_key="prompt",
        answer_key="reward_model.ground_truth",
        solution_key=None,
        id_key="extra_info.index",
        level_key=None,
        strip_dapo=True,
    ),
}
# Column sets that identify a preset, used only to suggest the fix in a missing-column error.
_HINTS: tuple[tuple[str, str], ...] = (("question", "gsm8k"), ("reward_model", "dapo"), ("solution", "math"))


class Loc(NamedTuple):
    """Where a row came from, for error messages: ``("train.jsonl", "line 7")``."""

    source: str
    where: str


def resolve_preset(preset: str | None, columns: Mapping[str, str | None]) -> Preset:
    """The named preset with column overrides applied; an explicitly named column becomes required."""
    unknown = sorted(set(columns) - set(COLUMN_ARGS))
    if unknown:
        raise TypeError(f"unknown column argument(s) {unknown}; valid: {', '.join(COLUMN_ARGS)}")
    name = preset or "generic"
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    base = PRESETS[name]
    if columns.get("problem_key", "") is None:
        raise ValueError("problem_key cannot be None: every problem needs its text")
    if columns.get("answer_key", "") is None and base.answer_from != "boxed":
        raise ValueError(f"answer_key cannot be None with preset {name!r}; only 'math' derives the answer")
    required = base.required | {arg for arg, key in columns.items() if key is not None}
    return replace(base, **columns, required=frozenset(required))


def _get(row: Mapping[str, Any], key: str) -> Any:
    """``row[key]``, or a nested lookup when ``key`` is dotted and not itself a column; else _MISSING."""
    if key in row:
        return row[key]
    node: Any = row
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _field(row: Mapping[str, Any], cols: Preset, arg: str, loc: Loc) -> Any:
    """The value of column argument ``arg`` (e.g. ``"answer_key"``) in ``row``; None if absent and optional."""
    key = getattr(cols, arg)
    if key is None:
        return None
    value = _get(row, key)
    if value is not _MISSING:
        return value
    if arg not in cols.required:
        return None
    present = list(row)
    hint = next(
        (f" This looks like the {p!r} layout: add ':{p}' to the spec." for c, p in _HINTS if c in row), ""
    )
    raise DataError(
        loc.source,
        loc.where,
        key,
        f"missing (the row has columns {present}).",
        f"pass {arg}='<column>' to name the column, or use a preset ({', '.join(PRESETS)}).{hint}",
    )


def _problem_text(value: Any, cols: Preset, loc: Loc) -> str:
    """Problem text from a string or a chat list (the last user message), DAPO wrapper removed."""
    column = cols.problem_key
    if isinstance(value, list):
        users = [m for m in value if isinstance(m, Mapping) and m.get("role") == "user"]
        if not users:
            raise DataError(loc.source, loc.where, column, "is a list without a {'role': 'user'} message.")
        value = users[-1].get("content")
    text = as_text(value, source=loc.source, where=loc.where, column=column, allow_number=False)
    if cols.strip_dapo:
        text = as_text(
            _DAPO_TAIL.sub("", _DAPO_HEAD.sub("", text)),
            source=loc.source,
            where=loc.where,
            column=column,
            allow_number=False,
        )
    return text


def _answer_solution(row: Mapping[str, Any], cols: Preset, loc: Loc) -> tuple[str, str | None]:
    """The gold answer and the solution text, following ``cols.answer_from``."""
    sol_col = cols.solution_key or "solution"
    solution = optional_text(
        _field(row, cols, "solution_key", loc), source=loc.source, where=loc.where, column=sol_col
    )
    raw_answer = _field(row, cols, "answer_key", loc)
    ans_col = cols.answer_key or "answer"
    if cols.answer_from == "gsm8k":
        full = as_text(raw_answer, source=loc.source, where=loc.where, column=ans_col, allow_number=False)
        if "####" not in full:
            raise DataError(
                loc.source,
                loc.where,
                ans_col,
                "has no '#### <answer>' line.",
                "GSM8K answers end with '#### 42'; drop the ':gsm8k' preset if this is not GSM8K.",
            )
        answer = as_text(
            full.rsplit("####", 1)[1],
            source=loc.source,
            where=loc.where,
            column=f"{ans_col} (after ####)",
            allow_number=False,
        )
        return answer, solution or full
    if cols.answer_from == "boxed" and (raw_answer is None or raw_answer == ""):
        boxed = last_boxed(solution or "")
        if boxed is None:
            raise DataError(
                loc.source,
                loc.where,
                sol_col,
                ("has no \\boxed{...} answer" if solution else "missing or empty")
                + " and the row has no answer column.",
                f"add an answer column (answer_key=...) or box the final answer in {sol_col!r}.",
            )
        return boxed, solution
    answer = as_text(raw_answer, source=loc.source, where=loc.where, column=ans_col, allow_number=True)
    return answer, solution


def _to_record(row: object, index: int, cols: Preset, loc: Loc, stem: str) -> Problem:
    if not isinstance(row, Mapping):
        raise DataError(
            loc.source, loc.where, None, f"expected an object with named columns, got {type(row).__name__}."
        )
    problem = _problem_text(_field(row, cols, "problem_key", loc), cols, loc)
    answer, solution = _answer_solution(row, cols, loc)
    raw_id = _field(row, cols, "id_key", loc)
    pid = optional_text(raw_id, source=loc.source, where=loc.where, column=cols.id_key or "id")
    level = optional_text(
        _field(row, cols, "level_key", loc),
        source=loc.source,
        where=loc.where,
        column=cols.level_key or "level",
    )
    return Problem(
        id=pid or f"{stem}-{index}", problem=problem, answer=answer, solution=solution, level=level
    )


def records_from_rows(rows: Iterable[tuple[str, object]], source: str, cols: Preset) -> list[Problem]:
    """Convert ``(where, row)`` pairs into checked records; ids default to ``"<file stem>-<row>"``."""
    stem = os.path.splitext(os.path.basename(source))[0] or "row"
    records: list[Problem] = []
    wheres: list[str] = []
    for index, (where, row) in enumerate(rows):
        records.append(_to_record(row, index, cols, Loc(source, where), stem))
        wheres.append(where)
    if not records:
        raise DataError(
            source, "", None, "contains no rows.", "point the spec at a file with at least one problem."
        )
    check_unique_ids(records, wheres, source)
    return records


def _read_jsonl(path: str) -> Iterator[tuple[str, object]]:
    """Rows of a JSON Lines file, located by 1-based line; blank lines are not rows."""
    with open(path, encoding="utf-8-sig") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {lineno}", json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    path,
                    f"line {lineno}",
                    None,
                    f"invalid JSON ({err.msg} at character {err.colno}).",
                    "each line must hold one JSON object.",
                ) from err


def _read_json(path: str) -> list[tuple[str, object]]:
    """Rows of a JSON file holding one array of objects, located by 0-based row index."""
    with open(path, encoding="utf-8-sig") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as err:
            raise DataError(path, f"line {err.lineno}", None, f"invalid JSON ({err.msg}).") from err
    if not isinstance(data, list):
        raise DataError(
            path,
            "",
            None,
            f"expected a JSON array of row objects, got {type(data).__name__}.",
            "store a list of objects, or one object per line in a .jsonl file.",
        )
    return [(f"row index {i}", row) for i, row in enumerate(data)]


def _read_parquet(path: str) -> list[tuple[str, object]]:
    """Rows of a Parquet file (nested structs become dicts), located by 0-based row index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(path, "", None, f"is not a readable Parquet file ({err}).") from err
    return [(f"row index {i}", row) for i, row in enumerate(table.to_pylist())]


def load_file(path: str, preset: str | None = None, **columns: str | None) -> list[Problem]:
    """Problems from one ``.jsonl``/``.json``/``.parquet`` file; see ``PRESETS`` for ``preset``."""
    cols = resolve_preset(preset, columns)
    ext = os.path.splitext(path)[1].lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}
    if ext not in readers:
        raise ValueError(
            f"{path}: unsupported file type {ext or '(none)'!r}; use one of {', '.join(FILE_TYPES)}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (spec grammar: PATH[:PRESET] or arithmetic[:LEVELS])")
    try:
        return records_from_rows(readers[ext](path), path, cols)
    except UnicodeDecodeError as err:
        raise DataError(path, "", None, f"is not UTF-8 text ({err.reason} at byte {err.start}).") from err


def load_dataset_object(
    data: Any, split: str = "train", preset: str | None = None, **columns: str | None
) -> list[Problem]:
    """Problems from a ``datasets.Dataset``, or ``split`` of a ``datasets.DatasetDict``."""
    import datasets

    cols = resolve_preset(preset, columns)
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise ValueError(f"DatasetDict has no split {split!r}; its splits: {list(data)}")
        data = data[split]
    if not isinstance(data, datasets.Dataset):
        raise TypeError(f"expected a spec string, datasets.Dataset or DatasetDict, got {type(data).__name__}")
    source = f"<datasets.Dataset {data.info.dataset_name or split}>"
    return records_from_rows(((f"row index {i}", row) for i, row in enumerate(data)), source, cols)


def parse_spec(spec: str) -> tuple[Literal["arithmetic", "file"], str, str | None]:
    """Split a spec string into (kind, target, preset); see the module docstring for the grammar."""
    spec = spec.strip()
    if not spec:
        raise ValueError("empty dataset spec; use 'arithmetic[:LEVELS]' or 'PATH[:PRESET]'")
    head, sep, levels = spec.partition(":")
    if head == "arithmetic":
        if sep and not levels.strip():
            raise ValueError("'arithmetic:' needs level names after ':', e.g. 'arithmetic:add1,add2'")
        return "arithmetic", levels, None
    path, sep, tail = spec.rpartition(":")
    if sep and tail in PRESETS:
        return "file", path, tail
    if sep and re.fullmatch(r"[A-Za-z0-9_-]+", tail) and not os.path.exists(spec):
        raise ValueError(f"unknown preset {tail!r} in spec {spec!r}; valid presets: {', '.join(PRESETS)}")
    return "file", spec, None


def load_problems(
    spec: Any,
    split: str = "train",
    *,
    preset: str | None = None,
    n_per_level: int | None = None,
    seed: int = 0,
    **columns: str | None,
) -> list[Problem]:
    """Load and fully validate problems from ``spec`` (a spec string, Dataset or DatasetDict).

    Args:
        spec: see the module docstring (a ``pathlib.Path`` also works); or a ``datasets.Dataset``
            or ``DatasetDict``.
        split: arithmetic split, DatasetDict split, and the value of ``{split}`` in a path.
        preset: column layout, same as a ``:PRESET`` suffix (giving both must agree).
        n_per_level: arithmetic problems per level (default per split); arithmetic only.
        seed: arithmetic seed; files and datasets are returned in their own order.
        **columns: ``problem_key``, ``answer_key``, ``solution_key``, ``id_key``, ``level_key``.
    """
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        return load_dataset_object(spec, split, preset, **columns)
    kind, target, suffix = parse_spec(spec)
    if kind == "arithmetic":
        if columns or preset:
            raise ValueError(
                f"spec {spec!r} is the built-in suite; column arguments and presets apply to files"
            )
        levels = check_levels(target) if target else DEFAULT_LEVELS
        return make_arithmetic(split, levels, n_per_level=n_per_level, seed=seed)
    if suffix and preset and suffix != preset:
        raise ValueError(f"spec {spec!r} names preset {suffix!r} but preset={preset!r} was passed; give one")
    if n_per_level is not None:
        raise ValueError(f"n_per_level applies to the arithmetic suite only, not to {spec!r}")
    return load_file(target.replace("{split}", split), suffix or preset, **columns)
