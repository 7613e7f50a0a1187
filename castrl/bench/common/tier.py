"""A tier of the benchmark grid: the one description (`Tier`) that `castrl bench <tier>` runs (`tier_main`)
and `castrl bench report` describes, the RL settings every tier has (`RLSettings`) and a cell's trainer
config (`trainer_config`).

A tier module (`castrl.bench.tiers.<name>`) supplies its settings, methods (`methods.py`), teachers, how
to run one cell and its report notes; what two tiers (or a tier and a suite) share lives in
`castrl.bench.common`, so no tier imports another. Cells run seed-major, so a partial grid stays paired.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from castrl.arguments import OutputArguments, RuntimeArguments, renamed_init
from castrl.command_line import parse_dataclasses, user_input
from castrl.config_fields import adapted, with_fields_of

from .arguments import BenchArguments
from .cells import DEFAULT_SCRATCH_DIR, Cell, make_cells
from .grid import check_time_budget, grid_cli
from .methods import Teacher, method_overrides, parse_methods

# Default trainer code paths of cells (`RLSettings.code_paths`): the v1 grids' separate student pass and
# unshared scoring; the same advantages as the trainer's defaults up to float rounding (not in the key).
# `castrl bench steptime --methods grpo,cast,cast@fuse_student_pass=false@share_prompt_cache=false` compares.
CELL_CODE_PATHS: dict[str, Any] = {"fuse_student_pass": False, "share_prompt_cache": False}
# How cells decode (rollouts, held-out checkpoints, final evaluations, diagnoses): with transformers'
# `generate`, as every cached cell did. castrl's `decode` samples from the same distribution with other
# draws, so a rerun cell would share no random stream with its cached pair; benchmark v3 switches.
CELL_DECODER = "transformers"


# Tier name -> the module whose `TIER` describes it, in the report's order (imported on demand: a tier
# module imports its model's stack).
# The bundled model's tier first (the CAST-vs-GRPO headline), then the positive control on the tiny student,
# then the tiny tier itself (its self-teacher cannot read a context: no evidence about CAST's teacher).
TIERS = {name: f"castrl.bench.tiers.{name}" for name in ("smollm2", "control", "tiny")}


@dataclass(frozen=True)
class RLSettings:
    """RL and evaluation settings every tier has; a tier's settings class adds its model's fields.
    With the method's overrides they are a cell's config (their dict is part of the cache key)."""

    steps: int
    prompts_per_step: int
    num_generations: int
    max_completion_length: int
    learning_rate: float
    train_n_per_level: int
    eval_n_per_level: int  # held-out problems per level (capped by the level's test split)
    eval_every: int  # held-out greedy evaluation at step 0, every this many steps and the last
    eval_max_new_tokens: int
    train_seed: int = 0

    def batch_layout(self) -> tuple[int, int]:
        """(micro-batch, accumulation steps) of one optimizer step = one generation; default: one micro-batch."""
        return self.prompts_per_step * self.num_generations, 1

    def trainer_kwargs(self) -> dict[str, Any]:
        """Tier-specific CASTTrainerConfig fields (e.g. the EMA decay of a tier whose teacher is an EMA)."""
        return {}

    def code_paths(self) -> dict[str, Any]:
        """Trainer code-path fields of the cells (speed only, not in the key; recorded in each cell)."""
        return dict(CELL_CODE_PATHS)


@dataclass(frozen=True)
class Tier:
    """Everything `castrl bench <name>` runs and `castrl bench report` describes for one tier.

    `run_cell(cell, settings, scratch, prepared)` trains and evaluates one cell and returns the result
    to cache; `prepare(settings, cells_dir, scratch_dir, progress)` runs once per invocation first (the
    tiny SFT, the smollm2 base-model evaluation) and returns `prepared`; `notes(settings, cells_dir)`
    are the report's lines on model and data; `base_cell(settings)` (tiers with a final evaluation) is
    the untrained model's evaluation cell, which the report pairs every cell with.
    """

    name: str
    title: str  # the report's section title
    about: str  # first line of `castrl bench <name> --help`
    settings: RLSettings  # the full grid's
    quick: RLSettings  # `--quick`'s smoke run
    methods: tuple[str, ...]  # the full grid, `estimator[@field=value...]`
    quick_methods: tuple[str, ...]
    seeds: int  # per method, unless `method_seeds` names it
    quick_seeds: int
    baseline: str  # the method every other one is paired with in the report
    headline: str  # the method the report's headline measures against the baseline
    run_cell: Callable[[Cell, Any, Path, Any], Mapping[str, Any]]
    teachers: Mapping[str, Teacher] = field(default_factory=dict)  # paper context -> this tier's teacher
    prepare: Callable[[Any, str, str, bool], Any] | None = None
    notes: Callable[[Any, str], list[str]] | None = None
    base_cell: Callable[[Any], Cell] | None = None
    method_seeds: Mapping[str, int] = field(default_factory=dict)  # methods that get more (or fewer) seeds
    diagnosis_cell: Callable[[Any], Cell] | None = None  # the untrained model's `castrl diagnose` cell
    # (cached record, prepared) -> whether the record was made from what `prepare` returned this time (e.g.
    # the same SFT student); a stale cell is run again (`run_grid`'s is_current). None: every cached cell holds.
    is_current: Callable[[Mapping[str, Any], Any], bool] | None = None
    threads: int = 2
    threads_help: str = "torch CPU threads"

    def __post_init__(self) -> None:
        for role in ("baseline", "headline"):
            if getattr(self, role) not in self.methods:
                raise ValueError(f"tier {self.name!r}: {role} {getattr(self, role)!r} is not in its methods")
        for method in {*self.methods, *self.quick_methods}:
            method_overrides(method, self.teachers)  # a bad method fails at import, not hours into a grid


def cell_config(tier: Tier, settings: RLSettings, method: str) -> dict[str, Any]:
    """The JSON config of one cell: all tier settings plus the method's CASTTrainerConfig overrides."""
    return {"settings": asdict(settings), "overrides": method_overrides(method, tier.teachers)}


