"""Which cached cells a tier's section of the report shows, with its title, notes and reproduce command.

One function for every tier (`tier_view`): a tier is described by its `harness.Tier`, and its section
shows the cells of the settings its default command uses (cells with other settings, e.g. `--quick`
or `--steps`, are not mixed in). What the cells ran (teachers, sampling) is read from the cells
themselves, so the notes stay true of old cells too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from castrl.bench.common.tier import CELL_CODE_PATHS, RLSettings, Tier
from castrl.bench.report.cells import TierView, cell_device, select_cells
from castrl.bench.report.final import TUNED_FIELDS
from castrl.formatting import num

Cells = dict[str, dict[int, dict[str, Any]]]


def _code_paths_note(cells: Cells, settings: RLSettings) -> str:
    """Which scoring code paths the cells ran (recorded in each cell; older cells ran `CELL_CODE_PATHS`)."""
    names = tuple(CELL_CODE_PATHS)
    seen = {tuple(r.get("trainer", {}).get(k, CELL_CODE_PATHS[k]) for k in names)
            for m in cells.values() for r in m.values()} or {tuple(settings.code_paths().get(k, True) for k in names)}
    if len(seen) > 1:
        return "Cells ran different scoring code paths (each cell's `trainer` says which): compare step times within one."
    flags = ", ".join(f"`{k}={v}`" for k, v in zip(names, next(iter(seen)), strict=True))
    if all(next(iter(seen))):
        return (f"Cells run the trainer's default code paths ({flags}): the student log-probs of the teacher gap come "
                "from the update's forward pass (the `student` column is 0) and each distinct teacher prompt is scored "
                "once per group; the same advantages as separate passes up to float rounding.")
    return (f"Cells run the trainer with {flags}: a separate student log-prob pass and every rollout's prompt scored "
            "in full (the trainer's defaults fuse the student pass into the update's forward pass, saving the "
            "`student` column below, and run each distinct teacher prompt once per group): `castrl bench steptime "
            "--methods grpo,cast,cast@fuse_student_pass=false@share_prompt_cache=false` measures both.")


def _seed_count(cells: Cells) -> int:
    return max((len(v) for v in cells.values()), default=0)


def _outside_grid_note(tier: str, cells: Cells, grid_methods: tuple[str, ...]) -> list[str]:
    """Cached cells of methods outside the tier's grid (knob studies run by hand), with their command."""
    extra = sorted(m for m in cells if m not in grid_methods)
    if not extra:
        return []
    runs = "; ".join(f"`castrl bench {tier} --seeds {max(cells[m]) + 1} --methods {m}` ({len(cells[m])} seed"
                     f"{'s' if len(cells[m]) > 1 else ''})" for m in extra)  # fmt: skip
    return [f"Outside the grid (knob studies run by hand; the command above does not rerun them): {runs}."]


def _rl_note(s: RLSettings) -> str:
    return (f"RL: {s.steps} steps of {s.prompts_per_step} prompts × {s.num_generations} rollouts, lr "
            f"{s.learning_rate}, ≤ {s.max_completion_length} tokens per completion; held-out: test split, up to "
            f"{s.eval_n_per_level} problems per level, greedy, ≤ {s.eval_max_new_tokens} new tokens, every "
            f"{s.eval_every} steps.")


def _shown(text: str) -> str:
    """A teacher context for a markdown note: templates on one line, in backticks."""
    return "`" + text.replace("\n", "\\n") + "`"


def _teacher_note(cells: Cells) -> list[str]:
    """Which teacher (context, weights) each method's cells ran, from the cells' configs."""
    groups: dict[tuple[str, str], list[str]] = {}
    for method, by_seed in sorted(cells.items()):
        overrides = next(iter(by_seed.values())).get("config", {}).get("overrides", {})
        if "teacher_context" in overrides:
            model = overrides.get("teacher_model")
            weights = f"the external model `{model}`" if model else f"`{overrides.get('teacher_weights', 'the trainer default')}` weights"
            groups.setdefault((overrides["teacher_context"], weights), []).append(f"`{method}`")
    if not groups:
        return []
    parts = [f"{_shown(ctx)} with {weights}: {', '.join(ms)}" for (ctx, weights), ms in groups.items()]
    return ["Teachers (context, weights) as the cells ran them: " + "; ".join(parts) + "."]


def _sampling_note(cells: Cells) -> list[str]:
    """Rollout sampling and truncation masking, from the trainer settings the cells recorded."""
    keys = ("temperature", "top_p", "top_k", "mask_truncated_completions")
    seen = {tuple(r["trainer"].get(k) for k in keys) for m in cells.values() for r in m.values() if r.get("trainer")}
    if len(seen) != 1:
        return [] if not seen else ["Rollout sampling differs between cells (see each cell's `trainer`)."]
    t = dict(zip(keys, next(iter(seen)), strict=True))
    masked = "masked from the loss" if t.get("mask_truncated_completions") else "kept in the loss"
    return [f"Rollouts: temperature {t.get('temperature')}, top-p {t.get('top_p')}, top-k {t.get('top_k')}; "
            f"truncated completions {masked}."]


