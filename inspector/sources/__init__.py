"""Model sources: each turns a name into a module, its example inputs and any published figures.

A name is ``source:rest`` when ``source`` is registered (``timm:convnext_tiny``, ``hf:gpt2``,
``tv:resnet50``); a file path (``path/to/net.py:Net``) or an importable object
(``package.module:factory``) otherwise when it holds a colon; a file whose suffix a source claims
(``model.pt``: ``suffixes`` on the source); any other bare name is a torchvision model.
Register a new source with ``@model_source("prefix")`` on a class implementing :class:`Source`.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from inspector.errors import UnknownModelError
from inspector.registry import Registry


@dataclass(frozen=True)
class Published:
    """Figures a model's publisher states (torchvision's weights metadata), for comparison."""

    num_params: int | None = None
    gmacs: float | None = None  # torchvision's meta["_ops"]: multiply-accumulates, in billions
    metric: str | None = None
    metric_value: float | None = None
    family: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A model as a source built it: the module, the inputs it is published for, and its figures."""

    name: str
    module: nn.Module
    args: tuple[Any, ...] | None = None  # None: let ``inspect`` infer (or count parameters only)
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    published: Published = field(default_factory=Published)
    device: str | None = None  # where the source built it, when it chose (quantized: always cpu)
    notes: tuple[str, ...] = ()
    input_size: Any = None  # a random input for ``inspect`` to make (sources without example inputs)


@dataclass(frozen=True)
class BuildOptions:
    """What a caller may ask of a source; each source uses what applies to it."""

    device: str = "cpu"
    batch: int | None = None        # inputs' batch size (default 1)
    trust_pickle: bool = False      # saved files (.pt): unpickle a whole module (runs the file's code)
    seq_len: int | None = None      # token sources (hf): sequence length (default 128)
    input_size: Any = None  # overrides the source's example input: a shape, or (shape, dtype)
    model_class: str | None = None  # hf: the transformers class to build instead of the config's own
    generate: int | None = None     # the inputs are a prompt for generation (hf: a decoder start token)
    last_logits: bool = False       # hf: logits at the last position only (logits_to_keep=1), as generate()

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The shape part of ``input_size``."""
        if self.input_size is None:
            return None
        from inspector.inputs import parse_size

        return parse_size(self.input_size)[0]

    def random(self, model: nn.Module) -> torch.Tensor | None:
        """A random input of ``input_size`` on ``device`` (token ids for an integer dtype), or None."""
        if self.input_size is None:
            return None
        from inspector.inputs import parse_size, random_input

        shape, dtype = parse_size(self.input_size)
        return random_input(shape, dtype, torch.device(self.device), model)


class Source(Protocol):
    """One family of names. ``lists``: whether ``names`` lists them (sources building from paths or
    configs list none); ``families``: the groups ``names(family)`` takes."""

    description: str
    lists: bool
    families: tuple[str, ...]

    def build(self, name: str, options: BuildOptions) -> ModelSpec: ...

    def names(self, family: str | None = None) -> list[str]: ...

    def catalogue(self, family: str | None = None) -> list[dict[str, Any]]:
        """One entry per name: ``name`` and whatever the source publishes about it."""
        ...


SOURCES: Registry[str, Source] = Registry("model source")


def model_source(prefix: str) -> Callable[[type], type]:
    """Class decorator: register an instance of the class as the source for ``prefix:name``."""
    def register(cls: type) -> type:
        if prefix not in SOURCES:  # a module imported twice (by discovery and by name) registers once
            SOURCES.register(prefix)(cls())
        return cls
    return register


DEFAULT_SOURCE = "tv"


def split(name: str) -> tuple[str, str]:
    """(source prefix, the name within it)."""
    _ensure_builtin()
    prefix, sep, rest = name.partition(":")
    if sep and prefix.lower() in SOURCES:
        return prefix.lower(), rest
    if sep:  # a file path or an import path: the python source
        return "py", name
    for prefix in SOURCES:  # a file whose suffix a source claims (model.pt)
        if name.lower().endswith(tuple(getattr(SOURCES.get(prefix), "suffixes", ()))):
            return prefix, name
    return DEFAULT_SOURCE, name


def load(name: str, *, device: str | torch.device = "cpu", batch: int | None = None, seq_len: int | None = None,
         input_size: Any = None, model_class: str | None = None, generate: int | None = None,
         last_logits: bool = False, trust_pickle: bool = False) -> ModelSpec:
    """Build the model ``name`` names, with example inputs on ``device`` (see the module docstring and
    ``BuildOptions``); ``trust_pickle``: a saved file (model.pt) may be unpickled, which runs code
    stored in it."""
    prefix, rest = split(name)  # registers the built-in sources
    options = BuildOptions(device=str(device), batch=batch, seq_len=seq_len, input_size=input_size,
                           model_class=model_class, generate=generate, last_logits=last_logits,
                           trust_pickle=trust_pickle)
    return SOURCES.get(prefix).build(rest, options)  # type: ignore[union-attr]


def list_names(source: str = DEFAULT_SOURCE, family: str | None = None) -> list[str]:
    """The names a source knows (sources that build from paths or configs list none)."""
    _ensure_builtin()
    if source not in SOURCES:
        raise UnknownModelError(f"unknown model source {source!r}; known: {', '.join(SOURCES)}")
    return SOURCES.get(source).names(family)  # type: ignore[union-attr]


def closest(name: str, known: list[str], what: str) -> UnknownModelError:
    """An UnknownModelError listing the known names closest to ``name`` (case-insensitively)."""
    lowered = {k.lower(): k for k in known}
    close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=5, cutoff=0.5)]
    hint = f"; closest: {', '.join(close)}" if close else ""
    return UnknownModelError(f"unknown {what} {name!r}{hint}")


def source(prefix: str) -> Source:
    """The source registered for ``prefix``."""
    _ensure_builtin()
    found = SOURCES.get(prefix)
    if found is None:
        raise UnknownModelError(f"unknown model source {prefix!r}; known: {', '.join(SOURCES)}")
    return found


def listing_sources() -> list[str]:
    """The prefixes of the sources that list their names (``inspector list --source``)."""
    _ensure_builtin()
    return [prefix for prefix in SOURCES if SOURCES.get(prefix).lists]  # type: ignore[union-attr]


def _ensure_builtin() -> None:
    """Register the sources of this package: every module in it, imported once (each imports its
    library only when a name of it is built)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


__all__ = ["BuildOptions", "ModelSpec", "Published", "SOURCES", "Source", "closest", "list_names", "listing_sources",
           "load", "model_source", "source", "split"]
