"""Geometry of an inverted-residual block and the arithmetic of its split.

A block is: optional expansion conv (Cin -> E, kernel ke, stride se), ReLU6,
depthwise conv (kernel kd, stride sd), ReLU6, 1x1 linear projection (E -> Cout),
optional residual add.  The split (MobileNetV2 paper, Section 5.1) cuts the E
hidden channels into t chunks; banding additionally cuts the output rows into
bands so that only a few hidden rows exist at a time.  Everything here is for
one image; pure integer arithmetic, no arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

FLOAT_BYTES = 4


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def conv_output_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int) -> int:
    return (size + pad_begin + pad_end - kernel) // stride + 1


@dataclass(frozen=True)
class BlockGeometry:
    in_channels: int
    in_height: int
    in_width: int
    hidden_channels: int
    expand_kernel: int
    expand_stride: int
    expand_pads: tuple[int, int, int, int]
    dw_kernel: int
    dw_stride: int
    dw_pads: tuple[int, int, int, int]
    out_channels: int
    residual: bool
    itemsize: int = FLOAT_BYTES

    def __post_init__(self) -> None:
        object.__setattr__(self, "expand_pads", tuple(int(p) for p in self.expand_pads))
        object.__setattr__(self, "dw_pads", tuple(int(p) for p in self.dw_pads))
        object.__setattr__(self, "residual", bool(self.residual))
        if len(self.expand_pads) != 4 or len(self.dw_pads) != 4:
            raise ValueError("pads must be (top, left, bottom, right)")
        if self.has_expansion and max(self.expand_pads) >= self.expand_kernel:
            raise ValueError("expansion pads must be smaller than its kernel")
        if max(self.dw_pads) >= self.dw_kernel:
            raise ValueError("depthwise pads must be smaller than its kernel")
        if not self.has_expansion and self.hidden_channels != self.in_channels:
            raise ValueError("without expansion hidden_channels must equal in_channels")
        if self.hidden_height < 1 or self.hidden_width < 1:
            raise ValueError(f"block expansion output would be empty: {self}")
        if self.out_height < 1 or self.out_width < 1:
            raise ValueError(f"block output would be empty: {self}")
        if self.residual and (
            self.in_channels != self.out_channels
            or (self.in_height, self.in_width) != (self.out_height, self.out_width)
        ):
            raise ValueError("a residual block needs equal input and output shapes")

    @property
    def has_expansion(self) -> bool:
        return self.expand_kernel > 0

    @property
    def hidden_height(self) -> int:
        if not self.has_expansion:
            return self.in_height
        top, _, bottom, _ = self.expand_pads
        return conv_output_size(self.in_height, self.expand_kernel, self.expand_stride, top, bottom)

    @property
    def hidden_width(self) -> int:
        if not self.has_expansion:
            return self.in_width
        _, left, _, right = self.expand_pads
        return conv_output_size(self.in_width, self.expand_kernel, self.expand_stride, left, right)

    @property
    def out_height(self) -> int:
        top, _, bottom, _ = self.dw_pads
        return conv_output_size(self.hidden_height, self.dw_kernel, self.dw_stride, top, bottom)

    @property
    def out_width(self) -> int:
        _, left, _, right = self.dw_pads
        return conv_output_size(self.hidden_width, self.dw_kernel, self.dw_stride, left, right)

    def expansion_macs_per_hidden_row(self) -> int:
        if not self.has_expansion:
            return 0
        k = self.expand_kernel
        return self.hidden_width * self.hidden_channels * self.in_channels * k * k

    def expansion_macs(self) -> int:
        return self.hidden_height * self.expansion_macs_per_hidden_row()

    def depthwise_macs(self) -> int:
        k = self.dw_kernel
        return self.out_height * self.out_width * self.hidden_channels * k * k

    def projection_macs(self) -> int:
        return self.out_height * self.out_width * self.hidden_channels * self.out_channels

    def macs(self) -> int:
        """Multiply-adds of the unsplit block (residual add not counted)."""
        return self.expansion_macs() + self.depthwise_macs() + self.projection_macs()


@dataclass(frozen=True)
class BlockSchedule:
    t: int
    band_rows: int

    def __post_init__(self) -> None:
        if self.t < 1:
            raise ValueError(f"t must be >= 1, got {self.t}")
        if self.band_rows < 1:
            raise ValueError(f"band_rows must be >= 1, got {self.band_rows}")


def chunk_ranges(hidden: int, t: int) -> list[tuple[int, int]]:
    """Hidden channels cut into chunks of ceil(hidden/t); the last may be smaller.

    With ceil-sized chunks fewer than t chunks can result (e.g. hidden=10, t=4
    gives 3,3,3,1 but hidden=9, t=4 gives 3,3,3): the list is what runs.
    """
    if t < 1 or t > hidden:
        raise ValueError(f"t must be in 1..{hidden}, got {t}")
    size = _ceil_div(hidden, t)
    return [(c0, min(c0 + size, hidden)) for c0 in range(0, hidden, size)]


def band_ranges(out_height: int, band_rows: int) -> list[tuple[int, int]]:
    if band_rows < 1 or band_rows > out_height:
        raise ValueError(f"band_rows must be in 1..{out_height}, got {band_rows}")
    return [(o0, min(o0 + band_rows, out_height)) for o0 in range(0, out_height, band_rows)]


def hidden_rows_for(geom: BlockGeometry, out_row0: int, out_row1: int) -> tuple[int, int]:
    """Hidden rows [h0, h1) the depthwise needs to produce output rows [out_row0, out_row1)."""
    stride, kernel, pad_top = geom.dw_stride, geom.dw_kernel, geom.dw_pads[0]
    h0 = max(0, out_row0 * stride - pad_top)
    h1 = min(geom.hidden_height, (out_row1 - 1) * stride - pad_top + kernel)
    return h0, h1


def input_rows_for(geom: BlockGeometry, hidden_row0: int, hidden_row1: int) -> tuple[int, int]:
    """Input rows [i0, i1) the expansion needs to produce hidden rows [hidden_row0, hidden_row1)."""
    if not geom.has_expansion:
        return hidden_row0, hidden_row1
    stride, kernel, pad_top = geom.expand_stride, geom.expand_kernel, geom.expand_pads[0]
    i0 = max(0, hidden_row0 * stride - pad_top)
    i1 = min(geom.in_height, (hidden_row1 - 1) * stride - pad_top + kernel)
    return i0, i1


def band_row_ranges(geom: BlockGeometry, band_rows: int) -> list[tuple[int, int, int, int]]:
    """(out_row0, out_row1, hidden_row0, hidden_row1) of every band: the rows kernels run."""
    return [(o0, o1, *hidden_rows_for(geom, o0, o1)) for o0, o1 in band_ranges(geom.out_height, band_rows)]


def band_hidden_rows(geom: BlockGeometry, band_rows: int) -> int:
    """Hidden rows a scratch band must hold: min(Hh, (r-1)*sd + kd)."""
    return min(geom.hidden_height, (band_rows - 1) * geom.dw_stride + geom.dw_kernel)


def chunk_channels(geom: BlockGeometry, t: int) -> int:
    return _ceil_div(geom.hidden_channels, t)


def band_count(geom: BlockGeometry, band_rows: int) -> int:
    return _ceil_div(geom.out_height, band_rows)


def expansion_rows_computed(geom: BlockGeometry, band_rows: int) -> int:
    """Hidden rows the expansion computes over all bands (overlapping halos recomputed)."""
    total = 0
    for o0, o1 in band_ranges(geom.out_height, band_rows):
        h0, h1 = hidden_rows_for(geom, o0, o1)
        total += max(0, h1 - h0)
    return total


def block_macs_split(geom: BlockGeometry, sched: BlockSchedule) -> tuple[int, int]:
    """(dense macs: expansion incl. recomputed halos + projection, depthwise macs)."""
    expansion = expansion_rows_computed(geom, sched.band_rows) * geom.expansion_macs_per_hidden_row()
    return expansion + geom.projection_macs(), geom.depthwise_macs()


def block_macs(geom: BlockGeometry, sched: BlockSchedule) -> int:
    """Multiply-adds actually executed under a schedule (chunking costs nothing extra)."""
    dense, depthwise = block_macs_split(geom, sched)
    return dense + depthwise


def block_calls(geom: BlockGeometry, sched: BlockSchedule) -> int:
    """Number of (chunk, band) inner iterations the kernel runs."""
    return len(chunk_ranges(geom.hidden_channels, sched.t)) * len(
        band_ranges(geom.out_height, sched.band_rows)
    )
