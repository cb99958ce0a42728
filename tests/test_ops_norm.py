"""BatchNormalization (inference) and LRN."""
import numpy as np
import pytest

from edgerun.errors import InvalidModelError
from op_harness import check_op, compute_only, randn


def bn_inputs(param_shape, x_shape=(2, 3, 5, 4)):
    return [randn(*x_shape), randn(*param_shape, seed=1), randn(*param_shape, seed=2), randn(*param_shape, seed=3),
            np.abs(randn(*param_shape, seed=4)) + 0.1]


@pytest.mark.parametrize("opset", [7, 9, 14, 15])
@pytest.mark.parametrize("epsilon", [None, 1e-3])
def test_batchnorm_matches_onnxruntime(opset, epsilon):
    attrs = {} if epsilon is None else dict(epsilon=epsilon)
    check_op("BatchNormalization", bn_inputs((3,)), attrs, opset=opset)


def test_batchnorm_rank_2_and_3():
    check_op("BatchNormalization", bn_inputs((3,), (4, 3)), opset=15)
    check_op("BatchNormalization", bn_inputs((3,), (2, 3, 6)), opset=15)


def test_batchnorm_opset7_per_activation_with_spatial_0():
    check_op("BatchNormalization", bn_inputs((3, 5, 4)), dict(spatial=0), opset=7)


def test_batchnorm_training_mode_rejected_with_node_name():
    with pytest.raises(InvalidModelError, match="batchnormalization_bad.*training_mode"):
        compute_only("BatchNormalization", bn_inputs((3,)), dict(training_mode=1), opset=15)


def test_batchnorm_wrong_parameter_size_names_input():
    with pytest.raises(InvalidModelError, match="batchnormalization_bad.*scale"):
        compute_only("BatchNormalization", [randn(2, 3, 4, 4)] + bn_inputs((4,))[1:], opset=15)


@pytest.mark.parametrize("attrs", [dict(size=3), dict(size=5, alpha=0.01, beta=0.6, bias=2.0), dict(size=1)])
def test_lrn_matches_onnxruntime(attrs):
    check_op("LRN", [randn(2, 7, 4, 3)], attrs, opset=13)


def lrn_by_the_spec(x, size, alpha, beta, bias):
    """Direct loop over the spec's window max(0, c - floor((size-1)/2)) <= i <= min(C-1, c + ceil((size-1)/2))."""
    channels = x.shape[1]
    y = np.empty_like(x, dtype=np.float64)
    for c in range(channels):
        low, high = max(0, c - (size - 1) // 2), min(channels - 1, c + -(-(size - 1) // 2))
        square_sum = np.sum(x[:, low:high + 1].astype(np.float64) ** 2, axis=1)
        y[:, c] = x[:, c] / (bias + alpha / size * square_sum) ** beta
    return y


def test_lrn_even_size_follows_the_spec_window():
    # onnxruntime refuses even sizes (and onnx's reference evaluator loops over the wrong axis), so the
    # oracle here is the spec formula written out as a loop.
    x = randn(2, 7, 4, 3) * 3
    got = compute_only("LRN", [x], dict(size=4, alpha=0.01, beta=0.7, bias=1.5))[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, lrn_by_the_spec(x, 4, 0.01, 0.7, 1.5), rtol=1e-5, atol=1e-6)


def test_lrn_without_size_names_node():
    with pytest.raises(InvalidModelError, match="lrn_bad.*size"):
        compute_only("LRN", [randn(1, 3, 2, 2)])
