"""Run a segment of plain steps depth-first, row by row, with ring buffers in one arena.

The numpy oracle of streaming (docs/segments.md): `scheduler.segments` gives the row
schedule and each inner tensor's ring rows; this module lays the rings and the per-row
scratch out in one float32 arena with the scheduler's planner, then runs the schedule.
Each step computes one output row at a time from rows of its input (a ring, or the whole
segment input), so nothing of activation size is ever allocated: row work goes through
`out=` into ring slots or small per-row scratch views of the arena.

Steps: `Conv` (any kernel, stride, dilation, pads, groups; depthwise tap by tap), `Pool`
(max / average), `Activation` (a row of the activation table with an `into` form), `Add`
(residual: the previous tensor plus an earlier one, row for row), `Binary` (add, sub, mul,
max, min of two tensors), `Concat` (channels of two tensors), `Scale` (per-channel constant
multiply and add), `ChannelShuffle`, `Resize` (integer factors, nearest or half-pixel
linear), `From` (a step reading an earlier tensor: a branch), `Block` (a fused
inverted-residual block run by scatter: every hidden row computed once, one slice of t at a
time, added into the depthwise accumulators of the output rows that read it; its accumulator
rows are state kept in the arena for the whole segment) and `GlobalAveragePool` (last step
only: it accumulates rows as they arrive, so its input never exists whole).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from edgerun.errors import InvalidInputError, InvalidModelError
from edgerun.kernels.activations import KINDS
from edgerun.kernels.f16 import matmul_into
from scheduler.planner import GreedyBySizePlanner
from scheduler.segments import (SEGMENT_INPUT, RowStep, SegmentError, block_geometry,
                                block_row_step, plan_segment)

ITEMSIZE = 4
UFUNC_BUFFER_ITEMS = 1024  # as numpy_steps: keeps numpy's strided-copy buffers small


# ---------------------------------------------------------------- step descriptions
@dataclass(frozen=True, eq=False)
class Conv:
    weight: np.ndarray               # (M, C / group, kh, kw)
    bias: np.ndarray | None = None   # (M,)
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)   # top, left, bottom, right
    dilations: tuple[int, int] = (1, 1)
    group: int = 1


@dataclass(frozen=True)
class Pool:
    kind: str                        # "max" or "avg"
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    count_include_pad: bool = False


@dataclass(frozen=True)
class Activation:
    kind: str                        # a name of edgerun.kernels.activations.KINDS
    params: tuple[float, ...] = ()


@dataclass(frozen=True)
class Add:
    skip: int                        # index of an earlier step of the segment, or -1: its input


@dataclass(frozen=True)
class GlobalAveragePool:
    pass


@dataclass(frozen=True)
class Concat:
    """The previous tensor and an earlier one (`skip`) joined along channels, row for row
    (`skip_first`: the earlier tensor's channels come first)."""

    skip: int
    skip_first: bool = False


BINARY_KINDS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "max": np.maximum,
                "min": np.minimum}


@dataclass(frozen=True)
class Binary:
    """previous (op) skip, elementwise, of equal shapes: kind add / sub / mul / max / min."""

    kind: str
    skip: int


@dataclass(frozen=True, eq=False)
class Scale:
    """Mul (and optional Add) by constant per-channel vectors (C,): y = x * scale + bias."""

    scale: np.ndarray
    bias: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class SqueezeExcite:
    """Squeeze-excitation's vector: act2(W2 act1(W1 mean(x) + b1) + b2), W1 (H, C), W2 (C2, H).
    It folds its input's rows as they arrive and emits one row of C2 values (a reducer), read
    whole by a later `ChannelMul`; the tensor it pools must then stay whole (a ring of all its
    rows) until the Mul has read it, as without recomputation it must."""

    w1: np.ndarray
    b1: np.ndarray | None
    w2: np.ndarray
    b2: np.ndarray | None
    act1: tuple = ("relu", ())
    act2: tuple = ("hardsigmoid", (1.0 / 6.0, 0.5))


@dataclass(frozen=True)
class ChannelMul:
    """The previous tensor times the per-channel vector of step `vector` (a SqueezeExcite)."""

    vector: int


@dataclass(frozen=True)
class Resize:
    """Upsampling by integer factors (rows, columns): "nearest" (row o reads o // f) or
    "linear" (half-pixel bilinear, source coordinates clamped to the input as onnxruntime and
    PyTorch's align_corners=False do)."""

    factors: tuple[int, int]
    mode: str = "nearest"


@dataclass(frozen=True)
class ChannelShuffle:
    """ShuffleNet's Reshape (g, C/g) -> Transpose -> Reshape: channel c*g + j <- j*(C/g) + c."""

    groups: int


@dataclass(frozen=True)
class From:
    """Run `op` on the output of step `source` (or -1: the segment input) instead of the
    previous step's: a branch beside the main chain (a shortcut pool, a second conv)."""

    source: int
    op: object


@dataclass(frozen=True, eq=False)
class Block:
    """A fused inverted-residual block with the weights of the edgerun InvertedResidual node:
    we (E, Cin, ke, ke) / be (E,) or None (no expansion: the hidden tensor is the input),
    wd (E, 1, kd, kd) / bd, wp (Cout, E, 1, 1) / bp; expand and dw strides and pads (top,
    left, bottom, right) and activations (names of edgerun.kernels.activations.KINDS);
    `residual` adds the block's input.  `chunks` (t): hidden channels computed in t slices."""

    we: np.ndarray | None
    be: np.ndarray | None
    wd: np.ndarray
    bd: np.ndarray | None
    wp: np.ndarray
    bp: np.ndarray | None
    expand_stride: int = 1
    expand_pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    expand_activation: str = ""
    expand_activation_params: tuple[float, ...] = ()
    dw_stride: int = 1
    dw_pads: tuple[int, int, int, int] = (1, 1, 1, 1)
    dw_activation: str = ""
    dw_activation_params: tuple[float, ...] = ()
    residual: bool = False
    chunks: int = 1
    project_activation: str = ""     # after the projection's bias, before the residual
    project_activation_params: tuple[float, ...] = ()   # (a dw + pointwise pair of MobileNetV1)

    @classmethod
    def from_node(cls, node, arrays: dict, chunks: int = 1) -> "Block":
        """From an edgerun.InvertedResidual node; `arrays` maps its weight names to arrays."""
        def tensor(i):
            name = node.inputs[i] if i < len(node.inputs) else ""
            if not name:
                return None
            if name not in arrays:
                raise InvalidModelError(f"{node.describe()}: weight {name!r} is not a known constant")
            return arrays[name]

        a = node.attrs
        return cls(tensor(1), tensor(2), tensor(3), tensor(4), tensor(5), tensor(6),
                   expand_stride=a.get("expand_stride", 1),
                   expand_pads=tuple(a.get("expand_pads", (0, 0, 0, 0))),
                   expand_activation=a.get("expand_activation", ""),
                   expand_activation_params=tuple(a.get("expand_activation_params", ())),
                   dw_stride=a.get("dw_stride", 1), dw_pads=tuple(a.get("dw_pads", (0, 0, 0, 0))),
                   dw_activation=a.get("dw_activation", ""),
                   dw_activation_params=tuple(a.get("dw_activation_params", ())),
                   residual=bool(a.get("residual", 0)), chunks=chunks)


