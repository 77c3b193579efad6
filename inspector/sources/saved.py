"""Models saved with ``torch.save``: ``path/to/model.pt`` or ``.pth`` (also ``pt:path``).

A file holding a whole pickled module is loaded only when the caller trusts it (``trust_pickle=True``,
the command line's ``--trust-pickle``): unpickling runs code stored in the file. Without that, the
error says so. A state_dict (or a checkpoint holding one) has no architecture: the error says how to
name the model's code instead. TorchScript archives are refused: hooks cannot see inside them.
"""
from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inspector.errors import InspectorError, NotAModuleError, UnknownModelError, UnsupportedModelError, first_line
from inspector.sources import BuildOptions, ModelSpec, model_source


_PICKLED = object()


def _torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding compiled code and constants)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def _tensors(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _holds(name: str, obj: Any) -> InspectorError:
    """The one-line error for a file that holds no module: what it holds and what to do instead."""
    if _tensors(obj):
        what = f"a state_dict ({len(obj)} tensors: the weights, without the architecture)"
    elif isinstance(obj, Mapping) and any(_tensors(v) for v in obj.values()):
        key = next(k for k, v in obj.items() if _tensors(v))
        what = f"a checkpoint whose {key!r} entry is a state_dict (weights, without the architecture)"
    else:
        what = f"a {type(obj).__name__}, not a model"
    return InspectorError(f"{name} holds {what}: counting needs the model's code, not its weights; name the class "
                          f"or a factory that builds it instead, e.g. path/to/net.py:Net (weights do not change the "
                          f"counts; to load them anyway: model.load_state_dict(torch.load({name!r})))")


def load_saved(name: str, device: str, trust_pickle: bool) -> nn.Module:
    """The module saved whole in ``name`` (see the module docstring for what is refused)."""
    path = Path(name)
    if not path.is_file():
        raise UnknownModelError(f"no such file {name!r}")
    if _torchscript(path):
        raise UnsupportedModelError(f"{name} is a TorchScript archive: hooks do not run inside it; inspect the eager "
                                    "nn.Module it was scripted or traced from (path/to/net.py:Net)")
    try:
        held = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        held = _PICKLED  # Python objects beyond tensors: a pickled module, most likely
    except (RuntimeError, EOFError, OSError) as exc:
        raise InspectorError(f"{name} is not a file torch.load can read: {first_line(exc)}") from None
    if held is not _PICKLED:
        raise _holds(name, held)
    if not trust_pickle:
        raise InspectorError(f"{name} holds a pickled model: loading it runs code stored in the file (Python's "
                             f"pickle); if you trust where it came from, add --trust-pickle (Python: "
                             f"load({name!r}, trust_pickle=True))")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=device, weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as exc:
        raise InspectorError(f"{name} pickles a class that cannot be imported here ({first_line(exc)}): pickled "
                             "models need their code importable under the same module name; name the class "
                             "instead: path/to/net.py:Net") from None
    if not isinstance(obj, nn.Module):
        raise _holds(name, obj) if isinstance(obj, Mapping) else NotAModuleError(
            f"{name} holds a {type(obj).__name__}, not a torch.nn.Module")
    return obj


@model_source("pt")
class SavedSource:
    description = "a model saved whole with torch.save: path/to/model.pt or .pth (runs the file's code: --trust-pickle)"
    suffixes = (".pt", ".pth")
    lists = False
    families: tuple[str, ...] = ()

    def build(self, name: str, options: BuildOptions) -> ModelSpec:
        """The module, on ``device``; inputs: ``input_size`` when given, else what ``inspect`` infers."""
        module = load_saved(name, options.device, options.trust_pickle)
        note = f"{name} loaded with torch.load(weights_only=False): its pickled code ran (trusted by the caller)"
        return ModelSpec(name=Path(name).stem, module=module, input_size=options.input_size, device=options.device,
                         notes=(note,))

    def names(self, family: str | None = None) -> list[str]:
        return []

    def catalogue(self, family: str | None = None) -> list[dict[str, Any]]:
        return []
