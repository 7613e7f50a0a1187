"""`castrl bench placement`: the bundled model's answer-free teacher diagnosed before any training under
each reading of the paper's `x ∥ "\\n\\n[Student response]\\n"` (`teacher_tag_placement`) and each prompt
style, with the gap's noise floor.

Why: the sign of CAST's update on a model is the sign of its teacher's gap (spec §2.6), and on the
bundled SmolLM2-135M that sign depends on where the tag goes once the prompt has a few-shot turn
(`last_user`, `every_user`, `assistant_prefix`), and possibly on the prompt style (the smollm2 tier's
one-shot chat, or the paper's zero-shot `cot`). One cell per style: `castrl diagnose` on the smollm2
tier's first training problems, its group size, budget and temperature, scoring the three placements on
the very same rollouts, plus the noise floor of each (how many of CAST's flips lie below the rounding of
passes that should not matter). Each cell keeps the per-rollout mean gaps, so the report computes the
gap AUC, its tie share and a bootstrap interval over problems from the cell itself.

    castrl bench placement [--styles oneshot,cot] [--threads 2] [--cells_dir bench/cells]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from castrl.arguments import OutputArguments, RuntimeArguments, renamed_init
from castrl.bench.common.arguments import BenchArguments
from castrl.bench.common.cells import Cell, load_cell, save_cell
from castrl.bench.common.smol import SETTINGS as TIER_SETTINGS
from castrl.bench.common.smol import training_problems
from castrl.bench.common.tier import CELL_DECODER
from castrl.command_line import parse_dataclasses, user_input
from castrl.config_fields import adapted, with_fields_of
from castrl.data import STYLES
from castrl.teacher import TAG_PLACEMENTS

TIER = "smollm2"  # the cells sit with the tier whose model, problems and budget they diagnose
METHOD = "placement"
CONTEXT = "answer_free"  # the paper's CAST teacher
DEFAULT_STYLES: tuple[str, ...] = ("oneshot", "cot")  # the tier's few-shot chat; the paper's zero-shot prompt


@dataclass(frozen=True)
class PlacementSettings:
    """What each cell samples and scores: the smollm2 tier's diagnosis (its first 32 training problems x
    its 8 rollouts at its 128-token budget and the trainer's temperature), every tag placement."""

    n_prompts: int = 32
    group_size: int = 8
    max_new_tokens: int = 128
    temperature: float = 0.7
    seed: int = 0
    score_batch_size: int = 16
    teachers: tuple[str, ...] = tuple(f"{CONTEXT}@{p}" for p in TAG_PLACEMENTS)


SETTINGS = PlacementSettings()


@renamed_init
@dataclass
@with_fields_of(BenchArguments, only=("cells_dir",))
@with_fields_of(RuntimeArguments, only=("threads",), convert=adapted(defaults={"threads": 2}))
@with_fields_of(OutputArguments, only=("progress",))
class PlacementArguments:
    """`castrl bench placement` flags; `cells_dir` is the bench's vocabulary (`castrl.bench.common.arguments`),
    `threads` and `progress` the shared one (`castrl.arguments`)."""

    styles: str = field(default=",".join(DEFAULT_STYLES), metadata={"help": f"Prompt styles, of {', '.join(STYLES)}."})

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError(f"--threads must be >= 0, got {self.threads}")

    def style_list(self) -> list[str]:
        styles = [s.strip() for s in self.styles.split(",") if s.strip()]
        bad = [s for s in styles if s not in STYLES]
        if not styles or bad:
            raise ValueError(f"--styles must name some of {', '.join(STYLES)}, got {self.styles!r}")
        return styles


def placement_cell(style: str, settings: PlacementSettings = SETTINGS) -> Cell:
    """The cell of one prompt style: the smollm2 tier's model and levels, this suite's settings."""
    config = {"model": TIER_SETTINGS.model, "levels": list(TIER_SETTINGS.levels), "prompt_style": style,
              "placement": {k: getattr(settings, k) for k in settings.__dataclass_fields__}}
    return Cell(TIER, METHOD, settings.seed, config)


def _problems(n_prompts: int) -> list[dict[str, Any]]:
    """The smollm2 tier's first training problems, spread over its levels (as its own diagnosis draws them)."""
    per_level = -(-n_prompts // len(TIER_SETTINGS.levels))
    return training_problems(TIER_SETTINGS, per_level)[:n_prompts]


def _rollout_gaps(run: Any, name: str) -> list[float]:
    """Per scored rollout, its mean gap over valid tokens (NaN without one): what the gap AUC ranks."""
    real = run.mask > 0
    gap = (run.teacher_logps[name] - run.student_logps).double() * real
    n = real.sum(dim=1)
    return torch.where(n > 0, gap.sum(dim=1) / n.clamp(min=1), torch.full_like(n, float("nan"), dtype=torch.double)
                       ).tolist()


def run_placement(cell: Cell, threads: int, progress: bool) -> dict[str, Any]:
    """One style: every placement's diagnosis on the same rollouts, and what the report needs to recompute it."""
    from castrl.diagnostics.pipeline import run_diagnostics
    from castrl.diagnostics.settings import DiagnoseSettings

    spec = cell.config["placement"]
    settings = DiagnoseSettings(
        model=cell.config["model"], teachers=list(spec["teachers"]), prompt_style=cell.config["prompt_style"],
        group_size=spec["group_size"], n_prompts=spec["n_prompts"], max_new_tokens=spec["max_new_tokens"],
        temperature=spec["temperature"], seed=spec["seed"], score_batch_size=spec["score_batch_size"],
        threads=threads, decoder=CELL_DECODER, progress=progress, noise_floor=True,
    )  # fmt: skip
    start = time.perf_counter()
    run = run_diagnostics(settings, problems=_problems(spec["n_prompts"]))
    teachers = {}
    for name, t in run.results["teachers"].items():
        teachers[name] = {
            "sequences": t["sequences"], "against_verifier": t["against_verifier"], "advantages": t["advantages"],
            "flips": {k: v for k, v in t["flips"].items() if not isinstance(v, dict)}, "sweep": t["flips"]["sweep"],
            "noise_floor": t["noise_floor"], "verdict": t["verdict"], "cast_metrics": t["cast_metrics"],
            "rollout_mean_gap": _rollout_gaps(run, name),
        }  # fmt: skip
    return {
        "teachers": teachers, "groups": run.results["groups"], "notes": run.notes, "timings": run.timings,
        "rollouts": {"correct": (run.rewards >= settings.correct_threshold).tolist(),
                     "group": run.group_ids.tolist()},
        "threads": threads, "wall_s": time.perf_counter() - start,
    }  # fmt: skip


def main(argv: list[str]) -> int:
    with user_input():
        (args,) = parse_dataclasses([PlacementArguments], argv, prog="castrl bench placement",
                                    description=__doc__.split("\n\n")[0])  # fmt: skip
        styles = args.style_list()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()  # what each cell records (--threads 0: torch's default)
    for style in styles:
        cell = placement_cell(style)
        if load_cell(cell, args.cells_dir) is not None:
            print(f"[bench] placement {style}: cached at {cell.path(args.cells_dir)}")
            continue
        print(f"[bench] placement {style}: diagnosing {', '.join(SETTINGS.teachers)} -> {cell.path(args.cells_dir)}")
        path = save_cell(cell, run_placement(cell, threads, args.progress), args.cells_dir)
        print(f"[bench] placement {style}: saved {path}")
    return 0
