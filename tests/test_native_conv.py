"""The banded dense / grouped convolution (edgerun/kernels/native/conv.c, NativeFusedConvKernel "conv") and
the numpy FusedConv kernel's banded im2col, against the float64 reference over generated shapes; the same
bits for 1 and 2 threads; scratch bounded by the band; the residual Add fusion (passes/fuse_add.py)."""
import math

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from edgerun import InferenceSession, kernels
from edgerun.errors import EdgerunError
from edgerun.ir import Node
from edgerun.kernels import numpy_steps
from edgerun.kernels.steps_conv import FusedConvAnyRankKernel
from edgerun.ops.activation import apply_activation
from edgerun.ops.conv import conv_nd

native_only = pytest.mark.skipif(not kernels.native_available(), reason="the native kernels are not built")
ACTIVATIONS = [("", ()), ("relu", ()), ("clip", (0.0, 6.0)), ("hardswish", ()), ("leakyrelu", (0.1,))]


def conv_node(kernel, strides, dilations, pads, group, activation="", params=(), with_sum=False):
    attrs = {"kernel_shape": list(kernel), "strides": list(strides), "dilations": list(dilations),
             "pads": list(pads), "group": group, "activation": activation, "activation_params": list(params)}
    return Node("FusedConv", ["x", "w", "b"] + (["s"] if with_sum else []), ["y"], attrs, "conv", "edgerun")


def reference(x, w, b, s, node):
    a = node.attrs
    y = conv_nd(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), strides=a["strides"],
                pads=a["pads"], dilations=a["dilations"], group=a["group"])
    if s is not None:
        y = y + s
    return apply_activation(y.astype(np.float32), a["activation"], a["activation_params"])


