"""Old import path of `castrl.commands.train`, kept while `castrl/bench/steptime.py` imports
`make_trainer` and `parse_args` from here; new code imports `castrl.commands.train`."""

from castrl.commands.train import DEMO_DEFAULTS, RunArguments, main, make_trainer, parse_args, train

__all__ = ["DEMO_DEFAULTS", "RunArguments", "main", "make_trainer", "parse_args", "train"]
