"""Figures of every report: matplotlib on the Agg backend (no display needed, safe in worker processes),
written as PNGs at one resolution."""

from __future__ import annotations

import os
from typing import Any

DPI = 110


def pyplot() -> Any:
    """`matplotlib.pyplot`, with the Agg backend selected first (imported on demand: matplotlib is slow
    to import and only reports need it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str | os.PathLike[str]) -> None:
    """Write `fig` to `path` as a PNG at `DPI` and close it (an open figure keeps its memory)."""
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
