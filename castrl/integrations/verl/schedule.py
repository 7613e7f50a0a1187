"""When the verl teacher snapshot is re-taken: `refresh:K` and `ema` counted in optimizer steps.

The paper counts optimizer steps (Algorithm 1: the snapshot is re-taken every 10 of them). A verl
training step runs `ppo_epochs x (rows / mini-batch rows)` optimizer steps inside one `update_actor`
call, and the driver sees the weights only between such calls. So the trainer adds each update's
optimizer steps to a counter and re-takes the snapshot after the update in which the counter reaches
or passes a multiple of K: exactly every K optimizer steps when K is a multiple of the steps per
update, otherwise at the first update boundary after each multiple (at most steps-per-update - 1
late). `ema` is applied once per update with decay^(steps in it), so its weight on the past matches
the per-step EMA, though it sees only the weights at update boundaries. `describe` says all this
for the run at hand, at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from castrl.teacher import WeightsSpec


def optimizer_steps_per_update(rows: int, mini_batch_prompts: int, n: int, epochs: int) -> int:
    """Optimizer steps verl takes in one `update_actor` call on `rows` rollouts: one per mini-batch of
    `mini_batch_prompts x n` rows, per epoch (verl asserts the rows divide into mini-batches)."""
    size = int(mini_batch_prompts) * int(n)
    if size <= 0 or rows % size:
        raise ValueError(f"{rows} rows do not split into mini-batches of {size} (ppo_mini_batch_size x rollout.n)")
    return rows // size * int(epochs)


@dataclass
class TeacherSchedule:
    """Counts optimizer steps and says, after each actor update, what the snapshot must do."""

    weights: str
    ema_decay: float = 0.99
    optimizer_steps: int = 0  # optimizer steps taken so far
    snapshot_step: int = 0  # the optimizer step whose weights the snapshot holds (refresh)

    @property
    def spec(self) -> WeightsSpec:
        return WeightsSpec.parse(self.weights)

    def after_update(self, steps: int) -> tuple[str, float] | None:
        """Advance by one update of `steps` optimizer steps: ("take", 0) to re-take the snapshot,
        ("ema", weight) to move it toward the policy, or None."""
        before, self.optimizer_steps = self.optimizer_steps, self.optimizer_steps + int(steps)
        spec = self.spec
        if steps <= 0:
            return None
        if spec.kind == "ema":
            return ("ema", 1.0 - self.ema_decay ** int(steps))
        if spec.kind == "refresh" and before // spec.every < self.optimizer_steps // spec.every:
            self.snapshot_step = self.optimizer_steps
            return ("take", 0.0)
        return None

    def describe(self, steps_per_training_step: int, how: str) -> str:
        """What this run's `teacher_weights` means in optimizer steps (`how`: where the count comes from)."""
        spec, m = self.spec, steps_per_training_step
        if spec.kind == "ema":
            return (
                f"castrl: teacher_weights=ema (decay {self.ema_decay} per optimizer step). This run takes {m} "
                f"optimizer step(s) per verl training step ({how}); the EMA is updated after each actor update "
                f"with decay^{m}, so it sees the weights at update boundaries only"
                + ("." if m == 1 else " (exactly the per-step EMA when there is one optimizer step per update).")
            )
        k = spec.every
        points, count = [], 0
        while len(points) < 4 and m > 0:
            before, count = count, count + m
            if before // k < count // k:
                points.append(count)
        exact = k % m == 0 if m > 0 else False
        return (
            f"castrl: teacher_weights=refresh:{k} counts optimizer steps, as the paper does. This run takes {m} "
            f"optimizer step(s) per verl training step ({how}), so the snapshot is re-taken after the update in "
            f"which the count reaches a multiple of {k}: after optimizer steps "
            f"{', '.join(map(str, points))}, ... ("
            + (f"every {k // m} training step(s), exactly every {k} optimizer steps)." if exact else
               f"not every {k}: {k} is not a multiple of {m}; for the paper's schedule set K to a multiple of "
               f"{m}, or ppo_mini_batch_size=train_batch_size and ppo_epochs=1 for one optimizer step per "
               "training step).")
        )

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "ema_decay": self.ema_decay, "optimizer_steps": self.optimizer_steps,
                "snapshot_step": self.snapshot_step}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters; ValueError when the checkpoint's teacher is another one (K, kind, decay)."""
        if state.get("weights") != self.weights or (
            self.spec.kind == "ema" and float(state.get("ema_decay", -1)) != self.ema_decay
        ):
            raise ValueError(
                f"the checkpoint's teacher is teacher_weights={state.get('weights')!r} (ema_decay "
                f"{state.get('ema_decay')}), but this run uses {self.weights!r} (ema_decay {self.ema_decay}): "
                "resuming would score with a snapshot taken on another schedule; resume with the same "
                "castrl.teacher_weights, or start a new run"
            )
        self.optimizer_steps = int(state["optimizer_steps"])
        self.snapshot_step = int(state["snapshot_step"])
