"""Streamed segments on the numpy kernels (edgerun/kernels/numpy_segment.py) against an
unsplit float64 reference computed layer by layer with the plain numpy below."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgerun.errors import InvalidInputError, InvalidModelError
from edgerun.kernels.numpy_segment import (
    Activation,
    Add,
    Binary,
    Block,
    ChannelMul,
    ChannelShuffle,
    Concat,
    Conv,
    From,
    GlobalAveragePool,
    Pool,
    Resize,
    Scale,
    SegmentRunner,
    SqueezeExcite,
    run_segment,
)
from scheduler.segments import check_rings, minimal_streamed_peak, streamed_peak


# ---------------------------------------------------------------- the float64 oracle
def _padded(x, pads, fill):
    c, h, w = x.shape
    top, left, bottom, right = pads
    out = np.full((c, h + top + bottom, w + left + right), fill, np.float64)
    out[:, top:top + h, left:left + w] = x
    return out


def _windows(x, kernel, strides, dilations, pads, fill):
    """Yield (ky, kx, view): the padded input under tap (ky, kx) of every output position."""
    xp = _padded(x, pads, fill)
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    ho = (xp.shape[1] - (kh - 1) * dh - 1) // sh + 1
    wo = (xp.shape[2] - (kw - 1) * dw - 1) // sw + 1
    for ky in range(kh):
        for kx in range(kw):
            rows = slice(ky * dh, ky * dh + (ho - 1) * sh + 1, sh)
            yield ky, kx, xp[:, rows, kx * dw:kx * dw + (wo - 1) * sw + 1:sw]


def conv2d(x, op: Conv):
    m, cg, kh, kw = op.weight.shape
    per_group = m // op.group
    out = None
    for ky, kx, view in _windows(x, (kh, kw), op.strides, op.dilations, op.pads, 0.0):
        if out is None:
            out = np.zeros((m,) + view.shape[1:])
        for o in range(m):
            g = o // per_group
            out[o] += np.tensordot(op.weight[o, :, ky, kx].astype(np.float64),
                                   view[g * cg:(g + 1) * cg], axes=1)
    bias = np.zeros(m) if op.bias is None else op.bias.astype(np.float64)
    return out + bias[:, None, None]


def pool2d(x, op: Pool):
    if op.kind == "max":
        taps = [v for _, _, v in _windows(x, op.kernel, op.strides, op.dilations, op.pads, -np.inf)]
        return np.max(taps, axis=0)
    total = sum(v for _, _, v in _windows(x, op.kernel, op.strides, op.dilations, op.pads, 0.0))
    ones = np.ones((1,) + x.shape[1:])
    count = sum(v for _, _, v in _windows(ones, op.kernel, op.strides, op.dilations, op.pads, 0.0))
    return total / count


def activation(x, kind, params):
    if kind == "hardsigmoid":
        return np.clip(params[0] * x + params[1], 0, 1)
    if kind == "relu":
        return np.maximum(x, 0)
    if kind == "clip":
        return np.clip(x, *params)
    if kind == "hardswish":
        return x * np.clip(x / 6 + 0.5, 0, 1)
    assert kind == ""
    return x


def block(x, op: Block):
    """The inverted-residual block op by op: expand, act, depthwise, act, project (+ input)."""
    hidden = x
    if op.we is not None:
        hidden = conv2d(x, Conv(op.we, op.be, (op.expand_stride,) * 2, op.expand_pads))
        hidden = activation(hidden, op.expand_activation, op.expand_activation_params)
    dw = conv2d(hidden, Conv(op.wd, op.bd, (op.dw_stride,) * 2, op.dw_pads, group=op.wd.shape[0]))
    dw = activation(dw, op.dw_activation, op.dw_activation_params)
    y = activation(conv2d(dw, Conv(op.wp, op.bp)), op.project_activation, op.project_activation_params)
    return y + x if op.residual else y


def linear_matrix(size, factor):
    """(size * factor, size) half-pixel linear interpolation weights, clamped at the edges."""
    out = np.zeros((size * factor, size))
    for o in range(size * factor):
        position = min(max((o + 0.5) / factor - 0.5, 0.0), size - 1.0)
        low = int(np.floor(position))
        high = min(low + 1, size - 1)
        out[o, low] += 1 - (position - low)
        out[o, high] += position - low
    return out


def resize(x, op: Resize):
    fy, fx = op.factors
    if op.mode == "nearest":
        return x.repeat(fy, axis=1).repeat(fx, axis=2)
    return np.einsum("oh,chw,pw->cop", linear_matrix(x.shape[1], fy), x, linear_matrix(x.shape[2], fx))


def reference(ops, x, tensors=None):
    """The chain layer by layer in float64; `tensors` (a dict) receives every tensor."""
    tensors = {} if tensors is None else tensors
    tensors[-1] = x.astype(np.float64)
    current = tensors[-1]
    for index, op in enumerate(ops):
        if isinstance(op, From):
            current, op = tensors[op.source], op.op
        if isinstance(op, Block):
            current = block(current, op)
        elif isinstance(op, Concat):
            parts = [tensors[op.skip], current] if op.skip_first else [current, tensors[op.skip]]
            current = np.concatenate(parts, axis=0)
        elif isinstance(op, Binary):
            current = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "max": np.maximum,
                       "min": np.minimum}[op.kind](current, tensors[op.skip])
        elif isinstance(op, Scale):
            current = current * op.scale.astype(np.float64)[:, None, None]
            if op.bias is not None:
                current = current + op.bias.astype(np.float64)[:, None, None]
        elif isinstance(op, ChannelShuffle):
            c, h, w = current.shape
            current = current.reshape(op.groups, c // op.groups, h, w).transpose(1, 0, 2, 3).reshape(c, h, w)
        elif isinstance(op, Resize):
            current = resize(current, op)
        elif isinstance(op, SqueezeExcite):
            pooled = current.mean(axis=(1, 2))
            hidden = activation(op.w1.astype(np.float64) @ pooled + op.b1, *op.act1)
            current = activation(op.w2.astype(np.float64) @ hidden + op.b2, *op.act2)[:, None, None]
        elif isinstance(op, ChannelMul):
            current = current * tensors[op.vector]
        elif isinstance(op, Conv):
            current = conv2d(current, op)
        elif isinstance(op, Pool):
            current = pool2d(current, op)
        elif isinstance(op, Activation):
            current = activation(current, op.kind, op.params)
        elif isinstance(op, Add):
            current = current + tensors[op.skip]
        elif isinstance(op, GlobalAveragePool):
            current = current.mean(axis=(1, 2), keepdims=True)
        tensors[index] = current
    return current


def assert_close(actual, expected, scale=None):
    """Max error at most 1e-5 of `scale` (default the largest reference value; a chain whose
    activation clips passes the largest value before the clip, as float32 rounding of the
    unclipped sums is what reaches the output)."""
    assert actual.shape == expected.shape
    scale = max(np.abs(expected).max() if scale is None else scale, 1e-30)
    assert np.abs(actual - expected).max() <= 1e-5 * scale


# ---------------------------------------------------------------- hand-worked layout
def test_arena_layout_of_two_3x3_convs():
    """x (2, 8, 8) -> c1, c2 (3x3 pad 1, 2 -> 2 channels), band 1.
    Ring c1: 3 rows x 2 ch x 8 px x 4 B = 192 B, alive at both steps.  Scratch of c1: one
    output row's im2col, 2 ch x 9 taps x 8 px x 4 B = 576 B (step 0 only); of c2: the same
    576 B plus the output row it builds before copying it out, 2 x 8 x 4 = 64 B: 640 B (step 1
    only).  Greedy by size: c2's 640 at 0, c1's 576 at 0 (never alive with it), the ring
    clear of both at 640: arena 832 B."""
    rng = np.random.default_rng(1)
    ops = [Conv(rng.standard_normal((2, 2, 3, 3)).astype(np.float32), None, pads=(1, 1, 1, 1)),
           Conv(rng.standard_normal((2, 2, 3, 3)).astype(np.float32), None, pads=(1, 1, 1, 1))]
    runner = SegmentRunner(ops, (2, 8, 8), 1)
    assert runner.schedule.ring_rows() == {0: 3}
    assert [runner.planner.aligned_size(i) for i in range(len(runner.planner))] == [192, 576, 640]
    assert [runner.planner.offset(i) for i in range(len(runner.planner))] == [640, 0, 0]
    assert runner.arena_bytes == 832 and runner.arena.nbytes == 832
    ring = runner.sources[0].ring
    assert ring.shape == (3, 2, 8) and np.shares_memory(ring, runner.arena)
    x = rng.standard_normal((2, 8, 8)).astype(np.float32)
    assert_close(run_segment(ops, x, 1), reference(ops, x))
    # the same layout inside a caller's arena, at an offset: nothing outside its bytes is touched
    outer = np.full(1000, 7.0, np.float32)
    inside = SegmentRunner(ops, (2, 8, 8), 1, arena=outer[16:16 + 208])
    out = np.empty(inside.out_shape, np.float32)
    assert_close(inside.run(x, out), reference(ops, x))
    assert np.all(outer[:16] == 7.0) and np.all(outer[16 + 208:] == 7.0)
    with pytest.raises(InvalidInputError, match="arena"):
        SegmentRunner(ops, (2, 8, 8), 1, arena=outer[:207])


def test_residual_block_and_global_average_pool_stream():
    """A MobileNetV2-like block with a residual add, ending in GlobalAveragePool: the input
    of the pool only ever exists as a ring of `band` rows."""
    rng = np.random.default_rng(2)
    c = 4
    ops = [Conv(rng.standard_normal((c, c, 1, 1)).astype(np.float32),
                rng.standard_normal(c).astype(np.float32)),
           Activation("clip", (0.0, 6.0)),
           Conv(rng.standard_normal((c, 1, 3, 3)).astype(np.float32), None, pads=(1, 1, 1, 1), group=c),
           Activation("relu"),
           Conv(rng.standard_normal((c, c, 1, 1)).astype(np.float32), None),
           Add(skip=-1),
           GlobalAveragePool()]
    x = rng.standard_normal((c, 9, 7)).astype(np.float32)
    for band in (1, 2, 9):
        runner = SegmentRunner(ops, x.shape, band)
        assert runner.schedule.rings[-1].rows == band
        out = np.empty(runner.out_shape, np.float32)
        assert_close(runner.run(x, out), reference(ops, x))


# ---------------------------------------------------------------- random chains
@st.composite
def segments(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    channels, height, width = draw(st.integers(1, 5)), draw(st.integers(1, 18)), draw(st.integers(1, 12))
    in_shape = (channels, height, width)
    shapes = {-1: in_shape}
    ops = []
    for _ in range(draw(st.integers(1, 5))):
        c, h, w = shapes[len(ops) - 1]
        kind = draw(st.sampled_from(["conv", "conv", "conv", "pool", "act", "add"]))
        if kind == "add":
            same = [j for j in range(-1, len(ops)) if shapes[j] == (c, h, w)]
            op, shape = Add(draw(st.sampled_from(same))), (c, h, w)
        elif kind == "act":
            op = draw(st.sampled_from([Activation("relu"), Activation("clip", (-0.5, 0.5))]))
            shape = (c, h, w)
        else:
            kernel = (draw(st.integers(1, 7)), draw(st.integers(1, 4)))
            strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
            dilations = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
            effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
            pads = tuple(draw(st.integers(0, effective[i % 2] - 1)) for i in range(4))
            ho = (h + pads[0] + pads[2] - effective[0]) // strides[0] + 1
            wo = (w + pads[1] + pads[3] - effective[1]) // strides[1] + 1
            if ho < 1 or wo < 1:
                continue
            if kind == "pool":
                op = Pool(draw(st.sampled_from(["max", "avg"])), kernel, strides, pads, dilations)
                if any(p >= k for p, k in zip(pads, kernel * 2)):
                    continue   # ONNX pooling asks pads < kernel
                shape = (c, ho, wo)
            else:
                group = draw(st.sampled_from([1, c]))
                m = group * draw(st.integers(1, 3)) if group > 1 else draw(st.integers(1, 6))
                weight = rng.standard_normal((m, c // group) + kernel).astype(np.float32)
                bias = rng.standard_normal(m).astype(np.float32) if draw(st.booleans()) else None
                op, shape = Conv(weight, bias, strides, pads, dilations, group), (m, ho, wo)
        ops.append(op)
        shapes[len(ops) - 1] = shape
    if not ops or draw(st.booleans()):
        ops.append(GlobalAveragePool())
        shapes[len(ops) - 1] = (shapes[len(ops) - 2][0], 1, 1)
    driving = shapes[len(ops) - 2][1] if isinstance(ops[-1], GlobalAveragePool) else shapes[len(ops) - 1][1]
    band = draw(st.integers(1, driving))
    chunks = draw(st.none() | st.lists(st.integers(1, 4), min_size=len(ops), max_size=len(ops)))
    x = rng.standard_normal(in_shape).astype(np.float32)
    return ops, x, band, chunks


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segments())
def test_random_segments_match_the_unsplit_reference(segment):
    ops, x, band, chunks = segment
    try:
        runner = SegmentRunner(ops, x.shape, band, chunks=chunks)
    except InvalidModelError as error:   # only a pool window made of padding alone is refused
        assert "padding only" in str(error)
        assume(False)
    check_rings(runner.steps, x.shape[1], runner.schedule.calls, runner.schedule.ring_rows())
    out = np.full(runner.out_shape, np.nan, np.float32)
    runner.arena.fill(np.nan)   # nothing may read a slot no row was written to
    tensors = {}
    expected = reference(ops, x, tensors)
    assert_close(runner.run(x, out), expected, max(np.abs(t).max() for t in tensors.values()))


# ---------------------------------------------------------------- memory
def test_streamed_run_allocates_nothing_of_activation_size():
    """A stem-like chain on a 16 x 64 x 64 input: whole inner tensors would be 256 KiB each;
    the run allocates at most 64 KiB beyond the arena (which is allocated beforehand)."""
    rng = np.random.default_rng(3)
    ops = [Conv(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), None, pads=(1, 1, 1, 1)),
           Activation("relu"),
           Conv(rng.standard_normal((16, 1, 3, 3)).astype(np.float32), None, strides=(2, 2),
                pads=(1, 1, 1, 1), group=16),
           Conv(rng.standard_normal((48, 16, 1, 1)).astype(np.float32), None),
           Pool("max", (3, 3), (1, 1), (1, 1, 1, 1)),
           GlobalAveragePool()]
    x = rng.standard_normal((16, 64, 64)).astype(np.float32)
    runner = SegmentRunner(ops, x.shape, 2)
    out = np.empty(runner.out_shape, np.float32)
    assert runner.arena_bytes < 256 * 1024   # rings and row scratch: less than one whole tensor
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        runner.run(x, out)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    print("streamed run: arena", runner.arena_bytes, "B, tracemalloc peak beyond it", peak, "B")
    assert peak <= 64 * 1024, peak
    assert_close(out, reference(ops, x))


# ---------------------------------------------------------------- refusals
def test_bad_segments_are_refused():
    w = np.ones((2, 2, 3, 3), np.float32)
    with pytest.raises(InvalidModelError, match="group"):
        SegmentRunner([Conv(w, group=2)], (3, 8, 8), 1)
    with pytest.raises(InvalidModelError, match="pads"):
        SegmentRunner([Conv(w, pads=(3, 0, 0, 0))], (2, 8, 8), 1)
    with pytest.raises(InvalidModelError, match="must end"):
        SegmentRunner([GlobalAveragePool(), Activation("relu")], (2, 8, 8), 1)
    with pytest.raises(InvalidModelError, match="skip"):
        SegmentRunner([Conv(w, pads=(1, 1, 1, 1)), Add(skip=1)], (2, 8, 8), 1)
    with pytest.raises(InvalidModelError, match="Add of shapes"):
        SegmentRunner([Conv(w, strides=(2, 2)), Add(skip=-1)], (2, 8, 8), 1)
    with pytest.raises(InvalidModelError, match="padding only"):
        SegmentRunner([Pool("max", (2, 1), pads=(1, 0, 1, 0), dilations=(3, 1))], (1, 2, 1), 1)
    with pytest.raises(InvalidModelError, match="streaming form"):
        SegmentRunner([Activation("elu", (1.0,))], (2, 8, 8), 1)
    runner = SegmentRunner([Conv(w, pads=(1, 1, 1, 1))], (2, 8, 8), 1)
    with pytest.raises(InvalidInputError, match="input"):
        runner.run(np.zeros((2, 8, 7), np.float32), np.zeros((2, 8, 8), np.float32))
    with pytest.raises(InvalidInputError, match="output"):
        runner.run(np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 8), np.float64))


def test_mobilenet_v2_stem_and_two_blocks_stream_without_a_whole_112x112_tensor():
    """MobileNetV2 1.0/224's stem and blocks 1-2 (ReLU6 as Clip steps), one-row calls, band 1,
    checked against edgerun.ops.conv.conv_nd in float64.  Op by op the 16x112x112 (802,816 B)
    and 96x112x112 (4,816,896 B) tensors exist whole; streamed, the arena (every ring and the
    largest row scratch) plus what the run allocates stays below even the smaller of them."""
    from edgerun.ops.conv import conv_nd

    rng = np.random.default_rng(4)

    def weight(*shape):
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    relu6 = Activation("clip", (0.0, 6.0))
    ops = [Conv(weight(32, 3, 3, 3), weight(32, 1)[:, 0], (2, 2), (1, 1, 1, 1)), relu6,
           Conv(weight(32, 1, 3, 3), None, pads=(1, 1, 1, 1), group=32), relu6,
           Conv(weight(16, 32, 1, 1)),
           Conv(weight(96, 16, 1, 1)), relu6,
           Conv(weight(96, 1, 3, 3), None, (2, 2), (1, 1, 1, 1), group=96), relu6,
           Conv(weight(24, 96, 1, 1))]
    x = rng.standard_normal((3, 224, 224)).astype(np.float32)
    runner = SegmentRunner(ops, x.shape, 1, chunks=[1] * (len(ops) - 1) + [1])
    rings = {ring.tensor: ring for ring in runner.schedule.rings}
    assert (rings[4].rows, rings[4].whole_bytes) == (1, 802_816)      # 16x112x112: one row
    assert (rings[6].rows, rings[6].whole_bytes) == (3, 4_816_896)    # 96x112x112 after ReLU6
    out = np.empty(runner.out_shape, np.float32)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        runner.run(x, out)
        allocated = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert allocated <= 64 * 1024
    print("MobileNetV2 stem + blocks 1-2 streamed: arena", runner.arena_bytes, "B, allocated", allocated, "B")
    assert runner.arena_bytes + allocated < 802_816

    expected = x[None].astype(np.float64)
    for op in ops:
        if isinstance(op, Conv):
            bias = np.zeros(op.weight.shape[0]) if op.bias is None else op.bias
            expected = conv_nd(expected, op.weight.astype(np.float64), bias.astype(np.float64),
                               strides=op.strides, pads=op.pads, dilations=op.dilations, group=op.group)
        else:
            expected = np.clip(expected, 0.0, 6.0)
    assert_close(out, expected[0])


# ---------------------------------------------------------------- fused blocks and the other members
def _block(rng, cin, hidden, cout, expand=(1, 1, (0, 0, 0, 0)), dw=(3, 1, (1, 1, 1, 1)),
           residual=False, chunks=1, act=("clip", (0.0, 6.0)), project=("", ())):
    def weight(*shape):
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    ke = expand[0] if expand else 0
    return Block(weight(hidden, cin, ke, ke) if expand else None,
                 weight(hidden, 1)[:, 0] if expand else None,
                 weight(hidden, 1, dw[0], dw[0]), weight(hidden, 1)[:, 0],
                 weight(cout, hidden, 1, 1), weight(cout, 1)[:, 0],
                 expand_stride=expand[1] if expand else 1,
                 expand_pads=expand[2] if expand else (0, 0, 0, 0),
                 expand_activation=act[0] if expand else "",
                 expand_activation_params=act[1] if expand else (),
                 dw_stride=dw[1], dw_pads=dw[2], dw_activation=act[0], dw_activation_params=act[1],
                 residual=residual, chunks=chunks, project_activation=project[0],
                 project_activation_params=project[1])


def test_block_state_scratch_and_input_ring_by_hand():
    """Block 16 -> 96 (1x1) -> dw 3x3 stride 2 pad 1 -> 24 on 16 x 8 x 8, two hidden slices
    (t = 2, 48 channels each), then a 1x1 conv.  Output row o finishes with hidden row 2o+1,
    which also opens row o+1: one accumulator row of 96 x 4 px (1,536 B, the block's state).
    Scratch (items): product 48 x 4 + hidden slice 48 x 8 + projection 24 x 4 = 672 (2,688 B).
    The block reads input rows 2o and 2o+1 for output row o (nothing older: the rest is in the
    accumulators), so the segment input needs no ring and the block's own output ring holds
    one row of 24 x 4 px (384 B) for the 1x1 conv."""
    rng = np.random.default_rng(5)
    b = _block(rng, 16, 96, 24, dw=(3, 2, (1, 1, 1, 1)), chunks=2)
    ops = [b, Conv(rng.standard_normal((8, 24, 1, 1)).astype(np.float32))]
    runner = SegmentRunner(ops, (16, 8, 8), 1, chunks=[1, 1])
    step = runner.steps[0]
    assert (step.state_bytes, step.scratch_bytes) == (1_536, 2_688)
    assert [step.rows_read(o) for o in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert runner.schedule.ring_rows() == {0: 1} and runner.schedule.rings[0].bytes == 384
    assert runner.kernels[0].state.nbytes == 1_536
    # arena, greedy by size: block scratch 2,688 at 0 (step 0), the state (both steps) at
    # 2,688, the conv's scratch (im2col 24 x 4 + its output row 8 x 4: 512 B, step 1) at 0
    # beside it in time, the ring (both steps) above the state at 4,224: 4,608 B
    planner = runner.planner
    assert [(planner.aligned_size(i), planner.offset(i)) for i in range(len(planner))] == \
        [(384, 4_224), (1_536, 2_688), (2_688, 0), (512, 0)]
    assert runner.arena_bytes == 4_608
    x = rng.standard_normal((16, 8, 8)).astype(np.float32)
    runner.arena.fill(np.nan)
    out = np.empty(runner.out_shape, np.float32)
    assert_close(runner.run(x, out), reference(ops, x))
    # a stride-1 block keeps two accumulator rows; with a 3x3 stride-2 expansion (the stem
    # fused in) output row o reads the input rows of hidden row o+1 only: 2o+1 .. 2o+3; the
    # last output row's window ends in padding, so it reads nothing new
    stem = _block(rng, 3, 8, 4, expand=(3, 2, (1, 1, 1, 1)))
    runner = SegmentRunner([stem], (3, 16, 16), 1)
    assert runner.steps[0].state_bytes == 2 * 8 * 8 * 4
    assert [runner.steps[0].rows_read(o) for o in (0, 1, 6, 7)] == \
        [[0, 1, 2, 3], [3, 4, 5], [13, 14, 15], []]


def test_block_chain_streams_with_line_buffers_and_counts_every_multiply_add_once():
    """Two blocks (stride 2, then stride 1 with residual) and a 1x1 conv, one-row calls: the
    output equals the float64 reference and the multiply-adds equal the unstreamed count."""
    rng = np.random.default_rng(6)
    ops = [_block(rng, 4, 24, 6, dw=(3, 2, (1, 1, 1, 1)), chunks=3),
           _block(rng, 6, 36, 6, residual=True, chunks=4, act=("hardswish", ())),
           Conv(rng.standard_normal((5, 6, 1, 1)).astype(np.float32))]
    x = rng.standard_normal((4, 14, 10)).astype(np.float32)
    runner = SegmentRunner(ops, x.shape, 1, chunks=[1, 1, 1])
    runner.arena.fill(np.nan)
    out = np.empty(runner.out_shape, np.float32)
    tensors = {}
    expected = reference(ops, x, tensors)
    assert_close(runner.run(x, out), expected, max(np.abs(t).max() for t in tensors.values()))
    # unstreamed: block 1 expands 14 x 10 px, dw 7 x 5 px, projects 7 x 5; block 2 on 7 x 5
    unstreamed = (24 * 4 * 140 + 24 * 9 * 35 + 6 * 24 * 35) + (36 * 6 * 35 + 36 * 9 * 35 + 6 * 36 * 35) \
        + 5 * 6 * 35
    assert runner.macs == unstreamed
    peak = streamed_peak(runner.steps, x.nbytes, runner.schedule)
    assert peak == x.nbytes + runner.schedule.ring_bytes + out.nbytes + sum(
        s.state_bytes for s in runner.steps) + max(s.scratch_bytes for s in runner.steps)
    assert minimal_streamed_peak(runner.steps, 14, x.nbytes, bands=(1,)).bytes <= peak


def test_branches_concat_shuffle_scale_and_resize_stream():
    """A ShuffleNet-like stride-2 unit (a shortcut pool beside a conv branch, Concat), a
    channel shuffle, a per-channel Scale, a Binary max, and both Resize modes."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((6, 6, 1, 1)).astype(np.float32)
    ops = [Conv(w),                                                       # 0
           Conv(rng.standard_normal((6, 1, 3, 3)).astype(np.float32), None, (2, 2), (1, 1, 1, 1), group=6),
           From(-1, Pool("avg", (3, 3), (2, 2), (1, 1, 1, 1))),   # 2: a shortcut beside 0-1
           Concat(skip=1, skip_first=True),                               # 3: 12 channels
           ChannelShuffle(3),
           Scale(rng.standard_normal(12).astype(np.float32), rng.standard_normal(12).astype(np.float32)),
           Binary("max", skip=3),
           Resize((2, 3), "linear"),
           Resize((3, 1), "nearest")]
    x = rng.standard_normal((6, 9, 7)).astype(np.float32)
    for band in (1, 4):
        runner = SegmentRunner(ops, x.shape, band)
        check_rings(runner.steps, 9, runner.schedule.calls, runner.schedule.ring_rows())
        runner.arena.fill(np.nan)
        out = np.empty(runner.out_shape, np.float32)
        assert out.shape == (12, 30, 12)
        assert_close(runner.run(x, out), reference(ops, x))


def test_new_members_refuse_bad_shapes_naming_the_step():
    rng = np.random.default_rng(8)
    w = np.ones((2, 2, 1, 1), np.float32)
    with pytest.raises(InvalidModelError, match=r"step 1 \(Concat\).*rows and columns"):
        SegmentRunner([Conv(w, strides=(2, 2)), Concat(skip=-1)], (2, 8, 8), 1)
    with pytest.raises(InvalidModelError, match=r"step 1 \(Binary\)"):
        SegmentRunner([Conv(w), Binary("pow", skip=-1)], (2, 8, 8), 1)
    with pytest.raises(InvalidModelError, match=r"step 0 \(Scale\).*one per channel"):
        SegmentRunner([Scale(np.ones(3, np.float32))], (2, 8, 8), 1)
    with pytest.raises(InvalidModelError, match=r"step 0 \(Resize\).*integer factors"):
        SegmentRunner([Resize((1.5, 2))], (2, 8, 8), 1)
    with pytest.raises(InvalidModelError, match=r"step 0 \(ChannelShuffle\)"):
        SegmentRunner([ChannelShuffle(3)], (2, 8, 8), 1)
    with pytest.raises(InvalidModelError, match=r"step 0 \(Block\).*residual"):
        SegmentRunner([_block(rng, 2, 4, 3, residual=True)], (2, 8, 8), 1)
    with pytest.raises(InvalidModelError, match=r"step 0 \(Block\).*chunks"):
        SegmentRunner([_block(rng, 2, 4, 2, chunks=5)], (2, 8, 8), 1)
    with pytest.raises(InvalidModelError, match=r"step 0 \(Block\).*activation"):
        SegmentRunner([_block(rng, 2, 4, 2, act=("gelu", ()))], (2, 8, 8), 1)
    with pytest.raises(InvalidModelError, match=r"step 0 \(From\).*source"):
        SegmentRunner([From(0, Conv(w))], (2, 8, 8), 1)
    with pytest.raises(InvalidModelError, match="read by no later step"):
        SegmentRunner([Conv(w), From(-1, Conv(w))], (2, 8, 8), 1)


@st.composite
def block_chains(draw):
    """Chains of Blocks (random expansion kernel/stride/pads, dw kernel/stride/pads, t,
    residual where shapes allow) mixed with 1x1 convs, Scale, Binary, Concat and Resize."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 14)), draw(st.integers(1, 9)))
    shapes = {-1: shape}
    ops = []
    for _ in range(draw(st.integers(1, 4))):
        c, h, w = shapes[len(ops) - 1]
        kind = draw(st.sampled_from(["block", "block", "block", "conv", "scale", "binary",
                                     "concat", "resize"]))
        if kind == "block":
            hidden = draw(st.integers(1, 8))
            expand = None if draw(st.booleans()) and hidden == c else None
            if hidden != c or draw(st.booleans()):
                ke = draw(st.sampled_from([1, 1, 3]))
                pads = tuple(draw(st.integers(0, ke - 1)) for _ in range(4))
                expand = (ke, draw(st.integers(1, 2)), pads)
            kd = draw(st.sampled_from([1, 3, 5]))
            dw = (kd, draw(st.integers(1, 3)), tuple(draw(st.integers(0, kd - 1)) for _ in range(4)))
            hh, wh = (h, w) if expand is None else (
                (h + expand[2][0] + expand[2][2] - expand[0]) // expand[1] + 1,
                (w + expand[2][1] + expand[2][3] - expand[0]) // expand[1] + 1)
            ho = (hh + dw[2][0] + dw[2][2] - kd) // dw[1] + 1 if hh >= 1 else 0
            wo = (wh + dw[2][1] + dw[2][3] - kd) // dw[1] + 1 if wh >= 1 else 0
            if min(hh, wh, ho, wo) < 1:
                continue
            cout = draw(st.integers(1, 5))
            residual = (cout, ho, wo) == (c, h, w) and draw(st.booleans())
            act = draw(st.sampled_from([("clip", (0.0, 6.0)), ("relu", ()), ("", ()), ("hardswish", ())]))
            project = draw(st.sampled_from([("", ()), ("relu", ()), ("hardswish", ())]))
            op = _block(rng, c, hidden, cout, expand, dw, residual, draw(st.integers(1, hidden)), act,
                        project)
            new = (cout, ho, wo)
        elif kind == "conv":
            m = draw(st.integers(1, 5))
            op, new = Conv(rng.standard_normal((m, c, 1, 1)).astype(np.float32)), (m, h, w)
        elif kind == "scale":
            op, new = Scale(rng.standard_normal(c).astype(np.float32)), (c, h, w)
        elif kind == "resize":
            factors = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
            op = Resize(factors, draw(st.sampled_from(["nearest", "linear"])))
            new = (c, h * factors[0], w * factors[1])
        else:
            same = [j for j in range(-1, len(ops)) if shapes[j][1:] == (h, w)
                    and (kind == "concat" or shapes[j] == (c, h, w))]
            skip = draw(st.sampled_from(same))
            if kind == "concat":
                op, new = Concat(skip, draw(st.booleans())), (c + shapes[skip][0], h, w)
            else:
                op, new = Binary(draw(st.sampled_from(["add", "sub", "mul", "max"])), skip), (c, h, w)
        ops.append(op)
        shapes[len(ops) - 1] = new
    assume(ops)
    if draw(st.booleans()):
        ops.append(GlobalAveragePool())
        shapes[len(ops) - 1] = (shapes[len(ops) - 2][0], 1, 1)
    driving = shapes[len(ops) - 2][1] if isinstance(ops[-1], GlobalAveragePool) else shapes[len(ops) - 1][1]
    band = draw(st.integers(1, driving))
    chunks = draw(st.none() | st.lists(st.integers(1, 3), min_size=len(ops), max_size=len(ops)))
    return ops, rng.standard_normal(shape).astype(np.float32), band, chunks


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_chains())
def test_random_block_chains_match_the_unsplit_reference(segment):
    ops, x, band, chunks = segment
    runner = SegmentRunner(ops, x.shape, band, chunks=chunks)
    check_rings(runner.steps, x.shape[1], runner.schedule.calls, runner.schedule.ring_rows())
    out = np.full(runner.out_shape, np.nan, np.float32)
    runner.arena.fill(np.nan)
    tensors = {}
    expected = reference(ops, x, tensors)
    assert_close(runner.run(x, out), expected, max(np.abs(t).max() for t in tensors.values()))


def test_mobilenet_v2_first_segment_of_blocks_runs_in_its_planned_arena():
    """MobileNetV2 1.0/224's blocks 1-4 as fused Blocks (the stem as block 1's 3x3 stride-2
    expansion, slices of 8 hidden channels, one-row calls), the segment that sets the
    whole-network streamed minimum of tools/segment_report.py.  The arena the runner lays out
    holds every ring, every block's accumulator rows and the largest scratch, and stays below
    the 282,688 B streamed figure less the 100,352 B output (which is the caller's array
    here); the run allocates at most 64 KiB beyond it; the output matches the float64
    reference."""
    rng = np.random.default_rng(9)
    relu6 = ("clip", (0.0, 6.0))
    s1, s2 = (3, 1, (1, 1, 1, 1)), (3, 2, (1, 1, 1, 1))
    ops = [_block(rng, 3, 32, 16, (3, 2, (1, 1, 1, 1)), s1, chunks=4, act=relu6),
           _block(rng, 16, 96, 24, dw=s2, chunks=12, act=relu6),
           _block(rng, 24, 144, 24, dw=s1, residual=True, chunks=18, act=relu6),
           _block(rng, 24, 144, 32, dw=s2, chunks=18, act=relu6)]
    x = rng.standard_normal((3, 224, 224)).astype(np.float32)
    runner = SegmentRunner(ops, x.shape, 1, chunks=[1, 1, 1, 1])
    rings = runner.schedule.ring_bytes
    states = sum(step.state_bytes for step in runner.steps)
    assert (rings, states) == (35_840, 130_816)
    # block 1's scratch: one tap 3 x 112, hidden slice and products 8 x 112, projection 16 x 112
    assert runner.steps[0].scratch_bytes == (336 + 896 + 896 + 1_792) * 4 == 15_680
    scratch = max(step.scratch_bytes for step in runner.steps[:-1])
    last = runner.steps[-1].scratch_bytes + 32 * 28 * 4      # + the row it builds for `out`
    assert runner.arena_bytes == rings + states + max(scratch, last)
    assert runner.arena_bytes <= 282_688 - 100_352
    out = np.empty(runner.out_shape, np.float32)
    runner.arena.fill(np.nan)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        runner.run(x, out)
        allocated = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    print("MobileNetV2 blocks 1-4 as Blocks: arena", runner.arena_bytes, "B, allocated", allocated, "B")
    assert allocated <= 64 * 1024
    tensors = {}
    expected = reference(ops, x, tensors)
    assert_close(out, expected, max(np.abs(t).max() for t in tensors.values()))


def test_blocks_from_edgerun_inverted_residual_nodes_match_the_node_op():
    """The first five InvertedResidual nodes of MobileNetV2 0.35/32 after edgerun's passes
    (block 1 with the stem fused in as its 3x3 stride-2 expansion, residual blocks included)
    become Blocks with the node's own weights and attributes, and stream as one segment: the
    output equals the nodes run one after the other by edgerun's op (float64)."""
    from edgerun import zoo
    from edgerun.loader import load_model
    from edgerun.ops.fused import _inverted_residual_compute
    from edgerun.passes import optimize
    from edgerun.shape_inference import infer_shapes

    graph = load_model(zoo.mobilenet_v2(0.35, 32, batch=1))
    shapes = {graph.inputs[0].name: (1, 3, 32, 32)}
    graph = infer_shapes(optimize(infer_shapes(graph, shapes)), shapes)
    nodes = [n for n in graph.nodes if n.op_type == "InvertedResidual"][:5]
    assert nodes[0].attrs["expand_stride"] == 2 and any(n.attrs.get("residual") for n in nodes)
    ops = [Block.from_node(n, graph.initializers, chunks=2) for n in nodes]
    x = np.random.default_rng(10).standard_normal((3, 32, 32)).astype(np.float32)
    expected = x[None].astype(np.float64)
    for node in nodes:
        weights = [None if not name else graph.initializers[name].astype(np.float64)
                   for name in node.inputs[1:]]
        expected = _inverted_residual_compute(node, [expected] + weights, graph.opset)[0]
    runner = SegmentRunner(ops, x.shape, 1)
    runner.arena.fill(np.nan)
    out = np.empty(runner.out_shape, np.float32)
    assert_close(runner.run(x, out), expected[0])


