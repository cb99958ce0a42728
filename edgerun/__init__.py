"""edgerun: a memory-aware ONNX inference runtime for edge devices.

The package owns the runtime and its public API: `InferenceSession` (an ONNX model), `load` (a
compiled bundle, run without onnx), `compile_bundle`, and the EdgerunError family. Layers, each
importing only those below it (docs/architecture.md; tests/test_layers.py):

    edgerun.cli        the `edgerun` command and its tools (bench, calibrate, table3, compile, plot)
    edgerun.models     model resolution for the CLI and tools (zoo names, batch defaults, dtype names)
    edgerun.session, edgerun.compiler      the ONNX front end: loader, shape inference, passes
    edgerun.bundle, edgerun.bundle_format  bundle sessions and the bundle file format
    edgerun.session_base, edgerun.profiler the shared session, feed checks, per-step reports
    edgerun.executor, edgerun.kernels      plans bound to one arena, run by numpy or C kernels
    edgerun.ops, edgerun.ir, edgerun.errors, scheduler (which knows nothing of edgerun)

The public names are resolved on first use (PEP 562), so that `import edgerun` stays cheap and a
bundle runs without importing onnx or the graph passes.
"""
import importlib

from edgerun.errors import (EdgerunError, InvalidInputError, InvalidModelError, MemoryBudgetError,
                            ModelLoadError, UnsupportedOperatorError)

__version__ = "0.1.0"

_LAZY = {"InferenceSession": "edgerun.session", "load": "edgerun.bundle", "compile_bundle": "edgerun.compiler"}

__all__ = ["EdgerunError", "InferenceSession", "InvalidInputError", "InvalidModelError", "MemoryBudgetError",
           "ModelLoadError", "UnsupportedOperatorError", "compile_bundle", "load"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgerun' has no attribute {name!r}")
