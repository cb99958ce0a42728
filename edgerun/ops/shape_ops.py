"""Shape and data-movement ops. Their `infer` reads `.value` where the output shape depends on content."""
from __future__ import annotations

import math
import sys

import numpy as np

from edgerun.ir import TensorInfo
from edgerun.kernels.numpy_steps import ConcatKernel, CopyReshapeKernel, TransposeKernel
from edgerun.kernels.steps_shape import (CastKernel, ConstantOfShapeKernel, DropoutKernel, GatherKernel,
                                         IdentityKernel, PadKernel, SliceKernel, SplitKernel)
from edgerun.ops import register
from edgerun.ops._common import attr_float, attr_int, attr_ints, attr_str, invalid, require_inputs

# TensorProto.DataType numbers of the dtypes Cast supports.
_ONNX_DTYPES = {
    1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64,
}


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def _value(info):
    return None if info is None else info.value


def _ints(array) -> list[int]:
    return [int(v) for v in np.asarray(array).reshape(-1)]


def _axis(node, axis, rank, what="axis"):
    if not isinstance(axis, (int, np.integer)) or not -rank <= axis < rank:
        raise invalid(node, f"{what} {axis!r} out of range for input rank {rank}")
    return int(axis) % rank


def _optional(inputs, index):
    return inputs[index] if len(inputs) > index else None


def _same(info):
    return TensorInfo(info.shape, np.dtype(info.dtype))


# ---- Identity, Dropout ----

def _identity_infer(node, inputs, opset):
    require_inputs(node, inputs, 1)
    return [_same(inputs[0])]


def _identity_compute(node, inputs, opset):
    require_inputs(node, inputs, 1)
    return [np.array(inputs[0], copy=True)]


def _dropout_check(node, training_value):
    if training_value is not None and np.size(training_value) != 1:
        raise invalid(node, f"input 'training_mode' must be a scalar, got shape {np.shape(training_value)}")
    if training_value is not None and bool(np.asarray(training_value).reshape(-1)[0]):
        raise invalid(node, "input 'training_mode' is true; edgerun runs inference only")


def _mask_dtype(x_dtype, opset):
    return np.dtype(np.bool_) if opset >= 10 else np.dtype(x_dtype)


def _dropout_infer(node, inputs, opset):
    require_inputs(node, inputs, 1)
    _dropout_check(node, _value(_optional(inputs, 2)))
    x = inputs[0]
    return [_same(x), TensorInfo(x.shape, _mask_dtype(x.dtype, opset))][:max(1, len(node.outputs))]


def _dropout_compute(node, inputs, opset):
    require_inputs(node, inputs, 1)
    _dropout_check(node, _optional(inputs, 2))
    x = np.asarray(inputs[0])
    return [x.copy(), np.ones(x.shape, dtype=_mask_dtype(x.dtype, opset))][:max(1, len(node.outputs))]


# ---- Flatten, Reshape, Transpose ----

def _flatten_axis(node, rank, opset):
    axis = attr_int(node, "axis", 1)
    low = 0 if opset < 11 else -rank
    if not low <= axis <= rank:
        raise invalid(node, f"attribute 'axis'={axis!r} out of range [{low}, {rank}] for rank {rank}")
    return axis % rank if axis < 0 else axis


def _product(dims):
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else None


def _flatten_infer(node, inputs, opset):
    require_inputs(node, inputs, 1)
    x = inputs[0]
    if x.shape is None:
        return [TensorInfo(None, np.dtype(x.dtype))]
    axis = _flatten_axis(node, len(x.shape), opset)
    return [TensorInfo((_product(x.shape[:axis]), _product(x.shape[axis:])), np.dtype(x.dtype))]


def _flatten_compute(node, inputs, opset):
    require_inputs(node, inputs, 1)
    x = np.asarray(inputs[0])
    axis = _flatten_axis(node, x.ndim, opset)
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


