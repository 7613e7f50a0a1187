"""The one argument vocabulary (`castrl.arguments`): every flag more than one command takes is declared
once and injected, every command writes to `--output_dir`, and the old spellings still work for one
release with one deprecation line."""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field

import pytest

from castrl.arguments import VOCABULARY, RuntimeArguments, duplicate_declarations, rename_flags
from castrl.bench.suites.core import CoreArguments
from castrl.commands import COMMANDS, dataclass_parser
from castrl.config_fields import declared_fields, injected_fields, with_fields_of
from castrl.diagnostics import DiagnoseSettings

# `castrl bench`'s suites parse their own dataclasses; the ones on the vocabulary so far.
BENCH_ARGUMENTS: tuple[type, ...] = (CoreArguments,)


def command_arguments() -> dict[str, tuple[type, ...]]:
    """Each command's dataclasses: its module's ARGUMENTS (bench: its suites')."""
    found = {}
    for name, (module, _) in COMMANDS.items():
        found[name] = BENCH_ARGUMENTS if name == "bench" else importlib.import_module(module).ARGUMENTS
    return found


def test_no_field_is_declared_in_two_command_dataclasses():
    classes = [*VOCABULARY, *(cls for types in command_arguments().values() for cls in types)]
    assert duplicate_declarations(classes) == {}


def test_the_scan_finds_a_field_declared_twice():
    """The check can fail: a command that declares `threads` itself (as diagnose once did, with default 2)
    next to the vocabulary is reported; one that injects it is not."""

    @dataclass
    class Redeclares:
        threads: int = field(default=2, metadata={"help": "torch CPU threads."})
        group_size: int = 8

    @dataclass
    @with_fields_of(RuntimeArguments, only=("threads",))
    class Injects:
        group_size: int = 4

    assert duplicate_declarations([RuntimeArguments, Redeclares]) == {"threads": ["Redeclares", "RuntimeArguments"]}
    assert declared_fields(Injects) == {"group_size"}
    assert duplicate_declarations([RuntimeArguments, Injects]) == {}
    assert duplicate_declarations([Redeclares, Injects]) == {"group_size": ["Injects", "Redeclares"]}


def _parse(command: str, argv: list[str]):
    """The dataclasses `castrl <command> argv` parses into (no model, no data loaded)."""
    if command == "train":
        from castrl.commands.train import parse_args

        return parse_args(["--model", "/nonexistent/model", *argv])
    from castrl.commands import parse_dataclasses

    types = importlib.import_module(COMMANDS[command][0]).ARGUMENTS
    return parse_dataclasses(types, ["--model", "/nonexistent/model", *argv], prog=f"castrl {command}",
                             description="")


def _output_dir(parsed) -> str:
    return next(obj.output_dir for obj in parsed if hasattr(obj, "output_dir"))


@pytest.mark.parametrize("command", ["train", "eval", "diagnose"])
def test_every_command_takes_output_dir(command, tmp_path, capsys):
    assert _output_dir(_parse(command, ["--output_dir", str(tmp_path)])) == str(tmp_path)
    assert "deprecated" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "diagnose"])
def test_old_out_still_works_with_one_deprecation_line(command, tmp_path, capsys):
    parsed = _parse(command, ["--out", str(tmp_path / "a"), "--out=" + str(tmp_path / "b")])
    assert _output_dir(parsed) == str(tmp_path / "b")  # the last one wins, as with any flag
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"castrl {command}: warning: --out is deprecated and will be removed in the next release; "
                   "use --output_dir"]


def test_old_keys_of_a_config_file_still_work(tmp_path, capsys):
    config = tmp_path / "diagnose.yaml"
    config.write_text("out: somewhere\nstyle: plain\n")
    (settings,) = _parse("diagnose", ["--config", str(config)])
    assert (settings.output_dir, settings.prompt_style) == ("somewhere", "plain")
    err = capsys.readouterr().err
    assert "--out is deprecated" in err and "use --prompt_style" in err


def test_rename_flags_leaves_values_and_other_flags_alone(capsys):
    names = {"output_dir", "prompt_style", "outputs"}
    argv = ["--outputs", "1", "--style", "--out", "--teachers", "out", "-o", "--out=x"]
    assert rename_flags(argv, names, "p") == ["--outputs", "1", "--prompt_style", "--output_dir", "--teachers", "out",
                                              "-o", "--output_dir=x"]
    assert len(capsys.readouterr().err.strip().splitlines()) == 2  # one line per old flag, however often used
    assert rename_flags(["--out", "x"], {"out", "output_dir"}, "p") == ["--out", "x"]  # a command's own `out`


def test_python_callers_of_the_old_names_keep_working():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        settings = DiagnoseSettings(style="plain", out="x", adapter=None)
    assert (settings.prompt_style, settings.output_dir) == ("plain", "x")
    assert (settings.style, settings.out, settings.adapter) == ("plain", "x", None)  # read as the new fields
    assert sum(issubclass(w.category, DeprecationWarning) for w in caught) == 3


def test_a_shared_flag_has_the_vocabulary_help_in_every_command():
    """One declaration, one help: a command may add a sentence, never say something else. (`castrl train`'s
    `--output_dir`, `--seed` and sampling flags are TRL's own fields of the same names.)"""
    seen = set()
    for command, types in command_arguments().items():
        injected = {name: source for t in types for name, source in injected_fields(t).items()
                    if source in VOCABULARY}
        for action in dataclass_parser(types, prog=command)._actions:
            if action.dest in injected:
                help_text = injected[action.dest].__dataclass_fields__[action.dest].metadata["help"]
                assert action.help.startswith(help_text), (command, action.dest)
                seen.add(action.dest)
    vocabulary = {name for cls in VOCABULARY for name in cls.__dataclass_fields__}
    assert vocabulary <= seen  # every word of the vocabulary is used by some command
