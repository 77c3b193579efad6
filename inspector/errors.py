"""One exception family. Messages are one line and name the layer, its config and the shapes involved,
with a hint at the fix where the mistake is a common one."""
from __future__ import annotations

import re


#: What a model's own code may raise that is its failure, to be reported in one line: any exception,
#: and ``SystemExit`` (a forward calling ``sys.exit``). ``KeyboardInterrupt`` is an interruption: it
#: passes through.
MODEL_FAILURES = (Exception, SystemExit)


class InspectorError(Exception):
    """Base class of every error this package raises on purpose."""


class NotAModuleError(InspectorError, TypeError):
    """The object handed to ``inspect`` is not a ``torch.nn.Module`` instance."""


class UnsupportedModelError(InspectorError, TypeError):
    """A model kind that cannot be inspected (TorchScript, an empty module...)."""


class InputError(InspectorError, ValueError):
    """Arguments or inputs that cannot be used: a bad ``input_size``, missing arguments, wrong device."""


class LayerError(InspectorError, RuntimeError):
    """The forward (or backward) pass failed inside a layer; the message names it, its config and the shapes."""


class MetaDeviceError(LayerError):
    """An operation that needs tensor values (``.item()``, ``nonzero``, ``bool(tensor)``) ran on the meta
    device, which holds shapes only."""


class UnknownModelError(InspectorError, KeyError):
    """A model name no source knows; the message lists the closest names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RegistryError(InspectorError, ValueError):
    """A formula registered twice for the same key, or for an operator that does not exist."""


#: Substrings of common PyTorch errors -> what the user most likely has to change.
_HINTS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"expected \d+D input \(got (\d+)D input\)|Expected (\d+)D \(unbatched\)|"
                r"expected (\d+)D or \d+D input", re.I),
     "missing batch dimension? add one with x.unsqueeze(0)"),
    (re.compile(r"mat1 and mat2 shapes cannot be multiplied"),
     "the features reaching this Linear differ from its in_features: check the input size, a flatten, or a "
     "missing batch dimension"),
    (re.compile(r"Expected tensor for argument #1 'indices'"),
     "token ids must be an integer tensor: torch.randint(0, vocab_size, (batch, length))"),
    (re.compile(r"index out of range in self"),
     "token ids must be below the embedding's num_embeddings (its vocabulary size)"),
    (re.compile(r"expected scalar type (Long|Int) but found|Input type \(.*(Long|Int|long|int).*\) and "
                r"(weight|bias) type|\"?\w+\"? not implemented for '(Long|Int)'", re.I),
     "this layer needs a floating input: x.float() (integer tensors are token ids, for embeddings)"),
    (re.compile(r"Input type \(.*\) and (weight|bias) type \(.*\) should be the same|"
                r"expected m1 and m2 to have the same dtype|expected both inputs to have same dtype|"
                r"should be the same dtype|expected scalar type (Half|BFloat16|Float|Double) but found|"
                r"mixed dtype", re.I),
     "input and weights differ in dtype: pass dtype=... to inspect (--dtype), or cast the input"),
    (re.compile(r"Expected all tensors to be on the same device", re.I),
     "a tensor the forward uses is on another device: inspect with device=... (--device) or move it"),
    (re.compile(r"numpy\.ndarray|received an invalid combination of arguments", re.I),
     "inputs must be torch tensors: torch.from_numpy(x), or torch.tensor(x)"),
    (re.compile(r"(list|tuple) indices must be integers or slices, not str|'(list|tuple)' object has no "
                r"attribute '(keys|items|get)'", re.I),
     "this forward takes a mapping: pass inputs as a dict (keyword inputs: inputs={...}), or a tuple"),
    (re.compile(r"(missing \d+ required positional argument|takes \d+ positional arguments? but \d+ "
                r"(were|was) given)"),
     "several positional inputs go in a tuple: inputs=(x, y); a list is one input"),
]


def hint(message: str) -> str:
    """A short hint for a common mistake found in ``message``, or ''."""
    for pattern, text in _HINTS:
        if pattern.search(message):
            return text
    return ""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name."""
    try:
        text = str(exc).strip()
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the real error
        text = ""
    return text.splitlines()[0] if text else type(exc).__name__


def with_hint(message: str, source: str) -> str:
    found = hint(source)
    return f"{message} (hint: {found})" if found else message
