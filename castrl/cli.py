"""`castrl` (and `python -m castrl`): dispatch to a command of `castrl.commands`.

A user's mistake (invalid flag value, bad data row, missing file, unloadable model) ends the command
with `castrl <command>: error: <message>` on stderr and exit code 2; `--debug` (anywhere on the
line) shows the traceback instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys

from castrl.command_line import UserInputError
from castrl.commands import COMMANDS


def usage() -> str:
    lines = [f"usage: castrl {{{','.join(COMMANDS)}}} [flags]   (each command has --help)", "", "commands:"]
    lines += [f"  {name:<9} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "--debug: show the traceback of an input error instead of its one-line message"]
    return "\n".join(lines)


def pop_debug(argv: list[str]) -> tuple[list[str], bool]:
    """`argv` without castrl's bare `--debug`, and whether it was there.

    `--debug` before the command, or a bare one after it (last, or followed by another flag), is
    castrl's: `castrl train --debug underflow_overflow` keeps TRL's own `--debug <option>`.
    """
    keep, debug = [], False
    for i, arg in enumerate(argv):
        if arg == "--debug" and (i == 0 or i + 1 == len(argv) or argv[i + 1].startswith("-")):
            debug = True
        else:
            keep.append(arg)
    return keep, debug


def run_command(command: str, argv: list[str], debug: bool = False) -> int:
    """Run `castrl <command> argv`; an input mistake becomes one stderr line and exit 2 (raised with `debug`)."""
    module = importlib.import_module(COMMANDS[command][0])
    try:
        return module.main(argv)
    except UserInputError as err:
        if debug:
            raise
        print(f"castrl {command}: error: {err}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv, debug = pop_debug(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"castrl: unknown command {command!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return run_command(command, rest, debug)


if __name__ == "__main__":
    sys.exit(main())
