"""Pooling (Average/Max/GlobalAverage) and ReduceMean."""
from __future__ import annotations

import itertools

import numpy as np

from edgerun.errors import InvalidModelError
from edgerun.ir import TensorInfo
from edgerun.kernels.native_steps import NativeGlobalAveragePoolKernel, NativePoolKernel
from edgerun.kernels.numpy_steps import AveragePoolKernel, GlobalAveragePoolKernel, MaxPoolKernel
from edgerun.kernels.steps_reduce import ReduceMeanKernel
from edgerun.ops import register
from edgerun.ops.conv import int_list_attr, resolve_conv_pads, window_slices
from edgerun.ops._common import attr_flag, attr_int, attr_ints, invalid, normalized_axes, require_inputs


def _pool_params(node, rank, opset):
    if "kernel_shape" not in node.attrs:
        raise invalid(node, "attribute 'kernel_shape' is required")
    kernel = int_list_attr(node, "kernel_shape", None, rank)
    strides = int_list_attr(node, "strides", [1] * rank, rank)
    dilations = int_list_attr(node, "dilations", [1] * rank, rank)
    if node.op_type == "AveragePool" and opset < 19 and "dilations" in node.attrs:
        raise invalid(node, "attribute 'dilations' needs AveragePool opset >= 19")
    if min(kernel + strides + dilations) < 1:
        raise invalid(node, f"kernel_shape {kernel}, strides {strides}, dilations {dilations} must be >= 1")
    return kernel, strides, dilations


