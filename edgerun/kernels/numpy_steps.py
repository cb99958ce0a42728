"""Arena-aware numpy kernels for the non-block steps of a plan.

Each kernel writes into the output views it is given and keeps any temporary of activation size in
the scratch views the plan placed in the arena. `scratch_bytes` tells the scheduler how much each
one needs, per image for convolutions (the executor loops over the batch).

Kernels: FusedConv (1x1, grouped 1x1, depthwise, im2col), binary ufuncs, GlobalAveragePool, Gemm/MatMul,
reshapes, Concat, Transpose, MaxPool/AveragePool (any rank; MaxPool's Indices output excepted), every
activation of the table in edgerun.kernels.activations, unary ufuncs (Tanh) and Softmax with axis=-1.
`StepKernel.supports` turns a node down (it then runs on its reference op, copied into the arena).

Which op runs on which kernel is not decided here: each op's definition names its kernel
(`edgerun.ops.register(..., step=...)`). This module imports nothing of edgerun.ops.
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from edgerun.ir import Node
from edgerun.kernels.activations import KINDS, Activation, apply_inplace

ITEMSIZE = 4
# NumPy (2.x) ufuncs over strided or broadcast views copy through buffers of `bufsize` items per
# operand (8192 by default: 32 KB each, up to ~100 KB per call, outside the arena). Kernels run with
# 1024-item buffers: ~13 KB at most, and no slower.
UFUNC_BUFFER_ITEMS = 1024


def _bounded_buffers(run):
    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        old = np.setbufsize(UFUNC_BUFFER_ITEMS)
        try:
            return run(*args, **kwargs)
        finally:
            np.setbufsize(old)
    return wrapper


class StepKernel:
    """One op's arena kernel: the scratch it needs and how to run it.

    Every subclass's `run` executes with small ufunc buffers (UFUNC_BUFFER_ITEMS)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "run" in cls.__dict__:
            cls.run = _bounded_buffers(cls.__dict__["run"])

    def scratch_bytes(self, node: Node, in_shapes: list, out_shapes: list) -> dict[str, int]:
        return {}

    def supports(self, node: Node) -> bool:
        """False when the node uses a feature this kernel does not implement (the reference op runs)."""
        return True

    def prepare(self, node: Node, constants: dict) -> None:
        """Called once when the plan is bound: derive weight layouts here, not during a run."""

    def run(self, node: Node, inputs: list, outputs: list, scratch: dict) -> None:
        raise NotImplementedError

    def c_arguments(self, node: Node, constants: dict, in_shapes: list, out_shapes: list) -> dict | None:
        """What run() hands the C kernels for inputs of these shapes, for the C runtime's program
        (edgerun/c_program.py): the weight layouts prepare() made, the activation, the geometry. None when
        run() would not call a C kernel (the numpy path); a kernel without a C counterpart keeps None."""
        return None


def _needs_act_tmp(node: Node) -> bool:
    return KINDS[node.attrs.get("activation", "")].needs_tmp


def _flat(view: np.ndarray, count: int) -> np.ndarray:
    return view[:count]


