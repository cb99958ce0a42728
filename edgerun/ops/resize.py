"""Resize (opsets 10-21): nearest / linear / cubic (with antialias), separable along each resized axis.

Each axis is resized by gathering `taps` input rows per output row and summing them with weights;
nearest uses one tap, linear two, cubic four. Coordinates are computed in float32 like onnxruntime,
so ties in nearest rounding fall the same way.
"""
from __future__ import annotations

import sys

import numpy as np

from edgerun.ir import TensorInfo
from edgerun.kernels.steps_resize import ResizeKernel
from edgerun.ops import register
from edgerun.ops._common import attr_float, attr_int, attr_ints, attr_str, invalid, normalized_axes

_MODES = ("nearest", "linear", "cubic")
_TRANSFORMS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
               "tf_crop_and_resize", "tf_half_pixel_for_nn")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
_F = np.float32


def _optional(inputs, index):
    return inputs[index] if len(inputs) > index else None


def _attrs(node, opset):
    mode = attr_str(node, "mode", "nearest", _MODES)
    if opset < 11:
        return mode, "asymmetric", "simple"
    transform = attr_str(node, "coordinate_transformation_mode", "half_pixel", _TRANSFORMS)
    nearest_mode = attr_str(node, "nearest_mode", "round_prefer_floor", _NEAREST_MODES)
    if attr_int(node, "antialias", 0) and mode == "nearest":
        raise invalid(node, "attribute 'antialias'=1 needs mode 'linear' or 'cubic'")
    return mode, transform, nearest_mode


def _resize_axes(node, rank, opset):
    axes = attr_ints(node, "axes") if opset >= 18 else None
    if axes is None:
        return list(range(rank))
    return normalized_axes(node, axes, rank, "attribute 'axes'")


def _inputs_by_opset(inputs, opset):
    """(roi, scales, sizes) arrays or None, following the input layout of the opset."""
    if opset < 11:
        return None, _optional(inputs, 1), None
    roi, scales, sizes = (_optional(inputs, i) for i in (1, 2, 3))

    def non_empty(a):
        return None if a is None or np.size(a) == 0 else np.asarray(a)
    return non_empty(roi), non_empty(scales), non_empty(sizes)


def _geometry(node, shape, roi, scales, sizes, opset):
    """(output shape, per-axis coordinate scales, per-axis (roi_start, roi_end))."""
    rank = len(shape)
    axes = _resize_axes(node, rank, opset)
    if (scales is None) == (sizes is None):
        raise invalid(node, "exactly one of the inputs 'scales' and 'sizes' must be given")
    full_scales = [_F(1.0)] * rank
    out = list(shape)
    if scales is not None:
        scales = np.asarray(scales, dtype=_F).reshape(-1)
        if scales.size != len(axes) or np.any(scales <= 0):
            raise invalid(node, f"input 'scales'={scales.tolist()} must hold {len(axes)} positive values")
        for axis, scale in zip(axes, scales):
            full_scales[axis] = scale
            out[axis] = int(np.floor(_F(shape[axis]) * scale))
    else:
        sizes = [int(v) for v in np.asarray(sizes).reshape(-1)]
        if len(sizes) != len(axes) or any(s <= 0 for s in sizes):
            raise invalid(node, f"input 'sizes'={sizes} must hold {len(axes)} positive values")
        _sizes_to_scales(node, shape, axes, sizes, full_scales, out)
    if any(o <= 0 for o in out):
        raise invalid(node, f"output shape {tuple(out)} is empty")
    if any(shape[a] == 0 for a in axes):
        raise invalid(node, f"input X of shape {tuple(shape)} is empty along a resized axis")
    return out, full_scales, _roi_pairs(node, rank, axes, roi)


def _sizes_to_scales(node, shape, axes, sizes, full_scales, out):
    policy = attr_str(node, "keep_aspect_ratio_policy", "stretch", ("stretch", "not_larger", "not_smaller"))
    ratios = [_F(s) / _F(shape[a]) for a, s in zip(axes, sizes)]
    if policy != "stretch":
        common = min(ratios) if policy == "not_larger" else max(ratios)
        ratios = [common] * len(axes)
        sizes = [int(np.floor(_F(shape[a]) * common + _F(0.5))) for a in axes]
    for axis, size, ratio in zip(axes, sizes, ratios):
        full_scales[axis] = _F(ratio)
        out[axis] = size


