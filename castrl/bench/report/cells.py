"""What the report reads from the cache: the cells of one tier section (`TierView`) and per-cell measures.

Shared by the tables (`report`), the figures (`report_figures`) and the tier sections
(`report_tiers`), and importing none of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from castrl.bench.common.cells import RULE_VERSION
from castrl.reporting.findings import cell_device  # noqa: F401  (re-exported: the report modules read it here)

# Cells cached before `rule_version` existed were measured with spec v1's reconstruction of CAST.
V1_RULE = "v1"


def rule_version(rec: dict[str, Any]) -> str:
    """The CAST rule the cell measured (`harness.RULE_VERSION` when it was cached)."""
    return rec.get("rule_version", V1_RULE)


@dataclass
class TierView:
    """The cells of one tier and configuration, indexed by method then seed, and the two methods the
    report is built around: `baseline` (every other method is paired with it) and `headline`. A tier
    with final evaluations also has the base model's (`base`) and the baseline's tuning runs (`tuning`:
    its cells whose settings differ from the grid's in lr or steps only, the grid's own included)."""

    tier: str
    title: str
    command: str
    cells: dict[str, dict[int, dict[str, Any]]]
    notes: list[str]
    baseline: str
    headline: str
    base: dict[str, Any] | None = None
    tuning: list[dict[str, Any]] = field(default_factory=list)
    diagnosis: dict[str, Any] | None = None  # the tier's diagnosis before training (`castrl.bench.common.diagnosis`)

    @property
    def methods(self) -> list[str]:
        """Cached methods in name order, the baseline first."""
        return sorted(self.cells, key=lambda m: (m != self.baseline, m))

    def seeds(self, method: str) -> list[int]:
        return sorted(self.cells.get(method, {}))

    @property
    def superseded(self) -> bool:
        """True when the cells were measured with another rule than the current one (spec v1's)."""
        return any(rule_version(r) != RULE_VERSION for m in self.cells.values() for r in m.values())


def select_cells(records: Sequence[dict[str, Any]], settings: dict[str, Any]) -> dict[str, dict[int, dict]]:
    """method -> seed -> record, for the records whose tier settings equal `settings`. Cells of the
    current rule replace older ones: when any cell matches and has the current rule, older cells
    are left out (a table never mixes rules)."""
    wanted = json.loads(json.dumps(settings))  # as stored: tuples become lists
    matching = [r for r in records if r.get("config", {}).get("settings") == wanted]
    current = [r for r in matching if rule_version(r) == RULE_VERSION]
    out: dict[str, dict[int, dict]] = {}
    for rec in current or matching:
        out.setdefault(rec["method"], {})[int(rec["seed"])] = rec
    return out


def acc_at(rec: dict[str, Any]) -> dict[int, float]:
    """step -> held-out greedy accuracy of one cell (NaN where the cell stored null: no held-out problems)."""
    return {int(e["step"]): math.nan if e["accuracy"] is None else float(e["accuracy"]) for e in rec.get("evals", [])}


def final_step(rec: dict[str, Any]) -> int:
    return max(acc_at(rec)) if rec.get("evals") else 0


def step_mean(rec: dict[str, Any], key: str) -> float:
    """Mean of a per-step metric over the cell's logged steps (NaN when never logged)."""
    values = [r[key] for r in rec.get("steps", []) if r.get(key) is not None]
    return sum(values) / len(values) if values else math.nan


def steps_to_reach(rec: dict[str, Any], target: float) -> int | None:
    """First evaluated step after the start whose accuracy >= target, or None when never reached. Step 0
    never counts: it is the starting model, reached by every method before training."""
    for step, acc in sorted(acc_at(rec).items()):
        if step > 0 and acc >= target - 1e-12:
            return step
    return None
