"""Streamed segments on the native row kernels (edgerun/kernels/native_segment.py, segment.c)
against the numpy SegmentRunner (the oracle, itself checked against a float64 reference in
test_numpy_segment.py) and against themselves at 1 and 2 threads (the same bits)."""

from __future__ import annotations

import contextlib
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgerun.errors import InvalidInputError, InvalidModelError
from edgerun.kernels import native_available
from edgerun.kernels.numpy_segment import (
    Activation,
    Add,
    Conv,
    GlobalAveragePool,
    Pool,
    SegmentRunner,
)

pytestmark = pytest.mark.skipif(not native_available(), reason="native extension not built")

if native_available():
    from edgerun.kernels import _native
    from edgerun.kernels.native_segment import (
        AVGPOOL,
        DEPTHWISE,
        GAP,
        IM2COL,
        MAXPOOL,
        POINTWISE,
        NativeSegmentRunner,
    )

ACTIVATIONS = [Activation("relu"), Activation("clip", (-0.5, 0.5)), Activation("clip", (0.0, 6.0)),
               Activation("hardswish"), Activation("hardsigmoid", (0.2, 0.5)),
               Activation("leakyrelu", (0.1,)), Activation("sigmoid")]


@contextlib.contextmanager
def split_every_call():
    """Every native call is shared out between the threads, however small."""
    previous = _native.block_min_part_macs(0)
    try:
        yield
    finally:
        _native.block_min_part_macs(previous)


def assert_close(actual, expected, scale=0.0):
    """Max error at most 1e-5 of the largest expected value (or of `scale`: the largest value the
    chain computes on the way, see largest_value_in_chain)."""
    assert actual.shape == expected.shape
    assert not np.isnan(actual).any()
    scale = max(float(np.abs(expected).max()), scale, 1e-30)
    assert float(np.abs(actual.astype(np.float64) - expected).max()) <= 1e-5 * scale


def largest_value_in_chain(ops, x):
    """The largest |value| of the input and of every step's output. float32 rounding happens at
    that magnitude, and a later clip, sigmoid or average can shrink the output far below it."""
    return max([float(np.abs(x).max())] +
               [float(np.abs(run_numpy(ops[:end], x, 1, None)).max()) for end in range(1, len(ops) + 1)])


def run_numpy(ops, x, band, chunks):
    runner = SegmentRunner(ops, x.shape, band, chunks=chunks)
    runner.arena.fill(np.nan)
    return runner.run(x, np.full(runner.out_shape, np.nan, np.float32))


def run_native(ops, x, band, chunks, threads):
    runner = NativeSegmentRunner(ops, x.shape, band, chunks=chunks, threads=threads)
    runner.arena.fill(np.nan)   # nothing may read a slot no row was written to
    return runner, runner.run(x, np.full(runner.out_shape, np.nan, np.float32))


# ---------------------------------------------------------------- random chains
@st.composite
def segments(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    channels, height, width = draw(st.integers(1, 6)), draw(st.integers(1, 16)), draw(st.integers(1, 20))
    shapes = {-1: (channels, height, width)}
    ops = []
    for _ in range(draw(st.integers(1, 6))):
        c, h, w = shapes[len(ops) - 1]
        kind = draw(st.sampled_from(["conv", "conv", "pointwise", "pool", "act", "add"]))
        if kind == "add":
            same = [j for j in range(-1, len(ops)) if shapes[j] == (c, h, w)]
            op, shape = Add(draw(st.sampled_from(same))), (c, h, w)
        elif kind == "act":
            op, shape = draw(st.sampled_from(ACTIVATIONS)), (c, h, w)
        else:
            if kind == "pointwise":
                kernel, strides, dilations = (1, 1), (draw(st.integers(1, 2)), 1), (1, 1)
            else:
                kernel = (draw(st.integers(1, 7)), draw(st.integers(1, 5)))
                strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
                dilations = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
            effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
            pads = tuple(draw(st.integers(0, effective[i % 2] - 1)) for i in range(4))
            ho = (h + pads[0] + pads[2] - effective[0]) // strides[0] + 1
            wo = (w + pads[1] + pads[3] - effective[1]) // strides[1] + 1
            if ho < 1 or wo < 1:
                continue
            if kind == "pool":
                if any(p >= k for p, k in zip(pads, kernel * 2)):
                    continue   # ONNX pooling asks pads < kernel
                op = Pool(draw(st.sampled_from(["max", "avg"])), kernel, strides, pads, dilations,
                          count_include_pad=draw(st.booleans()))
                shape = (c, ho, wo)
            else:
                divisors = [g for g in range(1, c + 1) if c % g == 0]
                group = draw(st.sampled_from(divisors))
                m = group * draw(st.integers(1, 3 if group > 1 else 7))
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
    x = rng.standard_normal(shapes[-1]).astype(np.float32)
    return ops, x, band, chunks


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segments())
def test_random_segments_match_numpy_and_give_the_same_bits_on_two_threads(segment):
    ops, x, band, chunks = segment
    try:
        expected = run_numpy(ops, x, band, chunks)
    except InvalidModelError as error:   # only a pool window made of padding alone is refused
        assert "padding only" in str(error)
        assume(False)
    runner, one = run_native(ops, x, band, chunks, threads=1)
    assert runner.native_steps and not set(runner.native_steps) & runner.fused
    assert_close(one, expected.astype(np.float64), largest_value_in_chain(ops, x))
    with split_every_call():
        _, two = run_native(ops, x, band, chunks, threads=2)
    assert two.tobytes() == one.tobytes()


