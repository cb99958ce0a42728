"""Activations against onnxruntime; apply_activation against hand-computed values."""
import numpy as np
import pytest

from edgerun.errors import InvalidModelError
from edgerun.ops.activation import apply_activation
from op_harness import check_op, compute_only, randn

X = randn(3, 4, 5) * 4


@pytest.mark.parametrize("op, attrs", [
    ("Relu", {}), ("Sigmoid", {}), ("Tanh", {}), ("HardSwish", {}),
    ("HardSigmoid", {}), ("HardSigmoid", dict(alpha=0.3, beta=0.4)),
    ("LeakyRelu", {}), ("LeakyRelu", dict(alpha=0.2)), ("Elu", {}), ("Elu", dict(alpha=0.4)),
])
@pytest.mark.parametrize("opset", [7, 13, 21])
def test_activation_matches_onnxruntime(op, attrs, opset):
    check_op(op, [X], attrs, opset=max(opset, 14) if op == "HardSwish" else opset)


def test_sigmoid_extreme_inputs_stay_finite():
    check_op("Sigmoid", [np.array([-1000, -80, 0, 80, 1000], np.float32)], opset=13)


@pytest.mark.parametrize("attrs", [dict(min=-0.5, max=0.7), dict(min=0.0), dict(max=6.0), {}])
def test_clip_attribute_form_before_opset_11(attrs):
    check_op("Clip", [X], attrs, opset=7)


@pytest.mark.parametrize("low, high", [(-0.5, 0.7), (None, 0.5), (-1.0, None), (None, None)])
def test_clip_input_form_from_opset_11(low, high):
    inputs = [X, None if low is None else np.array(low, np.float32), None if high is None else np.array(high, np.float32)]
    check_op("Clip", inputs, opset=13)


def test_clip_int_inputs_opset_13():
    check_op("Clip", [np.arange(-5, 5, dtype=np.int64), np.array(-2, np.int64), np.array(3, np.int64)], opset=13,
             known_values=lambda i, a: False)


@pytest.mark.parametrize("opset, axis", [(11, 0), (11, 1), (11, 2), (11, -1), (13, 0), (13, 1), (13, -1), (11, None),
                                         (13, None)])
def test_softmax_flattening_before_13_and_axis_after(opset, axis):
    attrs = {} if axis is None else dict(axis=axis)
    check_op("Softmax", [X], attrs, opset=opset)


def test_softmax_bad_axis_names_node():
    with pytest.raises(InvalidModelError, match="softmax_bad.*axis"):
        compute_only("Softmax", [X], dict(axis=3), opset=13)


def test_clip_non_scalar_bound_names_node():
    with pytest.raises(InvalidModelError, match="clip_bad.*min"):
        compute_only("Clip", [X, np.zeros(2, np.float32), None], opset=13)


def test_apply_activation_hand_values():
    x = np.array([-4.0, -1.0, 0.0, 1.0, 3.0, 8.0], np.float32)
    assert apply_activation(x, "", []).tolist() == x.tolist()
    assert apply_activation(x, "relu", []).tolist() == [0, 0, 0, 1, 3, 8]
    assert apply_activation(x, "clip", [0.0, 6.0]).tolist() == [0, 0, 0, 1, 3, 6]
    assert apply_activation(x, "leakyrelu", [0.5]).tolist() == [-2, -0.5, 0, 1, 3, 8]
    assert apply_activation(x, "hardsigmoid", [0.25, 0.5]).tolist() == [0, 0.25, 0.5, 0.75, 1, 1]
    np.testing.assert_allclose(apply_activation(x, "hardswish", []),
                               [0, -1 / 3, 0, 2 / 3, 3, 8], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(apply_activation(x, "sigmoid", []), 1 / (1 + np.exp(-x.astype(np.float64))),
                               rtol=1e-6)
    assert apply_activation(x, "relu", []).dtype == np.float32


def test_apply_activation_rejects_unknown_kind_and_bad_params():
    with pytest.raises(InvalidModelError, match="swish"):
        apply_activation(X, "swish", [])
    with pytest.raises(InvalidModelError, match="clip"):
        apply_activation(X, "clip", [0.0])
    with pytest.raises(InvalidModelError, match="leakyrelu"):
        apply_activation(X, "leakyrelu", [None])


def elu_block_model(alpha=0.7):
    """Conv 1x1 -> Elu -> depthwise 3x3 -> Elu -> Conv 1x1 -> + x -> Elu: an inverted-residual block with
    Elu inside (fused by the passes) and a standalone Elu after it."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(7)

    def const(name, *shape, scale=0.4):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [const("we", 24, 8, 1, 1), const("be", 24), const("wd", 24, 1, 3, 3), const("bd", 24),
             const("wp", 8, 24, 1, 1), const("bp", 8)]
    nodes = [helper.make_node("Conv", ["x", "we", "be"], ["e"]),
             helper.make_node("Elu", ["e"], ["ea"], alpha=alpha),
             helper.make_node("Conv", ["ea", "wd", "bd"], ["d"], pads=[1, 1, 1, 1], group=24),
             helper.make_node("Elu", ["d"], ["da"], alpha=alpha),
             helper.make_node("Conv", ["da", "wp", "bp"], ["p"]),
             helper.make_node("Add", ["p", "x"], ["s"]),
             helper.make_node("Elu", ["s"], ["y"])]
    shape = [1, 8, 10, 10]
    graph = helper.make_graph(nodes, "elu_block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_elu_fuses_into_a_block_and_runs_in_the_arena(backend):
    from conftest import assert_close_to_ort, run_ort
    from edgerun import InferenceSession
    from edgerun.kernels import native_available
    if backend == "native" and not native_available():
        pytest.skip("the native kernels are not built")
    model = elu_block_model()
    x = randn(1, 8, 10, 10) * 3
    session = InferenceSession(model, kernels_backend=backend, threads=2)
    (y,) = session.run(None, {"x": x})
    assert_close_to_ort(y, run_ort(model, {"x": x})[0])
    steps = {step.node.op_type: step for step in session._last.steps}
    block = steps["InvertedResidual"].node.attrs
    assert (block["expand_activation"], block["dw_activation"]) == ("elu", "elu")
    assert block["expand_activation_params"] == pytest.approx([0.7])
    assert steps["Elu"].kind == "kernel"
