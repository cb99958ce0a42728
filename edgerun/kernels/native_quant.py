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
MAX_SPAN = 2 * MAX_WIDTH + 64   # Q_MAX_SPAN
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
        self._calls = {}
        self._constants = {}

    def scratch_bytes(self, node, in_shapes, out_shapes):
        sizes = self.fallback.scratch_bytes(node, in_shapes, out_shapes)
        self._derive_call(node, in_shapes, out_shapes, sizes)
        return sizes

    def prepare(self, node, constants):
        self.fallback.prepare(node, constants)
        self._constants[node.name] = constants
        for w, zp in ((3, 5), (15, 17)):
            if node.inputs[w] and node.inputs[w] in constants and node.inputs[zp] in constants:
                self._gemm(constants[node.inputs[w]], constants[node.inputs[zp]])
        if node.inputs[9] in constants and node.inputs[11] in constants:
            self._depthwise(constants[node.inputs[9]], constants[node.inputs[11]])

    def _derive_call(self, node, in_shapes, out_shapes, sizes) -> None:
        """When the plan asks for the scratch (shapes known, after prepare: constants known), derive the call
        arguments then, so that a (measured) run allocates none of them."""
        constants = self._constants.get(node.name)
        if constants is None or not all(name in constants for name in node.inputs[1:] if name):
            return
        inputs = [None] + [constants[name] if name else None for name in node.inputs[1:]]
        x_dtype = np.float32 if node.attrs.get("quantize_input", 0) else np.asarray(inputs[2]).dtype
        y_dtype = np.asarray(inputs[22] if node.attrs.get("residual", 0) else inputs[19]).dtype
        key = (tuple(in_shapes[0]), np.dtype(x_dtype), y_dtype, tuple(map(id, inputs[1:])))
        entry = self._calls.get(node.name)
        if entry is None or entry[0] != key:
            arguments = self._call_arguments(node, inputs, in_shapes[0], np.dtype(x_dtype), y_dtype, sizes)
            self._calls[node.name] = (key, arguments, inputs)

    def _gemm(self, w, wzp):
        return self._derived.get(w, ("gemm", np.asarray(wzp).tobytes()), lambda: gemm_weights(w, wzp))

    def _depthwise(self, w, wzp):
        def make():
            return np.ascontiguousarray(sq.centred_weights(sq.DerivedWeights(), w, wzp)[0].reshape(w.shape[0], -1))
        return self._derived.get(w, ("dw", np.asarray(wzp).tobytes()), make)

    def run(self, node, inputs, outputs, scratch):
        call = self._cached_call(node, inputs, outputs, scratch)
        if call is None:
            self.fallback.run(node, inputs, outputs, scratch)
            return
        fixed, places = call
        buffers = tuple(None if place is None else scratch[place].view(np.uint8) for place in places)
        x, y = inputs[0], outputs[0]
        function = _module().qblock_run
        for n in range(x.shape[0]):
            _call(function, x[n], y[n].view(np.uint8), *fixed, *buffers)

    def _cached_call(self, node, inputs, outputs, scratch):
        """_call_arguments, derived once per node (at planning, see _derive_call) while its constant inputs and
        dtypes stay the same (the entry holds those inputs, so their ids cannot be reused while it lives)."""
        x, y = inputs[0], outputs[0]
        key = (x.shape, x.dtype, y.dtype, tuple(map(id, inputs[1:])))
        entry = self._calls.get(node.name)
        if entry is None or entry[0] != key:
            sizes = {name: view.nbytes for name, view in scratch.items()}
            entry = (key, self._call_arguments(node, inputs, x.shape, x.dtype, y.dtype, sizes), list(inputs[1:]))
            self._calls[node.name] = entry
        call = entry[1]
        if call is not None and any(place is not None and place not in scratch for place in call[1]):
            return None
        return call

    def _call_arguments(self, node, inputs, x_shape, x_dtype, y_dtype, sizes):
        """(the weight and geometry arguments, the scratch buffer names in qblock_run's order) of qblock_run, or
        None (numpy runs); `sizes`: bytes of the scratch buffers the plan gives the step."""
        shapes = [tuple(x_shape)] + [None if v is None else np.shape(v) for v in inputs[1:]]
        g = sq.block_geometry(node, shapes[0], shapes[3] if node.inputs[3] else None, shapes[9], shapes[15])
        x_float = x_dtype == np.float32
        if (g.out_width > MAX_WIDTH or (g.out_width - 1) * g.dw.strides[0] + g.dw.kernel[0] > MAX_SPAN
                or x_dtype.itemsize > 1 and not x_float
                or x_float and (g.expand is None or g.residual or not node.attrs.get("quantize_input", 0))):
            return None
        has_expand = g.expand is not None
        e_kpad = kpad(g.cin * g.expand.kernel[0] ** 2) if has_expand else 4
        layout = scratch_layout(g, e_kpad, sizes, x_float)
        if layout is None:
            return None
        rows, chunk, places, tile_pixels = layout
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
        y_low, y_high = sq._range(y_dtype)
        ek, es, ep = (g.expand.kernel[0], g.expand.strides[0], g.expand.pads) if has_expand else (1, 1, (0, 0))
        geometry = dict(cin=g.cin, h=g.height, w=g.width, hidden=g.hidden, cout=g.cout, has_expand=int(has_expand),
                        ek=ek, es=es, ept=ep[0], epl=ep[1], hh=g.hidden_height, hw=g.hidden_width,
                        dk=g.dw.kernel[0], ds=g.dw.strides[0], dpt=g.dw.pads[0], dpl=g.dw.pads[1], ho=g.out_height,
                        wo=g.out_width, residual=int(g.residual), rows=rows, chunk=chunk, x_float=int(x_float),
                        x_signed=_signed(np.asarray(xz).dtype), h_signed=_signed(hidden_dtype),
                        d_signed=_signed(d_dtype), p_signed=_signed(p_dtype), y_signed=_signed(y_dtype),
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
        buffers = tuple(places.get(need) for need in ("hidden", "dw", "proj", "pacc", "tile", "xq"))
        return fixed, buffers


# the C block's cost model for choosing its band rows and chunk (relative units): a (band, chunk) step's fixed
# cost, in multiply-adds
STEP_MACS = 20000


def _needs(g, rows: int, chunk: int, x_float: bool) -> dict:
    """Bytes of every buffer the C block needs with bands of `rows` output rows and chunks of `chunk` hidden
    channels (quant.c's sizes), the packing tile apart."""
    pixels = rows * g.out_width
    needs = {"dw": kpad(chunk) * pixels}
    if g.expand is not None:
        needs["hidden"] = chunk * g.hidden_rows(rows) * g.hidden_width
    if g.residual:
        needs["proj"] = g.cout * pixels
    if chunk < g.hidden:
        needs["pacc"] = g.cout * pixels * 4
    if x_float:
        needs["xq"] = g.cin * g.input_rows(rows) * g.width
    return needs


def _best_fit(needs: dict, sizes: dict):
    """Each need in its own scratch buffer, the largest need first into the smallest buffer that holds it; the
    buffers left over; or None."""
    free = dict(sizes)
    places = {}
    for need, size in sorted(needs.items(), key=lambda item: -item[1]):
        fits = [name for name, room in free.items() if room >= size]
        if not fits:
            return None
        name = min(fits, key=lambda n: (free[n], n))
        places[need] = name
        del free[name]
    return places, free


def _fit(g, rows: int, chunk: int, e_kpad: int, sizes: dict, x_float: bool):
    """(places, tile buffer, tile pixels) for this band and chunk, or None."""
    fitted = _best_fit(_needs(g, rows, chunk, x_float), sizes)
    if fitted is None:
        return None
    places, free = fitted
    if g.expand is None:
        return places, None, 1
    tile = max(free, key=lambda n: (free[n], n), default=None)
    if tile is None or free[tile] < e_kpad:
        return None
    return places, tile, free[tile] // e_kpad


def _cost(g, rows: int, chunk: int, tile_pixels: int, e_kpad: int) -> float:
    """Multiply-adds the C block spends (expanded rows recomputed where bands overlap, pixel vectors of 16
    lanes), plus STEP_MACS per (band, chunk) step and the repacking of an expansion input that is not packed
    once per band."""
    bands = -(-g.out_height // rows)
    chunks = -(-g.hidden // chunk)
    pixels = rows * g.out_width
    lanes = pixels / (-(-pixels // 16) * 16)
    hidden_pixels = g.hidden_rows(rows) * g.hidden_width
    cost = bands * chunks * STEP_MACS
    cost += bands * g.hidden * g.cout * pixels / lanes
    if g.expand is not None:
        cost += bands * g.hidden * e_kpad * hidden_pixels / (hidden_pixels / (-(-hidden_pixels // 16) * 16))
        if tile_pixels < hidden_pixels:
            cost += bands * chunks * e_kpad * hidden_pixels
    return cost


def scratch_layout(g, e_kpad: int, sizes: dict, x_float: bool):
    """(band rows, hidden channels per chunk, the scratch buffer of every need, packing tile pixels) of the C
    block, or None: the numpy kernel's scratch buffers are pooled, each of the C block's buffers taking one,
    and the band and chunk the cheapest (_cost) that fit. A chunk is all hidden channels or a multiple of 4."""
    best = None
    for rows in range(1, g.out_height + 1):
        candidates = [g.hidden] + list(range((g.hidden - 1) // 4 * 4, 3, -4))
        low, high = 0, len(candidates) - 1     # candidates[low] is the largest chunk that fits, if any
        if _fit(g, rows, candidates[high], e_kpad, sizes, x_float) is None:
            continue
        while low < high:
            mid = (low + high) // 2
            if _fit(g, rows, candidates[mid], e_kpad, sizes, x_float) is None:
                low = mid + 1
            else:
                high = mid
        chunk = candidates[low]
        places, tile, tile_pixels = _fit(g, rows, chunk, e_kpad, sizes, x_float)
        cost = _cost(g, rows, chunk, tile_pixels, e_kpad)
        if best is None or cost < best[0]:
            best = (cost, rows, chunk, dict(places, tile=tile), tile_pixels)
    if best is None:
        return None
    _, rows, chunk, places, tile_pixels = best
    hidden_pixels = g.hidden_rows(rows) * g.hidden_width
    if tile_pixels < hidden_pixels and tile_pixels >= 32:
        tile_pixels -= tile_pixels % 32
    return rows, chunk, places, max(1, tile_pixels)


def _scalar_f32(value) -> float:
    return float(np.float32(np.asarray(value).reshape(())))


def _tile_pixels(tile_bytes: int, k_padded: int) -> int:
    pixels = max(1, tile_bytes // k_padded)
    return pixels - pixels % 32 if pixels >= 32 else pixels


class _NativeQuantStep(StepKernel):
    """A native int8 step with the numpy kernel it falls back to: same support and scratch as that kernel,
    weights derived once per weight (and zero point)."""

    def __init__(self, fallback: StepKernel, threads: int = 1):
        self.fallback = fallback
        self.threads = threads
        self._derived = sq.DerivedWeights()

    def supports(self, node):
        return self.fallback.supports(node)

    def scratch_bytes(self, node, in_shapes, out_shapes):
        return self.fallback.scratch_bytes(node, in_shapes, out_shapes)


class NativeQLinearConvKernel(_NativeQuantStep):
    """1x1 QLinearConv (stride 1, no padding, one group) in C, the pixels packed tile by tile into the numpy
    kernel's `a` scratch; every other convolution runs on the numpy kernel."""

    def prepare(self, node, constants):
        self.fallback.prepare(node, constants)
        w, wzp = constants.get(node.inputs[3]), constants.get(node.inputs[5])
        if w is not None and wzp is not None:
            self._weights(w, wzp)

    def _weights(self, w, wzp):
        return self._derived.get(w, ("gemm", np.asarray(wzp).tobytes()), lambda: gemm_weights(w, wzp))

    def run(self, node, inputs, outputs, scratch):
        x, xs, xzp, w, ws, wzp, ys, yzp = inputs[:8]
        y = outputs[0]
        spec = self.fallback.spec(node, x.shape, w.shape)
        if (spec.kind(x.shape[1], y.shape[1]) != "pointwise" or x.dtype.itemsize != 1 or y.dtype.itemsize != 1
                or "a" not in scratch):
            self.fallback.run(node, inputs, outputs, scratch)
            return
        bias = inputs[8] if len(inputs) > 8 else None
        w8, w16, sums = self._weights(w, wzp)
        cin, cout, pixels = x.shape[1], y.shape[1], int(np.prod(x.shape[2:]))
        req = sq.requant_of(xs, ws, ys, yzp, cout, y.dtype, node)
        tile = scratch["a"].view(np.uint8)
        geometry = np.array([cin, cout, pixels, kpad(cin), _signed(np.asarray(xzp).dtype), _scalar(xzp), 0,
                             _tile_pixels(tile.nbytes, kpad(cin))], dtype=np.int32)
        scalars = np.array([float(req.zero), req.low, req.high], dtype=np.float32)
        run = _module().qgemm_run
        folded = folded_bias(bias, sums, xzp)
        mult = _f32(req.mult, cout)
        for n in range(x.shape[0]):
            _call(run, x[n], y[n].view(np.uint8), w8, w16, folded, mult, geometry, scalars, tile)


class NativeQMatMulKernel(_NativeQuantStep):
    """QGemm / QLinearMatMul of int8 rows by a constant 2-D int8 matrix to int8, in C (one packed row at a
    time through the `cols` scratch); a float output (QGemm without y_scale) runs on the numpy kernel."""

    def prepare(self, node, constants):
        self.fallback.prepare(node, constants)
        b, bzp = constants.get(node.inputs[3]), constants.get(node.inputs[5])
        if b is not None and bzp is not None and b.ndim == 2:
            self._weights(node, b, bzp)

    def _weights(self, node, b, bzp):
        transposed = node.op_type == "QGemm" and bool(node.attrs.get("transB", 0))

        def make():
            return gemm_weights(b if transposed else np.ascontiguousarray(b.T), bzp)
        return self._derived.get(b, ("gemm", transposed, np.asarray(bzp).tobytes()), make)

    def run(self, node, inputs, outputs, scratch):
        ia, ias, iaz, ib, ibs, ibz, ibias, iys, iyz = sq.QMatMulKernel._operands(node)
        a, b, y = inputs[ia], inputs[ib], outputs[0]
        y_scale = sq._input(inputs, iys)
        if (y_scale is None or b.ndim != 2 or a.dtype.itemsize != 1 or y.dtype.itemsize != 1 or "cols" not in scratch
                or not a.flags.c_contiguous):
            self.fallback.run(node, inputs, outputs, scratch)
            return
        w8, w16, sums = self._weights(node, b, inputs[ibz])
        k = a.shape[-1]
        n = w16.shape[0] - PAD_ROWS
        rows = a.size // k
        mult = _f32(sq.multiplier(inputs[ias], inputs[ibs], y_scale), n)
        zero = sq._input(inputs, iyz)
        low, high = sq._range(y.dtype)
        geometry = np.array([k, n, rows, kpad(k), _signed(np.asarray(inputs[iaz]).dtype), _scalar(inputs[iaz]), 1, 1],
                            dtype=np.int32)
        scalars = np.array([0.0 if zero is None else _scalar(zero), low, high], dtype=np.float32)
        folded = folded_bias(sq._input(inputs, ibias), sums, inputs[iaz])
        _call(_module().qgemm_run, a.reshape(-1), y.reshape(-1).view(np.uint8), w8, w16, folded, mult, geometry,
              scalars, scratch["cols"].view(np.uint8))
