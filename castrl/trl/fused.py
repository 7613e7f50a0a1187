"""The fused student pass: on-policy, the estimator's token step runs inside TRL's loss.

When TRL computed no old log-probs (`num_iterations=1`, no vLLM importance sampling) the loss's
forward pass runs with the sampling weights, so its detached log-probs are the student's log-probs
of the teacher gap, and a separate no-grad student pass would only repeat it. The hand-off, in the
order TRL calls `CASTTrainer`'s hooks:
1. after the rollout, `FusedStudentPass.defer` runs the estimator's base step on the global batch
   and parks what the token step needs (`DeferredBatch`); the batch's advantages stay NaN;
2. `_compute_loss` arms the pass with its micro-batch (`loss_forward`), which raises if 3. never came;
3. `_get_per_token_logps_and_entropies` takes the armed micro-batch (`take_armed`), and `advantages`
   runs the token step on that forward's log-probs; once every row of the generation batch was
   seen, it also returns the token step's statistics over the whole batch, as the one-call
   estimator logs them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from castrl.core import EstimatorConfig, EstimatorSpec
from castrl.rows import run_on_rows

Gather = Callable[[torch.Tensor], torch.Tensor]  # (B_local, T_local) -> (B_global, T_max), all processes


def can_fuse_student_pass(output: dict, enabled: bool) -> bool:
    """On-policy (TRL skipped the old log-probs of `output`) and `fuse_student_pass` is `enabled`.

    A TRL whose loss stops computing its log-probs through `_get_per_token_logps_and_entropies`
    makes `loss_forward` raise, not train blind."""
    return enabled and output.get("old_per_token_logps") is None


@dataclass
class DeferredBatch:
    """One generation batch whose token advantages are computed inside the loss.

    Global tensors (all processes' rows, as the estimator's base step saw them): base (B,),
    rewards (B,) (0 where unscorable), scorable (B,) bool, teacher (B, T), mask (B, T). Local: the
    student log-probs (B_local, T_local), NaN until their micro-batch passed, and which rows
    arrived; `offset` is this process's first global row, `step` the optimizer step of the rollout.
    """

    base: torch.Tensor
    rewards: torch.Tensor
    scorable: torch.Tensor
    teacher: torch.Tensor
    mask: torch.Tensor
    student: torch.Tensor
    seen: torch.Tensor
    offset: int
    step: int

    def statistics(self, estimator: EstimatorSpec, config: EstimatorConfig, gather: Gather) -> dict[str, float]:
        """The token step's metrics over the scorable rows of the whole global batch."""
        student = gather(self.student)
        t = student.shape[1]
        inputs = (self.base, self.rewards, student, self.teacher[:, :t], self.mask[:, :t])
        _, stats = run_on_rows(estimator.token_step, self.scorable, inputs, config, self.step)
        return stats


class FusedStudentPass:
    """The hand-off state of one trainer: the deferred batch per mode and the armed micro-batch."""

    def __init__(self, estimator: EstimatorSpec, config: EstimatorConfig) -> None:
        self.estimator = estimator
        self.config = config
        self._deferred: dict[str, DeferredBatch] = {}  # mode -> batch whose token step runs in the loss
        self._armed: dict | None = None  # the micro-batch whose loss forward is running

    def defer(
        self,
        mode: str,
        output: dict,
        mask: torch.Tensor,
        teacher: torch.Tensor,
        global_rewards: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        gather: Gather,
        process_index: int,
        step: int,
    ) -> dict[str, float]:
        """Run the base step on the global batch's scorable rows now; park the token step's inputs.

        mask, teacher: (B_local, T) of this process; global_rewards: (rewards, group_ids, scorable),
        each (B_global,). Marks `output`'s rows (`castrl_row`) and fills its advantages with NaN:
        filled per micro-batch by `advantages`, so a loss that bypassed the hook never trains on
        them. Returns the base step's (group) metrics.
        """
        rewards, group_ids, scorable = global_rewards
        base, stats = run_on_rows(self.estimator.base_step, scorable, (rewards, group_ids), self.config, step)
        n_local, t_local = mask.shape
        self._deferred[mode] = DeferredBatch(
            base=base,
            rewards=torch.where(scorable, rewards, torch.zeros_like(rewards)),
            scorable=scorable,
            teacher=gather(teacher),
            mask=gather(mask.float()),
            student=torch.full((n_local, t_local), math.nan, device=mask.device),
            seen=torch.zeros(n_local, dtype=torch.bool, device=mask.device),
            offset=process_index * n_local,
            step=step,
        )
        output["castrl_row"] = torch.arange(n_local, device=mask.device)  # follows TRL's shuffle and split
        output["advantages"] = torch.full((n_local, t_local), math.nan, device=mask.device)
        return stats

    @contextmanager
    def loss_forward(self, inputs: dict) -> Iterator[None]:
        """Arm the pass with micro-batch `inputs` for the loss inside the block; raise if the loss's
        forward never took them (`take_armed`), since their advantages are still NaN."""
        self._armed = inputs
        try:
            yield
        finally:
            missed, self._armed = self._armed is not None, None
        if missed:
            raise RuntimeError(
                "fuse_student_pass: TRL's loss did not compute the policy log-probs through "
                "_get_per_token_logps_and_entropies, so no advantages were filled in; set fuse_student_pass=False"
            )

    def take_armed(self) -> dict | None:
        """The armed micro-batch, once: the first forward pass of the loss is the one that scores it."""
        inputs, self._armed = self._armed, None
        return inputs

    def advantages(
        self, mode: str, inputs: dict, mask: torch.Tensor, logps: torch.Tensor, gather: Gather
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(b, T) fp32 advantages of micro-batch `inputs` from the token step on its scorable rows
        (0 elsewhere), `logps` (b, T) of the loss's forward taken detached as the student's, and
        `mask` (b, T) its scored tokens; plus, once every row of the generation batch was seen, the
        token step's statistics over the whole batch (else {})."""
        state = self._deferred[mode]
        local = inputs["castrl_row"]
        rows = local + state.offset
        student = logps.detach().float()
        t = mask.shape[1]
        inputs_rows = (state.base[rows], state.rewards[rows], student, state.teacher[rows, :t], mask.float())
        adv, _ = run_on_rows(self.estimator.token_step, state.scorable[rows], inputs_rows, self.config, state.step)
        state.student[local] = 0.0  # columns past this micro-batch's scored width (`castrl.trl.trim`) score nothing
        state.student[local, :t] = student
        state.seen[local] = True
        if not bool(state.seen.all()):
            return adv, {}
        return adv, state.statistics(self.estimator, self.config, gather)
