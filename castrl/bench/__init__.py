"""`castrl bench <suite>`: benchmarks. Suites: `core` (CAST vs GRPO advantage micro-benchmark)."""

from __future__ import annotations

import sys

SUITES = ("core",)


def main(argv: list[str]) -> int:
    """Dispatch `argv[0]` to a benchmark suite; returns the process exit code."""
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: castrl bench {{{','.join(SUITES)}}} [flags]   (each suite has --help)")
        return 0
    suite, rest = argv[0], argv[1:]
    if suite == "core":
        from castrl.bench.core import main as core_main

        return core_main(rest)
    print(f"castrl bench: unknown suite {suite!r}; expected one of {', '.join(SUITES)}", file=sys.stderr)
    return 2
