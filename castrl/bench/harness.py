"""The benchmark grid: (tier, method, seed) cells, each cached on disk as one JSON file.

Why a cache: a full grid takes about an hour (tiny tier) to days (smollm2 tier) on 2 CPU cores, so it
must be completable over several invocations. A cell's file name carries a hash of its *full*
config (tier settings, method overrides, seed, harness version), so changing any knob makes a new
cell instead of silently reusing a stale one. A cell that raises is reported and not cached, so the
next invocation retries it. Cells run seed-major (every method of seed 0, then seed 1, ...) so a
partial grid still holds complete, paired seeds.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

# Bump when the meaning of a cached result changes (what is measured, how), so old cells are not reused.
HARNESS_VERSION = 1
DEFAULT_CACHE_DIR = "bench_cache"
# Trainer code paths every cell runs: the separate student pass and full (unshared) scoring passes, as
# every cached cell of the grids was measured with them (a cell's key does not cover code paths).
# `castrl bench steptime --methods grpo,cast,cast@fuse_student_pass=false@share_prompt_cache=false`
# measures what the trainer's defaults save.
CELL_CODE_PATHS: dict[str, Any] = {"fuse_student_pass": False, "share_prompt_cache": False}


# --- methods ----------------------------------------------------------------------------------------

# Method name -> CASTConfig overrides common to every tier. Teacher fields that depend on the tier
# (which context/weights make a meaningful teacher there) are filled in by `method_overrides`.
_BASE_METHODS: dict[str, dict[str, Any]] = {
    "grpo": {"advantage_estimator": "grpo"},
    "dr_grpo": {"advantage_estimator": "dr_grpo", "loss_type": "dr_grpo"},
    "rlsd": {"advantage_estimator": "rlsd"},
    "rlrt": {"advantage_estimator": "rlrt"},
    "cast": {"advantage_estimator": "cast"},
    "cast_mixed_only": {"advantage_estimator": "cast", "mixed_only": True},
    "cast_noflip": {"advantage_estimator": "cast", "flip": False},
    "cast_with_answer": {"advantage_estimator": "cast"},
}
# Spec §4: RLSD's privileged teacher has its weights synced every 10 steps; RLRT reuses RLSD's teacher.
PRIVILEGED_TEACHER_WEIGHTS = "lagged:10"


@dataclass(frozen=True)
class TeacherDefaults:
    """The tier's teachers: CAST's default (context, weights), the privileged answer context, and
    the extra CAST weight variants that are meaningful on this tier (name suffix -> weights).

    `knobs` are knob-study methods (`method@field=value`, see `method_overrides`) that belong to the
    tier's full grid."""

    cast_context: str
    cast_weights: str
    answer_context: str
    weight_variants: Mapping[str, str] = field(default_factory=dict)
    knobs: tuple[str, ...] = ()


def method_names(teachers: TeacherDefaults) -> tuple[str, ...]:
    """All methods of a tier's full grid, baselines first."""
    return (*_BASE_METHODS, *(f"cast_{suffix}" for suffix in teachers.weight_variants), *teachers.knobs)


def method_overrides(method: str, teachers: TeacherDefaults) -> dict[str, Any]:
    """CASTConfig overrides of `method` on a tier whose teachers are `teachers`.

    Ablations change exactly one thing relative to `cast`, so a paired difference isolates it.
    `name@field=value[@field=value...]` is `name` with estimator fields changed (a knob study,
    e.g. `cast@lam=0.5`); values are read as JSON where they parse (numbers, true/false), else
    as strings (`cast@flip_threshold=zero`).
    """
    name, *knobs = method.split("@")
    if name in _BASE_METHODS:
        out = dict(_BASE_METHODS[name])
    elif name.startswith("cast_") and name[5:] in teachers.weight_variants:
        out = {"advantage_estimator": "cast", "teacher_weights": teachers.weight_variants[name[5:]]}
    else:
        raise ValueError(f"unknown bench method {method!r}; valid methods: {', '.join(method_names(teachers))}, "
                         "each optionally followed by @field=value")
    if name in ("rlsd", "rlrt"):
        out.update(teacher_context=teachers.answer_context, teacher_weights=PRIVILEGED_TEACHER_WEIGHTS)
    elif out["advantage_estimator"] == "cast":
        out.setdefault("teacher_weights", teachers.cast_weights)
        context = teachers.answer_context if name == "cast_with_answer" else teachers.cast_context
        out["teacher_context"] = context
    for knob in knobs:
        out.update(_parse_knob(method, knob))
    return out


