"""Work a forward hands to other threads (branches run in a thread pool), counted where it belongs.

Dispatch modes are thread-local: an op on another thread is invisible to the counter unless the
counter runs there too. While a pass counts, the threads doing the forward's work run a twin of the
counter, charged below the call that handed the work over:

- a task submitted to a ``concurrent.futures.ThreadPoolExecutor`` (``submit``, ``map``) by the
  forward, below the call that submitted it;
- a thread the forward starts (``threading.Thread.start``), below the call that started it, for
  as long as it runs (module calls and bare ops alike).

A module of the model called on any other thread meanwhile (a thread that existed before the pass:
another user of the model, or a worker the forward feeds through a queue) cannot be told apart: it
is not counted, and said so (``Collector.foreign_calls``: the report is incomplete).

``handed_over`` is the hand-over itself, for any wrapper: the timed passes mark the work with a
profiler range on the thread that runs it (``inspector.timing``).
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import thread as pool_thread
from contextlib import contextmanager
from typing import Any

from torch.utils import _python_dispatch as dispatch

#: ``innermost_here()`` on a thread that is not part of the pass.
NOT_OURS = object()


class ThreadCalls:
    """One other thread's calls: a stack whose bottom is the call it works for (``floor`` frames
    below its own), the counter's twin running there and the contexts entered there."""

    __slots__ = ("contexts", "floor", "stack", "twin")

    def __init__(self, base: Any) -> None:
        self.stack = [base] if base is not None else []
        self.floor = len(self.stack)
        self.twin: Any = None
        self.contexts: list[Any] = []


def enter(collector: Any, base: Any) -> ThreadCalls | None:
    """Count this thread's work below ``base`` from now on; None where it is counted already (the
    forward's own thread, a thread counted already, one that inherits the counter: autograd's)."""
    ident = threading.get_ident()
    counter = collector.counter
    if counter is None or ident == collector.thread or ident in collector.threads:
        return None
    if any(isinstance(m, type(counter)) and m.count for m in dispatch._get_current_dispatch_mode_stack()):
        return None
    calls = ThreadCalls(base)
    calls.twin = counter.for_thread(calls.stack)
    dispatch._push_mode(calls.twin)
    collector.threads[ident] = calls
    for make in collector.thread_contexts:  # saved-tensor hooks of a training step
        context = make()
        context.__enter__()
        calls.contexts.append(context)
    return calls


def leave(collector: Any, calls: ThreadCalls) -> None:
    """Stop counting this thread's work (its task, or the thread, is over)."""
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
        calls = enter(collector, base)
        try:
            return fn(*args, **kwargs)
        finally:
            if calls is not None:
                leave(collector, calls)
    return run


@contextmanager
def handed_over(wrap: Callable[[Callable[..., Any]], Callable[..., Any] | None]) -> Iterator[None]:
    """While the block runs, the function of each task submitted to a ThreadPoolExecutor and of each
    thread started (a pool's own worker threads excepted: their tasks are, one by one) is replaced by
    ``wrap(fn)``, called on the thread handing it over (None: left as it is)."""
    submit = ThreadPoolExecutor.__dict__["submit"]
    start = threading.Thread.__dict__["start"]

    @functools.wraps(submit)
    def wrapped_submit(pool: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return submit(pool, wrap(fn) or fn, *args, **kwargs)

    @functools.wraps(start)
    def wrapped_start(thread: threading.Thread) -> None:
        if getattr(thread, "_target", None) is not pool_thread._worker:
            run = wrap(thread.run)
            if run is not None:
                thread.run = run  # type: ignore[method-assign]
        start(thread)

    ThreadPoolExecutor.submit = wrapped_submit  # type: ignore[method-assign]
    threading.Thread.start = wrapped_start  # type: ignore[method-assign]
    try:
        yield
    finally:
        ThreadPoolExecutor.submit = submit  # type: ignore[method-assign]
        threading.Thread.start = start  # type: ignore[method-assign]


@contextmanager
def work_carried(collector: Any) -> Iterator[None]:
    """While the block runs, tasks the pass submits to a ThreadPoolExecutor and threads it starts
    are ``carried`` (a pool's own worker threads are not: their tasks are, one by one)."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any] | None:
        base = collector.innermost_here()
        return None if base is NOT_OURS else carried(collector, fn, base)

    try:
        with handed_over(wrap):
            yield
    finally:
        for calls in list(collector.threads.values()):  # threads still running: their twins count no more
            calls.twin.quiet()
