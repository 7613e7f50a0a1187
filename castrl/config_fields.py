"""Copy the fields of one config dataclass into another, help text included, so a concept's fields
are declared once: the core estimator configs and the teacher config are injected into each host's
flat config (`castrl.trl.CASTTrainerConfig`, the verl adapter's, diagnose's), and the shared argument
vocabulary (`castrl.arguments`) into every command's dataclass, by `with_fields_of`. Each class
records what was injected into it (`injected_fields`), so a check can tell a field declared twice
from one declared once and injected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, field, fields
from typing import Any, get_type_hints

# (source field, its type hint) -> (host type, dataclasses.field) for the host's annotation
FieldMap = Callable[[Field, Any], tuple[Any, Any]]


def same_field(f: Field, hint: Any) -> tuple[Any, Any]:
    """The field as declared: same type, default and help."""
    return hint, field(default=f.default, metadata=dict(f.metadata))


def adapted(defaults: Mapping[str, Any] | None = None, notes: Mapping[str, str] | None = None) -> FieldMap:
    """A `FieldMap` for a host that keeps the field's type and help but needs its own default
    (`defaults`: name -> value) or one more sentence of help (`notes`: name -> text appended)."""
    defaults, notes = dict(defaults or {}), dict(notes or {})

    def convert(f: Field, hint: Any) -> tuple[Any, Any]:
        metadata = dict(f.metadata)
        if f.name in notes:
            metadata["help"] = f"{metadata.get('help', '').rstrip()} {notes[f.name]}".strip()
        if f.name in defaults:
            return hint, field(default=defaults[f.name], metadata=metadata)
        if f.default_factory is not MISSING:
            return hint, field(default_factory=f.default_factory, metadata=metadata)
        return hint, field(default=f.default, metadata=metadata)

    return convert


def with_fields_of(
    *sources: type, prefix: str = "", convert: FieldMap = same_field, only: tuple[str, ...] | None = None
):
    """Class decorator, applied *before* `@dataclass`: add each field of `sources` (or the ones named in
    `only`) as `prefix + name`, unless the class declares that name itself (a host may override a
    default or its help). The names added are recorded in the class's `injected_fields`."""

    def inject(cls):
        annotations = cls.__dict__.get("__annotations__", {})
        injected = dict(cls.__dict__.get("_injected_fields", {}))
        for source in sources:
            hints = get_type_hints(source)
            for f in fields(source):
                name = prefix + f.name
                if name in annotations or (only is not None and f.name not in only):
                    continue
                annotations[name], value = convert(f, hints[f.name])
                setattr(cls, name, value)
                injected[name] = source
        cls.__annotations__ = annotations
        cls._injected_fields = injected
        return cls

    return inject


def injected_fields(cls: type) -> dict[str, type]:
    """{field name: source dataclass} of the fields `with_fields_of` injected into `cls` itself."""
    return dict(cls.__dict__.get("_injected_fields", {}))


def declared_fields(cls: type) -> set[str]:
    """The fields `cls`'s own body declares: not injected by `with_fields_of`, and not a base class's
    field given a new default (a subclass of TRL's GRPOConfig changing `temperature` declares nothing)."""
    inherited = {f.name for base in cls.__mro__[1:] if hasattr(base, "__dataclass_fields__") for f in fields(base)}
    own = cls.__dict__.get("__annotations__", {})
    return {f.name for f in fields(cls) if f.name in own} - set(injected_fields(cls)) - inherited


def values_of(obj: object, target: type, prefix: str = "") -> dict[str, Any]:
    """{name: value} of `target`'s fields read from `obj`'s `prefix + name` attributes."""
    return {f.name: getattr(obj, prefix + f.name) for f in fields(target)}