class FusedConvKernel(StepKernel):
    """Conv + activation. 1x1 convs are one matmul, depthwise runs tap by tap, the rest via im2col."""

    def scratch_bytes(self, node, in_shapes, out_shapes):
        _, cin, _, _ = in_shapes[0]
        _, cout, ho, wo = out_shapes[0]
        kh, kw = node.attrs["kernel_shape"]
        group = node.attrs.get("group", 1)
        need = {}
        if _is_depthwise(node, cin, cout):
            need["tap"] = ho * wo * cout * ITEMSIZE
        elif not (_is_pointwise(node) or _is_grouped_pointwise(node, cin, cout)):
            rows = conv_band_rows(cin * kh * kw, ho, wo)
            need["im2col"] = (cin // group) * kh * kw * rows * wo * ITEMSIZE
        if _needs_act_tmp(node):
            need["act"] = cout * ho * wo * ITEMSIZE
        return need

    def run(self, node, inputs, outputs, scratch):
        x, w, b = inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None
        s = inputs[3] if len(inputs) > 3 else None
        y = outputs[0]
        for n in range(x.shape[0]):
            self._run_image(node, x[n], w, b, y[n], scratch, None if s is None else s[n])

    def _run_image(self, node, x, w, b, y, scratch, s=None):
        cin, cout = x.shape[0], y.shape[0]
        if _is_depthwise(node, cin, cout):
            _depthwise(x, w, y, node.attrs, scratch["tap"])
        elif _is_pointwise(node):
            np.matmul(w.reshape(cout, cin), x.reshape(cin, -1), out=y.reshape(cout, -1))
        elif _is_grouped_pointwise(node, cin, cout):
            group = node.attrs["group"]
            cg, og = cin // group, cout // group
            for g in range(group):
                np.matmul(w[g * og:(g + 1) * og].reshape(og, cg), x[g * cg:(g + 1) * cg].reshape(cg, -1),
                          out=y[g * og:(g + 1) * og].reshape(og, -1))
        else:
            _im2col_conv(x, w, y, node.attrs, scratch["im2col"])
        if b is not None:
            np.add(y, b.reshape(-1, 1, 1), out=y)
        if s is not None:   # the fused residual (passes/fuse_add.py): act(conv + b + s)
            np.add(y, s, out=y)
        activation = Activation(node.attrs.get("activation", ""), tuple(node.attrs.get("activation_params", ())))
        apply_inplace(y.reshape(-1), activation, scratch.get("act"))


def _is_pointwise(node: Node) -> bool:
    a = node.attrs
    return (list(a["kernel_shape"]) == [1, 1] and list(a.get("strides", [1, 1])) == [1, 1]
            and not any(a.get("pads", [0, 0, 0, 0])) and a.get("group", 1) == 1)


def _is_grouped_pointwise(node: Node, cin: int, cout: int) -> bool:
    """A 1x1, stride-1, unpadded convolution with groups > 1 that is not depthwise."""
    a = node.attrs
    group = a.get("group", 1)
    return (list(a["kernel_shape"]) == [1, 1] and list(a.get("strides", [1, 1])) == [1, 1]
            and not any(a.get("pads", [0, 0, 0, 0])) and group > 1 and cin % group == 0
            and cout % group == 0 and not _is_depthwise(node, cin, cout))


def _is_depthwise(node: Node, cin: int, cout: int) -> bool:
    return node.attrs.get("group", 1) == cin == cout and cin > 1


def _tap_range(out_len, in_len, tap_offset, stride):
    """Output indices o with 0 <= o*stride + tap_offset < in_len, as (first, stop)."""
    first = max(0, -(-(-tap_offset) // stride)) if tap_offset < 0 else 0
    stop = min(out_len, (in_len - 1 - tap_offset) // stride + 1) if in_len - 1 - tap_offset >= 0 else 0
    return first, max(first, stop)


def _depthwise(x, w, y, attrs, tap):
    c, h, wd = x.shape
    _, ho, wo = y.shape
    kh, kw = attrs["kernel_shape"]
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    pt, pl = attrs.get("pads", [0, 0, 0, 0])[:2]
    y.fill(0)
    for i in range(kh):
        r0, r1 = _tap_range(ho, h, i * dh - pt, sh)
        for j in range(kw):
            c0, c1 = _tap_range(wo, wd, j * dw - pl, sw)
            if r0 >= r1 or c0 >= c1:
                continue
            src = x[:, r0 * sh + i * dh - pt: (r1 - 1) * sh + i * dh - pt + 1: sh,
                    c0 * sw + j * dw - pl: (c1 - 1) * sw + j * dw - pl + 1: sw]
            t = tap[: src.size].reshape(src.shape)
            np.multiply(src, w[:, 0, i, j].reshape(c, 1, 1), out=t)
            np.add(y[:, r0:r1, c0:c1], t, out=y[:, r0:r1, c0:c1])


# Scratch of a dense convolution's gathered taps is kept near this size: a band of output rows at a time
# (at least one row), never the whole output (issue 11: bounded by the band it computes).
CONV_BAND_TARGET_BYTES = 256 * 1024


def conv_band_rows(taps: int, out_height: int, out_width: int) -> int:
    """Output rows per band of a dense convolution with `taps` = Cin * kh * kw gathered values per pixel:
    as many as keep the band's taps within CONV_BAND_TARGET_BYTES, at least 1, at most out_height. The
    numpy and the native kernels band alike."""
    per_row = max(1, taps * out_width * ITEMSIZE)
    return max(1, min(out_height, CONV_BAND_TARGET_BYTES // per_row))


def _im2col_fill(xg, cols, attrs, row0=0):
    """cols (cg, kh, kw, rows, wo) = the input taps of output rows [row0, row0 + rows) (zero where they fall
    in pads)."""
    _, h, wd = xg.shape
    _, kh, kw, rows, wo = cols.shape
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    pt, pl = attrs.get("pads", [0, 0, 0, 0])[:2]
    for i in range(kh):
        first, stop = _tap_range(row0 + rows, h, i * dh - pt, sh)
        r0, r1 = max(first, row0) - row0, max(stop, row0) - row0   # band-local rows with the tap inside x
        for j in range(kw):
            c0, c1 = _tap_range(wo, wd, j * dw - pl, sw)
            tap = cols[:, i, j]
            if r0 >= r1 or c0 >= c1:
                tap.fill(0)
                continue
            if r0 > 0 or r1 < rows or c0 > 0 or c1 < wo:   # only the pad border is zeroed
                tap[:, :r0].fill(0)
                tap[:, r1:].fill(0)
                tap[:, r0:r1, :c0].fill(0)
                tap[:, r0:r1, c1:].fill(0)
            y0 = (r0 + row0) * sh + i * dh - pt
            np.copyto(tap[:, r0:r1, c0:c1], xg[:, y0: y0 + (r1 - r0 - 1) * sh + 1: sh,
                                                c0 * sw + j * dw - pl: (c1 - 1) * sw + j * dw - pl + 1: sw])


def _im2col_conv(x, w, y, attrs, col_scratch):
    """Band by band (conv_band_rows), group by group: the band's taps into the scratch, one matmul into the
    band's rows of the group's output channels."""
    cin, h, wd = x.shape
    cout, ho, wo = y.shape
    kh, kw = attrs["kernel_shape"]
    group = attrs.get("group", 1)
    cg, og = cin // group, cout // group
    band = conv_band_rows(cin * kh * kw, ho, wo)
    for row0 in range(0, ho, band):
        rows = min(band, ho - row0)
        cols = col_scratch[: cg * kh * kw * rows * wo].reshape(cg, kh, kw, rows, wo)
        for g in range(group):
            _im2col_fill(x[g * cg:(g + 1) * cg], cols, attrs, row0)
            np.matmul(w[g * og:(g + 1) * og].reshape(og, -1), cols.reshape(cg * kh * kw, rows * wo),
                      out=y[g * og:(g + 1) * og, row0:row0 + rows].reshape(og, rows * wo))


class BinaryKernel(StepKernel):
    def __init__(self, ufunc):
        self.ufunc = ufunc

    def run(self, node, inputs, outputs, scratch):
        self.ufunc(inputs[0], inputs[1], out=outputs[0])


class GlobalAveragePoolKernel(StepKernel):
    def run(self, node, inputs, outputs, scratch):
        x, y = inputs[0], outputs[0]
        rows = math.prod(x.shape[:2])
        # one row per (image, channel): a reduction over the contiguous axis needs no ufunc buffers
        flat_y = y.reshape(rows)
        np.sum(x.reshape(rows, -1), axis=1, out=flat_y)
        np.multiply(flat_y, 1.0 / math.prod(x.shape[2:]), out=flat_y)


class GemmKernel(StepKernel):
    def run(self, node, inputs, outputs, scratch):
        a, b = inputs[0], inputs[1]
        c = inputs[2] if len(inputs) > 2 else None
        attrs = node.attrs
        a = a.T if attrs.get("transA", 0) else a
        b = b.T if attrs.get("transB", 0) else b
        y = outputs[0]
        np.matmul(a, b, out=y)
        alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
        if alpha != 1.0:
            np.multiply(y, alpha, out=y)
        if c is not None and beta != 0.0:
            np.add(y, c if beta == 1.0 else c * beta, out=y)


class MatMulKernel(StepKernel):
    def run(self, node, inputs, outputs, scratch):
        np.matmul(inputs[0], inputs[1], out=outputs[0])


class CopyReshapeKernel(StepKernel):
    """Flatten/Reshape/Squeeze/Unsqueeze: the same bytes in a new shape."""

    def run(self, node, inputs, outputs, scratch):
        np.copyto(outputs[0], inputs[0].reshape(outputs[0].shape))


class ConcatKernel(StepKernel):
    def run(self, node, inputs, outputs, scratch):
        y = outputs[0]
        axis = node.attrs["axis"] % y.ndim
        start = 0
        for x in inputs:
            index = [slice(None)] * y.ndim
            index[axis] = slice(start, start + x.shape[axis])
            part = y[tuple(index)]
            if x.ctypes.data != part.ctypes.data:   # else its producer wrote it in place (edgerun/concat_alias.py)
                part[...] = x
            start += x.shape[axis]


def _pool_geometry(node: Node, x_shape, y_shape, resolve_pads):
    """(kernel, strides, dilations, pads) of a pool; the output shape (ceil_mode) is the planned one.
    resolve_pads(attrs, spatial, kernel, strides, dilations): the op's own pad rule (auto_pad)."""
    rank = len(x_shape) - 2
    a = node.attrs
    kernel = [int(k) for k in a["kernel_shape"]]
    strides = [int(v) for v in a.get("strides", [1] * rank)]
    dilations = [int(v) for v in a.get("dilations", [1] * rank)]
    pads = resolve_pads(a, list(x_shape[2:]), kernel, strides, dilations)
    return kernel, strides, dilations, pads


def _pool_taps(x, y, kernel, strides, dilations, pads):
    """(input view, output view) per kernel tap: the outputs whose window holds that tap inside x."""
    for offsets in itertools.product(*(range(k) for k in kernel)):
        src, dst = [slice(None), slice(None)], [slice(None), slice(None)]
        for axis, j in enumerate(offsets):
            tap = j * dilations[axis] - pads[axis]
            s = strides[axis]
            first, stop = _tap_range(y.shape[2 + axis], x.shape[2 + axis], tap, s)
            if first >= stop:
                break
            src.append(slice(first * s + tap, (stop - 1) * s + tap + 1, s))
            dst.append(slice(first, stop))
        else:
            yield x[tuple(src)], y[tuple(dst)]


def _axis_divisors(k, s, d, begin, low, high, out) -> np.ndarray:
    """Per output position of one axis: window taps that fall inside [low, high) (at least 1)."""
    counts = np.zeros(out, dtype=np.float32)
    for o in range(out):
        start = o * s - begin
        counts[o] = max(1, sum(1 for j in range(k) if low <= start + j * d < high))
    return counts


class PoolKernel(StepKernel):
    """A pool of any rank; `resolve_pads` is the op's pad rule (given by its definition in edgerun.ops)."""

    def __init__(self, resolve_pads):
        self.resolve_pads = resolve_pads

    def geometry(self, node, x_shape, y_shape):
        return _pool_geometry(node, x_shape, y_shape, self.resolve_pads)


class MaxPoolKernel(PoolKernel):
    """MaxPool of any rank (pads, strides, dilations, ceil_mode): a running maximum over the taps
    (np.maximum: a NaN in a window gives NaN)."""

    def supports(self, node):
        return not (len(node.outputs) > 1 and node.outputs[1])   # Indices runs on the reference op

    def run(self, node, inputs, outputs, scratch):
        x, y = inputs[0], outputs[0]
        kernel, strides, dilations, pads = self.geometry(node, x.shape, y.shape)
        y.fill(-np.inf)
        for src, dst in _pool_taps(x, y, kernel, strides, dilations, pads):
            np.maximum(dst, src, out=dst)


class AveragePoolKernel(PoolKernel):
    """AveragePool of any rank: a sum over the taps, divided axis by axis by the tap counts."""

    def run(self, node, inputs, outputs, scratch):
        x, y = inputs[0], outputs[0]
        kernel, strides, dilations, pads = self.geometry(node, x.shape, y.shape)
        rank = len(kernel)
        include_pad = bool(node.attrs.get("count_include_pad", 0))
        y.fill(0)
        for src, dst in _pool_taps(x, y, kernel, strides, dilations, pads):
            np.add(dst, src, out=dst)
        for axis in range(rank):
            size = x.shape[2 + axis]
            low, high = (-pads[axis], size + pads[axis + rank]) if include_pad else (0, size)
            counts = _axis_divisors(kernel[axis], strides[axis], dilations[axis], pads[axis], low, high,
                                    y.shape[2 + axis])
            if np.any(counts != 1):
                np.divide(y, counts.reshape((-1,) + (1,) * (rank - 1 - axis)), out=y)


class ActivationKernel(StepKernel):
    """A standalone activation of the table (edgerun.kernels.activations) written into the output: straight
    from the input when the kind has `into`, else copied and applied in place with a small `act` scratch."""

    TMP_ITEMS = 4096   # the in-place path works in slices of this many floats

    def __init__(self, kind: str):
        self.kind = KINDS[kind]

    def params(self, node: Node, inputs) -> tuple:
        if self.kind.params_from_inputs:
            return _clip_bounds(node, inputs)
        return tuple(self.kind.params_from_attrs(node.attrs))

    def scratch_bytes(self, node, in_shapes, out_shapes):
        if self.kind.into is not None or not self.kind.needs_tmp:
            return {}
        return {"act": max(1, min(self.TMP_ITEMS, math.prod(out_shapes[0]))) * ITEMSIZE}

    def run(self, node, inputs, outputs, scratch):
        x, y = inputs[0], outputs[0]
        params = self.params(node, inputs)
        if self.kind.into is not None:
            self.kind.into(x, y, *params)
            return
        np.copyto(y, x)
        apply_inplace(y.reshape(-1), Activation(self.kind.name, params), scratch.get("act"))


class UnaryKernel(StepKernel):
    """An elementwise ufunc of one input (Tanh) written straight into the output."""

    def __init__(self, ufunc):
        self.ufunc = ufunc

    def run(self, node, inputs, outputs, scratch):
        self.ufunc(inputs[0], out=outputs[0])


def _clip_bounds(node: Node, inputs):
    """Clip's (min, max): inputs 1 and 2 from opset 11, attributes before; None for a missing bound."""
    bounds = []
    for index, name in ((1, "min"), (2, "max")):
        if len(inputs) > index and inputs[index] is not None:
            bounds.append(np.float32(np.asarray(inputs[index]).reshape(())))
        elif name in node.attrs:
            bounds.append(np.float32(node.attrs[name]))
        else:
            bounds.append(None)
    return tuple(bounds)


class TransposeKernel(StepKernel):
    def run(self, node, inputs, outputs, scratch):
        x = inputs[0]
        perm = node.attrs.get("perm") or list(range(x.ndim))[::-1]
        np.copyto(outputs[0], x.transpose(perm))


class SoftmaxKernel(StepKernel):
    """Softmax with axis=-1: over the last axis at every opset (before 13 the tail from the axis is
    flattened, which is then that one axis). Other axes depend on the opset: the reference op runs.
    A row maximum and sum (one float per row) live in scratch."""

    def supports(self, node):
        return node.attrs.get("axis") == -1

    def scratch_bytes(self, node, in_shapes, out_shapes):
        return {"rows": max(1, math.prod(in_shapes[0][:-1])) * ITEMSIZE}

    def run(self, node, inputs, outputs, scratch):
        x, y = inputs[0], outputs[0]
        if x.size == 0:
            return
        rows = scratch["rows"][: math.prod(x.shape[:-1])].reshape(x.shape[:-1] + (1,))
        np.max(x, axis=-1, keepdims=True, out=rows)
        np.subtract(x, rows, out=y)
        np.exp(y, out=y)
        np.sum(y, axis=-1, keepdims=True, out=rows)
        np.divide(y, rows, out=y)
