"""The problem record, its error type, and the checks every source of problems shares.

A problem is a plain dict (``Problem``) so it crosses into ``datasets``, JSON and the teacher
without conversion. Every loader funnels rows through ``check_record``/``check_unique_ids`` so a bad
row fails at load time with the file, the position and the column, instead of mid-training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypedDict


class Problem(TypedDict):
    """One verifiable problem. ``problem``/``answer``/``solution`` stay raw (no prompt wrapping)
    because the teacher builds its own contexts from them."""

    id: str
    problem: str
    answer: str
    solution: str | None
    level: str | None


RECORD_KEYS: tuple[str, ...] = ("id", "problem", "answer", "solution", "level")


class DataError(ValueError):
    """A row that cannot become a ``Problem``. The message names source, position and column.

    Attributes:
        source: file name or dataset description the row came from.
        where: ``"line 7"`` (JSONL, 1-based), ``"row index 3"`` (JSON, Parquet, datasets, 0-based),
            or ``""`` when the problem concerns the whole source (empty file, unreadable file).
        column: the offending column, or ``None``.
    """

    def __init__(self, source: str, where: str, column: str | None, problem: str, fix: str = "") -> None:
        self.source, self.where, self.column = source, where, column
        parts = [source] + ([where] if where else []) + ([f"column {column!r}"] if column else [])
        message = ": ".join(parts) + f": {problem}"
        if fix:
            message += f" Fix: {fix}"
        super().__init__(message)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def as_text(value: object, *, source: str, where: str, column: str, allow_number: bool) -> str:
    """Return ``value`` as a non-empty stripped string, or raise ``DataError``.

    Numbers are accepted for answers (JSON often stores ``42``), never bools: ``True`` as an answer
    is almost always a broken export, not the string "True".
    """
    if isinstance(value, bool) or value is None:
        kind = "null" if value is None else "a bool"
        raise DataError(source, where, column, f"expected a string, got {kind} ({_short(value)}).")
    if isinstance(value, (int, float)) and allow_number:
        value = str(value)
    if not isinstance(value, str):
        expected = "a string or number" if allow_number else "a string"
        raise DataError(
            source,
            where,
            column,
            f"expected {expected}, got {type(value).__name__} ({_short(value)}).",
            "store one plain value per row in this column (or name another column with *_key=...).",
        )
    if not value.strip():
        raise DataError(source, where, column, "is empty.", "every row needs a non-empty value here.")
    return value.strip()


def optional_text(value: object, *, source: str, where: str, column: str) -> str | None:
    """Like ``as_text`` but ``None`` (or a missing/empty value) means "not given"."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return as_text(value, source=source, where=where, column=column, allow_number=True)


def check_unique_ids(records: Sequence[Problem], wheres: list[str], source: str) -> None:
    """Raise ``DataError`` on the second occurrence of an id; ``wheres[i]`` locates record ``i``.

    Duplicate ids would silently merge per-problem statistics (group stats, eval tables).
    """
    first_seen: dict[str, str] = {}
    for record, where in zip(records, wheres, strict=True):
        pid = record["id"]
        if pid in first_seen:
            raise DataError(
                source,
                where,
                "id",
                f"duplicate id {pid!r} (first seen at {first_seen[pid]}).",
                "make ids unique, or pass id_key=None to number the rows instead.",
            )
        first_seen[pid] = where


def check_record(raw: object, index: int, source: str = "<records>") -> Problem:
    """Validate a hand-made record (a mapping with ``RECORD_KEYS``) and return a clean copy."""
    where = f"record {index}"
    if not isinstance(raw, Mapping):
        raise DataError(source, where, None, f"expected a dict, got {type(raw).__name__}.")
    missing = [key for key in ("id", "problem", "answer") if key not in raw]
    if missing:
        raise DataError(source, where, missing[0], f"missing; a record needs keys {list(RECORD_KEYS)}.")
    return Problem(
        id=as_text(raw["id"], source=source, where=where, column="id", allow_number=True),
        problem=as_text(raw["problem"], source=source, where=where, column="problem", allow_number=False),
        answer=as_text(raw["answer"], source=source, where=where, column="answer", allow_number=True),
        solution=optional_text(raw.get("solution"), source=source, where=where, column="solution"),
        level=optional_text(raw.get("level"), source=source, where=where, column="level"),
    )


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces matched; else None.

    MATH solutions nest braces (``\\boxed{\\frac{1}{2}}``), so a regex cannot find the closing brace.
    """
    starts = [i for marker in ("\\boxed{", "\\fbox{") for i in _find_all(text, marker)]
    for start in sorted(starts, reverse=True):
        open_at = text.index("{", start)
        depth = 0
        for pos in range(open_at, len(text)):
            depth += {"{": 1, "}": -1}.get(text[pos], 0)
            if depth == 0:
                content = text[open_at + 1 : pos].strip()
                if content:
                    return content
                break
    return None


def _find_all(text: str, marker: str) -> list[int]:
    found, pos = [], text.find(marker)
    while pos != -1:
        found.append(pos)
        pos = text.find(marker, pos + 1)
    return found
