"""The `castrl` commands, one module each, all alike: a dataclass is the command line (TRL-style
underscore flags, `--config file.yaml` as in TRL), inputs are checked before any model loads, and a
user's mistake ends the command with one line on stderr and exit code 2 (`castrl.cli`).

- `train`: CAST (or a baseline) with held-out before/after accuracy (`castrl.commands.train`);
- `eval`: avg@k, pass@k, maj@k, greedy accuracy and the token-budget sweep (`castrl.commands.eval`);
- `diagnose`: the teacher-signal analysis, without training (`castrl.commands.diagnose`);
- `bench`: benchmarks (`castrl.bench`; its suites are dataclasses parsed the same way).
"""

from __future__ import annotations

# The command-line machinery is library code (`castrl.command_line`, shared with the bench); these names
# stay importable from here.
from castrl.command_line import USER_ERRORS, UserInputError, dataclass_parser, parse_dataclasses, user_input

__all__ = ["COMMANDS", "USER_ERRORS", "UserInputError", "dataclass_parser", "parse_dataclasses", "user_input"]

# Command name -> (module with `main(argv) -> int`, one line for `castrl --help`).
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("castrl.commands.train", "train with CAST or a baseline, held-out accuracy before/after"),
    "eval": ("castrl.commands.eval", "avg@k, pass@k, maj@k, greedy accuracy, token-budget sweep"),
    "diagnose": ("castrl.commands.diagnose", "the teacher-signal analysis on a model and data, no training"),
    "bench": ("castrl.bench", "benchmarks: core, steptime, tiny, smollm2, report"),
}