def _reshape_target(node, in_shape, requested):
    """Output shape for Reshape, entries None where a symbolic input leaves them unknown."""
    allowzero = attr_int(node, "allowzero", 0)
    if requested.count(-1) > 1:
        raise invalid(node, f"shape {requested} has more than one -1")
    if allowzero and 0 in requested and -1 in requested:
        raise invalid(node, f"shape {requested} has both 0 and -1 with allowzero=1")
    out = []
    for i, d in enumerate(requested):
        if d < -1:
            raise invalid(node, f"shape {requested} has a negative entry {d}")
        if d == 0 and not allowzero:
            if i >= len(in_shape):
                raise invalid(node, f"shape {requested} copies dimension {i} the input {tuple(in_shape)} lacks")
            d = in_shape[i]
        out.append(d)
    total = _product(in_shape)
    if -1 in out:
        known = _product([d for d in out if d != -1])
        if total is None or known is None:
            return tuple(None if d == -1 else d for d in out)
        if known == 0 or total % known:
            raise invalid(node, f"cannot reshape input {tuple(in_shape)} to {requested}")
        out[out.index(-1)] = total // known
    product = _product(out)
    if total is not None and product is not None and total != product:
        raise invalid(node, f"cannot reshape input {tuple(in_shape)} ({total} elements) to {requested}")
    return tuple(out)


def _reshape_infer(node, inputs, opset):
    require_inputs(node, inputs, 2, " (data, shape)")
    x, shape = inputs[0], inputs[1]
    if x.shape is None or shape.value is None:
        return [TensorInfo(None, np.dtype(x.dtype))]
    return [TensorInfo(_reshape_target(node, x.shape, _ints(shape.value)), np.dtype(x.dtype))]


def _reshape_compute(node, inputs, opset):
    require_inputs(node, inputs, 2, " (data, shape)")
    x = np.asarray(inputs[0])
    return [x.reshape(_reshape_target(node, x.shape, _ints(inputs[1])))]


def _perm(node, rank):
    perm = attr_ints(node, "perm", list(range(rank - 1, -1, -1)))
    if sorted(perm) != list(range(rank)):
        raise invalid(node, f"attribute 'perm'={perm} is not a permutation of {rank} axes")
    return perm


def _transpose_infer(node, inputs, opset):
    require_inputs(node, inputs, 1)
    x = inputs[0]
    if x.shape is None:
        return [TensorInfo(None, np.dtype(x.dtype))]
    return [TensorInfo(tuple(x.shape[p] for p in _perm(node, len(x.shape))), np.dtype(x.dtype))]


def _transpose_compute(node, inputs, opset):
    require_inputs(node, inputs, 1)
    x = np.asarray(inputs[0])
    return [np.ascontiguousarray(np.transpose(x, _perm(node, x.ndim)))]


# ---- Concat, Split ----

def _concat_shape(node, shapes):
    axis = attr_int(node, "axis")
    if any(s is None for s in shapes):
        return None
    rank = len(shapes[0])
    if any(len(s) != rank for s in shapes):
        raise invalid(node, f"inputs have different ranks: {shapes}")
    axis = _axis(node, axis, rank, "attribute 'axis'")
    out = list(shapes[0])
    for shape in shapes[1:]:
        for i, d in enumerate(shape):
            if i == axis:
                out[i] = out[i] + d if isinstance(out[i], int) and isinstance(d, int) else None
            elif isinstance(out[i], int) and isinstance(d, int) and out[i] != d:
                raise invalid(node, f"input shapes {shapes} differ outside axis {axis}")
    return tuple(out)


def _concat_infer(node, inputs, opset):
    if not inputs or any(i is None for i in inputs):
        raise invalid(node, "expects one or more inputs, none omitted")
    return [TensorInfo(_concat_shape(node, [i.shape for i in inputs]), np.dtype(inputs[0].dtype))]


def _concat_compute(node, inputs, opset):
    if not inputs or any(i is None for i in inputs):
        raise invalid(node, "expects one or more inputs, none omitted")
    arrays = [np.asarray(i) for i in inputs]
    _concat_shape(node, [a.shape for a in arrays])
    return [np.concatenate(arrays, axis=attr_int(node, "axis"))]


