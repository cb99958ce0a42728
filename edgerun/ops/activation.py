"""Activations, plus `apply_activation`, the shared helper fused kernels use."""
from __future__ import annotations

import numpy as np

from edgerun.errors import InvalidModelError
from edgerun.ir import TensorInfo
from edgerun.ops import register
from edgerun.ops._common import attr_float, attr_int, invalid, require_inputs


def _sigmoid(x):
    # exp of a non-positive number only: no overflow for large |x|.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _hardsigmoid(x, alpha, beta):
    return np.clip(alpha * x + beta, 0, 1).astype(x.dtype, copy=False)


def _hardswish(x):
    return (x * _hardsigmoid(x, 1 / 6, 0.5)).astype(x.dtype, copy=False)


def _leakyrelu(x, alpha):
    return np.where(x >= 0, x, x * np.asarray(alpha, dtype=x.dtype)).astype(x.dtype, copy=False)


def _clip(x, low, high):
    result = x
    if low is not None and not np.isneginf(low):
        result = np.maximum(result, low)
    if high is not None and not np.isposinf(high):
        result = np.minimum(result, high)
    return np.array(result).astype(x.dtype, copy=result is x)


_PARAM_COUNTS = {"": 0, "relu": 0, "clip": 2, "hardswish": 0, "hardsigmoid": 2, "leakyrelu": 1, "sigmoid": 0}


def apply_activation(x: np.ndarray, kind: str, params) -> np.ndarray:
    """Apply a fused activation by name; `params` as docs/architecture.md lists them."""
    if kind not in _PARAM_COUNTS:
        raise InvalidModelError(f"unknown fused activation {kind!r}; expected one of {sorted(_PARAM_COUNTS)}")
    params = list(params or [])
    if len(params) != _PARAM_COUNTS[kind] or not all(
            isinstance(p, (int, float, np.integer, np.floating)) and not isinstance(p, bool) for p in params):
        raise InvalidModelError(
            f"activation {kind!r} takes {_PARAM_COUNTS[kind]} numeric parameter(s), got {params!r}")
    x = np.asarray(x)
    if kind == "":
        return x
    if kind == "relu":
        return np.maximum(x, np.zeros((), x.dtype))
    if kind == "clip":
        return _clip(x, params[0], params[1])
    if kind == "hardswish":
        return _hardswish(x)
    if kind == "hardsigmoid":
        return _hardsigmoid(x, params[0], params[1])
    if kind == "leakyrelu":
        return _leakyrelu(x, params[0])
    return _sigmoid(x)


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
    return [_clip(np.asarray(inputs[0]), low, high)]


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


register("Relu", _same_shape_infer, _unary(lambda node, x: apply_activation(x, "relu", [])))
register("Sigmoid", _same_shape_infer, _unary(lambda node, x: _sigmoid(x)))
register("Tanh", _same_shape_infer, _unary(lambda node, x: np.tanh(x)))
register("HardSwish", _same_shape_infer, _unary(lambda node, x: _hardswish(x)))
register("HardSigmoid", _same_shape_infer, _unary(
    lambda node, x: _hardsigmoid(x, attr_float(node, "alpha", 0.2), attr_float(node, "beta", 0.5))))
register("LeakyRelu", _same_shape_infer, _unary(
    lambda node, x: _leakyrelu(x, attr_float(node, "alpha", 0.01))))
register("Clip", _same_shape_infer, _clip_compute)
register("Softmax", _softmax_infer, _softmax_compute)
