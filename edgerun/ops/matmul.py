"""MatMul (numpy matmul semantics, as ONNX) and Gemm."""
from __future__ import annotations

import numpy as np

from edgerun.errors import InvalidModelError
from edgerun.ir import TensorInfo
from edgerun.kernels.native_steps import NativeGemmKernel
from edgerun.kernels.numpy_steps import GemmKernel, MatMulKernel
from edgerun.ops import register
from edgerun.ops._common import attr_float, attr_int, broadcast_shapes, invalid, require_inputs


def _dims_match(a, b):
    return not (isinstance(a, int) and isinstance(b, int) and a != b)


def _matmul_shape(node, a, b):
    if a is None or b is None:
        return None
    if len(a) == 0 or len(b) == 0:
        raise invalid(node, "MatMul inputs must have rank >= 1")
    a2 = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b2 = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    if not _dims_match(a2[-1], b2[-2]):
        raise invalid(node, f"inner dimensions differ: A {tuple(a)} @ B {tuple(b)}")
    batch = broadcast_shapes(node, [a2[:-2], b2[:-2]])
    shape = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        shape = shape[:-2] + shape[-1:]
    if len(b) == 1:
        shape = shape[:-1]
    return shape


def _matmul_infer(node, inputs, opset):
    require_inputs(node, inputs, 2)
    return [TensorInfo(_matmul_shape(node, inputs[0].shape, inputs[1].shape), np.dtype(inputs[0].dtype))]


def _matmul_compute(node, inputs, opset):
    require_inputs(node, inputs, 2)
    a, b = np.asarray(inputs[0]), np.asarray(inputs[1])
    _matmul_shape(node, a.shape, b.shape)
    return [np.matmul(a, b).astype(a.dtype, copy=False)]


def _gemm_operands(node, a_shape, b_shape):
    if a_shape is None or b_shape is None:
        return None
    if len(a_shape) != 2 or len(b_shape) != 2:
        raise invalid(node, f"inputs A {a_shape} and B {b_shape} must both be 2-D")
    trans_a, trans_b = attr_int(node, "transA", 0), attr_int(node, "transB", 0)
    m, k = a_shape[::-1] if trans_a else a_shape
    kb, n = b_shape[::-1] if trans_b else b_shape
    if not _dims_match(k, kb):
        raise invalid(node, f"inner dimensions differ: A {a_shape} (transA={trans_a}) and "
                            f"B {b_shape} (transB={trans_b})")
    return m, n


def _check_c_broadcast(node, c_shape, out):
    if c_shape is None or out is None:
        return
    try:
        fits = len(c_shape) <= 2 and broadcast_shapes(node, [c_shape, out]) == tuple(out)
    except InvalidModelError:
        fits = False
    if not fits:
        raise invalid(node, f"input C of shape {tuple(c_shape)} does not broadcast to the output {tuple(out)}")


def _gemm_infer(node, inputs, opset):
    require_inputs(node, inputs, 2, " (A, B)")
    out = _gemm_operands(node, inputs[0].shape, inputs[1].shape)
    c = inputs[2] if len(inputs) > 2 else None
    if c is not None:
        _check_c_broadcast(node, c.shape, out)
    elif opset < 11:
        raise invalid(node, "input C is required before opset 11")
    return [TensorInfo(out, np.dtype(inputs[0].dtype))]


def _gemm_compute(node, inputs, opset):
    require_inputs(node, inputs, 2, " (A, B)")
    a, b = np.asarray(inputs[0]), np.asarray(inputs[1])
    out = _gemm_operands(node, a.shape, b.shape)
    a = a.T if attr_int(node, "transA", 0) else a
    b = b.T if attr_int(node, "transB", 0) else b
    y = np.asarray(attr_float(node, "alpha", 1.0), dtype=a.dtype) * (a @ b)
    c = inputs[2] if len(inputs) > 2 else None
    if c is not None:
        _check_c_broadcast(node, np.shape(c), out)
        y = y + np.asarray(attr_float(node, "beta", 1.0), dtype=a.dtype) * np.asarray(c, dtype=a.dtype)
    return [y.astype(a.dtype, copy=False)]


def _product_macs(node, in_shapes, out_shapes) -> int:
    """Each output element is a dot product over A's inner dimension (its last, or first for Gemm transA)."""
    outputs = int(np.prod(out_shapes[0], dtype=np.int64))
    a = in_shapes[0] if in_shapes else None
    if len(in_shapes) < 2 or a is None:
        return outputs
    transposed = node.op_type == "Gemm" and node.attrs.get("transA", 0)
    return outputs * int(a[-2] if transposed and len(a) >= 2 else a[-1])


register("MatMul", _matmul_infer, _matmul_compute, macs=_product_macs, step=MatMulKernel())
register("Gemm", _gemm_infer, _gemm_compute, macs=_product_macs, step=GemmKernel(), native=NativeGemmKernel)
