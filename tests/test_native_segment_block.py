"""The fused inverted-residual Block member on the native row kernels (segment.c, ER_SEG_BLOCK)
against the numpy Block (the oracle, itself checked against the unsplit float64 reference in
test_numpy_segment.py), at 1 and 2 threads (the same bits); and MobileNetV2's streamed plans
against its per-block plan on real photos."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgerun.errors import InvalidModelError, MemoryBudgetError
from edgerun.kernels import native_available
from edgerun.kernels.numpy_segment import Activation, Block, Conv, SegmentRunner
from scheduler.segments import block_geometry

pytestmark = pytest.mark.skipif(not native_available(), reason="native extension not built")

if native_available():
    from edgerun.kernels import _native
    from edgerun.kernels.native_segment import BLOCK, SEG_FIELDS, NativeSegmentRunner

# activations with |f(x)| <= |x| and slope at most 1.5: the error bound below holds through them
ACTIVATIONS = [("", ()), ("relu", ()), ("clip", (0.0, 6.0)), ("clip", (-0.5, 0.5)), ("hardswish", ()),
               ("leakyrelu", (0.1,))]


@contextlib.contextmanager
def split_every_call():
    previous = _native.block_min_part_macs(0)
    try:
        yield
    finally:
        _native.block_min_part_macs(previous)


def run(runner, x):
    runner.arena.fill(np.nan)        # nothing may read a slot or scratch no row was written to
    return runner.run(x, np.full(runner.out_shape, np.nan, np.float32))


def absolute(ops):
    """The same chain with every weight and bias made non-negative and no activations: run on |x|, it
    gives each output's sum of |terms| through every layer (what float32 rounding is relative to)."""
    def magnitude(op):
        if isinstance(op, Block):
            parts = {name: None if getattr(op, name) is None else np.abs(getattr(op, name))
                     for name in ("we", "be", "wd", "bd", "wp", "bp")}
            return Block(**parts, expand_stride=op.expand_stride, expand_pads=op.expand_pads,
                         dw_stride=op.dw_stride, dw_pads=op.dw_pads, residual=op.residual, chunks=op.chunks)
        if isinstance(op, Conv):
            return Conv(np.abs(op.weight), None if op.bias is None else np.abs(op.bias), op.strides, op.pads,
                        op.dilations, op.group)
        return Activation("")
    return [magnitude(op) for op in ops]


def assert_within_rounding(actual, expected, magnitude):
    """|actual - expected| at most 3e-4 of the sum of |terms| (per output value): each float32 dot
    product of at most ~150 terms rounds within 150 * 2^-24 of its sum of |terms|, three layers deep
    through activations of slope <= 1.5, in both implementations."""
    assert actual.shape == expected.shape and not np.isnan(actual).any()
    error = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    bound = 3e-4 * magnitude.astype(np.float64) + 1e-30
    assert (error <= bound).all(), float((error / bound).max())


# ---------------------------------------------------------------- random blocks
@st.composite
def blocks(draw):
    """One or two blocks (the second after an optional plain conv) with random expansion (none, 1x1,
    or a k x k strided padded conv), depthwise kernel / stride / pads, activations, chunks and
    residual, on a small input; a random band and call policy."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    cin, height, width = draw(st.integers(1, 5)), draw(st.integers(1, 14)), draw(st.integers(1, 40))
    ops, shape = [], (cin, height, width)

    def weight(*dims):
        return (rng.standard_normal(dims) / np.sqrt(max(1, np.prod(dims[1:])))).astype(np.float32)

    def maybe_bias(n):
        return weight(n, 1)[:, 0] if draw(st.booleans()) else None

    for _ in range(draw(st.integers(1, 2))):
        if ops and draw(st.booleans()):
            cout = draw(st.integers(1, 5))
            ops.append(Conv(weight(cout, shape[0], 1, 1), maybe_bias(cout)))
            shape = (cout,) + shape[1:]
        c = shape[0]
        expansion = draw(st.sampled_from(["none", "1x1", "kxk"]))
        hidden = c if expansion == "none" else draw(st.integers(1, 24))
        expand = None
        if expansion == "1x1":
            expand = (1, 1, (0, 0, 0, 0))
        elif expansion == "kxk":
            ke = draw(st.sampled_from([1, 2, 3]))
            expand = (ke, draw(st.integers(1, 2)), tuple(draw(st.integers(0, ke - 1)) for _ in range(4)))
        kd = draw(st.sampled_from([1, 3, 5]))
        dw = (kd, draw(st.integers(1, 2)), tuple(draw(st.integers(0, kd - 1)) for _ in range(4)))
        cout = draw(st.integers(1, 6))
        chunks = draw(st.integers(1, hidden))
        try:
            geometry = block_geometry(shape, hidden, cout, expand, dw, chunks)
        except Exception:
            assume(False)
        residual = geometry.out_shape == shape and draw(st.booleans())
        acts = [draw(st.sampled_from(ACTIVATIONS)) for _ in range(3)]
        ops.append(Block(
            weight(hidden, c, expand[0], expand[0]) if expand else None, maybe_bias(hidden) if expand else None,
            weight(hidden, 1, kd, kd), maybe_bias(hidden), weight(cout, hidden, 1, 1), maybe_bias(cout),
            expand_stride=expand[1] if expand else 1, expand_pads=expand[2] if expand else (0, 0, 0, 0),
            expand_activation=acts[0][0] if expand else "", expand_activation_params=acts[0][1] if expand else (),
            dw_stride=dw[1], dw_pads=dw[2], dw_activation=acts[1][0], dw_activation_params=acts[1][1],
            residual=residual, chunks=chunks, project_activation=acts[2][0],
            project_activation_params=acts[2][1]))
        shape = geometry.out_shape
    x = rng.standard_normal((cin, height, width)).astype(np.float32)
    band = draw(st.integers(1, 4))
    chunks = [1] * (len(ops) - 1) + [band] if draw(st.booleans()) else None
    return ops, x, band, chunks


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(blocks())
def test_random_blocks_match_numpy_and_give_the_same_bits_on_two_threads(case):
    ops, x, band, chunks = case
    try:
        numpy_runner = SegmentRunner(ops, x.shape, band, chunks=chunks)
    except InvalidModelError:
        assume(False)
    expected = run(numpy_runner, x)
    magnitude = run(SegmentRunner(absolute(ops), x.shape, band, chunks=chunks), np.abs(x))
    runner = NativeSegmentRunner(ops, x.shape, band, chunks=chunks, threads=1)
    blocks_at = [i for i, op in enumerate(ops) if isinstance(op, Block)]
    assert set(blocks_at) <= set(runner.native_steps) and all(native for native, _ in runner.program)
    assert list(runner.step_table[blocks_at, 0]) == [BLOCK] * len(blocks_at)
    one = run(runner, x)
    assert_within_rounding(one, expected, magnitude)
    with split_every_call():
        two = run(NativeSegmentRunner(ops, x.shape, band, chunks=chunks, threads=2), x)
    assert two.tobytes() == one.tobytes()


def test_a_worked_block_by_hand():
    """No expansion, one channel, a 3x3 depthwise of ones (pads 1), projection x2, residual: each output
    is twice its 3x3 neighbourhood's sum plus the input, on a 4x3 input of 0..11."""
    ones = np.ones((1, 1, 3, 3), np.float32)
    block = Block(None, None, ones, None, np.full((1, 1, 1, 1), 2.0, np.float32), None, residual=True)
    x = np.arange(12, dtype=np.float32).reshape(1, 4, 3)
    padded = np.pad(x[0], 1)
    sums = np.array([[padded[r:r + 3, c:c + 3].sum() for c in range(3)] for r in range(4)], np.float32)
    runner = NativeSegmentRunner([block], x.shape, 1)
    assert run(runner, x).tolist() == (2 * sums + x[0])[None].tolist()