def test_squeeze_excitation_streams_around_its_whole_input():
    """MobileNetV3's SE inside one segment: x = a 1x1 conv; se pools x and runs its two small
    layers once x's last row is in; From(x) ChannelMul(se) scales x row by row; a 1x1 conv
    follows.  x's ring holds all its rows (the Mul's first row needs the finished vector);
    the vector is a ring of one row; the pooled sums are the SE's state."""
    rng = np.random.default_rng(11)
    ops = [Conv(rng.standard_normal((6, 3, 1, 1)).astype(np.float32)),
           SqueezeExcite(rng.standard_normal((2, 6)).astype(np.float32), rng.standard_normal(2).astype(np.float32),
                         rng.standard_normal((6, 2)).astype(np.float32), rng.standard_normal(6).astype(np.float32)),
           From(0, ChannelMul(vector=1)),
           Conv(rng.standard_normal((4, 6, 3, 3)).astype(np.float32), pads=(1, 1, 1, 1))]
    x = rng.standard_normal((3, 7, 5)).astype(np.float32)
    runner = SegmentRunner(ops, x.shape, 1)
    assert runner.schedule.ring_rows() == {0: 7, 1: 1, 2: 3}
    assert runner.steps[1].state_bytes == 6 * 4 and runner.steps[2].broadcast == 1
    runner.arena.fill(np.nan)
    out = np.empty(runner.out_shape, np.float32)
    tensors = {}
    expected = reference(ops, x, tensors)
    assert_close(runner.run(x, out), expected, max(np.abs(t).max() for t in tensors.values()))
    with pytest.raises(InvalidModelError, match=r"step 1 \(SqueezeExcite\).*later ChannelMul"):
        SegmentRunner(ops[:2], x.shape, 1)
    with pytest.raises(InvalidModelError, match=r"step 1 \(ChannelMul\).*vector"):
        SegmentRunner([ops[0], ChannelMul(vector=-1)], x.shape, 1)
