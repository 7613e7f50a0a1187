"""`castrl diagnose`'s verdict: one line per teacher, from its within-group gap AUC, quoting what castrl's
positive control measured at that AUC.

Why a module of its own: the verdict is read in three places (a fresh diagnosis, the bench's cached
diagnoses, docs/diagnostics.md) and has to be recomputable from the numbers a diagnosis stores
(`verdict_of`), so a change of rule re-renders every cached verdict without re-running a model.

Two things an AUC alone hides:
- ties. Pairs whose mean gaps are equal count ½, so a teacher whose gap is 0 everywhere (a `refresh:K`
  or `ema` self-teacher before any update reads the student's own prompt with the student's weights)
  scores 0.500 exactly without measuring anything. Such a teacher gets its own verdict (`NO_SIGNAL`):
  with g = 0 nothing flips and every token keeps its rollout's verifier-signed base advantage. A large
  share of ties otherwise gets a caveat (`TIE_CAVEAT`).
- the control's own no-signal point. `CONTROL_CURVE` keeps the self-teacher (`signal=False`) as a record
  of what was measured, but only points with a signal (`ANCHORS`) set thresholds or are quoted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from castrl.reporting.findings import ACCURACY_DIFF, BETTER, WORSE, Comparison
from castrl.reporting.stats import Interval

# A within-group gap AUC in [0.5 - AUC_BAND, 0.5 + AUC_BAND] counts as "no separation".
AUC_BAND = 0.05
# Below this many (correct, wrong) pairs the verdict says that the AUC is a noisy estimate.
MIN_VERDICT_PAIRS = 50
# From this share of tied pairs on, the verdict says that ties pull the AUC toward 0.5.
TIE_CAVEAT = 0.05
NO_SIGNAL = "no teacher signal: CAST reduces to verifier-signed base advantages"


@dataclass(frozen=True)
class ControlPoint:
    """One teacher of castrl's positive control (`castrl bench control`, docs/results.md): its gap AUC as
    `rollout_gap_auc` measures it before training, and CAST's paired difference from GRPO (training
    reward of the last 20 of 80 steps, `n` seeds, 95 % t-interval). `signal` False: the teacher's gap was 0
    on every token before training, so its AUC is ties, not a measurement, and the point anchors nothing."""

    teacher: str
    auc: float
    delta: float
    lo: float
    hi: float
    n: int = 5
    signal: bool = True

    def comparison(self) -> Comparison:
        return Comparison(Interval(self.delta, (self.hi - self.lo) / 2, self.n), ACCURACY_DIFF)

    def outcome(self) -> str:
        """'better than' / 'worse than' / 'not distinguishable from' by the one rule of a finding; 'not
        measurably different from' when the point is not a finding (too few seeds, zero width)."""
        found = self.comparison()
        return found.relation() if found.readable else "not measurably different from"

    def quoted(self) -> str:
        return f"training reward Δ {self.delta:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}], docs/results.md"


# The control's points (docs/results.md, "positive control"; `tests/test_verdict.py` checks them against the
# cached control cells, so they cannot drift from the report).
CONTROL_CURVE: tuple[ControlPoint, ...] = (
    ControlPoint("self", 0.500, -0.183, -0.221, -0.145, signal=False),
    ControlPoint("sft+500", 0.773, -0.094, -0.129, -0.060),
    ControlPoint("sft+2000", 0.845, -0.035, -0.059, -0.011),
)
ANCHORS: tuple[ControlPoint, ...] = tuple(p for p in CONTROL_CURVE if p.signal)
# From this AUC on, CAST stopped doing measurably worse than GRPO in the control (the lowest anchor AUC
# whose difference is not a finding below 0); below it, a teacher that agrees with the verifier on average
# still cost CAST. inf: CAST did worse than GRPO with every teacher with a signal that the control measured.
AUC_NO_WORSE = min((p.auc for p in ANCHORS if p.comparison().status != WORSE), default=math.inf)
AUC_STRONGEST = max(p.auc for p in ANCHORS)
AUC_WEAKEST = min(p.auc for p in ANCHORS)
# The curve's AUCs are rounded to 3 decimals: a measured AUC within this of a point is that point.
ROUNDING = 5e-4


