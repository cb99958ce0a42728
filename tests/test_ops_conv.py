"""Conv and ConvTranspose against onnxruntime, plus conv_nd / resolve_conv_pads contracts."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerun.errors import InvalidModelError
from edgerun.ir import TensorInfo
from edgerun.ops.conv import conv_nd, resolve_conv_pads
from op_harness import check_op, compute_only, infer_only, randn

CONV_CASES = [
    # (x shape, w shape, attrs)
    ((2, 4, 9, 8), (6, 4, 3, 3), {}),
    ((2, 4, 9, 8), (6, 2, 3, 3), dict(group=2, strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2])),
    ((1, 4, 9, 8), (4, 1, 3, 3), dict(group=4, pads=[1, 1, 1, 1])),
    ((1, 4, 9, 8), (8, 1, 3, 3), dict(group=4, strides=[2, 2], pads=[0, 1, 1, 0])),
    ((1, 4, 10, 7), (4, 1, 3, 3), dict(group=4, auto_pad="SAME_UPPER", strides=[2, 2])),
    ((1, 4, 10, 7), (4, 1, 3, 3), dict(group=4, auto_pad="SAME_LOWER", strides=[2, 2])),
    ((1, 4, 10, 7), (5, 4, 4, 2), dict(auto_pad="SAME_UPPER", strides=[3, 2])),
    ((1, 4, 10, 7), (5, 4, 4, 2), dict(auto_pad="SAME_LOWER")),
    ((1, 4, 10, 7), (5, 4, 3, 3), dict(auto_pad="VALID", strides=[3, 2])),
    ((1, 4, 10, 7), (5, 4, 3, 3), dict(auto_pad="NOTSET", pads=[2, 0, 0, 2])),
    ((2, 3, 6, 6), (5, 3, 1, 1), {}),
    ((1, 3, 7, 7), (5, 3, 1, 1), dict(strides=[2, 2])),
    ((1, 6, 12), (4, 3, 3), dict(group=2, strides=[2], pads=[1, 2], dilations=[2])),
    ((1, 2, 5, 4, 4), (3, 2, 3, 2, 2), dict(pads=[1, 0, 1, 1, 1, 0])),
]


@pytest.mark.parametrize("x_shape, w_shape, attrs", CONV_CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_matches_onnxruntime(x_shape, w_shape, attrs, with_bias):
    bias = randn(w_shape[0], seed=2) if with_bias else None
    check_op("Conv", [randn(*x_shape), randn(*w_shape, seed=1), bias], attrs, opset=11)


@pytest.mark.parametrize("opset", [7, 21])
def test_conv_across_opsets(opset):
    check_op("Conv", [randn(1, 2, 6, 6), randn(3, 2, 3, 3, seed=1), randn(3, seed=2)],
             dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), opset=opset)


TRANSPOSE_CASES = [
    ((2, 4, 5, 4), (4, 3, 3, 3), {}),
    ((2, 4, 5, 4), (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 0, 0, 1], output_padding=[1, 1])),
    ((2, 4, 5, 4), (4, 3, 3, 3), dict(strides=[2, 1], dilations=[2, 1])),
    ((2, 4, 5, 4), (4, 3, 3, 3), dict(strides=[2, 2], output_shape=[11, 10])),
    ((2, 4, 5, 4), (4, 3, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    ((2, 4, 5, 4), (4, 3, 3, 3), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    ((2, 4, 5, 4), (4, 2, 3, 2), dict(strides=[2, 2], group=2, pads=[0, 1, 1, 0])),
    ((1, 4, 5, 4), (4, 1, 4, 4), dict(strides=[2, 2], group=4, pads=[1, 1, 1, 1])),
    ((1, 2, 5, 4), (2, 3, 3, 3), dict(strides=[2, 2], output_shape=[10, 8])),
    ((1, 2, 5, 4), (2, 3, 3, 3), dict(strides=[2, 2], output_shape=[10, 8], auto_pad="SAME_UPPER")),
    ((1, 2, 5, 4), (2, 3, 3, 3), dict(strides=[3, 2], output_shape=[12, 7])),
    ((1, 2, 5, 4), (2, 3, 3, 3), dict(strides=[2, 2], output_padding=[1, 0], pads=[1, 1, 0, 1], dilations=[2, 2])),
]


@pytest.mark.parametrize("x_shape, w_shape, attrs", TRANSPOSE_CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_transpose_matches_onnxruntime(x_shape, w_shape, attrs, with_bias):
    bias = randn(w_shape[1] * attrs.get("group", 1), seed=2) if with_bias else None
    check_op("ConvTranspose", [randn(*x_shape), randn(*w_shape, seed=1), bias], attrs, opset=11)


def test_conv_nd_hand_worked_case():
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    w = np.ones((1, 1, 2, 2), np.float32)
    got = conv_nd(x, w, np.array([10], np.float32), strides=[1, 1], pads=[0, 0, 1, 1], dilations=[1, 1], group=1)
    # windows: [0,1,3,4]=8, [1,2,4,5]=12, [2,5]=7 / [3,4,6,7]=20, [4,5,7,8]=24, [5,8]=13 / [6,7]=13, [7,8]=15, [8]=8
    assert got.tolist() == [[[[18, 22, 17], [30, 34, 23], [23, 25, 18]]]]
    assert got.dtype == np.float32


@pytest.mark.parametrize("auto_pad, expected", [
    ("SAME_UPPER", [0, 1, 1, 1]), ("SAME_LOWER", [1, 1, 0, 1]), ("VALID", [0, 0, 0, 0]), ("NOTSET", [0, 0, 0, 0]),
])
def test_resolve_conv_pads(auto_pad, expected):
    # H=6, k=3, s=2: out 3, total pad (3-1)*2+3-6 = 1; W=5, k=3, s=1: out 5, total 2.
    assert resolve_conv_pads({"auto_pad": auto_pad}, [6, 5], [3, 3], [2, 1], [1, 1]) == expected


def test_resolve_conv_pads_keeps_explicit_pads():
    assert resolve_conv_pads({"pads": [1, 2, 3, 4]}, [6, 5], [3, 3], [1, 1], [1, 1]) == [1, 2, 3, 4]


def test_conv_infer_leaves_symbolic_spatial_unknown():
    info = infer_only("Conv", [TensorInfo(("N", 4, "H", "W"), np.dtype(np.float32)),
                               TensorInfo((8, 4, 3, 3), np.dtype(np.float32))])[0]
    assert info.shape == ("N", 8, None, None)


def test_conv_channel_mismatch_names_node():
    with pytest.raises(InvalidModelError, match="conv_bad.*Conv"):
        compute_only("Conv", [randn(1, 3, 5, 5), randn(4, 2, 3, 3), None])


def test_conv_bad_group_names_node():
    with pytest.raises(InvalidModelError, match="conv_bad.*group"):
        infer_only("Conv", [TensorInfo((1, 4, 5, 5), np.dtype(np.float32)),
                            TensorInfo((4, 4, 3, 3), np.dtype(np.float32))], dict(group=0))


def test_conv_bad_auto_pad_names_node():
    with pytest.raises(InvalidModelError, match="conv_bad.*auto_pad"):
        compute_only("Conv", [randn(1, 2, 5, 5), randn(2, 2, 3, 3), None], dict(auto_pad="SAME"))


def test_conv_kernel_larger_than_input_is_rejected():
    with pytest.raises(InvalidModelError, match="conv_bad.*empty"):
        infer_only("Conv", [TensorInfo((1, 2, 2, 2), np.dtype(np.float32)),
                            TensorInfo((2, 2, 3, 3), np.dtype(np.float32))])


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    dilations = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    strides = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    pads = [draw(st.integers(0, k - 1)) for k in kernel * 2]
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    spatial = [draw(st.integers(max(1, s - p0 - p1), 9)) for s, p0, p1 in zip(spans, pads[:2], pads[2:])]
    return (1, cin, *spatial), (cout, cin // groups, *kernel), dict(
        group=groups, strides=strides, dilations=dilations, pads=pads)


@settings(max_examples=30, deadline=None)
@given(conv_configs())
def test_conv_random_configurations_match_onnxruntime(config):
    x_shape, w_shape, attrs = config
    check_op("Conv", [randn(*x_shape), randn(*w_shape, seed=1), randn(w_shape[0], seed=2)], attrs, opset=13)
