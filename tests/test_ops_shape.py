"""Shape and data-movement ops against onnxruntime; infer() with known and unknown tensor contents."""
import numpy as np
import pytest
from onnx import numpy_helper

from edgerun.errors import InvalidModelError
from edgerun.ir import TensorInfo
from op_harness import check_op, compute_only, infer_only, randn, run_onnx_reference

X = randn(2, 3, 4, 5)
F32 = np.dtype(np.float32)
I64 = np.dtype(np.int64)


def i64(*values):
    return np.array(values, np.int64)


def everything_known(i, array):
    return True


def test_identity():
    check_op("Identity", [X], opset=13)


def test_dropout_opset_7_passes_data_through():
    check_op("Dropout", [X], dict(ratio=0.3), opset=7)
    data, mask = compute_only("Dropout", [X], dict(ratio=0.3), opset=7, n_outputs=2)
    assert np.array_equal(data, X) and mask.dtype == np.float32 and np.all(mask == 1)


@pytest.mark.parametrize("opset, inputs", [
    (10, [X]), (12, [X, np.array(0.2, np.float32)]), (13, [X, np.array(0.2, np.float32), np.array(False)]),
])
def test_dropout_with_mask_matches_onnx_reference(opset, inputs):
    # onnxruntime returns an all-False mask in inference; the spec (and onnx's reference) keep every
    # element, so the mask is all True.
    got, _ = check_op("Dropout", inputs, dict(ratio=0.3) if opset < 12 else {}, opset=opset, n_outputs=2,
                      oracle=run_onnx_reference)
    assert got[1].dtype == np.bool_ and got[1].all()


def test_dropout_training_mode_rejected():
    with pytest.raises(InvalidModelError, match="dropout_bad.*training_mode"):
        compute_only("Dropout", [X, np.array(0.5, np.float32), np.array(True)], opset=13)


@pytest.mark.parametrize("axis, opset", [(0, 9), (1, 9), (2, 11), (4, 13), (-1, 13), (-4, 13)])
def test_flatten(axis, opset):
    check_op("Flatten", [X], dict(axis=axis), opset=opset)


@pytest.mark.parametrize("shape, attrs, opset", [
    (i64(0, -1, 5), {}, 7), (i64(4, 0, -1), {}, 13), (i64(-1), {}, 13), (i64(2, 3, 20), {}, 14),
    (i64(0, 3, 0, 5), dict(allowzero=0), 14),
])
def test_reshape(shape, attrs, opset):
    check_op("Reshape", [X, shape], attrs, opset=opset)


def test_reshape_allowzero_keeps_zero():
    check_op("Reshape", [np.zeros((0, 3), np.float32), i64(3, 0)], dict(allowzero=1), opset=14)


def test_reshape_unknown_shape_value_gives_unknown_shape():
    infos = [TensorInfo((2, 3), F32), TensorInfo((2,), I64)]
    assert infer_only("Reshape", infos)[0].shape is None


def test_reshape_size_mismatch_names_node():
    with pytest.raises(InvalidModelError, match="reshape_bad.*reshape"):
        compute_only("Reshape", [X, i64(7, -1)])
    with pytest.raises(InvalidModelError, match="reshape_bad.*-1"):
        compute_only("Reshape", [X, i64(-1, -1)])


@pytest.mark.parametrize("perm", [None, [0, 2, 3, 1], [3, 1, 0, 2]])
def test_transpose(perm):
    check_op("Transpose", [X], {} if perm is None else dict(perm=perm), opset=13)


def test_transpose_bad_perm_names_node():
    with pytest.raises(InvalidModelError, match="transpose_bad.*perm"):
        compute_only("Transpose", [X], dict(perm=[0, 1, 1, 2]))


@pytest.mark.parametrize("axis", [1, -1, 0])
def test_concat(axis):
    other_shape = list(X.shape)
    other_shape[axis] = 2
    check_op("Concat", [X, randn(*other_shape, seed=1), X], dict(axis=axis), opset=13)


def test_concat_mismatch_names_node():
    with pytest.raises(InvalidModelError, match="concat_bad.*differ"):
        compute_only("Concat", [X, randn(2, 3, 4, 6)], dict(axis=1))


@pytest.mark.parametrize("inputs, attrs, opset, n", [
    ([X], dict(axis=3, split=[2, 3]), 11, 2),
    ([X], dict(axis=2), 11, 2),
    ([X, i64(1, 4)], dict(axis=3), 13, 2),
    ([X, i64(1, 0, 1)], dict(axis=-4), 13, 3),
    ([X], dict(axis=2), 13, 4),
    ([X, np.array([], np.int64)], dict(axis=2), 13, 2),
    ([X], dict(axis=3, num_outputs=3), 18, 3),
    ([X], dict(axis=1, num_outputs=3), 18, 3),
])
def test_split(inputs, attrs, opset, n):
    check_op("Split", inputs, attrs, opset=opset, n_outputs=n)


