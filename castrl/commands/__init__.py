"""The `castrl` commands, one module each, all alike: a dataclass is the command line (TRL-style
underscore flags, `--config file.yaml` as in TRL), inputs are checked before any model loads, and a
user's mistake ends the command with one line on stderr and exit code 2 (`castrl.cli`).

- `train`: CAST (or a baseline) with held-out before/after accuracy (`castrl.commands.train`);
- `eval`: avg@k, pass@k, maj@k, greedy accuracy and the token-budget sweep (`castrl.commands.eval`);
- `diagnose`: the teacher-signal analysis, without training (`castrl.commands.diagnose`);
- `bench`: benchmarks (`castrl.bench`; its suites are dataclasses parsed the same way).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

# Command name -> (module with `main(argv) -> int`, one line for `castrl --help`).
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("castrl.commands.train", "train with CAST or a baseline, held-out accuracy before/after"),
    "eval": ("castrl.commands.eval", "avg@k, pass@k, maj@k, greedy accuracy, token-budget sweep"),
    "diagnose": ("castrl.commands.diagnose", "the teacher-signal analysis on a model and data, no training"),
    "bench": ("castrl.bench", "benchmarks: core, steptime, tiny, smollm2, report"),
}

# What bad input raises in castrl (house rule 8): DataError is a ValueError, config checks raise
# ValueError/TypeError, a missing data or config file FileNotFoundError.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError)


class UserInputError(ValueError):
    """A mistake in a command's input (flag, config file, data row, model path); the message says it all.

    Raised only by `user_input`, so a ValueError from a bug mid-run keeps its traceback.
    """


@contextmanager
def user_input() -> Iterator[None]:
    """Mark a block that only reads the user's input: its USER_ERRORS become `UserInputError`."""
    try:
        yield
    except UserInputError:
        raise
    except USER_ERRORS as err:
        raise UserInputError(str(err)) from err


def parse_dataclasses(
    types: Sequence[type], argv: Sequence[str], *, prog: str, description: str, defaults: dict[str, Any] | None = None
) -> tuple[Any, ...]:
    """One instance per dataclass in `types`, from `argv` (and `--config file.yaml`), as TRL parses.

    Every field is a flag `--field_name` (TRL also accepts `--field-name`); a bool field with default
    True also gets `--no_field_name`. `defaults` replace the dataclasses' defaults. The old spellings of
    `castrl.arguments.RENAMED` (`--out`, ...) are read as the new ones, with one deprecation line each.
    Validation errors of the dataclasses' `__post_init__` propagate as raised.
    """
    from castrl.arguments import rename_flags

    parser = dataclass_parser(types, prog=prog, description=description)
    if defaults:
        parser.set_defaults_with_config(**defaults)
    argv = rename_flags(argv, _field_names(types), prog)
    return tuple(parser.parse_args_and_config(args=argv))


def dataclass_parser(types: Sequence[type], *, prog: str, description: str = "") -> Any:
    """The parser `parse_dataclasses` uses (for `--help` and tests): TRL's, with the old spellings of
    `castrl.arguments.RENAMED` read in `--config` files too."""
    from trl import TrlParser

    from castrl.arguments import rename_keys

    class Parser(TrlParser):
        def set_defaults_with_config(self, **kwargs: Any) -> list[str]:
            return super().set_defaults_with_config(**rename_keys(kwargs, _field_names(types), prog))

    return Parser(list(types), prog=prog, description=description)


def _field_names(types: Sequence[type]) -> set[str]:
    return {name for t in types for name in t.__dataclass_fields__}
