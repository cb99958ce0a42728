"""The row kernels: conv.c's shifted rows and steps.c's vectorised pooling rows.

conv.c called directly with every band height and slab of groups the geometry allows: the shifted-rows
path (any stride, dilation, pads; tap blocks of whole channels when a group has more than 256 taps; bands
of output rows sized by the scratch) and the banded im2col one, against the float64 reference, with a
tolerance from the magnitudes summed (|w| * |x| + |b| + |s|); the same bits on one and two threads.
2-D max / average pooling of rows wide enough for the vector paths (and their edges), with NaN and
infinities, against the reference op: max exactly, averages within the rounding of their sums."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgerun import kernels, ops
from edgerun.ir import Node
from edgerun.kernels.activations import Activation
from edgerun.ops.activation import apply_activation
from edgerun.ops.conv import conv_nd

pytestmark = pytest.mark.skipif(not kernels.native_available(), reason="the native kernels are not built")


@st.composite
def geometries(draw):
    group = draw(st.sampled_from([1, 1, 2, 3, 5]))
    # up to 32 channels a group: 3x3 and larger kernels then pass 256 taps, two or more tap blocks
    cg = draw(st.sampled_from([1, 2, 3, 8, 16, 30, 32]))
    og = draw(st.integers(1, 20))
    kh, kw = draw(st.sampled_from([(3, 3), (3, 3), (5, 5), (7, 7), (1, 3), (3, 1), (2, 2), (1, 1)]))
    sh, sw = draw(st.sampled_from([(1, 1), (1, 1), (2, 2), (1, 2), (3, 1)]))
    dh, dw = draw(st.sampled_from([(1, 1), (1, 1), (2, 2), (1, 3)]))
    pads = tuple(draw(st.integers(0, k)) for k in (kh, kw, kh, kw))
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    h = draw(st.integers(max(1, eh - pads[0] - pads[2]), 13))
    w = draw(st.integers(max(1, ew - pads[1] - pads[3]), 37))
    ho, wo = (h + pads[0] + pads[2] - eh) // sh + 1, (w + pads[1] + pads[3] - ew) // sw + 1
    return dict(group=group, cin=group * cg, cout=group * og, kernel=(kh, kw), strides=(sh, sw),
                dilations=(dh, dw), pads=pads, size=(h, w), out=(ho, wo), band_rows=draw(st.integers(1, ho)),
                slab_groups=draw(st.integers(1, group)), with_sum=draw(st.booleans()),
                activation=draw(st.sampled_from([("", ()), ("relu", ()), ("clip", (-0.5, 0.5)), ("sigmoid", ())])),
                seed=draw(st.integers(0, 2**16)))


def arrays(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["cin"],) + case["size"]).astype(np.float32)
    w = rng.standard_normal((case["cout"], case["cin"] // case["group"]) + case["kernel"]).astype(np.float32)
    b = rng.standard_normal(case["cout"]).astype(np.float32)
    s = rng.standard_normal((case["cout"],) + case["out"]).astype(np.float32) if case["with_sum"] else None
    return x, w, b, s


def expected_and_tolerance(case, x, w, b, s):
    kw = dict(strides=case["strides"], pads=case["pads"], dilations=case["dilations"], group=case["group"])
    y = conv_nd(x[None].astype(np.float64), w.astype(np.float64), b.astype(np.float64), **kw)[0]
    magnitude = conv_nd(np.abs(x[None]).astype(np.float64), np.abs(w).astype(np.float64),
                        np.abs(b).astype(np.float64), **kw)[0]
    if s is not None:
        y, magnitude = y + s, magnitude + np.abs(s)
    name, params = case["activation"]
    # float32 rounding of each partial sum: at most about (taps + 2) * eps * the sum of magnitudes; the
    # activations here are 1-Lipschitz
    taps = case["cin"] // case["group"] * case["kernel"][0] * case["kernel"][1]
    eps = np.finfo(np.float32).eps
    expected = apply_activation(y.astype(np.float32), name, params)
    # plus the rounding of the result to float32 and of the activation's own arithmetic
    return expected, (taps + 3) * eps * magnitude + 4 * eps * np.abs(expected).astype(np.float64) + 1e-30


def run(case, x, w, b, s, threads):
    from edgerun.kernels import native
    geometry = native.conv_geometry(x.shape, (case["cout"],) + case["out"], w.shape, case["group"], case["strides"],
                                    case["dilations"], case["pads"], case["band_rows"], case["slab_groups"])
    packed = native.pack_conv_weights(w, case["group"], case["dilations"])
    cols = np.full(native.conv_sizes(geometry)[1], np.nan, np.float32)   # nothing may read an unwritten float
    out = np.full((case["cout"],) + case["out"], np.nan, np.float32)
    native.conv(x, packed, b, s, out, cols, geometry, Activation(*case["activation"]), threads)
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(geometries())
def test_every_band_and_slab_matches_the_reference_with_the_same_bits_on_two_threads(case):
    from edgerun.kernels import _native
    x, w, b, s = arrays(case)
    expected, tolerance = expected_and_tolerance(case, x, w, b, s)
    previous = _native.block_min_part_macs(0)   # split every call, however small
    try:
        one = run(case, x, w, b, s, 1)
        two = run(case, x, w, b, s, 2)
    finally:
        _native.block_min_part_macs(previous)
    assert np.all(np.abs(one.astype(np.float64) - expected) <= tolerance), float(np.max(np.abs(one - expected)))
    assert one.tobytes() == two.tobytes()


def test_a_resnet_3x3_layer_in_narrow_bands_of_two_tap_blocks():
    """64 channels of 3x3 (576 taps: blocks of 28 channels), 1-row bands asked for, sum and ReLU."""
    case = dict(group=1, cin=64, cout=24, kernel=(3, 3), strides=(1, 1), dilations=(1, 1), pads=(1, 1, 1, 1),
                size=(9, 20), out=(9, 20), band_rows=1, slab_groups=1, with_sum=True, activation=("relu", ()),
                seed=3)
    x, w, b, s = arrays(case)
    expected, tolerance = expected_and_tolerance(case, x, w, b, s)
    out = run(case, x, w, b, s, 2)
    assert np.all(np.abs(out.astype(np.float64) - expected) <= tolerance)


SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)


@st.composite
def pools(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = (draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1)), draw(st.integers(0, kh - 1)),
            draw(st.integers(0, kw - 1)))
    h, w = draw(st.integers(kh, 9)), draw(st.integers(kw, 70))
    kind = draw(st.sampled_from(["MaxPool", "AveragePool", "AveragePool+pads"]))
    return dict(kind=kind, kernel=(kh, kw), strides=(sh, sw), pads=pads, size=(h, w), channels=draw(st.integers(1, 3)),
                special_share=draw(st.sampled_from([0.0, 0.0, 0.05])), seed=draw(st.integers(0, 2**16)))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pools())
def test_pooling_rows_match_the_reference_op_with_nan_and_infinities(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((1, case["channels"]) + case["size"]).astype(np.float32)
    specials = rng.random(x.shape) < case["special_share"]
    x[specials] = rng.choice(SPECIALS, int(specials.sum()))
    op = case["kind"].split("+")[0]
    attrs = {"kernel_shape": list(case["kernel"]), "strides": list(case["strides"]), "pads": list(case["pads"])}
    if case["kind"].endswith("+pads"):
        attrs["count_include_pad"] = 1
    node = Node(op, ["x"], ["y"], attrs, "pool")
    with np.errstate(invalid="ignore"):   # inf + -inf in a window: NaN, as it should be
        expected = ops.definition(op).compute(node, [x], 13)[0]
    kernel = ops.arena_kernel(node, [np.float32], [np.float32], backend="native", threads=2)
    assert kernel is not ops.definition(op).step
    y = np.full(expected.shape, 7.0, np.float32)
    kernel.run(node, [x], [y], {name: np.empty(size // 4, np.float32) for name, size in
                                kernel.scratch_bytes(node, [x.shape], [expected.shape]).items()})
    assert np.array_equal(np.isnan(y), np.isnan(expected))
    finite = np.isfinite(expected)
    assert np.array_equal(y[~finite & ~np.isnan(expected)], expected[~finite & ~np.isnan(expected)])
    if op == "MaxPool":
        assert np.array_equal(y[finite], expected[finite])
    else:   # a sum of at most kh * kw values, then one division (here and in the reference)
        bound = np.abs(x[np.isfinite(x)]).max(initial=0.0) if x.size else 0.0
        taps = case["kernel"][0] * case["kernel"][1]
        assert np.all(np.abs(y[finite] - expected[finite]) <= 2 * (taps + 1) * np.finfo(np.float32).eps * bound + 1e-30)
