"""The int8 inverted-residual block (QInvertedResidual) on the C kernels (native/quant.c).

Same arithmetic as edgerun/kernels/steps_quant.py (bit-equal outputs), same scratch (the numpy kernel's
scratch_bytes: no planned peak changes), one C call per image. The C side takes its activations as unsigned
bytes (int8 flipped by 0x80) and its weights centred, padded to whole groups of 4 columns (and
PAD_ROWS spare zero rows), the bias folded with -u_zp * sum(w - w_zp) (see quant.c). Blocks the C kernel
does not cover (a chunk that cannot be cut into groups of 4 channels, rows wider than MAX_WIDTH, a float
input without an expansion) run on the numpy kernel.
"""
from __future__ import annotations

import numpy as np

from edgerun.kernels import steps_quant as sq
from edgerun.kernels.native import _call, _module
from edgerun.kernels.numpy_steps import StepKernel

MAX_WIDTH = 1024     # Q_MAX_WIDTH in quant.c
PAD_ROWS = 8         # Q_VNNI_ROWS_PAD in quant.c

# quant.c's geometry fields, in its order (enum G_*)
GEOMETRY_FIELDS = ("cin", "h", "w", "hidden", "cout", "has_expand", "ek", "es", "ept", "epl", "hh", "hw", "dk",
                   "ds", "dpt", "dpl", "ho", "wo", "residual", "rows", "chunk", "x_float", "x_signed", "h_signed",
                   "d_signed", "p_signed", "y_signed", "e_kpad", "p_kpad", "x_zero", "h_zero", "d_zero", "p_zero",
                   "y_zero", "d_lo", "d_hi", "y_lo", "y_hi", "tile_pixels")
SCALE_FIELDS = ("x_scale", "p_scale", "y_scale", "e_zero", "e_lo", "e_hi", "p_lo", "p_hi")


def kpad(k: int) -> int:
    return -(-k // 4) * 4


def gemm_weights(w: np.ndarray, wzp) -> tuple:
    """(int8 or None, int16, row sums) of w - w_zp as a (rows + PAD_ROWS, kpad) matrix, zero-padded; the int8
    copy exists when every centred weight fits int8 (the VNNI kernel's operand)."""
    zero = np.asarray(wzp, dtype=np.int64)
    centred = w.astype(np.int64).reshape(w.shape[0], -1)
    centred = centred - (zero.reshape(-1, 1) if zero.ndim and zero.size > 1 else zero.reshape(()))
    rows, k = centred.shape
    padded = np.zeros((rows + PAD_ROWS, kpad(k)), dtype=np.int16)
    padded[:rows, :k] = centred
    fits = centred.size == 0 or (centred.min() >= -128 and centred.max() <= 127)
    return (padded.astype(np.int8) if fits else None), padded, centred.sum(axis=1)


def _unsigned_zero(zero) -> int:
    zero = np.asarray(zero)
    return int(zero.reshape(())) + (128 if zero.dtype == np.int8 else 0)


def folded_bias(bias, row_sums: np.ndarray, input_zero) -> np.ndarray:
    """bias - u_zp * sum_k (w - w_zp), int32: what the unsigned-byte GEMM adds to its sums."""
    total = -_unsigned_zero(input_zero) * row_sums
    if bias is not None:
        total = total + np.asarray(bias, dtype=np.int64).reshape(-1)
    return total.astype(np.int32)


def _f32(values, count: int) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(np.asarray(values, dtype=np.float32).reshape(-1), (count,)))


def _signed(dtype) -> int:
    return int(np.dtype(dtype) == np.int8)


def _scalar(value) -> int:
    return int(np.asarray(value).reshape(()))


