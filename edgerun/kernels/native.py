"""Python face of the C extension edgerun.kernels._native.

All functions write into caller-given arrays (out= style) and allocate nothing of
activation size; the C code checks dtype, contiguity, sizes and overlap again and
releases the GIL while it computes.
"""
from __future__ import annotations

import numpy as np

from edgerun.errors import EdgerunError
from edgerun.kernels.activations import Activation
from edgerun.kernels.block_args import check_block_args
from scheduler.blocks import band_count, band_hidden_rows, band_row_ranges, chunk_channels
from scheduler.contract import (BY_CHANNELS, BY_ROWS, SINGLE, WHOLE_BANDS, KernelContract, ScratchBuffer,
                                ThreadSplit)
from scheduler.cost import register_default

# A fused C loop without BLAS, guessed; `edgerun calibrate` measures the target's figures.
register_default("native", s_pw=1.5e-10, s_dw=3.0e-10, s_call=1.0e-6, s_other=1.0e-10)

# Threads sharing one (band, chunk) step split a band of at most this many output pixels by
# channels (a row split would leave each thread too few columns for the GEMM tiles), a wider one
# by rows. block.c follows the per-band choice it is given.
CHANNEL_SPLIT_PIXELS = 256
# Threads a native kernel may be asked for (ER_MAX_THREADS in threadpool.h; a test checks they agree)
MAX_THREADS = 128
# The C side's split codes (er_block_split.mode in kernels.h)
_SPLIT_CODES = {SINGLE: 0, WHOLE_BANDS: 1, BY_CHANNELS: 2, BY_ROWS: 2}


def block_contract(geom, sched, threads: int = 1) -> KernelContract:
    """The fused C block's contract. With threads > 1 and at least `threads` bands each thread takes
    whole bands (k, k + T, ...) into its own slice of `expanded` and `depthwise` (T slices); otherwise
    the threads share one slice and split each (band, chunk) step: by channels when the band has at
    most CHANNEL_SPLIT_PIXELS output pixels (min(threads, chunk channels, out channels) busy), else by
    rows (counted as one busy thread: the gain is not counted on). One slice: `expanded`
    ceil(E/t) * hidden rows of a band * Wh (with an expansion), `depthwise` ceil(E/t) * band_rows * Wo."""
    threads = _threads(threads)
    split = _block_split(geom, sched, threads)
    slices = threads if split.whole_bands else 1
    c, rows, item = chunk_channels(geom, sched.t), sched.band_rows, geom.itemsize
    scratch = []
    if geom.has_expansion:
        expanded = c * band_hidden_rows(geom, rows) * geom.hidden_width * item
        scratch.append(ScratchBuffer("expanded", slices * expanded, slices))
    scratch.append(ScratchBuffer("depthwise", slices * c * rows * geom.out_width * item, slices))
    return KernelContract(sched, tuple(scratch), split)


def _block_split(geom, sched, threads: int) -> ThreadSplit:
    if threads == 1:
        return ThreadSplit(SINGLE, 1, 1)
    if band_count(geom, sched.band_rows) >= threads:
        return ThreadSplit(WHOLE_BANDS, threads, threads)
    if _by_channels(geom, sched.band_rows):
        busy = max(1, min(threads, chunk_channels(geom, sched.t), geom.out_channels))
        return ThreadSplit(BY_CHANNELS, threads, busy)
    return ThreadSplit(BY_ROWS, threads, 1)


def _by_channels(geom, rows: int) -> bool:
    return rows * geom.out_width <= CHANNEL_SPLIT_PIXELS


def _module():
    try:
        from edgerun.kernels import _native
    except ImportError as exc:
        raise EdgerunError(f"the native kernels are not built ({exc})") from exc
    return _native


def _act(activation: Activation) -> tuple[int, float, float]:
    return (activation.code, *activation.native_params())


def _geometry_tuple(geom) -> tuple:
    """The geometry as block.c takes it: the attributes, then the sizes Python derived (asserted there)."""
    return (geom.in_channels, geom.in_height, geom.in_width, geom.hidden_channels, geom.expand_kernel,
            geom.expand_stride, tuple(geom.expand_pads), geom.dw_kernel, geom.dw_stride,
            tuple(geom.dw_pads), geom.out_channels, bool(geom.residual),
            (geom.hidden_height, geom.hidden_width, geom.out_height, geom.out_width))


def _band_table(geom, contract: KernelContract) -> np.ndarray:
    """int32 (bands, 5): output rows [o0, o1), hidden rows [h0, h1) of every band, and 1 where threads
    sharing the band split it by channels (0: by rows)."""
    rows = [(o0, o1, h0, h1, int(_by_channels(geom, o1 - o0)))
            for o0, o1, h0, h1 in band_row_ranges(geom, contract.schedule.band_rows)]
    return np.array(rows, dtype=np.int32).reshape(-1, 5)


