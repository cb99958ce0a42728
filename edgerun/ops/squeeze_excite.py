"""SqueezeExcite (domain "edgerun"): squeeze-excitation as one step, as EfficientNet, MnasNet and
MobileNetV3 use it. passes/fuse_se.py makes it from GlobalAveragePool -> 1x1 conv -> act -> 1x1 conv ->
gate -> Mul with the GlobalAveragePool's input.

Inputs `[X, W1, B1, W2, B2]`: X `(N, C, ...)`, W1 `(S, C, 1, ...)` (or `(S, C)`), B1 `(S,)`, W2 `(C, S, 1, ...)`
(or `(C, S)`), B2 `(C,)`. Attributes: `activation`, `activation_params` (after the first conv), `gate`,
`gate_params` (after the second), kinds of the activation table. Output: `X * gate(W2 act(W1 mean(X) + B1)
+ B2)`, the gate broadcast over each channel's pixels."""
from __future__ import annotations

import numpy as np

from edgerun.errors import InvalidModelError
from edgerun.ir import Node, TensorInfo
from edgerun.kernels.steps_se import NativeSqueezeExciteKernel, SqueezeExciteKernel
from edgerun.ops import register
from edgerun.ops.activation import apply_activation

DOMAIN = "edgerun"


def _invalid(node: Node, message: str) -> InvalidModelError:
    return InvalidModelError(f"{node.describe()}: {message}")


def _check_shapes(node: Node, x_shape, w1_shape, b1_shape, w2_shape, b2_shape) -> None:
    if len(x_shape) < 3:
        raise _invalid(node, f"input X must be (N, C, spatial...), got {tuple(x_shape)}")
    channels = x_shape[1]
    if len(w1_shape) < 2 or any(d != 1 for d in w1_shape[2:]) or w1_shape[1] != channels:
        raise _invalid(node, f"W1 must be (S, {channels}, 1, ...), got {tuple(w1_shape)}")
    squeeze = w1_shape[0]
    if len(w2_shape) < 2 or any(d != 1 for d in w2_shape[2:]) or tuple(w2_shape[:2]) != (channels, squeeze):
        raise _invalid(node, f"W2 must be ({channels}, {squeeze}, 1, ...), got {tuple(w2_shape)}")
    if tuple(b1_shape) != (squeeze,) or tuple(b2_shape) != (channels,):
        raise _invalid(node, f"B1 must be ({squeeze},) and B2 ({channels},), got {tuple(b1_shape)}, "
                             f"{tuple(b2_shape)}")


def _check_activations(node: Node) -> None:
    for kind, params in (("activation", "activation_params"), ("gate", "gate_params")):
        try:
            apply_activation(np.zeros(1, np.float32), node.attrs.get(kind, ""), node.attrs.get(params, []))
        except InvalidModelError as exc:
            raise _invalid(node, str(exc)) from None


def _infer(node, inputs, opset):
    if len(inputs) != 5 or any(i is None or i.shape is None for i in inputs):
        raise _invalid(node, "needs inputs X, W1, B1, W2, B2 of known shapes")
    _check_shapes(node, *(tuple(i.shape) for i in inputs))
    _check_activations(node)
    return [TensorInfo(tuple(inputs[0].shape), np.dtype(inputs[0].dtype))]


def _compute(node, inputs, opset):
    if len(inputs) != 5 or any(i is None for i in inputs):
        raise _invalid(node, "needs inputs X, W1, B1, W2, B2")
    x, w1, b1, w2, b2 = (np.asarray(i) for i in inputs)
    _check_shapes(node, x.shape, w1.shape, b1.shape, w2.shape, b2.shape)
    _check_activations(node)
    axes = tuple(range(2, x.ndim))
    pooled = x.mean(axis=axes, dtype=x.dtype)                                  # (N, C)
    hidden = pooled @ w1.reshape(w1.shape[0], -1).T + b1
    hidden = apply_activation(hidden, node.attrs.get("activation", ""), node.attrs.get("activation_params", []))
    gate = hidden @ w2.reshape(w2.shape[0], -1).T + b2
    gate = apply_activation(gate, node.attrs.get("gate", ""), node.attrs.get("gate_params", []))
    return [(x * gate.reshape(gate.shape + (1,) * len(axes))).astype(x.dtype, copy=False)]


def _macs(node, in_shapes, out_shapes) -> int:
    """The mean and the scale (one per element each) plus the two products."""
    x_shape = in_shapes[0]
    channels, squeeze = int(x_shape[1]), int(in_shapes[1][0])
    return int(2 * np.prod(x_shape, dtype=np.int64) + 2 * x_shape[0] * channels * squeeze)


register("SqueezeExcite", _infer, _compute, domain=DOMAIN, macs=_macs, step=SqueezeExciteKernel(),
         native=NativeSqueezeExciteKernel)
