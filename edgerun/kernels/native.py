"""Python face of the C extension edgerun.kernels._native.

All functions write into caller-given arrays (out= style) and allocate nothing of
activation size; the C code checks dtype, contiguity, sizes and overlap again and
releases the GIL while it computes.
"""
from __future__ import annotations

import numpy as np

from edgerun.errors import EdgerunError
from edgerun.kernels import Activation, check_block_args, holds_scratch
from scheduler.blocks import scratch_slices


def _module():
    try:
        from edgerun.kernels import _native
    except ImportError as exc:
        raise EdgerunError(f"the native kernels are not built ({exc})") from exc
    return _native


def _act(activation: Activation) -> tuple[int, float, float]:
    return (activation.code, *activation.native_params())


def _geometry_tuple(geom) -> tuple:
    return (geom.in_channels, geom.in_height, geom.in_width, geom.hidden_channels, geom.expand_kernel,
            geom.expand_stride, tuple(geom.expand_pads), geom.dw_kernel, geom.dw_stride,
            tuple(geom.dw_pads), geom.out_channels, bool(geom.residual))


def _call(function, *args):
    try:
        return function(*args)
    except (TypeError, ValueError) as exc:
        raise EdgerunError(f"native kernel {function.__name__}: {exc}") from exc


def _threads(threads) -> int:
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise EdgerunError(f"threads must be an integer >= 1, got {threads!r}")
    return threads


def run_block(x, out, weights, geom, sched, scratch, threads: int = 1) -> None:
    """The fused block for one image on `threads` pthreads (see block_call)."""
    block_call(x, out, weights, geom, sched, scratch, threads)()


def block_call(x, out, weights, geom, sched, scratch, threads: int = 1):
    """The fused block for one image on `threads` pthreads, checked now, run by calling the result.

    With block_scratch(geom, sched, "native", threads) scratch (one slice per thread when the block
    has at least `threads` bands) each thread takes whole bands into its own slice; with one thread's
    scratch (a plan made for one thread) the threads share each (band, chunk) step by rows. The C side
    checks every buffer's size again on each call."""
    _threads(threads)
    slices = scratch_slices(geom, sched, "native", threads)
    if slices > 1 and not holds_scratch(scratch, geom, sched, "native", threads):
        slices = 1
    check_block_args(x, out, weights, geom, sched, scratch, "native", threads=threads if slices > 1 else 1)
    args = (x, out, weights.we, weights.we_t, weights.be, weights.wd, weights.bd, weights.wp_t, weights.bp,
            scratch.get("expanded"), scratch["depthwise"], _geometry_tuple(geom), sched.t, sched.band_rows,
            _act(weights.expand_act), _act(weights.dw_act), int(threads), slices)
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
           pads: tuple[int, int, int, int]) -> None:
    """2-D max / average pooling of one image x (C, H, W) into out (C, Ho, Wo); pads (top, left, bottom,
    right); "average" divides by the taps inside x, "average_with_pads" by those inside the padded x."""
    c, h, w = x.shape
    _, ho, wo = out.shape
    _call(_module().pool2d, POOL_KINDS[kind], x, out, c, h, w, ho, wo, int(kernel[0]), int(kernel[1]),
          int(strides[0]), int(strides[1]), tuple(int(p) for p in pads))
