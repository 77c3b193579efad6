"""Mixture-of-experts: the parameters one token's forward touches, measured from the experts that ran.

An *expert container* is a module holding every expert of one MoE layer (transformers' fused
``MixtralExperts`` with 3-D weights, or a ``ModuleList``/``ModuleDict`` of expert MLPs); the rules
that find them are a registry (``@expert_rule``), by default "a module named ``experts`` holding
parameters". Whatever runs the experts (an eager loop over the experts hit, ``_grouped_mm``,
batched matmuls over gathered weights), every (token, expert) pair multiplies the token by each
of that expert's weight matrices once. So the MACs the container did, per token that entered it,
divided by the weights' element count, is the share of the experts one token used (k/E for top-k
of E), measured from the ops that ran; a token's active expert parameters are that share of the
container's parameters (biases alike). Nothing here looks at router values: it works on meta.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import prod

from torch import nn

from inspector.collect import Frame
from inspector.registry import Registry
from inspector.report import Experts
from inspector.tree import ModelTree

Rule = Callable[[str, nn.Module], bool]
RULES: Registry[str, Rule] = Registry("expert container rule")


def expert_rule(name: str) -> Callable[[Rule], Rule]:
    """Decorator: ``rule(qualified_name, module) -> bool`` marks expert containers."""
    return RULES.register(name)


@expert_rule("named experts")
def _named_experts(name: str, module: nn.Module) -> bool:
    """transformers' convention: ``mlp.experts``, ``block_sparse_moe.experts`` (not ``shared_experts``)."""
    return name.rpartition(".")[2] == "experts" and any(True for _ in module.parameters())


@dataclass(frozen=True)
class Container:
    """One expert container and what the pass did with it."""

    name: str
    params: int           # every expert's parameters
    weights: int          # elements of the matrices multiplied (the parameters of the largest rank)
    param_bytes: int
    macs: int = 0         # MACs done inside it
    tokens: int = 0       # tokens that entered it

    @property
    def share(self) -> float:
        """Expert weights used per token, as a share of all (k / E for top-k of E)."""
        return self.macs / (self.tokens * self.weights) if self.tokens and self.weights else 0.0

    @property
    def active_params(self) -> int:
        """Parameters one token touched: ``params x macs / (tokens x weights)``, rounded."""
        denominator = self.tokens * self.weights
        return (2 * self.params * self.macs + denominator) // (2 * denominator) if denominator else 0

    def read_share(self) -> float:
        """Share of the container's bytes the whole pass read: every (token, expert) pair reads its
        expert once, the container at most once."""
        return min(1.0, self.macs / self.weights) if self.weights else 1.0


def containers(tree: ModelTree) -> list[tuple[str, nn.Module]]:
    """The expert containers of the model (outermost ones: a container inside another is part of it)."""
    found: list[tuple[str, nn.Module]] = []
    rules = list(RULES.table.values())
    if not rules:
        return found
    for name, module in tree.modules:
        if any(name.startswith(f"{outer}.") for outer, _ in found):
            continue
        if name and any(rule(name, module) for rule in rules):
            found.append((name, module))
    return found


def _rows(shape: Sequence[int]) -> int:
    """Tokens in an activation (every dimension but the last)."""
    return prod(shape[:-1]) if len(shape) >= 2 else (shape[0] if shape else 0)


def inclusive_macs(frames: Sequence[Frame]) -> list[int]:
    """Every call's MACs with its descendants'."""
    sums = [f.macs for f in frames]
    for f in reversed(frames):
        if f.parent is not None:
            sums[f.parent] += sums[f.index]
    return sums


def measure(tree: ModelTree, frames: Sequence[Frame], size: Callable[[nn.Parameter], int],
            macs: Sequence[int] | None = None, found: list[tuple[str, nn.Module]] | None = None
            ) -> list[Container]:
    """Each expert container (``found``: the model's, by default) with the MACs it did and the tokens
    that entered it in ``frames``."""
    found = containers(tree) if found is None else found
    if not found:
        return []
    macs = inclusive_macs(frames) if macs is None else macs
    out = []
    for name, module in found:
        params = [p for p in module.parameters()]
        rank = max(p.dim() for p in params)
        ids = {id(m) for m in module.modules()}
        done = tokens = 0
        callers: set[int] = set()
        for f in frames:
            if f.module is module:  # a fused container: called with every token of the layer
                done += macs[f.index]
                tokens += _rows(f.inputs[0][0]) if f.inputs else 0
            elif id(f.module) in ids and f.parent is not None and id(frames[f.parent].module) not in ids:
                done += macs[f.index]  # an expert of a list, called by the MoE block
                callers.add(f.parent)
        tokens += sum(_rows(frames[i].inputs[0][0]) for i in callers if frames[i].inputs)
        out.append(Container(name, sum(p.numel() for p in params), sum(p.numel() for p in params if p.dim() == rank),
                             sum(size(p) for p in params), done, tokens))
    return out


def summary(found: list[Container], total_params: int, total_macs: int) -> Experts | None:
    """The report's experts part, or None for a model without expert containers that ran; tokens
    are those that entered the first container (every MoE layer sees them all)."""
    ran = [c for c in found if c.tokens]
    if not ran:
        return None
    tokens = ran[0].tokens
    expert_params = sum(c.params for c in ran)
    active = sum(c.active_params for c in ran)
    return Experts(containers=tuple(c.name for c in ran), expert_params=expert_params, active_expert_params=active,
                   active_params=total_params - expert_params + active,
                   shares=tuple(round(c.share, 6) for c in ran), tokens=tokens,
                   macs_per_token=total_macs / tokens if tokens else None)