# ---------------------------------------------------------------- row sources
class _WholeRows:
    """The segment input: every row present."""

    def __init__(self) -> None:
        self.array = None

    def row(self, r: int) -> np.ndarray:
        return self.array[:, r, :]


class _RingRows:
    def __init__(self, ring: np.ndarray) -> None:
        self.ring = ring             # (R, C, W)

    def row(self, r: int) -> np.ndarray:
        return self.ring[r % self.ring.shape[0]]


def _out_size(size: int, kernel: int, stride: int, dilation: int, begin: int, end: int) -> int:
    return (size + begin + end - ((kernel - 1) * dilation + 1)) // stride + 1


def _column_ranges(width: int, out_width: int, kernel: int, stride: int, dilation: int, left: int):
    """Per kernel column kx: (first, stop) output columns whose tap is inside the input, and
    the input column read by the first of them."""
    ranges = []
    for kx in range(kernel):
        start = kx * dilation - left
        first = -(start // stride) if start < 0 else 0      # ceil(-start / stride)
        stop = min(out_width, (width - 1 - start) // stride + 1) if width - 1 - start >= 0 else 0
        stop = max(stop, first)
        ranges.append((first, stop, start + first * stride))
    return ranges


def _check_window(where: str, kernel, strides, dilations, pads) -> None:
    if len(kernel) != 2 or len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
        raise InvalidModelError(f"{where}: 2-D kernel, strides, dilations and 4 pads expected")
    if min(kernel) < 1 or min(strides) < 1 or min(dilations) < 1 or min(pads) < 0:
        raise InvalidModelError(f"{where}: kernel, strides, dilations must be >= 1 and pads >= 0")
    for axis in range(2):
        effective = (kernel[axis] - 1) * dilations[axis] + 1
        if pads[axis] >= effective or pads[axis + 2] >= effective:
            raise InvalidModelError(f"{where}: pads {list(pads)} must be smaller than the "
                                    f"effective kernel {effective}")


# ---------------------------------------------------------------- row kernels
class _RowKernel:
    """One step bound to its input shape: output shape, RowStep, scratch items, row compute."""

    scratch_items = 0
    source: int | None = None        # the tensor the window reads (None: the previous step's)
    state_items = 0                  # kept across calls (alive for the whole segment)
    skip: int | None = None

    def bind_state(self, state: np.ndarray) -> None:
        self.state = state

    def row_step(self, name: str) -> RowStep:
        raise NotImplementedError

    def compute(self, out_row: int, src, skip_src, dst: np.ndarray, scratch: np.ndarray) -> None:
        raise NotImplementedError


class _WindowKernel(_RowKernel):
    def _bind_window(self, where, in_shape, kernel, strides, dilations, pads) -> None:
        _check_window(where, kernel, strides, dilations, pads)
        c, h, w = in_shape
        self.kernel, self.strides, self.dilations, self.pads = kernel, strides, dilations, pads
        self.in_height, self.in_width = h, w
        self.out_height = _out_size(h, kernel[0], strides[0], dilations[0], pads[0], pads[2])
        self.out_width = _out_size(w, kernel[1], strides[1], dilations[1], pads[1], pads[3])
        if self.out_height < 1 or self.out_width < 1:
            raise InvalidModelError(f"{where}: empty output for input {in_shape}")
        self.columns = _column_ranges(w, self.out_width, kernel[1], strides[1], dilations[1], pads[1])

    def _input_row(self, out_row: int, ky: int) -> int | None:
        r = out_row * self.strides[0] - self.pads[0] + ky * self.dilations[0]
        return r if 0 <= r < self.in_height else None

    def _tap(self, row: np.ndarray, kx: int):
        """(first, stop, input columns) of kernel column kx, or None when no tap is inside."""
        first, stop, x0 = self.columns[kx]
        if stop == first:
            return None
        return first, stop, row[:, x0:x0 + (stop - first - 1) * self.strides[1] + 1:self.strides[1]]

    def row_step(self, name: str) -> RowStep:
        return RowStep(name, self.in_height, self.out_height, self.out_channels, self.out_width,
                       kernel=self.kernel[0], stride=self.strides[0], dilation=self.dilations[0],
                       pad_top=self.pads[0])


class _ConvRows(_WindowKernel):
    def __init__(self, op: Conv, in_shape, where: str) -> None:
        weight = np.ascontiguousarray(op.weight, dtype=np.float32)
        if weight.ndim != 4:
            raise InvalidModelError(f"{where}: conv weight must be (M, C/group, kh, kw)")
        m, cg, kh, kw = weight.shape
        c = in_shape[0]
        if op.group < 1 or c != cg * op.group or m % op.group:
            raise InvalidModelError(f"{where}: input channels {c} and weight {weight.shape} do not "
                                    f"match group {op.group}")
        self._bind_window(where, in_shape, (kh, kw), tuple(op.strides), tuple(op.dilations),
                          tuple(op.pads))
        self.out_channels, self.group = m, op.group
        self.taps = cg * kh * kw
        self.w3 = weight.reshape(op.group, m // op.group, self.taps)
        bias = np.zeros(m, np.float32) if op.bias is None else np.asarray(op.bias, np.float32)
        if bias.shape != (m,):
            raise InvalidModelError(f"{where}: bias must have {m} values")
        self.bias = bias.reshape(m, 1).copy()
        self.depthwise = op.group == c == m
        if self.depthwise:        # tap by tap into the output row: one tap's products as scratch
            self.w_taps = weight.reshape(m, kh, kw)
            self.scratch_items = c * self.out_width
        else:
            self.scratch_items = c * kh * kw * self.out_width   # one output row's im2col
        self.macs = 0

    def compute(self, out_row, src, skip_src, dst, scratch) -> None:
        if self.depthwise:
            self._depthwise(out_row, src, dst, scratch)
            return
        self.fill_columns(out_row, src, scratch)
        cols3 = scratch.reshape(self.group, self.taps, self.out_width)
        out3 = dst.reshape(self.group, self.out_channels // self.group, self.out_width)
        _matmul_groups(self.w3, cols3, out3)
        np.add(dst, self.bias, out=dst)
        self.macs += self.out_channels * self.taps * self.out_width

    def _depthwise(self, out_row, src, dst, scratch) -> None:
        dst[...] = self.bias
        for ky in range(self.kernel[0]):
            r = self._input_row(out_row, ky)
            if r is None:
                continue
            row = src.row(r)
            for kx in range(self.kernel[1]):
                tap = self._tap(row, kx)
                if tap is None:
                    continue
                first, stop, taps = tap
                product = scratch[:self.out_channels * (stop - first)].reshape(self.out_channels, -1)
                np.multiply(taps, self.w_taps[:, ky, kx, None], out=product)
                part = dst[:, first:stop]
                np.add(part, product, out=part)
        self.macs += self.out_channels * self.taps * self.out_width

    def fill_columns(self, out_row, src, scratch) -> None:
        """The im2col of one output row: (C, kh, kw, Wo) taps, zeros for padding."""
        kh, kw = self.kernel
        cols = scratch.reshape(-1, kh, kw, self.out_width)
        for ky in range(kh):
            r = self._input_row(out_row, ky)
            if r is None:
                cols[:, ky].fill(0.0)
                continue
            row = src.row(r)
            for kx in range(kw):
                tap = self._tap(row, kx)
                if tap is None:
                    cols[:, ky, kx].fill(0.0)
                    continue
                first, stop, taps = tap
                cols[:, ky, kx, :first].fill(0.0)
                cols[:, ky, kx, stop:].fill(0.0)
                np.copyto(cols[:, ky, kx, first:stop], taps)


def _matmul_groups(w3: np.ndarray, cols3: np.ndarray, out3: np.ndarray) -> None:
    """out3[g] = w3[g] @ cols3[g]: one batched matmul in float32, group by group on float16 storage."""
    if cols3.dtype == out3.dtype == np.float32:
        np.matmul(w3, cols3, out=out3)
        return
    for g in range(w3.shape[0]):
        matmul_into(w3[g], cols3[g], out3[g])


class _PoolRows(_WindowKernel):
    def __init__(self, op: Pool, in_shape, where: str) -> None:
        if op.kind not in ("max", "avg"):
            raise InvalidModelError(f"{where}: pool kind must be 'max' or 'avg', got {op.kind!r}")
        self._bind_window(where, in_shape, tuple(op.kernel), tuple(op.strides),
                          tuple(op.dilations), tuple(op.pads))
        self.kind, self.out_channels = op.kind, in_shape[0]
        empty_rows = [o for o in range(self.out_height)
                      if all(self._input_row(o, ky) is None for ky in range(self.kernel[0]))]
        empty_columns = [o for o in range(self.out_width)
                         if not any(first <= o < stop for first, stop, _ in self.columns)]
        if empty_rows or empty_columns:
            raise InvalidModelError(f"{where}: a pooling window covers padding only (output rows "
                                    f"{empty_rows[:3]}, columns {empty_columns[:3]})")
        if op.kind == "avg":
            if op.count_include_pad:
                self.inverse_columns = np.full(self.out_width, 1.0 / (op.kernel[1]), np.float32)
            else:
                counts = np.zeros(self.out_width, np.float32)
                for first, stop, _ in self.columns:
                    counts[first:stop] += 1.0
                self.inverse_columns = (1.0 / counts).astype(np.float32)
            self.include_pad = op.count_include_pad

    def compute(self, out_row, src, skip_src, dst, scratch) -> None:
        is_max = self.kind == "max"
        dst.fill(-np.inf if is_max else 0.0)
        combine = np.maximum if is_max else np.add
        valid_rows = 0
        for ky in range(self.kernel[0]):
            r = self._input_row(out_row, ky)
            if r is None:
                continue
            valid_rows += 1
            row = src.row(r)
            for kx in range(self.kernel[1]):
                tap = self._tap(row, kx)
                if tap is None:
                    continue
                first, stop, taps = tap
                part = dst[:, first:stop]
                combine(part, taps, out=part)
        if not is_max:
            rows = self.kernel[0] if self.include_pad else valid_rows
            np.multiply(dst, self.inverse_columns, out=dst)
            np.multiply(dst, np.float32(1.0 / rows), out=dst)


class _AlignedRows(_RowKernel):
    """Row-aligned steps: output row r reads input row r only.  `in_place`: the row may be
    written over the input row it reads (its ring may be the input's, scheduler.segments)."""

    in_place = False

    def __init__(self, in_shape) -> None:
        self.out_channels, self.height, self.out_width = in_shape

    def row_step(self, name: str) -> RowStep:
        return RowStep(name, self.height, self.height, self.out_channels, self.out_width,
                       skip=self.skip, in_place=self.in_place)


class _ActivationRows(_AlignedRows):
    def __init__(self, op: Activation, in_shape, where: str) -> None:
        super().__init__(in_shape)
        kind = KINDS.get(op.kind)
        if kind is None or kind.into is None:
            raise InvalidModelError(f"{where}: activation {op.kind!r} has no streaming form; "
                                    f"choose one of {sorted(k for k, v in KINDS.items() if v.into)}")
        if len(op.params) != len(kind.params):
            raise InvalidModelError(f"{where}: activation {op.kind!r} takes {len(kind.params)} "
                                    f"parameters, got {len(op.params)}")
        self.into, self.params = kind.into, tuple(float(p) for p in op.params)
        self.inplace = kind.inplace
        self.in_place = kind.inplace is not None and not kind.needs_tmp

    def compute(self, out_row, src, skip_src, dst, scratch) -> None:
        row = src.row(out_row)
        if np.may_share_memory(row, dst):     # its ring is its input's (in_place)
            self.inplace(dst.reshape(-1), None, *self.params)
        else:
            self.into(row, dst, *self.params)


class _AddRows(_AlignedRows):
    in_place = True

    def __init__(self, op: Add, in_shape, skip_shape, where: str) -> None:
        super().__init__(in_shape)
        if tuple(skip_shape) != tuple(in_shape):
            raise InvalidModelError(f"{where}: Add of shapes {tuple(in_shape)} and skip "
                                    f"{tuple(skip_shape)}")
        self.skip = op.skip

    def compute(self, out_row, src, skip_src, dst, scratch) -> None:
        np.add(src.row(out_row), skip_src.row(out_row), out=dst)


class _GlobalAverageRows(_RowKernel):
    """Sums each input row as it arrives into the output (C,); scales once at the end."""

    def __init__(self, in_shape) -> None:
        self.out_channels, self.in_height, self.in_width = in_shape
        self.scratch_items = self.out_channels   # one row's sums

    def row_step(self, name: str) -> RowStep:
        return RowStep(name, self.in_height, 1, self.out_channels, 1, reduce=True)

    def compute(self, out_row, src, skip_src, dst, scratch) -> None:
        np.add.reduce(src.row(out_row), axis=1, out=scratch)
        np.add(dst, scratch, out=dst)


class _ConcatRows(_AlignedRows):
    def __init__(self, op: Concat, in_shape, skip_shape, where: str) -> None:
        c, h, w = in_shape
        if tuple(skip_shape[1:]) != (h, w):
            raise InvalidModelError(f"{where}: Concat of shapes {tuple(in_shape)} and skip "
                                    f"{tuple(skip_shape)}: rows and columns must match")
        super().__init__((c + skip_shape[0], h, w))
        self.skip, self.first = op.skip, op.skip_first
        self.split = skip_shape[0] if op.skip_first else c

    def compute(self, out_row, src, skip_src, dst, scratch) -> None:
        a, b = src.row(out_row), skip_src.row(out_row)
        if self.first:
            a, b = b, a
        np.copyto(dst[:self.split], a)
        np.copyto(dst[self.split:], b)


class _BinaryRows(_AlignedRows):
    in_place = True

    def __init__(self, op: Binary, in_shape, skip_shape, where: str) -> None:
        super().__init__(in_shape)
        if op.kind not in BINARY_KINDS:
            raise InvalidModelError(f"{where}: binary kind must be one of {sorted(BINARY_KINDS)}, "
                                    f"got {op.kind!r}")
        if tuple(skip_shape) != tuple(in_shape):
            raise InvalidModelError(f"{where}: {op.kind} of shapes {tuple(in_shape)} and skip "
                                    f"{tuple(skip_shape)}")
        self.skip, self.ufunc = op.skip, BINARY_KINDS[op.kind]

    def compute(self, out_row, src, skip_src, dst, scratch) -> None:
        self.ufunc(src.row(out_row), skip_src.row(out_row), out=dst)


class _ScaleRows(_AlignedRows):
    in_place = True

    def __init__(self, op: Scale, in_shape, where: str) -> None:
        super().__init__(in_shape)
        c = in_shape[0]
        scale = np.asarray(op.scale, np.float32).reshape(-1)
        bias = None if op.bias is None else np.asarray(op.bias, np.float32).reshape(-1)
        if scale.shape != (c,) or (bias is not None and bias.shape != (c,)):
            raise InvalidModelError(f"{where}: scale and bias must have {c} values (one per "
                                    f"channel), got {np.shape(op.scale)} and {np.shape(op.bias)}")
        self.scale = scale.reshape(c, 1).copy()
        self.bias = None if bias is None else bias.reshape(c, 1).copy()

    def compute(self, out_row, src, skip_src, dst, scratch) -> None:
        np.multiply(src.row(out_row), self.scale, out=dst)
        if self.bias is not None:
            np.add(dst, self.bias, out=dst)


class _ChannelShuffleRows(_AlignedRows):
    def __init__(self, op: ChannelShuffle, in_shape, where: str) -> None:
        super().__init__(in_shape)
        c = in_shape[0]
        if not isinstance(op.groups, int) or op.groups < 1 or c % op.groups:
            raise InvalidModelError(f"{where}: {c} channels do not split into {op.groups!r} groups")
        self.groups = op.groups

    def compute(self, out_row, src, skip_src, dst, scratch) -> None:
        c, w = dst.shape
        np.copyto(dst.reshape(c // self.groups, self.groups, w),
                  src.row(out_row).reshape(self.groups, c // self.groups, w).transpose(1, 0, 2))


def _linear_sources(size: int, factor: int, index: int):
    """(first, second, weight of second) of half-pixel linear interpolation, clamped."""
    position = min(max((index + 0.5) / factor - 0.5, 0.0), size - 1.0)
    first = int(np.floor(position))
    second = min(first + 1, size - 1)
    weight = position - first
    return first, (second if weight > 0 else first), weight


class _ResizeRows(_RowKernel):
    def __init__(self, op: Resize, in_shape, where: str) -> None:
        factors = tuple(op.factors) if isinstance(op.factors, (tuple, list)) else ()
        if len(factors) != 2 or not all(isinstance(f, int) and f >= 1 for f in factors):
            raise InvalidModelError(f"{where}: Resize needs two integer factors >= 1, got {op.factors!r}")
        if op.mode not in ("nearest", "linear"):
            raise InvalidModelError(f"{where}: Resize mode must be 'nearest' or 'linear', got {op.mode!r}")
        self.out_channels, self.in_height, self.in_width = in_shape
        self.factors, self.mode = factors, op.mode
        self.out_width = self.in_width * factors[1]
        if op.mode == "linear":
            columns = [_linear_sources(self.in_width, factors[1], x) for x in range(self.out_width)]
            self.first_columns = np.array([c[0] for c in columns], np.intp)
            self.second_columns = np.array([c[1] for c in columns], np.intp)
            self.column_weights = np.array([c[2] for c in columns], np.float32)
            self.scratch_items = self.out_channels * (self.in_width + self.out_width)

    def row_step(self, name: str) -> RowStep:
        fy = self.factors[0]
        return RowStep(name, self.in_height, self.in_height * fy, self.out_channels, self.out_width,
                       upsample=fy, resize=self.mode)

    def compute(self, out_row, src, skip_src, dst, scratch) -> None:
        c, fx = self.out_channels, self.factors[1]
        if self.mode == "nearest":
            np.copyto(dst.reshape(c, self.in_width, fx), src.row(out_row // self.factors[0])[:, :, None])
            return
        first, second, weight = _linear_sources(self.in_height, self.factors[0], out_row)
        rows = scratch[:c * self.in_width].reshape(c, self.in_width)
        np.multiply(src.row(first), np.float32(1.0 - weight), out=rows)
        if weight > 0:        # the second row's share, where `right` goes later (Wo >= Wi)
            other = scratch[c * self.in_width:2 * c * self.in_width].reshape(c, self.in_width)
            np.multiply(src.row(second), np.float32(weight), out=other)
            np.add(rows, other, out=rows)
        right = scratch[c * self.in_width:].reshape(c, self.out_width)
        np.take(rows, self.first_columns, axis=1, out=dst, mode="clip")
        np.take(rows, self.second_columns, axis=1, out=right, mode="clip")
        np.multiply(dst, 1.0 - self.column_weights, out=dst)
        np.multiply(right, self.column_weights, out=right)
        np.add(dst, right, out=dst)


def _activation_kind(where: str, name: str, params, what: str):
    kind = KINDS.get(name)
    if kind is None or (name and kind.inplace is None):
        raise InvalidModelError(f"{where}: {what} activation {name!r} is not one of "
                                f"{sorted(k for k, v in KINDS.items() if v.inplace or not k)}")
    if len(params) != len(kind.params):
        raise InvalidModelError(f"{where}: {what} activation {name!r} takes {len(kind.params)} "
                                f"parameters, got {len(params)}")
    return kind, tuple(float(p) for p in params)


def _activate(activation, values: np.ndarray, tmp: np.ndarray) -> None:
    """The activation in place on (C, W) values; a kind that needs a temporary gets views of
    `tmp` (any size >= 1) over blocks of the values."""
    kind, params = activation
    if kind.inplace is None:
        return
    if not kind.needs_tmp:
        kind.inplace(values, None, *params)
        return
    rows, width = values.shape
    row_block = min(rows, tmp.size)
    block = max(1, min(width, tmp.size // row_block))
    for top in range(0, rows, row_block):
        for start in range(0, width, block):
            part = values[top:top + row_block, start:start + block]
            kind.inplace(part, tmp[:part.size].reshape(part.shape), *params)


def _pair(where: str, name: str, value, count: int) -> tuple[int, ...]:
    values = tuple(int(v) for v in (value if isinstance(value, (tuple, list)) else [value]))
    if len(values) != count or min(values) < 0:
        raise InvalidModelError(f"{where}: {name} must be {count} non-negative ints, got {value!r}")
    return values


class _BlockRows(_RowKernel):
    """A fused inverted-residual block by scatter: each hidden row, computed once (one slice of
    t at a time), is added into the depthwise accumulators of the output rows whose windows
    hold it; output row o is finished (activation, projection, bias, residual) right after its
    last hidden row, so neither the hidden tensor nor the depthwise output has a ring of rows."""

    def __init__(self, op: Block, in_shape, index: int, where: str) -> None:
        wd = np.ascontiguousarray(op.wd, dtype=np.float32)
        wp = np.ascontiguousarray(op.wp, dtype=np.float32)
        if wd.ndim != 4 or wd.shape[1] != 1 or wd.shape[2] != wd.shape[3]:
            raise InvalidModelError(f"{where}: depthwise weight must be (E, 1, k, k), got {wd.shape}")
        hidden, kd = wd.shape[0], wd.shape[2]
        if wp.ndim != 4 or wp.shape[1:] != (hidden, 1, 1):
            raise InvalidModelError(f"{where}: projection weight must be (Cout, {hidden}, 1, 1), "
                                    f"got {wp.shape}")
        cout = wp.shape[0]
        cin = in_shape[0]
        expand = None
        if op.we is not None:
            we = np.ascontiguousarray(op.we, dtype=np.float32)
            if we.ndim != 4 or we.shape[0] != hidden or we.shape[1] != cin or we.shape[2] != we.shape[3]:
                raise InvalidModelError(f"{where}: expansion weight {we.shape} does not match "
                                        f"input channels {cin} and {hidden} hidden channels")
            expand = (we.shape[2], _pair(where, "expand_stride", op.expand_stride, 1)[0],
                      _pair(where, "expand_pads", op.expand_pads, 4))
            self.we2 = we.reshape(hidden, -1)
            self.be = self._bias(where, op.be, hidden, "expansion")
            self.expand_act = _activation_kind(where, op.expand_activation,
                                               op.expand_activation_params, "expansion")
            _check_window(where, (expand[0],) * 2, (expand[1],) * 2, (1, 1), expand[2])
        elif cin != hidden:
            raise InvalidModelError(f"{where}: without expansion the input's {cin} channels must "
                                    f"be the {hidden} hidden ones")
        dw = (kd, _pair(where, "dw_stride", op.dw_stride, 1)[0], _pair(where, "dw_pads", op.dw_pads, 4))
        _check_window(where, (kd, kd), (dw[1],) * 2, (1, 1), dw[2])
        if min(expand[1] if expand else 1, dw[1]) < 1:
            raise InvalidModelError(f"{where}: strides must be >= 1")
        if not isinstance(op.chunks, int) or not 1 <= op.chunks <= hidden:
            raise InvalidModelError(f"{where}: chunks must be an int in 1..{hidden}, got {op.chunks!r}")
        try:
            self.geometry = block_geometry(in_shape, hidden, cout, expand, dw, op.chunks)
        except SegmentError as exc:
            raise InvalidModelError(f"{where}: {exc}") from None
        if op.residual and self.geometry.out_shape != tuple(in_shape):
            raise InvalidModelError(f"{where}: a residual block needs output shape "
                                    f"{self.geometry.out_shape} equal to its input {tuple(in_shape)}")
        self.wd = wd.reshape(hidden, kd, kd)
        self.bd = self._bias(where, op.bd, hidden, "depthwise")
        self.wp2 = wp.reshape(cout, hidden)
        self.bp = self._bias(where, op.bp, cout, "projection")
        self.dw_act = _activation_kind(where, op.dw_activation, op.dw_activation_params, "depthwise")
        self.project_act = _activation_kind(where, op.project_activation,
                                            op.project_activation_params, "projection")
        self.skip = index - 1 if op.residual else None
        self.out_channels, self.out_width = cout, self.geometry.out_shape[2]
        g = self.geometry
        self.scratch_parts = g.scratch_items()
        self.scratch_items = sum(self.scratch_parts.values())
        self.state_items = g.state_items()
        step = block_row_step("", g)
        self.windows = [step._window(o) for o in range(g.out_shape[1])]
        self.readers: dict[int, list[int]] = {}
        for o, rows in enumerate(self.windows):
            for r in rows:
                self.readers.setdefault(r, []).append(o)
        self.dw_columns = _column_ranges(g.hidden_shape[2], g.out_shape[2], kd, dw[1], 1, dw[2][1])
        if expand is not None and not g.direct_expansion:
            ke = expand[0]
            self.we_taps = np.ascontiguousarray(self.we2.reshape(hidden, cin, ke, ke).transpose(2, 3, 0, 1))
            self.expand_columns = _column_ranges(in_shape[2], g.hidden_shape[2], ke, expand[1], 1,
                                                 expand[2][1])
        self.slices = [(c, min(c + g.chunk_channels, hidden)) for c in range(0, hidden, g.chunk_channels)]
        self.row_slices = len(self.slices)
        self.macs = 0

    @staticmethod
    def _bias(where, bias, count, what) -> np.ndarray:
        if bias is None:
            return np.zeros((count, 1), np.float32)
        bias = np.asarray(bias, np.float32)
        if bias.shape != (count,):
            raise InvalidModelError(f"{where}: {what} bias must have {count} values, got {bias.shape}")
        return bias.reshape(count, 1).copy()

    def row_step(self, name: str) -> RowStep:
        return block_row_step(name, self.geometry, self.skip)

    def _views(self, scratch: np.ndarray) -> dict[str, np.ndarray]:
        views, start = {}, 0
        for part, items in self.scratch_parts.items():
            views[part] = scratch[start:start + items]
            start += items
        return views

    def compute(self, out_row, src, skip_src, dst, scratch) -> None:
        g = self.geometry
        views = self._views(scratch)
        hidden_channels, _, wh = g.hidden_shape
        wo = g.out_shape[2]
        slots = self.state.reshape(g.state_rows, hidden_channels, wo)
        finished = False
        for h in self._new_rows(out_row):
            for c0, c1 in self.slices:
                hidden = self._hidden_slice(h, c0, c1, src, views)
                for reader in self.readers[h]:
                    slot = slots[reader % g.state_rows, c0:c1]
                    self._scatter(hidden, slot, c0, c1, h - (reader * g.dw[1] - g.dw[2][0]),
                                  first=h == self.windows[reader][0], views=views)
                    if reader == out_row and h == self.windows[out_row][-1]:
                        self._finish(slot, c0, c1, dst, views)
                        finished = True
        if not finished:
            for c0, c1 in self.slices:
                self._finish(slots[out_row % g.state_rows, c0:c1], c0, c1, dst, views)
        np.add(dst, self.bp, out=dst)
        _activate(self.project_act, dst, views["product"])
        if self.skip is not None:
            np.add(dst, skip_src.row(out_row), out=dst)

    def _new_rows(self, out_row: int) -> list[int]:
        rows = self.windows[out_row]
        before = self.windows[out_row - 1][-1] if out_row > 0 else -1
        return [r for r in rows if r > before]

    def _hidden_slice(self, h, c0, c1, src, views) -> np.ndarray:
        """Hidden channels [c0, c1) of hidden row h: the input row itself without expansion,
        one matmul for a plain 1x1, else the expansion's taps one by one."""
        g = self.geometry
        if g.expand is None:
            return src.row(h)[c0:c1]
        wh = g.hidden_shape[2]
        hidden = views["hidden"][:(c1 - c0) * wh].reshape(c1 - c0, wh)
        if g.direct_expansion:
            matmul_into(self.we2[c0:c1], src.row(h), hidden)
        else:
            self._expand_by_taps(h, c0, c1, src, hidden, views)
        self.macs += (c1 - c0) * self.we2.shape[1] * wh
        np.add(hidden, self.be[c0:c1], out=hidden)
        _activate(self.expand_act, hidden, views["product"])
        return hidden

    def _expand_by_taps(self, h, c0, c1, src, hidden, views) -> None:
        ke, stride, pads = self.geometry.expand
        cin, height = self.geometry.in_shape[0], self.geometry.in_shape[1]
        wh = hidden.shape[1]
        tap = views["tap"].reshape(cin, wh)
        product = views["product"][:(c1 - c0) * wh].reshape(c1 - c0, wh)
        hidden.fill(0.0)
        for ky in range(ke):
            r = h * stride - pads[0] + ky
            if not 0 <= r < height:
                continue
            row = src.row(r)
            for kx, (lo, hi, x0) in enumerate(self.expand_columns):
                if hi == lo:
                    continue
                tap[:, :lo].fill(0.0)
                tap[:, hi:].fill(0.0)
                np.copyto(tap[:, lo:hi], row[:, x0:x0 + (hi - lo - 1) * stride + 1:stride])
                matmul_into(self.we_taps[ky, kx, c0:c1], tap, product)
                np.add(hidden, product, out=hidden)

    def _scatter(self, hidden, slot, c0, c1, ky, first, views) -> None:
        stride = self.geometry.dw[1]
        if first:
            slot[...] = self.bd[c0:c1]
        product = views["product"]
        for kx, (lo, hi, x0) in enumerate(self.dw_columns):
            if hi == lo:
                continue
            n = hi - lo
            tmp = product[:(c1 - c0) * n].reshape(c1 - c0, n)
            np.multiply(hidden[:, x0:x0 + (n - 1) * stride + 1:stride],
                        self.wd[c0:c1, ky, kx, None], out=tmp)
            part = slot[:, lo:hi]
            np.add(part, tmp, out=part)

    def _finish(self, slot, c0, c1, dst, views) -> None:
        _activate(self.dw_act, slot, views["product"])
        kd = self.geometry.dw[0]
        self.macs += (c1 - c0) * (kd * kd + dst.shape[0]) * dst.shape[1]   # depthwise + projection
        if c0 == 0:
            matmul_into(self.wp2[:, c0:c1], slot, dst)
        else:
            projection = views["projection"].reshape(dst.shape)
            matmul_into(self.wp2[:, c0:c1], slot, projection)
            np.add(dst, projection, out=dst)


class _SqueezeExciteRows(_RowKernel):
    """Sums each input row into its state; at the last row, the two small layers into its ring."""

    def __init__(self, op: SqueezeExcite, in_shape, where: str) -> None:
        c, self.in_height, self.in_width = in_shape
        w1 = np.ascontiguousarray(np.reshape(op.w1, np.shape(op.w1)[:2]), dtype=np.float32)
        w2 = np.ascontiguousarray(np.reshape(op.w2, np.shape(op.w2)[:2]), dtype=np.float32)
        if w1.shape[1] != c or w2.shape[1] != w1.shape[0]:
            raise InvalidModelError(f"{where}: squeeze weights {w1.shape} and {w2.shape} do not "
                                    f"chain from {c} channels")
        self.w1, self.w2 = w1, w2
        self.b1 = _BlockRows._bias(where, op.b1, w1.shape[0], "squeeze")
        self.b2 = _BlockRows._bias(where, op.b2, w2.shape[0], "excite")
        self.act1 = _activation_kind(where, op.act1[0], op.act1[1], "squeeze")
        self.act2 = _activation_kind(where, op.act2[0], op.act2[1], "excite")
        self.in_channels, self.out_channels = c, w2.shape[0]
        self.state_items = c
        self.scratch_items = c + w1.shape[0] + 1

    def row_step(self, name: str) -> RowStep:
        return RowStep(name, self.in_height, 1, self.out_channels, 1, reduce=True,
                       state_bytes=self.state_items * ITEMSIZE,
                       scratch_bytes=self.scratch_items * ITEMSIZE)

    def compute(self, out_row, src, skip_src, dst, scratch) -> None:
        c, hidden = self.in_channels, self.w1.shape[0]
        sums = self.state.reshape(c, 1)
        row_sums = scratch[:c].reshape(c, 1)
        np.add.reduce(src.row(out_row), axis=1, out=row_sums[:, 0])
        if out_row == 0:
            np.copyto(sums, row_sums)
        else:
            np.add(sums, row_sums, out=sums)
        if out_row < self.in_height - 1:
            return
        np.multiply(sums, np.float32(1.0 / (self.in_height * self.in_width)), out=sums)
        tmp = scratch[c + hidden:]
        inner = scratch[c:c + hidden].reshape(hidden, 1)
        matmul_into(self.w1, sums, inner)
        np.add(inner, self.b1, out=inner)
        _activate(self.act1, inner, tmp)
        matmul_into(self.w2, inner, dst)
        np.add(dst, self.b2, out=dst)
        _activate(self.act2, dst, tmp)


class _ChannelMulRows(_AlignedRows):
    def __init__(self, op: ChannelMul, in_shape, vector_shape, where: str) -> None:
        super().__init__(in_shape)
        if tuple(vector_shape) != (in_shape[0], 1, 1):
            raise InvalidModelError(f"{where}: vector of shape {tuple(vector_shape)} for "
                                    f"{in_shape[0]} channels")
        self.broadcast = op.vector

    def row_step(self, name: str) -> RowStep:
        return replace(super().row_step(name), broadcast=self.broadcast)

    def compute(self, out_row, src, skip_src, dst, scratch) -> None:
        np.multiply(src.row(out_row), skip_src.row(0), out=dst)


def _check_skip(where: str, skip, index: int, shapes) -> tuple:
    if not isinstance(skip, int) or not SEGMENT_INPUT <= skip < index:
        raise InvalidModelError(f"{where}: skip {skip!r} must name an earlier step or -1")
    return shapes[skip]


def _bind(op, index: int, in_shape, shapes, last: bool) -> _RowKernel:
    where = f"segment step {index} ({type(op).__name__})"
    if isinstance(op, From):
        if not isinstance(op.source, int) or not SEGMENT_INPUT <= op.source < index:
            raise InvalidModelError(f"{where}: source {op.source!r} must name an earlier step or -1")
        if isinstance(op.op, (From, Block, GlobalAveragePool)) or \
                (isinstance(op.op, (Add, Concat, Binary)) and op.op.skip == op.source):
            raise InvalidModelError(f"{where}: {type(op.op).__name__} cannot read another source")
        kernel = _bind(op.op, index, shapes[op.source], shapes, last)
        kernel.source = op.source
        return kernel
    if isinstance(op, Concat):
        return _ConcatRows(op, in_shape, _check_skip(where, op.skip, index, shapes), where)
    if isinstance(op, Binary):
        return _BinaryRows(op, in_shape, _check_skip(where, op.skip, index, shapes), where)
    if isinstance(op, Scale):
        return _ScaleRows(op, in_shape, where)
    if isinstance(op, ChannelShuffle):
        return _ChannelShuffleRows(op, in_shape, where)
    if isinstance(op, Resize):
        return _ResizeRows(op, in_shape, where)
    if isinstance(op, SqueezeExcite):
        if last:
            raise InvalidModelError(f"{where}: SqueezeExcite must be read by a later ChannelMul")
        return _SqueezeExciteRows(op, in_shape, where)
    if isinstance(op, ChannelMul):
        vector = _check_skip(where, op.vector, index, shapes)
        return _ChannelMulRows(op, in_shape, vector, where)
    if isinstance(op, Conv):
        return _ConvRows(op, in_shape, where)
    if isinstance(op, Pool):
        return _PoolRows(op, in_shape, where)
    if isinstance(op, Activation):
        return _ActivationRows(op, in_shape, where)
    if isinstance(op, Add):
        if not SEGMENT_INPUT <= op.skip < index:
            raise InvalidModelError(f"{where}: skip {op.skip} must name an earlier step or -1")
        return _AddRows(op, in_shape, shapes[op.skip], where)
    if isinstance(op, Block):
        return _BlockRows(op, in_shape, index, where)
    if isinstance(op, GlobalAveragePool):
        if not last:
            raise InvalidModelError(f"{where}: GlobalAveragePool must end the segment")
        return _GlobalAverageRows(in_shape)
    raise InvalidModelError(f"{where}: {type(op).__name__} cannot stream")


def _output_shape(kernel: _RowKernel) -> tuple[int, int, int]:
    step = kernel.row_step("")
    return step.channels, step.out_height, step.width


# ---------------------------------------------------------------- the runner
class SegmentRunner:
    """A segment bound to an input shape (C, H, W) and a band height, with its arena.

    `run(x, out)` reads the whole input x and writes the whole output `out`; every tensor
    between lives in a ring of `schedule.rings[i].rows` rows inside `arena`.  `chunks`: rows
    per call of each step (scheduler.segments.row_schedule; default its steady chunks).
    `arena`: a 1-D float32 view of at least `arena_bytes` to run in (e.g. the executor's
    arena at the segment's offset); by default the runner allocates its own.
    `itemsize` 2: float16 storage (edgerun.kernels.f16): the arena, every ring, state and row scratch
    hold float16 (the arena is a float16 view), the output is float16, the input float16 or float32;
    the arithmetic is float32 (ufuncs round on store, matmuls in bounded float32 pieces).
    """

    def __init__(self, ops, in_shape, band_rows: int, alignment: int = 64, chunks=None,
                 arena: np.ndarray | None = None, itemsize: int = ITEMSIZE) -> None:
        if itemsize not in (2, ITEMSIZE):
            raise InvalidInputError(f"segment itemsize must be 4 (float32) or 2 (float16), got {itemsize!r}")
        self.itemsize = itemsize
        self.dtype = np.dtype(np.float16 if itemsize == 2 else np.float32)
        if len(in_shape) != 3 or min(in_shape) < 1:
            raise InvalidInputError(f"segment input shape must be (C, H, W), got {tuple(in_shape)}")
        if not ops:
            raise InvalidModelError("a segment needs at least one step")
        self.in_shape = tuple(int(d) for d in in_shape)
        shapes = {SEGMENT_INPUT: self.in_shape}
        self.kernels: list[_RowKernel] = []
        for index, op in enumerate(ops):
            kernel = _bind(op, index, shapes[index - 1], shapes, last=index == len(ops) - 1)
            self.kernels.append(kernel)
            shapes[index] = _output_shape(kernel)
        self.out_shape = shapes[len(ops) - 1]
        self.steps = [self._row_step(k, f"{index}:{type(op).__name__}")
                      for index, (k, op) in enumerate(zip(self.kernels, ops))]
        try:
            self.schedule = plan_segment(self.steps, self.in_shape[1], band_rows, chunks)
        except SegmentError as exc:
            raise InvalidModelError(str(exc)) from None
        self._layout(shapes, alignment, arena)

    def _row_step(self, kernel, name: str) -> RowStep:
        step = kernel.row_step(name)
        if self.itemsize != step.itemsize:    # the kernels state their bytes in float32
            step = replace(step, itemsize=self.itemsize, state_bytes=step.state_bytes * self.itemsize // ITEMSIZE,
                           scratch_bytes=step.scratch_bytes * self.itemsize // ITEMSIZE)
        return step if kernel.source is None else replace(step, source=kernel.source)

    def _layout(self, shapes, alignment: int, arena) -> None:
        last = len(self.kernels) - 1
        planner = GreedyBySizePlanner(alignment=alignment)
        buffers = {}      # one buffer per ring name: tensors computed in place share their consumer's
        for ring in self.schedule.rings:
            if ring.name not in buffers:
                buffers[ring.name] = planner.add_buffer(ring.bytes, 0, last, f"ring:{ring.name}")
        ring_ids = {ring.tensor: buffers[ring.name] for ring in self.schedule.rings}
        size = self.itemsize
        state_ids = {index: planner.add_buffer(kernel.state_items * size, 0, last,
                                               f"state:{self.steps[index].name}")
                     for index, kernel in enumerate(self.kernels) if kernel.state_items}
        scratch_ids = {}
        for index, kernel in enumerate(self.kernels):
            items = kernel.scratch_items
            if index == last and not isinstance(kernel, _GlobalAverageRows):
                items += self.out_shape[0] * self.out_shape[2]   # the row before it goes out
            if items:
                scratch_ids[index] = planner.add_buffer(items * size, index, index,
                                                        f"scratch:{self.steps[index].name}")
        planner.check()
        self.planner = planner
        self.arena_bytes = planner.peak()
        items = self.arena_bytes // size
        if arena is None:
            arena = np.empty(items, self.dtype)
        elif not (isinstance(arena, np.ndarray) and arena.dtype == self.dtype and arena.ndim == 1
                  and arena.flags.c_contiguous and arena.flags.writeable and arena.size >= items):
            raise InvalidInputError(f"segment arena must be a writeable contiguous 1-D {self.dtype.name} "
                                    f"array of at least {items} items")
        self.arena = arena[:items]

        def view(buffer: int, items: int) -> np.ndarray:
            start = planner.offset(buffer) // size
            return self.arena[start:start + items]

        self.sources = {SEGMENT_INPUT: _WholeRows()}
        for ring in self.schedule.rings:
            c, _, w = shapes[ring.tensor]
            self.sources[ring.tensor] = _RingRows(
                view(ring_ids[ring.tensor], ring.rows * c * w).reshape(ring.rows, c, w))
        for index, buffer in state_ids.items():
            self.kernels[index].bind_state(view(buffer, self.kernels[index].state_items))
        self.scratch = {}
        for index, buffer in scratch_ids.items():
            self.scratch[index] = view(buffer, planner.aligned_size(buffer) // size)

    def run(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        self._check_io(x, out)
        self.sources[SEGMENT_INPUT].array = x
        old = np.setbufsize(UFUNC_BUFFER_ITEMS)
        try:
            if isinstance(self.kernels[-1], _GlobalAverageRows):
                out.fill(0.0)
            for call in self.schedule.calls:
                self._run_rows(call.step, call.lo, call.hi, out)
            if isinstance(self.kernels[-1], _GlobalAverageRows):
                h, w = self.kernels[-1].in_height, self.kernels[-1].in_width
                np.multiply(out, np.float32(1.0 / (h * w)), out=out)
        finally:
            np.setbufsize(old)
            self.sources[SEGMENT_INPUT].array = None
        return out

    def _run_rows(self, index: int, lo: int, hi: int, out: np.ndarray) -> None:
        kernel = self.kernels[index]
        src = self.sources[index - 1 if kernel.source is None else kernel.source]
        second = kernel.skip if kernel.skip is not None else getattr(kernel, "broadcast", None)
        skip_src = self.sources.get(second) if second is not None else None
        scratch = self.scratch.get(index)
        last = index == len(self.kernels) - 1
        if last and isinstance(kernel, _GlobalAverageRows):
            sums = scratch[:kernel.scratch_items]
            acc = out.reshape(-1)
            for r in range(lo, hi):
                kernel.compute(r, src, skip_src, acc, sums)
            return
        work = scratch[:kernel.scratch_items] if kernel.scratch_items else None
        for r in range(lo, hi):
            if last:
                c, _, w = self.out_shape
                row = scratch[kernel.scratch_items:kernel.scratch_items + c * w].reshape(c, w)
                kernel.compute(r, src, skip_src, row, work)
                np.copyto(out[:, r, :], row)
            else:
                kernel.compute(r, src, skip_src, self.sources[index].row(r), work)

    @property
    def row_calls(self) -> int:
        """Row kernel calls of one run, what the cost model charges streaming for (scheduler.cost): each
        output row of each step, a fused block's once per slice of its hidden channels."""
        return sum((call.hi - call.lo) * getattr(self.kernels[call.step], "row_slices", 1)
                   for call in self.schedule.calls)

    @property
    def macs(self) -> int:
        """Multiply-adds of the convolutions and blocks run so far (im2col taps over padding
        count, as in an unstreamed im2col conv; a scatter depthwise counts its taps inside)."""
        return sum(getattr(kernel, "macs", 0) for kernel in self.kernels)

    def _check_io(self, x, out) -> None:
        for name, array, shape, dtypes in (("input", x, self.in_shape, (np.float32, self.dtype)),
                                           ("output", out, self.out_shape, (self.dtype,))):
            if not isinstance(array, np.ndarray) or array.dtype not in dtypes \
                    or tuple(array.shape) != shape or not array.flags.c_contiguous:
                raise InvalidInputError(f"segment {name} must be a C-contiguous {self.dtype.name} array of "
                                        f"shape {shape}, got {getattr(array, 'shape', type(array))}")
        if not out.flags.writeable:
            raise InvalidInputError("segment output must be writeable")


def run_segment(ops, x: np.ndarray, band_rows: int, chunks=None) -> np.ndarray:
    """Convenience: stream one (C, H, W) float32 input through `ops`; returns a new output."""
    runner = SegmentRunner(ops, x.shape, band_rows, chunks=chunks)
    out = np.empty(runner.out_shape, np.float32)
    return runner.run(np.ascontiguousarray(x, dtype=np.float32), out)
