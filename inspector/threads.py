"""Work a forward hands to other threads (branches run in a thread pool), counted where it belongs.

Dispatch modes are thread-local: an op on another thread is invisible to the counter unless the
counter runs there too. Two ways in, both charged under the call that handed the work over:

- a task submitted to a ``concurrent.futures.ThreadPoolExecutor`` (``submit``, ``map``) during a
  counted pass runs with a twin of the counter on its thread, below the call that submitted it;
- a module of the model called on any other thread (a thread the forward started) opens its frame
  below the call innermost on the forward's thread, and its thread runs the twin until it returns.

What cannot be seen here: ops outside every module call on a thread the forward started itself
(``threading.Thread(target=...)`` running bare torch ops). They are not counted.
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from torch.utils import _python_dispatch as dispatch

#: ``innermost_here()`` on a thread that is not part of the pass.
NOT_OURS = object()


class ThreadCalls:
    """One other thread's calls: a stack whose bottom is the call it works for (``floor`` frames
    below its own), the counter's twin running there and the contexts entered there."""

    __slots__ = ("stack", "floor", "twin", "contexts", "adopted")

    def __init__(self, base: Any, twin: Any, contexts: list[Any], adopted: bool) -> None:
        self.stack = [base] if base is not None else []
        self.floor = len(self.stack)
        self.twin = twin
        self.contexts = contexts
        self.adopted = adopted  # opened by a module call (closed with it), not by a task


def enter(collector: Any, base: Any, adopted: bool) -> ThreadCalls | None:
    """Count this thread's work below ``base`` from now on; None where it is counted already (the
    forward's own thread, a thread taken in before, a thread that inherits the counter: autograd's)."""
    ident = threading.get_ident()
    counter = collector.counter
    if counter is None or ident == collector.thread or ident in collector.threads:
        return None
    if any(isinstance(m, type(counter)) for m in dispatch._get_current_dispatch_mode_stack()):
        return None
    calls = ThreadCalls(base, None, [], adopted)
    calls.twin = counter.for_thread(calls.stack)
    dispatch._push_mode(calls.twin)
    collector.threads[ident] = calls
    for make in collector.thread_contexts:  # saved-tensor hooks of a training step
        context = make()
        context.__enter__()
        calls.contexts.append(context)
    return calls


def leave(collector: Any, calls: ThreadCalls) -> None:
    """Stop counting this thread's work (the task or the adopted call is over)."""
    try:
        for context in reversed(calls.contexts):
            context.__exit__(None, None, None)
    finally:
        collector.threads.pop(threading.get_ident(), None)
        if dispatch._get_current_dispatch_mode_stack()[-1:] == [calls.twin]:
            dispatch._pop_mode()


def carried(collector: Any, fn: Callable[..., Any], base: Any) -> Callable[..., Any]:
    """``fn`` run with its work counted below ``base`` on whatever thread runs it."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        calls = enter(collector, base, adopted=False)
        try:
            return fn(*args, **kwargs)
        finally:
            if calls is not None:
                leave(collector, calls)
    return run


@contextmanager
def pool_tasks_carried(collector: Any) -> Iterator[None]:
    """While the block runs, tasks the pass submits to a ThreadPoolExecutor are ``carried``."""
    original = ThreadPoolExecutor.__dict__["submit"]

    @functools.wraps(original)
    def submit(pool: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        base = collector.innermost_here()
        if base is not NOT_OURS:
            fn = carried(collector, fn, base)
        return original(pool, fn, *args, **kwargs)

    ThreadPoolExecutor.submit = submit  # type: ignore[method-assign]
    try:
        yield
    finally:
        ThreadPoolExecutor.submit = original  # type: ignore[method-assign]
