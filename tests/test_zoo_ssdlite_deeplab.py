"""The paper's other two systems (SSDLite, Section 6.2; Mobile DeepLabv3, Section 6.3) as zoo models:
sizes against the paper, TensorFlow's SAME padding and the atrous rule worked by hand, both
backends against onnxruntime, and the op-by-op liveness peak on a hand-worked graph."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun import InferenceSession, kernels
from edgerun.zoo import count_macs, count_parameters, mobile_deeplabv3, ssdlite_mobilenet_v2
from edgerun.zoo.graph import tf_same_pads
from edgerun.zoo.stats import op_by_op_peak

BACKENDS = ["numpy"] + (["native"] if kernels.native_available() else [])


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_tf_same_pads_put_the_odd_row_at_the_bottom():
    assert tf_same_pads(320, 3, 2) == [0, 0, 1, 1]     # 160 rows: 159*2 + 3 - 320 = 1
    assert tf_same_pads(5, 3, 2) == [1, 1, 1, 1]       # 3 rows: 2*2 + 3 - 5 = 2
    assert tf_same_pads(2, 3, 2) == [0, 0, 1, 1]       # 1 row: 0 + 3 - 2 = 1
    assert tf_same_pads(20, 1, 1) == [0, 0, 0, 0]
    assert tf_same_pads(7, 3, 1, dilation=2) == [2, 2, 2, 2]


def test_ssdlite_320_matches_the_paper_and_tensorflows_layout():
    model = ssdlite_mobilenet_v2(320)
    # anchors: 3 per cell on the 20x20 map (expansion of layer 15), 6 on 10x10, 5x5, 3x3, 2x2, 1x1
    anchors = 20 * 20 * 3 + (10 * 10 + 5 * 5 + 3 * 3 + 2 * 2 + 1) * 6
    assert anchors == 2034
    shapes = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert shapes == {"boxes": ["batch", 2034, 4], "scores": ["batch", 2034, 91]}
    assert count_macs(model) == pytest.approx(0.8e9, rel=0.01)        # paper: 0.8B
    assert count_parameters(model) == pytest.approx(4.3e6, rel=0.05)  # paper: 4.3M (ours 4.50M)
    convs = {n.name: _attrs(n) for n in model.graph.node if n.op_type == "Conv"}
    assert convs["features.0.0/Conv"]["pads"] == [0, 0, 1, 1]          # 320 -> 160, TF SAME
    # the first head reads block 14's 576-channel expansion, which also feeds its stride-2 depthwise
    expansion = next(n.output[0] for n in model.graph.node if n.name == "features.14.conv.0.2/Clip")
    readers = sorted(n.name for n in model.graph.node if expansion in n.input)
    assert readers == ["box_predictor.0.box.depthwise.0/Conv", "box_predictor.0.class.depthwise.0/Conv",
                       "features.14.conv.1.0/Conv"]


def test_mobile_deeplabv3_513_matches_the_paper_and_the_atrous_rule():
    model = mobile_deeplabv3(513)
    assert count_macs(model) == pytest.approx(2.75e9, rel=0.01)          # paper Table 7: 2.75B
    assert count_parameters(model) == pytest.approx(2.11e6, rel=0.01)    # paper Table 7: 2.11M
    out = model.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in out[1:]] == [21, 33, 33]               # 513 at output stride 16
    dw = {n.name.split(".conv")[0]: _attrs(n) for n in model.graph.node
          if n.op_type == "Conv" and _attrs(n)["group"] > 1}
    # block 14 would stride to 32: it runs at stride 1, dilation 1; blocks 15-17 at dilation 2
    assert dw["features.7"]["strides"] == [2, 2] and dw["features.7"]["dilations"] == [1, 1]
    assert dw["features.14"]["strides"] == [1, 1] and dw["features.14"]["dilations"] == [1, 1]
    for block in ("features.15", "features.16", "features.17"):
        assert dw[block]["strides"] == [1, 1] and dw[block]["dilations"] == [2, 2]
        assert dw[block]["pads"] == [2, 2, 2, 2]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("build,resolution", [(ssdlite_mobilenet_v2, 96), (mobile_deeplabv3, 97)])
def test_runs_like_onnxruntime(build, resolution, backend):
    model = build(resolution, seed=4, batch=1)
    x = np.random.default_rng(1).standard_normal((1, 3, resolution, resolution)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    got = InferenceSession(model, kernels_backend=backend, threads=1).run(None, {"input": x})
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-4 * np.abs(e).max())
    assert np.std(expected[0]) > 0.01


def _value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_op_by_op_peak_on_a_hand_worked_graph():
    """x (input, not counted) -> Conv a -> Relu r -> Conv c -> Add(r, c) = y, every tensor 8x8x8
    floats (2048 B). The Relu overwrites a (its only reader); conv_c holds r and c (4096 B); the Add
    holds r, c and y (6144 B): the peak."""
    w = numpy_helper.from_array(np.ones((8, 4, 1, 1), np.float32), "w")
    w2 = numpy_helper.from_array(np.ones((8, 8, 1, 1), np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="conv_a"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["c"], name="conv_c"),
             helper.make_node("Add", ["r", "c"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [_value("x", [1, 4, 8, 8])], [_value("y", [1, 8, 8, 8])], [w, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    assert op_by_op_peak(model) == (3 * 2048, "add")
    # a Relu whose input is still needed later cannot run in place
    nodes[3] = helper.make_node("Add", ["a", "c"], ["y"], name="add")
    graph = helper.make_graph(nodes, "g", [_value("x", [1, 4, 8, 8])], [_value("y", [1, 8, 8, 8])], [w, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    # relu: a and r (4096 B); conv_c: a, r, c (6144 B, first reached here); add: a, c, y
    assert op_by_op_peak(model) == (3 * 2048, "conv_c")
