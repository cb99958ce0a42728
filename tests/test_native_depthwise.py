"""The native depthwise convolution (depthwise.c) against a float64 numpy reference, over kernel
sizes, strides, asymmetric and oversized pads, tiny and wide planes and every in-register activation.

Split output-row ranges (threads) giving the same bits are covered by test_native_threads.py."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgerun.kernels import Activation, native, native_available
from test_kernels_block import reference_conv

pytestmark = pytest.mark.skipif(not native_available(), reason="native extension not built")

ACTIVATIONS = [Activation(), Activation("relu"), Activation("clip", (-0.5, 0.75)), Activation("hardswish")]


def reference_depthwise(x, w, b, stride, pads):
    """float64 direct depthwise convolution: x (C, H, W), w (C, k, k), pads (top, left, bottom, right)."""
    return reference_conv(x, w[:, None], b, stride, pads, groups_equal_channels=True)


def activate(y, activation):
    if activation.kind == "relu":
        return np.maximum(y, 0)
    if activation.kind == "clip":
        return np.clip(y, *activation.params)
    if activation.kind == "hardswish":
        return y * np.clip(y / 6 + 0.5, 0, 1)
    return y


def check(channels, height, width, kernel, stride, pads, activation, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((channels, height, width)).astype(np.float32)
    w = rng.standard_normal((channels, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32)
    expected = activate(reference_depthwise(x, w, b, stride, pads), activation)
    out = np.full(expected.shape, np.nan, np.float32)
    native.depthwise_conv(x, w, b, out, stride, pads, activation)
    scale = 1.0 + np.abs(expected)
    assert np.all(np.abs(out.astype(np.float64) - expected) <= 1e-5 * scale * kernel * kernel), (
        f"k{kernel} s{stride} pads {pads} {height}x{width} {activation}")
    # same plane again, computed alone: no dependence on the neighbouring channels
    alone = np.empty((1,) + expected.shape[1:], np.float32)
    native.depthwise_conv(x[-1:].copy(), w[-1:].copy(), b[-1:].copy(), alone, stride, pads, activation)
    assert np.array_equal(alone[0], out[-1])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kernel=st.sampled_from([1, 2, 3, 4, 5, 7]), stride=st.integers(1, 3),
       pads=st.tuples(*[st.integers(0, 3)] * 4), height=st.integers(1, 20), width=st.integers(1, 20),
       activation=st.sampled_from(ACTIVATIONS), seed=st.integers(0, 2**16))
def test_depthwise_matches_reference_on_small_planes(kernel, stride, pads, height, width, activation, seed):
    if height + pads[0] + pads[2] < kernel or width + pads[1] + pads[3] < kernel:
        return
    check(3, height, width, kernel, stride, pads, activation, seed)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kernel=st.sampled_from([3, 5]), stride=st.integers(1, 2), pads=st.tuples(*[st.integers(0, 9)] * 4),
       height=st.integers(1, 9), width=st.integers(20, 90), seed=st.integers(0, 2**16))
def test_depthwise_matches_reference_on_wide_rows_and_large_pads(kernel, stride, pads, height, width, seed):
    if height + pads[0] + pads[2] < kernel:
        return
    check(2, height, width, kernel, stride, pads, Activation("relu"), seed)


@pytest.mark.parametrize("kernel, stride, pads", [(3, 1, (1, 1, 1, 1)), (3, 2, (1, 1, 1, 1)), (3, 2, (0, 0, 1, 1)),
                                                  (5, 1, (2, 2, 2, 2)), (5, 2, (2, 2, 2, 2)), (5, 2, (1, 1, 2, 2))])
@pytest.mark.parametrize("size", [7, 14, 15, 28, 56, 112])
def test_depthwise_mobilenet_shapes(kernel, stride, pads, size):
    check(4, size, size, kernel, stride, pads, Activation("clip", (0.0, 6.0)), size * 10 + kernel + stride)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pads=st.tuples(*[st.integers(0, 4)] * 4), height=st.integers(1, 7), width=st.integers(60, 300),
       activation=st.sampled_from(ACTIVATIONS), seed=st.integers(0, 2**16))
def test_depthwise_3x3_stride_2_wide_rows(pads, height, width, activation, seed):
    """3x3 stride 2 with more than two vectors of output columns runs on deinterleaved input rows in
    strips of 64 output columns: strip borders, edge masks and the last partial block."""
    if height + pads[0] + pads[2] < 3:
        return
    check(2, height, width, 3, 2, pads, activation, seed)