def run_kernel(kernel, node, x, w, b, s):
    kernel.prepare(node, {"w": w, "b": b})
    out_shape = reference(x, w, b, s, node).shape
    need = kernel.scratch_bytes(node, [x.shape, w.shape, b.shape], [out_shape])
    scratch = {name: np.full(size // 4, np.nan, np.float32) for name, size in need.items()}
    y = np.full(out_shape, np.nan, np.float32)
    kernel.run(node, [x, w, b] + ([s] if s is not None else []), [y], scratch)
    return y, need


@st.composite
def conv_cases(draw):
    group = draw(st.sampled_from([1, 1, 2, 3]))
    cin = group * draw(st.integers(1, 6))
    cout = group * draw(st.integers(1, 11))
    kh, kw = draw(st.sampled_from([(1, 1), (3, 3), (5, 5), (7, 7), (3, 1), (1, 5)]))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilations = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple(draw(st.integers(0, k + 1)) for k in (kh, kw, kh, kw))
    eh, ew = dilations[0] * (kh - 1) + 1, dilations[1] * (kw - 1) + 1
    h = draw(st.integers(max(1, eh - pads[0] - pads[2]), 19))
    w = draw(st.integers(max(1, ew - pads[1] - pads[3]), 40))
    activation, params = draw(st.sampled_from(ACTIVATIONS))
    return dict(group=group, cin=cin, cout=cout, kernel=(kh, kw), strides=strides, dilations=dilations,
                pads=pads, size=(h, w), activation=activation, params=params, with_sum=draw(st.booleans()),
                batch=draw(st.integers(1, 2)), seed=draw(st.integers(0, 2**16)))


def case_arrays(case):
    rng = np.random.default_rng(case["seed"])
    kh, kw = case["kernel"]
    x = rng.standard_normal((case["batch"], case["cin"]) + case["size"]).astype(np.float32)
    w = (rng.standard_normal((case["cout"], case["cin"] // case["group"], kh, kw)) /
         math.sqrt(case["cin"] // case["group"] * kh * kw)).astype(np.float32)
    b = rng.standard_normal(case["cout"]).astype(np.float32)
    node = conv_node(case["kernel"], case["strides"], case["dilations"], case["pads"], case["group"],
                     case["activation"], case["params"], case["with_sum"])
    out_shape = reference(x, w, b, None, node).shape
    s = rng.standard_normal(out_shape).astype(np.float32) if case["with_sum"] else None
    return node, x, w, b, s


def assert_close(y, expected):
    assert np.allclose(y, expected, rtol=1e-4, atol=1e-5), float(np.max(np.abs(y - expected)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases())
def test_numpy_banded_conv_matches_the_reference(case):
    node, x, w, b, s = case_arrays(case)
    y, _ = run_kernel(FusedConvAnyRankKernel(), node, x, w, b, s)
    assert_close(y, reference(x, w, b, s, node))


@native_only
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases())
def test_native_conv_matches_the_reference_with_the_same_bits_on_two_threads(case):
    from edgerun.kernels import _native
    from edgerun.kernels.native_steps import NativeFusedConvKernel
    node, x, w, b, s = case_arrays(case)
    previous = _native.block_min_part_macs(0)   # split every step, however small
    try:
        one, _ = run_kernel(NativeFusedConvKernel(FusedConvAnyRankKernel(), 1), node, x, w, b, s)
        two, _ = run_kernel(NativeFusedConvKernel(FusedConvAnyRankKernel(), 2), node, x, w, b, s)
    finally:
        _native.block_min_part_macs(previous)
    assert_close(one, reference(x, w, b, s, node))
    assert one.tobytes() == two.tobytes()


@native_only
def test_the_grouped_conv_is_one_banded_call_and_a_dense_one_keeps_only_a_band_of_taps():
    from edgerun.kernels import native
    from edgerun.kernels.native_steps import NativeFusedConvKernel
    rng = np.random.default_rng(0)
    # ResNet18's first 3x3 conv of layer1 (64 -> 64 at 56x56): its whole im2col would be 7,225,344 B
    node = conv_node((3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, "relu")
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    kernel = NativeFusedConvKernel(FusedConvAnyRankKernel(), 1)
    kernel.prepare(node, {"w": w})
    need = kernel.scratch_bytes(node, [(1, 64, 56, 56), w.shape], [(1, 64, 56, 56)])
    tile = native.conv_sizes(native.conv_geometry((64, 56, 56), (64, 56, 56), w.shape, 1, (1, 1), (1, 1),
                                                  (1, 1, 1, 1), 1))[2]
    # 256 taps (one k-block of 576) x 4 rows of 56 pixels (256 * 56 * 4 B = 57,344 B a row; 262,144 B at most)
    assert numpy_steps.conv_band_rows(256, 56, 56) == 4
    assert need == {"cols": 256 * -(-4 * 56 // tile) * tile * 4}
    assert need["cols"] == 229_376 if tile == 32 else need["cols"] <= 262_144
    # the numpy kernel bands its im2col too: 576 taps x 2 rows of 56 (129,024 B a row)
    numpy_need = FusedConvAnyRankKernel().scratch_bytes(node, [(1, 64, 56, 56), w.shape], [(1, 64, 56, 56)])
    assert numpy_need == {"im2col": 576 * 2 * 56 * 4}
    # RegNetX-400MF's last grouped 3x3 (400 channels, 25 groups of 16, 7x7): slabs of 7 groups (1008 of the
    # 3600 taps), the whole 7-row map a band: 1008 taps x 49 pixels in 2 tiles of 32
    grouped = conv_node((3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 25, "relu")
    wg = rng.standard_normal((400, 16, 3, 3)).astype(np.float32)
    kernel = NativeFusedConvKernel(FusedConvAnyRankKernel(), 1)
    kernel.prepare(grouped, {"w": wg})
    assert native.conv_slab_groups(25, 144) == 7
    assert numpy_steps.conv_band_rows(7 * 144, 7, 7) == 7
    assert kernel.scratch_bytes(grouped, [(1, 400, 7, 7), wg.shape], [(1, 400, 7, 7)]) == {
        "cols": 7 * 144 * -(-49 // tile) * tile * 4}
    # GoogLeNet / ResNet stems: 7x7 stride 2, 3 -> 64 at 224 -> 112: 147 taps x 3 rows of 112 pixels
    stem = conv_node((7, 7), (2, 2), (1, 1), (3, 3, 3, 3), 1, "relu")
    assert FusedConvAnyRankKernel().scratch_bytes(stem, [(1, 3, 224, 224), (64, 3, 7, 7)], [(1, 64, 112, 112)]) == {
        "im2col": 147 * 3 * 112 * 4}


@native_only
def test_a_bad_geometry_is_a_clear_error():
    from edgerun.kernels import native
    w = np.zeros((4, 2, 3, 3), np.float32)
    packed = native.pack_conv_weights(w, 1)
    bad = native.conv_geometry((2, 8, 8), (4, 7, 8), w.shape, 1, (1, 1), (1, 1), (1, 1, 1, 1), 2)  # Ho is 8
    with pytest.raises(EdgerunError, match="output size"):
        native.conv(np.zeros((2, 8, 8), np.float32), packed, None, None, np.zeros((4, 7, 8), np.float32),
                    np.zeros(1 << 16, np.float32), bad)
    good = native.conv_geometry((2, 8, 8), (4, 8, 8), w.shape, 1, (1, 1), (1, 1), (1, 1, 1, 1), 2)
    with pytest.raises(EdgerunError, match="cols"):   # scratch smaller than the band needs
        native.conv(np.zeros((2, 8, 8), np.float32), packed, None, None, np.zeros((4, 8, 8), np.float32),
                    np.zeros(8, np.float32), good)


# ---------------------------------------------------------------- the residual Add fusion
def residual_model(seed=0):
    """x -> conv3x3 -> relu -> conv3x3 -> Add(x) -> relu, then a strided pair with a 1x1 downsample skip."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def weight(name, shape):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) / math.sqrt(np.prod(shape[1:])))
                                             .astype(np.float32), name))
        return name

    def conv(x, y, w, k, stride=1):
        nodes.append(helper.make_node("Conv", [x, w, weight(w + "_b", (int(w[-2:]),))], [y], kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[k // 2] * 4))
    conv("x", "a", weight("w1_08", (8, 8, 3, 3)), 3)
    nodes.append(helper.make_node("Relu", ["a"], ["a_r"]))
    conv("a_r", "c", weight("w2_08", (8, 8, 3, 3)), 3)
    nodes.append(helper.make_node("Add", ["c", "x"], ["s"]))
    nodes.append(helper.make_node("Relu", ["s"], ["s_r"]))
    conv("s_r", "d", weight("w3_16", (16, 8, 3, 3)), 3, 2)
    conv("s_r", "e", weight("w4_16", (16, 8, 1, 1)), 1, 2)
    nodes.append(helper.make_node("Add", ["e", "d"], ["out"]))
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 16, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("backend", ["numpy"] + (["native"] if kernels.native_available() else []))
def test_residual_adds_fuse_into_their_convs_and_match_onnxruntime(backend, monkeypatch):
    model = residual_model()
    onnx.checker.check_model(model)
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 8, 12, 12)).astype(np.float32)}
    (expected,) = run_ort(model, feeds)
    fused = InferenceSession(model, kernels_backend=backend, threads=2)
    out = fused.run(None, feeds)[0]
    graph = fused.compiled.graph
    with_sum = [n for n in graph.nodes if n.op_type == "FusedConv" and len(n.inputs) == 4]
    assert not any(n.op_type == "Add" for n in graph.nodes)
    # the first Add's Relu follows into the conv; the second Add takes one of its two convs
    assert [(n.inputs[3], n.attrs["activation"]) for n in with_sum] in (
        [("x", "relu"), ("e", "")], [("x", "relu"), ("d", "")])
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    monkeypatch.setenv("EDGERUN_NO_FUSE_ADD", "1")
    plain = InferenceSession(model, kernels_backend=backend, threads=2)
    plain_out = plain.run(None, feeds)[0]
    assert sum(n.op_type == "Add" for n in plain.compiled.graph.nodes) == 2
    np.testing.assert_allclose(plain_out, expected, rtol=1e-4, atol=1e-5)
    # the fused plan holds no tensor for a conv's own output before its add
    assert fused.plan.peak_bytes <= plain.plan.peak_bytes
