"""Element-wise arithmetic with ONNX (numpy-style multidirectional) broadcasting."""
from __future__ import annotations

import numpy as np

from edgerun.ir import TensorInfo
from edgerun.kernels.native_steps import NativeBinaryKernel, NativeSumKernel
from edgerun.kernels.numpy_steps import BinaryKernel
from edgerun.kernels.steps_elementwise import QuietUfuncKernel
from edgerun.kernels.steps_variadic import SumKernel
from edgerun.ops import register
from edgerun.ops._common import (  # noqa: F401  (re-exported for older imports)
    attr_float, attr_int, attr_ints, attr_str, broadcast_shapes, invalid, require_inputs,
)


def _truncating_int_divide(node, a, b):
    if np.any(b == 0):
        raise invalid(node, "integer division by zero")
    quotient = np.floor_divide(a, b)
    remainder_nonzero = np.remainder(a, b) != 0
    signs_differ = (a < 0) != (b < 0)
    return quotient + (remainder_nonzero & signs_differ).astype(quotient.dtype)


def _divide(node, a, b):
    if np.issubdtype(a.dtype, np.integer):
        return _truncating_int_divide(node, a, b)
    return np.divide(a, b)


def _power(node, a, b):
    with np.errstate(invalid="ignore", divide="ignore"):
        if np.issubdtype(a.dtype, np.integer):
            return np.power(a.astype(np.float64), b).astype(a.dtype)
        return np.power(a, b).astype(a.dtype)


_BINARY = {
    "Add": lambda node, a, b: np.add(a, b),
    "Sub": lambda node, a, b: np.subtract(a, b),
    "Mul": lambda node, a, b: np.multiply(a, b),
    "Div": _divide,
    "Pow": _power,
}


def _check_same_dtype(node, infos):
    dtypes = {np.dtype(i.dtype) for i in infos}
    if len(dtypes) > 1:
        raise invalid(node, f"inputs have different dtypes {sorted(str(d) for d in dtypes)}")


def _binary_infer(node, inputs, opset):
    require_inputs(node, inputs, 2)
    a, b = inputs[0], inputs[1]
    if node.op_type != "Pow":
        _check_same_dtype(node, [a, b])
    return [TensorInfo(broadcast_shapes(node, [a.shape, b.shape]), np.dtype(a.dtype))]


def _binary_compute(node, inputs, opset):
    require_inputs(node, inputs, 2)
    a, b = np.asarray(inputs[0]), np.asarray(inputs[1])
    broadcast_shapes(node, [a.shape, b.shape])
    result = _BINARY[node.op_type](node, a, b)
    return [np.asarray(result, dtype=a.dtype)]


def _sqrt_infer(node, inputs, opset):
    require_inputs(node, inputs, 1)
    return [TensorInfo(inputs[0].shape, np.dtype(inputs[0].dtype))]


def _sqrt_compute(node, inputs, opset):
    require_inputs(node, inputs, 1)
    with np.errstate(invalid="ignore"):
        return [np.sqrt(inputs[0])]


def _sum_infer(node, inputs, opset):
    if not inputs or any(i is None for i in inputs):
        raise invalid(node, "expects one or more inputs, none omitted")
    _check_same_dtype(node, inputs)
    return [TensorInfo(broadcast_shapes(node, [i.shape for i in inputs]), np.dtype(inputs[0].dtype))]


def _sum_compute(node, inputs, opset):
    if not inputs or any(i is None for i in inputs):
        raise invalid(node, "expects one or more inputs, none omitted")
    broadcast_shapes(node, [np.shape(i) for i in inputs])
    total = np.array(inputs[0], copy=True)
    for term in inputs[1:]:
        total = total + term
    return [np.asarray(total, dtype=np.asarray(inputs[0]).dtype)]


# float32 only (the dtype rule): integer Div truncates and integer Pow rounds, unlike the ufuncs
_ARENA_KERNELS = {"Add": BinaryKernel(np.add), "Sub": BinaryKernel(np.subtract), "Mul": BinaryKernel(np.multiply),
                  "Div": QuietUfuncKernel(np.divide), "Pow": QuietUfuncKernel(np.power)}
for _op in _BINARY:
    register(_op, _binary_infer, _binary_compute, step=_ARENA_KERNELS[_op],
             native=NativeBinaryKernel if _op in NativeBinaryKernel.KINDS else None)
register("Sqrt", _sqrt_infer, _sqrt_compute, step=QuietUfuncKernel(np.sqrt))
register("Sum", _sum_infer, _sum_compute, step=SumKernel(), native=NativeSumKernel)