def control_summary() -> str:
    """The positive control's outcome in one clause, computed from its anchors (`ANCHORS`)."""
    silent = ", ".join(f"`{p.teacher}`" for p in CONTROL_CURVE if not p.signal)
    note = f"; the control's {silent} teacher had no signal before training (gap 0) and anchors nothing" if silent else ""
    if math.isinf(AUC_NO_WORSE):
        return (f"CAST did worse than GRPO with every teacher with a signal (AUC {AUC_WEAKEST:.3f} to "
                f"{AUC_STRONGEST:.3f}), less so the stronger the teacher{note}")
    beat = [p.auc for p in ANCHORS if p.comparison().status == BETTER]
    won = f"beat it from AUC {min(beat):.3f}" if beat else f"beat it with none (up to AUC {AUC_STRONGEST:.3f})"
    return f"CAST stopped losing to GRPO from AUC {AUC_NO_WORSE:.3f} and {won}{note}"


def control_evidence(auc: float) -> str:
    """What castrl's positive control measured with the anchor nearest to `auc` at or below it, or, below
    every anchor, with the weakest one (and that this teacher is weaker)."""
    below = [p for p in ANCHORS if p.auc <= auc + ROUNDING]
    if below:
        point = max(below, key=lambda p: p.auc)
        return (f"in castrl's positive control a teacher at AUC {point.auc:.3f} left CAST {point.outcome()} GRPO "
                f"({point.quoted()})")
    point = min(ANCHORS, key=lambda p: p.auc)
    return (f"in castrl's positive control the weakest teacher with a signal (AUC {point.auc:.3f}) left CAST "
            f"{point.outcome()} GRPO ({point.quoted()}), and this teacher is weaker than that one")


def _no_signal(auc: float, n_pairs: int) -> str:
    ties = f"its AUC {auc:.2f} is {n_pairs} tied pairs counted ½ each" if n_pairs > 0 else "no pair to rank"
    return (f"{NO_SIGNAL} (the gap is 0 on every valid token, so no token flips and each keeps its rollout's base "
            f"advantage; {ties}, not a measurement). This diagnosis does not predict CAST against GRPO: a teacher "
            "that starts as the student (refresh:K, ema) departs from it once training moves the policy")


def gap_verdict(auc: float, n_pairs: int, band: float = AUC_BAND, *, tie_share: float | None = None,
                frac_zero_gap: float | None = None) -> str:
    """One line a user can act on, from the within-group gap AUC of a teacher (`rollout_gap_auc` of
    the mean gap per token), citing the control's anchors: a gap 0 on every valid token
    (`frac_zero_gap` 1) carries no signal whatever the AUC; otherwise below 0.5 - band the gap points the
    wrong way; within the band it separates nothing; above it and below `AUC_NO_WORSE` (inf when CAST lost
    with every anchor) it agrees with the verifier on average but CAST still did worse than GRPO in the
    control; from `AUC_NO_WORSE` on the control's CAST matched GRPO. Plus the case with no pair; caveats
    below MIN_VERDICT_PAIRS pairs and from TIE_CAVEAT tied pairs (`tie_share`)."""
    if frac_zero_gap is not None and frac_zero_gap >= 1 - 1e-12:
        return _no_signal(auc, n_pairs)
    if n_pairs <= 0 or not math.isfinite(auc):
        return (
            "no mixed group, so no (correct, wrong) pair to rank: the gap AUC is undefined; sample more "
            "problems (--n_prompts) or larger groups (--group_size), or use data the model solves only sometimes"
        )
    measured = f"(AUC {auc:.2f}, {n_pairs} pairs)"
    if auc < 0.5 - band:
        line = (f"the teacher's gap ranks wrong rollouts above correct ones {measured}: CAST's flips will push "
                f"toward wrong behaviour on this model; use GRPO or another teacher ({control_evidence(auc)})")
    elif auc <= 0.5 + band:
        line = (f"the teacher's gap barely separates correct from wrong rollouts {measured}: CAST's flips follow "
                f"no verifier evidence; {control_evidence(auc)}; expect CAST below GRPO, use GRPO or compare with "
                "flip=false")
    elif auc < AUC_NO_WORSE:
        above = ("" if math.isinf(AUC_NO_WORSE) else f", but below AUC {AUC_NO_WORSE:.3f}, from which CAST stopped "
                 "losing to GRPO in castrl's positive control")
        stronger = " (your teacher is stronger than any the control measured)" if auc > AUC_STRONGEST + ROUNDING else ""
        line = (f"the teacher's gap ranks correct rollouts above wrong ones {measured}{above}: "
                f"{control_evidence(auc)}{stronger}; expect CAST at or below GRPO and compare with flip=false")
    else:
        line = (f"the teacher's gap ranks correct rollouts above wrong ones {measured}, as strongly as the teachers "
                f"with which CAST stopped losing to GRPO: {control_evidence(auc)}; CAST's precondition holds, "
                "a gain over GRPO is not established by it")
    if tie_share is not None and tie_share >= TIE_CAVEAT:
        line += f" [{tie_share:.0%} of the pairs tied, each counted ½: the AUC is pulled toward 0.5]"
    if n_pairs < MIN_VERDICT_PAIRS:
        line += f" [only {n_pairs} pairs: a noisy estimate]"
    return line


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def stored_zero_gap_share(stored: Mapping[str, Any]) -> float | None:
    """The share of valid tokens with g = 0 of a stored diagnosis (a teacher profile of the bench's
    cache, or `analyze`'s per-teacher dict): `frac_zero_gap` where recorded (`sequences` or top level),
    else derived from `against_verifier` (tokens of B != 0 rollouts: against + agreeing + zero = 1; every
    valid token when every rollout has B != 0, as under CAST's defaults). None when neither is there."""
    for source in (stored, stored.get("sequences") or {}):
        share = _number(source.get("frac_zero_gap"))
        if share is not None:
            return share
    against = stored.get("against_verifier") or {}
    frac, agree, n = (_number(against.get(k)) for k in ("frac", "frac_agree", "n_tokens"))
    if frac is None or agree is None or not n:
        return None
    return max(0.0, 1.0 - frac - agree)


