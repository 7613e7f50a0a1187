"""The one argument vocabulary of castrl's commands: each flag that more than one command takes is
declared here once, with its type, default and help, and injected into the commands' dataclasses with
`castrl.config_fields.with_fields_of` (a command may give it its own default or one more sentence of
help with `castrl.config_fields.adapted`, never its own declaration). So `--model`, `--data`,
`--prompt_style`, `--output_dir` or `--threads` mean the same in `castrl train`, `eval`, `diagnose`
and the bench, and a test (`tests/test_arguments.py`) fails when a field is declared twice.

`--output_dir` is TRL's spelling (`castrl train` gets it from TRL's `GRPOConfig`). The spellings the
commands used before (`--out`, `--style`, `--adapter`) are still read, from the command line and from
`--config` files, for one release, with one deprecation line each (`rename_flags`, `rename_keys`). So is
the bench's old `--cache_dir` of its cell cache, now `--cells_dir` (`castrl.bench.common.arguments`): an
old spelling is renamed only for a command that has the new field and not the old, so `--cache_dir` of
the converted-model cache (`ModelArguments`) is left alone wherever a command takes it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from castrl.config_fields import declared_fields
from castrl.data import STYLES
from castrl.models import DEFAULT_MODEL

# Old spelling -> the vocabulary's, accepted until the next release (then this table goes).
# `cache_dir` -> `cells_dir`: the bench's cell cache (tiers, placement, report), whose flag shared its name
# with ModelArguments.cache_dir; commands with a model `cache_dir` have no `cells_dir` and keep theirs.
RENAMED: dict[str, str] = {
    "out": "output_dir", "style": "prompt_style", "adapter": "lora_adapter", "cache_dir": "cells_dir",
}


@dataclass
class ModelArguments:
    """Which weights a command loads and how."""

    model: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": f"HF id, local folder, or {DEFAULT_MODEL!r} (the bundled SmolLM2-135M-Instruct)."},
    )
    lora_adapter: str | None = field(
        default=None,
        metadata={"help": "PEFT/LoRA adapter folder applied on --model (e.g. the final/ folder of a LoRA "
                  "`castrl train` run)."},
    )
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={"help": "Weights dtype."})
    cache_dir: str | None = field(
        default=None, metadata={"help": f"Cache of converted models (where {DEFAULT_MODEL!r} is converted once)."}
    )


@dataclass
class DataArguments:
    """Which problems a command reads and how the student sees them."""

    data: str = field(
        default="arithmetic:add1,add2,mul21",
        metadata={"help": "Problems: arithmetic[:LEVELS] or a .jsonl/.json/.parquet PATH[:PRESET] "
                  "('{split}' in PATH becomes the split read)."},
    )
    split: str = field(
        default="test",
        metadata={"help": "Split of --data: the arithmetic suite's train or test, or what '{split}' in a path becomes."},
    )
    n_per_level: int | None = field(
        default=None, metadata={"help": "Arithmetic problems per level of --data (default: the split's own count)."}
    )
    prompt_style: str = field(
        default="oneshot", metadata={"help": f"Student prompt style: {', '.join(STYLES)} (the same in every command)."}
    )


@dataclass
class SamplingArguments:
    """How a command samples completions (`castrl train`'s rollouts use TRL's fields of these names)."""

    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (> 0)."})
    top_p: float = field(default=0.8, metadata={"help": "Nucleus sampling, in (0, 1]; spec §7. [P]"})
    top_k: int = field(default=20, metadata={"help": "Top-k sampling (0 = off); spec §7. [P]"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Token limit of every sampled completion."})
    group_size: int = field(default=8, metadata={"help": "G: completions sampled per prompt (one group)."})
    decoder: Literal["castrl", "transformers"] = field(default="castrl", metadata={
        "help": "castrl: castrl.rollouts.decode (each distinct prompt prefilled once, sampling among the top-k "
        "only, finished rows leave the batch; same distribution, other draws); transformers: model.generate. [ours]"})


@dataclass
class VerifierArguments:
    """The answer checker every command scores with (`castrl.rewards.Verifier`)."""

    verifier_timeout_s: float = field(default=5.0, metadata={"help": "Hard timeout of one answer check (s)."})
    verifier_workers: int = field(default=2, metadata={"help": "Verifier worker processes."})


@dataclass
class OutputArguments:
    """Where a command writes (`castrl train` takes `output_dir` from TRL's config, same spelling)."""

    output_dir: str = field(default="outputs/castrl", metadata={"help": "Output folder."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})


@dataclass
class RuntimeArguments:
    """Where and how reproducibly a command runs."""

    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch's default)."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"help": "auto: cuda when available."})


VOCABULARY: tuple[type, ...] = (
    ModelArguments, DataArguments, SamplingArguments, VerifierArguments, OutputArguments, RuntimeArguments,
)


def check_prompt_style(style: str) -> None:
    """The one check of `--prompt_style` (a str, not a Literal, so every command fails with the same line)."""
    if style not in STYLES:
        raise ValueError(f"--prompt_style must be one of {', '.join(STYLES)}, got {style!r}")


def _deprecated(prog: str, old: str, new: str) -> None:
    print(f"{prog}: warning: --{old} is deprecated and will be removed in the next release; use --{new}",
          file=sys.stderr, flush=True)


def _renames(names: Iterable[str]) -> dict[str, str]:
    """The entries of RENAMED that apply to a command with these field names."""
    names = set(names)
    return {old: new for old, new in RENAMED.items() if new in names and old not in names}


def rename_flags(argv: Sequence[str], names: Iterable[str], prog: str) -> list[str]:
    """`argv` with each old spelling (`--out x`, `--out=x`, the hyphen spelling `--cache-dir` too) replaced
    by the vocabulary's, one deprecation line on stderr per old flag used; `names` are the command's field names."""
    renames, seen, out = _renames(names), set(), []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        old = flag[2:].replace("-", "_") if flag.startswith("--") else None
        if old in renames:
            if old not in seen:
                _deprecated(prog, old, renames[old])
                seen.add(old)
            arg = f"--{renames[old]}{eq}{value}"
        out.append(arg)
    return out


def rename_keys(values: Mapping[str, Any], names: Iterable[str], prog: str) -> dict[str, Any]:
    """`values` (a `--config` file's keys) with old spellings renamed, one deprecation line each."""
    renames = _renames(names)
    out = {}
    for key, value in values.items():
        if key in renames:
            _deprecated(prog, key, renames[key])
            key = renames[key]
        out[key] = value
    return out


def renamed_init(cls: type) -> type:
    """Class decorator, applied *after* `@dataclass`: the constructor still takes the old names of
    RENAMED for one release (DeprecationWarning), and reading an old attribute name reads the new field,
    so code not yet moved (`DiagnoseSettings(style=...)`, `settings.adapter`) keeps working."""
    import functools
    import warnings

    renames = _renames(cls.__dataclass_fields__)
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for old, new in renames.items():
            if old in kwargs:
                warnings.warn(f"{cls.__name__}({old}=...) is deprecated; use {new}=...", DeprecationWarning,
                              stacklevel=2)
                kwargs[new] = kwargs.pop(old)
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    for old, new in renames.items():
        setattr(cls, old, property(lambda self, new=new: getattr(self, new), doc=f"Deprecated: `{new}`."))
    return cls


def duplicate_declarations(classes: Iterable[type]) -> dict[str, list[str]]:
    """{field name: the classes declaring it} for every name more than one of `classes` declares in its
    own body (`castrl.config_fields.declared_fields`: injected fields do not count). Empty = one vocabulary."""
    owners: dict[str, list[str]] = {}
    for cls in classes:
        for name in declared_fields(cls):
            owners.setdefault(name, []).append(cls.__name__)
    return {name: sorted(names) for name, names in sorted(owners.items()) if len(names) > 1}
