"""`castrl bench <suite>`: benchmarks. Suites: `core` (CAST vs GRPO advantage micro-benchmark),
`steptime` (seconds per training step split by phase, several estimators on one config), `roofline`
(the machine's fp32 / bf16 matmul roofs and each phase's fraction of them), one per
tier of the cached CAST-vs-baselines grids (`smollm2`, `control`, `tiny`: `TIERS`), `placement` (the
bundled model's teacher diagnosed under each tag placement and prompt style) and `report` (docs/results.md).

The bench has four floors, each importing only the ones below it and library code (never `castrl.commands`):
- `common/`: what tiers and suites share: the flags several suites take (`arguments`: `--cells_dir`,
  `--methods`, `--steps`, `--quick`, `--repeats`, `--json`), the cell cache (`cells`), running a grid
  (`grid`), the tier description and its command line (`tier`), methods, one RL cell (`rl_cell`), the
  final evaluation, the diagnosis before training, the tiny student (`tiny_sft`, `tiny_student`), the
  smollm2 tier's settings and problems (`smol`) and the matmul roofs (`roofs`);
- `tiers/`: one module per tier of the grid (`smollm2`, `control`, `tiny`); no tier imports another;
- `suites/`: the other suites (`core`, `steptime`, `roofline`, `placement`);
- `report/`: `castrl bench report` (`results`), one module per section, on `castrl.reporting`'s toolkit;
  only the report reads the tiers' descriptions, no runner imports report code.

Each suite reads its flags as every castrl command does: one dataclass is the command line
(TRL-style underscores, `--cells_dir`, `--no_progress`; the hyphen spelling is accepted too; the cell
cache's old `--cache_dir` is still read as `--cells_dir` for one release, with a deprecation line), and a
user's mistake (an unknown suite, a bad method, a non-positive `--time_budget`) raises
`UserInputError` before anything runs, which `castrl.cli` prints as one `castrl bench: error: ...`
line with exit code 2 (`--debug`: the traceback).
"""

from __future__ import annotations

import sys

from castrl.bench.common.tier import TIERS
from castrl.command_line import user_input

SUITES = ("core", "steptime", "roofline", *TIERS, "placement", "report")


def main(argv: list[str] | None = None) -> int:
    """Dispatch `argv[0]` to a benchmark suite; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: castrl bench {{{','.join(SUITES)}}} [flags]   (each suite has --help)")
        return 0
    suite, rest = argv[0], argv[1:]
    with user_input():
        if suite not in SUITES:
            raise ValueError(f"unknown suite {suite!r}; expected one of {', '.join(SUITES)}")
    if suite in TIERS:  # an RL grid: castrl/bench/common/tier.py runs the tier module's description
        from castrl.bench.common.tier import tier_description, tier_main

        return tier_main(tier_description(suite), rest)
    if suite == "steptime":
        from castrl.bench.suites.steptime import main as steptime_main

        return steptime_main(rest)
    if suite == "roofline":  # the machine's matmul roofs and each phase's fraction of them
        from castrl.bench.suites.roofline import main as roofline_main

        return roofline_main(rest)
    if suite == "placement":
        from castrl.bench.suites.placement import main as placement_main

        return placement_main(rest)
    if suite == "report":  # docs/results.md from the cell cache (castrl/bench/report/results.py)
        from castrl.bench.report.results import main as report_main

        return report_main(rest)
    from castrl.bench.suites.core import main as core_main

    return core_main(rest)