def _roi_pairs(node, rank, axes, roi):
    pairs = [(_F(0.0), _F(1.0))] * rank
    if roi is None:
        return pairs
    roi = np.asarray(roi, dtype=_F).reshape(-1)
    if roi.size != 2 * len(axes):
        if roi.size == 2 * rank:
            return [(roi[i], roi[i + rank]) for i in range(rank)]
        raise invalid(node, f"input 'roi' has {roi.size} values, expected {2 * len(axes)}")
    for i, axis in enumerate(axes):
        pairs[axis] = (roi[i], roi[i + len(axes)])
    return pairs


def _source_coordinates(transform, out_size, in_size, scale, roi):
    """Input coordinate of each output index, float32."""
    o = np.arange(out_size, dtype=_F)
    in_f, out_f = _F(in_size), _F(out_size)
    if transform == "half_pixel":
        return (o + _F(0.5)) / scale - _F(0.5)
    if transform == "half_pixel_symmetric":
        adjustment = out_f / (scale * in_f)
        center = in_f / _F(2)
        offset = center * (_F(1) - adjustment)
        return offset + (o + _F(0.5)) / scale - _F(0.5)
    if transform == "pytorch_half_pixel":
        return (o + _F(0.5)) / scale - _F(0.5) if out_size > 1 else np.zeros(out_size, _F)
    if transform == "align_corners":
        return o * (in_f - 1) / (out_f - 1) if out_size > 1 else np.zeros(out_size, _F)
    if transform == "asymmetric":
        return o / scale
    if transform == "tf_half_pixel_for_nn":
        return (o + _F(0.5)) / scale
    start, end = roi
    if out_size > 1:
        return start * (in_f - 1) + o * (end - start) * (in_f - 1) / (out_f - 1)
    return np.full(out_size, _F(0.5) * (start + end) * (in_f - 1), _F)


def _nearest_taps(x, nearest_mode, in_size, downsampling):
    if nearest_mode == "simple":
        index = np.ceil(x) if downsampling else np.floor(x)
    elif nearest_mode == "floor":
        index = np.floor(x)
    elif nearest_mode == "ceil":
        index = np.ceil(x)
    else:
        is_tie = x - np.floor(x) == _F(0.5)
        tie_choice = np.floor(x) if nearest_mode == "round_prefer_floor" else np.ceil(x)
        index = np.where(is_tie, tie_choice, np.floor(x + _F(0.5)))
    index = np.clip(index, 0, in_size - 1).astype(np.int64)
    return index[:, None], np.ones((x.size, 1), _F)


def _linear_taps(x, in_size):
    x = np.clip(x, 0, in_size - 1)
    low = np.floor(x).astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    frac = x - low
    return np.stack([low, high], axis=1), np.stack([1 - frac, frac], axis=1).astype(_F)


def _normalised(weights):
    """Rows scaled to sum to 1; a row with no weight at all (every tap excluded) stays zero."""
    totals = np.sum(weights, axis=1, keepdims=True)
    return weights / np.where(totals == 0, 1, totals)


def _cubic_weight(distance, a):
    d = np.abs(distance)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0)).astype(_F)


def _cubic_taps(x, in_size, a, exclude_outside):
    base = np.floor(x).astype(np.int64)
    offsets = np.arange(-1, 3)
    raw = base[:, None] + offsets[None, :]
    weights = _cubic_weight(x[:, None] - raw.astype(_F), _F(a))
    if exclude_outside:
        weights = np.where((raw >= 0) & (raw < in_size), weights, 0)
        weights = _normalised(weights)
    return np.clip(raw, 0, in_size - 1), weights.astype(_F)


