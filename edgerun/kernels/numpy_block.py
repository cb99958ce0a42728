"""The numpy oracle of the fused inverted-residual block, split into chunks and bands.

Every intermediate lives in the scratch views `block_contract(geom, sched, threads)` names;
all work is numpy ufuncs / matmul with out= into those views, so no activation-sized
temporary is ever allocated. One thread, whatever the caller's thread count.
With geom.itemsize 2 (float16 storage) the output and every scratch view hold float16 and the input
float16 or float32: ufuncs compute in float32 and round on store, matmuls run in bounded float32
pieces (edgerun.kernels.f16.matmul_into).
"""
from __future__ import annotations

import math

import numpy as np

from edgerun.kernels.activations import apply_inplace
from edgerun.kernels.f16 import matmul_into
from edgerun.kernels.block_args import check_block_args
from scheduler.blocks import band_hidden_rows, band_row_ranges, chunk_channels, chunk_ranges, input_rows_for
from scheduler.contract import SINGLE, KernelContract, ScratchBuffer, ThreadSplit
from scheduler.cost import register_default

# Measured on a 2-core x86 box: BLAS float32 matmul ~2.5e-11 s/MAC, depthwise as 9 strided
# multiply-adds ~1.2e-9 s/MAC, ~25 numpy calls per (chunk, band) iteration ~3e-5 s.
register_default("numpy", s_pw=2.5e-11, s_dw=1.2e-9, s_call=3.0e-5, s_other=1.0e-10)


def block_contract(geom, sched, threads: int = 1) -> KernelContract:
    """Scratch (bytes) of run_block: `expanded` (chunk hidden rows, with an expansion), `depthwise`
    and `dw_tmp` (the chunk's depthwise band and its products), `proj_tmp` (one band's projection)
    and `im2col` (the band's expansion taps, for a k > 1 expansion). Always one thread."""
    c, rows, item = chunk_channels(geom, sched.t), sched.band_rows, geom.itemsize
    hidden_rows = band_hidden_rows(geom, rows)
    sizes = {}
    if geom.has_expansion:
        sizes["expanded"] = c * hidden_rows * geom.hidden_width * item
    sizes["depthwise"] = c * rows * geom.out_width * item
    sizes["dw_tmp"] = sizes["depthwise"]
    sizes["proj_tmp"] = geom.out_channels * rows * geom.out_width * item
    if geom.expand_kernel > 1:
        k = geom.expand_kernel
        sizes["im2col"] = geom.in_channels * k * k * hidden_rows * geom.hidden_width * item
    return KernelContract(sched, tuple(ScratchBuffer(name, n) for name, n in sizes.items()),
                          ThreadSplit(SINGLE, threads, 1))

# ufuncs on strided views otherwise allocate iterator buffers of 8192 elements per operand
# (~100 KB per call, seen by tracemalloc); 64 elements costs little speed. On float16 storage every
# ufunc converts through these buffers: 1024 elements (4 KB an operand) keep the conversions fast.
UFUNC_BUFFER_ELEMENTS = 64
HALF_UFUNC_BUFFER_ELEMENTS = 1024


def run_block(x, out, weights, geom, sched, scratch) -> None:
    """The block for one image, with the scratch block_contract(geom, sched) declares."""
    block_call(x, out, weights, geom, block_contract(geom, sched), scratch)()


def block_call(x, out, weights, geom, contract: KernelContract, scratch):
    """The block for one image, checked now against `contract`, run by calling the result."""

    check_block_args(x, out, weights, geom, contract, scratch)
    sched = contract.schedule

    elements = HALF_UFUNC_BUFFER_ELEMENTS if geom.itemsize == 2 else UFUNC_BUFFER_ELEMENTS

    def run() -> None:
        previous = np.setbufsize(elements)
        try:
            _run_bands_and_chunks(x, out, weights, geom, sched, scratch)
        finally:
            np.setbufsize(previous)
    return run


def _run_bands_and_chunks(x, out, weights, geom, sched, scratch) -> None:
    _initialise_output(x, out, weights, geom)
    chunks = chunk_ranges(geom.hidden_channels, sched.t)
    for o0, o1, h0, h1 in band_row_ranges(geom, sched.band_rows):
        if geom.expand_kernel > 1:
            _fill_im2col(x, geom, h0, h1, scratch["im2col"])
        for c0, c1 in chunks:
            hidden = _hidden_rows(x, weights, geom, scratch, c0, c1, h0, h1)
            depthwise = _depthwise(hidden, weights, geom, scratch, c0, c1, o0, o1, h0)
            _project_into(out, depthwise, weights, scratch, c0, c1, o0, o1)


def _initialise_output(x, out, weights, geom) -> None:
    np.copyto(out, weights.bp[:, None, None])
    if geom.residual:
        np.add(out, x, out=out)


