"""Your own models: ``path/to/net.py:Net`` or ``package.module:factory`` (also ``py:...``).

The object named after the colon is a module instance, an ``nn.Module`` class (called with no
arguments) or a factory function (called with no arguments). Import paths are resolved with the
current directory first on ``sys.path``, as ``uvicorn app:main`` does. Inputs: ``input_size`` when
given, else the model's own ``example_input()``, else ``inspect`` infers what it can.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from torch import nn

from inspector.errors import InspectorError, NotAModuleError, UnknownModelError, first_line
from inspector.sources import BuildOptions, ModelSpec, model_source
from inspector.tree import attribute


def _import_file(path: Path) -> Any:
    """Import a .py file under a name of its own (two files called net.py do not collide)."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    module_name = f"_inspector_user_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UnknownModelError(f"cannot import {str(path)!r} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(path.resolve().parent))  # its own sibling imports
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:  # script code run at import: said, never obeyed
        del sys.modules[module_name]
        raise InspectorError(f"{path} called sys.exit({exc.code!r}) while being imported: put its script code under "
                             "if __name__ == '__main__':") from None
    except SyntaxError as exc:
        del sys.modules[module_name]
        code = f": {exc.text.strip()}" if exc.text else ""
        raise InspectorError(f"{path} line {exc.lineno}: {exc.msg} (a syntax error in the model file){code}") from None
    except Exception as exc:
        del sys.modules[module_name]
        raise InspectorError(f"importing {path} failed: {type(exc).__name__}: {first_line(exc)}") from exc
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def _models_in(module: Any) -> list[str]:
    """What a model name may point at in ``module``: Module instances, Module classes and functions
    (factories) defined there (imports such as ``torch`` or ``nn`` left out)."""
    found = []
    for name, obj in vars(module).items():
        if name.startswith("_"):
            continue
        if isinstance(obj, nn.Module):
            found.append(name)
        elif getattr(obj, "__module__", None) == module.__name__ and (
                (isinstance(obj, type) and issubclass(obj, nn.Module)) or inspect.isfunction(obj)):
            found.append(name)
    return sorted(found)


def _import_path(dotted: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(dotted)
    except SystemExit as exc:
        raise InspectorError(f"{dotted} called sys.exit({exc.code!r}) while being imported: put its script code under "
                             "if __name__ == '__main__':") from None
    except ModuleNotFoundError as exc:
        raise UnknownModelError(f"cannot import {dotted!r}: {exc} (import paths are looked up from the current "
                                f"directory, {cwd})") from None
    except SyntaxError as exc:
        raise InspectorError(f"{exc.filename} line {exc.lineno}: {exc.msg} (a syntax error in the model "
                             "file)") from None


def resolve_object(spec: str) -> Any:
    """The Python object ``spec`` (``file.py:attr`` or ``package.module:attr``; attr may be dotted)."""
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise UnknownModelError(f"{spec!r} is not FILE.py:NAME or package.module:NAME")
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = Path(where)
        if not path.is_file():
            raise UnknownModelError(f"no such file {where!r} (from {spec!r})")
        module = _import_file(path)
    else:
        module = _import_path(where)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            models = _models_in(module)
            close = difflib.get_close_matches(attr, models, n=3, cutoff=0.6)
            listed = f"; did you mean {', '.join(close)}?" if close else ""
            defines = (f"; its modules, Module classes and functions: {', '.join(models[:12])}" if models else
                       "; it defines no module, Module class or function")
            raise UnknownModelError(f"{where} has no {attr!r}{listed}{defines}")
        obj = getattr(obj, part)
    return obj


def instantiate(obj: Any, spec: str) -> nn.Module:
    """A module from a module, a Module subclass or a factory (both called with no arguments)."""
    if isinstance(obj, nn.Module):
        return obj
    if not callable(obj):
        raise NotAModuleError(f"{spec} is a {type(obj).__name__}, not a module, a Module class or a factory")
    try:
        built = obj()
    except TypeError as exc:
        raise InspectorError(f"{spec} could not be called with no arguments ({exc}); write a factory "
                             "function that builds it and name that instead") from None
    except SystemExit as exc:
        raise InspectorError(f"{spec}() called sys.exit({exc.code!r}) while building the model") from None
    if not isinstance(built, nn.Module):
        raise NotAModuleError(f"{spec}() returned a {type(built).__name__}, not a torch.nn.Module")
    return built


@model_source("py")
class PythonSource:
    description = "your own code: path/to/net.py:Net or package.module:factory"

    def build(self, name: str, options: BuildOptions) -> ModelSpec:
        """``input_size`` when given; else ``seq_len`` token ids (batch ``batch``); else the model's own
        ``example_input(batch=...)`` when it takes a batch; else ``inspect`` infers what it can."""
        module = instantiate(resolve_object(name), name)
        label = name.rpartition(":")[2]
        if options.input_size is not None:
            return ModelSpec(name=label, module=module, input_size=options.input_size)
        if options.seq_len is not None:
            return ModelSpec(name=label, module=module, input_size=((options.batch or 1, options.seq_len), "int64"))
        example = attribute(module, "example_input")
        if options.batch is not None and callable(example):
            try:
                takes_batch = "batch" in inspect.signature(example).parameters
            except (TypeError, ValueError):
                takes_batch = False
            if takes_batch:
                x = example(batch=options.batch)
                return ModelSpec(name=label, module=module, args=x if isinstance(x, tuple) else (x,))
        if options.batch is not None:
            raise InspectorError(f"{label} has no example_input(batch=...): give its input with --input-size")
        return ModelSpec(name=label, module=module)

    lists = False
    families: tuple[str, ...] = ()

    def names(self, family: str | None = None) -> list[str]:
        return []

    def catalogue(self, family: str | None = None) -> list[dict[str, Any]]:
        return []
