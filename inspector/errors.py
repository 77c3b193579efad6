"""One exception family. Messages are one line and name the layer and the shapes involved."""
from __future__ import annotations


class InspectorError(Exception):
    """Base class of every error this package raises on purpose."""


class NotAModuleError(InspectorError, TypeError):
    """The object handed to ``inspect`` is not a ``torch.nn.Module``."""


class UnsupportedModelError(InspectorError, TypeError):
    """A model kind that cannot be inspected (TorchScript, an empty module...)."""


class InputError(InspectorError, ValueError):
    """Inputs that cannot be used: a bad ``input_size``, missing arguments, wrong device."""


class LayerError(InspectorError, RuntimeError):
    """The forward pass failed inside a layer; the message names it, its config and the shapes."""


class UnknownModelError(InspectorError, KeyError):
    """A name torchvision's registry does not know; the message lists the closest names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RegistryError(InspectorError, ValueError):
    """A formula registered twice for the same key."""
