"""How an advantage estimator is registered and called: one registry, one contract (spec §5).

Every estimator is a *base step* over whole groups (rewards -> one (B,) base advantage per rollout)
followed by a row-local *token step* (base, log-probs -> (B, T)). Registered, it is callable as
    fn(rewards, group_ids, student_logps, teacher_logps, mask, config, step) -> (adv, stats)
with rewards (B,) float, group_ids (B,) int, student/teacher log-probs (B, T) float (teacher None
for estimators that use none), mask (B, T) bool/float. `adv` is (B, T), detached, zero on padding,
in student_logps' dtype and device; `stats` maps `cast/...` metric names to floats. The math runs
in fp32. The halves let a trainer run the token step later, on any subset of rows (e.g. a training
micro-batch whose forward pass already yields the student log-probs).

The math of each estimator lives in `castrl.core.advantages`; this module only adds what they share:
config defaulting and type check, input validation, masking, output dtype/device, detaching, and
the common metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch

from .config import EstimatorConfig
from .inputs import PreparedBatch, prepare_batch, prepare_groups
from .registry import Registry
from .stats import advantage_metrics, gap_metrics, group_metrics

BaseRule = Callable[[PreparedBatch, EstimatorConfig, int], torch.Tensor]
TokenRule = Callable[[PreparedBatch, torch.Tensor, EstimatorConfig, int], tuple[torch.Tensor, dict[str, float]]]
RuleT = TypeVar("RuleT", bound=TokenRule)


class AdvantageEstimator(Protocol):
    def __call__(
        self,
        rewards: torch.Tensor,  # (B,) float verifier rewards
        group_ids: torch.Tensor,  # (B,) int, rows of one prompt share an id
        student_logps: torch.Tensor,  # (B, T) float, log pi_old of the sampled tokens
        teacher_logps: torch.Tensor | None,  # (B, T) float, stop-gradient teacher log-probs
        mask: torch.Tensor,  # (B, T) bool/float, 1 on valid completion tokens
        config: EstimatorConfig | None = None,  # None = the estimator's default config
        step: int = 0,  # optimizer step, for schedules (anneals, the shaping cutoff)
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


class BaseStep(Protocol):
    def __call__(
        self, rewards: torch.Tensor, group_ids: torch.Tensor, config: EstimatorConfig | None = None, step: int = 0
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


class TokenStep(Protocol):
    def __call__(
        self,
        base: torch.Tensor,  # (B,) float, the base step's output for these rows
        rewards: torch.Tensor,  # (B,) float, for correctness (the metrics' split, RLRT's row choice)
        student_logps: torch.Tensor,
        teacher_logps: torch.Tensor | None,
        mask: torch.Tensor,
        config: EstimatorConfig | None = None,
        step: int = 0,
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass(frozen=True)
class EstimatorSpec:
    """A registered estimator: the one-call form, its config class, its two halves, and its teacher.

    `paper_teacher_context` names the teacher context the paper pairs the estimator with (spec §5),
    so hosts (bench, train) can follow the paper without branching on estimator names.
    """

    fn: AdvantageEstimator
    config_cls: type[EstimatorConfig]
    needs_teacher: bool
    base_step: BaseStep
    token_step: TokenStep
    paper_teacher_context: str | None


ADVANTAGE_ESTIMATORS: Registry[EstimatorSpec] = Registry("advantage estimator")


def _apply_mask(adv: torch.Tensor, batch: PreparedBatch) -> torch.Tensor:
    """adv * mask; in place when `adv` is a fresh fp32 buffer of the rule (not a view, not batch data).

    On CPU a fresh (B, T) buffer costs page faults that outweigh the multiply itself.
    """
    owned = (
        adv._base is None  # not a view (GRPO returns an expanded (B, 1) column)
        and adv.dtype == torch.float32
        and adv.shape == batch.mask.shape
        and adv.is_contiguous()
        and all(adv is not t for t in (batch.gap, batch.mask, batch.real))
    )
    return adv.mul_(batch.mask) if owned else adv * batch.mask


def _check_base(base: object, n_rows: int) -> torch.Tensor:
    if not isinstance(base, torch.Tensor) or not base.is_floating_point():
        raise TypeError(f"base must be a float torch.Tensor, got {getattr(base, 'dtype', type(base).__name__)}")
    if base.shape != (n_rows,):
        raise ValueError(f"base must have shape ({n_rows},) (one value per row), got {tuple(base.shape)}")
    if not torch.isfinite(base).all():
        raise ValueError("base must be finite")
    return base.detach().float()


@dataclass(frozen=True)
class _Estimator:
    """The callables built around one estimator's base rule and token rule."""

    name: str
    config_cls: type[EstimatorConfig]
    needs_teacher: bool
    base_rule: BaseRule
    token_rule: TokenRule

    def config(self, config: EstimatorConfig | None) -> EstimatorConfig:
        config = self.config_cls() if config is None else config
        if not isinstance(config, self.config_cls):
            raise TypeError(f"{self.name!r} needs a {self.config_cls.__name__}, got {type(config).__name__}")
        return config

    def _tokens(self, batch, base_adv, student_logps, config, step):
        adv, stats = self.token_rule(batch, base_adv, config, step)
        adv = _apply_mask(adv, batch).detach().to(dtype=student_logps.dtype)
        stats = {**stats, **advantage_metrics(adv, batch.mask)}
        if batch.gap is not None:
            stats.update(gap_metrics(batch))
        return adv, stats

    def _prepare(self, rewards, group_ids, student_logps, teacher_logps, mask, config, step) -> PreparedBatch:
        return prepare_batch(
            rewards, group_ids, student_logps, teacher_logps, mask, config, self.needs_teacher, self.name, step
        )

    def full(self, rewards, group_ids, student_logps, teacher_logps, mask, config=None, step=0):
        config = self.config(config)
        batch = self._prepare(rewards, group_ids, student_logps, teacher_logps, mask, config, step)
        adv, stats = self._tokens(batch, self.base_rule(batch, config, step), student_logps, config, step)
        return adv, {**group_metrics(batch), **stats}

    def base_step(self, rewards, group_ids, config=None, step=0):
        config = self.config(config)
        batch = prepare_groups(rewards, group_ids, config)
        return self.base_rule(batch, config, step).detach(), group_metrics(batch)

    def token_step(self, base_adv, rewards, student_logps, teacher_logps, mask, config=None, step=0):
        config = self.config(config)
        # every row a group of its own; a non-tensor `rewards` is reported by prepare_batch
        is_tensor = isinstance(rewards, torch.Tensor) and rewards.ndim >= 1
        n = rewards.shape[0] if is_tensor else 0
        rows = torch.arange(n, device=rewards.device if is_tensor else None)
        batch = self._prepare(rewards, rows, student_logps, teacher_logps, mask, config, step)
        return self._tokens(batch, _check_base(base_adv, batch.rewards.shape[0]), student_logps, config, step)


