"""Add/Sub/Mul/Div/Pow/Sqrt/Sum with broadcasting, against onnxruntime."""
import numpy as np
import pytest

from edgerun.errors import InvalidModelError
from edgerun.ir import TensorInfo
from op_harness import check_op, compute_only, infer_only, randn

SHAPE_PAIRS = [((3, 4), (3, 4)), ((3, 1, 4), (2, 1)), ((4,), (2, 3, 4)), ((), (2, 3)), ((1, 3, 1, 5), (2, 1, 4, 1))]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Pow"])
@pytest.mark.parametrize("a_shape, b_shape", SHAPE_PAIRS)
def test_binary_float_broadcasting(op, a_shape, b_shape):
    a = randn(*a_shape)
    b = randn(*b_shape, seed=1)
    if op in ("Div", "Pow"):
        a = np.asarray(np.abs(a) + 0.1, dtype=np.float32)
        b = np.asarray(np.abs(b) + 0.5, dtype=np.float32)
    check_op(op, [a, b], opset=14 if op != "Pow" else 15, known_values=lambda i, v: False)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("opset", [7, 13])
def test_binary_int64_truncates_division(op, opset):
    a = np.array([7, -7, 7, -7, 0, 9, -1], np.int64)
    b = np.array([2, 2, -2, -2, 3, 3, 5], np.int64)
    check_op(op, [a, b], opset=opset, known_values=lambda i, v: False)


def test_int32_division_truncates_toward_zero():
    got = compute_only("Div", [np.array([-7, 7], np.int32), np.array([2, -2], np.int32)])[0]
    assert got.tolist() == [-3, -3] and got.dtype == np.int32


def test_pow_with_int_exponent_keeps_base_dtype():
    check_op("Pow", [randn(3, 4), np.array([2], np.int64)], opset=15, known_values=lambda i, v: False)


def test_sqrt_and_sum():
    check_op("Sqrt", [np.abs(randn(3, 4))], opset=13)
    check_op("Sum", [randn(3, 1), randn(4, seed=1), randn(2, 1, 4, seed=2)], opset=13)
    check_op("Sum", [randn(3, 4)], opset=8)


def test_broadcast_mismatch_names_node():
    with pytest.raises(InvalidModelError, match="add_bad.*broadcast"):
        infer_only("Add", [TensorInfo((3, 4), np.dtype(np.float32)), TensorInfo((5,), np.dtype(np.float32))])
    with pytest.raises(InvalidModelError, match="mul_bad"):
        compute_only("Mul", [randn(3, 4), randn(2, 4)])


def test_integer_division_by_zero_is_an_error():
    with pytest.raises(InvalidModelError, match="div_bad.*zero"):
        compute_only("Div", [np.array([1], np.int64), np.array([0], np.int64)])


def test_symbolic_broadcast_in_infer():
    info = infer_only("Add", [TensorInfo(("N", 1, 4), np.dtype(np.float32)), TensorInfo((3, 1), np.dtype(np.float32))])[0]
    assert info.shape == ("N", 3, 4)
