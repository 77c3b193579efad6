import warnings

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_mod

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
    if isinstance(t, nn.parameter.UninitializedTensorMixin):
        return ("uninitialized", id(t), type(t))
    values = None
    if t.device.type != "meta" and t.layout == torch.strided and not t.is_nested:
        values = t.detach().clone()
    grad = t.grad if t.is_leaf else None
    return (id(t), type(t), t.device, t.dtype, tuple(t.shape),
            t.stride() if t.layout == torch.strided and not t.is_nested else None,
            t.storage_offset() if t.layout == torch.strided and not t.is_nested else None,
            t.requires_grad, id(grad) if grad is not None else None, values)


def _value(v: object) -> object:
    if isinstance(v, torch.Tensor):
        return _tensor(v)
    if isinstance(v, dict):
        return {k: _value(x) for k, x in v.items()}
    if isinstance(v, (set, frozenset)):
        return frozenset(v)
    if isinstance(v, (int, float, str, bool, type(None))):
        return ("plain", v)
    return ("object", id(v), type(v))


def snapshot(model: nn.Module) -> dict:
    """Every module's class, training flag and attributes (tensors by identity, device, dtype, shape,
    strides, requires_grad, .grad and values; dicts such as _parameters, _buffers, _modules and every
    hook dict entry by entry), and the process-wide module hooks."""
    globals_ = {n: dict(v) for n, v in vars(module_mod).items() if n.startswith("_global_") and isinstance(v, dict)}
    modules = {name: (type(m), m.training, {k: _value(v) for k, v in vars(m).items()})
               for name, m in model.named_modules(remove_duplicate=False)}
    return {"globals": globals_, "modules": modules}


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
    if isinstance(before, tuple) and isinstance(after, tuple) and len(before) == len(after):
        return [d for i, (x, y) in enumerate(zip(before, after)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor):
        same = before.shape == after.shape and before.dtype == after.dtype and torch.equal(before, after)
        return [] if same else [f"{path}: values changed"]
    return [] if before == after else [f"{path}: {before!r} -> {after!r}"[:300]]


def assert_untouched(model: nn.Module, before: dict) -> None:
    problems = differences(before, snapshot(model))
    assert not problems, problems[:5]
