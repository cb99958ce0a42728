"""Arena kernel of Resize over the last two axes (every mode of edgerun/ops/resize.py, float32).

The output is made one row at a time, separably as the reference op does (first the height axis, then the
width axis, the same taps and weights, the same order of float32 sums): a `row` scratch holds the
height-resampled input row and a `tap` scratch one gathered tap, both of one row's size. Other resizes
(leading axes, tf_crop_and_resize, other dtypes) run the reference op and are copied into the output.

Kernels are not told the opset: a Resize with two inputs (X, scales) is the opset-10 form, `axes` exists
only from opset 18, and the other forms read the same.
"""
from __future__ import annotations

import math

import numpy as np

from edgerun.kernels.numpy_steps import ITEMSIZE, StepKernel


def _opset(node, inputs) -> int:
    if len(inputs) == 2:
        return 10
    return 18 if "axes" in node.attrs else 13


def _row_sizes(in_shape, out_shape) -> tuple[int, int, int]:
    """(rows of the leading axes, input width, output width)."""
    return math.prod(in_shape[:-2]), in_shape[-1], out_shape[-1]


class ResizeKernel(StepKernel):
    """`reference` is the reference op's module (edgerun.ops.resize): the kernel parses its node and computes
    its taps with the same functions (_attrs, _inputs_by_opset, _geometry, _axis_taps, _resize_compute)."""

    def __init__(self, reference):
        self.reference = reference

    def scratch_bytes(self, node, in_shapes, out_shapes):
        if len(in_shapes[0]) < 2:
            return {}
        lead, width, out_width = _row_sizes(in_shapes[0], out_shapes[0])
        return {"row": lead * width * ITEMSIZE, "tap": lead * max(width, out_width) * ITEMSIZE}

    def run(self, node, inputs, outputs, scratch):
        x, y = inputs[0], outputs[0]
        opset = _opset(node, inputs)
        ref = self.reference
        mode, transform, nearest_mode = ref._attrs(node, opset)
        roi, scales, sizes = ref._inputs_by_opset(inputs, opset)
        out, full_scales, rois = ref._geometry(node, x.shape, roi, scales, sizes, opset)
        resized = [axis for axis in range(x.ndim)
                   if out[axis] != x.shape[axis] or full_scales[axis] != 1 or transform == "tf_crop_and_resize"]
        if transform == "tf_crop_and_resize" or x.dtype != np.float32 or any(a < x.ndim - 2 for a in resized):
            (result,) = ref._resize_compute(node, inputs, opset)
            np.copyto(y, result)
            return
        taps = {axis: ref._axis_taps(node, mode, transform, nearest_mode, x.shape[axis], out[axis],
                                     full_scales[axis], rois[axis])[:2] for axis in resized}
        lead, width, out_width = _row_sizes(x.shape, y.shape)
        x3 = x.reshape(lead, x.shape[-2], width)
        y3 = y.reshape(lead, y.shape[-2], out_width)
        row = scratch["row"][: lead * width].reshape(lead, width)
        tap = scratch["tap"]
        for i in range(y3.shape[1]):
            if x.ndim - 2 in taps:
                indices, weights = taps[x.ndim - 2]
                _weighted_rows(x3, indices[i], weights[i], row, tap[: lead * width].reshape(lead, width))
                source = row
            else:
                source = x3[:, i, :]
            if x.ndim - 1 in taps:
                indices, weights = taps[x.ndim - 1]
                _resample_columns(source, indices, weights, y3[:, i, :],
                                  tap[: lead * out_width].reshape(lead, out_width))
            else:
                np.copyto(y3[:, i, :], source)


def _weighted_rows(x3, indices, weights, row, tap):
    """row = sum over t of x3[:, indices[t], :] * weights[t]."""
    np.multiply(x3[:, indices[0], :], weights[0], out=row)
    for index, weight in zip(indices[1:], weights[1:]):
        np.multiply(x3[:, index, :], weight, out=tap)
        np.add(row, tap, out=row)


def _resample_columns(source, indices, weights, out, tap):
    """out[:, j] = sum over t of source[:, indices[j, t]] * weights[j, t]."""
    for t in range(indices.shape[1]):
        # mode="clip": the reference's indices are already clipped; "raise" would buffer `out` outside the arena
        np.take(source, indices[:, t], axis=1, out=tap, mode="clip")
        np.multiply(tap, weights[:, t], out=tap)
        if t == 0:
            np.copyto(out, tap)
        else:
            np.add(out, tap, out=out)