def trainer_config(settings: RLSettings, overrides: Mapping[str, Any], seed: int, output_dir: str):
    """CASTTrainerConfig of one cell: one generation of rollouts per optimizer step, constant lr, no checkpoints."""
    from castrl.trl import CASTTrainerConfig

    per_device, accumulation = settings.batch_layout()
    fixed = dict(  # fp32 training on either device; the GPU, when visible, only runs it faster
        output_dir=output_dir, use_cpu=bench_device() == "cpu", bf16=False, report_to="none", save_strategy="no",
        max_steps=settings.steps, per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation,
        num_generations=settings.num_generations, max_completion_length=settings.max_completion_length,
        learning_rate=settings.learning_rate, lr_scheduler_type="constant", warmup_steps=0, logging_steps=1,
        gradient_checkpointing=False, seed=seed, data_seed=seed, disable_tqdm=True, rollout_decoder=CELL_DECODER,
    )  # fmt: skip
    return CASTTrainerConfig(**{**fixed, **settings.code_paths(), **settings.trainer_kwargs(), **overrides})


@renamed_init
@dataclass
@with_fields_of(RuntimeArguments, only=("threads", "device"), convert=adapted(defaults={"threads": 2}, notes={
    "threads": "The default is the tier's.",
    "device": "cpu hides the GPU. Not in the cells' key (recorded in each)."}))
@with_fields_of(OutputArguments, only=("progress",))
@with_fields_of(BenchArguments, only=("methods", "steps", "cells_dir", "quick"), convert=adapted(notes={
    "methods": "None or 'all': the tier's full grid.",
    "steps": "Per cell; None: the tier's. Part of the cells' key (tuning runs: --methods grpo).",
    "quick": "Runs this tier's (its --help says which)."}))  # injected first: right after the own flags in --help
