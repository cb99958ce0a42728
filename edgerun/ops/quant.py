"""Quantised (int8 / uint8) operators: QDQ (QuantizeLinear, DequantizeLinear), the ONNX operator form
(QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger), onnxruntime's `com.microsoft` ops its quantizer
emits (QLinearAdd, QLinearMul, QLinearGlobalAveragePool, QLinearConcat, QLinearSigmoid, QLinearLeakyRelu,
QGemm, QLinearAveragePool) and edgerun's own integer steps (domain "edgerun": QLinearConv with an output
clamp, QLookup: any elementwise function of one int8 tensor as a 256-entry table).

The reference computes are the integer oracle: int8/uint8 inputs, exact int64 accumulation, requantisation
in float32 as onnxruntime does it (multiplier = x_scale * w_scale / y_scale in float32, round half to even,
add the zero point, saturate). Types other than int8/uint8 (int16/uint16 pass through Q/DQ; int4, float8, ...)
raise UnsupportedOperatorError naming the node.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from edgerun.errors import UnsupportedOperatorError
from edgerun.ir import TensorInfo
from edgerun.kernels import steps_quant as sq
from edgerun.kernels.native_quant import NativeQInvertedResidualKernel, NativeQLinearConvKernel, NativeQMatMulKernel
from edgerun.ops import lookup as ops_lookup
from edgerun.ops import register
from edgerun.ops._common import attr_float, attr_int, attr_ints, broadcast_shapes, invalid, require_inputs
from edgerun.ops.conv import _conv_params, _conv_pads, conv_nd, conv_output_shape, weight_macs

QUANT_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8))
_DQ_DTYPES = QUANT_DTYPES + (np.dtype(np.int32), np.dtype(np.int16), np.dtype(np.uint16))
_ONNX_QUANT_TYPES = {2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16}
MS = "com.microsoft"


def unsupported(node, dtype, opset: int = 0) -> UnsupportedOperatorError:
    error = UnsupportedOperatorError(node.name, node.op_type, node.domain, opset, [])
    error.args = (f"node {node.name!r}: operator {node.op_type!r} with quantised type {dtype} is not supported by "
                  f"edgerun (int8 and uint8 are; int4, float8 and block quantisation are not)",)
    return error


def check_quant_dtype(node, dtype, allowed=QUANT_DTYPES) -> np.dtype:
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise unsupported(node, dtype) from None
    if dtype not in allowed:
        raise unsupported(node, dtype)
    return dtype


# ---- QuantizeLinear / DequantizeLinear

def _axis_shape(node, scale_shape, rank: int) -> tuple | None:
    """How a per-axis scale broadcasts against a rank-`rank` tensor (None: per tensor)."""
    if len(scale_shape) == 0 or (len(scale_shape) == 1 and scale_shape[0] == 1):
        return None
    if len(scale_shape) != 1:
        raise unsupported(node, f"block-quantised scale of shape {tuple(scale_shape)}")
    axis = attr_int(node, "axis", 1)
    if not -rank <= axis < rank:
        raise invalid(node, f"axis {axis} is out of range for rank {rank}")
    shape = [1] * rank
    shape[axis % rank] = scale_shape[0]
    return tuple(shape)


def _check_block_size(node) -> None:
    if attr_int(node, "block_size", 0) != 0:
        raise unsupported(node, "block quantisation (block_size)")


def _quantize_output_dtype(node, inputs) -> np.dtype:
    if len(inputs) > 2 and inputs[2] is not None:
        return check_quant_dtype(node, inputs[2].dtype, QUANT_DTYPES + (np.dtype(np.int16), np.dtype(np.uint16)))
    code = attr_int(node, "output_dtype", 0)
    if code == 0:
        return np.dtype(np.uint8)
    if code not in _ONNX_QUANT_TYPES:
        raise unsupported(node, f"ONNX element type {code}")
    return np.dtype(_ONNX_QUANT_TYPES[code])


def _quantize_infer(node, inputs, opset):
    require_inputs(node, inputs, 2, " (x, y_scale)")
    _check_block_size(node)
    return [TensorInfo(inputs[0].shape, _quantize_output_dtype(node, inputs))]


def _scale_zero(node, x, scale, zero, out_dtype):
    shape = _axis_shape(node, np.shape(scale), x.ndim)
    scale = np.asarray(scale, dtype=np.float32)
    zero = np.zeros((), out_dtype) if zero is None else np.asarray(zero)
    if shape is not None:
        scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.ndim else zero
    return scale, zero


def _quantize_compute(node, inputs, opset):
    require_inputs(node, inputs, 2, " (x, y_scale)")
    _check_block_size(node)
    x = np.asarray(inputs[0], dtype=np.float32)
    infos = [None if i is None else TensorInfo(np.shape(i), np.asarray(i).dtype) for i in inputs]
    out_dtype = _quantize_output_dtype(node, infos)
    scale, zero = _scale_zero(node, x, inputs[1], inputs[2] if len(inputs) > 2 else None, out_dtype)
    return [sq.quantize(x, scale, zero, out_dtype)]


def _dequantize_infer(node, inputs, opset):
    require_inputs(node, inputs, 2, " (x, x_scale)")
    _check_block_size(node)
    check_quant_dtype(node, inputs[0].dtype, _DQ_DTYPES)
    return [TensorInfo(inputs[0].shape, np.dtype(inputs[1].dtype))]


def _dequantize_compute(node, inputs, opset):
    require_inputs(node, inputs, 2, " (x, x_scale)")
    _check_block_size(node)
    x = np.asarray(inputs[0])
    check_quant_dtype(node, x.dtype, _DQ_DTYPES)
    scale, zero = _scale_zero(node, x, inputs[1], inputs[2] if len(inputs) > 2 else None, x.dtype)
    return [sq.dequantize(x, scale, zero).astype(np.asarray(inputs[1]).dtype, copy=False)]


# ---- QLinearConv (ONNX) and edgerun's QLinearConv with an output clamp

def _qconv_infer(node, inputs, opset):
    require_inputs(node, inputs, 8, " (x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point)")
    x, w, yzp = inputs[0], inputs[3], inputs[7]
    check_quant_dtype(node, x.dtype)
    check_quant_dtype(node, w.dtype)
    out_dtype = check_quant_dtype(node, yzp.dtype)
    shape = _conv_shape(node, x.shape, w.shape)
    return [TensorInfo(shape, out_dtype)]


def _conv_shape(node, x_shape, w_shape):
    if x_shape is None or w_shape is None:
        return None
    kernel_shape, strides, dilations, group = _conv_params(node, x_shape, w_shape)
    if x_shape[1] != w_shape[1] * group or w_shape[0] % group:
        raise invalid(node, f"input X {tuple(x_shape)} and weight W {tuple(w_shape)} do not match group={group}")
    spatial = x_shape[2:]
    pads = _conv_pads(node, spatial, kernel_shape, strides, dilations)
    out = conv_output_shape(spatial, kernel_shape, strides, pads, dilations)
    if any(o <= 0 for o in out):
        raise invalid(node, f"output spatial shape {out} is empty")
    return (x_shape[0], w_shape[0]) + tuple(out)


def integer_conv(node, x, xzp, w, wzp, bias=None) -> np.ndarray:
    """The exact int64 accumulator of (x - x_zero_point) conv (w - w_zero_point) (+ int32 bias)."""
    kernel_shape, strides, dilations, group = _conv_params(node, x.shape, w.shape)
    pads = _conv_pads(node, x.shape[2:], kernel_shape, strides, dilations)
    xi = x.astype(np.int64) - np.asarray(xzp, dtype=np.int64)
    wzp = np.asarray(wzp, dtype=np.int64)
    wi = w.astype(np.int64) - (wzp.reshape((-1,) + (1,) * (w.ndim - 1)) if wzp.ndim else wzp)
    acc = conv_nd(xi, wi, None, strides=strides, pads=pads, dilations=dilations, group=group)
    if bias is not None:
        acc = acc + np.asarray(bias, dtype=np.int64).reshape((1, -1) + (1,) * (acc.ndim - 2))
    return acc


def _channel_multiplier(x_scale, w_scale, y_scale, rank: int) -> np.ndarray:
    m = sq.multiplier(x_scale, w_scale, y_scale)
    return m.reshape((1, -1) + (1,) * (rank - 2)) if m.ndim else m


def _clamp(node, out_dtype):
    info = np.iinfo(out_dtype)
    return attr_int(node, "out_min", info.min), attr_int(node, "out_max", info.max)


def _qconv_compute(node, inputs, opset):
    require_inputs(node, inputs, 8, " (x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point)")
    x, xs, xzp, w, ws, wzp, ys, yzp = (np.asarray(i) for i in inputs[:8])
    bias = inputs[8] if len(inputs) > 8 else None
    out_dtype = check_quant_dtype(node, yzp.dtype)
    acc = integer_conv(node, x, xzp, w, wzp, bias)
    y = sq.requantize(acc, _channel_multiplier(xs, ws, ys, acc.ndim), yzp, out_dtype, *_clamp(node, out_dtype))
    return [y]


# ---- ConvInteger / MatMulInteger (int32 outputs)

def _conv_integer_infer(node, inputs, opset):
    require_inputs(node, inputs, 2, " (x, w)")
    check_quant_dtype(node, inputs[0].dtype)
    check_quant_dtype(node, inputs[1].dtype)
    return [TensorInfo(_conv_shape(node, inputs[0].shape, inputs[1].shape), np.dtype(np.int32))]


def _optional(inputs, index, default=0):
    return np.asarray(inputs[index]) if len(inputs) > index and inputs[index] is not None else np.asarray(default)


def _conv_integer_compute(node, inputs, opset):
    require_inputs(node, inputs, 2, " (x, w)")
    x, w = np.asarray(inputs[0]), np.asarray(inputs[1])
    return [integer_conv(node, x, _optional(inputs, 2), w, _optional(inputs, 3)).astype(np.int32)]


def _matmul_shape(node, a_shape, b_shape):
    if a_shape is None or b_shape is None:
        return None
    if len(a_shape) < 1 or len(b_shape) < 1:
        raise invalid(node, "inputs must have rank >= 1")
    a2 = (1,) + tuple(a_shape) if len(a_shape) == 1 else tuple(a_shape)
    b2 = tuple(b_shape) + (1,) if len(b_shape) == 1 else tuple(b_shape)
    if a2[-1] != b2[-2]:
        raise invalid(node, f"inner dimensions differ: {tuple(a_shape)} x {tuple(b_shape)}")
    batch = broadcast_shapes(node, [a2[:-2], b2[:-2]])
    shape = tuple(batch) + (a2[-2], b2[-1])
    if len(a_shape) == 1:
        shape = shape[:-2] + shape[-1:]
    if len(b_shape) == 1:
        shape = shape[:-1]
    return shape


def _matmul_integer_infer(node, inputs, opset):
    require_inputs(node, inputs, 2, " (A, B)")
    check_quant_dtype(node, inputs[0].dtype)
    check_quant_dtype(node, inputs[1].dtype)
    return [TensorInfo(_matmul_shape(node, inputs[0].shape, inputs[1].shape), np.dtype(np.int32))]


def integer_matmul(a, azp, b, bzp) -> np.ndarray:
    """Exact int64 (a - a_zero_point) @ (b - b_zero_point); a per-column b zero point broadcasts over rows."""
    ai = a.astype(np.int64) - np.asarray(azp, dtype=np.int64).reshape(-1, 1) if np.ndim(azp) and a.ndim > 1 \
        else a.astype(np.int64) - np.asarray(azp, dtype=np.int64)
    bi = b.astype(np.int64) - np.asarray(bzp, dtype=np.int64)
    return np.matmul(ai, bi)


def _matmul_integer_compute(node, inputs, opset):
    require_inputs(node, inputs, 2, " (A, B)")
    a, b = np.asarray(inputs[0]), np.asarray(inputs[1])
    return [integer_matmul(a, _optional(inputs, 2), b, _optional(inputs, 3)).astype(np.int32)]


# ---- QLinearMatMul (ONNX) and com.microsoft QGemm

def _qmatmul_infer(node, inputs, opset):
    require_inputs(node, inputs, 8, " (a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point)")
    check_quant_dtype(node, inputs[0].dtype)
    check_quant_dtype(node, inputs[3].dtype)
    out_dtype = check_quant_dtype(node, inputs[7].dtype)
    return [TensorInfo(_matmul_shape(node, inputs[0].shape, inputs[3].shape), out_dtype)]


def _qmatmul_compute(node, inputs, opset):
    require_inputs(node, inputs, 8, " (a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point)")
    a, as_, azp, b, bs, bzp, ys, yzp = (np.asarray(i) for i in inputs[:8])
    out_dtype = check_quant_dtype(node, yzp.dtype)
    acc = integer_matmul(a, azp, b, bzp)
    return [sq.requantize(acc, sq.multiplier(as_, bs, ys), yzp, out_dtype)]


def _gemm_operands(node, a, b):
    if attr_int(node, "transA", 0):
        a = np.swapaxes(a, -1, -2)
    if attr_int(node, "transB", 0):
        b = np.swapaxes(b, -1, -2)
    return a, b


def _qgemm_infer(node, inputs, opset):
    require_inputs(node, inputs, 6, " (A, a_scale, a_zero_point, B, b_scale, b_zero_point)")
    a, b = inputs[0], inputs[3]
    check_quant_dtype(node, a.dtype)
    check_quant_dtype(node, b.dtype)
    if a.shape is None or b.shape is None or len(a.shape) != 2 or len(b.shape) != 2:
        raise invalid(node, "A and B must be matrices")
    m = a.shape[1] if attr_int(node, "transA", 0) else a.shape[0]
    n = b.shape[0] if attr_int(node, "transB", 0) else b.shape[1]
    has_y = len(inputs) > 8 and inputs[7] is not None
    out_dtype = check_quant_dtype(node, inputs[8].dtype) if has_y and inputs[8] is not None else \
        (np.dtype(np.float32) if not has_y else np.dtype(np.uint8))
    return [TensorInfo((m, n), out_dtype)]


def _qgemm_compute(node, inputs, opset):
    require_inputs(node, inputs, 6, " (A, a_scale, a_zero_point, B, b_scale, b_zero_point)")
    a, as_, azp, b, bs, bzp = (np.asarray(i) for i in inputs[:6])
    if attr_float(node, "alpha", 1.0) != 1.0:
        raise unsupported(node, "QGemm with alpha != 1")
    a, b = _gemm_operands(node, a, b)
    acc = integer_matmul(a, azp, b, bzp)
    c = inputs[6] if len(inputs) > 6 else None
    if c is not None:
        acc = acc + np.asarray(c, dtype=np.int64)
    if len(inputs) > 7 and inputs[7] is not None:
        yzp = np.asarray(inputs[8]) if len(inputs) > 8 and inputs[8] is not None else np.zeros((), np.uint8)
        return [sq.requantize(acc, sq.multiplier(as_, bs, inputs[7]), yzp, yzp.dtype)]
    scale = np.float32(as_) * np.asarray(bs, dtype=np.float32)
    return [(acc.astype(np.float32) * scale).astype(np.float32)]


# ---- com.microsoft QLinearAdd / QLinearMul (and edgerun's over the same inputs)

def _qbinary_infer(node, inputs, opset):
    require_inputs(node, inputs, 7, " (A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale)")
    a, b = inputs[0], inputs[3]
    check_quant_dtype(node, a.dtype)
    check_quant_dtype(node, b.dtype)
    out_dtype = check_quant_dtype(node, inputs[7].dtype) if len(inputs) > 7 and inputs[7] is not None else a.dtype
    return [TensorInfo(broadcast_shapes(node, [a.shape, b.shape]), out_dtype)]


def _qbinary_compute(node, inputs, opset):
    require_inputs(node, inputs, 7, " (A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale)")
    a, as_, azp, b, bs, bzp, cs = (np.asarray(i) for i in inputs[:7])
    czp = _optional(inputs, 7, np.zeros((), a.dtype))
    broadcast_shapes(node, [a.shape, b.shape])
    fa = sq.dequantize(a, as_, azp)
    fb = sq.dequantize(b, bs, bzp)
    value = fa + fb if node.op_type == "QLinearAdd" else fa * fb
    return [sq.quantize(value, cs, czp, czp.dtype)]


# ---- QLinearGlobalAveragePool / QLinearAveragePool (com.microsoft)

def _qgap_infer(node, inputs, opset):
    require_inputs(node, inputs, 5, " (X, x_scale, x_zero_point, y_scale, y_zero_point)")
    x = inputs[0]
    check_quant_dtype(node, x.dtype)
    if attr_int(node, "channels_last", 0):
        raise unsupported(node, "channels_last=1")
    if x.shape is None or len(x.shape) < 3:
        raise invalid(node, "X must have rank >= 3")
    return [TensorInfo(tuple(x.shape[:2]) + (1,) * (len(x.shape) - 2), check_quant_dtype(node, inputs[4].dtype))]


def _qgap_compute(node, inputs, opset):
    require_inputs(node, inputs, 5, " (X, x_scale, x_zero_point, y_scale, y_zero_point)")
    x, xs, xzp, ys, yzp = (np.asarray(i) for i in inputs[:5])
    axes = tuple(range(2, x.ndim))
    total = np.sum(x.astype(np.int64), axis=axes, keepdims=True) - int(xzp) * int(np.prod(x.shape[2:]))
    count = int(np.prod(x.shape[2:]))
    return [sq.requantize(total, sq.mean_multiplier(xs, ys, count), yzp, yzp.dtype)]


# ---- QLinearConcat (com.microsoft): Y_scale, Y_zero_point, then (tensor, scale, zero point) triples

def _qconcat_triples(node, inputs):
    if len(inputs) < 5 or (len(inputs) - 2) % 3:
        raise invalid(node, "expects Y_scale, Y_zero_point and (X, X_scale, X_zero_point) triples")
    return [inputs[i:i + 3] for i in range(2, len(inputs), 3)]


def _qconcat_infer(node, inputs, opset):
    triples = _qconcat_triples(node, inputs)
    out_dtype = check_quant_dtype(node, inputs[1].dtype)
    shapes = [t[0].shape for t in triples]
    for t in triples:
        check_quant_dtype(node, t[0].dtype)
    if any(s is None for s in shapes):
        return [TensorInfo(None, out_dtype)]
    rank = len(shapes[0])
    axis = attr_int(node, "axis") % rank
    total = sum(s[axis] for s in shapes)
    return [TensorInfo(tuple(shapes[0][:axis]) + (total,) + tuple(shapes[0][axis + 1:]), out_dtype)]


def _qconcat_compute(node, inputs, opset):
    triples = _qconcat_triples(node, inputs)
    ys, yzp = np.asarray(inputs[0]), np.asarray(inputs[1])
    parts = [sq.quantize(sq.dequantize(np.asarray(x), s, z), ys, yzp, yzp.dtype) for x, s, z in triples]
    axis = attr_int(node, "axis") % parts[0].ndim
    return [np.concatenate(parts, axis=axis)]


# ---- table ops: QLinearSigmoid, QLinearLeakyRelu (com.microsoft), edgerun QLookup

def _qunary_infer(node, inputs, opset):
    require_inputs(node, inputs, 4, " (X, X_scale, X_zero_point, Y_scale)")
    check_quant_dtype(node, inputs[0].dtype)
    out_dtype = check_quant_dtype(node, inputs[4].dtype) if len(inputs) > 4 and inputs[4] is not None \
        else np.dtype(inputs[0].dtype)
    return [TensorInfo(inputs[0].shape, out_dtype)]


def _qunary_function(node):
    if node.op_type == "QLinearSigmoid":
        return lambda v: (1.0 / (1.0 + np.exp(-v.astype(np.float64)))).astype(np.float32)
    alpha = np.float32(attr_float(node, "alpha", 0.01))
    return lambda v: np.where(v >= 0, v, v * alpha).astype(np.float32)


def _qunary_compute(node, inputs, opset):
    require_inputs(node, inputs, 4, " (X, X_scale, X_zero_point, Y_scale)")
    x, xs, xzp, ys = (np.asarray(i) for i in inputs[:4])
    yzp = _optional(inputs, 4, np.zeros((), x.dtype))
    return [sq.quantize(_qunary_function(node)(sq.dequantize(x, xs, xzp)), ys, yzp, yzp.dtype)]


def _lookup_infer(node, inputs, opset):
    require_inputs(node, inputs, 2, " (X, table)")
    check_quant_dtype(node, inputs[0].dtype)
    table = inputs[1]
    if table.shape != (256,):
        raise invalid(node, f"table must have 256 entries, got shape {table.shape}")
    return [TensorInfo(inputs[0].shape, check_quant_dtype(node, table.dtype))]


def _lookup_compute(node, inputs, opset):
    require_inputs(node, inputs, 2, " (X, table)")
    return [sq.lookup(np.asarray(inputs[0]), np.asarray(inputs[1]))]


# ---- QLinearAveragePool (com.microsoft): the float AveragePool between a dequantize and a quantize, as
# onnxruntime computes it

def _float_pool_node(node):
    if attr_int(node, "channels_last", 0):
        raise unsupported(node, "channels_last=1")
    attrs = {k: v for k, v in node.attrs.items() if k != "channels_last"}
    return dataclasses.replace(node, op_type="AveragePool", domain="", inputs=node.inputs[:1], attrs=attrs)


def _qavgpool_infer(node, inputs, opset):
    require_inputs(node, inputs, 4, " (X, x_scale, x_zero_point, y_scale)")
    check_quant_dtype(node, inputs[0].dtype)
    pool = _float_pool_node(node)
    shape = ops_lookup(pool, opset).infer(pool, [TensorInfo(inputs[0].shape, np.dtype(np.float32))], opset)[0].shape
    out_dtype = check_quant_dtype(node, inputs[4].dtype) if len(inputs) > 4 and inputs[4] is not None \
        else np.dtype(inputs[0].dtype)
    return [TensorInfo(shape, out_dtype)]


def _qavgpool_compute(node, inputs, opset):
    require_inputs(node, inputs, 4, " (X, x_scale, x_zero_point, y_scale)")
    x, xs, xzp, ys = (np.asarray(i) for i in inputs[:4])
    yzp = _optional(inputs, 4, np.zeros((), x.dtype))
    pool = _float_pool_node(node)
    pooled = ops_lookup(pool, opset).compute(pool, [sq.dequantize(x, xs, xzp)], opset)[0]
    return [sq.quantize(pooled, ys, yzp, yzp.dtype)]


# ---- edgerun QInvertedResidual: the int8 block (see edgerun/passes/quantize.py), as its three QLinearConv
# stages and the residual QLinearAdd

def _block_stage(node, prefix: str, inputs: list, first: int, in_scale: str, in_zero: str, x: str, channels=None):
    a = node.attrs
    k, s = a[prefix + "_kernel"], a[prefix + "_stride"]
    attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": list(a[prefix + "_pads"]),
             "group": channels if channels else 1}
    for bound in ("_min", "_max"):
        if prefix + bound in a:
            attrs["out" + bound] = a[prefix + bound]
    names = [x, in_scale, in_zero] + list(inputs[first:first + 5]) + ([inputs[first + 5]] if inputs[first + 5] else [])
    return dataclasses.replace(node, op_type="QLinearConv", domain="edgerun", inputs=names, attrs=attrs)


def _block_stages(node, shapes):
    """(stage node, output name) for expand (if any), depthwise, project, over symbolic names."""
    i = node.inputs
    if len(i) not in (21, 23):
        raise invalid(node, f"expects 21 inputs (23 with a residual add), got {len(i)}")
    stages = []
    current, scale, zero = i[0], i[1], i[2]
    if i[3]:
        stages.append(_block_stage(node, "expand", i, 3, scale, zero, current))
        current, scale, zero = "#expanded", i[6], i[7]
    stages.append(_block_stage(node, "dw", i, 9, scale, zero, current, channels=shapes[9][0]))
    current, scale, zero = "#depthwise", i[12], i[13]
    project = dict(node.attrs, proj_kernel=1, proj_stride=1, proj_pads=[0, 0, 0, 0])
    stages.append(_block_stage(dataclasses.replace(node, attrs=project), "proj", i, 15, scale, zero, current))
    return stages


def _qblock_values(node, values: dict, opset):
    """Run the stages by the oracle ops over a dict name -> value (TensorInfo or array)."""
    shapes = [None if n == "" else np.shape(values[n]) if not isinstance(values[n], TensorInfo) else values[n].shape
              for n in node.inputs]
    outputs = ["#expanded", "#depthwise", "#projected"]
    stages = _block_stages(node, shapes)
    if node.attrs.get("quantize_input", 0):     # the block reads the float model input and quantises it
        i = node.inputs
        quantize = dataclasses.replace(node, op_type="QuantizeLinear", domain="", attrs={}, inputs=list(i[:3]))
        values[i[0]] = yield quantize, [values[n] for n in i[:3]]
    for stage, name in zip(stages, outputs[-len(stages):]):
        values[name] = yield stage, [values[n] if n else None for n in stage.inputs]
    if node.attrs.get("residual", 0):
        i = node.inputs
        add = dataclasses.replace(node, op_type="QLinearAdd", domain=MS, attrs={},
                                  inputs=[i[0], i[1], i[2], "#projected", i[18], i[19], i[21], i[22]])
        values["#out"] = yield add, [values[n] for n in add.inputs]
    else:
        values["#out"] = values["#projected"]


def _drive_block(node, inputs, opset, step):
    values = dict(zip(node.inputs, inputs))
    values.pop("", None)
    run = _qblock_values(node, values, opset)
    try:
        stage, args = next(run)
        while True:
            stage, args = run.send(step(stage, args))
    except StopIteration:
        return values["#out"]


def _qblock_infer(node, inputs, opset):
    return [_drive_block(node, inputs, opset, lambda stage, args: _STAGE_INFER[stage.op_type](stage, args, opset)[0])]


def _qblock_compute(node, inputs, opset):
    return [_drive_block(node, [None if v is None else np.asarray(v) for v in inputs], opset,
                         lambda stage, args: _STAGE_COMPUTE[stage.op_type](stage, args, opset)[0])]


_STAGE_INFER = {"QuantizeLinear": _quantize_infer, "QLinearConv": _qconv_infer, "QLinearAdd": _qbinary_infer}
_STAGE_COMPUTE = {"QuantizeLinear": _quantize_compute, "QLinearConv": _qconv_compute, "QLinearAdd": _qbinary_compute}


def _qblock_macs(node, in_shapes, out_shapes) -> int:
    stages = _block_stages(node, in_shapes)
    x = in_shapes[0]
    g = sq.block_geometry(node, x, in_shapes[3] if node.inputs[3] else None, in_shapes[9], in_shapes[15])
    hidden = g.hidden * g.hidden_height * g.hidden_width
    outs = g.hidden * g.out_height * g.out_width
    expand = hidden * g.cin * g.expand.kernel[0] ** 2 if g.expand is not None else 0
    return int(expand + outs * g.dw.kernel[0] ** 2 + g.cout * g.out_height * g.out_width * g.hidden) \
        if stages else 0


# ---- edgerun QMaxPool: MaxPool of an int8 tensor (the max of quantised values is the quantised max)

def _float_maxpool_node(node):
    return dataclasses.replace(node, op_type="MaxPool", domain="")


def _qmaxpool_infer(node, inputs, opset):
    check_quant_dtype(node, inputs[0].dtype)
    pool = _float_maxpool_node(node)
    return ops_lookup(pool, opset).infer(pool, inputs, opset)


def _qmaxpool_compute(node, inputs, opset):
    pool = _float_maxpool_node(node)
    return ops_lookup(pool, max(opset, 12)).compute(pool, inputs, max(opset, 12))


def _matmul_macs(node, in_shapes, out_shapes) -> int:
    a = in_shapes[0]
    k = a[-1] if a else 1
    if node.op_type == "QGemm" and attr_int(node, "transA", 0):
        k = a[0]
    return int(np.prod(out_shapes[0], dtype=np.int64)) * int(k)


def _qconv_macs(node, in_shapes, out_shapes) -> int:
    return weight_macs(node, [in_shapes[0], in_shapes[3]], out_shapes)


register("QuantizeLinear", _quantize_infer, _quantize_compute, step=sq.QuantizeKernel(), any_dtype=True)
register("DequantizeLinear", _dequantize_infer, _dequantize_compute, step=sq.DequantizeKernel(), any_dtype=True)
_QCONV_KERNEL = sq.QLinearConvKernel(_conv_params, _conv_pads)
register("QLinearConv", _qconv_infer, _qconv_compute, macs=_qconv_macs, step=_QCONV_KERNEL,
         native=NativeQLinearConvKernel, any_dtype=True)
register("QLinearConv", _qconv_infer, _qconv_compute, domain="edgerun", macs=_qconv_macs, step=_QCONV_KERNEL,
         native=NativeQLinearConvKernel, any_dtype=True)
register("ConvInteger", _conv_integer_infer, _conv_integer_compute, macs=weight_macs)
register("MatMulInteger", _matmul_integer_infer, _matmul_integer_compute, macs=_matmul_macs)
register("QLinearMatMul", _qmatmul_infer, _qmatmul_compute, macs=_matmul_macs, step=sq.QMatMulKernel(),
         native=NativeQMatMulKernel, any_dtype=True)
register("QGemm", _qgemm_infer, _qgemm_compute, domain=MS, macs=_matmul_macs, step=sq.QMatMulKernel(),
         native=NativeQMatMulKernel, any_dtype=True)
for _op in ("QLinearAdd", "QLinearMul"):
    register(_op, _qbinary_infer, _qbinary_compute, domain=MS, step=sq.QBinaryKernel(), any_dtype=True)
register("QLinearGlobalAveragePool", _qgap_infer, _qgap_compute, domain=MS, step=sq.QGlobalAveragePoolKernel(),
         any_dtype=True)
register("QLinearConcat", _qconcat_infer, _qconcat_compute, domain=MS, step=sq.QConcatKernel(), any_dtype=True)
for _op in ("QLinearSigmoid", "QLinearLeakyRelu"):
    register(_op, _qunary_infer, _qunary_compute, domain=MS, step=sq.QUnaryTableKernel(_qunary_function),
             any_dtype=True)
register("QLinearAveragePool", _qavgpool_infer, _qavgpool_compute, domain=MS,
         step=sq.QAveragePoolKernel(lambda node, inputs: _qavgpool_compute(node, inputs, 19)[0]), any_dtype=True)
register("QMaxPool", _qmaxpool_infer, _qmaxpool_compute, domain="edgerun",
         step=sq.PerChannelKernel(lambda node, inputs: _qmaxpool_compute(node, inputs, 19)[0]), any_dtype=True)
register("QInvertedResidual", _qblock_infer, _qblock_compute, domain="edgerun", macs=_qblock_macs,
         step=sq.QInvertedResidualKernel(), native=NativeQInvertedResidualKernel, any_dtype=True)
register("QLookup", _lookup_infer, _lookup_compute, domain="edgerun", step=sq.LookupKernel(), any_dtype=True)