def _split_tuple(contract: KernelContract) -> tuple:
    """(mode, threads, slices, floats of one `expanded` slice, floats of one `depthwise` slice)."""
    depthwise = contract.buffer("depthwise")
    expanded = contract.buffer("expanded").slice_bytes // 4 if "expanded" in contract.scratch_bytes() else 0
    return (_SPLIT_CODES[contract.split.kind], contract.threads, depthwise.slices, expanded,
            depthwise.slice_bytes // 4)


def _call(function, *args):
    try:
        return function(*args)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise EdgerunError(f"native kernel {function.__name__}: {exc}") from exc


def _threads(threads) -> int:
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= MAX_THREADS:
        raise EdgerunError(f"threads must be in 1..{MAX_THREADS}, got {threads!r}")
    return threads


def run_block(x, out, weights, geom, sched, scratch, threads: int = 1) -> None:
    """The fused block for one image on `threads` pthreads, with the scratch block_contract declares."""
    block_call(x, out, weights, geom, block_contract(geom, sched, threads), scratch)()


def block_call(x, out, weights, geom, contract: KernelContract, scratch):
    """The fused block for one image as `contract` (block_contract(geom, sched, threads)) states it,
    checked now, run by calling the result. block.c receives the derived geometry, the chunk size,
    every band's rows and the thread split, asserts them and checks every buffer's size again on
    each call."""
    check_block_args(x, out, weights, geom, contract, scratch)
    args = (x, out, weights.we, weights.we_t, weights.be, weights.wd, weights.bd, weights.wp_t, weights.bp,
            scratch.get("expanded"), scratch["depthwise"], _geometry_tuple(geom),
            chunk_channels(geom, contract.schedule.t), _band_table(geom, contract),
            _act(weights.expand_act), _act(weights.dw_act), _split_tuple(contract))
    function = _module().run_block
    return lambda: _call(function, *args)


def pointwise_conv(x: np.ndarray, w_t: np.ndarray, bias, out: np.ndarray,
                   activation: Activation = Activation()) -> None:
    """1x1 convolution of one image: out (Cout, H, W) = act(w_t.T @ x (Cin, H, W) + bias).

    w_t is the weight transposed, (Cin, Cout) C-contiguous (precompute it once)."""
    cin, cout = w_t.shape
    pixels = int(np.prod(x.shape[1:]))
    if x.shape[0] != cin or out.shape[0] != cout or int(np.prod(out.shape[1:])) != pixels:
        raise EdgerunError(f"pointwise_conv: x {x.shape}, w_t {w_t.shape}, out {out.shape} do not match")
    _call(_module().pointwise_conv, x, w_t, bias, out, cin, cout, pixels, _act(activation))


def depthwise_conv(x: np.ndarray, w: np.ndarray, bias: np.ndarray, out: np.ndarray, stride: int,
                   pads: tuple[int, int, int, int], activation: Activation = Activation(), threads: int = 1) -> None:
    """Depthwise conv of one image: x (C, H, W), w (C, k, k), pads (top, left, bottom, right); threads
    take ranges of channels."""
    channels, height, width = x.shape
    kernel = w.shape[-1]
    _call(_module().depthwise_conv, x, w, bias, out, channels, height, width, kernel, stride,
          tuple(int(p) for p in pads), _act(activation), _threads(threads))


def global_average_pool(x: np.ndarray, out: np.ndarray, threads: int = 1) -> None:
    """out[c] = mean of x[c] over its pixels; x (C, ...), out (C,) or (C, 1, 1); threads take ranges of
    channels."""
    _call(_module().global_average_pool, x, out, x.shape[0], int(np.prod(x.shape[1:])), _threads(threads))


def build_info() -> dict:
    """Instruction-set flags the extension was compiled with."""
    return _module().build_info()


# ---- non-block steps (steps.c)
def packed_pointwise_sizes(cout: int, pixels: int, cin: int) -> tuple[int, int]:
    """(floats of the packed weights, floats of the edge scratch pointwise_conv_packed needs)."""
    return _call(_module().pw_info, int(cout), int(pixels), int(cin))


def pack_pointwise_weights(w: np.ndarray) -> np.ndarray:
    """A (Cout, Cin) weight in the panels pointwise_conv_packed reads (weights, not activations)."""
    cout, cin = w.shape
    packed = np.empty(packed_pointwise_sizes(cout, 1, cin)[0], np.float32)
    _call(_module().pw_pack, np.ascontiguousarray(w, dtype=np.float32), packed, cout, cin)
    return packed


def pointwise_conv_packed(x: np.ndarray, packed: np.ndarray, bias, out: np.ndarray, edge,
                          activation: Activation = Activation(), threads: int = 1) -> None:
    """1x1 convolution of one image on packed weights: out (Cout, ...) = act(W @ x (Cin, ...) + bias).

    edge: scratch of packed_pointwise_sizes(...)[1] floats (None when that is 0); threads take ranges
    of output channels (the same bits for any count)."""
    cin, cout = x.shape[0], out.shape[0]
    pixels = x.size // cin
    if out.size != cout * pixels:
        raise EdgerunError(f"pointwise_conv_packed: x {x.shape} and out {out.shape} do not match")
    _call(_module().pw_conv, x, packed, bias, out, edge, cout, pixels, cin, _act(activation), _threads(threads))


def gemv(w: np.ndarray, x: np.ndarray, bias, y: np.ndarray, threads: int = 1) -> None:
    """y (rows,) = w (rows, K) @ x (K,) + bias (None or (rows,)); threads take ranges of rows."""
    rows, k = w.shape
    _call(_module().gemv, w, x, bias, y, rows, k, _threads(threads))


POOL_KINDS = {"max": 0, "average": 1, "average_with_pads": 2}


def pool2d(kind: str, x: np.ndarray, out: np.ndarray, kernel: tuple[int, int], strides: tuple[int, int],
           pads: tuple[int, int, int, int], threads: int = 1) -> None:
    """2-D max / average pooling of one image x (C, H, W) into out (C, Ho, Wo); pads (top, left, bottom,
    right); "average" divides by the taps inside x, "average_with_pads" by those inside the padded x; threads
    take ranges of channels."""
    c, h, w = x.shape
    _, ho, wo = out.shape
    _call(_module().pool2d, POOL_KINDS[kind], x, out, c, h, w, ho, wo, int(kernel[0]), int(kernel[1]),
          int(strides[0]), int(strides[1]), tuple(int(p) for p in pads), _threads(threads))
