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
    ("LeakyRelu", {}), ("LeakyRelu", dict(alpha=0.2)),
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
