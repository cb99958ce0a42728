"""Resize against onnxruntime across opsets, modes and coordinate transforms."""
import numpy as np
import pytest

from edgerun.errors import InvalidModelError
from edgerun.ir import TensorInfo
from op_harness import check_op, compute_only, infer_only, randn

X = randn(1, 2, 5, 7)
EMPTY = np.array([], np.float32)
TRANSFORMS = ["half_pixel", "align_corners", "asymmetric", "pytorch_half_pixel"]
NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
SCALES = [(1, 1, 2, 3), (1, 1, 0.5, 0.6), (1, 1, 1.7, 0.4)]


def f32(*values):
    return np.array(values, np.float32)


def i64(*values):
    return np.array(values, np.int64)


def inputs_known(i, array):
    return i > 0


def check_resize(inputs, attrs, opset):
    return check_op("Resize", inputs, attrs, opset=opset, known_values=inputs_known)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [(1, 1, 2, 0.5), (1, 1, 0.6, 1.5), (1, 1, 2, 3)])
def test_resize_opset_10(mode, scales):
    check_resize([X, f32(*scales)], dict(mode=mode), 10)


@pytest.mark.parametrize("scales", SCALES)
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("nearest_mode", NEAREST_MODES)
def test_resize_nearest_scales(scales, transform, nearest_mode):
    attrs = dict(mode="nearest", coordinate_transformation_mode=transform, nearest_mode=nearest_mode)
    check_resize([X, EMPTY, f32(*scales)], attrs, 11)


@pytest.mark.parametrize("scales", SCALES)
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_resize_linear_and_cubic_scales(scales, transform, mode):
    check_resize([X, None, f32(*scales)], dict(mode=mode, coordinate_transformation_mode=transform), 13)


@pytest.mark.parametrize("scales", SCALES)
def test_resize_cubic_exclude_outside_and_coefficient(scales):
    attrs = dict(mode="cubic", exclude_outside=1, cubic_coeff_a=-0.5)
    check_resize([X, None, f32(*scales)], attrs, 13)


@pytest.mark.parametrize("scales", [(1, 1, 2, 3), (1, 1, 1.7, 0.4)])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_half_pixel_symmetric_opset_19(scales, mode):
    # (scales giving exact .5 ties are avoided: there float32 rounding decides the nearest pixel.)
    check_resize([X, None, f32(*scales)], dict(mode=mode, coordinate_transformation_mode="half_pixel_symmetric"), 19)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("sizes", [(1, 2, 9, 4), (1, 2, 1, 3), (1, 2, 5, 14)])
def test_resize_sizes(transform, mode, sizes):
    check_resize([X, None, None, i64(*sizes)], dict(mode=mode, coordinate_transformation_mode=transform), 13)


def test_resize_sizes_with_empty_scales_opset_11():
    check_resize([X, EMPTY, EMPTY, i64(1, 2, 8, 3)], dict(mode="linear"), 11)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("roi", [(0, 0, 0.2, 0.1, 1, 1, 0.9, 0.8), (0, 0, -0.2, 0.1, 1, 1, 1.3, 0.8)])
def test_resize_tf_crop_and_resize(mode, roi):
    attrs = dict(mode=mode, coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-3.0)
    check_resize([X, f32(*roi), EMPTY, i64(1, 2, 4, 6)], attrs, 11)


@pytest.mark.parametrize("inputs, attrs", [
    ([X, None, None, i64(9, 4)], dict(mode="linear", axes=[2, 3])),
    ([X, None, f32(2.5)], dict(mode="linear", axes=[-1])),
    ([X, None, None, i64(9, 9)], dict(mode="linear", axes=[2, 3], keep_aspect_ratio_policy="not_larger")),
    ([X, None, None, i64(9, 9)], dict(mode="nearest", axes=[2, 3], keep_aspect_ratio_policy="not_smaller")),
])
def test_resize_opset_18_axes_and_aspect_policy(inputs, attrs):
    check_resize(inputs, attrs, 18)


def test_resize_linear_hand_worked():
    x = np.array([[[[0.0, 10.0]]]], np.float32)
    got = compute_only("Resize", [x, None, f32(1, 1, 1, 2)], dict(mode="linear"), opset=13)[0]
    # half_pixel: output i maps to (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamp to [0, 1]
    assert got.tolist() == [[[[0.0, 2.5, 7.5, 10.0]]]]


def test_resize_unknown_sizes_give_unknown_shape():
    infos = [TensorInfo((1, 2, 5, 7), np.dtype(np.float32)), None, None, TensorInfo((4,), np.dtype(np.int64))]
    assert infer_only("Resize", infos, opset=13)[0].shape is None


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("scales", [(1, 1, 0.5, 0.6), (1, 1, 0.3, 0.8), (1, 1, 0.7, 1.5)])
def test_resize_antialias_downscaling(mode, transform, scales):
    x = randn(1, 2, 9, 11) * 3
    check_resize([x, None, f32(*scales)], dict(mode=mode, antialias=1, coordinate_transformation_mode=transform), 18)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_resize_antialias_with_sizes_axes_and_exclude_outside(mode):
    x = randn(1, 2, 9, 11) * 3
    attrs = dict(mode=mode, antialias=1, exclude_outside=1, cubic_coeff_a=-0.5)
    check_resize([x, None, None, i64(1, 2, 4, 3)], attrs, 18)
    check_resize([x, None, None, i64(3)], dict(attrs, axes=[-1]), 19)


def test_resize_bad_mode_and_inputs_name_node():
    with pytest.raises(InvalidModelError, match="resize_bad.*mode"):
        compute_only("Resize", [X, None, f32(1, 1, 2, 2)], dict(mode="area"), opset=13)
    with pytest.raises(InvalidModelError, match="resize_bad.*scales"):
        compute_only("Resize", [X, None, f32(1, 2, 2)], dict(mode="nearest"), opset=13)
    with pytest.raises(InvalidModelError, match="resize_bad.*exactly one"):
        compute_only("Resize", [X, None, f32(1, 1, 2, 2), i64(1, 2, 10, 14)], opset=13)
    with pytest.raises(InvalidModelError, match="resize_bad.*antialias"):
        compute_only("Resize", [X, None, f32(1, 1, 0.5, 0.5)], dict(mode="linear", antialias=[1]), opset=18)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_opset_21(mode):
    check_resize([X, None, f32(1, 1, 1.5, 0.5)], dict(mode=mode), 21)
    check_resize([X, None, None, i64(1, 2, 3, 11)], dict(mode=mode), 21)
