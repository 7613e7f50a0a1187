"""Configuration dataclasses of the advantage estimators (spec `shared/spec/cast.md` v2, §2 and §5).

One frozen dataclass per estimator family. Every field carries its meaning, the paper's symbol and
provenance in `metadata["help"]`: [P] stated in the paper (equation or table named), [D] derived by
us from [P] statements, [R] our choice where the paper is silent (a default to change here, never in
code).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Literal


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


def _check_steps(obj: object, name: str, allow_none: bool = False) -> None:
    value = getattr(obj, name)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{type(obj).__name__}.{name} must be an integer >= 0, got {value!r}")


GAP_CONTROLS: tuple[str, ...] = ("none", "shuffle")


def linear_anneal(start: float, end: float, steps: int, step: int) -> float:
    """start -> end linearly over `steps` optimizer steps, then `end` (steps = 0: `end` at once)."""
    if steps == 0:
        return end
    frac = min(max(step, 0) / steps, 1.0)
    return start + (end - start) * frac


@dataclass(frozen=True)
class EstimatorConfig:
    """Fields every estimator shares: how a rollout counts as correct and how gaps are sanitised."""

    correct_threshold: float = field(
        default=0.5, metadata={"help": "A rollout is correct when its reward >= this value (spec §1). [R]"}
    )
    std_eps: float = field(
        default=1e-4,
        metadata={"help": "epsilon of Eq. 5, (r - mean) / (std + eps); 1e-4 as TRL (the paper does not say). [R]"},
    )
    gap_clip: float = field(
        default=20.0,
        metadata={"help": "Teacher-student log-prob gaps g are clamped to [-gap_clip, gap_clip] (spec §1). [R]"},
    )
    gap_control: Literal["none", "shuffle"] = field(
        default="none",
        metadata={
            "help": "A control of ours, not a method: 'shuffle' permutes the valid tokens' gaps across tokens and "
            "rollouts of the batch before the estimator's rule, seeded by the optimizer step: same magnitudes and "
            "sign shares, no information about which token. If an estimator does as well with it, the "
            "teacher's token ranking is not what drives its result. 'none' = the method as written. [R]"
        },
    )

    def __post_init__(self) -> None:
        _check_nonneg(self, "std_eps", "gap_clip")
        if self.gap_control not in GAP_CONTROLS:
            raise ValueError(f"gap_control must be one of {', '.join(GAP_CONTROLS)}, got {self.gap_control!r}")

    @property
    def row_local(self) -> bool:
        """Whether the token step of a row depends on that row alone. A `gap_control` other than 'none'
        mixes gaps across the rows of the call, so a host must hand it the whole batch at once (a trainer
        then cannot run the token step per micro-batch)."""
        return self.gap_control == "none"


@dataclass(frozen=True)
class GRPOAdvConfig(EstimatorConfig):
    """GRPO / Dr. GRPO: outcome advantages broadcast over tokens; no extra knobs."""


@dataclass(frozen=True)
class RLSDConfig(EstimatorConfig):
    """RLSD: GRPO advantages reshaped by a clipped teacher weight whose strength anneals to 0 (spec §5)."""

    rlsd_band: tuple[float, float] = field(
        default=(0.8, 1.2), metadata={"help": "(lo, hi) clip of the RLSD weight w = exp(sign(A) g) (§8.4). [P]"}
    )
    rlsd_lam_start: float = field(default=0.5, metadata={"help": "RLSD lambda at step 0 (spec §5; not in the paper). [R]"})
    rlsd_lam_end: float = field(default=0.0, metadata={"help": "RLSD lambda after the anneal (spec §5). [R]"})
    rlsd_anneal_steps: int = field(
        default=50, metadata={"help": "Optimizer steps over which lambda goes linearly start -> end (spec §5). [R]"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_band("rlsd_band", self.rlsd_band)
        _check_nonneg(self, "rlsd_lam_start", "rlsd_lam_end")
        _check_steps(self, "rlsd_anneal_steps")

    def lam_at(self, step: int) -> float:
        """Linear anneal from rlsd_lam_start to rlsd_lam_end over rlsd_anneal_steps."""
        return linear_anneal(self.rlsd_lam_start, self.rlsd_lam_end, self.rlsd_anneal_steps, step)


@dataclass(frozen=True)
class RLRTConfig(EstimatorConfig):
    """RLRT (§8.4): reversed teacher evidence d = -g on verified-correct rollouts only, no decay."""

    rlrt_eps_w: float = field(
        default=1.0, metadata={"help": "w = exp(sign(A) d) is clipped to [1 - eps_w, 1 + eps_w] (§8.4). [P]"}
    )
    rlrt_lam: float = field(
        default=0.5, metadata={"help": "A (1 - lam + lam w) on correct rollouts; constant, no decay (§8.4). [P]"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_nonneg(self, "rlrt_eps_w", "rlrt_lam")
        if self.rlrt_eps_w > 1:
            raise ValueError(f"RLRTConfig.rlrt_eps_w must be in [0, 1] (the weight stays >= 0), got {self.rlrt_eps_w}")
        if self.rlrt_lam > 1:
            raise ValueError(f"RLRTConfig.rlrt_lam must be in [0, 1] (keeps A's sign), got {self.rlrt_lam}")


@dataclass(frozen=True)
class OPSDConfig(EstimatorConfig):
    """OPSD: the gap itself is the per-token advantage of a reverse-KL policy gradient (no reward)."""


@dataclass(frozen=True)
class GRPOOPSDConfig(EstimatorConfig):
    """GRPO + OPSD (§8.4): the GRPO advantage plus alpha_k g, alpha annealed linearly to 0."""

    opsd_coef_start: float = field(
        default=0.2, metadata={"help": "alpha, the OPSD auxiliary's coefficient at step 0 (§8.4). [P]"}
    )
    opsd_coef_end: float = field(default=0.0, metadata={"help": "alpha after the anneal (§8.4 says only: decayed). [R]"})
    opsd_anneal_steps: int = field(
        default=50, metadata={"help": "Optimizer steps of the linear alpha decay (§8.4). [P]"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_nonneg(self, "opsd_coef_start", "opsd_coef_end")
        _check_steps(self, "opsd_anneal_steps")

    def coef_at(self, step: int) -> float:
        """alpha_k: linear decay from opsd_coef_start to opsd_coef_end over opsd_anneal_steps."""
        return linear_anneal(self.opsd_coef_start, self.opsd_coef_end, self.opsd_anneal_steps, step)


@dataclass(frozen=True)
class CastConfig(EstimatorConfig):
    """CAST token advantages (spec §2, the paper's Eq. 6-15 and Algorithm 1). Field names are public API."""

    b_correct: float = field(
        default=1.0, metadata={"help": "Base advantage +b_correct of every rollout in an all-correct group (Eq. 6). [P]"}
    )
    b_wrong: float = field(
        default=1.0, metadata={"help": "Base advantage -b_wrong of every rollout in an all-wrong group (Eq. 6). [P]"}
    )
    mixed_scale: Literal["std", "none"] = field(
        default="std",
        metadata={"help": "Mixed groups: 'std' = GRPO (r - mean)/(std + eps) (Eq. 5); 'none' = Dr. GRPO r - mean. [R]"},
    )
    band_pos: tuple[float, float] = field(
        default=(0.80, 1.05),
        metadata={"help": "(l+, u+): clip of z = exp(g) where B > 0 (Eq. 8); u+ also caps positive flips (Eq. 13). [P]"},
    )
    band_neg: tuple[float, float] = field(
        default=(0.95, 1.20),
        metadata={"help": "(l-, u-): clip of z = exp(-g) where B < 0 (Eq. 8); u- also caps negative flips (Eq. 11). [P]"},
    )
    lam: float = field(
        default=1.0, metadata={"help": "lambda of Eq. 9-12: A_hat = B (1 + lam (w - 1)), constant in training. [P]"}
    )
    flip: bool = field(
        default=True,
        metadata={"help": "Sign reversal (Eq. 10-14); False turns both directions off ('no sign reversal', Table 7). [P]"},
    )
    flip_correct: bool = field(
        default=True,
        metadata={"help": "Correct-path negative reversal: B > 0 and g < 0 -> -|B|(1 + lam (w- - 1)) (Eq. 10). [P]"},
    )
    flip_incorrect: bool = field(
        default=True,
        metadata={"help": "Incorrect-path positive reversal: B < 0 and g > 0 -> +|B|(1 + lam (w+ - 1)) (Eq. 12). [P]"},
    )
    flip_margin: float = field(
        default=0.0,
        metadata={
            "help": "Our extension: a token flips only when |g| > flip_margin; below it the sign-preserving "
            "A_hat applies. 0 = the paper (every disagreeing token flips). [R]"
        },
    )
    adv_clip: float = field(
        default=1.2, metadata={"help": "Final clip of Eq. 15: A = clip(A, -adv_clip, adv_clip). [P]"}
    )
    mixed_only: bool = field(
        default=False,
        metadata={"help": "Ablation 'mixed-only' (Table 7): all-correct / all-wrong groups get B = 0. [P]"},
    )
    shaping_cutoff_step: int | None = field(
        default=None,
        metadata={
            "help": "Ablation of Eq. 18-19: from this optimizer step on, lam = 0 and b_correct = b_wrong = 0, and "
            "no token flips (the paper: gaps no longer affect the advantages) [D]; None = never. [P]"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mixed_scale not in ("std", "none"):
            raise ValueError(f"mixed_scale must be 'std' or 'none', got {self.mixed_scale!r}")
        _check_band("band_pos", self.band_pos)
        _check_band("band_neg", self.band_neg)
        _check_nonneg(self, "b_correct", "b_wrong", "lam", "flip_margin", "adv_clip")
        _check_steps(self, "shaping_cutoff_step", allow_none=True)
        for name in ("flip", "flip_correct", "flip_incorrect", "mixed_only"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"CastConfig.{name} must be a bool, got {getattr(self, name)!r}")
        for name, (lo, _) in (("band_pos", self.band_pos), ("band_neg", self.band_neg)):
            # Eq. 9 must keep B's sign. The 1e-9 slack rejects the exact boundary given in decimals
            # (lam=5, lo=0.8), which fp64 rounds to just inside it
            if self.lam * (1 - lo) >= 1 - 1e-9:
                raise ValueError(
                    f"lam={self.lam} with {name} lo={lo} makes 1 + lam (w - 1) <= 0, so Eq. 9 would flip "
                    f"the sign of B; use lam < {1 / (1 - lo):.3g} or a narrower band"
                )

    def shaping_active(self, step: int) -> bool:
        """False from `shaping_cutoff_step` on (Eq. 18-19): the gap no longer touches the advantages."""
        return self.shaping_cutoff_step is None or step < self.shaping_cutoff_step

    def flips(self, step: int) -> tuple[bool, bool]:
        """(correct-path negative, incorrect-path positive) reversal switches in force at `step`."""
        on = self.flip and self.shaping_active(step)
        return on and self.flip_correct, on and self.flip_incorrect
