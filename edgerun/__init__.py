"""edgerun: a memory-aware ONNX inference runtime for edge devices."""
from edgerun.errors import (EdgerunError, InvalidInputError, InvalidModelError, MemoryBudgetError,
                            ModelLoadError, UnsupportedOperatorError)

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so that `import edgerun` stays cheap and bundles can run without importing onnx.
    if name == "InferenceSession":
        from edgerun.session import InferenceSession
        return InferenceSession
    if name == "load":
        from edgerun.bundle import load
        return load
    raise AttributeError(name)
