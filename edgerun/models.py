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
from edgerun.bundle_format import is_bundle
from edgerun.errors import InvalidInputError, InvalidOptionError, ModelLoadError
from edgerun.session_base import ONNX_TYPE_NAMES

DEFAULT_MODEL = "mobilenet_v2_pretrained"
# zoo name -> (function in edgerun.zoo, fixed keyword arguments)
ZOO_MODELS = {
    "mobilenet_v2": ("mobilenet_v2", {}),
    "mobilenet_v2_pretrained": ("mobilenet_v2", {"pretrained": True}),
    "mobilenet_v1": ("mobilenet_v1", {}),
    "shufflenet_v1": ("shufflenet_v1", {}),
    "mobilenet_v3_small_like": ("mobilenet_v3_small_like", {}),
    "ssdlite_mobilenet_v2": ("ssdlite_mobilenet_v2", {}),
    "mobile_deeplabv3": ("mobile_deeplabv3", {}),
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
        _refuse_what_is_not_onnx(Path(spec))
        return str(spec), Path(spec).name
    name, kwargs = _parse_zoo_spec(spec)
    if name in ZOO_MODELS:
        return _call_zoo(spec, name, kwargs), spec
    if Path(spec).exists():
        raise UsageError(f"MODEL {spec!r} is a directory, not an .onnx file")
    raise UsageError(f"MODEL {spec!r}: no such file, and not a zoo model (zoo models: {', '.join(zoo_names())})")


# ================================================================ what a file is
SNIFF_BYTES = 4096
_MAGICS = [  # (leading bytes, what the file is)
    (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"\x93NUMPY", "a numpy .npy array"), (b"PK\x03\x04", "a zip archive (.npz, .pth, ...)"),
    (b"\x1f\x8b", "a gzip archive"), (b"\x80\x02", "a Python pickle"), (b"\x80\x04", "a Python pickle"),
]


def file_kind(path: Path) -> str | None:
    """What a file that cannot be an ONNX model is ("an edgerun bundle", "a text file", "a PNG image", ...),
    or None when it may be one (an ONNX protobuf starts with a field tag, never with these bytes)."""
    if is_bundle(path):
        return "an edgerun bundle"
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if not head:
        return "an empty file"
    for magic, kind in _MAGICS:
        if head.startswith(magic):
            return kind
    return "a text file" if _is_text(head) else None


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:   # a multi-byte character cut at the end of the sniffed bytes is still text
        if exc.start < len(head) - 3:
            return False
        text = head[:exc.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\t\n\r\f" for ch in text)


def _refuse_what_is_not_onnx(path: Path) -> None:
    kind = file_kind(path)
    if kind == "an edgerun bundle":
        raise ModelLoadError(f"MODEL {str(path)!r} is an edgerun bundle (already compiled), not an ONNX model: "
                             f"run it with `edgerun run {path}` or edgerun.load(), or compile the .onnx it came from")
    if kind is not None:
        raise ModelLoadError(f"MODEL {str(path)!r} is {kind}, not an ONNX model; give an .onnx file, a bundle "
                             f"or a zoo name ({', '.join(zoo_names())})")


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
