"""The cost of a training step: backward MACs per layer, gradients, optimizer state, saved activations
and the step's peak memory, all measured on substituted copies of the model's tensors.

Backward work is counted from the backward aten ops that really run, with the same formula registry
as the forward, and charged to the module whose backward ran them: a module's backward starts when
the gradient of its output arrives and ends when the gradients of its inputs are done (multi-grad
hooks, as ``torch.utils.module_tracker`` does). Activation checkpointing's recomputation runs in the
backward phase and is counted there (``recompute_macs`` says how much).

Memory comes from a live-tensor timeline: every tensor an op creates during the step is added when
it is made and removed when it dies; parameters, buffers, inputs and the optimizer state the step
starts with form the baseline. The optimizer's state is real: one uncounted warm-up step creates it
(as in any step after the first), gradients are then set to None (``zero_grad()``), and the counted
step runs forward, backward and the optimizer step. Activations are the tensors autograd saves for
backward (``saved_tensors_hooks``), each storage once, parameters and inputs excluded.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from inspector.borrow import substitute_state
from inspector.collect import Collection, Collector, Frame, OpCounter, Sink, nbytes, parts, tensor_leaves
from inspector.errors import MODEL_FAILURES, InputError, InspectorError, UnsupportedModelError, first_line
from inspector.failures import message
from inspector.inputs import map_tensors
from inspector.optimizers import OPTIMIZERS
from inspector.report import Training, TrainingMemory
from inspector.tree import ModelTree


def _make_optimizer(optimizer: Any, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """A new optimizer over ``params`` (the step's copies): one that holds anything else is refused
    before it steps (the user's own, over the model's parameters, with its state)."""
    if not params:
        raise InputError("the model has no trainable parameter for the optimizer to update (all frozen?)")
    try:
        built = OPTIMIZERS.get(optimizer)(params) if isinstance(optimizer, str) else optimizer(params)
    except Exception as exc:  # noqa: BLE001 - a factory's own error, said in one line
        raise InputError(f"the optimizer could not be built: {type(exc).__name__}: {exc}") from None
    if not isinstance(built, torch.optim.Optimizer):
        raise InputError(f"the optimizer factory returned {type(built).__name__}, not a torch.optim.Optimizer")
    given = set(map(id, params))
    held = [p for group in built.param_groups for p in group["params"]]
    if any(id(p) not in given for p in [*held, *built.state]):
        raise InputError(f"the optimizer factory returned an optimizer ({type(built).__name__}) over other tensors than "
                         "the ones it was given: stepping it would change the model or the optimizer you hold; pass a "
                         "factory that builds a new one from its argument, e.g. "
                         "optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3)")
    return built


def _optimizer_name(optimizer: Any) -> str | None:
    if optimizer is None:
        return None
    return optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", type(optimizer).__name__)


def step_state(tree: ModelTree, device: torch.device, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Copies of every parameter (requiring grad as the original does) and buffer, on ``device`` in
    ``dtype``: the step trains these, never the model's own tensors."""
    state = substitute_state(tree, device, dtype, copies=True)
    for name, p in tree.parameters:
        state[name].requires_grad_(p.requires_grad)
    return state


def default_loss(output: Any, trainable: bool = True) -> torch.Tensor:
    """The sum of every floating output that depends on a trainable parameter (``trainable``: the
    model has one)."""
    found = tensor_leaves(output)
    leaves = [t for t in found if t.is_floating_point() and t.requires_grad]
    if leaves:
        return sum(t.float().sum() for t in leaves)  # type: ignore[return-value]
    if not trainable:
        raise InputError("the model has no trainable parameter (all frozen): nothing to train")
    if not found:
        raise InputError(f"the model's output ({type(output).__name__}) holds no tensor inspector can find: pass "
                         "loss_fn=... (output -> scalar tensor)")
    raise InputError("the model's output does not depend on any trainable parameter (is it detached, or computed "
                     "under torch.no_grad() inside forward?): nothing to train")


def _own(t: torch.Tensor) -> torch.Tensor:
    own = t.clone() if t.is_inference() else t.detach()
    return own.requires_grad_(t.requires_grad) if own.is_floating_point() or own.is_complex() else own


def own_inputs(value: Any) -> Any:
    """``value`` with every tensor detached from the caller's (so that no gradient reaches a tensor
    of theirs: a view of a parameter, a parent's parameter), requiring grad as it did; an inference
    tensor is copied (autograd cannot save it)."""
    return map_tensors(value, _own)


def _loss_error(loss_fn: Any, output: Any, exc: BaseException) -> InputError:
    name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
    shapes = ", ".join(str(tuple(t.shape)) for t in tensor_leaves(output)) or "no tensors"
    text = message(exc)
    hint = " (hint: loss_fn takes the model's output alone; a loss that needs targets goes in a lambda: " \
        "loss_fn=lambda out: F.cross_entropy(out, target))" if isinstance(exc, TypeError) else ""
    return InputError(f"the loss function {name} failed on the model's output ({type(output).__name__}: "
                      f"{shapes}): {text}{hint}")


class BackwardTracker:
    """The route of the backward pass (see ``OpCounter.routed``): pushes a forward call's frame on
    its stack when its output's gradient arrives and takes it off when its inputs' gradients are
    done; claims recomputed calls (``Collector.redirected``)."""

    backward = True

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.stack: list[Frame] = []
        self.recomputed_now: set[int] = set()  # frames whose forward is being recomputed (checkpointing)
        self.handles: list[Any] = []
        self.recomputed: dict[int, int] = {}  # id(module) -> calls recomputed so far
        self.by_module: dict[int, list[Frame]] = {}
        self.open: list[tuple[Frame, bool]] = []  # recomputed calls in progress: (frame, pushed)
        #: frame index -> (hook handle, its end, id -> version of each input) of calls in progress
        self.starts: dict[int, tuple[Any, _End, dict[int, int]]] = {}

    def frame(self) -> Frame | None:
        """The innermost call whose backward is running (None: outside every call)."""
        return self.stack[-1] if self.stack else None

    def recomputing(self, frame: Frame | None) -> bool:
        return frame is not None and frame.index in self.recomputed_now

    # forward: register the gradient hooks of each call
    def before_call(self, frame: Frame, args: tuple) -> None:
        """As a call starts: the hook that ends its backward goes on its positional inputs now, before
        its forward can modify them in place (a hook follows the version of the tensor it was put on:
        the gradient of what the call received, not of what it left there). Their versions are kept
        to tell a pass-through (the input handed back untouched) from an in-place op."""
        ins = [t for t in args if isinstance(t, torch.Tensor) and t.requires_grad] if args else []
        if not ins:
            return
        end = _End(self, frame)
        handle = torch.autograd.graph.register_multi_grad_hook(ins, end, mode="all")
        self.starts[frame.index] = (handle, end, {id(t): t._version for t in ins})

    def after_call(self, frame: Frame, args: tuple, kwargs: dict | None, output: Any) -> None:
        """As a call returns: its backward starts when the gradient of any output arrives. An output
        that is one of its inputs, unmodified (``nn.Identity``, ``Dropout`` in eval), is no work of
        this call's: it gets no hook, and a call all of whose outputs are such does no backward."""
        self.by_module.setdefault(id(frame.module), []).append(frame)
        handle, end, versions = self.starts.pop(frame.index, (None, None, {}))
        received = [t for t in tensor_leaves((args, kwargs or {})) if t.requires_grad]
        passed = {id(t) for t in received if versions.get(id(t), t._version) == t._version}
        outs = [t for t in tensor_leaves(output) if t.requires_grad and id(t) not in passed]
        if not outs:
            if handle is not None:
                handle.remove()
            return
        graph = torch.autograd.graph
        self.handles.append(graph.register_multi_grad_hook(outs, lambda _grad, f=frame: self._push(f), mode="any"))
        late = [t for t in received if id(t) not in versions]  # keyword inputs: seen only now
        if handle is not None:
            self.handles.append(handle)
        if late:
            if end is None:
                end = _End(self, frame)
            end.waiting += 1
            self.handles.append(graph.register_multi_grad_hook(late, end, mode="all"))

    def _ancestor(self, frame: Frame, of: Frame) -> bool:
        frames = self.collector.frames
        while of.parent is not None:
            if of.parent == frame.index:
                return True
            of = frames[of.parent]
        return False

    def _push(self, frame: Frame) -> None:
        """Open ``frame``'s backward. Calls sharing one output (a model returning its last layer's
        output) open together: each goes below its descendants, so the innermost stays on top."""
        frame.grad_output = True
        stack = self.stack
        while stack and stack[-1] is not frame and not self._ancestor(stack[-1], frame) \
                and not self._ancestor(frame, stack[-1]):
            stack.pop()  # an unrelated call whose inputs needed no gradient: its backward is over
        if frame in stack:
            return
        i = len(stack)
        while i > 0 and self._ancestor(frame, stack[i - 1]):
            i -= 1
        stack.insert(i, frame)

    def _pop(self, frame: Frame) -> None:
        stack = self.stack
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is frame:
                del stack[i:]
                return

    # backward: calls run again by activation checkpointing
    def pre(self, module: nn.Module) -> None:
        frames = self.by_module.get(id(module), [])
        k = self.recomputed.get(id(module), 0)
        self.recomputed[id(module)] = k + 1
        frame = frames[k] if k < len(frames) else None
        pushed = frame is not None
        if pushed:
            self.stack.append(frame)
            self.recomputed_now.add(frame.index)
        self.open.append((frame, pushed))  # type: ignore[arg-type]

    def post(self, module: nn.Module) -> None:
        if not self.open:
            return
        frame, pushed = self.open.pop()
        if pushed:
            self.recomputed_now.discard(frame.index)
            self._pop(frame)

    def remove(self) -> None:
        for handle in [*self.handles, *(start[0] for start in self.starts.values())]:
            handle.remove()
        self.handles.clear()
        self.starts.clear()


class _End:
    """Ends a call's backward once the gradients of every group of its inputs are done (positional
    inputs hooked as the call started, keyword inputs as it returned)."""

    def __init__(self, tracker: BackwardTracker, frame: Frame) -> None:
        self.tracker = tracker
        self.frame = frame
        self.waiting = 1
        self.done = 0

    def __call__(self, _grads: Any) -> None:
        self.done += 1
        if self.done >= self.waiting:
            self.done = 0  # a second backward through the same graph starts over
            self.tracker._pop(self.frame)


class SavedActivations:
    """``saved_tensors_hooks`` that count each saved storage once, charged to the call saving it."""

    def __init__(self, collector: Collector, excluded: set[int]) -> None:
        self.collector = collector
        self.excluded = excluded  # storages of parameters, buffers and inputs
        self.seen: set[int] = set()
        self.total = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return t
        key = storage._cdata
        if key in self.excluded or key in self.seen:
            return t
        self.seen.add(key)
        nbytes = storage.nbytes()
        self.total += nbytes
        frame = self.collector.innermost_here()
        if isinstance(frame, Frame):
            frame.saved_bytes += nbytes
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t


def _storage_keys(tensors: list[torch.Tensor]) -> set[int]:
    keys = set()
    for t in tensors:
        try:
            keys.add(t.untyped_storage()._cdata)
        except (RuntimeError, NotImplementedError):
            continue
    return keys


def _unique_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the storages behind ``tensors``, each once (a sparse tensor: its indices and values)."""
    seen: dict[int, int] = {}
    for t in tensors:
        for part in parts(t):
            try:
                storage = part.untyped_storage()
                seen[storage._cdata] = storage.nbytes()
            except (RuntimeError, NotImplementedError):  # nested
                seen[id(part)] = nbytes(part)
    return sum(seen.values())


def _optimizer_tensors(optimizer: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    if optimizer is None:
        return []
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def train_step(tree: ModelTree, args: tuple, kw: dict, collector: Collector, counter: OpCounter,
               opts: Any, target: torch.device, on_error: Callable[[BaseException, str, Frame | None], InspectorError]
               ) -> tuple[Collection, Training]:
    """Forward, backward and optimizer step on copies of the model's tensors, counted and measured.
    ``on_error(exc, phase, frame)`` turns a failure into the error to raise (``frame``: the call
    whose backward was running)."""
    if opts.autocast is not None and target.type == "meta":
        raise InputError("autocast needs a real device (cpu or cuda); on meta, pass dtype='bfloat16' instead")
    with torch.enable_grad():  # also under the caller's no_grad()
        args, kw = own_inputs((args, kw))
        return _train_step(tree, args, kw, collector, counter, opts, target, on_error)


def _train_step(tree: ModelTree, args: tuple, kw: dict, collector: Collector, counter: OpCounter,
                opts: Any, target: torch.device, on_error: Callable[[BaseException, str, Frame | None], InspectorError]
                ) -> tuple[Collection, Training]:
    model = tree.model
    copies = step_state(tree, target, opts.dtype)
    all_params = [copies[name] for name, _ in tree.parameters]
    params = [t for t in all_params if t.requires_grad]
    buffers = [copies[name] for name, _ in tree.buffers]
    loss_fn = opts.loss_fn or (lambda output: default_loss(output, bool(params)))
    autocast = (lambda: torch.autocast(target.type, dtype=opts.autocast)) if opts.autocast is not None else nullcontext
    optimizer = _make_optimizer(opts.optimizer, params) if opts.optimizer is not None else None
    loss_sink = Sink(Frame(-3, nn.Identity(), "(loss)", 0, None))  # the loss is not the model's work

    def forward() -> Any:
        with autocast():
            if opts.autocast is not None and not torch.is_autocast_enabled(target.type):
                raise InputError(f"autocast to {opts.autocast} is not available on {target.type}: "
                                 "drop autocast, or use dtype=... instead")
            try:
                return torch.func.functional_call(model, copies, args, kw, tie_weights=True, strict=False)
            except InspectorError:
                raise
            except MODEL_FAILURES as exc:
                if "saved tensor hooks" in str(exc):
                    raise UnsupportedModelError(
                        "backward=True measures saved activations through autograd's saved-tensor hooks, which the "
                        f"torch.func transforms (vmap, grad, jacrev...) inside this model's forward refuse "
                        f"({first_line(exc)}): inspect it without backward=True") from exc
                raise on_error(exc, "forward", None) from exc

    def loss_of(output: Any, counting: OpCounter | None = None) -> torch.Tensor:
        with autocast(), counting.routed(loss_sink) if counting is not None else nullcontext():
            try:
                loss = loss_fn(output)
            except InspectorError:
                raise
            except MODEL_FAILURES as exc:
                raise _loss_error(opts.loss_fn or default_loss, output, exc) from exc
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise InputError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}"
                             + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else ""))
        return loss

    if optimizer is not None:  # warm-up, uncounted: the optimizer state every later step starts with
        guard_only = OpCounter([], counter.table, counter.convention, guard=counter.guard, track_memory=False,
                               meta=counter.meta, count=False, known=counter.known)
        with guard_only:
            loss = loss_of(forward())
            try:
                loss.backward()
                optimizer.step()
            except MODEL_FAILURES as exc:
                raise on_error(exc, "the warm-up step", None) from exc
        optimizer.zero_grad(set_to_none=True)
    inputs = tensor_leaves((args, kw))
    opt_state = _optimizer_tensors(optimizer)
    saved = SavedActivations(collector, _storage_keys(all_params + buffers + inputs))
    tracker = BackwardTracker(collector)
    baseline = _unique_bytes(all_params + buffers + inputs + opt_state)
    live = counter.live
    collector.thread_contexts.append(lambda: torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack))
    try:
        with collector.hooks(counter), counter:
            with collector.observing(tracker.after_call, tracker.before_call), \
                    torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
                output = forward()
            forward_peak = live.peak
            loss = loss_of(output, counter)
            live.enter("backward")
            try:
                with counter.routed(tracker), collector.redirected(tracker):
                    loss.backward()
            except InspectorError:
                raise
            except MODEL_FAILURES as exc:
                raise on_error(exc, "backward", tracker.frame()) from exc
            del output, loss
            grads = [p.grad for p in params if p.grad is not None]
            gradient_bytes = _unique_bytes(grads)
            if optimizer is not None:
                live.enter("optimizer")
                try:
                    with counter.routed(Sink(Frame(-2, nn.Identity(), "(optimizer)", 0, None))):
                        optimizer.step()
                except MODEL_FAILURES as exc:
                    raise on_error(exc, "the optimizer step", None) from exc
    finally:
        tracker.remove()
        collector.thread_contexts.clear()
    collection = collector.collection(counter, peak_bytes=forward_peak)
    memory = TrainingMemory(parameters=_unique_bytes(all_params),
                            gradients=gradient_bytes, optimizer_state=_unique_bytes(_optimizer_tensors(optimizer)),
                            activations=saved.total, peak=baseline + live.peak, inputs=_unique_bytes(inputs),
                            buffers=_unique_bytes(buffers), peak_phase=live.peak_phase)
    every = (*collection.frames, collection.outside)
    bw_macs = sum(f.bw_macs for f in every)
    bw_flops = 2 * bw_macs + sum(f.bw_flops for f in every)
    loss_name = getattr(opts.loss_fn, "__name__", type(opts.loss_fn).__name__) if opts.loss_fn else "sum of outputs"
    autocast_name = str(opts.autocast).replace("torch.", "") if opts.autocast is not None else None
    return collection, Training(loss=loss_name, optimizer=_optimizer_name(opts.optimizer), total_backward_macs=bw_macs,
                                total_backward_flops=bw_flops, memory=memory, autocast=autocast_name)
