"""The cost of a training step: backward MACs by hand and against FlopCounterMode, memory against
MemTracker, the model untouched. Every expected number is hand arithmetic or an independent tool."""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from inspector import InputError, inspect
from models import BlogANN, BlogCNN
from tests.conftest import assert_untouched, snapshot


def test_post_networks_backward_by_hand():
    ann = inspect(BlogANN(), backward=True)
    # weight gradients 16x8 = 128 and 8x2 = 16; the second layer's input gradient 8x2 = 16; the first
    # layer computes no input gradient (the image needs none)
    assert ann.total_backward_macs == 128 + 16 + 16 == 160
    assert (ann.layer("net.1").backward_macs, ann.layer("net.3").backward_macs) == (128, 32)
    cnn = inspect(BlogCNN(), backward=True)
    # conv weight gradient = its forward 72; the linear: weight 16 + input 16
    assert cnn.total_backward_macs == 72 + 16 + 16
    assert ann.crosscheck() == [] and cnn.crosscheck() == []
    # both Linears' backward are checked against their closed forms (1 x and 2 x their forward)
    assert [r.expected_backward_macs for r in ann.layers if r.type == "Linear"] == [128, 32]


class Attention(nn.Module):
    def __init__(self, d: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, length, d = x.shape

        def split(t):
            return t.view(b, length, self.heads, d // self.heads).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.o(a.transpose(1, 2).reshape(b, length, d))


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_attention_block_backward_by_hand(device):
    """q, k, v: weight gradients only (x needs none): 3 x 2*5*16*16. Attention: the four gradient
    products B*H*L*S*(2E + 2Ev) = 2*4*5*5*(8 + 8), on the CPU's flash kernel (which also recomputes
    the scores, not counted) and on meta's math path alike. o: weight and input gradients."""
    report = inspect(Attention(), torch.randn(2, 5, 16), backward=True, device=device)
    assert report.total_backward_macs == 3 * 2560 + 2 * 4 * 5 * 5 * (2 * 4 + 2 * 4) + 2 * 2560 == 16_000
    assert report.layer("").backward_macs == 3200 and report.layer("o").backward_macs == 5120
    assert report.crosscheck() == []


_TORCH_CONV_BACKWARD = flop_registry[torch.ops.aten.convolution_backward]  # torch's own formula, on shapes


def _group_aware_conv_backward(grad_out, x, w, bias, stride, padding, dilation, transposed, output_padding, groups,
                               output_mask, out_shape=None, **kwargs):
    """torch's own conv_backward_flop, with the weight gradient divided by ``groups``: releases before
    pytorch/pytorch#183405 count a grouped (depthwise) convolution's weight gradient as if it were
    dense. Checked against multiplies counted by loops in test_depthwise_weight_gradient_by_loops."""
    data = _TORCH_CONV_BACKWARD(grad_out, x, w, bias, stride, padding, dilation, transposed, output_padding, groups,
                                [output_mask[0], False, False], out_val=out_shape)
    weight = _TORCH_CONV_BACKWARD(grad_out, x, w, bias, stride, padding, dilation, transposed, output_padding, groups,
                                  [False, output_mask[1], False], out_val=out_shape)
    return data + (weight // groups if not _TORCH_GROUP_AWARE else weight)


def _torch_is_group_aware() -> bool:
    """Whether torch's formula already divides by groups (8 channels, 3x3 taps, 8x8 outputs: 4608)."""
    conv = nn.Conv2d(8, 8, 3, groups=8, bias=False)
    with FlopCounterMode(display=False) as counter:
        conv(torch.randn(1, 8, 10, 10)).sum().backward()
    return counter.get_flop_counts()["Global"][torch.ops.aten.convolution_backward] // 2 == 4608


_TORCH_GROUP_AWARE = _torch_is_group_aware()


def test_depthwise_weight_gradient_by_loops():
    """Each of 8 x 9 depthwise weights sums grad_out x input over 8 x 8 positions: 4608 multiplies,
    the forward's count. inspector agrees; the reference formula above does too."""
    multiplies = sum(1 for _c in range(8) for _kh in range(3) for _kw in range(3) for _i in range(8) for _j in range(8))
    conv = nn.Conv2d(8, 8, 3, groups=8, bias=False)
    report = inspect(conv, torch.randn(1, 8, 10, 10), backward=True)
    assert report.total_backward_macs == multiplies == 4608  # weight gradient only: the input needs none
    shapes = ((1, 8, 8, 8), (1, 8, 10, 10), (8, 1, 3, 3))
    flops = _group_aware_conv_backward(*shapes, None, (1, 1), (0, 0), (1, 1), False, (0, 0), 8, [False, True, False],
                                       out_shape=[None, (8, 1, 3, 3), None])
    assert flops // 2 == multiplies


def _flop_counter_backward_macs(model: nn.Module, x: torch.Tensor) -> int:
    mapping = {torch.ops.aten.convolution_backward: _group_aware_conv_backward}
    model.train()
    with FlopCounterMode(display=False, custom_mapping=mapping) as forward:
        model(x)
    with FlopCounterMode(display=False, custom_mapping=mapping) as step:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return (step.get_total_flops() - forward.get_total_flops()) // 2


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0"])
def test_backward_macs_equal_flop_counter_mode(name):
    model = getattr(torchvision.models, name)(weights=None)
    x = torch.randn(2, 3, 224, 224)
    before = snapshot(model)
    cpu = inspect(model, x, backward=True)
    meta = inspect(model, x, backward=True, device="meta")
    assert_untouched(model, before)
    assert cpu.total_backward_macs == meta.total_backward_macs == _flop_counter_backward_macs(model, x)
    assert [r.backward_macs for r in cpu.layers] == [r.backward_macs for r in meta.layers]
    assert cpu.crosscheck() == []


def test_frozen_layers_get_no_weight_gradient():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    model[0].requires_grad_(False)
    report = inspect(model, torch.randn(4, 8), backward=True)
    # the frozen first layer: nothing (its input needs no gradient either); the second: its weight
    # gradient only, since nothing before it needs its input's gradient
    assert report.layer("0").backward_macs == 0
    assert report.total_backward_macs == 4 * 8 * 2
    assert report.training.memory.gradients == (8 * 2 + 2) * 4 and report.crosscheck() == []


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Checkpointed(nn.Module):
    def __init__(self, use_checkpoint: bool) -> None:
        super().__init__()
        self.inp = nn.Linear(16, 16)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.use_checkpoint = use_checkpoint

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.use_checkpoint else block(x)
        return x


def test_checkpoint_recomputation_is_backward_work_and_shrinks_activations():
    """Each checkpointed block recomputes what backward needs: its first Linear (4 x 16 x 16) and
    the ReLU after it; the second Linear's output is not needed, so torch stops before it."""
    x = torch.randn(4, 16)
    plain = inspect(Checkpointed(False), x, backward=True)
    ckpt = inspect(Checkpointed(True), x, backward=True)
    assert plain.total_macs == ckpt.total_macs == 5 * 4 * 16 * 16
    # backward without checkpointing: inp weight grad 1024, four linears weight + input 4 x 2048
    assert plain.total_backward_macs == 1024 + 4 * 2048
    assert ckpt.total_backward_macs == plain.total_backward_macs + 2 * 4 * 16 * 16
    assert ckpt.layer("").inclusive_recompute_macs == 2 * 1024 and ckpt.layer("blocks.0.a").recompute_macs == 1024
    assert ckpt.training.memory.activations < plain.training.memory.activations
    assert ckpt.crosscheck() == []


def test_the_model_comes_back_untouched_after_a_step():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    before = snapshot(model)
    report = inspect(model, torch.randn(2, 3, 8, 8), backward=True, optimizer="adam")
    assert report.training.memory.optimizer_state > 0
    assert_untouched(model, before)  # no .grad, no optimizer state, BatchNorm statistics as they were
    assert all(p.grad is None for p in model.parameters())


def test_resnet18_step_memory_against_memtracker():
    """resnet18, batch 8, AdamW, on the CPU. Parameters: 11,689,512 floats; AdamW: two moments per
    parameter and a step counter per tensor (62 tensors). Activations and the peak against
    PyTorch's MemTracker on the same step (its second iteration: optimizer state allocated)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    x = torch.randn(8, 3, 224, 224)
    memory = inspect(model, x, backward=True, optimizer="adamw").training.memory
    assert memory.parameters == 11_689_512 * 4 and memory.gradients == 11_689_512 * 4
    assert memory.optimizer_state == 2 * 11_689_512 * 4 + 62 * 4

    net = torchvision.models.resnet18(weights=None).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    tracker = MemTracker()
    tracker.track_external(net, optimizer)
    device = torch.device("cpu")
    with tracker:
        for i in range(2):
            loss = net(x).sum()
            if i == 1:
                after_forward = tracker.get_tracker_snapshot("current")[device]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i == 0:
                tracker.reset_mod_stats()
    peak = tracker.get_tracker_snapshot("peak")[device]
    activations = next(v for k, v in after_forward.items() if str(k).endswith("ACT"))
    assert abs(memory.activations / activations - 1) < 0.05
    # MemTracker leaves out the input, which was made before it started: compare without it
    assert abs((memory.peak - memory.inputs) / peak["Total"] - 1) < 0.05
    assert memory.peak_phase == "backward"


def test_llama_7b_step_on_meta():
    """A Llama-7B-sized config (hidden 4096, 32 layers, intermediate 11008, vocab 32000) at 512 tokens:
    the whole step estimated without allocating. Per token and layer: q, k, v, o 4 x 4096^2 and the
    MLP 3 x 4096 x 11008; attention 2 x 512 x 4096 per token; the head 4096 x 32000. Backward:
    every Linear computes weight and input gradients (2 x its forward), attention its four gradient
    products (2 x its forward)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=4096, num_hidden_layers=32, intermediate_size=11008,
                                      vocab_size=32000, num_attention_heads=32, num_key_value_heads=32)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    ids = torch.randint(0, 32000, (1, 512), device="meta")
    report = inspect(model, {"input_ids": ids}, device="meta", backward=True, optimizer="adamw")
    tokens, d = 512, 4096
    linear = tokens * (32 * (4 * d * d + 3 * d * 11008) + d * 32000)
    attention = 32 * 2 * tokens * tokens * d
    assert report.total_macs == linear + attention
    assert report.total_backward_macs == 2 * linear + 2 * attention
    params = 6_738_415_616
    assert report.total_params == params
    memory = report.training.memory
    assert (memory.parameters, memory.gradients) == (4 * params, 4 * params)
    assert memory.optimizer_state == 2 * 4 * params + 4 * len(list(model.parameters()))
    assert memory.peak > memory.parameters + memory.gradients + memory.optimizer_state
    assert report.crosscheck() == []


def test_cpu_and_meta_steps_agree():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))
    x = torch.randn(2, 3, 8, 8)
    cpu = inspect(model, x, backward=True, optimizer="adam")
    meta = inspect(model, x, backward=True, optimizer="adam", device="meta")
    assert cpu.total_backward_macs == meta.total_backward_macs
    assert cpu.training.memory == meta.training.memory