class TierArguments:
    """The flags of `castrl bench <tier>` (TRL-style underscores; the tier sets --threads' default);
    `methods`, `steps`, `cells_dir` and `quick` are the bench's vocabulary (`castrl.bench.common.arguments`),
    `threads`, `device` and `progress` the shared one (`castrl.arguments`)."""

    seeds: int | None = field(default=None, metadata={
        "help": "Seeds 0..N-1 for every method (paired); None: the tier's, per method (fewer with --quick)."})
    learning_rate: float | None = field(default=None, metadata={
        "help": "Learning rate of every cell; None: the tier's. Part of the cells' key (tuning runs)."})
    scratch_dir: str = field(default=DEFAULT_SCRATCH_DIR, metadata={
        "help": "Folder for what is not a result: trainer output folders, the tiny tier's SFT weights (ignored)."})
    shard: str | None = field(default=None, metadata={
        "help": "'I/N': run only cells I, I+N, I+2N, ... of the grid (0 <= I < N), so N processes or machines "
                "fill one grid without running a cell twice."})
    prepare_only: bool = field(default=False, metadata={
        "help": "Compute the grid's shared cells (the base model's evaluation and diagnosis) and stop; "
                "run once before several --shard processes, which would otherwise each compute them."})
    time_budget: float | None = field(default=None, metadata={
        "help": "Seconds; no new cell starts after them (the rest is left for the next invocation)."})
    list: bool = field(default=False, metadata={
        "help": "Print the cells and whether each is cached, then exit (trains nothing)."})

    def __post_init__(self) -> None:
        for flag, value in (("--seeds", self.seeds), ("--steps", self.steps)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        if self.threads < 0:
            raise ValueError(f"--threads must be >= 0, got {self.threads}")
        if self.learning_rate is not None and not 0 < self.learning_rate < 1:
            raise ValueError(f"--learning_rate must be in (0, 1), got {self.learning_rate}")
        check_time_budget(self.time_budget)
        if self.device == "cuda" and bench_device() != "cuda":
            raise ValueError("--device cuda: no CUDA device is visible; use --device cpu or auto")
        if self.shard is not None:
            shard_of(self.shard)


def bench_device() -> str:
    """Where cells train and evaluate: "cuda" when a GPU is visible, else "cpu" (`--device cpu` hides the GPU).
    The one place the bench decides it, so training and the final evaluation always agree."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def shard_of(text: str) -> tuple[int, int]:
    """(I, N) of a `--shard I/N` value; ValueError naming the flag when it is not two ints with 0 <= I < N."""
    parts = text.split("/")
    try:
        index, count = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--shard must be I/N with integers, e.g. 0/4, got {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: need 0 <= I < N")
    return index, count


def tier_help(tier: Tier) -> str:
    """The description of `castrl bench <tier> --help`: the tier's grid, its --quick grid and threads."""
    more = "".join(f" ({m}: {n})" for m, n in tier.method_seeds.items())
    return (f"{tier.about} Full grid: {len(tier.methods)} methods ({','.join(tier.methods)}), {tier.seeds} seeds"
            f"{more}, {tier.settings.steps} steps. --quick: {','.join(tier.quick_methods)}, {tier.quick_seeds} seed(s), "
            f"{tier.quick.steps} steps. --threads: default {tier.threads}, {tier.threads_help}.")


def parse_tier_args(tier: Tier, argv: Sequence[str]) -> TierArguments:
    """`TierArguments` of `castrl bench <tier> argv`; ValueError naming the flag when invalid."""
    (args,) = parse_dataclasses([TierArguments], argv, prog=f"castrl bench {tier.name}", description=tier_help(tier),
                                defaults={"threads": tier.threads})
    return args


def seeds_of(tier: Tier, args: TierArguments) -> Callable[[str], int]:
    """Seed count of each method: --seeds for every method when given, else the tier's (per method)."""
    fixed = args.seeds if args.seeds is not None else tier.quick_seeds if args.quick else None
    return lambda method: fixed if fixed is not None else tier.method_seeds.get(method, tier.seeds)


def settings_from_args(tier: Tier, args: TierArguments) -> tuple[RLSettings, tuple[str, ...], list[int]]:
    """(settings, methods, seeds) of an invocation; --quick changes the defaults, flags still win. The
    seeds are those of the method with the most (`seeds_of` says how many each method gets)."""
    settings = tier.quick if args.quick else tier.settings
    flags = {"steps": args.steps, "learning_rate": args.learning_rate}  # checked by TierArguments
    settings = replace(settings, **{name: value for name, value in flags.items() if value is not None})
    grid = tier.quick_methods if args.quick else tier.methods
    methods = parse_methods(args.methods, grid, tier.teachers)
    seeds = max(seeds_of(tier, args)(m) for m in methods)
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    return settings, methods, list(range(seeds))


def tier_main(tier: Tier, argv: list[str]) -> int:
    """`castrl bench <tier> [flags]`: fill the missing cells of the grid; prints what ran and what is left.

    Input mistakes (a flag value, a method) raise `UserInputError` before anything trains (`castrl.cli`
    prints one line and exits 2)."""
    import torch

    warnings.filterwarnings("ignore", message=".*is deprecated and will be removed in v6", category=FutureWarning)
    with user_input():
        args = parse_tier_args(tier, argv)
        settings, methods, seeds = settings_from_args(tier, args)
    if args.device == "cpu":  # before anything initialises CUDA: the trainer and evaluation then see no GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if args.threads:
        torch.set_num_threads(args.threads)
    cells = make_cells(tier.name, methods, seeds, lambda m, s: cell_config(tier, settings, m), seeds_of(tier, args))
    if args.shard is not None:
        index, count = shard_of(args.shard)
        cells = cells[index::count]
    if args.list:  # before `prepare`: listing must not train anything
        return grid_cli(tier.name, cells, dict, args.cells_dir, list_only=True, progress=False, time_budget_s=None)
    prepared = tier.prepare(settings, args.cells_dir, args.scratch_dir, args.progress) if tier.prepare else None
    if args.prepare_only:
        return 0
    scratch = Path(args.scratch_dir) / tier.name
    current = None if tier.is_current is None else (lambda record: tier.is_current(record, prepared))
    return grid_cli(tier.name, cells, lambda c: tier.run_cell(c, settings, scratch, prepared), args.cells_dir,
                    list_only=False, progress=args.progress, time_budget_s=args.time_budget, is_current=current)


def tier_description(name: str) -> Tier:
    """The `Tier` of tier `name` (a key of `TIERS`)."""
    if name not in TIERS:
        raise ValueError(f"unknown bench tier {name!r}; tiers: {', '.join(TIERS)}")
    return importlib.import_module(TIERS[name]).TIER


def tier_descriptions() -> list[Tier]:
    """Every tier's description, in the report's order."""
    return [tier_description(name) for name in TIERS]
