"""Conv and ConvTranspose: numpy reference kernels (im2col + matmul) and shape functions."""
from __future__ import annotations

import itertools
import math
import sys

import numpy as np

from edgerun.errors import InvalidModelError
from edgerun.ir import TensorInfo
from edgerun.kernels.steps_conv import ConvKernel, ConvTransposeKernel
from edgerun.ops import register
from edgerun.ops._common import attr_int, attr_ints, attr_str, check_int32_attr, invalid, require_inputs

_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def _effective_kernel(k: int, d: int) -> int:
    return (k - 1) * d + 1


def resolve_conv_pads(node_attrs, input_spatial_shape, kernel_shape, strides, dilations) -> list[int]:
    """Explicit ONNX-order pads `[begin..., end...]` for a Conv/pool, resolving `auto_pad`."""
    rank = len(kernel_shape)
    auto_pad = node_attrs.get("auto_pad", "NOTSET")
    if not isinstance(auto_pad, str) or auto_pad not in _AUTO_PADS:
        raise InvalidModelError(f"auto_pad {auto_pad!r} is not one of {_AUTO_PADS}")
    if auto_pad != "NOTSET" and any(node_attrs.get("pads") or ()):
        raise InvalidModelError(f"attribute 'pads'={list(node_attrs['pads'])!r} cannot be used together with "
                                f"auto_pad={auto_pad!r} (ONNX: pads and auto_pad are exclusive)")
    if auto_pad == "VALID":
        return [0] * (2 * rank)
    if auto_pad == "NOTSET":
        pads = node_attrs.get("pads", [0] * (2 * rank))
        if not isinstance(pads, (list, tuple)) or len(pads) != 2 * rank or \
                not all(isinstance(p, (int, np.integer)) and 0 <= p <= 2**31 - 1 for p in pads):
            raise InvalidModelError(f"pads {pads!r} must be {2 * rank} non-negative integers below 2**31")
        return [int(p) for p in pads]
    begins, ends = [], []
    for size, k, s, d in zip(input_spatial_shape, kernel_shape, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + _effective_kernel(k, d) - size)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def conv_output_shape(spatial, kernel_shape, strides, pads, dilations) -> list[int]:
    rank = len(kernel_shape)
    return [(size + pads[i] + pads[i + rank] - _effective_kernel(kernel_shape[i], dilations[i])) // strides[i] + 1
            for i, size in enumerate(spatial)]


def window_slices(offsets, dilations, strides, out_shape):
    """Per spatial axis, the strided slice of a padded input that kernel tap `offsets` reads."""
    return tuple(slice(o * d, o * d + s * (n - 1) + 1, s)
                 for o, d, s, n in zip(offsets, dilations, strides, out_shape))


def _pad_spatial(x, pads):
    rank = x.ndim - 2
    if not any(pads):
        return x
    widths = [(0, 0), (0, 0)] + [(pads[i], pads[i + rank]) for i in range(rank)]
    return np.pad(x, widths)


def _depthwise(xp, w, strides, dilations, out_shape):
    """group == channels and one output per channel: accumulate one kernel tap at a time."""
    n, c = xp.shape[:2]
    out = np.zeros((n, c, *out_shape), dtype=np.result_type(xp, w))
    tap_shape = (1, c) + (1,) * len(out_shape)
    for offsets in itertools.product(*(range(k) for k in w.shape[2:])):
        window = xp[(slice(None), slice(None)) + window_slices(offsets, dilations, strides, out_shape)]
        out += window * w[(slice(None), 0) + offsets].reshape(tap_shape)
    return out


def _im2col(xp, kernel_shape, strides, dilations, out_shape):
    """Columns of shape (N, C, prod(kernel), prod(out)), channel-major then kernel offsets."""
    n, c = xp.shape[:2]
    taps = math.prod(kernel_shape)
    cols = np.empty((n, c, taps) + tuple(out_shape), dtype=xp.dtype)
    for t, offsets in enumerate(itertools.product(*(range(k) for k in kernel_shape))):
        cols[:, :, t] = xp[(slice(None), slice(None)) + window_slices(offsets, dilations, strides, out_shape)]
    return cols.reshape(n, c, taps, math.prod(out_shape))