def _antialias_taps(node, mode, x, in_size, scale):
    """Downscaling with the linear/cubic filter stretched by 1/scale (taps past an edge repeat the edge
    value unless exclude_outside)."""
    a = attr_float(node, "cubic_coeff_a", -0.75)
    support = (1.0 if mode == "linear" else 2.0) / scale
    first = np.floor(x - support).astype(np.int64) + 1
    taps = first[:, None] + np.arange(int(np.ceil(2 * support)) + 1)[None, :]
    distance = (taps - x[:, None]) * scale
    if mode == "linear":
        weights = np.maximum(0, 1 - np.abs(distance)).astype(_F)
    else:
        weights = _cubic_weight(distance, _F(a))
    if attr_int(node, "exclude_outside", 0):
        weights = np.where((taps >= 0) & (taps < in_size), weights, 0)
    weights = _normalised(weights)
    return np.clip(taps, 0, in_size - 1), weights.astype(_F)


def _axis_taps(node, mode, transform, nearest_mode, in_size, out_size, scale, roi):
    """(indices (out, taps), weights (out, taps), outside mask (out,) for extrapolation)."""
    x = _source_coordinates(transform, out_size, in_size, _F(scale), roi).astype(_F)
    outside = (x < 0) | (x > in_size - 1) if transform == "tf_crop_and_resize" else np.zeros(out_size, bool)
    if mode == "nearest":
        indices, weights = _nearest_taps(x, nearest_mode, in_size, scale < 1)
    elif scale < 1 and attr_int(node, "antialias", 0):
        indices, weights = _antialias_taps(node, mode, x, in_size, _F(scale))
    elif mode == "linear":
        indices, weights = _linear_taps(x, in_size)
    else:
        indices, weights = _cubic_taps(x, in_size, attr_float(node, "cubic_coeff_a", -0.75),
                                       attr_int(node, "exclude_outside", 0))
    return indices, weights, outside


def _resample_axis(data, axis, indices, weights):
    moved = np.moveaxis(data, axis, 0)
    result = np.zeros((indices.shape[0],) + moved.shape[1:], dtype=np.float32)
    expand = (slice(None),) + (None,) * (moved.ndim - 1)
    for t in range(indices.shape[1]):
        result += moved[indices[:, t]] * weights[:, t][expand]
    return np.moveaxis(result, 0, axis)


def _resize_compute(node, inputs, opset):
    if not inputs or inputs[0] is None:
        raise invalid(node, "input 'X' is missing")
    x = np.asarray(inputs[0])
    mode, transform, nearest_mode = _attrs(node, opset)
    roi, scales, sizes = _inputs_by_opset(inputs, opset)
    out, full_scales, rois = _geometry(node, x.shape, roi, scales, sizes, opset)
    result = x.astype(np.float32)
    outside_any = np.zeros(out, dtype=bool)
    for axis in range(x.ndim):
        if out[axis] == x.shape[axis] and full_scales[axis] == 1 and transform != "tf_crop_and_resize":
            continue
        indices, weights, outside = _axis_taps(node, mode, transform, nearest_mode, x.shape[axis], out[axis],
                                               full_scales[axis], rois[axis])
        result = _resample_axis(result, axis, indices, weights)
        shape = [1] * x.ndim
        shape[axis] = out[axis]
        outside_any |= outside.reshape(shape)
    if transform == "tf_crop_and_resize":
        result = np.where(outside_any, _F(attr_float(node, "extrapolation_value", 0.0)), result)
    return [result.astype(x.dtype)]


def _resize_infer(node, inputs, opset):
    if not inputs or inputs[0] is None:
        raise invalid(node, "input 'X' is missing")
    x = inputs[0]
    _attrs(node, opset)
    infos = [_optional(inputs, i) for i in range(1, 4)]
    if any(info is not None and info.value is None for info in infos) or not x.is_static:
        return [TensorInfo(None, np.dtype(x.dtype))]
    values = [None] + [None if info is None else info.value for info in infos]
    roi, scales, sizes = _inputs_by_opset(values, opset)
    out, _, _ = _geometry(node, x.shape, roi, scales, sizes, opset)
    return [TensorInfo(tuple(out), np.dtype(x.dtype))]


# the kernel computes its taps with this module's functions; any_dtype: it takes int64 sizes beside float32
# data and runs other data dtypes on this op
register("Resize", _resize_infer, _resize_compute, step=ResizeKernel(sys.modules[__name__]), any_dtype=True)
