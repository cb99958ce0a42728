"""Sum (edgerun/kernels/steps_variadic.py) and Div / Pow / Sqrt (steps_elementwise.py) arena kernels against
onnxruntime, run through a session: the step runs on the kernel, inside its plan, with ONNX broadcasting."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arena_harness import check_against_onnxruntime, session_model

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# rank-0 inputs are left out: a session returns them as shape (1,) on main too (reported, not this module)
SHAPES = [(2, 3, 4, 5), (3, 1, 5), (1, 5), (5,), (3, 4, 1), (1,)]
ARRAY_SHAPES = [(2, 3, 4, 5), (3, 1, 5), (1, 5)]



@SETTINGS
@given(shapes=st.lists(st.sampled_from(SHAPES), min_size=0, max_size=4), seed=st.integers(0, 2**16))
def test_sum_matches_onnxruntime(shapes, seed):
    shapes = [ARRAY_SHAPES[0]] + shapes   # one activation-like input (small 1-D feeds fold as shape values)
    rng = np.random.default_rng(seed)
    feeds = {f"x{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
    check_against_onnxruntime(session_model("Sum", feeds), feeds)


@SETTINGS
@given(a=st.sampled_from(ARRAY_SHAPES), b=st.sampled_from(SHAPES), seed=st.integers(0, 2**16),
       op=st.sampled_from(["Div", "Pow"]))
def test_div_and_pow_match_onnxruntime(a, b, seed, op):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.1, 3.0, a).astype(np.float32)   # positive bases: no NaN from fractional powers
    other = (rng.uniform(-2.0, 2.0, b) if op == "Pow" else rng.uniform(0.5, 2.0, b) * rng.choice([-1, 1], b))
    feeds = {"a": base, "b": other.astype(np.float32)}
    check_against_onnxruntime(session_model(op, feeds), feeds)


def test_sqrt_matches_onnxruntime():
    x = np.random.default_rng(0).uniform(0, 10, (2, 8, 16, 16)).astype(np.float32)
    check_against_onnxruntime(session_model("Sqrt", {"x": x}), {"x": x})


def test_division_by_zero_and_sqrt_of_negatives_follow_ieee():
    from edgerun import InferenceSession
    a = np.array([[1.0, -1.0, 0.0, 4.0]], np.float32)   # 2-D: small 1-D feeds are folded as shape values
    b = np.array([[0.0, 0.0, 0.0, 2.0]], np.float32)
    div_session = InferenceSession(session_model("Div", {"a": a, "b": b}), kernels_backend="numpy")
    (div,) = div_session.run(None, {"a": a, "b": b})
    assert [s.kind for s in div_session.compiled.steps] == ["kernel"]
    np.testing.assert_array_equal(div[0, [0, 1, 3]], [np.inf, -np.inf, 2.0])
    assert np.isnan(div[0, 2])
    sqrt_session = InferenceSession(session_model("Sqrt", {"a": a}), kernels_backend="numpy")
    (root,) = sqrt_session.run(None, {"a": -a})
    assert [s.kind for s in sqrt_session.compiled.steps] == ["kernel"]
    assert np.isnan(root[0, 0]) and root[0, 1] == 1.0


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_integer_division_stays_on_the_reference_op(dtype):
    """ONNX integer Div truncates toward zero (numpy floors): only float32 runs on the kernel."""
    a = np.array([[7, -7, 9]], dtype)
    b = np.array([[2, 2, -4]], dtype)
    out = check_against_onnxruntime(session_model("Div", {"a": a, "b": b}), {"a": a, "b": b}, kind="reference")
    np.testing.assert_array_equal(out[0], np.array([[3, -3, -2]], dtype))