def conv_nd(x, w, b, *, strides, pads, dilations, group) -> np.ndarray:
    """N-D grouped convolution (NCHW...), pads in ONNX order. The numpy oracle for every conv."""
    x = np.asarray(x)
    w = np.asarray(w)
    n, c = x.shape[:2]
    m, cg = w.shape[:2]
    kernel_shape = w.shape[2:]
    rank = len(kernel_shape)
    if c != cg * group or m % group:
        raise InvalidModelError(
            f"conv: input channels {c} and weight shape {w.shape} do not match group={group}")
    out_shape = conv_output_shape(x.shape[2:], kernel_shape, strides, pads, dilations)
    if any(o <= 0 for o in out_shape):
        raise InvalidModelError(f"conv: output spatial shape {out_shape} is empty")
    xp = _pad_spatial(x, pads)
    if group == c and m == c:
        out = _depthwise(xp, w, strides, dilations, out_shape)
    else:
        if all(k == 1 for k in kernel_shape) and all(s == 1 for s in strides) and not any(pads):
            cols = x.reshape(n, c, 1, math.prod(out_shape))
        else:
            cols = _im2col(xp, kernel_shape, strides, dilations, out_shape)
        cols = cols.reshape(n, group, cg * math.prod(kernel_shape), math.prod(out_shape))
        weights = w.reshape(group, m // group, cg * math.prod(kernel_shape))
        out = np.matmul(weights, cols).reshape((n, m) + tuple(out_shape))
    if b is not None:
        if np.size(b) != m:
            raise InvalidModelError(f"conv: bias B has shape {np.shape(b)}, expected ({m},)")
        out += np.asarray(b, dtype=out.dtype).reshape((1, m) + (1,) * rank)
    return out.astype(x.dtype, copy=False)


def int_list_attr(node, name, default, length):
    """Attribute `name` as `length` ints (a bare int counts as a one-element list)."""
    value = node.attrs.get(name, default)
    if isinstance(value, (int, np.integer)):
        value = [value]
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != length or \
            not all(isinstance(v, (int, np.integer)) for v in value):
        raise invalid(node, f"attribute {name!r}={value!r} must be {length} integers")
    check_int32_attr(node, name, value)
    return [int(v) for v in value]


def _conv_params(node, x_shape, w_shape):
    """Validated (kernel_shape, strides, dilations, group) for Conv/ConvTranspose; both shapes known."""
    if len(x_shape) != len(w_shape):
        raise invalid(node, f"input X rank {len(x_shape)} and weight W rank {len(w_shape)} differ")
    if len(w_shape) < 3:
        raise invalid(node, f"expects X and W of rank >= 3, got W shape {tuple(w_shape)}")
    rank = len(w_shape) - 2
    if any(isinstance(d, int) and d < 1 for d in w_shape):
        raise invalid(node, f"weight W has an empty dimension: shape {tuple(w_shape)}")
    kernel_shape = int_list_attr(node, "kernel_shape", list(w_shape[2:]), rank)
    if all(isinstance(d, int) for d in w_shape[2:]) and tuple(kernel_shape) != tuple(w_shape[2:]):
        raise invalid(node, f"attribute 'kernel_shape'={kernel_shape} does not match weight shape {w_shape}")
    strides = int_list_attr(node, "strides", [1] * rank, rank)
    dilations = int_list_attr(node, "dilations", [1] * rank, rank)
    if any(s < 1 for s in strides) or any(d < 1 for d in dilations):
        raise invalid(node, f"strides {strides} and dilations {dilations} must be >= 1")
    group = attr_int(node, "group", 1)
    if group < 1:
        raise invalid(node, f"attribute 'group'={group!r} must be a positive integer")
    return kernel_shape, strides, dilations, group


def _conv_pads(node, spatial, kernel_shape, strides, dilations):
    try:
        return resolve_conv_pads(node.attrs, spatial, kernel_shape, strides, dilations)
    except InvalidModelError as error:
        raise invalid(node, str(error)) from None


def _conv_infer(node, inputs, opset):
    require_inputs(node, inputs, 2, " (X, W)")
    x, w = inputs[0], inputs[1]
    if x.shape is None or w.shape is None:
        return [TensorInfo(None, np.dtype(x.dtype))]
    kernel_shape, strides, dilations, group = _conv_params(node, x.shape, w.shape)
    c, cg, m = x.shape[1], w.shape[1], w.shape[0]
    if isinstance(c, int) and isinstance(cg, int) and c != cg * group:
        raise invalid(node, f"input X has {c} channels but W {w.shape} with group={group} expects {cg * group}")
    if isinstance(m, int) and m % group:
        raise invalid(node, f"output channels {m} not divisible by group={group}")
    spatial = x.shape[2:]
    if not all(isinstance(d, int) for d in spatial):
        return [TensorInfo((x.shape[0], m) + (None,) * len(spatial), np.dtype(x.dtype))]
    pads = _conv_pads(node, spatial, kernel_shape, strides, dilations)
    out = conv_output_shape(spatial, kernel_shape, strides, pads, dilations)
    if any(o <= 0 for o in out):
        raise invalid(node, f"output spatial shape {out} is empty (input {x.shape}, kernel {kernel_shape})")
    return [TensorInfo((x.shape[0], m) + tuple(out), np.dtype(x.dtype))]


def _conv_compute(node, inputs, opset):
    require_inputs(node, inputs, 2, " (X, W)")
    x, w = np.asarray(inputs[0]), np.asarray(inputs[1])
    b = inputs[2] if len(inputs) > 2 else None
    kernel_shape, strides, dilations, group = _conv_params(node, x.shape, w.shape)
    pads = _conv_pads(node, x.shape[2:], kernel_shape, strides, dilations)
    try:
        return [conv_nd(x, w, b, strides=strides, pads=pads, dilations=dilations, group=group)]
    except InvalidModelError as error:
        raise invalid(node, str(error)) from None


# ---- ConvTranspose ----

def _transpose_geometry(node, spatial, kernel_shape, strides, dilations):
    """(pads, output spatial shape) for ConvTranspose per the ONNX spec."""
    rank = len(kernel_shape)
    output_padding = int_list_attr(node, "output_padding", [0] * rank, rank)
    full = [s * (size - 1) + op + _effective_kernel(k, d)
            for size, k, s, d, op in zip(spatial, kernel_shape, strides, dilations, output_padding)]
    auto_pad = attr_str(node, "auto_pad", "NOTSET", _AUTO_PADS)
    output_shape = attr_ints(node, "output_shape")
    if output_shape is not None:
        output_shape = output_shape[-rank:]
        if len(output_shape) != rank:
            raise invalid(node, f"attribute 'output_shape'={output_shape} must have {rank} entries")
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        output_shape = [size * s for size, s in zip(spatial, strides)]
    if output_shape is None:
        pads = [0] * (2 * rank) if auto_pad == "VALID" else int_list_attr(node, "pads", [0] * (2 * rank), 2 * rank)
        out = [f - pads[i] - pads[i + rank] for i, f in enumerate(full)]
        return pads, out
    totals = [f - o for f, o in zip(full, output_shape)]
    if auto_pad == "SAME_UPPER":
        begins = [t // 2 for t in totals]
    else:
        begins = [t - t // 2 for t in totals]
    return begins + [t - b for t, b in zip(totals, begins)], list(output_shape)


def _transpose_params(node, x_shape, w_shape):
    kernel_shape, strides, dilations, group = _conv_params(node, x_shape, w_shape)
    if isinstance(x_shape[1], int) and isinstance(w_shape[0], int) and x_shape[1] != w_shape[0]:
        raise invalid(node, f"input X has {x_shape[1]} channels but W has shape {tuple(w_shape)}")
    if isinstance(w_shape[0], int) and w_shape[0] % group:
        raise invalid(node, f"W input channels {w_shape[0]} not divisible by group={group}")
    return kernel_shape, strides, dilations, group


def _conv_transpose_infer(node, inputs, opset):
    require_inputs(node, inputs, 2, " (X, W)")
    x, w = inputs[0], inputs[1]
    if x.shape is None or w.shape is None:
        return [TensorInfo(None, np.dtype(x.dtype))]
    kernel_shape, strides, dilations, group = _transpose_params(node, x.shape, w.shape)
    m = w.shape[1] * group if isinstance(w.shape[1], int) else None
    spatial = x.shape[2:]
    if not all(isinstance(d, int) for d in spatial):
        return [TensorInfo((x.shape[0], m) + (None,) * len(spatial), np.dtype(x.dtype))]
    _, out = _transpose_geometry(node, spatial, kernel_shape, strides, dilations)
    if any(o <= 0 for o in out):
        raise invalid(node, f"output spatial shape {out} is empty")
    return [TensorInfo((x.shape[0], m) + tuple(out), np.dtype(x.dtype))]


def _crop_or_extend(full, pads, out_shape):
    """Take the window starting at pads[begin] of size out_shape; areas outside `full` are zero."""
    rank = len(out_shape)
    result = np.zeros(full.shape[:2] + tuple(out_shape), dtype=full.dtype)
    src, dst = [slice(None)] * 2, [slice(None)] * 2
    for i in range(rank):
        start = pads[i]
        lo, hi = max(start, 0), min(start + out_shape[i], full.shape[2 + i])
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - start, lo - start + max(0, hi - lo)))
    result[tuple(dst)] = full[tuple(src)]
    return result


def _conv_transpose_compute(node, inputs, opset):
    require_inputs(node, inputs, 2, " (X, W)")
    x, w = np.asarray(inputs[0]), np.asarray(inputs[1])
    b = inputs[2] if len(inputs) > 2 else None
    kernel_shape, strides, dilations, group = _transpose_params(node, x.shape, w.shape)
    pads, out_shape = _transpose_geometry(node, x.shape[2:], kernel_shape, strides, dilations)
    if any(o <= 0 for o in out_shape):
        raise invalid(node, f"output spatial shape {out_shape} is empty")
    n, c = x.shape[:2]
    mg = w.shape[1]
    taps = math.prod(kernel_shape)
    in_spatial = x.shape[2:]
    # cols[n, g, (m, tap), pixel] = sum_c W[c, m, tap] * x[n, c, pixel]
    weights = w.reshape(group, c // group, mg * taps).transpose(0, 2, 1)
    cols = np.matmul(weights, x.reshape(n, group, c // group, math.prod(in_spatial)))
    cols = cols.reshape((n, group * mg, taps) + tuple(in_spatial))
    full_shape = [s * (size - 1) + _effective_kernel(k, d)
                  for size, k, s, d in zip(in_spatial, kernel_shape, strides, dilations)]
    full = np.zeros((n, group * mg) + tuple(full_shape), dtype=cols.dtype)
    for t, offsets in enumerate(itertools.product(*(range(k) for k in kernel_shape))):
        full[(slice(None), slice(None)) + window_slices(offsets, dilations, strides, in_spatial)] += cols[:, :, t]
    out = _crop_or_extend(full, pads, out_shape)
    if b is not None:
        if np.size(b) != out.shape[1]:
            raise invalid(node, f"bias B has shape {np.shape(b)}, expected ({out.shape[1]},)")
        out += np.asarray(b, dtype=out.dtype).reshape((1, -1) + (1,) * len(kernel_shape))
    return [out.astype(x.dtype, copy=False)]


def weight_macs(node, in_shapes, out_shapes) -> int:
    """A convolution's multiply-adds: each output element takes one weight filter (W's dims after the first)."""
    outputs = int(np.prod(out_shapes[0], dtype=np.int64))
    if len(in_shapes) > 1 and in_shapes[1] is not None:
        return outputs * int(np.prod(in_shapes[1][1:], dtype=np.int64))
    return outputs


# the kernels read their geometry with this module's functions (_conv_params, _conv_pads, _transpose_*)
_THIS = sys.modules[__name__]
register("Conv", _conv_infer, _conv_compute, macs=weight_macs, step=ConvKernel(_THIS))
register("ConvTranspose", _conv_transpose_infer, _conv_transpose_compute, step=ConvTransposeKernel(_THIS))
