"""The one argument vocabulary (`castrl.arguments`, and the bench's own, `castrl.bench.common.arguments`):
every flag more than one command (or bench suite) takes is declared once and injected, every command writes
to `--output_dir`, and the old spellings (`--out`, `--style`, `--adapter`, the bench's `--cache_dir` of its
cell cache) still work for one release with one deprecation line."""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field

import pytest

from castrl.arguments import VOCABULARY, RuntimeArguments, duplicate_declarations, rename_flags
from castrl.bench.common.arguments import BENCH_VOCABULARY
from castrl.bench.common.tier import TierArguments
from castrl.bench.report.results import ReportArguments
from castrl.bench.suites.core import CoreArguments
from castrl.bench.suites.placement import PlacementArguments
from castrl.bench.suites.roofline import RooflineArguments
from castrl.bench.suites.steptime import SteptimeArguments
from castrl.commands import COMMANDS, dataclass_parser
from castrl.config_fields import declared_fields, injected_fields, with_fields_of
from castrl.diagnostics import DiagnoseSettings

# `castrl bench`'s suites parse their own dataclasses, one per suite (TierArguments: every tier's).
BENCH_ARGUMENTS: tuple[type, ...] = (
    CoreArguments, SteptimeArguments, RooflineArguments, PlacementArguments, ReportArguments, TierArguments,
)


def command_arguments() -> dict[str, tuple[type, ...]]:
    """Each command's dataclasses: its module's ARGUMENTS (bench: its suites')."""
    found = {}
    for name, (module, _) in COMMANDS.items():
        found[name] = BENCH_ARGUMENTS if name == "bench" else importlib.import_module(module).ARGUMENTS
    return found


def test_no_field_is_declared_in_two_command_dataclasses():
    classes = [*VOCABULARY, *BENCH_VOCABULARY, *(cls for types in command_arguments().values() for cls in types)]
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
    `--output_dir`, `--seed` and sampling flags are TRL's own fields of the same names.) The bench's suites
    are parsed one at a time (each is a command line of its own)."""
    vocabularies = (*VOCABULARY, *BENCH_VOCABULARY)
    seen = set()
    for command, types in command_arguments().items():
        for group in [[t] for t in types] if command == "bench" else [types]:
            injected = {name: source for t in group for name, source in injected_fields(t).items()
                        if source in vocabularies}
            for action in dataclass_parser(group, prog=command)._actions:
                if action.dest in injected:
                    help_text = injected[action.dest].__dataclass_fields__[action.dest].metadata["help"]
                    assert action.help.startswith(help_text), (command, group, action.dest)
                    seen.add(action.dest)
    vocabulary = {name for cls in vocabularies for name in cls.__dataclass_fields__}
    assert vocabulary <= seen  # every word of the vocabulary is used by some command


# --- the bench's cell cache: `--cells_dir`, read from the old `--cache_dir` for one release ---------------

CELLS_DEPRECATION = ("castrl bench {}: warning: --cache_dir is deprecated and will be removed in the next release; "
                     "use --cells_dir")


def test_bench_report_reads_the_old_cache_dir_as_cells_dir_with_one_deprecation_line(tmp_path, capsys):
    from castrl.bench.report import results as report

    args = report.parse_args(["--cache_dir", str(tmp_path / "a"), "--cache-dir=" + str(tmp_path / "b")])
    assert args.cells_dir == str(tmp_path / "b")  # both spellings, the last one wins
    assert capsys.readouterr().err.strip().splitlines() == [CELLS_DEPRECATION.format("report")]
    assert report.parse_args(["--cells_dir", str(tmp_path)]).cells_dir == str(tmp_path)
    assert capsys.readouterr().err == ""
    config = tmp_path / "report.yaml"
    config.write_text(f"cache_dir: {tmp_path / 'c'}\nquick: true\n")
    args = report.parse_args(["--config", str(config)])
    assert (args.cells_dir, args.quick) == (str(tmp_path / "c"), True)
    assert capsys.readouterr().err.strip().splitlines() == [CELLS_DEPRECATION.format("report")]


def test_bench_tier_list_reads_the_old_cache_dir_as_cells_dir(tmp_path, capsys):
    from castrl.bench import main as bench_main

    argv = ["control", "--list", "--seeds", "1", "--methods", "grpo,cast"]
    assert bench_main([*argv, "--cache_dir", str(tmp_path / "old")]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 2 and all(f" missing  {tmp_path / 'old' / 'control' / 'cells'}/" in line for line in lines)
    assert [line for line in err.splitlines() if "warning" in line] == [CELLS_DEPRECATION.format("control")]
    assert bench_main([*argv, "--cells_dir", str(tmp_path / "new")]) == 0
    out, err = capsys.readouterr()
    assert out.replace(str(tmp_path / "new"), str(tmp_path / "old")).strip().splitlines() == lines  # same cells
    assert "deprecated" not in err
    assert not list(tmp_path.iterdir())  # listing writes nothing


def test_python_callers_of_the_old_cache_dir_keep_working():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = TierArguments(cache_dir="x")
    assert (args.cells_dir, args.cache_dir) == ("x", "x")
    assert [issubclass(w.category, DeprecationWarning) for w in caught] == [True]


@pytest.mark.parametrize("types", [[RooflineArguments], [SteptimeArguments], [CoreArguments]])
def test_the_model_cache_dir_is_not_renamed_where_a_command_has_no_cells_dir(types, capsys):
    """`--cache_dir` is the converted-model cache wherever a command has it (roofline here; train, eval,
    diagnose too), and an unknown flag where a command has neither: never read as `--cells_dir` there."""
    assert rename_flags(["--cache_dir", "m"], {n for t in types for n in t.__dataclass_fields__}, "p") == [
        "--cache_dir", "m"]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", ["eval", "diagnose"])
def test_the_model_cache_dir_of_eval_and_diagnose_is_untouched(command, tmp_path, capsys):
    parsed = _parse(command, ["--cache_dir", str(tmp_path)])
    assert next(obj.cache_dir for obj in parsed if hasattr(obj, "cache_dir")) == str(tmp_path)
    assert "deprecated" not in capsys.readouterr().err
