"""Running a grid: the cells missing from the cache, in order, each cached when it finishes (a cell that
raises is not cached, so the next invocation retries it); `grid_cli` is the shared tail of every
`castrl bench <tier>`.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from .cells import Cell, load_cell, save_cell


@dataclass
class GridOutcome:
    """What one invocation did: cells read from the cache, run now, and failed (not cached)."""

    cached: list[Cell] = field(default_factory=list)
    ran: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        return f"{len(self.cached)} cached, {len(self.ran)} run, {len(self.failed)} failed"


def run_grid(cells: Iterable[Cell], run_cell: Callable[[Cell], Mapping[str, Any]],
             cache_dir: str | os.PathLike[str], progress: bool = True,
             time_budget_s: float | None = None,
             is_current: Callable[[Mapping[str, Any]], bool] | None = None) -> GridOutcome:
    """Run the cells missing from the cache, in order; a progress bar (with ETA) counts only those.
    A cell another invocation cached meanwhile is skipped (two invocations with different `--methods`
    orders can share one grid, e.g. one per core for a single-threaded tier).

    `run_cell` returns the result dict that is cached. An exception in one cell is printed and the
    grid goes on; that cell is not cached. With `time_budget_s`, no new cell starts once the budget
    is spent (the rest stays missing for the next invocation). `is_current(record)` False marks a cached
    cell as stale (made from other inputs than this invocation's, e.g. another tier's student model): it
    is run again and overwritten, so one grid never mixes what it pairs.
    """
    check_time_budget(time_budget_s)
    outcome = GridOutcome()
    # Cells of one invocation share machine conditions: the report pairs step times only within one.
    invocation = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"

    def cached(cell: Cell) -> bool:
        record = load_cell(cell, cache_dir)
        return record is not None and (is_current is None or is_current(record))

    todo = []
    for cell in cells:
        (outcome.cached if cached(cell) else todo).append(cell)
    stale = [c for c in todo if c.path(cache_dir).exists()]
    if stale:
        print(f"[bench] {len(stale)} cached cell(s) were made from other inputs than this invocation's and run again: "
              + ", ".join(f"{c.method} s{c.seed}" for c in stale[:8]) + (" ..." if len(stale) > 8 else ""))
    start = time.perf_counter()
    bar = tqdm(todo, desc="bench cells", unit="cell", disable=not progress or not todo, dynamic_ncols=True)
    for cell in bar:
        if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
            print(f"[bench] time budget of {time_budget_s:.0f} s spent; {len(todo) - len(outcome.ran)} "
                  "cell(s) left for a later invocation")
            break
        if cached(cell):  # another invocation sharing the cache finished it meanwhile
            outcome.cached.append(cell)
            continue
        bar.set_postfix_str(f"{cell.method} s{cell.seed}")
        cell_start = time.perf_counter()
        try:
            result = run_cell(cell)
        except Exception:  # a crashed cell must not stop the grid; it stays uncached and is retried later
            outcome.failed.append((cell, traceback.format_exc()))
            print(f"[bench] cell {cell.method} seed {cell.seed} failed:\n{outcome.failed[-1][1]}")
            continue
        save_cell(cell, {**result, "invocation": invocation}, cache_dir)
        outcome.ran.append(cell)
        outcome.seconds[f"{cell.method}-s{cell.seed}"] = time.perf_counter() - cell_start
    bar.close()
    return outcome


def grid_cli(tier: str, cells: Sequence[Cell], run_cell: Callable[[Cell], Mapping[str, Any]],
             cache_dir: str, *, list_only: bool, progress: bool, time_budget_s: float | None,
             is_current: Callable[[Mapping[str, Any]], bool] | None = None) -> int:
    """The shared tail of `castrl bench <tier>`: list the cells, or fill the missing ones and say what ran."""
    if list_only:
        width = max((len(cell.method) for cell in cells), default=0)
        for cell in cells:
            state = "cached" if cell.path(cache_dir).exists() else "missing"
            print(f"{cell.method:{width}s}  seed {cell.seed}  {state}  {cell.path(cache_dir)}")
        return 0
    start = time.perf_counter()
    outcome = run_grid(cells, run_cell, cache_dir, progress=progress, time_budget_s=time_budget_s,
                       is_current=is_current)
    print(f"[bench] {tier}: {outcome.summary()} in {time.perf_counter() - start:.0f} s")
    for name, seconds in outcome.seconds.items():
        print(f"[bench]   {name}: {seconds:.1f} s")
    missing = sum(not c.path(cache_dir).exists() for c in cells)
    if missing:
        print(f"[bench] {tier}: {missing} cell(s) still missing; run the same command again to fill them")
    return 1 if outcome.failed else 0


def check_time_budget(seconds: float | None) -> None:
    """ValueError naming --time_budget unless it is None or a positive number of seconds."""
    if seconds is not None and not seconds > 0:
        raise ValueError(f"--time_budget must be a positive number of seconds, got {seconds}")