class NativeQInvertedResidualKernel(StepKernel):
    """QInvertedResidual in C; every block it cannot run goes to the numpy kernel (`fallback`)."""

    def __init__(self, fallback: StepKernel | None = None, threads: int = 1):
        self.fallback = fallback or sq.QInvertedResidualKernel()
        self.threads = threads
        self._derived = sq.DerivedWeights()

    def scratch_bytes(self, node, in_shapes, out_shapes):
        return self.fallback.scratch_bytes(node, in_shapes, out_shapes)

    def prepare(self, node, constants):
        self.fallback.prepare(node, constants)
        for w, zp in ((3, 5), (15, 17)):
            if node.inputs[w] and node.inputs[w] in constants and node.inputs[zp] in constants:
                self._gemm(constants[node.inputs[w]], constants[node.inputs[zp]])
        if node.inputs[9] in constants and node.inputs[11] in constants:
            self._depthwise(constants[node.inputs[9]], constants[node.inputs[11]])

    def _gemm(self, w, wzp):
        return self._derived.get(w, ("gemm", np.asarray(wzp).tobytes()), lambda: gemm_weights(w, wzp))

    def _depthwise(self, w, wzp):
        def make():
            return np.ascontiguousarray(sq.centred_weights(sq.DerivedWeights(), w, wzp)[0].reshape(w.shape[0], -1))
        return self._derived.get(w, ("dw", np.asarray(wzp).tobytes()), make)

    def run(self, node, inputs, outputs, scratch):
        call = self._call_arguments(node, inputs, outputs, scratch)
        if call is None:
            self.fallback.run(node, inputs, outputs, scratch)
            return
        fixed, buffers = call
        x, y = inputs[0], outputs[0]
        function = _module().qblock_run
        for n in range(x.shape[0]):
            _call(function, x[n], y[n].view(np.uint8), *fixed, *buffers)

    def _call_arguments(self, node, inputs, outputs, scratch):
        """(the weight and geometry arguments, the scratch buffers) of qblock_run, or None (numpy runs)."""
        x, y = inputs[0], outputs[0]
        shapes = [None if v is None else np.shape(v) for v in inputs]
        g = sq.block_geometry(node, shapes[0], shapes[3] if node.inputs[3] else None, shapes[9], shapes[15])
        rows, chunk = g.schedule()
        if chunk < g.hidden:
            chunk -= chunk % 4
        x_float = x.dtype == np.float32
        if (chunk < 4 or g.out_width > MAX_WIDTH or x.dtype.itemsize > 1 and not x_float
                or x_float and (g.expand is None or g.residual or not node.attrs.get("quantize_input", 0))):
            return None
        has_expand = g.expand is not None
        hidden_rows = g.hidden_rows(rows)
        need = {"hidden": chunk * hidden_rows * g.hidden_width if has_expand else 0,
                "dw": kpad(chunk) * rows * g.out_width, "proj": g.cout * rows * g.out_width if g.residual else 0,
                "pacc": g.cout * rows * g.out_width * 4 if chunk < g.hidden else 0}
        if any(size and (name not in scratch or scratch[name].nbytes < size) for name, size in need.items()):
            return None
        e_kpad = kpad(g.cin * g.expand.kernel[0] ** 2) if has_expand else 4
        tile_pixels = max(1, scratch["a"].nbytes // e_kpad) if has_expand else 1
        if tile_pixels >= 32:
            tile_pixels -= tile_pixels % 32
        xs, xz = inputs[1], inputs[2]
        hidden_scale, hidden_zero = (inputs[6], inputs[7]) if has_expand else (xs, xz)
        hidden_dtype = np.asarray(hidden_zero).dtype
        d_zero, p_zero = inputs[13], inputs[19]
        d_dtype, p_dtype = np.asarray(d_zero).dtype, np.asarray(p_zero).dtype
        dw_req = sq.requant_of(hidden_scale, inputs[10], inputs[12], d_zero, g.hidden, d_dtype, node, "dw")
        proj_req = sq.requant_of(inputs[12], inputs[16], inputs[18], p_zero, g.cout, p_dtype, node, "proj")
        p8, p16, p_sums = self._gemm(inputs[15], inputs[17])
        if has_expand:
            e_req = sq.requant_of(xs, inputs[4], inputs[6], inputs[7], g.hidden, hidden_dtype, node, "expand")
            e8, e16, e_sums = self._gemm(inputs[3], inputs[5])
            expand = (e8, e16, folded_bias(inputs[8], e_sums, xz), _f32(e_req.mult, g.hidden))
            e_scalars = (float(e_req.zero), float(e_req.low), float(e_req.high))
        else:
            expand, e_scalars = (None, None, None, None), (0.0, 0.0, 0.0)
        y_zero = inputs[22] if g.residual else p_zero
        y_low, y_high = sq._range(y.dtype)
        ek, es, ep = (g.expand.kernel[0], g.expand.strides[0], g.expand.pads) if has_expand else (1, 1, (0, 0))
        geometry = dict(cin=g.cin, h=g.height, w=g.width, hidden=g.hidden, cout=g.cout, has_expand=int(has_expand),
                        ek=ek, es=es, ept=ep[0], epl=ep[1], hh=g.hidden_height, hw=g.hidden_width,
                        dk=g.dw.kernel[0], ds=g.dw.strides[0], dpt=g.dw.pads[0], dpl=g.dw.pads[1], ho=g.out_height,
                        wo=g.out_width, residual=int(g.residual), rows=rows, chunk=chunk, x_float=int(x_float),
                        x_signed=_signed(np.asarray(xz).dtype), h_signed=_signed(hidden_dtype),
                        d_signed=_signed(d_dtype), p_signed=_signed(p_dtype), y_signed=_signed(y.dtype),
                        e_kpad=e_kpad, p_kpad=kpad(g.hidden), x_zero=_scalar(xz), h_zero=_scalar(hidden_zero),
                        d_zero=_scalar(d_zero), p_zero=_scalar(p_zero), y_zero=_scalar(y_zero), d_lo=dw_req.low,
                        d_hi=dw_req.high, y_lo=y_low, y_hi=y_high, tile_pixels=tile_pixels)
        geometry = np.array([geometry[name] for name in GEOMETRY_FIELDS], dtype=np.int32)
        scales = np.array([_scalar_f32(xs), _scalar_f32(inputs[18]), _scalar_f32(inputs[21]) if g.residual else 1.0,
                           *e_scalars, float(proj_req.low), float(proj_req.high)], dtype=np.float32)
        dw_bias = None if inputs[14] is None else np.ascontiguousarray(inputs[14], dtype=np.int32)
        fixed = (geometry, scales, *expand, self._depthwise(inputs[9], inputs[11]), dw_bias,
                 _f32(dw_req.mult, g.hidden), p8, p16, folded_bias(inputs[20], p_sums, d_zero),
                 _f32(proj_req.mult, g.cout))
        buffers = tuple(scratch[name].view(np.uint8) if size else None for name, size in need.items())
        buffers += (scratch["a"].view(np.uint8) if has_expand else None,)
        return fixed, buffers


def _scalar_f32(value) -> float:
    return float(np.float32(np.asarray(value).reshape(())))
