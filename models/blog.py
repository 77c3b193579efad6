"""The networks of the teaching post "CNN vs ANN Operations", as real ``torch.nn`` modules.

Every class defaults to the post's sizes and can be resized; each knows its example input
(``example_input()``) so that ``inspect(model)`` needs no arguments.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class _ExampleInput:
    """Mixin: a model that knows the shape of the input it was designed for."""

    input_size: tuple[int, ...]

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A random float input of ``input_size`` with the given batch size."""
        return torch.randn(batch, *self.input_size[1:])


class BlogANN(_ExampleInput, nn.Module):
    """Dense network on a flattened image: ``side*side*channels -> hidden... -> classes``.

    Defaults are the post's anchor: 4x4 grayscale, 16 -> 8 -> 2 (154 parameters).
    """

    def __init__(self, side: int = 4, channels: int = 1, hidden: Sequence[int] = (8,),
                 classes: int = 2, activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.sizes = (side * side * channels, *hidden, classes)
        self.input_size = (1, channels, side, side)
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (n_in, n_out) in enumerate(zip(self.sizes, self.sizes[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(self.sizes) - 2:
                layers.append(activation())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BlogCNN(_ExampleInput, nn.Module):
    """One convolution, optional max-pool, then a dense classifier.

    Defaults are the post's count: Conv2d(1, 2, 3) on 4x4 -> flatten the 2x2x2 map -> Linear(8, 2)
    (38 parameters). ``pool=2`` gives the variant the post's text describes but does not count:
    Conv -> MaxPool(2) -> Linear(2, 2) (26 parameters).
    """

    def __init__(self, side: int = 4, channels: int = 1, filters: int = 2, kernel: int = 3,
                 classes: int = 2, pool: int | None = None, padding: int = 0) -> None:
        super().__init__()
        self.input_size = (1, channels, side, side)
        self.side, self.channels, self.filters, self.kernel = side, channels, filters, kernel
        self.classes, self.pool, self.padding = classes, pool, padding
        conv_side = side + 2 * padding - kernel + 1
        if conv_side < 1:
            raise ValueError(f"kernel {kernel} does not fit a {side}x{side} image")
        layers: list[nn.Module] = [nn.Conv2d(channels, filters, kernel, padding=padding), nn.ReLU()]
        if pool:
            layers.append(nn.MaxPool2d(pool))
            conv_side //= pool
        layers += [nn.Flatten(), nn.Linear(filters * conv_side * conv_side, classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DenseFirstLayer(_ExampleInput, nn.Module):
    """The post's scale-up: a 224x224 RGB image flattened into 100 neurons (15,052,900 parameters)."""

    def __init__(self, side: int = 224, channels: int = 3, neurons: int = 100) -> None:
        super().__init__()
        self.input_size = (1, channels, side, side)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(side * side * channels, neurons)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(x))


class ConvFirstLayer(_ExampleInput, nn.Module):
    """The post's scale-up: 64 filters of 3x3x3 on a 224x224 RGB image (1,792 parameters).

    ``padding`` is ``"valid"`` (no padding, 222x222 output) or ``"same"`` (224x224 output).
    """

    def __init__(self, side: int = 224, channels: int = 3, filters: int = 64, kernel: int = 3,
                 padding: str | int = "valid") -> None:
        super().__init__()
        self.input_size = (1, channels, side, side)
        self.conv = nn.Conv2d(channels, filters, kernel, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


# The post's whole-network formulas, registered as the closed forms of its networks: cross-checks
# compare them with what the op-level counter measured on the real modules.
from inspector.closed_forms import ClosedForm, closed_form, conv_then_dense, dense_stack  # noqa: E402


@closed_form(BlogANN)
def _blog_ann_form(m: BlogANN, args: tuple, kwargs: dict, out: tuple) -> ClosedForm:
    return dense_stack(m.sizes, batch=args[0][0])


@closed_form(BlogCNN)
def _blog_cnn_form(m: BlogCNN, args: tuple, kwargs: dict, out: tuple) -> ClosedForm:
    return conv_then_dense(m.side, m.channels, m.filters, m.kernel, m.classes, m.pool, m.padding,
                           batch=args[0][0])