def test_dtype_and_autocast():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    x = torch.randn(1024, 64)  # activations dominate: autocast saves them in bfloat16
    full = inspect(model, x, backward=True, optimizer="sgd").training.memory
    half = inspect(model, x, backward=True, optimizer="sgd", dtype="bfloat16").training.memory
    assert half.parameters * 2 == full.parameters and half.gradients * 2 == full.gradients
    plain = inspect(model, x, backward=True)
    mixed = inspect(model, x, backward=True, autocast="bfloat16")
    assert mixed.training.autocast == "bfloat16" and mixed.total_backward_macs == plain.total_backward_macs
    # float32: the ReLU's output (1024 x 64), saved once for the ReLU and the second Linear; the input
    # and the weights are not activations
    assert plain.training.memory.activations == 1024 * 64 * 4
    # autocast saves bfloat16 casts: the input (for the first weight's gradient), the ReLU's output,
    # and the second weight (for its input gradient), 2 bytes each
    assert mixed.training.memory.activations == 2 * (1024 * 64 + 1024 * 64 + 8 * 64)
    with pytest.raises(InputError, match="autocast"):
        inspect(model, x, backward=True, autocast="bfloat16", device="meta")


@pytest.mark.parametrize("optimizer,state_per_param", [("sgd", 0), ("momentum", 1), ("adam", 2), ("adamw", 2),
                                                       (torch.optim.RMSprop, 1),
                                                       (lambda params: torch.optim.Adagrad(params, lr=0.1), 1)])
