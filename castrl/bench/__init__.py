"""`castrl bench <suite>`: benchmarks. Suites: `core` (CAST vs GRPO advantage micro-benchmark),
`steptime` (seconds per training step split by phase, several estimators on one config), one per
tier of the cached CAST-vs-baselines grid (`tiny`, `smollm2`: `TIERS`), and `report` (docs/results.md)."""

from __future__ import annotations

import sys

from castrl.bench.harness import TIERS

SUITES = ("core", "steptime", *TIERS, "report")


def main(argv: list[str]) -> int:
    """Dispatch `argv[0]` to a benchmark suite; returns the process exit code."""
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: castrl bench {{{','.join(SUITES)}}} [flags]   (each suite has --help)")
        return 0
    suite, rest = argv[0], argv[1:]
    if suite in TIERS:  # an RL grid: castrl/bench/harness.py runs the tier module's description
        from castrl.bench.harness import tier_description, tier_main

        return tier_main(tier_description(suite), rest)
    if suite == "steptime":
        from castrl.bench.steptime import main as steptime_main

        return steptime_main(rest)
    if suite == "report":  # docs/results.md from the cell cache (castrl/bench/report.py)
        from castrl.bench.report import main as report_main

        return report_main(rest)
    if suite == "core":
        from castrl.bench.core import main as core_main

        return core_main(rest)
    print(f"castrl bench: unknown suite {suite!r}; expected one of {', '.join(SUITES)}", file=sys.stderr)
    return 2
