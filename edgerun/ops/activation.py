"""Activations: every kind of the activation table (edgerun.kernels.activations) as an ONNX op, plus
Clip (bounds from inputs), Tanh and Softmax; `apply_activation` is the reference fused kernels use."""
from __future__ import annotations

import numpy as np

from edgerun.errors import InvalidModelError
from edgerun.ir import TensorInfo
from edgerun.kernels.activations import KINDS, TABLE
from edgerun.kernels.native_steps import NativeActivationKernel
from edgerun.kernels.numpy_steps import ActivationKernel, SoftmaxKernel, UnaryKernel
from edgerun.ops import register
from edgerun.ops._common import attr_float, attr_int, invalid, require_inputs


def apply_activation(x: np.ndarray, kind: str, params) -> np.ndarray:
    """Apply a fused activation by name (the reference of the activation table); `params` as
    docs/architecture.md lists them."""
    if kind not in KINDS:
        raise InvalidModelError(f"unknown fused activation {kind!r}; expected one of {sorted(KINDS)}")
    count = len(KINDS[kind].params)
    params = list(params or [])
    if len(params) != count or not all(
            isinstance(p, (int, float, np.integer, np.floating)) and not isinstance(p, bool) for p in params):
        raise InvalidModelError(f"activation {kind!r} takes {count} numeric parameter(s), got {params!r}")
    return KINDS[kind].reference(np.asarray(x), *params)


def _same_shape_infer(node, inputs, opset):
    require_inputs(node, inputs, 1)
    return [TensorInfo(inputs[0].shape, np.dtype(inputs[0].dtype))]


def _unary(fn):
    def compute(node, inputs, opset):
        require_inputs(node, inputs, 1)
        return [fn(node, np.asarray(inputs[0]))]
    return compute


def _clip_bounds(node, inputs, opset):
    if opset < 11:
        return (attr_float(node, "min", -np.inf), attr_float(node, "max", np.inf))
    bounds = []
    for index, name in ((1, "min"), (2, "max")):
        bound = inputs[index] if len(inputs) > index else None
        if bound is not None and np.size(bound) != 1:
            raise invalid(node, f"input {name!r} must be a scalar, got shape {np.shape(bound)}")
        bounds.append(None if bound is None else np.asarray(bound).reshape(()))
    return tuple(bounds)


def _clip_compute(node, inputs, opset):
    require_inputs(node, inputs, 1)
    low, high = _clip_bounds(node, inputs, opset)
    return [KINDS["clip"].reference(np.asarray(inputs[0]), low, high)]


def _softmax_axis(node, rank, opset):
    axis = attr_int(node, "axis", 1 if opset < 13 else -1)
    if not -rank <= axis < max(rank, 1):
        raise invalid(node, f"attribute 'axis'={axis!r} out of range for rank {rank}")
    return axis % rank if rank else 0


def _softmax_last(x, axis):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(x.dtype, copy=False)


def _softmax_compute(node, inputs, opset):
    require_inputs(node, inputs, 1)
    x = np.asarray(inputs[0])
    axis = _softmax_axis(node, x.ndim, opset)
    if x.size == 0:
        return [x.copy()]
    if opset >= 13:
        return [_softmax_last(x, axis)]
    # Before opset 13 the input is coerced to 2-D at `axis` and normalised over the flattened tail.
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    flat = x.reshape(rows, -1)
    return [_softmax_last(flat, 1).reshape(x.shape)]


def _softmax_infer(node, inputs, opset):
    require_inputs(node, inputs, 1)
    if inputs[0].shape is not None:
        _softmax_axis(node, len(inputs[0].shape), opset)
    return [TensorInfo(inputs[0].shape, np.dtype(inputs[0].dtype))]


def _table_compute(kind):
    def compute(node, inputs, opset):
        require_inputs(node, inputs, 1)
        params = [attr_float(node, name, default) for name, default in kind.params]
        return [kind.reference(np.asarray(inputs[0]), *params)]
    return compute


for _kind in TABLE:
    if _kind.op_type and not _kind.params_from_inputs:
        register(_kind.op_type, _same_shape_infer, _table_compute(_kind), step=ActivationKernel(_kind.name),
                 native=NativeActivationKernel)
register("Clip", _same_shape_infer, _clip_compute, step=ActivationKernel("clip"), native=NativeActivationKernel)
register("Tanh", _same_shape_infer, _unary(lambda node, x: np.tanh(x)), step=UnaryKernel(np.tanh))
register("Softmax", _softmax_infer, _softmax_compute, step=SoftmaxKernel())