def _parse_knob(method: str, knob: str) -> dict[str, Any]:
    """`field=value` of a knob-study method name -> {field: value}; the field must be an estimator or
    teacher field (e.g. `cast@teacher_context=student@teacher_weights=ema`)."""
    from dataclasses import fields

    from castrl.core.config import CastConfig, GRPOAdvConfig, OPSDConfig, RLSDConfig
    from castrl.trl import CASTConfig

    key, sep, text = knob.partition("=")
    known = {f.name for cls in (CastConfig, GRPOAdvConfig, RLSDConfig, OPSDConfig) for f in fields(cls)}
    known |= {f.name for f in fields(CASTConfig) if f.name.startswith("teacher_")}
    if not sep or key not in known:
        raise ValueError(f"bad knob {knob!r} in bench method {method!r}: expected field=value with field one of "
                         f"{', '.join(sorted(known))}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    return {key: value}


def parse_methods(spec: str | None, teachers: TeacherDefaults) -> tuple[str, ...]:
    """`--methods a,b,c` (None or 'all' = the tier's full grid); unknown names fail with the valid list."""
    if spec is None or spec == "all":
        return method_names(teachers)
    names = tuple(part.strip() for part in spec.split(",") if part.strip())
    for name in names:
        method_overrides(name, teachers)  # raises with the valid list
    if not names:
        raise ValueError(f"--methods is empty; valid methods: {', '.join(method_names(teachers))}")
    return names


# --- cells and the cache ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One (tier, method, seed) run. `config` is everything that determines its result (JSON-able)."""

    tier: str
    method: str
    seed: int
    config: Mapping[str, Any]

    def key(self) -> str:
        """16 hex digits of sha256 over the canonical JSON of tier, method, seed, config, harness version."""
        payload = {"tier": self.tier, "method": self.method, "seed": self.seed, "config": self.config,
                   "harness_version": HARNESS_VERSION}
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def path(self, cache_dir: str | os.PathLike[str]) -> Path:
        """`<cache>/<tier>/cells/<method>-s<seed>-<key>.json`: readable names, exact-config identity."""
        return Path(cache_dir) / self.tier / "cells" / f"{self.method}-s{self.seed}-{self.key()}.json"


def make_cells(tier: str, methods: Sequence[str], seeds: Sequence[int],
               config_of: Callable[[str, int], Mapping[str, Any]]) -> list[Cell]:
    """Seed-major cells: all methods for seeds[0], then seeds[1], ... (a partial grid stays paired)."""
    return [Cell(tier, m, s, config_of(m, s)) for s in seeds for m in methods]


def load_cell(cell: Cell, cache_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The cached result of `cell`, or None when it was never completed."""
    path = cell.path(cache_dir)
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def save_cell(cell: Cell, result: Mapping[str, Any], cache_dir: str | os.PathLike[str]) -> Path:
    """Write the result atomically (temp file + rename), so an interrupted write never looks complete."""
    path = cell.path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"tier": cell.tier, "method": cell.method, "seed": cell.seed, "key": cell.key(),
              "harness_version": HARNESS_VERSION, "config": cell.config, **result}
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, default=_json_default)
    os.replace(tmp, path)
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return str(value)


def load_tier(cache_dir: str | os.PathLike[str], tier: str) -> list[dict[str, Any]]:
    """Every cached cell of `tier` (any config), sorted by method then seed; unreadable files are skipped."""
    folder = Path(cache_dir) / tier / "cells"
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            with open(path) as f:
                out.append(json.load(f))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"[bench] skipping unreadable cell {path}: {exc}")
    return sorted(out, key=lambda r: (r["method"], r["seed"]))


# --- running a grid ---------------------------------------------------------------------------------


@dataclass
class GridOutcome:
    """What one invocation did: cells read from the cache, run now, and failed (not cached)."""

    cached: list[Cell] = field(default_factory=list)
    ran: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{len(self.cached)} cached", f"{len(self.ran)} run", f"{len(self.failed)} failed"]
        return ", ".join(parts)


def run_grid(cells: Iterable[Cell], run_cell: Callable[[Cell], Mapping[str, Any]],
             cache_dir: str | os.PathLike[str], progress: bool = True,
             time_budget_s: float | None = None) -> GridOutcome:
    """Run the cells missing from the cache, in order; a progress bar (with ETA) counts only those.

    `run_cell` returns the result dict that is cached. An exception in one cell is printed and the
    grid goes on; that cell is not cached. With `time_budget_s`, no new cell starts once the budget
    is spent (the rest stays missing for the next invocation).
    """
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"--time-budget must be a positive number of seconds, got {time_budget_s}")
    outcome = GridOutcome()
    # Cells of one invocation share machine conditions: the report pairs step times only within one.
    invocation = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    todo = []
    for cell in cells:
        (outcome.cached if cell.path(cache_dir).exists() else todo).append(cell)
    start = time.perf_counter()
    bar = tqdm(todo, desc="bench cells", unit="cell", disable=not progress or not todo, dynamic_ncols=True)
    for cell in bar:
        if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
            print(f"[bench] time budget of {time_budget_s:.0f} s spent; {len(todo) - len(outcome.ran)} "
                  "cell(s) left for a later invocation")
            break
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
             cache_dir: str, *, list_only: bool, progress: bool, time_budget_s: float | None) -> int:
    """The shared tail of `castrl bench <tier>`: list the cells, or fill the missing ones and say what ran."""
    if list_only:
        for cell in cells:
            state = "cached" if cell.path(cache_dir).exists() else "missing"
            print(f"{cell.method:18s} seed {cell.seed}  {state}  {cell.path(cache_dir)}")
        return 0
    start = time.perf_counter()
    outcome = run_grid(cells, run_cell, cache_dir, progress=progress, time_budget_s=time_budget_s)
    print(f"[bench] {tier}: {outcome.summary()} in {time.perf_counter() - start:.0f} s")
    for name, seconds in outcome.seconds.items():
        print(f"[bench]   {name}: {seconds:.1f} s")
    missing = sum(not c.path(cache_dir).exists() for c in cells)
    if missing:
        print(f"[bench] {tier}: {missing} cell(s) still missing; run the same command again to fill them")
    return 1 if outcome.failed else 0
