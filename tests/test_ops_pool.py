"""AveragePool, MaxPool, GlobalAveragePool and ReduceMean against onnxruntime."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerun.errors import InvalidModelError
from edgerun.ir import TensorInfo
from op_harness import assert_close, check_op, compute_only, infer_only, one_node_model, randn, run_ort

X = randn(2, 3, 9, 8)

POOL_CASES = [
    dict(kernel_shape=[3, 3]),
    dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    dict(kernel_shape=[2, 2], strides=[3, 3], pads=[1, 1, 1, 1], ceil_mode=1),
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER"),
    dict(kernel_shape=[4, 4], strides=[1, 3], auto_pad="SAME_UPPER"),
    dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="VALID"),
]


@pytest.mark.parametrize("attrs", POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool_matches_onnxruntime(attrs, count_include_pad):
    check_op("AveragePool", [X], attrs | dict(count_include_pad=count_include_pad), opset=11)


@pytest.mark.parametrize("attrs", POOL_CASES)
def test_max_pool_matches_onnxruntime(attrs):
    check_op("MaxPool", [X], attrs, opset=11)


@pytest.mark.parametrize("attrs", [dict(kernel_shape=[3, 2], dilations=[1, 2]),
                                   dict(kernel_shape=[2, 2], dilations=[2, 2], strides=[2, 1], pads=[1, 1, 1, 0]),
                                   dict(kernel_shape=[2, 2], dilations=[2, 2], strides=[2, 2], ceil_mode=1)])
def test_dilated_pools(attrs):
    check_op("MaxPool", [X], attrs, opset=12)
    check_op("AveragePool", [X], attrs | dict(count_include_pad=1), opset=19)
    check_op("AveragePool", [X], attrs, opset=19)


def test_pool_opset_7_and_1d_and_3d():
    check_op("AveragePool", [X], dict(kernel_shape=[2, 2], pads=[1, 1, 0, 0]), opset=7)
    check_op("MaxPool", [X], dict(kernel_shape=[2, 2], strides=[2, 2]), opset=8)
    check_op("MaxPool", [randn(2, 3, 11)], dict(kernel_shape=[3], strides=[2], pads=[1, 1]), opset=12)
    check_op("AveragePool", [randn(1, 2, 5, 6, 4)], dict(kernel_shape=[2, 3, 2], pads=[1, 1, 0, 0, 1, 1]), opset=13)


def test_max_pool_uint8():
    x = (np.arange(2 * 3 * 9 * 8) % 251).reshape(2, 3, 9, 8).astype(np.uint8)
    check_op("MaxPool", [x], dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), opset=12)


def test_global_average_pool():
    check_op("GlobalAveragePool", [X], opset=7)
    check_op("GlobalAveragePool", [randn(2, 5, 3)], opset=13)


def test_average_pool_count_exclude_pad_hand_worked():
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    got = compute_only("AveragePool", [x], dict(kernel_shape=[2, 2], pads=[1, 1, 0, 0]))[0]
    # windows: [0]/1, [0,1]/2, [0,2]/2, [0,1,2,3]/4
    assert got.tolist() == [[[[0.0, 0.5], [1.0, 1.5]]]]


@pytest.mark.parametrize("x, attrs", [
    (X, dict(kernel_shape=[3, 3])),
    (X, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    (X, dict(kernel_shape=[2, 3], strides=[2, 2], ceil_mode=1, pads=[0, 1, 1, 0])),
    (X, dict(kernel_shape=[3, 3], storage_order=1, pads=[1, 0, 1, 2])),
    (X, dict(kernel_shape=[2, 2], dilations=[2, 1], pads=[1, 0, 0, 1])),
    (np.round(X), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),  # ties: the first maximum in scan order
    (randn(1, 2, 5, 4, 6), dict(kernel_shape=[2, 3, 2], pads=[1, 0, 1, 0, 1, 1])),
    (randn(2, 2, 11), dict(kernel_shape=[3], strides=[2])),
])
def test_max_pool_indices_output(x, attrs):
    check_op("MaxPool", [x], attrs, opset=12, n_outputs=2)


def test_max_pool_indices_hand_worked():
    x = np.array([[[[1, 5, 2], [7, 3, 9]]]], np.float32)
    values, indices = compute_only("MaxPool", [x], dict(kernel_shape=[2, 2]), n_outputs=2)
    assert values.tolist() == [[[[7, 9]]]] and indices.tolist() == [[[[3, 5]]]]
    _, column_major = compute_only("MaxPool", [x], dict(kernel_shape=[2, 2], storage_order=1), n_outputs=2)
    assert column_major.tolist() == [[[[1, 5]]]]  # (h=1, w=0) -> 0*2+1, (h=1, w=2) -> 2*2+1


def test_max_pool_bad_storage_order_names_node():
    with pytest.raises(InvalidModelError, match="maxpool_bad.*storage_order"):
        compute_only("MaxPool", [X], dict(kernel_shape=[2, 2], storage_order=2), n_outputs=2)


def test_pool_missing_kernel_shape_names_node():
    with pytest.raises(InvalidModelError, match="averagepool_bad.*kernel_shape"):
        infer_only("AveragePool", [TensorInfo((1, 3, 4, 4), np.dtype(np.float32))])


def test_pool_rank_2_input_names_node():
    with pytest.raises(InvalidModelError, match="maxpool_bad.*rank"):
        compute_only("MaxPool", [randn(3, 4)], dict(kernel_shape=[2]))


def test_average_pool_dilations_need_opset_19():
    with pytest.raises(InvalidModelError, match="averagepool_bad.*dilations"):
        compute_only("AveragePool", [X], dict(kernel_shape=[2, 2], dilations=[2, 2]), opset=11)


@pytest.mark.parametrize("attrs", [dict(axes=[1, -1], keepdims=0), dict(axes=[2]), {}, dict(keepdims=0)])
@pytest.mark.parametrize("opset", [7, 13])
def test_reduce_mean_axes_attribute(attrs, opset):
    check_op("ReduceMean", [X], attrs, opset=opset)


@pytest.mark.parametrize("axes, attrs", [
    (np.array([2, 3], np.int64), {}),
    (np.array([-1], np.int64), dict(keepdims=0)),
    (None, {}),
    (None, dict(keepdims=0)),
    (np.array([], np.int64), dict(noop_with_empty_axes=1)),
    (None, dict(noop_with_empty_axes=1)),
    (np.array([], np.int64), {}),
])
def test_reduce_mean_axes_input_opset_18(axes, attrs):
    check_op("ReduceMean", [X, axes], attrs, opset=18)


def test_reduce_mean_unknown_axes_input_gives_unknown_shape():
    infos = [TensorInfo((2, 3), np.dtype(np.float32)), TensorInfo((1,), np.dtype(np.int64))]
    assert infer_only("ReduceMean", infos, opset=18)[0].shape is None


def test_reduce_mean_bad_axis_names_node():
    with pytest.raises(InvalidModelError, match="reducemean_bad.*axis 4"):
        compute_only("ReduceMean", [X], dict(axes=[4]), opset=13)


@st.composite
def pool_configs(draw):
    kernel = [draw(st.integers(1, 4)), draw(st.integers(1, 4))]
    strides = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    pads = [draw(st.integers(0, k - 1)) for k in kernel * 2]
    spatial = [draw(st.integers(k, 9)) for k in kernel]
    attrs = dict(kernel_shape=kernel, strides=strides, pads=pads, ceil_mode=draw(st.integers(0, 1)))
    return (1, 2, *spatial), attrs, draw(st.integers(0, 1))


@settings(max_examples=30, deadline=None)
@given(pool_configs())
def test_pool_random_configurations_match_onnxruntime(config):
    x_shape, attrs, count_include_pad = config
    x = randn(*x_shape)
    check_op("MaxPool", [x], attrs, opset=12)
    check_op("AveragePool", [x], attrs | dict(count_include_pad=count_include_pad), opset=11)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_same_padding_with_dilation_follows_the_spec(op):
    # onnxruntime sizes SAME padding without the dilation (8 rows out of 9 here) while the spec and onnx's
    # shape inference give ceil(9 / 1) = 9. The spec's SAME_UPPER pads for a dilated 2x2 kernel (span 3x2)
    # on 9x8 are [1, 0, 1, 1]; onnxruntime with those explicit pads is the oracle.
    x = randn(1, 2, 9, 8)
    same = compute_only(op, [x], dict(kernel_shape=[2, 2], dilations=[2, 1], auto_pad="SAME_UPPER"), opset=19)[0]
    model, _ = one_node_model(op, [x], dict(kernel_shape=[2, 2], dilations=[2, 1], pads=[1, 0, 1, 1]), 19)
    assert same.shape == (1, 2, 9, 8)
    assert_close(same, run_ort(model, [x])[0], op)