def test_every_step_kind_runs_natively_and_activations_fuse():
    """A chain using each native kind once: which steps run in C, which activations fold into their
    producer (not the one after the conv whose raw output a later Add reads), and the result."""
    rng = np.random.default_rng(5)
    ops = [Conv(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), None, (2, 2), (1, 1, 1, 1)),  # im2col
           Activation("relu"),                                                                   # fused
           Conv(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), None, pads=(1, 1, 1, 1), group=8),
           Activation("hardswish"),                                                              # fused
           Conv(rng.standard_normal((8, 8, 1, 1)).astype(np.float32)),                           # pointwise
           Activation("sigmoid"),                                   # not fused: step 4 is read by step 7
           Pool("max", (3, 3), (1, 1), (1, 1, 1, 1)),
           Add(4),
           Pool("avg", (2, 2), (2, 2)),
           GlobalAveragePool()]
    x = rng.standard_normal((3, 20, 18)).astype(np.float32)
    runner, out = run_native(ops, x, 2, None, threads=1)
    assert runner.fused == {1, 3}
    assert runner.native_steps == [0, 2, 4, 5, 6, 7, 8, 9]
    assert list(runner.step_table[[0, 2, 4, 6, 8, 9], 0]) == [IM2COL, DEPTHWISE, POINTWISE, MAXPOOL, AVGPOOL, GAP]
    assert [native for native, _ in runner.program] == [True]
    assert_close(out, run_numpy(ops, x, 2, None).astype(np.float64))


def test_a_step_the_c_tables_cannot_hold_runs_on_numpy_between_native_calls():
    """A 1x65 kernel is wider than the C row tables: that step alone runs on its numpy row kernel,
    in the same arena, and the native steps around it read and write the same rings."""
    rng = np.random.default_rng(6)
    ops = [Conv(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), None, pads=(1, 1, 1, 1)),
           Activation("relu"),
           Conv(rng.standard_normal((3, 4, 1, 65)).astype(np.float32) / 8, None, pads=(0, 32, 0, 32)),
           Conv(rng.standard_normal((3, 1, 3, 3)).astype(np.float32), None, pads=(1, 1, 1, 1), group=3),
           Activation("clip", (-1.0, 1.0))]
    x = rng.standard_normal((2, 9, 70)).astype(np.float32)
    runner, out = run_native(ops, x, 1, [1, 1, 1, 1, 1], threads=1)
    # the relu stays a step of its own (step 2, numpy, might read step 0's output); the clip fuses
    assert runner.native_steps == [0, 1, 3] and runner.fused == {4}
    assert [native for native, _ in runner.program][:4] == [True, False, True, False]
    assert_close(out, run_numpy(ops, x, 1, [1, 1, 1, 1, 1]).astype(np.float64))


def test_member_kinds_the_runner_does_not_know_run_on_numpy(monkeypatch):
    """A member kind NativeSegmentRunner does not know (here: a conv kernel of another class, as a
    fused Block or a Concat member would be) runs on its own numpy row kernel; no activation is
    fused into a step whose output such a member might read."""
    from edgerun.kernels import numpy_segment

    class UnknownMember(numpy_segment._ConvRows):
        pass

    bind = numpy_segment._bind

    def bind_unknown(op, index, *args, **kwargs):
        kernel = bind(op, index, *args, **kwargs)
        if index == 3:
            kernel.__class__ = UnknownMember
        return kernel

    monkeypatch.setattr(numpy_segment, "_bind", bind_unknown)
    rng = np.random.default_rng(8)
    ops = [Conv(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), None, pads=(1, 1, 1, 1)),
           Activation("relu"),
           Conv(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), None, (2, 2), (1, 1, 1, 1), group=4),
           Conv(rng.standard_normal((3, 4, 1, 1)).astype(np.float32)),
           Activation("relu")]
    x = rng.standard_normal((2, 11, 13)).astype(np.float32)
    runner, out = run_native(ops, x, 2, None, threads=1)
    assert runner.native_steps == [0, 1, 2, 4] and runner.fused == set()
    assert any(not native and {step for step, _, _ in calls} == {3} for native, calls in runner.program)
    assert_close(out, run_numpy(ops, x, 2, None).astype(np.float64))