def register_advantage(
    name: str,
    config_cls: type[EstimatorConfig],
    needs_teacher: bool,
    base: BaseRule,
    paper_teacher_context: str | None = None,
) -> Callable[[RuleT], RuleT]:
    """Register estimator `name` from `base(batch, config, step) -> (B,)` over whole groups and the
    decorated row-local token rule `rule(batch, base, config, step) -> (adv fp32 (B, T), stats)`.

    The decorated function is returned unchanged (callable as written); the validated one-call
    estimator and its halves are in the registry (`get_estimator(name)`). The token rule must not
    read group statistics (`batch.groups` other than `.correct`): the token step calls it with every
    row in a group of its own.
    """

    def decorate(rule: RuleT) -> RuleT:
        est = _Estimator(name, config_cls, needs_teacher, base, rule)
        spec = EstimatorSpec(est.full, config_cls, needs_teacher, est.base_step, est.token_step, paper_teacher_context)
        ADVANTAGE_ESTIMATORS.add(name, spec)
        return rule

    return decorate


def get_estimator(name: str) -> EstimatorSpec:
    """The registered estimator `name`; unknown names raise ValueError listing the registered ones."""
    return ADVANTAGE_ESTIMATORS.get(name)


def compute_advantages(
    name: str,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    student_logps: torch.Tensor,
    teacher_logps: torch.Tensor | None,
    mask: torch.Tensor,
    config: EstimatorConfig | None = None,
    step: int = 0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Dispatch to the registered estimator `name` (the one place callers name an estimator)."""
    return get_estimator(name).fn(rewards, group_ids, student_logps, teacher_logps, mask, config, step)


def compute_base_advantages(
    name: str, rewards: torch.Tensor, group_ids: torch.Tensor, config: EstimatorConfig | None = None, step: int = 0
) -> tuple[torch.Tensor, dict[str, float]]:
    """First half of estimator `name`: the (B,) base advantage per rollout (needs whole groups) and
    the group metrics. No log-probs: it can run as soon as the rewards are in."""
    return get_estimator(name).base_step(rewards, group_ids, config, step)


def compute_token_advantages(
    name: str,
    base: torch.Tensor,
    rewards: torch.Tensor,
    student_logps: torch.Tensor,
    teacher_logps: torch.Tensor | None,
    mask: torch.Tensor,
    config: EstimatorConfig | None = None,
    step: int = 0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Second half of estimator `name`: (B, T) token advantages from the rows' `base` (from
    `compute_base_advantages`) and log-probs. Row-local: any subset of rows gives those rows'
    advantages of the full-batch `compute_advantages` (unless `config.row_local` is False: a gap
    control permutes gaps across the rows it is given). `rewards` only tell correct from wrong rows."""
    return get_estimator(name).token_step(base, rewards, student_logps, teacher_logps, mask, config, step)
