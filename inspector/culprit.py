"""Where an exception was raised, read from its traceback: the innermost of the model's module
calls it passed through (``nn.Module.__call__`` frames hold the module as ``self``), that call's
arguments, and the hook of that module it was raised in. Attribution from the frame that really
raised: a parent that caught a child's exception and then failed itself is the culprit, a hook that
fails after its layer's forward returned names that layer, and a pass without hooks (a timed one)
still names the layer."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Raised:
    module: nn.Module
    hook: str | None  # the module's hook it was raised in (None: its forward)
    args: tuple
    kwargs: dict


#: The code of nn.Module.__call__: a traceback frame running it holds the module as ``self``.
_CALL_CODES = frozenset(f.__code__ for f in (nn.Module._call_impl, nn.Module._wrapped_call_impl))


def raising_module(exc: BaseException, names: Mapping[int, str]) -> Raised | None:
    """Where ``exc`` was raised, read from its traceback: the innermost of the model's modules
    (``names``: by id) whose call it passed through, with that call's arguments, and the hook of that
    module it was raised in (None: its forward)."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code in _CALL_CODES:
            module = frame.f_locals.get("self")
            if module is not None and id(module) in names:
                found = Raised(module, _hook_name(module, tb.tb_next), frame.f_locals.get("args", ()),
                               frame.f_locals.get("kwargs") or {})
        tb = tb.tb_next
    return found


def _hook_name(module: nn.Module, tb: Any) -> str | None:
    """The hook of ``module`` that the traceback below its __call__ (``tb``) runs, if any."""
    try:
        codes = {getattr(h, "__code__", None): h for h in (*module._forward_pre_hooks.values(),
                                                             *module._forward_hooks.values())}
    except (AttributeError, TypeError):  # TorchScript modules keep no Python hooks
        return None
    codes.pop(None, None)
    while codes and tb is not None and tb.tb_frame.f_code not in _CALL_CODES:
        hook = codes.get(tb.tb_frame.f_code)
        if hook is not None:
            return getattr(hook, "__qualname__", tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return None