def _view(buffer: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A reshaped view of the leading part of a flat scratch buffer."""
    return buffer[: math.prod(shape)].reshape(shape)


def _reshape_in_place(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    view = array.reshape(shape)
    if not np.may_share_memory(view, array):
        raise AssertionError(f"reshape to {shape} would copy")
    return view


def _valid_range(lo: int, hi: int, stride: int, offset: int, size: int) -> tuple[int, int]:
    """Output indices o in [lo, hi) whose input index o*stride + offset lies in [0, size)."""
    first = max(lo, -(offset // stride))
    last = min(hi, (size - 1 - offset) // stride + 1)
    return first, max(first, last)


def _strided(start: int, count: int, stride: int) -> slice:
    return slice(start, start + (count - 1) * stride + 1, stride)


def _fill_im2col(x, geom, h0, h1, im2col) -> None:
    """im2col rows (ci, ky, kx) x hidden pixels of rows [h0, h1), zeros where padding."""
    k, stride = geom.expand_kernel, geom.expand_stride
    pad_top, pad_left = geom.expand_pads[0], geom.expand_pads[1]
    width = geom.hidden_width
    cols = _view(im2col, (geom.in_channels, k, k, h1 - h0, width))
    for ky in range(k):
        r0, r1 = _valid_range(h0, h1, stride, ky - pad_top, geom.in_height)
        for kx in range(k):
            j0, j1 = _valid_range(0, width, stride, kx - pad_left, geom.in_width)
            dest = cols[:, ky, kx]
            if (r0, r1, j0, j1) != (h0, h1, 0, width):
                dest.fill(0.0)
            if r0 < r1 and j0 < j1:
                source = x[:, _strided(r0 * stride + ky - pad_top, r1 - r0, stride),
                           _strided(j0 * stride + kx - pad_left, j1 - j0, stride)]
                np.copyto(dest[:, r0 - h0:r1 - h0, j0:j1], source)


def _hidden_rows(x, weights, geom, scratch, c0, c1, h0, h1) -> np.ndarray:
    """Hidden channels [c0, c1), rows [h0, h1) after expansion and its activation: (cc, nh, Wh)."""
    if not geom.has_expansion:
        return x[c0:c1, h0:h1, :]
    count, rows, width = c1 - c0, h1 - h0, geom.hidden_width
    expanded = _view(scratch["expanded"], (count, rows, width))
    we_rows = weights.we.reshape(geom.hidden_channels, -1)[c0:c1]
    if geom.expand_kernel > 1:
        im2col = _view(scratch["im2col"], (we_rows.shape[1], rows * width))
        matmul_into(we_rows, im2col, expanded.reshape(count, rows * width))
    elif geom.expand_stride == 1 and not any(geom.expand_pads):
        i0, i1 = input_rows_for(geom, h0, h1)
        inputs = _reshape_in_place(x[:, i0:i1, :], (geom.in_channels, (i1 - i0) * width))
        matmul_into(we_rows, inputs, expanded.reshape(count, rows * width))
    else:
        _pointwise_rows_padded(x, we_rows, geom, expanded, h0, h1)
    np.add(expanded, weights.be[c0:c1, None, None], out=expanded)
    apply_activation_inplace(expanded.reshape(-1), weights.expand_act, scratch["dw_tmp"])
    return expanded


def _pointwise_rows_padded(x, we_rows, geom, expanded, h0, h1) -> None:
    """1x1 expansion with stride or padding, one hidden row at a time (zeros where padding)."""
    stride, pad_top, pad_left = geom.expand_stride, geom.expand_pads[0], geom.expand_pads[1]
    j0, j1 = _valid_range(0, geom.hidden_width, stride, -pad_left, geom.in_width)
    for h in range(h0, h1):
        row = expanded[:, h - h0, :]
        source_row = h * stride - pad_top
        if (j0, j1) != (0, geom.hidden_width) or not 0 <= source_row < geom.in_height:
            row.fill(0.0)
        if 0 <= source_row < geom.in_height and j0 < j1:
            matmul_into(we_rows, x[:, source_row, _strided(j0 * stride - pad_left, j1 - j0, stride)], row[:, j0:j1])


def _depthwise(hidden, weights, geom, scratch, c0, c1, o0, o1, h0) -> np.ndarray:
    """Depthwise conv + bias + activation of output rows [o0, o1): (cc, nb, Wo) view."""
    count, band, width = c1 - c0, o1 - o0, geom.out_width
    k, stride = geom.dw_kernel, geom.dw_stride
    pad_top, pad_left = geom.dw_pads[0], geom.dw_pads[1]
    result = _view(scratch["depthwise"], (count, band, width))
    product = _view(scratch["dw_tmp"], (count, band, width))
    np.copyto(result, weights.bd[c0:c1, None, None])
    for ky in range(k):
        r0, r1 = _valid_range(o0, o1, stride, ky - pad_top, geom.hidden_height)
        if r0 >= r1:
            continue
        rows = _strided(r0 * stride + ky - pad_top - h0, r1 - r0, stride)
        for kx in range(k):
            j0, j1 = _valid_range(0, width, stride, kx - pad_left, geom.hidden_width)
            if j0 >= j1:
                continue
            cols = _strided(j0 * stride + kx - pad_left, j1 - j0, stride)
            tap = weights.wd_taps[ky * k + kx, c0:c1, None, None]
            dest = product[:, r0 - o0:r1 - o0, j0:j1]
            np.multiply(hidden[:, rows, cols], tap, out=dest)
            target = result[:, r0 - o0:r1 - o0, j0:j1]
            np.add(target, dest, out=target)
    apply_activation_inplace(result.reshape(-1), weights.dw_act, scratch["dw_tmp"])
    return result


def _project_into(out, depthwise, weights, scratch, c0, c1, o0, o1) -> None:
    """out[:, o0:o1] += Wp[:, c0:c1] @ depthwise chunk."""
    channels, pixels = out.shape[0], (o1 - o0) * out.shape[2]
    partial = _view(scratch["proj_tmp"], (channels, pixels))
    matmul_into(weights.wp[:, c0:c1], depthwise.reshape(c1 - c0, pixels), partial)
    band = _reshape_in_place(out[:, o0:o1, :], (channels, pixels))
    np.add(band, partial, out=band)


def apply_activation_inplace(values: np.ndarray, activation, tmp: np.ndarray) -> None:
    """Apply the activation to a flat contiguous array in place (edgerun.kernels.activations)."""
    apply_inplace(values, activation, tmp)
