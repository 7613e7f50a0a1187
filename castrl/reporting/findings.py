"""One definition of "a finding": when a paired difference between two methods may be printed as
"better than" / "worse than", in the benchmark report and in `castrl diagnose`'s verdict.

A difference a − b (paired over seeds, 95 % t-interval, `stats.paired_diff`) is a finding only when
- both methods trained (`did_not_train`): a method whose advantages were 0 at every logged step, or
  whose gradient norm was, never moved its policy, so its numbers are the starting model's and say
  nothing about its rule;
- at least `MIN_SEEDS` seeds are paired: with 2 the t-quantile is 12.7, so an interval is either so wide
  it says nothing or, when the two seeds happen to agree, so narrow that it reads as certainty;
- the interval has a width the report can show (`ZERO_WIDTH`): seeds that agreed exactly measured no
  spread, and a zero-width interval would exclude 0 whatever the truth;
- the interval excludes 0.
Anything else is printed with its interval and the reason it is not a finding (`Comparison.text`,
`Comparison.sentence`), never in a headline. Intervals are clipped to what the measure can take
(`ACCURACY_DIFF` for a difference of accuracies or rewards) and marked when clipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from castrl.reporting.stats import Interval, ci_text, fmt_ci, paired_diff

MIN_SEEDS = 3
ZERO_WIDTH = 5e-4  # a half-width below this prints as [x, x] at the report's 3 decimals
ACCURACY = (0.0, 1.0)  # an accuracy, a training reward (verifier score) or a share
ACCURACY_DIFF = (-1.0, 1.0)  # a difference of two of those

# Comparison.status values
BETTER, WORSE, LEVEL = "better", "worse", "not distinguishable"
FEW_SEEDS, ZERO, UNTRAINED, NO_VALUE = "few seeds", "zero width", "did not train", "no value"

UNTRAINED_WHY = "its advantages or its gradient norm were 0 at every logged step of every seed"
RULE = (f"A difference is a finding only when both methods trained, at least {MIN_SEEDS} seeds are paired, and its "
        "95% t-interval has a non-zero width and excludes 0; any other difference is shown with its interval and "
        "the reason it is not a finding.")


@dataclass(frozen=True)
class Comparison:
    """A paired difference a − b and whether it may be read as a finding (`status`)."""

    interval: Interval
    bounds: tuple[float, float] | None = ACCURACY_DIFF
    untrained: tuple[str, ...] = ()  # the compared methods that did not train
    cross_device: tuple[int, ...] = ()  # seeds left out: their two cells ran on different devices

    @property
    def status(self) -> str:
        iv = self.interval
        if self.untrained:
            return UNTRAINED
        if iv.n == 0 or not math.isfinite(iv.mean):
            return NO_VALUE
        if iv.n < MIN_SEEDS or not math.isfinite(iv.half):
            return FEW_SEEDS
        if iv.half < ZERO_WIDTH:
            return ZERO
        return BETTER if iv.lo > 0 else WORSE if iv.hi < 0 else LEVEL

    @property
    def is_finding(self) -> bool:
        return self.status in (BETTER, WORSE)

    @property
    def readable(self) -> bool:
        """A finding, or a difference measured well enough to say that it is not distinguishable from 0."""
        return self.status in (BETTER, WORSE, LEVEL)

    def reason(self) -> str:
        """Why this is not a finding ('' when it is one or is not distinguishable from 0)."""
        status = self.status
        if status == UNTRAINED:
            return " and ".join(f"`{m}`" for m in self.untrained) + " did not train"
        if status == FEW_SEEDS:
            return f"n = {self.interval.n}, not a finding"
        if status == ZERO:
            return f"zero-width interval, n = {self.interval.n}, not a finding"
        return ""

    def device_note(self) -> str:
        """Which seeds were left out because their pair ran on two devices ('' when none was)."""
        if not self.cross_device:
            return ""
        seeds = ", ".join(map(str, self.cross_device))
        return f"seed{'s' if len(self.cross_device) > 1 else ''} {seeds} left out: the pair ran on two devices"

    def interval_text(self, digits: int = 3) -> str:
        return fmt_ci(self.interval, digits=digits, signed=True, bounds=self.bounds)

    def text(self, digits: int = 3, name_untrained: bool = False) -> str:
        """A table cell: the interval, followed by why it is not a finding where it is not one (and whether
        it was clipped); a comparison with a method that did not train shows no number (`name_untrained`:
        say which)."""
        if self.status == UNTRAINED:
            return self.reason() if name_untrained else "did not train"
        if self.status == NO_VALUE:
            return f"- ({self.device_note()})" if self.cross_device else "-"
        iv = self.interval
        interval, clipped = (ci_text(iv, digits, signed=True, bounds=self.bounds) if math.isfinite(iv.half)
                             else (f"{iv.mean:+.{digits}f}", False))
        notes = "; ".join(n for n in ("clipped" if clipped else "", self.reason(), self.device_note()) if n)
        return interval + (f" ({notes})" if notes else "")

    def relation(self) -> str:
        """'better than' / 'worse than' / 'not distinguishable from' (only meaningful when `readable`)."""
        return {BETTER: "better than", WORSE: "worse than"}.get(self.status, "not distinguishable from")

    def sentence(self, a: str, b: str, label: str) -> str:
        """One markdown bullet comparing `a` with `b` on `label`, worded by `status`."""
        iv, status = self.interval, self.status
        if status == UNTRAINED:
            idle = " and ".join(f"`{m}`" for m in self.untrained)
            subject = "" if self.untrained == (a,) else f"`{a}` is "
            return f"- {idle} did not train ({UNTRAINED_WHY}): {subject}not compared with `{b}`."
        if status == NO_VALUE:
            left = f" ({self.device_note()})" if self.cross_device else ""
            return f"- `{a}` − `{b}` on {label}: no paired seeds{left}."
        if self.readable:
            left = f"; {self.device_note()}" if self.cross_device else ""
            return (f"- `{a}` is {self.relation()} `{b}` on {label} (paired Δ {self.interval_text()}, {iv.n} seeds, "
                    f"95% t-interval{left}).")
        return f"- `{a}` − `{b}` on {label}: paired Δ {self.text()}."


def _steps(rec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    steps = rec.get("steps") or []
    if isinstance(steps, Mapping):  # stored by column (castrl.bench.harness.pack_steps)
        columns = steps.get("columns", {})
        n = len(next(iter(columns.values()), []))
        return [{k: v[i] for k, v in columns.items() if v[i] is not None} for i in range(n)]
    return list(steps)


def _zero(row: Mapping[str, Any], key: str) -> bool:
    value = row.get(key)
    return isinstance(value, (int, float)) and value == 0


def did_not_train(rec: Mapping[str, Any]) -> bool:
    """True when a cell logged steps and at every one its advantages were identically 0
    (`cast/frac_nonzero_adv` 0, or `cast/adv_min` = `cast/adv_max` = 0), or at every one its gradient
    norm was 0: its policy never moved. A cell without logged steps is not judged."""
    steps = _steps(rec)
    if not steps:
        return False
    no_advantage = all(_zero(r, "cast/frac_nonzero_adv") or (_zero(r, "cast/adv_min") and _zero(r, "cast/adv_max"))
                       for r in steps)
    return no_advantage or all(_zero(r, "grad_norm") for r in steps)


def trained(cells: Mapping[int, Mapping[str, Any]]) -> bool:
    """False when every cell of a method (seed -> record) did not train; True otherwise (or with no cells)."""
    return not cells or not all(did_not_train(r) for r in cells.values())


def paired(a: Mapping[int, float], b: Mapping[int, float], bounds: tuple[float, float] | None = ACCURACY_DIFF,
           untrained: tuple[str, ...] = (), cross_device: tuple[int, ...] = ()) -> Comparison:
    """a − b over the seeds both have (seed -> value), as a `Comparison`."""
    return Comparison(paired_diff(dict(a), dict(b)), bounds, untrained, cross_device)


def cell_device(rec: Mapping[str, Any]) -> str:
    """Where a cell ran ("cpu", "cuda (NVIDIA H200)"): recorded, not in its key; older cells ran on CPU."""
    return str(rec.get("versions", {}).get("device", "cpu"))


def compare(cells: Mapping[str, Mapping[int, Mapping[str, Any]]], a: str, b: str,
            value: Callable[[Any], float], bounds: tuple[float, float] | None = ACCURACY_DIFF) -> Comparison:
    """`a` − `b` on `value(cell)`, paired by seed, from `cells` (method -> seed -> record). A seed whose two
    cells ran on different devices is left out and named: its runs share the seed but no random stream (other
    kernels, other sampling), so it is not a pair."""
    cells_a, cells_b = cells.get(a, {}), cells.get(b, {})
    untrained = tuple(m for m, c in ((a, cells_a), (b, cells_b)) if not trained(c))
    split = tuple(sorted(s for s in set(cells_a) & set(cells_b) if cell_device(cells_a[s]) != cell_device(cells_b[s])))
    return paired({s: value(r) for s, r in cells_a.items() if s not in split},
                  {s: value(r) for s, r in cells_b.items() if s not in split}, bounds, untrained, split)