def stored_tie_share(stored: Mapping[str, Any]) -> float | None:
    """The share of tied (correct, wrong) pairs in the stored AUC: recorded (`tie_share`), or 1 when the gap
    was 0 on every token (every mean gap is 0); None when it was not recorded."""
    for source in (stored, stored.get("sequences") or {}):
        share = _number(source.get("tie_share"))
        if share is not None:
            return share
    zero = stored_zero_gap_share(stored)
    return 1.0 if zero is not None and zero >= 1 - 1e-12 else None


def has_signal(stored: Mapping[str, Any]) -> bool:
    """False when the stored diagnosis shows a gap of 0 on every valid token."""
    zero = stored_zero_gap_share(stored)
    return zero is None or zero < 1 - 1e-12


# The clause `noise.noise_warning` appends to a verdict (the pipeline adds it after `gap_verdict`'s line).
_NOISE_CLAUSE = re.compile(r"\d+% of CAST's flips have \|g\| at or below the fp32 scoring noise.*\Z", re.S)


def _noise_clause(stored: Mapping[str, Any]) -> str | None:
    """The noise-floor clause of a stored verdict: recomputed from `noise_floor` where it was stored, else
    kept as the stored verdict wrote it (a profile that copied the verdict without the numbers)."""
    floor = stored.get("noise_floor")
    if isinstance(floor, Mapping):
        from .noise import noise_warning

        return noise_warning(floor)
    found = _NOISE_CLAUSE.search(str(stored.get("verdict") or ""))
    return found.group(0) if found else None


def verdict_of(stored: Mapping[str, Any]) -> str:
    """`gap_verdict` recomputed from a stored diagnosis (`auc`, `n_pairs`, ties and zero-gap share as
    recorded or derived, and the noise-floor clause the pipeline appends): the verdict under today's rule,
    without re-running a model."""
    seq = stored.get("sequences") or {}
    auc = _number(stored.get("auc", seq.get("auc_mean")))
    pairs = _number(stored.get("n_pairs", seq.get("n_pairs"))) or 0.0
    line = gap_verdict(math.nan if auc is None else auc, int(pairs), tie_share=stored_tie_share(stored),
                       frac_zero_gap=stored_zero_gap_share(stored))
    clause = _noise_clause(stored)
    return f"{line}; {clause}" if clause else line