def _start_note(cells: Cells) -> list[str]:
    """Starting held-out accuracy as measured at step 0 of the cells (all cells share the starting model)."""
    step0 = [e["accuracy"] for m in cells.values() for r in m.values() for e in r.get("evals", [])
             if e["step"] == 0]
    if not step0:
        return []
    params = [r.get("model_params") for m in cells.values() for r in m.values() if r.get("model_params")]
    text = f"Start held-out accuracy at step 0: {sum(step0) / len(step0):.3f}"
    if params:
        text += f"; model parameters: {int(params[0]):,}"
    return [text + "."]


def _grid_notes(tier: Tier, cells: Cells, grid: tuple[str, ...], seeds: int, quick: bool) -> list[str]:
    """Cells outside the grid, and (full grids) which grid cells are still missing."""
    notes = _outside_grid_note(tier.name, cells, grid)

    def wanted(method: str) -> int:  # the tier's per-method seed count (or the seeds cached, when more)
        if quick or not tier.method_seeds:
            return seeds
        return max(len(cells.get(method, {})), tier.method_seeds.get(method, tier.seeds))

    most = max((wanted(m) for m in grid), default=0)
    missing = [f"{m} s{s}" for s in range(most) for m in grid if s < wanted(m) and s not in cells.get(m, {})]
    if missing and cells and not quick:
        total = sum(wanted(m) for m in grid)
        notes.append(f"**Partial grid**: {total - len(missing)} of {total} cells; not yet run: {', '.join(missing)}. "
                     "The same command fills in only the missing cells.")
    return notes


def base_record(tier: Tier, settings: RLSettings, records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The cached final evaluation of the untrained model for `settings` (None: the tier has none, or not yet)."""
    if tier.base_cell is None:
        return None
    key = tier.base_cell(settings).key()
    return next((r for r in records if r.get("key") == key), None)


def diagnosis_record(tier: Tier, settings: RLSettings, records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The cached pre-training diagnosis for `settings` (None: the tier has none, or not yet)."""
    if tier.diagnosis_cell is None:
        return None
    key = tier.diagnosis_cell(settings).key()
    return next((r for r in records if r.get("key") == key), None)


def tuning_runs(tier: Tier, settings: RLSettings, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The baseline's cells whose settings equal `settings` except in `TUNED_FIELDS` (lr, steps)."""
    if tier.base_cell is None:
        return []

    def rest(values: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in values.items() if k not in TUNED_FIELDS}

    wanted = rest(json.loads(json.dumps(asdict(settings))))
    return [r for r in records if r.get("method") == tier.baseline
            and rest(r.get("config", {}).get("settings", {})) == wanted]


def _device_note(cells: dict[str, dict[int, dict]]) -> list[str]:
    """Cells and mean wall time per device: the device is how a cell ran, not in its key, so one grid can mix them."""
    by_device: dict[str, list[float]] = {}
    for rec in (r for m in cells.values() for r in m.values()):
        by_device.setdefault(cell_device(rec), []).append(rec.get("wall_s", math.nan))
    if not by_device:
        return []
    parts = [f"{device}: {len(walls)} (mean wall {num(sum(walls) / len(walls) / 60, 1)} min)"
             for device, walls in sorted(by_device.items())]
    note = f"Cells cached: {sum(len(w) for w in by_device.values())}; by device, {'; '.join(parts)}."
    if len(by_device) > 1:
        note += " The device is how a cell ran, not what it measures (not in its key); step times compare within one."
    return [note]


def tier_view(tier: Tier, cache_dir: str, quick: bool, loader: Callable) -> TierView:
    """The report section of `tier`: its default (or `--quick`) grid's cells, title, command and notes."""
    settings = tier.quick if quick else tier.settings
    records = loader(cache_dir, tier.name)
    cells = select_cells(records, asdict(settings))
    grid = tier.quick_methods if quick else tier.methods
    seeds = max(_seed_count(cells), tier.quick_seeds if quick else tier.seeds)
    flag = " --quick" if quick else ""
    per_method = not quick and tier.method_seeds and seeds <= max(tier.method_seeds.values())
    seeds_flag = "" if per_method else f" --seeds {seeds}"  # per-method seed counts: the tier's defaults
    command = f"castrl bench {tier.name}{seeds_flag}{flag} && castrl bench report{flag}"
    notes = (tier.notes(settings, cache_dir) if tier.notes else []) + [_rl_note(settings)]
    notes += _teacher_note(cells) + _sampling_note(cells) + [_code_paths_note(cells, settings)] + _start_note(cells)
    notes += _device_note(cells)
    view = TierView(tier.name, tier.title, command, cells, notes, tier.baseline, tier.headline,
                    base=base_record(tier, settings, records), tuning=tuning_runs(tier, settings, records),
                    diagnosis=diagnosis_record(tier, settings, records))
    if view.superseded:
        view.notes.append(f"These cells were measured with spec v1's rule and v1's method names; the command above "
                          f"runs the current grid ({', '.join(grid)}), whose cells will replace them.")
    else:
        view.notes.extend(_grid_notes(tier, cells, grid, seeds, quick))
    return view
