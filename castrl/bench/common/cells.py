"""The cell cache: one JSON file per (tier, method, seed) cell, named by a hash of its *full* config.

Why a cache: a grid takes an hour (tiny) to days (smollm2) on 2 CPU cores, so it fills over several
invocations. A cell's file name carries a hash of its config (tier settings, method overrides, seed,
harness version): a changed knob makes a new cell, never a stale reuse. Cells live in `bench/cells/`,
tracked by git so finished cells can be committed (JSON only); what is not a result (trainer folders,
the tiny tier's SFT weights) goes to `--scratch_dir` (ignored).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from castrl.formatting import jsonable

# Bump when the meaning of a cached result changes (what is measured, how), so old cells are not reused.
# 2: the paper's CAST rule (spec v2), methods named estimator[@field=value], teachers from the registry.
# 3: smollm2 tier v2 (final Avg@k / Pass@k evaluation, truncation masking, spec §4 rollout sampling).
HARNESS_VERSION = 3
# The CAST rule the cells measure: castrl.core implements spec v2 (the paper's Eq. 6-15). Saved in every
# cell; a cell without it was measured with spec v1's reconstruction (the report marks it superseded).
RULE_VERSION = "v2"
DEFAULT_CACHE_DIR = "bench/cells"  # tracked: JSON cells only
DEFAULT_SCRATCH_DIR = "bench_cache"  # ignored: trainer output folders, model weights


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

    def slug(self) -> str:
        """`<method>-s<seed>` for file names: characters of the method outside [A-Za-z0-9_.=@,+-] (the
        `:` of `refresh:5`) become `_` (the key in `path` keeps cells apart)."""
        return re.sub(r"[^A-Za-z0-9_.=@,+-]", "_", self.method) + f"-s{self.seed}"

    def path(self, cache_dir: str | os.PathLike[str]) -> Path:
        """`<cache>/<tier>/cells/<slug>-<key>.json`: readable names, exact-config identity."""
        return Path(cache_dir) / self.tier / "cells" / f"{self.slug()}-{self.key()}.json"


def make_cells(tier: str, methods: Sequence[str], seeds: Sequence[int],
               config_of: Callable[[str, int], Mapping[str, Any]],
               seeds_of: Callable[[str], int] | None = None) -> list[Cell]:
    """Seed-major cells: all methods for seeds[0], then seeds[1], ... (a partial grid stays paired).
    With `seeds_of`, method m gets only the seeds below `seeds_of(m)`."""
    return [Cell(tier, m, s, config_of(m, s)) for s in seeds for m in methods if seeds_of is None or s < seeds_of(m)]


def pack_steps(steps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A cell's per-step metrics stored by column, floats to 6 significant digits: one key per metric
    instead of one per step and metric, ~5x smaller files in the tracked cache (null: not logged)."""
    keys = list(dict.fromkeys(k for row in steps for k in row))

    def short(value: Any) -> Any:
        return float(f"{value:.6g}") if isinstance(value, float) and math.isfinite(value) else value

    return {"columns": {k: [short(row.get(k)) for row in steps] for k in keys}}


def unpack_steps(stored: Any) -> list[dict[str, Any]]:
    """`pack_steps`' inverse (metrics a step did not log are absent from its row); a list (cells written
    before packing) is returned as it is."""
    if not isinstance(stored, Mapping):
        return list(stored or [])
    columns = stored["columns"]
    n = len(next(iter(columns.values()), []))
    return [{k: v[i] for k, v in columns.items() if v[i] is not None} for i in range(n)]


def read_cell(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A cell file's record, its per-step metrics as one dict per step."""
    with open(path) as f:
        record = json.load(f)
    if "steps" in record:
        record["steps"] = unpack_steps(record["steps"])
    return record


def load_cell(cell: Cell, cache_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The cached result of `cell`, or None when it was never completed."""
    path = cell.path(cache_dir)
    return read_cell(path) if path.exists() else None


def save_cell(cell: Cell, result: Mapping[str, Any], cache_dir: str | os.PathLike[str]) -> Path:
    """Write the result atomically (temp file + rename), so an interrupted write never looks complete."""
    path = cell.path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"tier": cell.tier, "method": cell.method, "seed": cell.seed, "key": cell.key(),
              "harness_version": HARNESS_VERSION, "rule_version": RULE_VERSION, "config": cell.config, **result}
    if isinstance(record.get("steps"), list):
        record["steps"] = pack_steps(record["steps"])
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:  # strict JSON (castrl.formatting): a non-finite float is null
        json.dump(jsonable(record), f, indent=1, default=_json_default)
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
            out.append(read_cell(path))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"[bench] skipping unreadable cell {path}: {exc}")
    return sorted(out, key=lambda r: (r["method"], r["seed"]))
