"""castrl.core: pure tensor math of CAST and its baselines (torch + stdlib only, no I/O).

    from castrl.core import CastConfig, cast_advantages
    adv, stats = cast_advantages(rewards, group_ids, student_logps, teacher_logps, mask, cfg=CastConfig())
"""

from .advantages import cast_advantages, cast_base, cast_flip_masks
from .config import (
    CastConfig,
    EstimatorConfig,
    GRPOAdvConfig,
    GRPOOPSDConfig,
    OPSDConfig,
    RLRTConfig,
    RLSDConfig,
)
from .estimators import (
    ADVANTAGE_ESTIMATORS,
    AdvantageEstimator,
    EstimatorSpec,
    compute_advantages,
    compute_base_advantages,
    compute_token_advantages,
    get_estimator,
    register_advantage,
)
from .groups import ALL_CORRECT, ALL_WRONG, MIXED, GroupStats, group_stats
from .losses import LossConfig, PolicyLoss, aggregate, clipped_surrogate_loss, k3_kl

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "ALL_CORRECT",
    "ALL_WRONG",
    "MIXED",
    "AdvantageEstimator",
    "CastConfig",
    "EstimatorConfig",
    "EstimatorSpec",
    "GRPOAdvConfig",
    "GRPOOPSDConfig",
    "GroupStats",
    "LossConfig",
    "OPSDConfig",
    "PolicyLoss",
    "RLRTConfig",
    "RLSDConfig",
    "aggregate",
    "cast_advantages",
    "cast_base",
    "cast_flip_masks",
    "clipped_surrogate_loss",
    "compute_advantages",
    "compute_base_advantages",
    "compute_token_advantages",
    "get_estimator",
    "group_stats",
    "k3_kl",
    "register_advantage",
]
