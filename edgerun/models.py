"""Model resolution shared by the command line and the tools: zoo names, batch defaults, dtype names.

`resolve_model("mobilenet_v2:width=0.35,resolution=96")` builds a zoo model (batch 1); a path that
exists is returned as is. `batch_one_shapes(session)` fixes a symbolic batch dimension to 1.
`numpy_dtype("tensor(float)")` reads the onnxruntime-style type names that `NodeArg.type` carries.
This module builds ONNX models through the zoo, so it imports onnx; the runtime never imports it.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np

from edgerun import zoo
from edgerun.errors import InvalidInputError, InvalidOptionError
from edgerun.session_base import ONNX_TYPE_NAMES

DEFAULT_MODEL = "mobilenet_v2_pretrained"
# zoo name -> (function in edgerun.zoo, fixed keyword arguments)
ZOO_MODELS = {
    "mobilenet_v2": ("mobilenet_v2", {}),
    "mobilenet_v2_pretrained": ("mobilenet_v2", {"pretrained": True}),
    "mobilenet_v1": ("mobilenet_v1", {}),
    "shufflenet_v1": ("shufflenet_v1", {}),
    "mobilenet_v3_small_like": ("mobilenet_v3_small_like", {}),
}
_NUMPY_DTYPES = {name: dtype for dtype, name in ONNX_TYPE_NAMES.items()}


class UsageError(InvalidOptionError):
    """A command-line option has a value the command cannot use."""


# ================================================================ model names
def zoo_names() -> list[str]:
    return sorted(ZOO_MODELS)


def _parse_zoo_value(text: str):
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _parse_zoo_spec(spec: str) -> tuple[str, dict]:
    """'mobilenet_v2:width=0.35,resolution=96' -> ('mobilenet_v2', {'width': 0.35, 'resolution': 96})."""
    name, _, options = spec.partition(":")
    kwargs = {}
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"MODEL {spec!r}: zoo options are written name:key=value,key=value")
        kwargs[key.strip()] = _parse_zoo_value(value.strip())
    return name, kwargs


def _zoo_function(function_name: str):
    candidate = getattr(zoo, function_name, None)
    if callable(candidate) and not inspect.ismodule(candidate):
        return candidate
    raise UsageError(f"zoo model {function_name!r} is not available in this installation")


def _call_zoo(spec: str, name: str, kwargs: dict):
    function_name, fixed = ZOO_MODELS[name]
    function = _zoo_function(function_name)
    arguments = dict(fixed, **kwargs)
    parameters = inspect.signature(function).parameters
    if "batch" in parameters and "batch" not in arguments:
        arguments["batch"] = 1
    unknown = sorted(set(arguments) - set(parameters))
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        raise UsageError(f"MODEL {spec!r}: {name} takes no option(s) {unknown}; "
                         f"its options are {sorted(p for p in parameters if p != 'batch')}")
    try:
        return function(**arguments)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"MODEL {spec!r}: {exc}") from None


def resolve_model(spec: str | None):
    """(model for InferenceSession, display name) from a file path or a zoo name.

    Zoo names: see ZOO_MODELS; options may follow a colon: 'mobilenet_v2:width=0.35,resolution=96'.
    A path that exists wins over a zoo name."""
    spec = DEFAULT_MODEL if spec is None else spec
    if Path(spec).is_file():
        return str(spec), Path(spec).name
    name, kwargs = _parse_zoo_spec(spec)
    if name in ZOO_MODELS:
        return _call_zoo(spec, name, kwargs), spec
    if Path(spec).exists():
        raise UsageError(f"MODEL {spec!r} is a directory, not an .onnx file")
    raise UsageError(f"MODEL {spec!r}: no such file, and not a zoo model (zoo models: {', '.join(zoo_names())})")


# ================================================================ batch defaults
def is_static(dim) -> bool:
    return isinstance(dim, int) and dim > 0


def batch_one_shape(arg) -> tuple | None:
    """The input's shape with a symbolic first (batch) dimension set to 1; None if other dims are symbolic."""
    if arg.shape is None:
        return None
    shape = tuple(1 if axis == 0 and not is_static(d) else d for axis, d in enumerate(arg.shape))
    return shape if all(is_static(d) for d in shape) else None


def batch_one_shapes(sess) -> dict[str, tuple]:
    """batch_one_shape of every input; dynamic dimensions beyond the batch are an error."""
    shapes = {}
    for arg in sess.get_inputs():
        shape = batch_one_shape(arg)
        if shape is None:
            raise InvalidInputError(f"input {arg.name!r} has dynamic dimensions {arg.shape} beyond the batch: "
                                    f"give data with `edgerun run MODEL --input FILE.npy` to fix them")
        shapes[arg.name] = shape
    return shapes


# ================================================================ dtype names
def numpy_dtype(onnx_type: str) -> np.dtype:
    """The numpy dtype of an onnxruntime-style type name ("tensor(float)" -> float32; unknown: float32)."""
    return _NUMPY_DTYPES.get(onnx_type, np.dtype(np.float32))
