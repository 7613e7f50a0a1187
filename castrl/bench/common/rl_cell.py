"""One benchmark cell: an RL run with CASTTrainer, held-out greedy accuracy every `eval_every` steps.

Held-out accuracy is `castrl.evaluation.heldout_accuracy`, the one definition `castrl train` and
`castrl eval` use (greedy; an answer the verifier cannot score counts as wrong, as `n_unscorable`).

Shared by both tiers; a tier supplies the model, tokenizer, prompts and settings. Why a callback and
not `castrl train`: the bench needs accuracy at fixed step budgets *during* training (step 0, every
`eval_every`, the last step) and the per-step metrics in memory, without checkpoints on disk.
Per-step seconds split as rollout (TRL generation + reward), student and teacher passes, advantage,
and train = TRL's `step_time` minus those (the optimizer's forward/backward/step). A tier may add a
final evaluation of the trained model (`final_eval`, the smollm2 tier's Avg@k / Pass@k at spec §7).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from castrl.data import make_arithmetic
from castrl.evaluation import heldout_accuracy
from castrl.rewards import Verifier

TIME_KEYS = ("cast/time_rollout_s", "cast/time_student_s", "cast/time_teacher_s", "cast/time_advantage_s")
# Trainer settings a cell records beside its config: what the trainer's defaults were when it ran
# (the cell's key covers only the tier settings and the method's overrides).
RECORDED_TRAINER_FIELDS = ("temperature", "top_p", "top_k", "mask_truncated_completions", "loss_type", "beta",
                           "epsilon", "epsilon_high", "max_completion_length", "per_device_train_batch_size",
                           "gradient_accumulation_steps", "gradient_checkpointing", "fuse_student_pass",
                           "share_prompt_cache", "teacher_model", "rollout_decoder")
# Distinct problems per level and split of the arithmetic suite where a tier asks for more than exist
# (castrl.data.arithmetic raises instead of repeating problems).
POOL_SIZES = {"add1": {"train": 63, "test": 16}, "mul21": {"train": 580, "test": 132}}


def arithmetic_records(split: str, levels: Sequence[str], n_per_level: int, seed: int) -> list[dict[str, Any]]:
    """`n_per_level` problems per level, capped at the level's pool (add1: 63 train / 16 test problems).

    Each level's draw is a prefix of a longer one, so a smaller set is a subset of a larger one.
    """
    out: list[dict[str, Any]] = []
    for level in levels:
        n = min(n_per_level, POOL_SIZES.get(level, {}).get(split, n_per_level))
        out += make_arithmetic(split, [level], n_per_level=n, seed=seed)
    return out


@dataclass
class HeldOut:
    """Held-out problems as ready prompt strings (chat template already applied) and their golds.

    Strings rather than chat messages so the tiny tier's plain "Q: ...\\nA:" prompts and the chat tier
    share one path: `heldout_accuracy` tokenizes them without special tokens, as the trainer sees them.
    """

    prompts: list[str]
    answers: list[str]
    levels: list[str]


class BenchRecorder(TrainerCallback):
    """Keeps every logged step's numeric metrics and evaluates at step 0, every `eval_every`, and the end."""

    def __init__(self, evaluate: Callable[[], dict[str, Any]], eval_every: int, max_steps: int) -> None:
        self.evaluate = evaluate
        self.eval_every = eval_every
        self.max_steps = max_steps
        self.steps: list[dict[str, float]] = []
        self.evals: list[dict[str, Any]] = []
        self.eval_seconds = 0.0

    def run_eval(self, step: int) -> None:
        start = time.perf_counter()
        result = self.evaluate()
        self.eval_seconds += time.perf_counter() - start
        self.evals.append({"step": step, **result})

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.evals:
            self.run_eval(0)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step % self.eval_every == 0 or step == self.max_steps:
            self.run_eval(step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "train_runtime" in logs:  # the end-of-training summary is not a step
            return
        row = {"step": state.global_step}
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[key] = float(value) if math.isfinite(value) else None
        self.steps.append(row)


def split_step_seconds(steps: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean seconds per step: rollout, student, teacher, advantage, train and total (TRL's step_time).

    The first step is skipped when there are more than two (it pays one-off warm-up costs).
    """
    rows = [r for r in steps if r.get("step_time") is not None]
    rows = rows[1:] if len(rows) > 2 else rows
    if not rows:
        return {}
    def mean(key: str) -> float:
        return sum(float(r.get(key) or 0.0) for r in rows) / len(rows)
    out = {
        "rollout_s": mean("cast/time_rollout_s"),
        "student_s": mean("cast/time_student_s"),
        "teacher_s": mean("cast/time_teacher_s"),
        "advantage_s": mean("cast/time_advantage_s"),
        "step_s": mean("step_time"),
    }
    out["train_s"] = max(out["step_s"] - sum(out[k] for k in ("rollout_s", "student_s", "teacher_s",
                                                                 "advantage_s")), 0.0)
    out["n_steps_timed"] = float(len(rows))
    return out


def run_rl_cell(*, model: Any, tokenizer: Any, config: Any, train_dataset: Any, held_out: HeldOut,
                verifier: Verifier, eval_every: int, eval_max_new_tokens: int, peft_config: Any = None,
                final_eval: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train `model` with `CASTTrainer(config)` and return evals, per-step metrics, timings and wall time.

    `final_eval(trained_model)`, when given, runs once after training; its result is stored as `final`
    and its seconds as `final_eval_s` (in `wall_s`, not in `train_wall_s`).
    """
    from castrl.rewards import make_trl_reward
    from castrl.trl import CASTTrainer

    start = time.perf_counter()
    n_params = sum(p.numel() for p in model.parameters())
    trainer = CASTTrainer(model=model, reward_funcs=make_trl_reward(verifier), args=config,
                          train_dataset=train_dataset, processing_class=tokenizer, peft_config=peft_config)

    trainer.remove_callback(PrinterCallback)  # one dict per step on stdout would drown the progress bar

    def evaluate() -> dict[str, Any]:
        result = heldout_accuracy(trainer.model, tokenizer, held_out.prompts, held_out.answers, verifier,
                                  levels=held_out.levels, max_new_tokens=eval_max_new_tokens, batch_size=64,
                                  decoder=config.rollout_decoder, progress=False)
        verifier.pop_stats()  # held-out checks must not show up in the training reward counters
        return result

    recorder = BenchRecorder(evaluate, eval_every, config.max_steps)
    trainer.add_callback(recorder)
    trainer.train()
    out: dict[str, Any] = {}
    final_s = 0.0
    if final_eval is not None:
        final_start = time.perf_counter()
        out["final"] = final_eval(trainer.model)
        final_s = out["final_eval_s"] = time.perf_counter() - final_start
    wall = time.perf_counter() - start
    return {
        "evals": recorder.evals,
        "steps": recorder.steps,
        "timing": split_step_seconds(recorder.steps),
        "eval_seconds": recorder.eval_seconds,
        **out,
        "wall_s": wall,
        "train_wall_s": wall - recorder.eval_seconds - final_s,
        "model_params": n_params,
        "trainer": {name: getattr(config, name) for name in RECORDED_TRAINER_FIELDS},
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    import transformers
    import trl

    device = f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "cpu"
    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "threads": str(torch.get_num_threads()), "device": device}
