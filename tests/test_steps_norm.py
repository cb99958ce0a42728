"""LRN and unfolded BatchNormalization arena kernels (edgerun/kernels/steps_norm.py) against onnxruntime,
run through a session: the step runs on the kernel, inside its plan."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arena_harness import check_against_onnxruntime, session_model
from edgerun.ir import Node
from edgerun.kernels.steps_norm import LRN_STRIP_FLOATS, BatchNormalizationKernel, LRNKernel
from edgerun.ops.norm import _lrn_params

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(shape=st.sampled_from([(1, 3, 5, 5), (2, 7, 4, 3), (1, 16, 9, 1), (1, 1, 6, 6), (3, 2, 1, 8)]),
       size=st.sampled_from([1, 3, 5, 7]), alpha=st.floats(1e-5, 2.0), beta=st.floats(0.1, 1.5),
       bias=st.floats(0.5, 3.0), seed=st.integers(0, 2**16))
def test_lrn_matches_onnxruntime(shape, size, alpha, beta, bias, seed):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    model = session_model("LRN", {"x": x}, {"size": size, "alpha": alpha, "beta": beta, "bias": bias})
    check_against_onnxruntime(model, {"x": x})


@pytest.mark.parametrize("shape", [(2, 6, 9), (1, 5, 2, 3, 4)])
def test_lrn_of_other_ranks_matches_the_reference_op(shape):
    """onnxruntime runs 4-D LRN only; other ranks are checked against edgerun's float64 reference op."""
    from edgerun import InferenceSession, ops
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    model = session_model("LRN", {"x": x}, {"size": 3, "alpha": 0.5, "beta": 0.75, "bias": 1.0})
    node = Node("LRN", ["x"], ["y"], {"size": 3, "alpha": 0.5, "beta": 0.75, "bias": 1.0}, "lrn")
    (expected,) = ops.lookup(node, 13).compute(node, [x], 13)
    for backend in ("numpy", "native"):
        sess = InferenceSession(model, kernels_backend=backend)
        (got,) = sess.run(None, {"x": x})
        assert [s.kind for s in sess.compiled.steps] == ["kernel"]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_lrn_over_many_strips_matches_onnxruntime():
    """ZFNet's first LRN: 96 channels over 110x110 pixels, many strips of the squares scratch."""
    x = np.random.default_rng(0).standard_normal((1, 96, 110, 110)).astype(np.float32) * 10
    model = session_model("LRN", {"x": x}, {"size": 5, "alpha": 1e-4, "beta": 0.75, "bias": 1.0})
    check_against_onnxruntime(model, {"x": x})


def test_lrn_scratch_is_one_bounded_strip():
    node = Node("LRN", ["x"], ["y"], {"size": 5}, "lrn")
    kernel = LRNKernel(_lrn_params)
    scratch = kernel.scratch_bytes(node, [(1, 96, 110, 110)], [(1, 96, 110, 110)])
    assert scratch == {"squares": (96 + 4) * (LRN_STRIP_FLOATS // 100) * 4}
    small = kernel.scratch_bytes(node, [(1, 3, 2, 2)], [(1, 3, 2, 2)])
    assert small == {"squares": (3 + 4) * 4 * 4}   # one strip holds the whole image


@SETTINGS
@given(shape=st.sampled_from([(1, 3, 5, 5), (2, 8, 3, 4), (3, 6), (1, 4, 7), (2, 3, 2, 2, 3)]),
       epsilon=st.sampled_from([1e-5, 1e-3, 0.5]), seed=st.integers(0, 2**16),
       params_as_inputs=st.booleans())
def test_batchnorm_matches_onnxruntime(shape, epsilon, seed, params_as_inputs):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    c = shape[1]
    params = {"scale": rng.standard_normal(c).astype(np.float32), "b": rng.standard_normal(c).astype(np.float32),
              "mean": rng.standard_normal(c).astype(np.float32),
              "var": rng.uniform(0.1, 2.0, c).astype(np.float32)}
    feeds = {"x": x, **params} if params_as_inputs else {"x": x}
    model = session_model("BatchNormalization", feeds, {"epsilon": epsilon},
                          constants=None if params_as_inputs else params, opset=15)
    check_against_onnxruntime(model, feeds)


def test_batchnorm_before_opset_9_with_spatial_0_stays_on_the_reference_op():
    assert not BatchNormalizationKernel().supports(Node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                                                        {"spatial": 0}, "bn"))
    assert BatchNormalizationKernel().supports(Node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                                                    {"spatial": 1}, "bn"))


@pytest.mark.parametrize("opset", [7, 9, 14])
def test_batchnorm_at_older_opsets_matches_onnxruntime(opset):
    rng = np.random.default_rng(opset)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    params = {"scale": rng.standard_normal(4).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32),
              "mean": rng.standard_normal(4).astype(np.float32), "var": rng.uniform(0.1, 2, 4).astype(np.float32)}
    model = session_model("BatchNormalization", {"x": x}, {"epsilon": 1e-3}, constants=params, opset=opset)
    check_against_onnxruntime(model, {"x": x})
