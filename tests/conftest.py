import threading
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_mod
from torch.nn.utils import parametrize
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

warnings.filterwarnings("ignore", category=UserWarning)

_skip_without_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def cuda(test):
    """Marks a test ``cuda`` (select them with ``pytest -m cuda``) and skips it without a GPU."""
    return pytest.mark.cuda(_skip_without_cuda(test))


def state_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of the state_dict (meta tensors compared by shape/dtype only)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in after.items():
        assert v.dtype == before[k].dtype and v.device == before[k].device and v.shape == before[k].shape, k
        if v.device.type != "meta":
            assert torch.equal(v, before[k]), f"{k} changed"


def hook_count(model: torch.nn.Module) -> int:
    """Forward hooks on the model's modules, plus the process-wide ones."""
    own = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return own + len(module_mod._global_forward_hooks) + len(module_mod._global_forward_pre_hooks)


# --- a full snapshot of everything observable about a model ------------------------------------------

def _tensor(t: torch.Tensor) -> tuple:
    """Everything observable about one tensor: identity, class, device, dtype, layout, flags, its
    storage (identity and address), values, gradient (identity, dtype and values), its own
    ``__dict__`` and autograd hook dicts."""
    if isinstance(t, nn.parameter.UninitializedTensorMixin):
        return ("uninitialized", id(t), type(t))
    strided = t.layout == torch.strided and not t.is_nested
    values = t.detach().clone() if t.device.type != "meta" and strided else None
    storage = (t.untyped_storage()._cdata, t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) \
        if strided else None
    grad = t.grad if t.is_leaf else None
    grad_state = None if grad is None else (id(grad), grad.dtype, tuple(grad.shape),
                                            grad.detach().clone() if grad.layout == torch.strided else None)
    return (id(t), type(t), t.device, t.dtype, tuple(t.shape),
            t.stride() if strided else None, t.storage_offset() if strided else None,
            t.requires_grad, grad_state, values, storage, _value(vars(t)),
            _value(t._backward_hooks), _value(t._post_accumulate_grad_hooks))


def _value(v: object, depth: int = 0) -> object:
    """Containers entry by entry (their identity, type, order and contents), tensors fully, modules
    and other objects by identity."""
    if isinstance(v, torch.Tensor):
        return _tensor(v)
    if isinstance(v, (int, float, str, bool, type(None))):
        return ("plain", v)
    if isinstance(v, nn.Module) or depth > 6:
        return ("object", id(v), type(v))
    if isinstance(v, dict):
        return ("dict", id(v), type(v), tuple(v), {k: _value(x, depth + 1) for k, x in v.items()})
    if isinstance(v, (list, deque)):
        return ("list", id(v), type(v), len(v), tuple(_value(x, depth + 1) for x in v))
    if isinstance(v, (set, frozenset)):
        return ("set", id(v), type(v), frozenset(id(x) for x in v), frozenset(x for x in v if isinstance(x, str)))
    if isinstance(v, tuple):
        return ("tuple", id(v), type(v), len(v), tuple(_value(x, depth + 1) for x in v))
    return ("object", id(v), type(v))


def _process() -> dict:
    """What a run could leave changed outside the model: process-wide hooks, parametrize's cache,
    patched methods, grad mode and the dispatch-mode stack."""
    return {"globals": {n: dict(v) for n, v in vars(module_mod).items() if n.startswith("_global_") and isinstance(v, dict)},
            "parametrize": (dict(parametrize._cache), parametrize._cache_enabled),
            "patched": tuple(torch.Tensor.__dict__.get(n) for n in ("numpy", "__dlpack__"))
            + (ThreadPoolExecutor.__dict__["submit"], threading.Thread.__dict__["start"]),
            "grad": torch.is_grad_enabled(), "modes": len(_get_current_dispatch_mode_stack())}


def snapshot(model: nn.Module) -> dict:
    """Every module's class, training flag and attributes (tensors by identity, storage, device,
    dtype, shape, strides, requires_grad, .grad, hooks and values; dicts such as _parameters,
    _buffers, _modules and every hook dict entry by entry; lists, sets and tuples element by
    element), a TorchScript module's state, and the process state around it."""
    modules = {}
    for name, m in model.named_modules(remove_duplicate=False):
        own = {k: _value(v) for k, v in vars(m).items()}
        if isinstance(m, torch.jit.ScriptModule):
            own["(script state)"] = {k: _tensor(v) for k, v in m.state_dict(keep_vars=True).items()}
        modules[name] = (type(m), m.training, own)
    return {"process": _process(), "modules": modules}


def differences(before: object, after: object, path: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for k in before.keys() | after.keys():
            if k not in before:
                out.append(f"{path}.{k} added")
            elif k not in after:
                out.append(f"{path}.{k} removed")
            else:
                out += differences(before[k], after[k], f"{path}.{k}")
        return out
    if isinstance(before, tuple) and isinstance(after, tuple):
        if len(before) != len(after):
            return [f"{path}: {len(before)} entries -> {len(after)}"]
        return [d for i, (x, y) in enumerate(zip(before, after)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor):
        same = before.shape == after.shape and before.dtype == after.dtype and torch.equal(before, after)
        return [] if same else [f"{path}: values changed"]
    if isinstance(before, torch.Tensor) or isinstance(after, torch.Tensor):
        return [f"{path}: {type(before).__name__} -> {type(after).__name__}"]
    return [] if before == after else [f"{path}: {before!r} -> {after!r}"[:300]]


def assert_untouched(model: nn.Module, before: dict) -> None:
    problems = differences(before, snapshot(model))
    assert not problems, problems[:5]


def optimizer_snapshot(optimizer: torch.optim.Optimizer) -> dict:
    """An optimizer's state and groups: tensors fully (values, identity), parameters by identity."""
    return {"state": {id(p): _value(state) for p, state in optimizer.state.items()},
            "groups": tuple({k: tuple(map(id, v)) if k == "params" else _value(v) for k, v in g.items()}
                            for g in optimizer.param_groups),
            "params": tuple(_tensor(p) for g in optimizer.param_groups for p in g["params"])}
