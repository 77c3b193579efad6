"""The registry of output formats: ``(kind, name) -> fn(obj, **options) -> str``.

Results (a report, a comparison) render themselves through it without importing what renders
them; the formats register themselves (``inspector.formats``, ``inspector.page``) and the command
line reads its choices from it. ``kind`` is the result's ``KIND`` ("report" or "comparison").
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from inspector.registry import Registry

FormatFn = Callable[..., str]
FORMATS: Registry[tuple[str, str], FormatFn] = Registry("output format")


def output_format(name: str, kind: str) -> Callable[[FormatFn], FormatFn]:
    """Register ``fn(obj, **options) -> str`` as format ``name`` for ``kind`` ("report"/"comparison")."""
    return FORMATS.register((kind, name))


def names(kind: str) -> list[str]:
    """The formats registered for ``kind``, in registration order."""
    return [name for k, name in FORMATS if k == kind]


def render(obj: Any, fmt: str = "table", **options: Any) -> str:
    """``obj`` (anything with a ``KIND``) in format ``fmt``."""
    kind = obj.KIND
    fn = FORMATS.get((kind, fmt))
    if fn is None:
        raise ValueError(f"unknown {kind} format {fmt!r}; choose from {', '.join(names(kind))}")
    return fn(obj, **options)
