"""Policy losses: the token-level clipped surrogate and its aggregation modes (spec §2.6).

    loss_t = -min(rho_t A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) A_t) + beta * k3_t
with rho = exp(logp - old_logp). Aggregations (verl's names): `token-mean` (DAPO: mean over all
real tokens of the batch), `seq-mean-token-mean` (GRPO: per-sequence mean, then mean over
sequences), `seq-mean-token-sum-norm` (Dr. GRPO: per-sequence sum / a constant length).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


@dataclass(frozen=True)
class LossConfig:
    """Clipped-surrogate settings; defaults are DAPO's, as CAST uses (spec §2.6)."""

    eps_low: float = field(default=0.2, metadata={"help": "Lower ratio clip: rho >= 1 - eps_low. [S]"})
    eps_high: float = field(default=0.28, metadata={"help": "Upper ratio clip (DAPO clip-higher). [S]"})
    agg: AggMode = field(default="token-mean", metadata={"help": "How per-token losses are averaged. [S]"})
    beta: float = field(default=0.0, metadata={"help": "Weight of the k3 KL to a reference policy; 0 = none. [R]"})
    norm_length: int | None = field(
        default=None,
        metadata={"help": "Constant length of 'seq-mean-token-sum-norm' (Dr. GRPO); None = T of the batch."},
    )

    def __post_init__(self) -> None:
        if self.eps_low < 0 or self.eps_high < 0:
            raise ValueError(f"eps_low / eps_high must be >= 0, got {self.eps_low} / {self.eps_high}")
        if self.eps_low >= 1:
            raise ValueError(f"eps_low must be < 1 (the ratio is clipped at 1 - eps_low), got {self.eps_low}")
        if self.agg not in AGGREGATIONS:
            raise ValueError(f"agg must be one of {sorted(AGGREGATIONS)}, got {self.agg!r}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.norm_length is not None and self.norm_length <= 0:
            raise ValueError(f"norm_length must be a positive int or None, got {self.norm_length}")


def _token_mean(values: torch.Tensor, mask: torch.Tensor, norm_length: int | None) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _seq_mean_token_mean(values: torch.Tensor, mask: torch.Tensor, norm_length: int | None) -> torch.Tensor:
    per_seq = (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    return per_seq.mean()


def _seq_mean_token_sum_norm(values: torch.Tensor, mask: torch.Tensor, norm_length: int | None) -> torch.Tensor:
    length = norm_length if norm_length is not None else mask.shape[1]
    return ((values * mask).sum(dim=1) / length).mean()


AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, int | None], torch.Tensor]] = {
    "token-mean": _token_mean,
    "seq-mean-token-mean": _seq_mean_token_mean,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
}


def aggregate(values: torch.Tensor, mask: torch.Tensor, agg: str, norm_length: int | None = None) -> torch.Tensor:
    """Reduce per-token `values` (B, T) over real tokens of `mask` (B, T) with mode `agg`."""
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {agg!r}; expected one of {sorted(AGGREGATIONS)}")
    return AGGREGATIONS[agg](values, mask.to(values.dtype), norm_length)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1, >= 0."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


class PolicyLoss(Protocol):
    def __call__(
        self,
        logps: torch.Tensor,  # (B, T) log pi_theta of the sampled tokens, with grad
        old_logps: torch.Tensor,  # (B, T) log pi_old (behaviour policy), no grad
        advantages: torch.Tensor,  # (B, T) token advantages or (B,) sequence advantages
        mask: torch.Tensor,  # (B, T) bool/float
        config: LossConfig,
        ref_logps: torch.Tensor | None = None,  # (B, T) reference log-probs, needed when beta > 0
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


def _check_loss_inputs(logps, old_logps, advantages, mask, ref_logps, beta) -> torch.Tensor:
    if logps.ndim != 2 or old_logps.shape != logps.shape or mask.shape != logps.shape:
        raise ValueError(
            f"logps, old_logps and mask must share one (B, T) shape, got {tuple(logps.shape)}, "
            f"{tuple(old_logps.shape)}, {tuple(mask.shape)}"
        )
    given = tuple(advantages.shape)
    if advantages.ndim == 1:
        advantages = advantages[:, None]
    if advantages.ndim != 2 or advantages.shape[0] != logps.shape[0] or advantages.shape[1] not in (1, logps.shape[1]):
        raise ValueError(f"advantages must be (B,) or (B, T) for logps {tuple(logps.shape)}, got {given}")
    if beta > 0 and (ref_logps is None or ref_logps.shape != logps.shape):
        raise ValueError("beta > 0 needs ref_logps with the shape of logps")
    return advantages.expand_as(logps)


def clipped_surrogate_loss(logps, old_logps, advantages, mask, config, ref_logps=None):
    """DAPO/GRPO clipped surrogate with optional k3 KL; returns (scalar loss, TRL-named metrics)."""
    advantages = _check_loss_inputs(logps, old_logps, advantages, mask, ref_logps, config.beta)
    fmask = mask.float()
    logps, old_logps = logps.float(), old_logps.detach().float()
    advantages = advantages.detach().float()
    ratio = torch.exp(logps - old_logps)
    clipped = ratio.clamp(1 - config.eps_low, 1 + config.eps_high)
    per_token = -torch.minimum(ratio * advantages, clipped * advantages)
    metrics: dict[str, float] = {}
    if config.beta > 0:
        kl = k3_kl(logps, ref_logps.detach().float())
        per_token = per_token + config.beta * kl
        metrics["kl"] = float(_token_mean(kl.detach(), fmask, None).item())
    loss = aggregate(per_token, fmask, config.agg, config.norm_length)
    with torch.no_grad():
        low = (ratio < 1 - config.eps_low) & (advantages < 0)
        high = (ratio > 1 + config.eps_high) & (advantages > 0)
        metrics["clip_ratio/low_mean"] = float(_token_mean(low.float(), fmask, None).item())
        metrics["clip_ratio/high_mean"] = float(_token_mean(high.float(), fmask, None).item())
        metrics["clip_ratio/region_mean"] = float(_token_mean((low | high).float(), fmask, None).item())
    return loss, metrics