# ---------------------------------------------------------------- MobileNetV2 and memory
def mobilenet_v2_stem_and_blocks(rng, blocks: int):
    def weight(*shape):
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    def bias(m):
        return (0.1 * rng.standard_normal(m)).astype(np.float32)

    relu6 = Activation("clip", (0.0, 6.0))
    ops = [Conv(weight(32, 3, 3, 3), bias(32), (2, 2), (1, 1, 1, 1)), relu6,
           Conv(weight(32, 1, 3, 3), bias(32), pads=(1, 1, 1, 1), group=32), relu6,
           Conv(weight(16, 32, 1, 1), bias(16))]
    specs = [(16, 96, 24, 2, False), (24, 144, 24, 1, True), (24, 144, 32, 2, False)][:blocks - 1]
    for cin, hidden, cout, stride, residual in specs:
        block_input = len(ops) - 1
        ops += [Conv(weight(hidden, cin, 1, 1), bias(hidden)), relu6,
                Conv(weight(hidden, 1, 3, 3), bias(hidden), (stride, stride), (1, 1, 1, 1), group=hidden), relu6,
                Conv(weight(cout, hidden, 1, 1), bias(cout))]
        if residual:
            ops.append(Add(block_input))
    return ops


def test_mobilenet_v2_stem_and_two_blocks_match_numpy_and_allocate_nothing():
    """MobileNetV2 1.0/224's stem and blocks 1-2 (ReLU6 as Clip steps), one-row calls, band 1:
    native (1 and 2 threads, the same bits) against the numpy runner; the native run allocates at
    most 64 KiB beyond the arena, which is the numpy runner's arena byte for byte."""
    rng = np.random.default_rng(7)
    ops = mobilenet_v2_stem_and_blocks(rng, 2)
    x = rng.standard_normal((3, 224, 224)).astype(np.float32)
    chunks = [1] * len(ops)
    expected = run_numpy(ops, x, 1, chunks)
    runner = NativeSegmentRunner(ops, x.shape, 1, chunks=chunks, threads=1)
    assert runner.arena_bytes == SegmentRunner(ops, x.shape, 1, chunks=chunks).arena_bytes
    assert runner.fused == {1, 3, 6, 8} and len(runner.program) == 1
    runner.arena.fill(np.nan)
    out = np.full(runner.out_shape, np.nan, np.float32)
    runner.run(x, out)            # warm: the first run starts nothing lazily in Python
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        runner.run(x, out)
        allocated = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    print("native MobileNetV2 stem + blocks 1-2: arena", runner.arena_bytes, "B, allocated", allocated, "B")
    assert allocated <= 64 * 1024
    assert_close(out, expected.astype(np.float64))
    with split_every_call():
        two = NativeSegmentRunner(ops, x.shape, 1, chunks=chunks, threads=2)
        assert two.run(x, np.empty_like(out)).tobytes() == out.tobytes()


# ---------------------------------------------------------------- refusals
def test_bad_threads_and_bad_tables_are_refused():
    w = np.ones((2, 2, 3, 3), np.float32)
    with pytest.raises(InvalidInputError, match="threads"):
        NativeSegmentRunner([Conv(w, pads=(1, 1, 1, 1))], (2, 8, 8), 1, threads=0)
    runner = NativeSegmentRunner([Conv(w, pads=(1, 1, 1, 1)), Activation("relu"), Conv(w)], (2, 8, 8), 1)
    x, out = np.zeros((2, 8, 8), np.float32), np.zeros(runner.out_shape, np.float32)
    with pytest.raises(InvalidInputError, match="input"):
        runner.run(np.zeros((2, 8, 7), np.float32), out)
    calls = runner.program[0][1]

    def segment_run(tensors=runner.tensors, steps=runner.step_table, calls=calls, arena=runner.arena):
        _native.segment_run(arena, x, out, runner.params, tensors, steps, calls, 1)

    segment_run()
    bad = runner.tensors.copy()
    bad[2, 1] = runner.arena.size        # the ring of step 1 starts at the arena's end
    with pytest.raises(ValueError, match="ring is not inside the arena"):
        segment_run(tensors=bad)
    bad = runner.step_table.copy()
    bad[0, 17] = runner.params.size - 1  # weights past the parameters
    with pytest.raises(ValueError, match="out of bounds"):
        segment_run(steps=bad)
    bad = runner.step_table.copy()
    bad[2, 5] += 1                       # an output height that is not the output tensor's
    with pytest.raises(ValueError, match="output shape"):
        segment_run(steps=bad)
    bad = calls.copy()
    bad[-1, 2] = 99                      # rows past the step's output
    with pytest.raises(ValueError, match="rows"):
        segment_run(calls=bad)
    with pytest.raises(ValueError, match="overlap"):
        _native.segment_run(runner.arena, runner.arena[:128], out, runner.params, runner.tensors,
                            runner.step_table, calls, 1)
    with pytest.raises(ValueError, match="int32"):
        segment_run(calls=calls.astype(np.int64))
