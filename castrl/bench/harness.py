"""The benchmark grid: (tier, method, seed) cells, each cached as one JSON file, and the one description
of a tier (`Tier`) that `castrl bench <tier>` runs (`tier_main`).

Why a cache: a grid takes an hour (tiny) to days (smollm2) on 2 CPU cores, so it fills over several
invocations. A cell's file name carries a hash of its *full* config (tier settings, method overrides,
seed, harness version): a changed knob makes a new cell, never a stale reuse. A cell that raises is
not cached (the next invocation retries it); cells run seed-major so a partial grid stays paired.
Cells live in `bench/cells/`, tracked by git so finished cells can be committed (JSON only); what is
not a result (trainer folders, the tiny tier's SFT weights) goes to `--scratch_dir` (ignored). A tier
module (`tiny`, `smollm2`) supplies its settings, methods (`castrl.bench.methods`), teachers, how to
run one cell and its report notes.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import re
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from castrl.bench.methods import Teacher, method_overrides, parse_methods
from castrl.command_line import parse_dataclasses, user_input
from castrl.formatting import jsonable

# Bump when the meaning of a cached result changes (what is measured, how), so old cells are not reused.
# 2: the paper's CAST rule (spec v2), methods named estimator[@field=value], teachers from the registry.
# 3: smollm2 tier v2 (final Avg@k / Pass@k evaluation, truncation masking, spec §4 rollout sampling).
HARNESS_VERSION = 3
# The CAST rule the cells measure: castrl.core implements spec v2 (the paper's Eq. 6-15). Saved in every
# cell; a cell without it was measured with spec v1's reconstruction (the report marks it superseded).
RULE_VERSION = "v2"
DEFAULT_CACHE_DIR = "bench/cells"  # tracked: JSON cells only
DEFAULT_SCRATCH_DIR = "bench_cache"  # ignored: trainer output folders, model weights
# Default trainer code paths of cells (`RLSettings.code_paths`): the v1 grids' separate student pass and
# unshared scoring; the same advantages as the trainer's defaults up to float rounding (not in the key).
# `castrl bench steptime --methods grpo,cast,cast@fuse_student_pass=false@share_prompt_cache=false` compares.
CELL_CODE_PATHS: dict[str, Any] = {"fuse_student_pass": False, "share_prompt_cache": False}


# --- cells and the cache ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One (tier, method, seed) run. `config` is everything that determines its result (JSON-able)."""

    tier: str
    method: str
    seed: int
    config: Mapping[str, Any]

    def key(self) -> str:
        """16 hex digits of sha256 over the canonical JSON of tier, method, seed, config, harness version."""
        payload = {"tier": self.tier, "method": self.method, "seed": self.seed, "config": self.config,
                   "harness_version": HARNESS_VERSION}
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def slug(self) -> str:
        """`<method>-s<seed>` for file names: characters of the method outside [A-Za-z0-9_.=@,+-] (the
        `:` of `refresh:5`) become `_` (the key in `path` keeps cells apart)."""
        return re.sub(r"[^A-Za-z0-9_.=@,+-]", "_", self.method) + f"-s{self.seed}"

    def path(self, cache_dir: str | os.PathLike[str]) -> Path:
        """`<cache>/<tier>/cells/<slug>-<key>.json`: readable names, exact-config identity."""
        return Path(cache_dir) / self.tier / "cells" / f"{self.slug()}-{self.key()}.json"


def make_cells(tier: str, methods: Sequence[str], seeds: Sequence[int],
               config_of: Callable[[str, int], Mapping[str, Any]],
               seeds_of: Callable[[str], int] | None = None) -> list[Cell]:
    """Seed-major cells: all methods for seeds[0], then seeds[1], ... (a partial grid stays paired).
    With `seeds_of`, method m gets only the seeds below `seeds_of(m)`."""
    return [Cell(tier, m, s, config_of(m, s)) for s in seeds for m in methods if seeds_of is None or s < seeds_of(m)]


