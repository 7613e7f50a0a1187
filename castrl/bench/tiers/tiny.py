"""`castrl bench tiny`: every method on a ~1M-parameter Llama trained from scratch, on 2 CPU cores.

The model follows no instructions, so it cannot read the paper's chat-style teacher contexts; the
tier maps each to a prompt it can read (`TEACHERS`). CAST's answer-free teacher is the student's
own prompt with EMA weights (the teacher differs by *weights* only); the reference-answer teacher
(rlsd, `cast@teacher_context=with_reference`) reads `ANSWER_TEMPLATE`, a prompt the SFT taught
the model to use; RLRT's peer-success teacher reads a successful rollout of the group followed by the
question again (`PEER_TEMPLATE`, a context the SFT never showed). Prompts are plain strings
("Q: What is 12 + 7?\nA:"), the same for SFT, RL and evaluation. Sized so the main grid (10 methods x
5 seeds) fits in about an hour on 2 quiet cores; the three knob-study methods (`cast@lam=0`,
`cast@lam=0.5`, `cast@flip_margin=0.223`) add about 20 minutes.

    castrl bench tiny [--seeds 5] [--methods all] [--cells_dir bench/cells] [--scratch_dir bench_cache] [--quick]
"""

from __future__ import annotations

import json
from dataclasses import replace

from castrl.bench.common.methods import Teacher
from castrl.bench.common.tier import Tier, tier_main
from castrl.bench.common.tiny_sft import ANSWER_TEMPLATE, SFTSettings
from castrl.bench.common.tiny_student import (
    SETTINGS,
    TinySettings,
    prepare_sft,
    run_tiny_cell,
    sft_record_path,
)
from castrl.formatting import num

__all__ = ["METHODS", "PEER_TEMPLATE", "QUICK", "SETTINGS", "TEACHERS", "TIER", "TinySettings", "main", "prepare_sft",
           "run_tiny_cell"]

# RLRT's teacher here: the problem, a successful rollout of the same group, then the problem again
# (an in-context example to copy). [R] The SFT never showed the model this context, and a row without
# a successful peer falls back to `castrl.teacher`'s answer-free context, which it cannot read either.
PEER_TEMPLATE = "Q: {problem}\nA:{peer}\nQ: {problem}\nA:"
QUICK = replace(SETTINGS, sft=SFTSettings(max_steps=200, eval_every=100, n_per_level=200), steps=6,
                prompts_per_step=4, eval_every=3, train_n_per_level=16, eval_n_per_level=16)
TEACHERS = {
    "answer_free": Teacher("student", "ema"),  # the student's prompt: only the weights can differ
    "with_reference": Teacher(ANSWER_TEMPLATE),
    "with_peer_success": Teacher(PEER_TEMPLATE),
}
METHODS = (
    "grpo", "dr_grpo@loss_type=dr_grpo", "rlsd", "rlrt", "cast",
    # CAST's parts, one at a time: no zero-variance base term, no sign reversal, the reference answer
    # in the teacher's context, and the teacher's weights (frozen SFT model, a snapshot every 5 steps)
    "cast@mixed_only=true", "cast@flip=false", "cast@teacher_context=with_reference",
    "cast@teacher_weights=frozen", "cast@teacher_weights=refresh:5",
    # knob study (issue: which knob moves CAST vs GRPO): no token shaping, half shaping, and v1's flip
    # threshold |g| > ln 1.25 as a margin (the paper flips every disagreeing token)
    "cast@lam=0", "cast@lam=0.5", "cast@flip_margin=0.223",
)  # fmt: skip


def report_notes(settings: TinySettings, cache_dir: str) -> list[str]:
    """The model and how the cached SFT model was made (steps, stop reason, monitor accuracy)."""
    sft = settings.sft
    notes = ["**Not part of the CAST-vs-GRPO headline**: a model trained from scratch reads no teacher context, so its "
             "self-teacher (the student's prompt under EMA weights) is no evidence about the paper's answer-free teacher. "
             "The positive control (`castrl bench control`) uses this model as its testbed instead.",
             f"Model: Llama with hidden {sft.hidden}, {sft.layers} layers, char tokenizer, trained from scratch by "
             f"SFT on {', '.join(sft.levels)} (weights in `bench_cache/tiny_sft/`, its record in the cell cache); "
             f"a share {sft.hint_fraction} of "
             "SFT prompts carry the answer (the reference-answer teacher's prompt)."]
    record = sft_record_path(settings, cache_dir)
    if record.exists():
        info = json.loads(record.read_text())
        last = info["history"][-1] if info.get("history") else {}
        notes.append(f"SFT: {info['steps']} steps (stopped by {info['stopped']}), greedy accuracy "
                     f"{num(last.get('monitor_accuracy'))} on {sft.monitor_n_per_level} RL training "
                     f"problems per level (target {sft.target_accuracy}), {info['seconds']:.0f} s.")
    return notes


TIER = Tier(
    name="tiny", title="tiny tier: ~1M-parameter Llama trained from scratch (CPU)", about=__doc__.splitlines()[0],
    settings=SETTINGS, quick=QUICK, methods=METHODS, quick_methods=("grpo", "cast"), seeds=5, quick_seeds=2,
    baseline="grpo", headline="cast", run_cell=run_tiny_cell, teachers=TEACHERS, prepare=prepare_sft,
    notes=report_notes, threads=1,
    # 1 thread: for a ~1M-parameter model, 2 OpenMP threads on 2 shared cores were 15-40x slower per step
    # (thread sync dominates tiny matmuls, and a busy machine makes the spin-waits collide).
    threads_help="torch CPU threads (1 is fastest for this model)",
)  # fmt: skip


def main(argv: list[str]) -> int:
    """`castrl bench tiny [flags]`: fill the missing cells of the grid; prints what ran and what is left."""
    return tier_main(TIER, argv)
