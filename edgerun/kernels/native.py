"""Python face of the C extension edgerun.kernels._native.

All functions write into caller-given arrays (out= style) and allocate nothing of
activation size; the C code checks dtype, contiguity, sizes and overlap again and
releases the GIL while it computes.
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np

from edgerun.errors import EdgerunError
from edgerun.kernels import isa as isa_choice
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
    if geom.itemsize != 4:
        raise EdgerunError("the native block kernel runs on float32 storage only (float16 plans run the numpy block)")
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
    """The running variant ("isa") and the instruction-set flags it was compiled with."""
    return _module().build_info()


def isa() -> str:
    """The instruction-set variant of the kernels that runs: avx512, avx2 or sse2 on x86-64 (the best
    this CPU supports, or EDGERUN_ISA's), generic elsewhere, native for an -march=native build.
    Everything ISA-dependent (vector width, packed weight layouts) comes from this variant."""
    return _module().ISA


@functools.lru_cache(maxsize=None)
def packing_key() -> str:
    """The running variant and a fingerprint of its packed weight layouts (edgerun.kernels.layouts keys
    packed panels by it): the packing of probe weights whose sizes are no multiple of any tile, so that
    any change of a GEMM tile changes the key."""
    digest = hashlib.sha256(isa().encode())
    probe = np.arange(67 * 13, dtype=np.float32).reshape(67, 13)
    digest.update(pack_pointwise_weights(probe).tobytes())
    for group, cin in ((1, 5), (2, 6)):
        w = np.arange(34 * cin // group * 9, dtype=np.float32).reshape(34, cin // group, 3, 3)
        digest.update(pack_conv_weights(w, group).tobytes())
    return f"{isa()}-{digest.hexdigest()[:16]}"


def vector_floats() -> int:
    """Floats per vector (ER_VL) of the running variant: the packed pointwise layouts depend on it."""
    return _module().VECTOR_FLOATS


def runnable_isas() -> tuple[str, ...]:
    """The variants built into this install that this CPU runs, best first (EDGERUN_ISA may name any)."""
    return isa_choice.runnable_variants()


# ---- non-block steps (steps.c)
def packed_pointwise_sizes(cout: int, pixels: int, cin: int) -> tuple[int, int]:
    """(floats of the packed weights, floats of the edge scratch pointwise_conv_packed needs)."""
    return _call(_module().pw_info, int(cout), int(pixels), int(cin))


def packed_pointwise_floats(cout: int, cin: int) -> int:
    """Floats of a (Cout, Cin) weight packed for pointwise_conv_packed."""
    return packed_pointwise_sizes(cout, 1, cin)[0]


def pack_pointwise_weights(w: np.ndarray) -> np.ndarray:
    """A (Cout, Cin) weight in the panels pointwise_conv_packed reads (weights, not activations)."""
    cout, cin = w.shape
    packed = np.empty(packed_pointwise_floats(cout, cin), np.float32)
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


# ---- dense and grouped convolution, band by band (conv.c)
# Taps per group gathered at a time (CKC in conv.c): the `cols` scratch holds at most this many per group.
CONV_BLOCK_TAPS = 256
# Taps of one slab of a grouped conv (conv_slab_groups)
CONV_SLAB_TAPS = 1024


def conv_slab_groups(group: int, taps_per_group: int) -> int:
    """Groups whose taps are gathered and multiplied together (one slab): as many as keep a slab within
    CONV_SLAB_TAPS taps (at least 1): a grouped conv of many small groups (RegNet) then runs a few slabs of
    several groups per band, so the band may hold whole rows of a narrow map without a large scratch."""
    return max(1, min(group, CONV_SLAB_TAPS // max(1, taps_per_group)))


def conv_geometry(x_shape, out_shape, w_shape, group: int, strides, dilations, pads, band_rows: int,
                  slab_groups: int | None = None) -> tuple:
    """The geometry tuple conv.c takes for one image x (Cin, H, W) -> out (Cout, Ho, Wo), weight
    (Cout, Cin/group, kh, kw), pads (top, left, bottom, right), `band_rows` output rows per band and
    `slab_groups` groups per slab (default conv_slab_groups)."""
    cin, h, w = (int(v) for v in x_shape)
    cout, ho, wo = (int(v) for v in out_shape)
    kh, kw = int(w_shape[2]), int(w_shape[3])
    if slab_groups is None:
        slab_groups = conv_slab_groups(int(group), cin // max(1, int(group)) * kh * kw)
    return (cin, h, w, cout, int(group), kh, kw, int(strides[0]), int(strides[1]), int(dilations[0]),
            int(dilations[1]), tuple(int(p) for p in pads), ho, wo, int(band_rows), int(slab_groups))


def conv_sizes(geometry: tuple) -> tuple[int, int, int]:
    """(floats of the packed weights, floats of the `cols` scratch of one band, pixels per GEMM tile)."""
    return _call(_module().conv_info, geometry)


def _packing_geometry(w_shape, group: int, dilations) -> tuple:
    # packing depends only on the weight's shape: a one-pixel output of the kernel's own extent
    cout, cg, kh, kw = (int(v) for v in w_shape)
    eh, ew = int(dilations[0]) * (kh - 1) + 1, int(dilations[1]) * (kw - 1) + 1
    return conv_geometry((cg * group, eh, ew), (cout, 1, 1), w_shape, group, (1, 1), dilations, (0, 0, 0, 0), 1)


def packed_conv_floats(w_shape, group: int, dilations=(1, 1)) -> int:
    """Floats of a (Cout, Cin/group, kh, kw) weight packed for conv_run."""
    return conv_sizes(_packing_geometry(w_shape, group, dilations))[0]


def pack_conv_weights(w: np.ndarray, group: int, dilations=(1, 1)) -> np.ndarray:
    """A (Cout, Cin/group, kh, kw) weight in the panels conv_run reads (weights, not activations)."""
    geometry = _packing_geometry(w.shape, group, dilations)
    packed = np.empty(conv_sizes(geometry)[0], np.float32)
    _call(_module().conv_pack, np.ascontiguousarray(w.reshape(w.shape[0], -1), dtype=np.float32), packed, geometry)
    return packed


def conv(x: np.ndarray, packed: np.ndarray, bias, sum_input, out: np.ndarray, cols: np.ndarray, geometry: tuple,
         activation: Activation = Activation(), threads: int = 1) -> None:
    """out (Cout, Ho, Wo) = act(conv(x) + bias + sum_input) for one image, band by band through `cols`
    (conv_sizes(geometry)[1] floats); bias and sum_input may be None. Threads share every band."""
    _call(_module().conv_run, x, packed, bias, sum_input, out, cols, geometry, _act(activation), _threads(threads))
