"""Arena kernels of the data-movement ops of edgerun/ops/shape_ops.py: Identity, Dropout, Cast, Slice, Split,
Gather and Pad, for any dtype. Each copies straight from views of its input into its output view (no temporary
of activation size); the arguments are parsed by the reference op's own helpers.

Each kernel is given the reference op's module (edgerun.ops.shape_ops) and parses its node with its functions.
Kernels are not told the opset: where an op's arguments moved from attributes to inputs, the attribute
form is recognised by its presence (it exists only at the older opsets, and the loader has checked them).
"""
from __future__ import annotations

import numpy as np

from edgerun.kernels.numpy_steps import StepKernel


def _as_is(value):
    return value


class ShapeOpKernel(StepKernel):
    def __init__(self, reference):
        self.reference = reference


class IdentityKernel(StepKernel):
    def run(self, node, inputs, outputs, scratch):
        np.copyto(outputs[0], inputs[0])


class DropoutKernel(ShapeOpKernel):
    """Inference Dropout: the input unchanged and, when asked for, a mask of ones (a true training_mode
    raises as the reference op does)."""

    def run(self, node, inputs, outputs, scratch):
        self.reference._dropout_check(node, inputs[2] if len(inputs) > 2 else None)
        np.copyto(outputs[0], inputs[0])
        for mask in outputs[1:]:
            mask.fill(1)


class ConstantOfShapeKernel(ShapeOpKernel):
    """A ConstantOfShape too large to fold (edgerun.passes.constfold) is filled in the arena at run time."""

    def run(self, node, inputs, outputs, scratch):
        outputs[0].fill(self.reference._fill_value(node))


class CastKernel(StepKernel):
    """numpy's cast, as the reference op's astype (NaN or out-of-range values to integers are unspecified
    by ONNX; both give numpy's result)."""

    def run(self, node, inputs, outputs, scratch):
        with np.errstate(invalid="ignore", over="ignore"):
            np.copyto(outputs[0], inputs[0], casting="unsafe")


class SliceKernel(ShapeOpKernel):
    def run(self, node, inputs, outputs, scratch):
        x = inputs[0]
        opset = 9 if "starts" in node.attrs else 13   # attributes before opset 10, inputs from then on
        index = [slice(None)] * x.ndim
        ref = self.reference
        for axis, start, end, step in ref._slice_plan(node, x.shape, ref._slice_request(node, inputs, opset, _as_is)):
            begin, stop, _ = ref._clamped_slice(start, end, step, x.shape[axis])
            index[axis] = slice(begin, stop, step)
        np.copyto(outputs[0], x[tuple(index)])


class SplitKernel(ShapeOpKernel):
    def run(self, node, inputs, outputs, scratch):
        x = inputs[0]
        # `split` is an attribute before opset 13, an input from then on; num_outputs exists from opset 18
        opset = 11 if "split" in node.attrs else 18 if "num_outputs" in node.attrs else 13
        ref = self.reference
        axis = ref._axis(node, node.attrs.get("axis", 0), x.ndim, "attribute 'axis'")
        sizes = ref._split_sizes(node, x.shape[axis], ref._split_request(node, inputs, opset, _as_is), opset)
        start = 0
        for size, y in zip(sizes, outputs):
            index = [slice(None)] * x.ndim
            index[axis] = slice(start, start + size)
            np.copyto(y, x[tuple(index)])
            start += size


class GatherKernel(ShapeOpKernel):
    """np.take straight into the output. mode="wrap" maps the negative indices ONNX allows, once the range
    is checked (mode="raise" would buffer the whole output outside the arena)."""

    def run(self, node, inputs, outputs, scratch):
        data, indices = inputs[0], inputs[1]
        axis = self.reference._axis(node, node.attrs.get("axis", 0), data.ndim, "attribute 'axis'")
        dim = data.shape[axis]
        if indices.size and (indices.min() < -dim or indices.max() >= dim):
            self.reference._checked_indices(node, indices, dim)   # raises, naming the node and the range
        np.take(data, indices, axis=axis, out=outputs[0], mode="wrap")


class PadKernel(ShapeOpKernel):
    """Pad in every mode: the (cropped) input is copied into the middle of the output, then each axis in
    turn fills its borders, from the constant or from the output's own already-written slabs. Pads wider
    than what one reflection or wrap covers run the reference op (numpy repeats the reflection)."""

    def run(self, node, inputs, outputs, scratch):
        x, y = inputs[0], outputs[0]
        opset = 10 if "pads" in node.attrs else 19   # an attribute before opset 11; wrap exists from 19
        ref = self.reference
        mode = ref._pad_mode(node, opset)
        pads, axes, constant = ref._pad_request(node, inputs, opset, _as_is)
        widths = ref._pad_widths(node, x.ndim, pads, axes, opset)
        crop = tuple(slice(max(0, -b), d - max(0, -e)) for d, (b, e) in zip(x.shape, widths))
        grow = [(max(0, b), max(0, e)) for b, e in widths]
        kept = [max(0, s.stop - s.start) for s in crop]
        if not _fits_one_reflection(mode, grow, kept):
            (result,) = ref._pad_compute(node, inputs, opset)
            np.copyto(y, result)
            return
        middle = tuple(slice(b, b + n) for (b, _), n in zip(grow, kept))
        np.copyto(y[middle], x[crop])
        for axis, ((before, after), length) in enumerate(zip(grow, kept)):
            if before or after:
                _fill_borders(y, axis, before, after, length, mode, constant, middle)


def _fits_one_reflection(mode, grow, kept) -> bool:
    limit = {"constant": None, "edge": 1, "reflect": 2, "wrap": 1}[mode]   # length the pads need at least
    for (before, after), length in zip(grow, kept):
        if limit is not None and (before or after):
            if length < limit:
                return False
            reach = length - 1 if mode == "reflect" else length if mode == "wrap" else None
            if reach is not None and max(before, after) > reach:
                return False
    return True


def _fill_borders(y, axis, before, after, length, mode, constant, middle):
    """Fill y's borders along `axis`: axes before it are already whole, axes after it only in the middle."""
    def slab(start, stop):
        index = [slice(None)] * axis + [slice(start, stop)] + list(middle[axis + 1:])
        return y[tuple(index)]

    end = before + length   # one past the last copied position
    if mode == "constant":
        slab(0, before).fill(constant)
        slab(end, end + after).fill(constant)
    elif mode == "edge":
        np.copyto(slab(0, before), slab(before, before + 1))
        np.copyto(slab(end, end + after), slab(end - 1, end))
    elif mode == "reflect":
        for k in range(1, before + 1):
            np.copyto(slab(before - k, before - k + 1), slab(before + k, before + k + 1))
        for k in range(1, after + 1):
            np.copyto(slab(end - 1 + k, end + k), slab(end - 1 - k, end - k))
    else:   # wrap
        np.copyto(slab(0, before), slab(end - before, end))
        np.copyto(slab(end, end + after), slab(before, before + after))

