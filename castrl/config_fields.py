"""Copy the fields of one config dataclass into another, help text included, so a concept's fields
are declared once: the core estimator configs and the teacher config are injected into each host's
flat config (`castrl.trl.CASTTrainerConfig`, the verl adapter's, diagnose's) by `with_fields_of`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field, field, fields
from typing import Any, get_type_hints

# (source field, its type hint) -> (host type, dataclasses.field) for the host's annotation
FieldMap = Callable[[Field, Any], tuple[Any, Any]]


def same_field(f: Field, hint: Any) -> tuple[Any, Any]:
    """The field as declared: same type, default and help."""
    return hint, field(default=f.default, metadata=dict(f.metadata))


def with_fields_of(
    *sources: type, prefix: str = "", convert: FieldMap = same_field, only: tuple[str, ...] | None = None
):
    """Class decorator, applied *before* `@dataclass`: add each field of `sources` (or the ones named in
    `only`) as `prefix + name`, unless the class declares that name itself (a host may override a
    default or its help)."""

    def inject(cls):
        annotations = cls.__dict__.get("__annotations__", {})
        for source in sources:
            hints = get_type_hints(source)
            for f in fields(source):
                name = prefix + f.name
                if name in annotations or (only is not None and f.name not in only):
                    continue
                annotations[name], value = convert(f, hints[f.name])
                setattr(cls, name, value)
        cls.__annotations__ = annotations
        return cls

    return inject


def values_of(obj: object, target: type, prefix: str = "") -> dict[str, Any]:
    """{name: value} of `target`'s fields read from `obj`'s `prefix + name` attributes."""
    return {f.name: getattr(obj, prefix + f.name) for f in fields(target)}
