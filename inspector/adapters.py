"""Adapter models (PEFT: LoRA and its kin) as they are: which parameters train and which are frozen.

Nothing is counted differently: trainable and frozen parameters are the report's split, and a
training step's backward computes no weight gradient for a frozen weight (autograd runs only the
input gradient, and only where something below still trains), as the counted backward ops show.
This module only says, in the report's notes, what the adapters are.
"""
from __future__ import annotations

from typing import Any

from inspector.tree import ModelTree


def _describe(config: Any) -> str:
    kind = getattr(getattr(config, "peft_type", None), "value", None) or type(config).__name__
    rank = getattr(config, "r", None)
    targets = getattr(config, "target_modules", None)
    targets = ", ".join(sorted(targets)) if isinstance(targets, (set, list, tuple)) else targets
    return kind + (f" r={rank}" if rank is not None else "") + (f" on {targets}" if targets else "")


def note(tree: ModelTree) -> str | None:
    """A line on a PEFT model's adapters and frozen base (None for any other model)."""
    try:  # a model's own __getattr__ may raise anything for a name it does not know
        configs = getattr(tree.model, "peft_config", None)
    except Exception:  # noqa: BLE001
        return None
    if not isinstance(configs, dict) or not configs:
        return None
    trainable = sum(p.numel() for _, p, t in tree.params if t)
    frozen = sum(p.numel() for _, p, t in tree.params if not t)
    adapters = "; ".join(f"{name}: {_describe(c)}" for name, c in configs.items())
    return (f"PEFT adapters ({adapters}): {trainable:,} trainable adapter parameters over {frozen:,} frozen base "
            "parameters; a training step computes no gradient for a frozen weight")
