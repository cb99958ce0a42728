"""Integer arithmetic of the quantised ops, and their arena kernels (int8 / uint8 activations).

One arithmetic, shared by the oracle (edgerun/ops/quant.py) and the kernels, as onnxruntime does it:
- quantize(x) = saturate(round_half_even(x / scale) + zero_point), in float32;
- dequantize(q) = float32(int32(q) - zero_point) * scale;
- a product accumulates exactly ((x - x_zp) * (w - w_zp) summed in int64 by the oracle; by the kernels in
  int32 (depthwise), or in float32 while every partial sum stays below 2**24 (at most 258 terms), else float64,
  both exact) and is requantised by
  saturate(round_half_even(float32(acc) * M) + y_zp), M = float32(x_scale) * float32(w_scale) / float32(y_scale);
- an elementwise function of one int8 tensor is a 256-entry table indexed by the byte's bit pattern.

The kernels work tile by tile (a few thousand elements, or an output-row band of a convolution) in scratch the
plan places in the arena; none allocates a temporary of activation size.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np

from edgerun.kernels.numpy_steps import StepKernel

CHUNK = 4096                     # elements of one elementwise tile
CONV_TILE_BYTES = 48 * 1024      # target bytes of a convolution tile's scratch (at least one output row)


# ---- the arithmetic

def _f32(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def saturate(values: np.ndarray, dtype, low=None, high=None) -> np.ndarray:
    info = np.iinfo(dtype)
    low = info.min if low is None else max(int(low), info.min)
    high = info.max if high is None else min(int(high), info.max)
    return np.clip(values, low, high).astype(dtype)


def quantize(x, scale, zero_point, dtype) -> np.ndarray:
    value = np.rint(_f32(x) / _f32(scale)) + _f32(zero_point)
    return saturate(value, dtype)


def dequantize(q, scale, zero_point) -> np.ndarray:
    centred = np.asarray(q).astype(np.int32) - np.asarray(zero_point).astype(np.int32)
    return centred.astype(np.float32) * _f32(scale)


def multiplier(x_scale, w_scale, y_scale) -> np.ndarray:
    return (_f32(x_scale) * _f32(w_scale)) / _f32(y_scale)


def mean_multiplier(x_scale, y_scale, count: int) -> np.ndarray:
    return _f32(x_scale) / _f32(y_scale) / np.float32(count)


def requantize(acc, mult, zero_point, dtype, low=None, high=None) -> np.ndarray:
    value = np.rint(np.asarray(acc).astype(np.float32) * _f32(mult)) + _f32(zero_point)
    return saturate(value, dtype, low, high)


def byte_values(dtype) -> np.ndarray:
    """The 256 values of an 8-bit type, in the order of their bit patterns (the table index)."""
    return np.arange(256, dtype=np.uint8).view(dtype)


def lookup(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    return table[x.view(np.uint8)]


def requant_table(in_dtype, in_scale, in_zero, out_scale, out_zero, out_dtype, function=None) -> np.ndarray:
    """The table of q -> quantize(function(dequantize(q))) for every byte q."""
    values = dequantize(byte_values(in_dtype), in_scale, in_zero)
    if function is not None:
        values = _f32(function(values))
    return quantize(values, out_scale, out_zero, out_dtype)


# ---- tiling

def blocks(shape: tuple, limit: int = CHUNK):
    """Index tuples cutting an array of `shape` into C-order blocks of at most `limit` elements (the last axis
    is cut too when one row alone is longer)."""
    shape = tuple(shape)
    k = len(shape)
    while k > 0 and math.prod(shape[k - 1:]) <= limit:
        k -= 1
    if k == len(shape):      # the last axis alone exceeds the limit
        for lead in np.ndindex(*shape[:-1]):
            for start in range(0, shape[-1], limit):
                yield lead + (slice(start, min(start + limit, shape[-1])),)
        return
    if k == 0:
        yield ()
        return
    inner = math.prod(shape[k:])
    step = max(1, limit // inner)
    for lead in np.ndindex(*shape[:k - 1]):
        for start in range(0, shape[k - 1], step):
            yield lead + (slice(start, min(start + step, shape[k - 1])),)


def _tmp(scratch_view: np.ndarray, shape, dtype=np.float32) -> np.ndarray:
    """The first prod(shape) items of a scratch buffer, as `dtype` (the buffer's tail beyond a whole item unused)."""
    count = math.prod(shape)
    raw = scratch_view.view(np.uint8)
    itemsize = np.dtype(dtype).itemsize
    return raw[:count * itemsize].view(dtype).reshape(shape)


def _scalar(value) -> bool:
    return np.size(value) == 1


def _store(y_block, values, zero_point, low, high) -> None:
    """values (float32, rounded in place) + zero point, saturated, into the int8/uint8 block y_block."""
    np.rint(values, out=values)
    np.add(values, np.float32(zero_point), out=values)
    np.clip(values, low, high, out=values)
    np.copyto(y_block, values, casting="unsafe")


def _range(dtype, node=None):
    info = np.iinfo(dtype)
    if node is None:
        return info.min, info.max
    return max(info.min, node.attrs.get("out_min", info.min)), min(info.max, node.attrs.get("out_max", info.max))


class DerivedWeights:
    """Weight layouts a kernel derives once from a constant (centred, widened), kept exactly as long as that
    constant lives: one kernel instance serves every node and session, so they are keyed by the weight array
    (and a tag), never by node name."""

    def __init__(self):
        self._store = {}

    def get(self, array: np.ndarray, tag, make):
        key = (id(array), tag)
        entry = self._store.get(key)
        if entry is None or entry[0]() is not array:
            entry = (weakref.ref(array, lambda _, key=key: self._store.pop(key, None)), make())
            self._store[key] = entry
        return entry[1]


# ---- QuantizeLinear / DequantizeLinear

def _whole_words(sizes: dict) -> dict:
    """Scratch sizes rounded up to whole 8-byte words (the executor views scratch as float32; tiles hold float64)."""
    return {name: -(-size // 8) * 8 for name, size in sizes.items() if size}


def _chunk_bytes(shape) -> int:
    return min(CHUNK, math.prod(shape)) * 4


class QuantizeKernel(StepKernel):
    def scratch_bytes(self, node, in_shapes, out_shapes):
        return _whole_words({"tmp": _chunk_bytes(out_shapes[0])})

    def run(self, node, inputs, outputs, scratch):
        x, scale, y = inputs[0], inputs[1], outputs[0]
        zero = inputs[2] if len(inputs) > 2 and inputs[2] is not None else np.zeros((), y.dtype)
        if not (_scalar(scale) and _scalar(zero)):
            np.copyto(y, quantize(x, _per_axis(node, scale, x.ndim), _per_axis(node, zero, x.ndim), y.dtype))
            return
        low, high = _range(y.dtype)
        for index in blocks(x.shape):
            xb = x[index]
            t = _tmp(scratch["tmp"], xb.shape)
            np.divide(xb, np.float32(np.asarray(scale).reshape(())), out=t)
            _store(y[index], t, np.asarray(zero).reshape(()), low, high)


def _per_axis(node, value, rank):
    value = np.asarray(value)
    if value.size == 1:
        return value.reshape(())
    shape = [1] * rank
    shape[node.attrs.get("axis", 1) % rank] = value.size
    return value.reshape(shape)


class DequantizeKernel(StepKernel):
    def run(self, node, inputs, outputs, scratch):
        x, scale, y = inputs[0], inputs[1], outputs[0]
        zero = inputs[2] if len(inputs) > 2 and inputs[2] is not None else np.zeros((), x.dtype)
        if not (_scalar(scale) and _scalar(zero)) or x.dtype.itemsize > 1:
            np.copyto(y, dequantize(x, _per_axis(node, scale, x.ndim), _per_axis(node, zero, x.ndim)))
            return
        for index in blocks(x.shape):
            np.subtract(x[index], np.float32(np.asarray(zero).reshape(())), out=y[index])
            np.multiply(y[index], np.float32(np.asarray(scale).reshape(())), out=y[index])


# ---- convolutions: int8 in, exact accumulation, requantised int8 out, computed row range by row range

@dataclass(frozen=True)
class ConvSpec:
    """A 2-D convolution's geometry; pads are (top, left) here: the bottom and right follow from the sizes."""
    kernel: tuple
    strides: tuple
    dilations: tuple
    group: int
    pads: tuple

    def kind(self, cin: int, cout: int) -> str:
        if self.group == cin == cout:
            return "depthwise"
        if self.group == 1 and self.kernel == (1, 1) and self.strides == (1, 1) and self.pads == (0, 0):
            return "pointwise"
        return "gemm"


@dataclass
class Requant:
    """How an accumulator becomes the int8 output: per-channel multiplier, zero point, clamp."""
    mult: np.ndarray
    zero: object
    low: int
    high: int


EXACT_FLOAT32_TERMS = (1 << 24) // (255 * 255)   # products of two centred 8-bit values summed exactly in float32


def accumulator_dtype(terms: int):
    """float32 while a sum of `terms` products of centred 8-bit values stays below 2**24 (exact), else float64."""
    return np.dtype(np.float32) if terms <= EXACT_FLOAT32_TERMS else np.dtype(np.float64)


def conv_tile_bytes(spec: ConvSpec, cin: int, cout: int, ho: int, wo: int, target: int = CONV_TILE_BYTES):
    """Bytes of the three tiles (a, b, c) a conv of this shape works in."""
    kind = spec.kind(cin, cout)
    if kind == "depthwise":
        rows = max(1, min(ho, target // (wo * 8)))
        channels = max(1, min(cout, target // (rows * wo * 8)))
        size = channels * rows * wo * 4
        return size, size, 0
    k = (cin // spec.group) * spec.kernel[0] * spec.kernel[1]
    og = cout // spec.group
    item = accumulator_dtype(k).itemsize
    if kind == "pointwise":
        pixels = max(1, min(ho * wo, target // (k * item + og * (item + 4))))
    else:
        pixels = max(1, min(ho, target // (wo * (k * item + og * (item + 4))))) * wo
    return k * pixels * item, og * pixels * item, og * pixels * 4


def conv_rows(x, xzp: int, spec: ConvSpec, w32, w64, bias, req: Requant, out, r0: int, r1: int, tiles) -> None:
    """Output rows [r0, r1) of the conv of x (C, H, W) into out (Cout, r1 - r0, Wo): tiles (a, b, c) are 1-D
    byte arrays of at least conv_tile_bytes."""
    kind = spec.kind(x.shape[0], out.shape[0])
    if kind == "depthwise":
        _depthwise_rows(x, xzp, spec, w32, bias, req, out, r0, r1, tiles)
    elif kind == "pointwise":
        _pointwise_rows(x[:, r0:r1], xzp, w64, bias, req, out, tiles)
    else:
        _gemm_rows(x, xzp, spec, w64, bias, req, out, r0, r1, tiles)


def _depthwise_rows(x, xzp, spec, w32, bias, req, out, r0, r1, tiles):
    (kh, kw), (sh, sw), (dh, dw), pads = spec.kernel, spec.strides, spec.dilations, spec.pads
    cout, _, wo = out.shape
    h, wi = x.shape[1], x.shape[2]
    capacity = min(tiles[0].nbytes, tiles[1].nbytes) // 4
    rows = max(1, min(r1 - r0, capacity // wo))
    channels = max(1, min(cout, capacity // (rows * wo)))
    for c0 in range(0, cout, channels):
        c1 = min(cout, c0 + channels)
        for t0 in range(r0, r1, rows):
            t1 = min(r1, t0 + rows)
            acc = _tmp(tiles[0], (c1 - c0, t1 - t0, wo), np.int32)
            acc[...] = 0 if bias is None else np.asarray(bias[c0:c1], dtype=np.int32).reshape(-1, 1, 1)
            for i in range(kh):
                oh0, oh1 = _valid(t0, t1, i * dh - pads[0], sh, h)
                for j in range(kw):
                    ow0, ow1 = _valid(0, wo, j * dw - pads[1], sw, wi)
                    if oh0 >= oh1 or ow0 >= ow1:
                        continue
                    src = x[c0:c1, oh0 * sh + i * dh - pads[0]:(oh1 - 1) * sh + i * dh - pads[0] + 1:sh,
                            ow0 * sw + j * dw - pads[1]:(ow1 - 1) * sw + j * dw - pads[1] + 1:sw]
                    tap = _tmp(tiles[1], src.shape, np.int32)
                    np.subtract(src, np.int32(xzp), out=tap, dtype=np.int32)
                    np.multiply(tap, w32[c0:c1, 0, i, j].reshape(-1, 1, 1), out=tap)
                    window = acc[:, oh0 - t0:oh1 - t0, ow0:ow1]
                    np.add(window, tap, out=window)
            values = _tmp(tiles[1], acc.shape)
            np.multiply(acc, req.mult[c0:c1].reshape(-1, 1, 1), out=values, dtype=np.float32)
            _store(out[c0:c1, t0 - r0:t1 - r0], values, req.zero, req.low, req.high)


def _pointwise_rows(x, xzp, w64, bias, req, out, tiles):
    """out (Cout, R, W) = requant(w64 (Cout, Cin) @ (x (Cin, R, W) - xzp) + bias), in pixel tiles."""
    cin, rows, width = x.shape
    cout = out.shape[0]
    acc_dtype = w64.dtype
    item = acc_dtype.itemsize
    pixels = min(tiles[0].nbytes // (cin * item), tiles[1].nbytes // (cout * item), tiles[2].nbytes // (cout * 4))
    bias64 = None if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1, 1)
    if pixels >= width:
        spans = [(r, min(rows, r + pixels // width), 0, width) for r in range(0, rows, pixels // width)]
    else:
        spans = [(r, r + 1, c, min(width, c + pixels)) for r in range(rows) for c in range(0, width, pixels)]
    for a0, a1, b0, b1 in spans:
        shape = (cin, a1 - a0, b1 - b0)
        n = (a1 - a0) * (b1 - b0)
        cols = _tmp(tiles[0], shape, acc_dtype)
        np.subtract(x[:, a0:a1, b0:b1], acc_dtype.type(xzp), out=cols)
        acc = _tmp(tiles[1], (cout, n), acc_dtype)
        np.matmul(w64, cols.reshape(cin, n), out=acc)
        if bias64 is not None:     # one rounding of the exact sum, as float(int32 accumulator) rounds it
            np.add(acc, bias64, out=acc, casting="same_kind")
        values = _tmp(tiles[2], (cout, n))
        np.multiply(acc, req.mult.reshape(-1, 1), out=values, dtype=np.float32, casting="unsafe")
        _store(out[:, a0:a1, b0:b1], values.reshape(cout, a1 - a0, b1 - b0), req.zero, req.low, req.high)


def _gemm_rows(x, xzp, spec, w64, bias, req, out, r0, r1, tiles):
    (kh, kw), group = spec.kernel, spec.group
    cout, _, wo = out.shape
    cg, og = x.shape[0] // group, cout // group
    k = cg * kh * kw
    acc_dtype = w64.dtype
    item = acc_dtype.itemsize
    rows = max(1, min(r1 - r0, tiles[0].nbytes // (k * wo * item), tiles[1].nbytes // (og * wo * item),
                      tiles[2].nbytes // (og * wo * 4)))
    weights = w64.reshape(group, og, k)
    bias64 = None if bias is None else np.asarray(bias, dtype=np.float64).reshape(group, og, 1)
    for g in range(group):
        xg = x[g * cg:(g + 1) * cg]
        for t0 in range(r0, r1, rows):
            t1 = min(r1, t0 + rows)
            pixels = (t1 - t0) * wo
            cols = _tmp(tiles[0], (cg, kh, kw, t1 - t0, wo), acc_dtype)
            _im2col_band(xg, xzp, cols, t0, t1, spec.kernel, spec.strides, spec.dilations, spec.pads)
            acc = _tmp(tiles[1], (og, pixels), acc_dtype)
            np.matmul(weights[g], cols.reshape(k, pixels), out=acc)
            if bias64 is not None:
                np.add(acc, bias64[g], out=acc, casting="same_kind")
            values = _tmp(tiles[2], (og, pixels))
            np.multiply(acc, req.mult[g * og:(g + 1) * og].reshape(-1, 1), out=values, dtype=np.float32,
                        casting="unsafe")
            _store(out[g * og:(g + 1) * og, t0 - r0:t1 - r0], values.reshape(og, t1 - t0, wo), req.zero,
                   req.low, req.high)


def centred_weights(derived: DerivedWeights, w, wzp):
    """(int32, float) copies of w - w_zero_point (per output channel or per tensor), derived once; the float
    copy is float32 when its sums stay exact in float32 (accumulator_dtype), else float64."""
    def make():
        zero = np.asarray(wzp, dtype=np.int64)
        centred = w.astype(np.int64) - (zero.reshape((-1,) + (1,) * (w.ndim - 1)) if zero.ndim else zero)
        matrix = centred.reshape(centred.shape[0], -1)
        return centred.astype(np.int32), matrix.astype(accumulator_dtype(matrix.shape[1]))
    return derived.get(w, ("conv", np.asarray(wzp).tobytes()), make)


def requant_of(x_scale, w_scale, y_scale, y_zero, channels: int, out_dtype, node=None, prefix="out") -> Requant:
    mult = np.broadcast_to(multiplier(x_scale, w_scale, y_scale).reshape(-1), (channels,))
    info = np.iinfo(out_dtype)
    low, high = info.min, info.max
    if node is not None:
        low = max(low, node.attrs.get(prefix + "_min", low))
        high = min(high, node.attrs.get(prefix + "_max", high))
    return Requant(mult, np.asarray(y_zero).reshape(()), low, high)


class QLinearConvKernel(StepKernel):
    """Depthwise convs tap by tap in int32 over (channel, row) tiles; 1x1 convs as exact float matrix
    products over pixel tiles; every other conv the same over bands of output rows im2col'd into scratch."""

    def __init__(self, conv_params, conv_pads):
        self._conv_params = conv_params
        self._conv_pads = conv_pads
        self._derived = DerivedWeights()

    def spec(self, node, x_shape, w_shape) -> ConvSpec:
        kernel, strides, dilations, group = self._conv_params(node, x_shape, w_shape)
        pads = self._conv_pads(node, x_shape[2:], kernel, strides, dilations)
        return ConvSpec(tuple(kernel), tuple(strides), tuple(dilations), group, (pads[0], pads[1]))

    def supports(self, node):
        kernel = node.attrs.get("kernel_shape")
        return kernel is None or len(kernel) == 2

    def scratch_bytes(self, node, in_shapes, out_shapes):
        spec = self.spec(node, in_shapes[0], in_shapes[3])
        _, cout, ho, wo = out_shapes[0]
        a, b, c = conv_tile_bytes(spec, in_shapes[0][1], cout, ho, wo)
        return _whole_words({"a": a, "b": b, "c": c})

    def prepare(self, node, constants):
        w, wzp = constants.get(node.inputs[3]), constants.get(node.inputs[5])
        if w is not None and wzp is not None:
            centred_weights(self._derived, w, wzp)

    def run(self, node, inputs, outputs, scratch):
        x, xs, xzp, w, ws, wzp, ys, yzp = inputs[:8]
        bias = inputs[8] if len(inputs) > 8 else None
        y = outputs[0]
        spec = self.spec(node, x.shape, w.shape)
        w32, w64 = centred_weights(self._derived, w, wzp)
        req = requant_of(xs, ws, ys, yzp, y.shape[1], y.dtype, node)
        tiles = [scratch[name].view(np.uint8) if name in scratch else None for name in ("a", "b", "c")]
        xzp = int(np.asarray(xzp).reshape(()))
        for n in range(x.shape[0]):
            conv_rows(x[n], xzp, spec, w32, w64, bias, req, y[n], 0, y.shape[2], tiles)


def _valid(o0: int, o1: int, offset: int, stride: int, size: int) -> tuple[int, int]:
    """The outputs o in [o0, o1) whose input index o * stride + offset lies in [0, size)."""
    lo = max(o0, -(offset // stride)) if offset < 0 else o0
    hi = min(o1, (size - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


def _im2col_band(x, xzp, cols, r0, r1, kernel, strides, dilations, pads) -> None:
    """cols[c, i, j, r, q] = x[c, (r0 + r) * sh + i * dh - pt, q * sw + j * dw - pl] - xzp (0 in the padding)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    h, w = x.shape[1], x.shape[2]
    wo = cols.shape[4]
    for i in range(kh):
        oh0, oh1 = _valid(r0, r1, i * dh - pads[0], sh, h)
        for j in range(kw):
            ow0, ow1 = _valid(0, wo, j * dw - pads[1], sw, w)
            target = cols[:, i, j]
            if oh0 > r0 or oh1 < r1 or ow0 > 0 or ow1 < wo:
                target[...] = 0.0
            if oh0 >= oh1 or ow0 >= ow1:
                continue
            src = x[:, oh0 * sh + i * dh - pads[0]:(oh1 - 1) * sh + i * dh - pads[0] + 1:sh,
                    ow0 * sw + j * dw - pads[1]:(ow1 - 1) * sw + j * dw - pads[1] + 1:sw]
            np.subtract(src, target.dtype.type(xzp), out=target[:, oh0 - r0:oh1 - r0, ow0:ow1])


# ---- elementwise: QLinearAdd / QLinearMul, tables, global average pool, concat

class QBinaryKernel(StepKernel):
    def scratch_bytes(self, node, in_shapes, out_shapes):
        return _whole_words({"a": _chunk_bytes(out_shapes[0]), "b": _chunk_bytes(out_shapes[0])})

    def run(self, node, inputs, outputs, scratch):
        a, as_, azp, b, bs, bzp, cs = inputs[:7]
        y = outputs[0]
        czp = inputs[7] if len(inputs) > 7 and inputs[7] is not None else np.zeros((), y.dtype)
        a, b = np.broadcast_to(a, y.shape), np.broadcast_to(b, y.shape)
        low, high = _range(y.dtype)
        add = node.op_type == "QLinearAdd"
        for index in blocks(y.shape):
            ta = _tmp(scratch["a"], y[index].shape)
            tb = _tmp(scratch["b"], y[index].shape)
            _dequantize_into(a[index], as_, azp, ta)
            _dequantize_into(b[index], bs, bzp, tb)
            (np.add if add else np.multiply)(ta, tb, out=ta)
            np.divide(ta, np.float32(cs), out=ta)
            _store(y[index], ta, np.asarray(czp).reshape(()), low, high)


def _dequantize_into(q, scale, zero, out) -> None:
    np.subtract(q, np.float32(np.asarray(zero).reshape(())), out=out)
    np.multiply(out, np.float32(np.asarray(scale).reshape(())), out=out)


def _apply_table(x, table, y) -> None:
    for index in blocks(x.shape):
        np.take(table, x[index].view(np.uint8), out=y[index], mode="clip")


class LookupKernel(StepKernel):
    def run(self, node, inputs, outputs, scratch):
        _apply_table(inputs[0], np.asarray(inputs[1]), outputs[0])


class QUnaryTableKernel(StepKernel):
    """QLinearSigmoid / QLinearLeakyRelu: the op's float function, tabulated for the 256 input bytes."""

    def __init__(self, function_of):
        self._function_of = function_of

    def run(self, node, inputs, outputs, scratch):
        x, xs, xzp, ys = inputs[:4]
        y = outputs[0]
        yzp = inputs[4] if len(inputs) > 4 and inputs[4] is not None else np.zeros((), y.dtype)
        table = requant_table(x.dtype, xs, xzp, ys, yzp, y.dtype, self._function_of(node))
        _apply_table(x, table, y)


class QGlobalAveragePoolKernel(StepKernel):
    def run(self, node, inputs, outputs, scratch):
        x, xs, xzp, ys, yzp = inputs[:5]
        y = outputs[0]
        count = math.prod(x.shape[2:])
        for n in range(x.shape[0]):
            totals = x[n].reshape(x.shape[1], count).sum(axis=1, dtype=np.int64)
            totals -= int(np.asarray(xzp).reshape(())) * count
            y[n].reshape(-1)[...] = requantize(totals, mean_multiplier(xs, ys, count), yzp, y.dtype)


class QConcatKernel(StepKernel):
    def run(self, node, inputs, outputs, scratch):
        ys, yzp = inputs[0], inputs[1]
        y = outputs[0]
        axis = node.attrs["axis"] % y.ndim
        offset = 0
        for x, xs, xzp in (inputs[i:i + 3] for i in range(2, len(inputs), 3)):
            part = y[(slice(None),) * axis + (slice(offset, offset + x.shape[axis]),)]
            _apply_table(x, requant_table(x.dtype, xs, xzp, ys, yzp, y.dtype), part)
            offset += x.shape[axis]


# ---- QLinearMatMul / QGemm by a constant weight matrix: float64 (exact) products over row tiles

class QMatMulKernel(StepKernel):
    """A (..., K) int8 times a constant (K, N) int8 matrix (QGemm: transA 0, any transB, alpha 1), an optional
    int32 bias, requantised (QGemm without y_scale: float32 output)."""

    def __init__(self):
        self._derived = DerivedWeights()

    @staticmethod
    def _operands(node):
        """(a, a_scale, a_zp, b, b_scale, b_zp, bias, y_scale, y_zp) input positions."""
        if node.op_type == "QGemm":
            return 0, 1, 2, 3, 4, 5, 6, 7, 8
        return 0, 1, 2, 3, 4, 5, None, 6, 7

    def supports(self, node):
        return node.op_type != "QGemm" or (node.attrs.get("transA", 0) == 0 and node.attrs.get("alpha", 1.0) == 1.0)

    def _shape(self, node, in_shapes):
        a, b = in_shapes[0], in_shapes[3]
        if node.op_type == "QGemm" and node.attrs.get("transB", 0):
            b = (b[1], b[0])
        return math.prod(a[:-1]), a[-1], b[-1]

    def _rows(self, k, n, m):
        return max(1, min(m, CONV_TILE_BYTES // (k * 8 + n * 12)))

    def scratch_bytes(self, node, in_shapes, out_shapes):
        if in_shapes[3] is None or len(in_shapes[3]) != 2:
            return {}
        m, k, n = self._shape(node, in_shapes)
        rows = self._rows(k, n, m)
        return _whole_words({"cols": rows * k * 8, "acc": rows * n * 8, "tmp": rows * n * 4})

    def _weights(self, node, b, bzp):
        transposed = node.op_type == "QGemm" and bool(node.attrs.get("transB", 0))

        def make():
            zero = np.asarray(bzp, dtype=np.float64)
            centred = b.astype(np.float64) - (zero.reshape(-1, 1) if transposed and zero.ndim else zero)
            return np.ascontiguousarray(centred.T) if transposed else centred
        return self._derived.get(b, ("matmul", transposed, np.asarray(bzp).tobytes()), make)

    def prepare(self, node, constants):
        b, bzp = constants.get(node.inputs[3]), constants.get(node.inputs[5])
        if b is not None and bzp is not None and b.ndim == 2:
            self._weights(node, b, bzp)

    def run(self, node, inputs, outputs, scratch):
        ia, ias, iaz, ib, ibs, ibz, ibias, iys, iyz = self._operands(node)
        b = self._weights(node, inputs[ib], inputs[ibz])
        k, n = b.shape
        a, y = inputs[ia], outputs[0]
        a2, y2 = a.reshape(-1, k), y.reshape(-1, n)
        bias = _input(inputs, ibias)
        y_scale = _input(inputs, iys)
        azp = np.float64(np.asarray(inputs[iaz]).reshape(()))
        mult = (multiplier(inputs[ias], inputs[ibs], y_scale) if y_scale is not None
                else _f32(inputs[ias]) * _f32(inputs[ibs])).reshape(-1)
        yzp = _input(inputs, iyz)
        low, high = _range(y.dtype) if y.dtype.kind in "iu" else (None, None)
        rows = self._rows(k, n, a2.shape[0])
        for r0 in range(0, a2.shape[0], rows):
            r1 = min(a2.shape[0], r0 + rows)
            cols = _tmp(scratch["cols"], (r1 - r0, k), np.float64)
            np.subtract(a2[r0:r1], azp, out=cols)
            acc = _tmp(scratch["acc"], (r1 - r0, n), np.float64)
            np.matmul(cols, b, out=acc)
            if bias is not None:
                np.add(acc, np.asarray(bias, dtype=np.float64), out=acc)
            if low is None:
                np.multiply(acc, mult, out=y2[r0:r1], dtype=np.float32, casting="unsafe")
                continue
            values = _tmp(scratch["tmp"], (r1 - r0, n))
            np.multiply(acc, mult, out=values, dtype=np.float32, casting="unsafe")
            _store(y2[r0:r1], values, np.asarray(0 if yzp is None else yzp).reshape(()), low, high)


def _input(inputs, index):
    return inputs[index] if index is not None and len(inputs) > index and inputs[index] is not None else None


# ---- the int8 inverted-residual block: expand (any group-1 conv, the stem too), depthwise, project,
# residual add, run band of output rows by band so that only a few rows of the expanded tensor ever exist

BLOCK_BAND_BYTES = 12 * 1024     # int8 bytes of one band's expanded rows, depthwise rows and projection rows
BLOCK_TILE_BYTES = 8 * 1024


@dataclass(frozen=True)
class QBlockGeometry:
    cin: int
    height: int
    width: int
    hidden: int
    cout: int
    expand: ConvSpec | None
    dw: ConvSpec
    hidden_height: int
    hidden_width: int
    out_height: int
    out_width: int
    residual: bool

    def hidden_rows(self, band_rows: int) -> int:
        return min(self.hidden_height, (band_rows - 1) * self.dw.strides[0] + self.dw.kernel[0])

    def input_rows(self, band_rows: int) -> int:
        """Input rows one band's expansion reads (the block quantises them itself when its input is float)."""
        return min(self.height, (self.hidden_rows(band_rows) - 1) * self.expand.strides[0] + self.expand.kernel[0])

    def accumulator_bytes(self, band_rows: int, chunk: int) -> int:
        """A chunked band sums its projections in an exact float accumulator (the paper's t-split)."""
        if chunk >= self.hidden:
            return 0
        return self.cout * band_rows * self.out_width * accumulator_dtype(self.hidden).itemsize

    def band_bytes(self, band_rows: int, chunk: int) -> int:
        rows = self.hidden_rows(band_rows)
        hidden = chunk * rows * self.hidden_width if self.expand is not None else 0
        return (hidden + chunk * band_rows * self.out_width + self.accumulator_bytes(band_rows, chunk)
                + (self.cout * band_rows * self.out_width if self.residual else 0))

    def schedule(self) -> tuple[int, int]:
        """(band rows, hidden channels per chunk): one-row bands first, the hidden channels halved (t doubled)
        while a band does not fit BLOCK_BAND_BYTES, then bands grown while they fit."""
        chunk = self.hidden
        while chunk > 8 and self.band_bytes(1, chunk) > BLOCK_BAND_BYTES:
            chunk = (chunk + 1) // 2
        rows = 1
        while rows < self.out_height and self.band_bytes(rows + 1, chunk) <= BLOCK_BAND_BYTES:
            rows += 1
        return rows, chunk


def _out_size(size, kernel, stride, begin, end):
    return (size + begin + end - kernel) // stride + 1


def block_geometry(node, x_shape, we_shape, wd_shape, wp_shape) -> QBlockGeometry:
    a = node.attrs
    _, cin, height, width = x_shape
    expand = None
    hh, hw = height, width
    if we_shape is not None:
        k, s, p = a["expand_kernel"], a["expand_stride"], a["expand_pads"]
        expand = ConvSpec((k, k), (s, s), (1, 1), 1, (p[0], p[1]))
        hh, hw = _out_size(height, k, s, p[0], p[2]), _out_size(width, k, s, p[1], p[3])
    k, s, p = a["dw_kernel"], a["dw_stride"], a["dw_pads"]
    hidden = wd_shape[0]
    dw = ConvSpec((k, k), (s, s), (1, 1), hidden, (p[0], p[1]))
    ho, wo = _out_size(hh, k, s, p[0], p[2]), _out_size(hw, k, s, p[1], p[3])
    return QBlockGeometry(cin, height, width, hidden, wp_shape[0], expand, dw, hh, hw, ho, wo,
                          bool(a.get("residual", 0)))


POINTWISE = ConvSpec((1, 1), (1, 1), (1, 1), 1, (0, 0))


class QInvertedResidualKernel(StepKernel):
    """Inputs: x, x_scale, x_zp; then (W, w_scale, w_zp, y_scale, y_zp, B) for expand (all "" without one),
    depthwise and project; then the residual add's y_scale, y_zp. Attributes as edgerun.ops.quant documents."""

    def __init__(self):
        self._derived = DerivedWeights()

    @staticmethod
    def _geometry(node, shapes):
        return block_geometry(node, shapes[0], shapes[3] if node.inputs[3] else None, shapes[9], shapes[15])

    @staticmethod
    def _quantizes_input(node) -> bool:
        return bool(node.attrs.get("quantize_input", 0))

    def scratch_bytes(self, node, in_shapes, out_shapes):
        g = self._geometry(node, in_shapes)
        rows, chunk = g.schedule()
        hidden_rows = g.hidden_rows(rows)
        dw_chunk = ConvSpec(g.dw.kernel, g.dw.strides, g.dw.dilations, chunk, g.dw.pads)
        tiles = [conv_tile_bytes(dw_chunk, chunk, chunk, rows, g.out_width, BLOCK_TILE_BYTES),
                 conv_tile_bytes(POINTWISE, chunk, g.cout, rows, g.out_width, BLOCK_TILE_BYTES)]
        if g.expand is not None:
            tiles.append(conv_tile_bytes(g.expand, g.cin, chunk, hidden_rows, g.hidden_width, BLOCK_TILE_BYTES))
        a, b, c = (max(t[i] for t in tiles) for i in range(3))
        need = {"hidden": chunk * hidden_rows * g.hidden_width if g.expand is not None else 0,
                "dw": chunk * rows * g.out_width, "proj": g.cout * rows * g.out_width if g.residual else 0,
                "pacc": g.accumulator_bytes(rows, chunk),
                "xq": g.cin * g.input_rows(rows) * g.width if self._quantizes_input(node) else 0,
                "a": max(a, chunk * 8), "b": max(b, 4 * 256, g.cout * 8), "c": max(c, 4 * 256, g.cout * 4)}
        return _whole_words(need)

    def prepare(self, node, constants):
        for w, zp in ((3, 5), (9, 11), (15, 17)):
            if node.inputs[w] and node.inputs[w] in constants and node.inputs[zp] in constants:
                centred_weights(self._derived, constants[node.inputs[w]], constants[node.inputs[zp]])

    def _stage(self, inputs, first, in_scale, dtype, node, prefix):
        w, ws, wz, ys, yz, b = inputs[first:first + 6]
        w32, w64 = centred_weights(self._derived, w, wz)
        return w32, w64, b, requant_of(in_scale, ws, ys, yz, w.shape[0], dtype, node, prefix)

    def run(self, node, inputs, outputs, scratch):
        x, xs, xz = inputs[:3]
        y = outputs[0]
        g = self._geometry(node, [None if v is None else v.shape for v in inputs])
        has_expand = g.expand is not None
        hidden_scale, hidden_zero = (inputs[6], inputs[7]) if has_expand else (xs, xz)
        hidden_dtype = np.asarray(hidden_zero).dtype
        expand = self._stage(inputs, 3, xs, hidden_dtype, node, "expand") if has_expand else None
        dw = self._stage(inputs, 9, hidden_scale, np.asarray(inputs[13]).dtype, node, "dw")
        proj_dtype = np.asarray(inputs[19]).dtype
        proj = self._stage(inputs, 15, inputs[12], proj_dtype, node, "proj")
        tiles = [scratch[name].view(np.uint8) for name in ("a", "b", "c")]
        for n in range(x.shape[0]):
            self._image(x[n], y[n], inputs, g, expand, dw, proj, hidden_dtype, proj_dtype, tiles, scratch)

    def _image(self, x, y, inputs, g, expand, dw, proj, hidden_dtype, proj_dtype, tiles, scratch):
        xz = int(np.asarray(inputs[2]).reshape(()))
        rows, chunk = g.schedule()
        (kd, _), (sd, _), pdt = g.dw.kernel, g.dw.strides, g.dw.pads[0]
        for o0 in range(0, g.out_height, rows):
            o1 = min(g.out_height, o0 + rows)
            h0 = max(0, o0 * sd - pdt)
            h1 = min(g.hidden_height, (o1 - 1) * sd - pdt + kd)
            source, spec = x, g.expand
            if expand and "xq" in scratch:
                source, spec = self._quantized_rows(x, inputs, g, h0, h1, scratch["xq"], tiles[2])
            target = y[:, o0:o1]
            if g.residual:
                target = _tmp(scratch["proj"], (g.cout, o1 - o0, g.out_width), proj_dtype)
            if chunk >= g.hidden:
                depthwise = self._hidden_band(source, xz, spec, inputs, g, expand, dw, hidden_dtype, 0, g.hidden,
                                              o0, o1, h0, h1, tiles, scratch)
                conv_rows(depthwise, int(np.asarray(inputs[13]).reshape(())), POINTWISE, *proj, target, 0,
                          o1 - o0, tiles)
            else:
                self._chunked_band(source, xz, spec, inputs, g, expand, dw, proj, hidden_dtype, chunk, o0, o1,
                                   h0, h1, target, tiles, scratch)
            if g.residual:
                add_requant(x[:, o0:o1], inputs[1], inputs[2], target, inputs[18], inputs[19], y[:, o0:o1],
                            inputs[21], inputs[22], tiles[1], tiles[2])

    def _hidden_band(self, source, xz, spec, inputs, g, expand, dw, hidden_dtype, e0, e1, o0, o1, h0, h1, tiles,
                     scratch):
        """Depthwise output rows [o0, o1) of hidden channels [e0, e1), expanded from `source` first."""
        (sd, _), (pdt, pdl) = g.dw.strides, g.dw.pads
        if expand:
            hidden = _tmp(scratch["hidden"], (e1 - e0, h1 - h0, g.hidden_width), hidden_dtype)
            conv_rows(source, xz, spec, *_channels(expand, e0, e1), hidden, h0, h1, tiles)
            hz = int(np.asarray(inputs[7]).reshape(()))
        else:
            hidden, hz = source[e0:e1, h0:h1], xz
        band_spec = ConvSpec(g.dw.kernel, g.dw.strides, (1, 1), e1 - e0, (h0 - o0 * sd + pdt, pdl))
        depthwise = _tmp(scratch["dw"], (e1 - e0, o1 - o0, g.out_width), np.asarray(inputs[13]).dtype)
        conv_rows(hidden, hz, band_spec, *_channels(dw, e0, e1), depthwise, 0, o1 - o0, tiles)
        return depthwise

    def _chunked_band(self, source, xz, spec, inputs, g, expand, dw, proj, hidden_dtype, chunk, o0, o1, h0, h1,
                      target, tiles, scratch):
        """The paper's split: F(x) = sum over chunks of A_i(N(B_i(x))), summed exactly, then requantised."""
        pixels = (o1 - o0) * g.out_width
        acc = _tmp(scratch["pacc"], (g.cout, pixels), accumulator_dtype(g.hidden))
        acc[...] = 0
        dz = int(np.asarray(inputs[13]).reshape(()))
        for e0 in range(0, g.hidden, chunk):
            e1 = min(g.hidden, e0 + chunk)
            depthwise = self._hidden_band(source, xz, spec, inputs, g, expand, dw, hidden_dtype, e0, e1, o0, o1,
                                          h0, h1, tiles, scratch)
            _accumulate_projection(depthwise.reshape(e1 - e0, pixels), dz, proj[1][:, e0:e1], acc, tiles)
        _requantise_rows(acc, proj[2], proj[3], target, tiles[2])

    @staticmethod
    def _quantized_rows(x, inputs, g, h0, h1, buffer, tmp):
        """The float input rows hidden rows [h0, h1) read, quantised into `buffer`, and the expansion's geometry
        over that band (its top padding shifted by the band's first row)."""
        (ke, _), (se, _), (pt, pl) = g.expand.kernel, g.expand.strides, g.expand.pads
        i0 = max(0, h0 * se - pt)
        i1 = min(g.height, (h1 - 1) * se - pt + ke)
        band = _tmp(buffer, (g.cin, i1 - i0, g.width), np.asarray(inputs[2]).dtype)
        scale = np.float32(np.asarray(inputs[1]).reshape(()))
        zero = np.asarray(inputs[2]).reshape(())
        low, high = _range(band.dtype)
        for index in blocks(band.shape, tmp.nbytes // 4):
            values = _tmp(tmp, band[index].shape)
            np.divide(x[:, i0:i1][index], scale, out=values)
            _store(band[index], values, zero, low, high)
        return band, ConvSpec(g.expand.kernel, g.expand.strides, (1, 1), 1, (pt + i0, pl))


def _channels(stage, e0, e1):
    """A stage's (w32, wmat, bias, requant) restricted to output channels [e0, e1)."""
    w32, wmat, bias, req = stage
    return (w32[e0:e1], wmat[e0:e1], None if bias is None else bias[e0:e1],
            Requant(req.mult[e0:e1], req.zero, req.low, req.high))


def _accumulate_projection(x, xzp, wmat, acc, tiles) -> None:
    """acc (Cout, P) += wmat (Cout, c) @ (x (c, P) - xzp), exactly, in pixel tiles of scratch."""
    c, pixels = x.shape
    dtype = acc.dtype
    step = max(1, min(tiles[0].nbytes // (c * dtype.itemsize), tiles[1].nbytes // (acc.shape[0] * dtype.itemsize)))
    weights = wmat.astype(dtype, copy=False)
    for p0 in range(0, pixels, step):
        p1 = min(pixels, p0 + step)
        cols = _tmp(tiles[0], (c, p1 - p0), dtype)
        np.subtract(x[:, p0:p1], dtype.type(xzp), out=cols)
        product = _tmp(tiles[1], (acc.shape[0], p1 - p0), dtype)
        np.matmul(weights, cols, out=product)
        np.add(acc[:, p0:p1], product, out=acc[:, p0:p1])


def _requantise_rows(acc, bias, req: Requant, out, tmp) -> None:
    """out (Cout, R, W) = requant(acc (Cout, R * W) + bias), row by row through a float32 tile."""
    cout, rows, width = out.shape
    if bias is not None:
        np.add(acc, np.asarray(bias, dtype=np.float64).reshape(-1, 1), out=acc, casting="same_kind")
    step = max(1, min(width, tmp.nbytes // (cout * 4)))
    for r in range(rows):
        for c0 in range(0, width, step):
            c1 = min(width, c0 + step)
            values = _tmp(tmp, (cout, c1 - c0))
            np.multiply(acc[:, r * width + c0:r * width + c1], req.mult.reshape(-1, 1), out=values,
                        dtype=np.float32, casting="unsafe")
            _store(out[:, r, c0:c1], values, req.zero, req.low, req.high)


def add_requant(a, a_scale, a_zero, b, b_scale, b_zero, out, scale, zero, tmp_a, tmp_b) -> None:
    """out = quantize(dequantize(a) + dequantize(b)) (QLinearAdd), in blocks of the two float32 scratch tiles."""
    low, high = _range(out.dtype)
    limit = min(tmp_a.nbytes, tmp_b.nbytes) // 4
    for index in blocks(out.shape, limit):
        ta = _tmp(tmp_a, out[index].shape)
        tb = _tmp(tmp_b, out[index].shape)
        _dequantize_into(a[index], a_scale, a_zero, ta)
        _dequantize_into(b[index], b_scale, b_zero, tb)
        np.add(ta, tb, out=ta)
        np.divide(ta, np.float32(np.asarray(scale).reshape(())), out=ta)
        _store(out[index], ta, np.asarray(zero).reshape(()), low, high)


class PerChannelKernel(StepKernel):
    """Runs an op's reference function one (image, channel) plane at a time into the output: pooling of an int8
    tensor (QMaxPool, QLinearAveragePool), whose temporaries are then one plane's, not the tensor's."""

    def __init__(self, compute):
        self._compute = compute

    def run(self, node, inputs, outputs, scratch):
        x, y = inputs[0], outputs[0]
        for n in range(x.shape[0]):
            for c in range(x.shape[1]):
                plane = [x[n:n + 1, c:c + 1]] + list(inputs[1:])
                y[n:n + 1, c:c + 1] = self._compute(node, plane)


class QAveragePoolKernel(StepKernel):
    """com.microsoft QLinearAveragePool over 2-D planes: exact int32 window sums of (x - x_zp), then
    x_scale * sum / count / y_scale requantised; windows counted with or without the padding
    (count_include_pad). ceil_mode and dilations run the reference op plane by plane instead."""

    def __init__(self, reference):
        self._fallback = PerChannelKernel(reference)

    @staticmethod
    def _plain(node) -> bool:
        a = node.attrs
        return (len(a.get("kernel_shape", [])) == 2 and not a.get("ceil_mode", 0)
                and a.get("auto_pad", "NOTSET") in ("NOTSET", "") and list(a.get("dilations", [1, 1])) == [1, 1])

    def scratch_bytes(self, node, in_shapes, out_shapes):
        if not self._plain(node):
            return {}
        _, _, ho, wo = out_shapes[0]
        return _whole_words({"acc": ho * wo * 4, "tap": ho * wo * 4, "count": ho * wo * 4})

    def run(self, node, inputs, outputs, scratch):
        if not self._plain(node):
            self._fallback.run(node, inputs, outputs, scratch)
            return
        x, xs, xz, ys = inputs[:4]
        y = outputs[0]
        yz = inputs[4] if len(inputs) > 4 and inputs[4] is not None else np.zeros((), y.dtype)
        a = node.attrs
        (kh, kw), (sh, sw) = a["kernel_shape"], a.get("strides", [1, 1])
        pads = a.get("pads", [0, 0, 0, 0])
        _, _, h, w = x.shape
        _, _, ho, wo = y.shape
        count = _tmp(scratch["count"], (ho, wo))
        self._window_counts(count, kh, kw, sh, sw, pads, h, w, bool(a.get("count_include_pad", 0)))
        factor = np.float32(np.asarray(xs).reshape(())) / np.float32(np.asarray(ys).reshape(()))
        low, high = _range(y.dtype)
        acc = _tmp(scratch["acc"], (ho, wo), np.int32)
        tap = _tmp(scratch["tap"], (ho, wo), np.int32)
        zero = np.int32(np.asarray(xz).reshape(()))
        for n in range(x.shape[0]):
            for c in range(x.shape[1]):
                acc[...] = 0
                for i in range(kh):
                    oh0, oh1 = _valid(0, ho, i - pads[0], sh, h)
                    for j in range(kw):
                        ow0, ow1 = _valid(0, wo, j - pads[1], sw, w)
                        if oh0 >= oh1 or ow0 >= ow1:
                            continue
                        src = x[n, c, oh0 * sh + i - pads[0]:(oh1 - 1) * sh + i - pads[0] + 1:sh,
                                ow0 * sw + j - pads[1]:(ow1 - 1) * sw + j - pads[1] + 1:sw]
                        part = tap[oh0:oh1, ow0:ow1]
                        np.subtract(src, zero, out=part, dtype=np.int32)
                        np.add(acc[oh0:oh1, ow0:ow1], part, out=acc[oh0:oh1, ow0:ow1])
                values = tap.view(np.float32)
                np.multiply(acc, factor, out=values, dtype=np.float32, casting="unsafe")
                np.divide(values, count, out=values)
                _store(y[n, c], values, np.asarray(yz).reshape(()), low, high)

    @staticmethod
    def _window_counts(count, kh, kw, sh, sw, pads, h, w, include_pad) -> None:
        ho, wo = count.shape
        if include_pad:     # windows clipped to the padded input only
            rows = np.minimum(np.arange(ho) * sh + kh, h + pads[0] + pads[2]) - np.arange(ho) * sh
            cols = np.minimum(np.arange(wo) * sw + kw, w + pads[1] + pads[3]) - np.arange(wo) * sw
        else:
            top = np.arange(ho) * sh - pads[0]
            left = np.arange(wo) * sw - pads[1]
            rows = np.minimum(top + kh, h) - np.maximum(top, 0)
            cols = np.minimum(left + kw, w) - np.maximum(left, 0)
        np.multiply(rows.reshape(-1, 1), cols.reshape(1, -1), out=count, casting="unsafe")