def pack_steps(steps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A cell's per-step metrics stored by column, floats to 6 significant digits: one key per metric
    instead of one per step and metric, ~5x smaller files in the tracked cache (null: not logged)."""
    keys = list(dict.fromkeys(k for row in steps for k in row))

    def short(value: Any) -> Any:
        return float(f"{value:.6g}") if isinstance(value, float) and math.isfinite(value) else value

    return {"columns": {k: [short(row.get(k)) for row in steps] for k in keys}}


def unpack_steps(stored: Any) -> list[dict[str, Any]]:
    """`pack_steps`' inverse (metrics a step did not log are absent from its row); a list (cells written
    before packing) is returned as it is."""
    if not isinstance(stored, Mapping):
        return list(stored or [])
    columns = stored["columns"]
    n = len(next(iter(columns.values()), []))
    return [{k: v[i] for k, v in columns.items() if v[i] is not None} for i in range(n)]


def read_cell(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A cell file's record, its per-step metrics as one dict per step."""
    with open(path) as f:
        record = json.load(f)
    if "steps" in record:
        record["steps"] = unpack_steps(record["steps"])
    return record


def load_cell(cell: Cell, cache_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The cached result of `cell`, or None when it was never completed."""
    path = cell.path(cache_dir)
    return read_cell(path) if path.exists() else None


def save_cell(cell: Cell, result: Mapping[str, Any], cache_dir: str | os.PathLike[str]) -> Path:
    """Write the result atomically (temp file + rename), so an interrupted write never looks complete."""
    path = cell.path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"tier": cell.tier, "method": cell.method, "seed": cell.seed, "key": cell.key(),
              "harness_version": HARNESS_VERSION, "rule_version": RULE_VERSION, "config": cell.config, **result}
    if isinstance(record.get("steps"), list):
        record["steps"] = pack_steps(record["steps"])
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:  # strict JSON (castrl.formatting): a non-finite float is null
        json.dump(jsonable(record), f, indent=1, default=_json_default)
    os.replace(tmp, path)
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return str(value)


def load_tier(cache_dir: str | os.PathLike[str], tier: str) -> list[dict[str, Any]]:
    """Every cached cell of `tier` (any config), sorted by method then seed; unreadable files are skipped."""
    folder = Path(cache_dir) / tier / "cells"
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out.append(read_cell(path))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"[bench] skipping unreadable cell {path}: {exc}")
    return sorted(out, key=lambda r: (r["method"], r["seed"]))


# --- running a grid ---------------------------------------------------------------------------------


@dataclass
class GridOutcome:
    """What one invocation did: cells read from the cache, run now, and failed (not cached)."""

    cached: list[Cell] = field(default_factory=list)
    ran: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        return f"{len(self.cached)} cached, {len(self.ran)} run, {len(self.failed)} failed"


def run_grid(cells: Iterable[Cell], run_cell: Callable[[Cell], Mapping[str, Any]],
             cache_dir: str | os.PathLike[str], progress: bool = True,
             time_budget_s: float | None = None,
             is_current: Callable[[Mapping[str, Any]], bool] | None = None) -> GridOutcome:
    """Run the cells missing from the cache, in order; a progress bar (with ETA) counts only those.
    A cell another invocation cached meanwhile is skipped (two invocations with different `--methods`
    orders can share one grid, e.g. one per core for a single-threaded tier).

    `run_cell` returns the result dict that is cached. An exception in one cell is printed and the
    grid goes on; that cell is not cached. With `time_budget_s`, no new cell starts once the budget
    is spent (the rest stays missing for the next invocation). `is_current(record)` False marks a cached
    cell as stale (made from other inputs than this invocation's, e.g. another tier's student model): it
    is run again and overwritten, so one grid never mixes what it pairs.
    """
    _check_time_budget(time_budget_s)
    outcome = GridOutcome()
    # Cells of one invocation share machine conditions: the report pairs step times only within one.
    invocation = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"

    def cached(cell: Cell) -> bool:
        record = load_cell(cell, cache_dir)
        return record is not None and (is_current is None or is_current(record))

    todo = []
    for cell in cells:
        (outcome.cached if cached(cell) else todo).append(cell)
    stale = [c for c in todo if c.path(cache_dir).exists()]
    if stale:
        print(f"[bench] {len(stale)} cached cell(s) were made from other inputs than this invocation's and run again: "
              + ", ".join(f"{c.method} s{c.seed}" for c in stale[:8]) + (" ..." if len(stale) > 8 else ""))
    start = time.perf_counter()
    bar = tqdm(todo, desc="bench cells", unit="cell", disable=not progress or not todo, dynamic_ncols=True)
    for cell in bar:
        if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
            print(f"[bench] time budget of {time_budget_s:.0f} s spent; {len(todo) - len(outcome.ran)} "
                  "cell(s) left for a later invocation")
            break
        if cached(cell):  # another invocation sharing the cache finished it meanwhile
            outcome.cached.append(cell)
            continue
        bar.set_postfix_str(f"{cell.method} s{cell.seed}")
        cell_start = time.perf_counter()
        try:
            result = run_cell(cell)
        except Exception:  # a crashed cell must not stop the grid; it stays uncached and is retried later
            outcome.failed.append((cell, traceback.format_exc()))
            print(f"[bench] cell {cell.method} seed {cell.seed} failed:\n{outcome.failed[-1][1]}")
            continue
        save_cell(cell, {**result, "invocation": invocation}, cache_dir)
        outcome.ran.append(cell)
        outcome.seconds[f"{cell.method}-s{cell.seed}"] = time.perf_counter() - cell_start
    bar.close()
    return outcome


def grid_cli(tier: str, cells: Sequence[Cell], run_cell: Callable[[Cell], Mapping[str, Any]],
             cache_dir: str, *, list_only: bool, progress: bool, time_budget_s: float | None,
             is_current: Callable[[Mapping[str, Any]], bool] | None = None) -> int:
    """The shared tail of `castrl bench <tier>`: list the cells, or fill the missing ones and say what ran."""
    if list_only:
        width = max((len(cell.method) for cell in cells), default=0)
        for cell in cells:
            state = "cached" if cell.path(cache_dir).exists() else "missing"
            print(f"{cell.method:{width}s}  seed {cell.seed}  {state}  {cell.path(cache_dir)}")
        return 0
    start = time.perf_counter()
    outcome = run_grid(cells, run_cell, cache_dir, progress=progress, time_budget_s=time_budget_s,
                       is_current=is_current)
    print(f"[bench] {tier}: {outcome.summary()} in {time.perf_counter() - start:.0f} s")
    for name, seconds in outcome.seconds.items():
        print(f"[bench]   {name}: {seconds:.1f} s")
    missing = sum(not c.path(cache_dir).exists() for c in cells)
    if missing:
        print(f"[bench] {tier}: {missing} cell(s) still missing; run the same command again to fill them")
    return 1 if outcome.failed else 0


# --- tiers --------------------------------------------------------------------------------------------

# Tier name -> the module whose `TIER` describes it, in the report's order (imported on demand: a tier
# module imports its model's stack).
# The bundled model's tier first (the CAST-vs-GRPO headline), then the positive control on the tiny student,
# then the tiny tier itself (its self-teacher cannot read a context: no evidence about CAST's teacher).
TIERS = {"smollm2": "castrl.bench.smollm2", "control": "castrl.bench.control", "tiny": "castrl.bench.tiny"}


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
    to cache; `prepare(settings, cache_dir, scratch_dir, progress)` runs once per invocation first (the
    tiny SFT, the smollm2 base-model evaluation) and returns `prepared`; `notes(settings, cache_dir)`
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
    # (view, figures folder, markdown folder) -> the tier's own report sections (e.g. the positive control's
    # gain-vs-teacher-AUC table and figure), placed after the headline
    report_sections: Callable[[Any, Path, Path], list[str]] | None = None
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
        gradient_checkpointing=False, seed=seed, data_seed=seed, disable_tqdm=True,
    )  # fmt: skip
    return CASTTrainerConfig(**{**fixed, **settings.code_paths(), **settings.trainer_kwargs(), **overrides})


@dataclass
class TierArguments:
    """The flags of `castrl bench <tier>` (TRL-style underscores; the tier sets --threads' default)."""

    seeds: int | None = field(default=None, metadata={
        "help": "Seeds 0..N-1 for every method (paired); None: the tier's, per method (fewer with --quick)."})
    methods: str | None = field(default=None, metadata={
        "help": "Comma-separated estimator[@field=value...]; None or 'all': the tier's full grid."})
    steps: int | None = field(default=None, metadata={
        "help": "RL steps per cell; None: the tier's. Part of the cells' key (tuning runs: --methods grpo)."})
    learning_rate: float | None = field(default=None, metadata={
        "help": "Learning rate of every cell; None: the tier's. Part of the cells' key (tuning runs)."})
    cache_dir: str = field(default=DEFAULT_CACHE_DIR, metadata={
        "help": "Cell cache folder (JSON only; the default is tracked by git so finished cells can be committed)."})
    scratch_dir: str = field(default=DEFAULT_SCRATCH_DIR, metadata={
        "help": "Folder for what is not a result: trainer output folders, the tiny tier's SFT weights (ignored)."})
    quick: bool = field(default=False, metadata={"help": "Smoke run: the tier's quick methods, seeds and steps."})
    threads: int = field(default=2, metadata={"help": "torch CPU threads (the default is the tier's)."})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={
        "help": "auto: CUDA when visible, else CPU; cpu hides the GPU. Not in the cells' key (recorded in each)."})
    shard: str | None = field(default=None, metadata={
        "help": "'I/N': run only cells I, I+N, I+2N, ... of the grid (0 <= I < N), so N processes or machines "
                "fill one grid without running a cell twice."})
    prepare_only: bool = field(default=False, metadata={
        "help": "Compute the grid's shared cells (the base model's evaluation and diagnosis) and stop; "
                "run once before several --shard processes, which would otherwise each compute them."})
    time_budget: float | None = field(default=None, metadata={
        "help": "Seconds; no new cell starts after them (the rest is left for the next invocation)."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})
    list: bool = field(default=False, metadata={
        "help": "Print the cells and whether each is cached, then exit (trains nothing)."})

    def __post_init__(self) -> None:
        for flag, value in (("--seeds", self.seeds), ("--steps", self.steps), ("--threads", self.threads)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        if self.learning_rate is not None and not 0 < self.learning_rate < 1:
            raise ValueError(f"--learning_rate must be in (0, 1), got {self.learning_rate}")
        _check_time_budget(self.time_budget)
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


def _check_time_budget(seconds: float | None) -> None:
    if seconds is not None and not seconds > 0:
        raise ValueError(f"--time_budget must be a positive number of seconds, got {seconds}")


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
    torch.set_num_threads(args.threads)
    cells = make_cells(tier.name, methods, seeds, lambda m, s: cell_config(tier, settings, m), seeds_of(tier, args))
    if args.shard is not None:
        index, count = shard_of(args.shard)
        cells = cells[index::count]
    if args.list:  # before `prepare`: listing must not train anything
        return grid_cli(tier.name, cells, dict, args.cache_dir, list_only=True, progress=False, time_budget_s=None)
    prepared = tier.prepare(settings, args.cache_dir, args.scratch_dir, args.progress) if tier.prepare else None
    if args.prepare_only:
        return 0
    scratch = Path(args.scratch_dir) / tier.name
    current = None if tier.is_current is None else (lambda record: tier.is_current(record, prepared))
    return grid_cli(tier.name, cells, lambda c: tier.run_cell(c, settings, scratch, prepared), args.cache_dir,
                    list_only=False, progress=args.progress, time_budget_s=args.time_budget, is_current=current)


def tier_description(name: str) -> Tier:
    """The `Tier` of tier `name` (a key of `TIERS`)."""
    if name not in TIERS:
        raise ValueError(f"unknown bench tier {name!r}; tiers: {', '.join(TIERS)}")
    return importlib.import_module(TIERS[name]).TIER


def tier_descriptions() -> list[Tier]:
    """Every tier's description, in the report's order."""
    return [tier_description(name) for name in TIERS]
