"""MatMul and Gemm against onnxruntime."""
import numpy as np
import pytest

from edgerun.errors import InvalidModelError
from edgerun.ir import TensorInfo
from op_harness import check_op, compute_only, infer_only, randn


@pytest.mark.parametrize("a_shape, b_shape", [
    ((3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 6)), ((4,), (5, 4, 6)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4, 2)),
])
@pytest.mark.parametrize("opset", [9, 13])
def test_matmul_matches_onnxruntime(a_shape, b_shape, opset):
    check_op("MatMul", [randn(*a_shape), randn(*b_shape, seed=1)], opset=opset)


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (5,), (3, 1), (1, 5), (3, 5), ()])
def test_gemm_matches_onnxruntime(trans_a, trans_b, c_shape):
    a = randn(4, 3) if trans_a else randn(3, 4)
    b = randn(5, 4, seed=1) if trans_b else randn(4, 5, seed=1)
    c = None if c_shape is None else randn(*c_shape, seed=2)
    check_op("Gemm", [a, b, c], dict(transA=trans_a, transB=trans_b, alpha=0.5, beta=2.0), opset=13)


def test_gemm_opset_7_requires_c_and_broadcasts_it():
    check_op("Gemm", [randn(3, 4), randn(4, 5, seed=1), randn(5, seed=2)], opset=7)
    with pytest.raises(InvalidModelError, match="gemm_bad.*C"):
        infer_only("Gemm", [TensorInfo((3, 4), np.dtype(np.float32)), TensorInfo((4, 5), np.dtype(np.float32))],
                   opset=7)


def test_matmul_inner_mismatch_names_node():
    with pytest.raises(InvalidModelError, match="matmul_bad.*inner"):
        compute_only("MatMul", [randn(3, 4), randn(5, 6)])


def test_gemm_bad_c_names_node():
    with pytest.raises(InvalidModelError, match="gemm_bad.*C"):
        compute_only("Gemm", [randn(3, 4), randn(4, 5), randn(4)])


def test_gemm_rejects_3d():
    with pytest.raises(InvalidModelError, match="gemm_bad.*2-D"):
        infer_only("Gemm", [TensorInfo((1, 3, 4), np.dtype(np.float32)), TensorInfo((4, 5), np.dtype(np.float32))])