def test_split_uneven_without_sizes_names_node():
    with pytest.raises(InvalidModelError, match="split_bad.*evenly"):
        compute_only("Split", [X], dict(axis=3), opset=13, n_outputs=2)


@pytest.mark.parametrize("inputs, attrs, opset", [
    ([X], dict(starts=[1, -3], ends=[100, -1], axes=[1, 3]), 9),
    ([X], dict(starts=[0, 1], ends=[1, 3]), 7),
    ([X, i64(1), i64(3)], {}, 10),
    ([X, i64(-1, 10), i64(-100, 0), i64(3, 2), i64(-1, -1)], {}, 13),
    ([X, i64(0, 1), i64(9223372036854775807, 4), i64(0, 2), i64(2, 2)], {}, 13),
    ([X, i64(4, -1), i64(-9223372036854775807, 0), i64(-1, 2), i64(-2, -3)], {}, 13),
    ([X, i64(3), i64(1), i64(1)], {}, 13),
    ([X, i64(-10), i64(10), i64(3), i64(2)], {}, 11),
])
def test_slice(inputs, attrs, opset):
    check_op("Slice", inputs, attrs, opset=opset)


def test_slice_unknown_starts_give_unknown_shape_and_zero_step_fails():
    infos = [TensorInfo((2, 3), F32), TensorInfo((1,), I64), TensorInfo((1,), I64, i64(2))]
    assert infer_only("Slice", infos, opset=13)[0].shape is None
    with pytest.raises(InvalidModelError, match="slice_bad.*steps"):
        compute_only("Slice", [X, i64(0), i64(2), i64(0), i64(0)], opset=13)


@pytest.mark.parametrize("inputs, attrs, opset", [
    ([randn(2, 1, 3, 1)], dict(axes=[1]), 11), ([randn(2, 1, 3, 1)], {}, 11),
    ([randn(2, 1, 3, 1), i64(-1, 1)], {}, 13), ([randn(2, 1, 3, 1)], {}, 13),
])
def test_squeeze(inputs, attrs, opset):
    check_op("Squeeze", inputs, attrs, opset=opset)


def test_squeeze_non_unit_axis_names_node():
    with pytest.raises(InvalidModelError, match="squeeze_bad.*axis 0"):
        compute_only("Squeeze", [X, i64(0)], opset=13)


@pytest.mark.parametrize("inputs, attrs, opset", [
    ([X], dict(axes=[0, -1]), 11), ([X], dict(axes=[2]), 7), ([X, i64(1, 5)], {}, 13), ([X, i64(-1, 0)], {}, 21),
])
def test_unsqueeze(inputs, attrs, opset):
    check_op("Unsqueeze", inputs, attrs, opset=opset)


def test_unsqueeze_repeated_axis_names_node():
    with pytest.raises(InvalidModelError, match="unsqueeze_bad.*repeat"):
        compute_only("Unsqueeze", [X, i64(1, -5)], opset=13)


@pytest.mark.parametrize("attrs, opset", [({}, 13), (dict(start=1, end=-1), 15), (dict(start=-2), 15),
                                          (dict(start=-10, end=10), 15), (dict(start=3, end=1), 15)])
def test_shape(attrs, opset):
    check_op("Shape", [X], attrs, opset=opset)


def test_shape_infer_gives_value_when_static_only():
    info = infer_only("Shape", [TensorInfo((2, 3, 4), F32)], dict(start=1), opset=15)[0]
    assert info.shape == (2,) and info.value.tolist() == [3, 4] and info.value.dtype == np.int64
    info = infer_only("Shape", [TensorInfo(("N", 3, 4), F32)], opset=15)[0]
    assert info.shape == (3,) and info.value is None


@pytest.mark.parametrize("inputs, attrs", [
    ([X, i64(2, -1)], dict(axis=3)), ([X, np.array([[0, 1], [1, 0]], np.int32)], {}),
    ([i64(3, 4, 5), np.array(-1, np.int64)], {}), ([X, np.array(2, np.int64)], dict(axis=-2)),
])
def test_gather(inputs, attrs):
    check_op("Gather", inputs, attrs, opset=13)


def test_gather_out_of_range_names_node():
    with pytest.raises(InvalidModelError, match="gather_bad.*out of range"):
        compute_only("Gather", [X, i64(5)], dict(axis=1))


