"""BatchNormalization (inference) and LRN."""
from __future__ import annotations

import numpy as np

from edgerun.ir import TensorInfo
from edgerun.kernels.steps_norm import BatchNormalizationKernel, LRNKernel
from edgerun.ops import register
from edgerun.ops._common import attr_float, attr_int, invalid, require_inputs


def _bn_check(node, inputs, opset):
    require_inputs(node, inputs, 5, " (X, scale, B, mean, var)")
    if attr_int(node, "training_mode", 0):
        raise invalid(node, "training_mode=1 is not supported (edgerun runs inference only)")
    extra = [o for o in node.outputs[1:] if o]
    if extra:
        raise invalid(node, f"training outputs {extra} are not supported (edgerun runs inference only)")


def _bn_param_shape(node, x_shape, opset):
    """Shape the scale/B/mean/var inputs broadcast against: (C,) or, with spatial=0 before opset 9, (C, D1, ...)."""
    spatial = attr_int(node, "spatial", 1) if opset < 9 else 1
    return tuple(x_shape[1:2]) if spatial else tuple(x_shape[1:])


def _bn_infer(node, inputs, opset):
    _bn_check(node, inputs, opset)
    x = inputs[0]
    if x.shape is not None:
        if len(x.shape) < 2:
            raise invalid(node, f"input X must have rank >= 2, got shape {x.shape}")
        want = _bn_param_shape(node, x.shape, opset)
        for index, name in ((1, "scale"), (2, "B"), (3, "input_mean"), (4, "input_var")):
            shape = inputs[index].shape
            if shape is not None and all(isinstance(d, int) for d in shape + want) and \
                    int(np.prod(shape)) != int(np.prod(want)):
                raise invalid(node, f"input {name!r} has shape {shape}, expected {want}")
    return [TensorInfo(x.shape, np.dtype(x.dtype))]


def _bn_compute(node, inputs, opset):
    _bn_check(node, inputs, opset)
    x = np.asarray(inputs[0])
    if x.ndim < 2:
        raise invalid(node, f"input X must have rank >= 2, got shape {x.shape}")
    want = _bn_param_shape(node, x.shape, opset)
    params = []
    for index, name in ((1, "scale"), (2, "B"), (3, "input_mean"), (4, "input_var")):
        p = np.asarray(inputs[index])
        if p.size != int(np.prod(want)):
            raise invalid(node, f"input {name!r} has shape {p.shape}, expected {want}")
        params.append(p.reshape((1,) + want + (1,) * (x.ndim - 1 - len(want))))
    scale, bias, mean, var = params
    epsilon = attr_float(node, "epsilon", 1e-5)
    y = (x - mean) * (scale / np.sqrt(var + np.asarray(epsilon, dtype=var.dtype))) + bias
    return [y.astype(x.dtype, copy=False)]


def _lrn_params(node):
    size = attr_int(node, "size")
    if size < 1:
        raise invalid(node, f"attribute 'size'={size!r} must be a positive integer")
    alpha, beta = attr_float(node, "alpha", 1e-4), attr_float(node, "beta", 0.75)
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not value > 0:
            raise invalid(node, f"attribute {name!r}={value!r} must be positive (as onnxruntime requires: "
                                f"the normalisation is undefined or an identity otherwise)")
    return size, alpha, beta, attr_float(node, "bias", 1.0)


def _lrn_infer(node, inputs, opset):
    require_inputs(node, inputs, 1)
    _lrn_params(node)
    shape = inputs[0].shape
    if shape is not None and len(shape) < 3:
        raise invalid(node, f"input X must have rank >= 3, got shape {shape}")
    return [TensorInfo(shape, np.dtype(inputs[0].dtype))]


def _lrn_compute(node, inputs, opset):
    require_inputs(node, inputs, 1)
    size, alpha, beta, bias = _lrn_params(node)
    x = np.asarray(inputs[0])
    if x.ndim < 3:
        raise invalid(node, f"input X must have rank >= 3, got shape {x.shape}")
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    squares = np.pad(x.astype(np.float64) ** 2, [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))
    channels = x.shape[1]
    window_sum = sum(squares[:, i:i + channels] for i in range(size))
    return [(x / (bias + alpha / size * window_sum) ** beta).astype(x.dtype)]


register("BatchNormalization", _bn_infer, _bn_compute, step=BatchNormalizationKernel())
register("LRN", _lrn_infer, _lrn_compute, step=LRNKernel(_lrn_params))
