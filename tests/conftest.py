import warnings

import pytest
import torch

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
    """Forward hooks on the model's modules, plus the process-wide ones (inspector uses one)."""
    from torch.nn.modules import module as module_mod

    own = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return own + len(module_mod._global_forward_hooks) + len(module_mod._global_forward_pre_hooks)
