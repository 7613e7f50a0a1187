"""Configuration dataclasses of the advantage estimators (spec `shared/spec/cast.md` §2, §4).

One frozen dataclass per estimator family. Every field carries its meaning, spec symbol and
provenance in `metadata["help"]`: [A] abstract, [S] third-party reading of the paper, [R] our
reconstruction (a default the paper may not use; change it here, not in code).
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Literal

_QUANTILE = re.compile(r"^quantile:(?P<q>[0-9.eE+-]+)$")
LN_1_25 = math.log(1.25)


def _check_band(name: str, band: tuple[float, float]) -> None:
    if len(band) != 2:
        raise ValueError(f"{name} must be a (lo, hi) pair, got {band!r}")
    lo, hi = band
    if not (0 < lo <= 1 <= hi):
        raise ValueError(f"{name} must satisfy 0 < lo <= 1 <= hi, got (lo={lo}, hi={hi})")


def _check_nonneg(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{type(obj).__name__}.{name} must be a number, got {type(value).__name__} {value!r}")
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{type(obj).__name__}.{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class EstimatorConfig:
    """Fields every estimator shares: how a rollout counts as correct and how gaps are sanitised."""

    correct_threshold: float = field(
        default=0.5, metadata={"help": "A rollout is correct when its reward >= this value (spec §1). [S]"}
    )
    std_eps: float = field(
        default=1e-4,
        metadata={"help": "Epsilon added to the group std in (r - mean) / (std + eps); 1e-4 as TRL (verl 1e-6)."},
    )
    gap_clip: float = field(
        default=20.0,
        metadata={"help": "Teacher-student log-prob gaps g are clamped to [-gap_clip, gap_clip] (spec §1). [R]"},
    )

    def __post_init__(self) -> None:
        _check_nonneg(self, "std_eps", "gap_clip")


@dataclass(frozen=True)
class GRPOAdvConfig(EstimatorConfig):
    """GRPO / Dr. GRPO: outcome advantages broadcast over tokens; no extra knobs."""


@dataclass(frozen=True)
class RLSDConfig(EstimatorConfig):
    """RLSD / RLRT: GRPO advantages reshaped by a clipped teacher weight whose strength anneals to 0."""

    rlsd_band: tuple[float, float] = field(
        default=(0.8, 1.2), metadata={"help": "(lo, hi) clip of the RLSD weight w = exp(sign(B) g) (spec §4)."}
    )
    rlsd_lam_start: float = field(default=0.5, metadata={"help": "RLSD lambda at step 0 (spec §4)."})
    rlsd_lam_end: float = field(default=0.0, metadata={"help": "RLSD lambda after the anneal (spec §4)."})
    rlsd_anneal_steps: int = field(
        default=50, metadata={"help": "Optimizer steps over which lambda goes linearly start -> end (spec §4)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_band("rlsd_band", self.rlsd_band)
        if self.rlsd_anneal_steps < 0:
            raise ValueError(f"rlsd_anneal_steps must be >= 0, got {self.rlsd_anneal_steps}")

    def lam_at(self, step: int) -> float:
        """Linear anneal from rlsd_lam_start to rlsd_lam_end over rlsd_anneal_steps."""
        if self.rlsd_anneal_steps == 0:
            return self.rlsd_lam_end
        frac = min(max(step, 0) / self.rlsd_anneal_steps, 1.0)
        return self.rlsd_lam_start + (self.rlsd_lam_end - self.rlsd_lam_start) * frac


@dataclass(frozen=True)
class OPSDConfig(EstimatorConfig):
    """OPSD: the gap itself is the per-token advantage of a reverse-KL policy gradient (no reward)."""


FlipThreshold = Literal["tau", "band", "zero"] | float | str


@dataclass(frozen=True)
class CastConfig(EstimatorConfig):
    """CAST token advantages (spec §2). Field names are part of the public API."""

    b_correct: float = field(
        default=1.0, metadata={"help": "Base advantage +b_correct of every rollout in an all-correct group. [S]"}
    )
    b_wrong: float = field(
        default=1.0, metadata={"help": "Base advantage -b_wrong of every rollout in an all-wrong group. [S]"}
    )
    mixed_scale: Literal["std", "none"] = field(
        default="std",
        metadata={"help": "Mixed groups: 'std' = GRPO (r - mean)/(std + eps); 'none' = Dr. GRPO r - mean. [S]"},
    )
    band_pos: tuple[float, float] = field(
        default=(0.80, 1.05),
        metadata={"help": "(lo, hi) clip of w = exp(g) in rollouts with B > 0; wide side = teacher-negative. [S]"},
    )
    band_neg: tuple[float, float] = field(
        default=(0.95, 1.20),
        metadata={"help": "(lo, hi) clip of w = exp(-g) in rollouts with B < 0; wide side = teacher-negative. [S]"},
    )
    lam: float = field(
        default=1.0, metadata={"help": "Shaping strength: A_hat = B (1 + lam (w - 1)), constant in training. [R]"}
    )
    flip: bool = field(
        default=True, metadata={"help": "Bidirectional advantage flipping; False = 'no sign reversal' ablation. [A]"}
    )
    flip_threshold: FlipThreshold = field(
        default="tau",
        metadata={
            "help": "Which tokens flip: 'tau' (tau_pos/tau_neg), 'band' (tokens saturating the band's low side), "
            "'zero' (any disagreement), a float (both taus), or 'quantile:<q>' (top-q of each rollout's "
            "disagreeing tokens by |g|). [R]"
        },
    )
    tau_pos: float = field(
        default=LN_1_25, metadata={"help": "Flip a token of a B > 0 rollout when g < -tau_pos (ln 1.25). [R]"}
    )
    tau_neg: float = field(
        default=LN_1_25, metadata={"help": "Flip a token of a B < 0 rollout when g > tau_neg (ln 1.25). [R]"}
    )
    kappa_pos: float = field(
        default=1.0, metadata={"help": "Flipped tokens of positive rollouts get A = -kappa_pos |A_hat|. [R]"}
    )
    kappa_neg: float = field(
        default=0.5,
        metadata={"help": "Flipped tokens of negative rollouts get A = +min(kappa_neg |A_hat|, pos_cap |B|). [R]"},
    )
    pos_cap: float = field(
        default=0.5, metadata={"help": "Cap on positive credit of a flipped token in a wrong rollout, x |B|. [R]"}
    )
    adv_clip: float = field(default=1.2, metadata={"help": "Final band: A = clip(A, -adv_clip, adv_clip). [S]"})
    mixed_only: bool = field(
        default=False,
        metadata={"help": "Ablation: zero-variance (all-correct / all-wrong) groups get B = 0, as GRPO. [S]"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mixed_scale not in ("std", "none"):
            raise ValueError(f"mixed_scale must be 'std' or 'none', got {self.mixed_scale!r}")
        _check_band("band_pos", self.band_pos)
        _check_band("band_neg", self.band_neg)
        _check_nonneg(self, "b_correct", "b_wrong", "lam", "tau_pos", "tau_neg", "kappa_pos", "kappa_neg")
        _check_nonneg(self, "pos_cap", "adv_clip")
        for name, (lo, _) in (("band_pos", self.band_pos), ("band_neg", self.band_neg)):
            # spec §2.3: the shaping must never flip B's sign. The 1e-9 slack rejects the exact boundary
            # given in decimals (lam=5, lo=0.8), which fp64 rounds to just inside it
            if self.lam * (1 - lo) >= 1 - 1e-9:
                raise ValueError(
                    f"lam={self.lam} with {name} lo={lo} makes 1 + lam (w - 1) <= 0, so shaping would flip "
                    f"the sign of B; use lam < {1 / (1 - lo):.3g} or a narrower band"
                )
        self.flip_taus()  # validates flip_threshold
        self.flip_quantile()

    def flip_quantile(self) -> float | None:
        """q of a 'quantile:<q>' flip threshold, else None."""
        if not isinstance(self.flip_threshold, str):
            return None
        match = _QUANTILE.match(self.flip_threshold)
        if match is None:
            return None
        try:
            q = float(match["q"])
        except ValueError:
            q = math.nan  # e.g. 'quantile:1e': reported below with the field name
        if not 0 < q <= 1:
            raise ValueError(f"flip_threshold 'quantile:<q>' needs 0 < q <= 1, got {self.flip_threshold!r}")
        return q

    def flip_taus(self) -> tuple[float, float]:
        """(tau_pos, tau_neg) the flip rule compares g against; quantile mode flips from 0 up."""
        ft = self.flip_threshold
        if ft == "tau":
            return self.tau_pos, self.tau_neg
        if ft == "band":
            return -math.log(self.band_pos[0]), -math.log(self.band_neg[0])
        if ft == "zero" or (isinstance(ft, str) and _QUANTILE.match(ft)):
            return 0.0, 0.0
        value = _as_float_threshold(ft)
        return value, value


def _as_float_threshold(ft: object) -> float:
    """A numeric flip threshold, given as a number or as text (from a CLI flag or YAML)."""
    error = ValueError(f"flip_threshold must be 'tau', 'band', 'zero', a float >= 0 or 'quantile:<q>', got {ft!r}")
    if isinstance(ft, bool):
        raise error
    try:
        value = float(ft)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise error from None
    if not (value >= 0 and math.isfinite(value)):
        raise error
    return value