def _pool_output_size(size, k, s, d, begin, end, ceil_mode, auto_pad):
    span = (k - 1) * d + 1
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return -(-size // s)
    if auto_pad == "VALID":
        return (size - span) // s + 1
    room = size + begin + end - span
    if not ceil_mode:
        return room // s + 1
    out = -(-room // s) + 1
    # A last window that would start inside the end padding is dropped.
    if (out - 1) * s >= size + begin:
        out -= 1
    return out


def _pool_geometry(node, spatial, opset):
    """(kernel, strides, dilations, pads, output spatial shape)."""
    rank = len(spatial)
    kernel, strides, dilations = _pool_params(node, rank, opset)
    try:
        pads = resolve_conv_pads(node.attrs, spatial, kernel, strides, dilations)
    except InvalidModelError as error:
        raise invalid(node, str(error)) from None
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    ceil_mode = attr_flag(node, "ceil_mode", 0)
    if node.op_type == "AveragePool":
        attr_flag(node, "count_include_pad", 0)
    for i in range(rank):
        if max(pads[i], pads[i + rank]) >= (kernel[i] - 1) * dilations[i] + 1 and auto_pad == "NOTSET":
            raise invalid(node, f"pads {pads} must be smaller than the kernel {kernel}")
    out = [_pool_output_size(spatial[i], kernel[i], strides[i], dilations[i], pads[i], pads[i + rank],
                             ceil_mode, auto_pad) for i in range(rank)]
    if any(o <= 0 for o in out):
        raise invalid(node, f"output spatial shape {out} is empty (input {tuple(spatial)}, kernel {kernel})")
    return kernel, strides, dilations, pads, out


def _check_pool_rank(node, shape):
    if shape is not None and len(shape) < 3:
        raise invalid(node, f"input X must have rank >= 3 (N, C, spatial...), got shape {shape}")


def _pool_infer(node, inputs, opset):
    require_inputs(node, inputs, 1)
    x = inputs[0]
    _check_pool_rank(node, x.shape)
    if x.shape is None:
        shape = None
    elif not all(isinstance(d, int) for d in x.shape[2:]):
        _pool_params(node, len(x.shape) - 2, opset)
        shape = tuple(x.shape[:2]) + (None,) * (len(x.shape) - 2)
    else:
        shape = tuple(x.shape[:2]) + tuple(_pool_geometry(node, x.shape[2:], opset)[-1])
    infos = [TensorInfo(shape, np.dtype(x.dtype))]
    if _wants_indices(node):
        infos.append(TensorInfo(shape, np.dtype(np.int64)))
    return infos


def _wants_indices(node) -> bool:
    """MaxPool's optional second output: flat indices of the maxima (storage_order 0 row-, 1 column-major)."""
    wanted = node.op_type == "MaxPool" and len(node.outputs) > 1 and bool(node.outputs[1])
    if wanted and attr_int(node, "storage_order", 0) not in (0, 1):
        raise invalid(node, f"attribute 'storage_order'={node.attrs['storage_order']!r} must be 0 or 1")
    return wanted


def _padded(x, pads, out, kernel, strides, dilations, fill):
    rank = len(out)
    widths = [(0, 0), (0, 0)]
    for i in range(rank):
        needed = (out[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
        widths.append((pads[i], max(pads[i + rank], needed - x.shape[2 + i] - pads[i])))
    return np.pad(x, widths, constant_values=fill)


def _windows(xp, kernel, strides, dilations, out):
    for offsets in itertools.product(*(range(k) for k in kernel)):
        yield xp[(slice(None), slice(None)) + window_slices(offsets, dilations, strides, out)]


def _axis_counts(k, s, d, begin, low, high, out):
    """For each output position, how many window taps fall inside [low, high) of the unpadded axis."""
    starts = np.arange(out) * s - begin
    taps = starts[:, None] + np.arange(k)[None, :] * d
    return np.sum((taps >= low) & (taps < high), axis=1)


def _average_divisor(x_spatial, kernel, strides, dilations, pads, out, include_pad):
    rank = len(out)
    divisor = np.ones((), dtype=np.float64)
    for i in range(rank):
        low, high = (-pads[i], x_spatial[i] + pads[i + rank]) if include_pad else (0, x_spatial[i])
        counts = _axis_counts(kernel[i], strides[i], dilations[i], pads[i], low, high, out[i])
        divisor = np.multiply.outer(divisor, counts)
    return divisor


def _average_pool_compute(node, inputs, opset):
    require_inputs(node, inputs, 1)
    x = np.asarray(inputs[0])
    _check_pool_rank(node, x.shape)
    kernel, strides, dilations, pads, out = _pool_geometry(node, x.shape[2:], opset)
    xp = _padded(x, pads, out, kernel, strides, dilations, 0)
    total = np.zeros(x.shape[:2] + tuple(out), dtype=np.float64 if x.dtype == np.float64 else np.float32)
    for window in _windows(xp, kernel, strides, dilations, out):
        total += window
    include_pad = bool(attr_flag(node, "count_include_pad", 0))
    divisor = _average_divisor(x.shape[2:], kernel, strides, dilations, pads, out, include_pad)
    return [(total / np.maximum(divisor, 1)).astype(x.dtype)]


def _lowest(dtype):
    return -np.inf if np.issubdtype(dtype, np.floating) else np.iinfo(dtype).min


def _plane_strides(spatial, storage_order):
    """Element strides of the spatial axes inside one (N, C) plane: row-major, or column-major if 1."""
    order = range(len(spatial)) if storage_order else reversed(range(len(spatial)))
    strides, step = [0] * len(spatial), 1
    for axis in order:
        strides[axis], step = step, step * spatial[axis]
    return strides


def _tap_plane_index(offsets, strides, dilations, pads, out, plane_strides):
    """For each output position, the in-plane flat index of the input element that tap `offsets` reads."""
    index = np.zeros((1,) * len(out), np.int64)
    for axis, n in enumerate(out):
        positions = np.arange(n) * strides[axis] - pads[axis] + offsets[axis] * dilations[axis]
        shape = [1] * len(out)
        shape[axis] = n
        index = index + (positions * plane_strides[axis]).reshape(shape)
    return index


def _max_pool_compute(node, inputs, opset):
    require_inputs(node, inputs, 1)
    with_indices = _wants_indices(node)
    x = np.asarray(inputs[0])
    _check_pool_rank(node, x.shape)
    kernel, strides, dilations, pads, out = _pool_geometry(node, x.shape[2:], opset)
    xp = _padded(x, pads, out, kernel, strides, dilations, _lowest(x.dtype))
    plane_strides = _plane_strides(x.shape[2:], attr_int(node, "storage_order", 0))
    result, where = None, None
    taps = itertools.product(*(range(k) for k in kernel))
    for offsets, window in zip(taps, _windows(xp, kernel, strides, dilations, out)):
        if result is None:
            result = window.copy()
            if with_indices:
                where = np.broadcast_to(_tap_plane_index(offsets, strides, dilations, pads, out, plane_strides),
                                        result.shape).copy()
            continue
        if with_indices:
            # Strictly greater: ties keep the first tap in scan order, as onnxruntime does.
            better = window > result
            where = np.where(better, _tap_plane_index(offsets, strides, dilations, pads, out, plane_strides), where)
        result = np.maximum(result, window)
    if not with_indices:
        return [result]
    n, c = x.shape[:2]
    plane = int(np.prod(x.shape[2:], dtype=np.int64))
    planes = (np.arange(n * c, dtype=np.int64) * plane).reshape((n, c) + (1,) * len(out))
    return [result, where + planes]


def _global_average_infer(node, inputs, opset):
    require_inputs(node, inputs, 1)
    x = inputs[0]
    _check_pool_rank(node, x.shape)
    shape = None if x.shape is None else tuple(x.shape[:2]) + (1,) * (len(x.shape) - 2)
    return [TensorInfo(shape, np.dtype(x.dtype))]


def _global_average_compute(node, inputs, opset):
    require_inputs(node, inputs, 1)
    x = np.asarray(inputs[0])
    _check_pool_rank(node, x.shape)
    return [np.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True, dtype=np.float64).astype(x.dtype)]


# ---- ReduceMean ----

def _reduce_axes(node, axes_input, rank, opset):
    """Normalised axes to reduce, () for a no-op, or None when they are not known yet."""
    if opset >= 18:
        if axes_input is False:
            return None
        axes = [] if axes_input is None else [int(a) for a in np.asarray(axes_input).reshape(-1)]
    else:
        axes = attr_ints(node, "axes", [])
    if not axes:
        return () if attr_flag(node, "noop_with_empty_axes", 0) else tuple(range(rank))
    return tuple(sorted(normalized_axes(node, axes, rank)))


def _reduced_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _reduce_mean_infer(node, inputs, opset):
    require_inputs(node, inputs, 1)
    x = inputs[0]
    if x.shape is None:
        return [TensorInfo(None, np.dtype(x.dtype))]
    axes_info = inputs[1] if len(inputs) > 1 else None
    axes_input = None if axes_info is None else (False if axes_info.value is None else axes_info.value)
    axes = _reduce_axes(node, axes_input, len(x.shape), opset)
    if axes is None:
        return [TensorInfo(None, np.dtype(x.dtype))]
    return [TensorInfo(_reduced_shape(x.shape, axes, attr_flag(node, "keepdims", 1)), np.dtype(x.dtype))]


def _reduce_mean_compute(node, inputs, opset):
    require_inputs(node, inputs, 1)
    x = np.asarray(inputs[0])
    axes = _reduce_axes(node, inputs[1] if len(inputs) > 1 else None, x.ndim, opset)
    if axes == ():
        return [x.copy()]
    keepdims = bool(attr_flag(node, "keepdims", 1))
    return [np.mean(x, axis=axes, keepdims=keepdims, dtype=np.float64).astype(x.dtype)]


register("AveragePool", _pool_infer, _average_pool_compute, step=AveragePoolKernel(resolve_conv_pads),
         native=NativePoolKernel)
register("MaxPool", _pool_infer, _max_pool_compute, step=MaxPoolKernel(resolve_conv_pads), native=NativePoolKernel)
register("GlobalAveragePool", _global_average_infer, _global_average_compute, step=GlobalAveragePoolKernel(),
         native=NativeGlobalAveragePoolKernel)
# any_dtype: the kernel takes int64 axes beside float32 data and runs other data dtypes on this op
register("ReduceMean", _reduce_mean_infer, _reduce_mean_compute,
         step=ReduceMeanKernel(_reduce_axes, _reduce_mean_compute), any_dtype=True)
