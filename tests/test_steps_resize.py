"""Resize arena kernel (edgerun/kernels/steps_resize.py) against onnxruntime, through whole sessions: the step
runs on the kernel, inside its plan, for every mode and the usual coordinate transforms."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arena_harness import check_against_onnxruntime, session_model

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EMPTY = np.zeros(0, np.float32)


@SETTINGS
@given(mode=st.sampled_from(["nearest", "linear", "cubic"]),
       transform=st.sampled_from(["half_pixel", "asymmetric", "pytorch_half_pixel", "align_corners"]),
       nearest_mode=st.sampled_from(["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]),
       scale_h=st.sampled_from([0.5, 0.75, 1.0, 1.5, 2.0, 3.0]), scale_w=st.sampled_from([0.6, 1.0, 2.0, 2.5]),
       seed=st.integers(0, 99))
def test_resize_by_scales_matches_onnxruntime(mode, transform, nearest_mode, scale_h, scale_w, seed):
    if transform == "align_corners" and mode != "nearest" and min(scale_h, scale_w) < 1:
        scale_h, scale_w = max(scale_h, 1.0), max(scale_w, 1.0)   # the two round the output length differently
    x = np.random.default_rng(seed).standard_normal((2, 3, 8, 10)).astype(np.float32)
    scales = np.array([1, 1, scale_h, scale_w], np.float32)
    attrs = {"mode": mode, "coordinate_transformation_mode": transform, "nearest_mode": nearest_mode}
    model = session_model("Resize", {"x": x}, attrs, constants={"roi": EMPTY, "scales": scales})
    check_against_onnxruntime(model, {"x": x})


@SETTINGS
@given(height=st.integers(1, 20), width=st.integers(1, 20), mode=st.sampled_from(["nearest", "linear", "cubic"]),
       seed=st.integers(0, 99))
def test_resize_by_sizes_matches_onnxruntime(height, width, mode, seed):
    x = np.random.default_rng(seed).standard_normal((1, 4, 7, 9)).astype(np.float32)
    sizes = np.array([1, 4, height, width], np.int64)
    model = session_model("Resize", {"x": x}, {"mode": mode},
                          constants={"roi": EMPTY, "scales": EMPTY, "sizes": sizes})
    check_against_onnxruntime(model, {"x": x})


def test_resize_with_antialias_matches_onnxruntime():
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 24)).astype(np.float32)
    for mode in ("linear", "cubic"):
        model = session_model("Resize", {"x": x}, {"mode": mode, "antialias": 1},
                              constants={"roi": EMPTY, "scales": np.array([1, 1, 0.4, 0.5], np.float32)}, opset=18)
        check_against_onnxruntime(model, {"x": x})


def test_resize_of_the_last_axis_of_a_3d_tensor_matches_onnxruntime():
    x = np.random.default_rng(1).standard_normal((2, 5, 11)).astype(np.float32)
    model = session_model("Resize", {"x": x}, {"mode": "linear"},
                          constants={"roi": EMPTY, "scales": np.array([1, 1, 2.5], np.float32)})
    check_against_onnxruntime(model, {"x": x})


def test_resize_at_opset_10_matches_onnxruntime():
    x = np.random.default_rng(2).standard_normal((1, 2, 6, 6)).astype(np.float32)
    model = session_model("Resize", {"x": x}, {"mode": "nearest"},
                          constants={"scales": np.array([1, 1, 2, 3], np.float32)}, opset=10)
    check_against_onnxruntime(model, {"x": x})


def test_resize_of_a_leading_axis_runs_the_reference_op_into_the_output():
    """Resizing the channels is not a row-by-row resize: the kernel runs the reference op (exact values)."""
    x = np.random.default_rng(3).standard_normal((1, 4, 5, 5)).astype(np.float32)
    model = session_model("Resize", {"x": x}, {"mode": "nearest"},
                          constants={"roi": EMPTY, "scales": np.array([1, 2, 1, 1], np.float32)})
    check_against_onnxruntime(model, {"x": x})
