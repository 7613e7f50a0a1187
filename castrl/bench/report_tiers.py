"""Which cached cells each tier's section of the report shows, its title, notes and reproduce command.

Kept apart from `report` so the tables stay tier-agnostic: a tier is described here by the settings
its default command uses (cells with other settings, e.g. `--quick` or `--steps`, are not mixed in).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from castrl.bench.harness import method_names
from castrl.bench.report import TierView, select_cells

SEPARATE_PASS_NOTE = (
    "Cells run the separate student log-prob pass and score every rollout's prompt in full "
    "(`fuse_student_pass=False`, `share_prompt_cache=False`, as when the grid was first cached); the "
    "trainer's defaults fuse the student pass into the update's forward pass (saving the `student` column "
    "below) and run each distinct teacher prompt once per group: `castrl bench steptime --methods "
    "grpo,cast,cast@fuse_student_pass=false@share_prompt_cache=false` measures both."
)


def _seed_count(cells: dict[str, dict[int, Any]]) -> int:
    return max((len(v) for v in cells.values()), default=0)


def _outside_grid_note(tier: str, cells: dict[str, dict[int, Any]], grid_methods: tuple[str, ...]) -> list[str]:
    """Cached cells of methods outside the tier's grid (knob studies run by hand), with their command."""
    extra = sorted(m for m in cells if m not in grid_methods)
    if not extra:
        return []
    runs = "; ".join(f"`castrl bench {tier} --seeds {max(cells[m]) + 1} --methods {m}` ({len(cells[m])} seed"
                     f"{'s' if len(cells[m]) > 1 else ''})" for m in extra)  # fmt: skip
    return [f"Outside the grid (knob studies run by hand; the command above does not rerun them): {runs}."]


def _tiny_view(cache_dir: str, quick: bool, loader: Callable) -> TierView:
    from castrl.bench import tiny

    settings = tiny.QUICK if quick else tiny.TinySettings()
    cells = select_cells(loader(cache_dir, tiny.TIER), asdict(settings))
    seeds = _seed_count(cells) or 5
    flag = " --quick" if quick else ""
    command = f"castrl bench tiny --seeds {seeds}{flag} && castrl bench report{flag}"
    notes = [
        f"Model: Llama with hidden {settings.sft.hidden}, {settings.sft.layers} layers, char tokenizer, trained "
        f"from scratch by SFT on {', '.join(settings.sft.levels)} (cached in `bench_cache/tiny_sft/`).",
        f"RL: {settings.steps} steps of {settings.prompts_per_step} prompts × {settings.num_generations} rollouts, "
        f"lr {settings.learning_rate}, temperature 1.0, ≤ {settings.max_completion_length} tokens; held-out: "
        f"test split, up to {settings.eval_n_per_level} problems per level, greedy, every {settings.eval_every} steps.",
        "Teachers: cast = student prompt + EMA weights "
        f"(decay {settings.teacher_ema_decay}); cast_frozen / cast_lagged5 swap the weights; rlsd, rlrt and "
        "cast_with_answer read the answer-hint prompt (rlsd/rlrt with weights synced every 10 steps).",
        SEPARATE_PASS_NOTE,
    ]
    notes += _sft_notes(cells) + _sft_checkpoint_note(cache_dir, settings.sft)
    notes += _outside_grid_note(tiny.TIER, cells, method_names(tiny.TEACHERS))
    return TierView(tiny.TIER, "tiny tier: ~1M-parameter Llama trained from scratch (CPU)", command, cells, notes)


def _sft_notes(cells: dict[str, dict[int, Any]]) -> list[str]:
    """SFT starting accuracy as measured at step 0 of the cells (all cells share the SFT model)."""
    step0 = [e["accuracy"] for m in cells.values() for r in m.values() for e in r.get("evals", [])
             if e["step"] == 0]
    if not step0:
        return []
    params = [r.get("model_params") for m in cells.values() for r in m.values() if r.get("model_params")]
    text = f"Start (SFT) held-out accuracy at step 0: {sum(step0) / len(step0):.3f}"
    if params:
        text += f"; model parameters: {int(params[0]):,}"
    return [text + "."]


def _sft_checkpoint_note(cache_dir: str, sft: Any) -> list[str]:
    """How the cached SFT model was made (steps, stop reason, monitor accuracy), from its sft.json."""
    from castrl.bench.tiny_sft import SFT_INFO_FILE, sft_info

    folder = Path(cache_dir) / "tiny_sft" / sft.key()
    if not (folder / SFT_INFO_FILE).exists():
        return []
    info = sft_info(folder)
    last = info["history"][-1] if info.get("history") else {}
    return [f"SFT: {info['steps']} steps (stopped by {info['stopped']}), greedy accuracy "
            f"{last.get('monitor_accuracy', math.nan):.3f} on {sft.monitor_n_per_level} RL training problems "
            f"per level (target {sft.target_accuracy}), {info['seconds']:.0f} s."]


def _smollm2_view(cache_dir: str, quick: bool, loader: Callable) -> TierView:
    from castrl.bench import smollm2

    settings = smollm2.QUICK if quick else smollm2.SmolSettings()
    cells = select_cells(loader(cache_dir, smollm2.TIER), asdict(settings))
    seeds = max(_seed_count(cells), 1 if quick else 2)
    flag = " --quick" if quick else ""
    command = f"castrl bench smollm2 --seeds {seeds}{flag} && castrl bench report{flag}"
    grid = [(m, s) for m in method_names(smollm2.TEACHERS) for s in range(seeds)]
    missing = [f"{m} s{s}" for m, s in grid if s not in cells.get(m, {})]
    per_cell = [r.get("wall_s", math.nan) for m in cells.values() for r in m.values()]
    notes = [
        f"Model: bundled SmolLM2-135M-Instruct with LoRA r={settings.lora_r}; data {', '.join(settings.levels)}, "
        f"oneshot chat prompts.",
        f"RL: {settings.steps} steps of {settings.prompts_per_step} prompts × {settings.num_generations} rollouts, "
        f"lr {settings.learning_rate}, ≤ {settings.max_completion_length} tokens; held-out every "
        f"{settings.eval_every} steps on {settings.eval_n_per_level} test problems per level.",
        "Teachers: cast = self_teach context with the policy weights; rlsd / rlrt / cast_with_answer read the "
        "with_answer context.",
        SEPARATE_PASS_NOTE,
    ]
    if per_cell:
        notes.append(f"Cells cached: {len(per_cell)}; mean wall time per cell {sum(per_cell) / len(per_cell):.0f} s.")
    notes += _outside_grid_note(smollm2.TIER, cells, method_names(smollm2.TEACHERS))
    if missing and not quick:
        notes.append(f"**Partial grid**: {len(grid) - len(missing)} of {len(grid)} cells; not yet run: "
                     f"{', '.join(missing)}. The same command fills in only the missing cells.")
    return TierView(smollm2.TIER, "smollm2 tier: SmolLM2-135M + LoRA (CPU)", command, cells, notes)


def tier_views(cache_dir: str, quick: bool, loader: Callable) -> Iterator[TierView]:
    """The report's tiers, in order."""
    yield _tiny_view(cache_dir, quick, loader)
    yield _smollm2_view(cache_dir, quick, loader)