# ---------------------------------------------------------------- refusals
def test_bad_block_tables_are_refused():
    rng = np.random.default_rng(3)
    block = Block(rng.standard_normal((8, 2, 1, 1)).astype(np.float32), None,
                  rng.standard_normal((8, 1, 3, 3)).astype(np.float32), None,
                  rng.standard_normal((2, 8, 1, 1)).astype(np.float32), None, dw_pads=(1, 1, 1, 1),
                  residual=True, chunks=2)
    x = rng.standard_normal((2, 6, 5)).astype(np.float32)
    runner = NativeSegmentRunner([block], x.shape, 1)
    out = np.empty(runner.out_shape, np.float32)
    calls = runner.program[0][1]
    fields = {name: i for i, name in enumerate(SEG_FIELDS)}

    def segment_run(steps):
        _native.segment_run(runner.arena, x, out, runner.params, runner.tensors, steps, calls, 1)

    segment_run(runner.step_table)
    for field, value, message in [("state_floats", 8 * 5, "accumulator rows"),
                                  ("state", runner.arena.size, "out of bounds"),
                                  ("scratch_floats", 3, "slice of a hidden row"),
                                  ("chunk", 9, "chunk in 1..hidden"),
                                  ("we", runner.params.size - 3, "out of bounds"),
                                  ("ek", 0, "input's shape as hidden shape"),
                                  ("sw", 2, "square"),
                                  ("dw_act_kind", 99, "out of bounds")]:
        bad = runner.step_table.copy()
        bad[0, fields[field]] = value
        with pytest.raises(ValueError, match=message):
            segment_run(bad)


# ---------------------------------------------------------------- MobileNetV2 end to end
@pytest.fixture(scope="module")
def pretrained_plans():
    from edgerun import InferenceSession
    from edgerun.zoo import mobilenet_v2

    model = mobilenet_v2(pretrained=True, batch=1).SerializeToString()
    with pytest.raises(MemoryBudgetError) as info:
        InferenceSession(model, memory_budget=1, kernels_backend="native", threads=1)
    sessions = {budget: InferenceSession(model, memory_budget=budget, kernels_backend="native", threads=1)
                for budget in (None, 400_000, info.value.minimum_bytes)}
    return sessions


def test_streamed_mobilenet_v2_plans_classify_photos_as_the_per_block_plan(pretrained_plans):
    """The minimum and 400,000 B plans stream the early blocks through the native Block kernel; on the
    sample photos their logits are within 1e-5 of the largest logit of the per-block (fastest) plan's,
    with the same top-5."""
    import skimage.data

    from edgerun.zoo import preprocess_imagenet, sample_image

    fastest = pretrained_plans[None]
    streamed = [session for budget, session in pretrained_plans.items() if budget is not None]
    assert not fastest.plan.segments
    for session in streamed:
        assert session.plan.segments and session.plan.peak_bytes <= 400_000
        kernels = [step.kernel for step in session.compiled.steps if step.kind == "segment"]
        assert any(BLOCK in runner.step_table[:, 0] for runner in kernels)
        assert all(all(native for native, _ in runner.program) for runner in kernels)
    for photo in (skimage.data.chelsea(), skimage.data.coffee(), sample_image()):
        feeds = {"input": preprocess_imagenet(photo)}
        expected = fastest.run(None, feeds)[0][0]
        for session in streamed:
            logits = session.run(None, feeds)[0][0]
            assert float(np.abs(logits - expected).max()) <= 1e-5 * float(np.abs(expected).max())
            assert list(np.argsort(-logits)[:5]) == list(np.argsort(-expected)[:5])
