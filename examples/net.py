"""A small network to try the command line on: ``inspector summary examples/net.py:Net``."""
import torch
from torch import nn


class Net(nn.Module):
    """Two 3x3 convolutions, a pooling and a classifier, for 32x32 colour images."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.randn(batch, 3, 32, 32)
