"""inspector: what every layer of a PyTorch model costs, counted while it runs and cross-checked.

    from inspector import inspect
    report = inspect(model, example_input)
    print(report)                  # per-layer table with totals
    report.crosscheck()            # [] when every layer agrees with its closed form and every op was counted

Models by name from any source: ``inspector.load("resnet50")``, ``load("timm:convnext_tiny")``,
``load("hf:path/to/config_dir")``, ``load("path/to/net.py:Net")``.
"""
import os as _os
from dataclasses import replace as _replace
import sys as _sys


def _cli_starting() -> bool:
    """Whether this process is the command line (``inspector ...``, ``python -m inspector``)."""
    argv = getattr(_sys, "orig_argv", _sys.argv)
    return _os.path.basename(_sys.argv[0] or "") in ("inspector", "inspector.exe") or \
        any(a == "-m" and b == "inspector" for a, b in zip(argv, argv[1:]))


try:  # torch is imported here: seconds in which Ctrl-C must end the command line without a traceback
    from inspector import formats as _formats  # noqa: F401 - registers the output formats
    from inspector import page as _page  # noqa: F401 - registers the html pages
    from inspector.api import inspect
    from inspector.closed_forms import ClosedForm, closed_form, closed_form_backward
    from inspector.errors import (InputError, InspectorError, LayerError, MetaDeviceError, NotAModuleError,
                                  RegistryError, UnknownModelError, UnsupportedModelError)
    from inspector.op_formulas import op_formula
    from inspector.records import LayerRecord, Mismatch, OpStat, Uncounted
    from inspector.figures import Figure, register as register_figure
    from inspector.report import CrossCheck, Report, TrainingMemory
    from inspector.sources import ModelSpec, load
except KeyboardInterrupt:
    if not _cli_starting():
        raise
    _sys.stderr.write("inspector: interrupted\n")
    raise SystemExit(130) from None

__all__ = ["ClosedForm", "CrossCheck", "Figure", "InputError", "InspectorError", "LayerError", "LayerRecord", "MetaDeviceError",
           "Mismatch", "ModelSpec", "NotAModuleError", "OpStat", "RegistryError", "Report", "TrainingMemory",
           "Uncounted", "UnknownModelError", "UnsupportedModelError", "closed_form", "closed_form_backward",
           "inspect", "inspect_spec", "load", "op_formula", "register_figure"]
__version__ = "0.2.0"


def inspect_spec(spec: ModelSpec, **options):  # noqa: ANN001, ANN201 - forwards inspect's options
    """``inspect`` a model a source built, with its example inputs, device and name; the source's
    notes (the class it built) come first among the report's."""
    options.setdefault("device", spec.device)
    options.setdefault("name", spec.name)
    if options.get("input_size") is None and spec.args is None and spec.input_size is not None:
        options["input_size"] = spec.input_size
    if options.get("input_size") is not None:
        report = inspect(spec.module, **options)
    else:
        report = inspect(spec.module, spec.args, kwargs=dict(spec.kwargs), **options)
    if not spec.notes:
        return report
    return _replace(report, run=_replace(report.run, notes=(*spec.notes, *report.run.notes)))  # the source's notes
