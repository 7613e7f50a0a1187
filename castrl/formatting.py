"""The one JSON and number formatting of castrl's outputs (eval.json/.md, diagnostics.*, metrics.jsonl).

Strict JSON has no NaN or infinity: every non-finite float is written as null ("not defined here"),
and tuples become lists. Tables print a missing or non-finite number as "n/a".
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

MISSING = "n/a"


def jsonable(value: Any) -> Any:
    """`value` with non-finite floats as None, tuples as lists and dict keys as strings (recursively)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def dumps(value: Any, indent: int | None = None) -> str:
    """Strict JSON text of `jsonable(value)` (raises if anything non-finite slipped through)."""
    return json.dumps(jsonable(value), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike[str], value: Any, indent: int = 1) -> None:
    """Write `value` to `path` as strict JSON with a final newline."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(dumps(value, indent=indent) + "\n")


def _finite(x: Any) -> bool:
    """A finite number (numpy and 0-d tensor scalars included); False for None, bools and non-numbers."""
    if x is None or isinstance(x, (bool, str)):
        return False
    try:
        return math.isfinite(x)
    except TypeError:
        return False


def num(x: Any, digits: int = 3) -> str:
    """`x` with `digits` decimals; "n/a" for None or a non-finite number."""
    return f"{x:.{digits}f}" if _finite(x) else MISSING


def pct(x: Any, digits: int = 1) -> str:
    """A fraction as a percentage ("26.4 %"); "n/a" for None or a non-finite number."""
    return f"{100 * x:.{digits}f} %" if _finite(x) else MISSING