def _split_sizes(node, dim, split, opset):
    """Sizes of each output along the split axis (None when `split` is an unknown tensor)."""
    count = len(node.outputs)
    if split is not None and np.size(split) == 0:
        split = None  # an empty `split` tensor means "split evenly", as if omitted
    if split is not None:
        sizes = _ints(split)
        if len(sizes) != count or any(s < 0 for s in sizes):
            raise invalid(node, f"split {sizes} must give {count} non-negative sizes")
        if isinstance(dim, int) and sum(sizes) != dim:
            raise invalid(node, f"split {sizes} does not add up to the axis length {dim}")
        return sizes
    num_outputs = attr_int(node, "num_outputs", None) if "num_outputs" in node.attrs else None
    if num_outputs is not None and num_outputs != count:
        raise invalid(node, f"attribute 'num_outputs'={num_outputs} but the node has {count} outputs")
    if not isinstance(dim, int):
        return None
    if num_outputs is not None and opset >= 18:
        chunk = -(-dim // count)
        return [max(0, min(chunk, dim - i * chunk)) for i in range(count)]
    if dim % count:
        raise invalid(node, f"axis length {dim} does not split evenly into {count} outputs")
    return [dim // count] * count


def _split_request(node, inputs, opset, value_of):
    if opset < 13:
        return attr_ints(node, "split")
    return value_of(_optional(inputs, 1))


def _split_infer(node, inputs, opset):
    require_inputs(node, inputs, 1)
    x = inputs[0]
    unknown = [TensorInfo(None, np.dtype(x.dtype))] * len(node.outputs)
    split_info = _optional(inputs, 1)
    if x.shape is None or (opset >= 13 and split_info is not None and split_info.value is None):
        return unknown
    axis = _axis(node, attr_int(node, "axis", 0), len(x.shape), "attribute 'axis'")
    sizes = _split_sizes(node, x.shape[axis], _split_request(node, inputs, opset, _value), opset)
    if sizes is None:
        return unknown
    return [TensorInfo(x.shape[:axis] + (s,) + x.shape[axis + 1:], np.dtype(x.dtype)) for s in sizes]


def _split_compute(node, inputs, opset):
    require_inputs(node, inputs, 1)
    x = np.asarray(inputs[0])
    axis = _axis(node, attr_int(node, "axis", 0), x.ndim, "attribute 'axis'")
    sizes = _split_sizes(node, x.shape[axis], _split_request(node, inputs, opset, lambda v: v), opset)
    bounds = np.cumsum([0] + sizes)
    return [np.take(x, np.arange(bounds[i], bounds[i + 1]), axis=axis) for i in range(len(sizes))]


# ---- Slice ----

def _slice_request(node, inputs, opset, value_of):
    """(starts, ends, axes, steps) as lists, or None when some are unknown tensors."""
    if opset < 10:
        if "starts" not in node.attrs or "ends" not in node.attrs:
            raise invalid(node, "attributes 'starts' and 'ends' are required")
        return attr_ints(node, "starts"), attr_ints(node, "ends"), attr_ints(node, "axes"), None
    require_inputs(node, inputs, 3, " (data, starts, ends)")
    values = [value_of(_optional(inputs, i)) for i in range(1, 5)]
    if any(v is None for v in values[:2]) or any(
            _optional(inputs, i) is not None and values[i - 1] is None for i in (3, 4)):
        return None
    return tuple(None if v is None else _ints(v) for v in values)


def _clamped_slice(start, end, step, dim):
    """The index range ONNX's clamping rules select, as (start, stop-for-python, length)."""
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        length = max(0, -(-(end - start) // step))
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        length = max(0, -(-(start - end) // -step))
    return start, (None if end < 0 else end), length


def _slice_plan(node, shape, request):
    starts, ends, axes, steps = request
    rank = len(shape)
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise invalid(node, f"starts {starts}, ends {ends}, axes {axes}, steps {steps} differ in length")
    axes = [_axis(node, a, rank, "slice axis") for a in axes]
    if len(set(axes)) != len(axes):
        raise invalid(node, f"slice axes {axes} repeat an axis")
    if 0 in steps:
        raise invalid(node, f"slice steps {steps} contain 0")
    return list(zip(axes, starts, ends, steps))


def _slice_infer(node, inputs, opset):
    x = inputs[0] if inputs else None
    if x is None:
        raise invalid(node, "input 'data' is missing")
    request = _slice_request(node, inputs, opset, _value)
    if request is None or x.shape is None:
        return [TensorInfo(None, np.dtype(x.dtype))]
    out = list(x.shape)
    for axis, start, end, step in _slice_plan(node, x.shape, request):
        out[axis] = _clamped_slice(start, end, step, x.shape[axis])[2] if isinstance(x.shape[axis], int) else None
    return [TensorInfo(tuple(out), np.dtype(x.dtype))]


def _slice_compute(node, inputs, opset):
    if not inputs or inputs[0] is None:
        raise invalid(node, "input 'data' is missing")
    x = np.asarray(inputs[0])
    index = [slice(None)] * x.ndim
    for axis, start, end, step in _slice_plan(node, x.shape, _slice_request(node, inputs, opset, lambda v: v)):
        begin, stop, _ = _clamped_slice(start, end, step, x.shape[axis])
        index[axis] = slice(begin, stop, step)
    return [np.ascontiguousarray(x[tuple(index)])]


# ---- Squeeze, Unsqueeze ----

def _axes_request(node, inputs, opset, value_of):
    """Axes from the attribute (< opset 13) or the input; False when the input is an unknown tensor."""
    if opset < 13:
        return attr_ints(node, "axes")
    axes_input = _optional(inputs, 1)
    if axes_input is None:
        return None
    value = value_of(axes_input)
    return False if value is None else _ints(value)


def _squeeze_shape(node, shape, axes):
    rank = len(shape)
    if axes is None:
        if not _static(shape):
            return None
        return tuple(d for d in shape if d != 1)
    axes = {_axis(node, a, rank, "squeeze axis") for a in axes}
    for a in axes:
        if isinstance(shape[a], int) and shape[a] != 1:
            raise invalid(node, f"cannot squeeze axis {a} of length {shape[a]} (input shape {tuple(shape)})")
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _unsqueeze_shape(node, shape, axes):
    if axes is None:
        raise invalid(node, "axes are required")
    rank = len(shape) + len(axes)
    normalised = [_axis(node, a, rank, "unsqueeze axis") for a in axes]
    if len(set(normalised)) != len(normalised):
        raise invalid(node, f"unsqueeze axes {axes} repeat an axis")
    rest = iter(shape)
    return tuple(1 if i in normalised else next(rest) for i in range(rank))


def _axes_reshape_op(new_shape):
    """infer and compute of an op that reshapes by an axes list (Squeeze, Unsqueeze): `new_shape(node,
    shape, axes)` gives the output shape."""
    def infer(node, inputs, opset):
        require_inputs(node, inputs, 1)
        x = inputs[0]
        axes = _axes_request(node, inputs, opset, _value)
        if x.shape is None or axes is False:
            return [TensorInfo(None, np.dtype(x.dtype))]
        return [TensorInfo(new_shape(node, x.shape, axes), np.dtype(x.dtype))]

    def compute(node, inputs, opset):
        require_inputs(node, inputs, 1)
        x = np.asarray(inputs[0])
        return [x.reshape(new_shape(node, x.shape, _axes_request(node, inputs, opset, lambda v: v)))]

    return infer, compute


# ---- Shape, Gather, Cast ----

def _shape_range(node, rank, opset):
    if opset < 15:
        return 0, rank
    start, end = attr_int(node, "start", 0), attr_int(node, "end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return start, max(start, end)


def _shape_infer(node, inputs, opset):
    require_inputs(node, inputs, 1)
    shape = inputs[0].shape
    if shape is None:
        return [TensorInfo(None, np.dtype(np.int64))]
    start, end = _shape_range(node, len(shape), opset)
    dims = tuple(shape[start:end])
    value = np.array(dims, dtype=np.int64) if _static(dims) else None
    return [TensorInfo((end - start,), np.dtype(np.int64), value)]


def _shape_compute(node, inputs, opset):
    require_inputs(node, inputs, 1)
    shape = np.shape(inputs[0])
    start, end = _shape_range(node, len(shape), opset)
    return [np.array(shape[start:end], dtype=np.int64)]


def _gather_infer(node, inputs, opset):
    require_inputs(node, inputs, 2, " (data, indices)")
    data, indices = inputs[0], inputs[1]
    if not np.issubdtype(np.dtype(indices.dtype), np.integer):
        raise invalid(node, f"input 'indices' must be int32/int64, got {indices.dtype}")
    if data.shape is None or indices.shape is None:
        return [TensorInfo(None, np.dtype(data.dtype))]
    axis = _axis(node, attr_int(node, "axis", 0), len(data.shape), "attribute 'axis'")
    if indices.value is not None and isinstance(data.shape[axis], int):
        _checked_indices(node, indices.value, data.shape[axis])
    shape = tuple(data.shape[:axis]) + tuple(indices.shape) + tuple(data.shape[axis + 1:])
    return [TensorInfo(shape, np.dtype(data.dtype))]


def _checked_indices(node, indices, dim):
    indices = np.asarray(indices).astype(np.int64)
    if indices.size and (indices.min() < -dim or indices.max() >= dim):
        raise invalid(node, f"indices out of range [{-dim}, {dim - 1}]: min {indices.min()}, max {indices.max()}")
    return np.where(indices < 0, indices + dim, indices)


def _gather_compute(node, inputs, opset):
    require_inputs(node, inputs, 2, " (data, indices)")
    data = np.asarray(inputs[0])
    if not np.issubdtype(np.asarray(inputs[1]).dtype, np.integer):
        raise invalid(node, f"input 'indices' must be int32/int64, got {np.asarray(inputs[1]).dtype}")
    axis = _axis(node, attr_int(node, "axis", 0), data.ndim, "attribute 'axis'")
    indices = _checked_indices(node, inputs[1], data.shape[axis])
    return [np.take(data, indices, axis=axis)]


def _cast_dtype(node):
    to = attr_int(node, "to")
    if to not in _ONNX_DTYPES:
        raise invalid(node, f"attribute 'to'={to!r} is not a supported dtype "
                            f"(TensorProto codes {sorted(_ONNX_DTYPES)})")
    return np.dtype(_ONNX_DTYPES[to])


def _cast_infer(node, inputs, opset):
    require_inputs(node, inputs, 1)
    return [TensorInfo(inputs[0].shape, _cast_dtype(node))]


def _cast_compute(node, inputs, opset):
    require_inputs(node, inputs, 1)
    with np.errstate(invalid="ignore", over="ignore"):
        return [np.asarray(inputs[0]).astype(_cast_dtype(node))]


# ---- Constant, ConstantOfShape ----

def _constant_value(node):
    given = [k for k in node.attrs if k in ("value", "value_float", "value_floats", "value_int", "value_ints",
                                            "value_string", "value_strings", "sparse_value")]
    if len(given) != 1:
        raise invalid(node, f"exactly one value attribute is required, got {given}")
    key, value = given[0], node.attrs[given[0]]
    if key == "value":
        return np.array(value)
    if key == "value_float":
        return np.array(value, dtype=np.float32)
    if key == "value_floats":
        return np.array(value, dtype=np.float32).reshape(-1)
    if key == "value_int":
        return np.array(value, dtype=np.int64)
    if key == "value_ints":
        return np.array(value, dtype=np.int64).reshape(-1)
    raise invalid(node, f"attribute {key!r} is not supported (numeric tensors only)")


def _constant_infer(node, inputs, opset):
    value = _constant_value(node)
    return [TensorInfo(tuple(value.shape), value.dtype, value)]


def _constant_compute(node, inputs, opset):
    return [_constant_value(node)]


def _fill_value(node):
    value = node.attrs.get("value")
    if value is None:
        return np.zeros((), dtype=np.float32)
    value = np.asarray(value)
    if value.size != 1:
        raise invalid(node, f"attribute 'value' must hold one element, got shape {value.shape}")
    return value.reshape(())


def _target_shape(node, shape):
    dims = _ints(shape)
    if np.ndim(shape) != 1 or any(d < 0 for d in dims):
        raise invalid(node, f"input 'input' must be a 1-D tensor of non-negative sizes, got {np.asarray(shape)}")
    return tuple(dims)


def _constant_of_shape_infer(node, inputs, opset):
    require_inputs(node, inputs, 1)
    dtype = _fill_value(node).dtype
    if inputs[0].value is None:
        return [TensorInfo(None, dtype)]
    return [TensorInfo(_target_shape(node, inputs[0].value), dtype)]


def _constant_of_shape_compute(node, inputs, opset):
    require_inputs(node, inputs, 1)
    fill = _fill_value(node)
    return [np.full(_target_shape(node, inputs[0]), fill, dtype=fill.dtype)]


# ---- Pad ----

_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def _pad_request(node, inputs, opset, value_of):
    """(per-axis pads list [begin..., end...] over `axes`, axes or None, constant) or None if unknown."""
    if opset < 11:
        pads = attr_ints(node, "pads")
        if pads is None:
            raise invalid(node, "attribute 'pads' is required")
        return pads, None, attr_float(node, "value", 0.0)
    require_inputs(node, inputs, 2, " (data, pads)")
    pads, constant, axes = (value_of(_optional(inputs, i)) for i in (1, 2, 3))
    if pads is not None and not np.issubdtype(np.asarray(pads).dtype, np.integer):
        raise invalid(node, f"input 'pads' must be int64, got {np.asarray(pads).dtype}")
    if pads is None or (_optional(inputs, 3) is not None and axes is None):
        return None
    constant = np.zeros(1) if constant is None else np.asarray(constant).reshape(-1)
    if constant.size > 1:
        raise invalid(node, "input 'constant_value' must be a scalar")
    constant = constant[0] if constant.size == 1 else 0
    return _ints(pads), None if axes is None else _ints(axes), constant


def _pad_widths(node, rank, pads, axes, opset):
    axes = list(range(rank)) if axes is None else [_axis(node, a, rank, "pad axis") for a in axes]
    if len(pads) != 2 * len(axes):
        raise invalid(node, f"pads {pads} must have {2 * len(axes)} entries for {len(axes)} axes")
    widths = [(0, 0)] * rank
    for i, axis in enumerate(axes):
        widths[axis] = (pads[i], pads[i + len(axes)])
    return widths


def _pad_mode(node, opset):
    mode = attr_str(node, "mode", "constant")
    if mode not in _PAD_MODES or (mode == "wrap" and opset < 19):
        raise invalid(node, f"attribute 'mode'={mode!r} is not supported at opset {opset}")
    return mode


def _pad_infer(node, inputs, opset):
    x = inputs[0] if inputs else None
    if x is None:
        raise invalid(node, "input 'data' is missing")
    _pad_mode(node, opset)
    request = _pad_request(node, inputs, opset, _value)
    if request is None or x.shape is None:
        return [TensorInfo(None, np.dtype(x.dtype))]
    widths = _pad_widths(node, len(x.shape), request[0], request[1], opset)
    shape = tuple(d + b + e if isinstance(d, int) else None for d, (b, e) in zip(x.shape, widths))
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise invalid(node, f"negative pads {request[0]} remove more than the input shape {x.shape}")
    return [TensorInfo(shape, np.dtype(x.dtype))]


def _pad_compute(node, inputs, opset):
    if not inputs or inputs[0] is None:
        raise invalid(node, "input 'data' is missing")
    x = np.asarray(inputs[0])
    mode = _pad_mode(node, opset)
    pads, axes, constant = _pad_request(node, inputs, opset, lambda v: v)
    widths = _pad_widths(node, x.ndim, pads, axes, opset)
    # Negative pads crop first; the remaining non-negative pads then grow the tensor.
    crop = tuple(slice(max(0, -b), d - max(0, -e)) for d, (b, e) in zip(x.shape, widths))
    cropped = x[crop]
    if any(d < 0 for d in cropped.shape) or any(b + e + d < 0 for d, (b, e) in zip(x.shape, widths)):
        raise invalid(node, f"negative pads {pads} remove more than the input shape {x.shape}")
    grow = [(max(0, b), max(0, e)) for b, e in widths]
    if not any(b or e for b, e in grow):
        return [cropped.copy()]
    if mode != "constant" and any(g != (0, 0) and d == 0 for g, d in zip(grow, cropped.shape)):
        raise invalid(node, f"mode {mode!r} cannot pad an empty axis")
    if mode == "constant":
        return [np.pad(cropped, grow, mode="constant", constant_values=np.asarray(constant, dtype=x.dtype))]
    return [np.pad(cropped, grow, mode=_PAD_MODES[mode])]


_THIS = sys.modules[__name__]   # the data movers parse their nodes with this module's functions
register("Identity", _identity_infer, _identity_compute, step=IdentityKernel(), any_dtype=True)
register("Dropout", _dropout_infer, _dropout_compute, step=DropoutKernel(_THIS), any_dtype=True)
# the arena kernels of these ops only move bytes: right for any dtype
register("Flatten", _flatten_infer, _flatten_compute, step=CopyReshapeKernel(), any_dtype=True)
register("Reshape", _reshape_infer, _reshape_compute, step=CopyReshapeKernel(), any_dtype=True)
register("Transpose", _transpose_infer, _transpose_compute, step=TransposeKernel(), any_dtype=True)
register("Concat", _concat_infer, _concat_compute, step=ConcatKernel(), any_dtype=True)
register("Split", _split_infer, _split_compute, step=SplitKernel(_THIS), any_dtype=True)
register("Slice", _slice_infer, _slice_compute, step=SliceKernel(_THIS), any_dtype=True)
register("Squeeze", *_axes_reshape_op(_squeeze_shape), step=CopyReshapeKernel(), any_dtype=True)
register("Unsqueeze", *_axes_reshape_op(_unsqueeze_shape), step=CopyReshapeKernel(), any_dtype=True)
register("Shape", _shape_infer, _shape_compute)
register("Gather", _gather_infer, _gather_compute, step=GatherKernel(_THIS), any_dtype=True)
register("Cast", _cast_infer, _cast_compute, step=CastKernel(), any_dtype=True)
register("Constant", _constant_infer, _constant_compute)
register("ConstantOfShape", _constant_of_shape_infer, _constant_of_shape_compute, step=ConstantOfShapeKernel(_THIS),
         any_dtype=True)
register("Pad", _pad_infer, _pad_compute, step=PadKernel(_THIS), any_dtype=True)
