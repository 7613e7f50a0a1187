"""The bench's own argument vocabulary: each flag that more than one `castrl bench` suite takes and no
other command does, declared once here (as `castrl.arguments` declares the flags every command shares)
and injected into the suites' dataclasses with `castrl.config_fields.with_fields_of`; a suite gives it
its own default or one more sentence of help with `adapted`, never its own declaration.

`--cells_dir` is the cell cache (`castrl.bench.common.cells`): the tiers, `placement` and `report` read
and write it. It was `--cache_dir` until this release, which `castrl.arguments.ModelArguments` also
names (the converted-model cache, as in `castrl bench roofline` and `castrl train`): a flag means one
thing everywhere, so the bench's took a name of its own. `--cache_dir` (and `cache_dir:` in a `--config`
file) is still read as `--cells_dir` by the commands that have `cells_dir` and no `cache_dir`, for one
release, with one deprecation line (`castrl.arguments.RENAMED`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .cells import DEFAULT_CACHE_DIR


@dataclass
class BenchArguments:
    """Flags of several `castrl bench` suites."""

    cells_dir: str = field(default=DEFAULT_CACHE_DIR, metadata={
        "help": "Cell cache folder: one JSON file per cell (the default is tracked by git, so finished cells can be "
                "committed)."})
    methods: str | None = field(default=None, metadata={
        "help": "Comma-separated methods, each an advantage estimator with optional settings, "
                "estimator[@field=value...], e.g. cast@fuse_student_pass=false."})
    steps: int | None = field(default=None, metadata={"help": "Optimizer steps (RL steps) per method."})
    quick: bool = field(default=False, metadata={
        "help": "Quick grids: each tier's smoke run (fewer methods, seeds and steps) instead of its full grid."})
    repeats: int = field(default=20, metadata={"help": "Timed repetitions of each measurement."})
    json: str | None = field(default=None, metadata={"help": "Also write the results as JSON to this path."})


BENCH_VOCABULARY: tuple[type, ...] = (BenchArguments,)