@pytest.mark.parametrize("to", [1, 2, 3, 6, 7, 9, 10, 11])
@pytest.mark.parametrize("source", ["float", "int"])
def test_cast(to, source):
    x = np.clip(X * 5, -100, 100) if source == "float" else np.array([0, 1, -2, 100, 7], np.int64)
    if to == 2:
        x = np.abs(x)
    check_op("Cast", [x], dict(to=to), opset=13)


def test_cast_bad_target_names_node():
    with pytest.raises(InvalidModelError, match="cast_bad.*'to'"):
        compute_only("Cast", [X], dict(to=8))


@pytest.mark.parametrize("attrs, opset", [
    (dict(value=numpy_helper.from_array(X)), 11), (dict(value_float=2.5), 13), (dict(value_floats=[1.0, 2.5]), 13),
    (dict(value_int=7), 13), (dict(value_ints=[1, 2, 3]), 13),
])
def test_constant(attrs, opset):
    got, _ = check_op("Constant", [], attrs, opset=opset)


def test_constant_infer_carries_value():
    info = infer_only("Constant", [], dict(value_ints=[4, 5]))[0]
    assert info.shape == (2,) and info.value.tolist() == [4, 5]


@pytest.mark.parametrize("attrs", [{}, dict(value=numpy_helper.from_array(np.array([7], np.int64))),
                                   dict(value=numpy_helper.from_array(np.array([1.5], np.float32)))])
def test_constant_of_shape(attrs):
    check_op("ConstantOfShape", [i64(2, 3)], attrs, opset=13, known_values=everything_known)


def test_constant_of_shape_unknown_input_gives_unknown_shape():
    assert infer_only("ConstantOfShape", [TensorInfo((2,), I64)])[0].shape is None


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_attribute_form_opset_7(mode):
    attrs = dict(pads=[0, 1, 2, 0, 0, 0, 1, 2], mode=mode)
    if mode == "constant":
        attrs["value"] = 1.5
    check_op("Pad", [X], attrs, opset=7)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("pads", [i64(0, 1, 2, 0, 0, 0, 1, 2), i64(0, 0, 3, 4, 0, 0, 3, 4)])
def test_pad_input_form(mode, pads):
    check_op("Pad", [X, pads], dict(mode=mode), opset=13)


def test_pad_negative_constant_axes_and_wrap():
    check_op("Pad", [X, i64(0, 0, -1, 1, 0, 0, 1, -2), np.array(3.0, np.float32)], opset=13)
    check_op("Pad", [X, i64(1, 2, 1, 0), np.array(3.0, np.float32), i64(1, -1)], opset=18)
    check_op("Pad", [X, i64(0, 0, 1, 1, 0, 0, 1, 1)], dict(mode="wrap"), opset=19)


def test_pad_unknown_pads_give_unknown_shape_and_bad_mode_fails():
    assert infer_only("Pad", [TensorInfo((2, 3), F32), TensorInfo((4,), I64)], opset=13)[0].shape is None
    with pytest.raises(InvalidModelError, match="pad_bad.*mode"):
        compute_only("Pad", [X, i64(0, 0, 1, 1, 0, 0, 1, 1)], dict(mode="mirror"), opset=13)
    with pytest.raises(InvalidModelError, match="pad_bad.*pads"):
        compute_only("Pad", [X, i64(1, 1)], opset=13)


@pytest.mark.parametrize("op, inputs, attrs, n_outputs", [
    ("Pad", [X, i64(0, 1, 1, 0, 0, 1, 0, 2)], dict(mode="edge"), 1),
    ("Reshape", [X, i64(0, -1)], {}, 1),
    ("Squeeze", [randn(1, 3, 1), i64(0)], {}, 1),
    ("Unsqueeze", [X, i64(2)], {}, 1),
    ("Split", [X], dict(axis=1, num_outputs=2), 2),
    ("Slice", [X, i64(1), i64(-1), i64(3)], {}, 1),
    ("Shape", [X], dict(start=-3, end=-1), 1),
    ("Cast", [X], dict(to=7), 1),
    ("Flatten", [X], dict(axis=-2), 1),
    ("Transpose", [X], dict(perm=[1, 0, 3, 2]), 1),
    ("Identity", [X], {}, 1),
    ("ConstantOfShape", [i64(3, 1)], {}, 1),
])
def test_shape_ops_at_opset_21(op, inputs, attrs, n_outputs):
    check_op(op, inputs, attrs, opset=21, n_outputs=n_outputs, known_values=everything_known)
