"""How every castrl command line is read: a dataclass is the command line, and a user's mistake in it
is told apart from a bug.

- `parse_dataclasses` / `dataclass_parser`: TRL's parser (underscore flags, `--config file.yaml`, the old
  spellings of `castrl.arguments.RENAMED`), one instance per dataclass;
- `user_input`: a block that only reads the user's input; its ValueError / TypeError / FileNotFoundError
  become `UserInputError`, which `castrl.cli` prints as one line with exit code 2.

Why a library module and not `castrl.commands`: the bench's suites parse their flags and mark their input
the same way, and the bench calls library code, never a command module.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

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
