"""inspector: what every layer of a PyTorch model costs, counted while it runs and cross-checked.

    from inspector import inspect
    report = inspect(model, example_input)
    print(report)                  # per-layer table with totals
    report.crosscheck()            # [] when every layer agrees with its closed form
"""
from inspector.api import inspect
from inspector.closed_forms import ClosedForm, closed_form
from inspector.errors import (InputError, InspectorError, LayerError, NotAModuleError, UnknownModelError,
                              UnsupportedModelError)
from inspector.op_formulas import op_formula
from inspector.records import LayerRecord, Mismatch, OpStat
from inspector.report import CrossCheck, Report

__all__ = ["ClosedForm", "CrossCheck", "InputError", "InspectorError", "LayerError", "LayerRecord", "Mismatch",
           "NotAModuleError", "OpStat", "Report", "UnknownModelError", "UnsupportedModelError",
           "closed_form", "inspect", "op_formula"]
__version__ = "0.1.0"
