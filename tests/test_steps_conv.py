"""ConvTranspose arena kernel (edgerun/kernels/steps_conv.py) against onnxruntime, through whole sessions: the
step runs on the kernel, inside its plan, over ranks, strides, dilations, pads, groups and output shapes."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arena_harness import check_against_onnxruntime, session_model

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def transposed_convs(draw):
    rank = draw(st.sampled_from([1, 2, 2, 3]))
    group = draw(st.sampled_from([1, 2]))
    cin, mg = group * draw(st.integers(1, 3)), draw(st.integers(1, 3))
    spatial = [draw(st.integers(1, 6)) for _ in range(rank)]
    kernel = [draw(st.integers(1, 4)) for _ in range(rank)]
    strides = [draw(st.integers(1, 3)) for _ in range(rank)]
    dilations = [draw(st.integers(1, 2)) for _ in range(rank)]
    attrs = {"strides": strides, "dilations": dilations, "group": group}
    layout = draw(st.sampled_from(["pads", "output_padding", "auto_pad", "output_shape"]))
    full = [s * (n - 1) + d * (k - 1) + 1 for n, k, s, d in zip(spatial, kernel, strides, dilations)]
    if layout == "pads":   # pads that leave at least one output element on each axis
        begins = [draw(st.integers(0, min(k - 1, f - 1))) for k, f in zip(kernel, full)]
        ends = [draw(st.integers(0, min(k - 1, f - 1 - b))) for k, f, b in zip(kernel, full, begins)]
        attrs["pads"] = begins + ends
    elif layout == "output_padding":
        attrs["output_padding"] = [draw(st.integers(0, min(s, d) - 1)) for s, d in zip(strides, dilations)]
    elif layout == "auto_pad":
        attrs["auto_pad"] = draw(st.sampled_from(["SAME_UPPER", "SAME_LOWER", "VALID"]))
        if any(d * (k - 1) + 1 < s for k, s, d in zip(kernel, strides, dilations)):
            attrs["auto_pad"] = "VALID"   # SAME would need negative pads: onnxruntime and the spec part ways
    else:
        attrs["output_shape"] = [draw(st.integers(max(1, f - 2), f)) for f in full]
    return (1 + draw(st.integers(0, 1)), cin, *spatial), (cin, mg, *kernel), attrs, draw(st.booleans())


@SETTINGS
@given(case=transposed_convs(), seed=st.integers(0, 99))
def test_conv_transpose_matches_onnxruntime(case, seed):
    x_shape, w_shape, attrs, with_bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    constants = {"w": rng.standard_normal(w_shape).astype(np.float32)}
    if with_bias:
        constants["b"] = rng.standard_normal(w_shape[1] * attrs["group"]).astype(np.float32)
    model = session_model("ConvTranspose", {"x": x}, attrs, constants=constants)
    check_against_onnxruntime(model, {"x": x})


def test_a_decoder_sized_conv_transpose_stays_inside_its_plan():
    """2x upsampling of 64 channels at 32x32: the cols scratch is planned, nothing escapes."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 64, 32, 32)).astype(np.float32)
    constants = {"w": rng.standard_normal((64, 32, 4, 4)).astype(np.float32) * 0.1,
                 "b": rng.standard_normal(32).astype(np.float32)}
    model = session_model("ConvTranspose", {"x": x}, {"strides": [2, 2], "pads": [1, 1, 1, 1]}, constants=constants)
    check_against_onnxruntime(model, {"x": x})


@st.composite
def nd_convs(draw):
    rank = draw(st.sampled_from([1, 3]))
    group = draw(st.sampled_from([1, 2]))
    cin, cout = group * draw(st.integers(1, 3)), group * draw(st.integers(1, 3))
    spatial = [draw(st.integers(5, 8)) for _ in range(rank)]   # at least the widest dilated kernel
    kernel = [draw(st.integers(1, 3)) for _ in range(rank)]
    attrs = {"strides": [draw(st.integers(1, 2)) for _ in range(rank)],
             "dilations": [draw(st.integers(1, 2)) for _ in range(rank)],
             "pads": [draw(st.integers(0, k - 1)) for k in kernel * 2], "group": group}
    return (draw(st.integers(1, 2)), cin, *spatial), (cout, cin // group, *kernel), attrs, draw(st.booleans())


@SETTINGS
@given(case=nd_convs(), seed=st.integers(0, 99))
def test_conv_of_rank_1_and_3_matches_onnxruntime(case, seed):
    """Convolutions that are not 2-D become FusedConv steps on FusedConvAnyRankKernel's im2col."""
    x_shape, w_shape, attrs, with_bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    constants = {"w": rng.standard_normal(w_shape).astype(np.float32)}
    if with_bias:
        constants["b"] = rng.standard_normal(w_shape[0]).astype(np.float32)
    model = session_model("Conv", {"x": x}, attrs, constants=constants)
    check_against_onnxruntime(model, {"x": x})


def test_conv1d_with_a_fused_activation_matches_onnxruntime():
    from onnx import helper, numpy_helper
    from edgerun import InferenceSession
    from conftest import assert_close_to_ort, run_ort
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 50)).astype(np.float32)
    w = numpy_helper.from_array(rng.standard_normal((16, 8, 5)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[2, 2], name="conv"),
             helper.make_node("LeakyRelu", ["c"], ["y"], alpha=0.1, name="act")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, x.shape)],
                              [helper.make_tensor_value_info("y", 1, (1, 16, 50))], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    for backend in ("numpy", "native"):
        sess = InferenceSession(model, kernels_backend=backend)
        (got,) = sess.run(None, {"x": x})
        assert [(s.node.op_type, s.kind) for s in sess.compiled.steps] == [("FusedConv", "kernel")]
        assert_close_to_ort(got, run_ort(model, {"x": x})[0])


@pytest.mark.parametrize("attrs,x_shape,w_shape", [
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (1, 4, 9, 8), (6, 4, 3, 3)),
    ({"auto_pad": "SAME_LOWER", "group": 2}, (2, 4, 7, 7), (4, 2, 3, 2)),
    ({"dilations": [2, 1], "pads": [2, 0, 2, 1]}, (1, 2, 8, 7), (3, 2, 3, 2)),
    ({"pads": [1, 0, 2, 1], "group": 2}, (1, 4, 6, 5), (6, 2, 3, 3)),
    ({"kernel_shape": [3], "pads": [1, 1]}, (1, 3, 11), (5, 3, 3)),
    ({"group": 4}, (1, 4, 6, 6), (4, 1, 3, 3)),
])
def test_unfused_conv_with_the_passes_off_matches_onnxruntime(attrs, x_shape, w_shape):
    """With the optimisation passes off, Conv runs on ConvKernel (as the FusedConv it stands for)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    constants = {"w": rng.standard_normal(w_shape).astype(np.float32),
                 "b": rng.standard_normal(w_shape[0]).astype(np.float32)}
    model = session_model("Conv", {"x": x}, attrs, constants=constants)
    check_against_onnxruntime(model, {"x": x}, optimize_graph=False)
