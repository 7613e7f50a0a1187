"""`castrl bench <suite>`: benchmarks. Suites: `core` (CAST vs GRPO advantage micro-benchmark),
`steptime` (seconds per training step split by phase, several estimators on one config),
`tiny` / `smollm2` (the cached CAST-vs-baselines grid) and `report` (docs/results.md)."""

from __future__ import annotations

import sys

SUITES = ("core", "steptime", "tiny", "smollm2", "report")


def main(argv: list[str]) -> int:
    """Dispatch `argv[0]` to a benchmark suite; returns the process exit code."""
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: castrl bench {{{','.join(SUITES)}}} [flags]   (each suite has --help)")
        return 0
    suite, rest = argv[0], argv[1:]
    if suite == "steptime":
        from castrl.bench.steptime import main as steptime_main

        return steptime_main(rest)
    if suite == "tiny":  # RL grid on a tiny from-scratch model (castrl/bench/tiny.py)
        from castrl.bench.tiny import main as tiny_main

        return tiny_main(rest)
    if suite == "smollm2":  # RL grid on SmolLM2-135M + LoRA (castrl/bench/smollm2.py)
        from castrl.bench.smollm2 import main as smollm2_main

        return smollm2_main(rest)
    if suite == "report":  # docs/results.md from the cell cache (castrl/bench/report.py)
        from castrl.bench.report import main as report_main

        return report_main(rest)
    if suite == "core":
        from castrl.bench.core import main as core_main

        return core_main(rest)
    print(f"castrl bench: unknown suite {suite!r}; expected one of {', '.join(SUITES)}", file=sys.stderr)
    return 2
