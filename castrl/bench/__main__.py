"""`python -m castrl.bench <suite> [flags]`: the same as `castrl bench <suite> [flags]` (errors and `--debug` included)."""

import sys

from castrl.cli import pop_debug, run_command

argv, debug = pop_debug(sys.argv[1:])
sys.exit(run_command("bench", argv, debug))
