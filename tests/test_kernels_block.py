"""The numpy block kernel against a plain unsplit numpy reference.

The generated cases and the reference are also imported by tests/test_native_block.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgerun.errors import EdgerunError
from edgerun.ir import Node
from edgerun.kernels import Activation, BlockWeights, block_scratch, numpy_block
from scheduler.blocks import BlockGeometry, BlockSchedule

ACTIVATIONS = [
    Activation(""), Activation("relu"), Activation("clip", (0.0, 6.0)), Activation("clip", (-0.5, 0.25)),
    Activation("hardswish"), Activation("hardsigmoid", (0.2, 0.5)), Activation("leakyrelu", (0.1,)),
    Activation("sigmoid"),
]


@dataclass
class BlockCase:
    geom: BlockGeometry
    sched: BlockSchedule
    weights: BlockWeights
    x: np.ndarray


def reference_activation(v: np.ndarray, act: Activation) -> np.ndarray:
    if act.kind == "":
        return v
    if act.kind == "relu":
        return np.maximum(v, 0)
    if act.kind == "clip":
        return np.clip(v, act.params[0], act.params[1])
    if act.kind == "hardsigmoid":
        return np.clip(act.params[0] * v + act.params[1], 0, 1)
    if act.kind == "hardswish":
        return v * np.clip(v / 6 + 0.5, 0, 1)
    if act.kind == "leakyrelu":
        return np.where(v < 0, act.params[0] * v, v)
    if act.kind == "sigmoid":
        return 1 / (1 + np.exp(-v))
    raise AssertionError(act.kind)


def reference_conv(x, w, b, stride, pads, groups_equal_channels=False):
    """Direct convolution in float64: x (C, H, W), w (O, C or 1, k, k), pads (top, left, bottom, right)."""
    top, left, bottom, right = pads
    padded = np.pad(x.astype(np.float64), ((0, 0), (top, bottom), (left, right)))
    k = w.shape[-1]
    out_h = (padded.shape[1] - k) // stride + 1
    out_w = (padded.shape[2] - k) // stride + 1
    out = np.zeros((w.shape[0], out_h, out_w)) + b.astype(np.float64)[:, None, None]
    for ky in range(k):
        for kx in range(k):
            window = padded[:, ky:ky + (out_h - 1) * stride + 1:stride, kx:kx + (out_w - 1) * stride + 1:stride]
            if groups_equal_channels:
                out += w[:, 0, ky, kx].astype(np.float64)[:, None, None] * window
            else:
                out += np.einsum("oc,chw->ohw", w[:, :, ky, kx].astype(np.float64), window)
    return out


def reference_block(case: BlockCase) -> np.ndarray:
    """expand conv -> act -> depthwise conv -> act -> 1x1 projection (+ x), unsplit, float64."""
    g, w = case.geom, case.weights
    hidden = case.x.astype(np.float64)
    if g.has_expansion:
        hidden = reference_activation(reference_conv(case.x, w.we, w.be, g.expand_stride, g.expand_pads),
                                      w.expand_act)
    dw = reference_conv(hidden, w.wd[:, None], w.bd, g.dw_stride, g.dw_pads, groups_equal_channels=True)
    dw = reference_activation(dw, w.dw_act)
    out = np.einsum("oe,ehw->ohw", w.wp.astype(np.float64), dw) + w.bp[:, None, None]
    if g.residual:
        out += case.x
    return out


def _pads(draw, kernel, keep_size):
    """(top, left, bottom, right); keep_size: each dimension padded by exactly kernel - 1."""
    if keep_size:
        top, left = draw(st.integers(0, kernel - 1)), draw(st.integers(0, kernel - 1))
        return (top, left, kernel - 1 - top, kernel - 1 - left)
    limit = 1 if kernel == 1 else kernel - 1
    return tuple(draw(st.integers(0, limit)) for _ in range(4))


@st.composite
def block_cases(draw, max_channels=8, max_hidden=12, max_size=9):
    residual = draw(st.integers(0, 2)) == 0  # then strides 1 and size-keeping pads, so shapes match
    cin = draw(st.integers(1, max_channels))
    ke = draw(st.sampled_from([0, 1, 3]))
    hidden = cin if ke == 0 else draw(st.integers(1, max_hidden))
    se = 1 if ke == 0 or residual else draw(st.sampled_from([1, 2]))
    expand_pads = _pads(draw, ke, residual) if ke else (0, 0, 0, 0)
    kd = draw(st.sampled_from([3, 5]))
    sd = 1 if residual else draw(st.sampled_from([1, 2]))
    dw_pads = _pads(draw, kd, residual)
    height, width = draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    cout = cin if residual else draw(st.integers(1, max_channels))
    try:
        geom = BlockGeometry(cin, height, width, hidden, ke, se, expand_pads, kd, sd, dw_pads, cout, residual)
    except ValueError:
        assume(False)
    assume(geom.hidden_height >= 1 and geom.hidden_width >= 1)
    sched = BlockSchedule(draw(st.integers(1, hidden)), draw(st.integers(1, geom.out_height)))
    seed = draw(st.integers(0, 2**31 - 1))
    weights = random_weights(geom, np.random.default_rng(seed), draw(st.sampled_from(ACTIVATIONS)),
                             draw(st.sampled_from(ACTIVATIONS)))
    x = np.random.default_rng(seed + 1).standard_normal((cin, height, width)).astype(np.float32)
    return BlockCase(geom, sched, weights, x)


def random_weights(geom: BlockGeometry, rng, expand_act=Activation("clip", (0.0, 6.0)),
                   dw_act=Activation("clip", (0.0, 6.0))) -> BlockWeights:
    def normal(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    e, k = geom.hidden_channels, geom.expand_kernel
    we = normal(e, geom.in_channels, k, k, scale=(geom.in_channels * k * k) ** -0.5) if k else None
    be = normal(e, scale=0.1) if k else None
    return BlockWeights.from_arrays(
        we, be, normal(e, 1, geom.dw_kernel, geom.dw_kernel, scale=1 / geom.dw_kernel), normal(e, scale=0.1),
        normal(geom.out_channels, e, 1, 1, scale=e ** -0.5), normal(geom.out_channels, scale=0.1),
        expand_act, dw_act)


def make_scratch(geom, sched, backend, fill=np.nan, threads=1):
    """Scratch views into one flat arena, filled with `fill` so reads of stale scratch show up (the sizes
    the backend's contract declares for `threads`)."""
    sizes = block_scratch(geom, sched, backend, threads)
    arena = np.full(sum(sizes.values()) // 4 + 1, fill, np.float32)
    views, offset = {}, 1  # views start off the arena's base, as in a real plan
    for name, nbytes in sizes.items():
        views[name] = arena[offset: offset + nbytes // 4]
        offset += nbytes // 4
    return views


def run_case(case: BlockCase, backend: str, threads: int = 1) -> np.ndarray:
    from edgerun.kernels import run_block
    g = case.geom
    out = np.full((g.out_channels, g.out_height, g.out_width), np.nan, np.float32)
    run_block(case.x, out, case.weights, g, case.sched, make_scratch(g, case.sched, backend, threads=threads),
              backend=backend, threads=threads)
    return out


def assert_close(actual, expected, rtol=1e-5):
    scale = float(np.abs(expected).max()) + 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_cases())
def test_numpy_block_matches_unsplit_reference(case):
    assert_close(run_case(case, "numpy"), reference_block(case))


def mobilenet_block_case(t=3, band_rows=7):
    geom = BlockGeometry(24, 56, 56, 144, 1, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 24, True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 56, 56)).astype(np.float32)
    return BlockCase(geom, BlockSchedule(t, band_rows), random_weights(geom, rng), x)


def test_mobilenet_block_matches_reference_with_chunks_and_bands():
    case = mobilenet_block_case()
    assert_close(run_case(case, "numpy"), reference_block(case))


@pytest.mark.parametrize("act", ACTIVATIONS[4:], ids=lambda a: a.kind)
def test_numpy_block_two_buffer_activations_on_large_block(act):
    # expanded scratch larger than dw_tmp: the activation must be applied slice by slice
    case = mobilenet_block_case(t=2, band_rows=3)
    case.weights = BlockWeights.from_arrays(case.weights.we, case.weights.be, case.weights.wd[:, None],
                                            case.weights.bd, case.weights.wp, case.weights.bp, act, act)
    assert_close(run_case(case, "numpy"), reference_block(case))


@pytest.mark.parametrize("ke", [1, 3])
def test_numpy_block_allocates_nothing_of_activation_size(ke):
    geom = BlockGeometry(24 if ke == 1 else 3, 56, 56, 144, ke, 1, (0, 0, 0, 0) if ke == 1 else (1, 1, 1, 1),
                         3, 1, (1, 1, 1, 1), 24, False)
    sched = BlockSchedule(3, 8)
    rng = np.random.default_rng(1)
    weights = random_weights(geom, rng)
    x = rng.standard_normal((geom.in_channels, 56, 56)).astype(np.float32)
    out = np.empty((24, 56, 56), np.float32)
    scratch = make_scratch(geom, sched, "numpy", fill=0.0)
    numpy_block.run_block(x, out, weights, geom, sched, scratch)  # warm caches of lazy imports
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        numpy_block.run_block(x, out, weights, geom, sched, scratch)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    smallest_activation = 56 * 4 * geom.in_channels  # one input row
    assert peak < 8192 and peak < smallest_activation * 8, peak


def test_run_block_rejects_bad_arguments():
    case = mobilenet_block_case()
    g = case.geom
    out = np.empty((24, 56, 56), np.float32)
    scratch = make_scratch(g, case.sched, "numpy")
    with pytest.raises(EdgerunError, match="float32"):
        numpy_block.run_block(case.x.astype(np.float64), out, case.weights, g, case.sched, scratch)
    with pytest.raises(EdgerunError, match="expanded"):
        small = dict(scratch, expanded=scratch["expanded"][:10])
        numpy_block.run_block(case.x, out, case.weights, g, case.sched, small)
    with pytest.raises(EdgerunError, match="shape"):
        numpy_block.run_block(case.x, np.empty((24, 28, 56), np.float32), case.weights, g, case.sched, scratch)


def test_activation_validates_kind_and_params():
    with pytest.raises(EdgerunError):
        Activation("gelu")
    with pytest.raises(EdgerunError):
        Activation("clip", (0.0,))
    assert Activation("clip", [0, 6]).params == (0.0, 6.0)


def test_block_weights_from_node_reads_onnx_layout():
    rng = np.random.default_rng(3)
    arrays = {"we": rng.standard_normal((12, 4, 1, 1)).astype(np.float32),
              "be": rng.standard_normal(12).astype(np.float32),
              "wd": rng.standard_normal((12, 1, 3, 3)).astype(np.float32),
              "bd": rng.standard_normal(12).astype(np.float32),
              "wp": rng.standard_normal((5, 12, 1, 1)).astype(np.float32),
              "bp": rng.standard_normal(5).astype(np.float32)}
    node = Node("InvertedResidual", ["x", "we", "be", "wd", "bd", "wp", "bp"], ["y"],
                {"expand_activation": "clip", "expand_activation_params": [0.0, 6.0],
                 "dw_activation": "relu", "dw_activation_params": []}, "b0", "edgerun")
    w = BlockWeights.from_node(node, arrays)
    assert w.expand_act == Activation("clip", (0.0, 6.0)) and w.dw_act == Activation("relu")
    np.testing.assert_array_equal(w.wd, arrays["wd"][:, 0])
    np.testing.assert_array_equal(w.wp, arrays["wp"][:, :, 0, 0])
    np.testing.assert_array_equal(w.wp_t, arrays["wp"][:, :, 0, 0].T)
    np.testing.assert_array_equal(w.we_t, arrays["we"][:, :, 0, 0].T)
    no_expand = Node("InvertedResidual", ["x", "", "", "wd", "bd", "wp", "bp"], ["y"], {}, "b1", "edgerun")
    w = BlockWeights.from_node(no_expand, arrays)
    assert w.we is None and w.expand_kernel == 0 and w.expand_act == Activation("")
