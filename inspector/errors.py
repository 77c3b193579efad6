"""One exception family. Messages are one line and name the layer, its config and the shapes involved,
with a hint at the fix where the mistake is a common one."""
from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple


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


class Hint(NamedTuple):
    """What the user most likely has to change, for an error message matching ``pattern``: ``text``
    in Python's terms, ``cli`` in the command line's (when it differs)."""

    pattern: re.Pattern[str]
    text: str
    cli: str = ""


#: Substrings of common PyTorch errors -> what the user most likely has to change (first match wins).
_HINTS: list[Hint] = [
    Hint(re.compile(r"expected \d+D input \(got (\d+)D input\)|Expected (\d+)D \(unbatched\)|"
                    r"expected (\d+)D or \d+D input", re.I),
         "missing batch dimension? add one with x.unsqueeze(0)",
         "missing batch dimension? put the batch first: --input-size 1,3,224,224 for one 3x224x224 image"),
    Hint(re.compile(r"mat1 and mat2 shapes cannot be multiplied"),
         "the features reaching this Linear differ from its in_features: check the input size, a flatten, or a "
         "missing batch dimension",
         "the features reaching this Linear differ from its in_features: check --input-size (batch first)"),
    Hint(re.compile(r"Expected tensor for argument #1 'indices'"),
         "token ids must be an integer tensor: torch.randint(0, vocab_size, (batch, length))",
         "token ids must be integers: --input-size 1,128:int64 (or --seq-len 128)"),
    Hint(re.compile(r"index out of range in self"),
         "token ids must be below the embedding's num_embeddings (its vocabulary size)"),
    Hint(re.compile(r"scalar type Byte|\bByte\b.*\bFloat\b|unsigned char|ByteTensor", re.I),
         "a uint8 image reached a layer with float weights: convert it first, x.float() / 255 (and normalise "
         "as the model expects)"),
    Hint(re.compile(r"expected scalar type (Long|Int) but found|Input type \(.*(Long|Int|long|int).*\) and "
                    r"(weight|bias) type|\"?\w+\"? not implemented for '(Long|Int)'|Input dtype must be either a "
                    r"floating point.*Got: torch\.int", re.I),
         "this layer needs a floating input: x.float() (integer tensors are token ids, for embeddings)",
         "this layer needs a floating input: give --input-size without :int64 (integer inputs are token ids)"),
    Hint(re.compile(r"Input type \(.*\) and (weight|bias) type \(.*\) should be the same|"
                    r"expected m1 and m2 to have the same dtype|expected both inputs to have same dtype|"
                    r"should be the same dtype|expected scalar type (Half|BFloat16|Float|Double) but found|"
                    r"mixed dtype", re.I),
         "input and weights differ in dtype: pass dtype=... to inspect (--dtype), or cast the input",
         "input and weights differ in dtype: choose one with --dtype"),
    Hint(re.compile(r"Expected all tensors to be on the same device", re.I),
         "a tensor the forward uses is on another device: inspect with device=... (--device) or move it",
         "a tensor the forward uses is on another device: choose one with --device"),
    Hint(re.compile(r"got \(list,|must be Tensor, not list|'list' object has no attribute '(dim|size|shape|view|"
                    r"to|float|reshape|flatten|unsqueeze)'", re.I),
         "the input is a list, which forward receives as one object: pass the tensor itself, inspect(model, x), "
         "or a tuple (x, y) for several positional inputs"),
    Hint(re.compile(r"numpy\.ndarray|received an invalid combination of arguments", re.I),
         "inputs must be torch tensors: torch.from_numpy(x), or torch.tensor(x)"),
    Hint(re.compile(r"(list|tuple) indices must be integers or slices, not str|'(list|tuple)' object has no "
                    r"attribute '(keys|items|get)'", re.I),
         "this forward takes a mapping: pass inputs as a dict (keyword inputs: inputs={...}), or a tuple"),
    Hint(re.compile(r"(missing \d+ required positional argument|takes \d+ positional arguments? but \d+ "
                    r"(were|was) given)"),
         "several positional inputs go in a tuple: inputs=(x, y); a list is one input"),
]


def hint(message: str, cli: bool = False) -> str:
    """A short hint for a common mistake found in ``message`` (in the command line's terms when
    ``cli``), or ''."""
    for found in _HINTS:
        if found.pattern.search(message):
            return (found.cli or found.text) if cli else found.text
    return ""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name."""
    try:
        text = str(exc).strip()
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the real error
        text = ""
    return text.splitlines()[0] if text else type(exc).__name__


def with_hint(message: str, source: str, cli: bool = False) -> str:
    found = hint(source, cli)
    return f"{message} (hint: {found})" if found else message


def hinted(cls: type[InspectorError], message: str, source: str) -> InspectorError:
    """``cls`` with ``message`` and the hint ``source`` calls for; ``cli_message`` holds the same in
    the command line's terms (read by the CLI)."""
    error = cls(with_hint(message, source))
    error.cli_message = with_hint(message, source, cli=True)  # type: ignore[attr-defined]
    return error


@contextmanager
def kept_warnings(heard: list[str] | None = None) -> Iterator[list[str]]:
    """The warnings raised meanwhile (the libraries': torchvision's, transformers'...) kept in a list,
    each once as "Category (file:line): first line", instead of printed."""
    heard = [] if heard is None else heard
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield heard
        finally:
            for w in caught:
                text = str(w.message).strip()
                line = f"{w.category.__name__} ({w.filename.rsplit('/', 1)[-1]}:{w.lineno}): " + \
                    (text.splitlines()[0].strip() if text else "")
                if line not in heard:
                    heard.append(line)