def test_optimizers_by_name_class_or_factory(optimizer, state_per_param):
    model = nn.Linear(10, 10)  # 110 parameters in 2 tensors
    memory = inspect(model, torch.randn(4, 10), backward=True, optimizer=optimizer).training.memory
    steps = 2 * 4 if optimizer in ("adam", "adamw", torch.optim.RMSprop) or callable(optimizer) and not isinstance(
        optimizer, str) else 0
    assert memory.optimizer_state - steps == state_per_param * 110 * 4


def test_bad_training_arguments():
    model = nn.Linear(4, 4)
    with pytest.raises(InputError, match="optimizer"):
        inspect(model, torch.randn(2, 4), backward=True, optimizer="lion")
    with pytest.raises(InputError, match="class or a factory"):
        inspect(model, torch.randn(2, 4), backward=True, optimizer=torch.optim.SGD(model.parameters(), lr=1))
    with pytest.raises(InputError, match="scalar"):
        inspect(model, torch.randn(2, 4), backward=True, loss_fn=lambda out: out)
    frozen = nn.Linear(4, 4).requires_grad_(False)
    with pytest.raises(InputError, match="trainable"):
        inspect(frozen, torch.randn(2, 4), backward=True)


def test_the_loss_is_not_the_model_s_work_and_optimizer_errors_are_one_line():
    model = nn.Linear(16, 16)
    x = torch.randn(4, 16)
    assert inspect(model, x, backward=True, loss_fn=lambda o: (o @ o.T).sum()).total_macs == 4 * 16 * 16
    with pytest.raises(InputError, match="no trainable parameter"):
        inspect(nn.Linear(2, 2).requires_grad_(False), torch.randn(1, 2), backward=True, optimizer="sgd")
    with pytest.raises(InputError, match="Invalid learning rate"):
        inspect(model, x, backward=True, optimizer=lambda params: torch.optim.SGD(params, lr=-1))
