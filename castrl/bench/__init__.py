"""`castrl bench <suite>`: benchmarks. Suites: `core` (CAST vs GRPO advantage micro-benchmark),
`steptime` (seconds per training step split by phase, several estimators on one config)."""

from __future__ import annotations

import sys

SUITES = ("core", "steptime")


def main(argv: list[str]) -> int:
    """Dispatch `argv[0]` to a benchmark suite; returns the process exit code."""
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: castrl bench {{{','.join(SUITES)}}} [flags]   (each suite has --help)")
        return 0
    suite, rest = argv[0], argv[1:]
    if suite == "steptime":
        from castrl.bench.steptime import main as steptime_main

        return steptime_main(rest)
    if suite == "core":
        from castrl.bench.core import main as core_main

        return core_main(rest)
    print(f"castrl bench: unknown suite {suite!r}; expected one of {', '.join(SUITES)}", file=sys.stderr)
    return 2
