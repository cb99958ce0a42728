"""Arena kernel of ReduceMean: the sum is accumulated in float64, as the reference op does, in a scratch of
one float64 per output element, then divided into the output. Float32 data only (its axes input is int64);
other dtypes run the reference op and are copied into the output."""
from __future__ import annotations

import math

import numpy as np

from edgerun.kernels.numpy_steps import StepKernel


def _opset(node) -> int:
    # `axes` is an attribute before opset 18 and an input from then on (the loader has checked which)
    return 13 if "axes" in node.attrs else 18


class ReduceMeanKernel(StepKernel):
    """`reduce_axes(node, axes_input, rank, opset)` and `reference(node, inputs, opset)` are the reference
    op's axis rule and computation."""

    def __init__(self, reduce_axes, reference):
        self.reduce_axes, self.reference = reduce_axes, reference

    def scratch_bytes(self, node, in_shapes, out_shapes):
        return {"sums": max(1, math.prod(out_shapes[0])) * 8}

    def run(self, node, inputs, outputs, scratch):
        x, y = inputs[0], outputs[0]
        if x.dtype != np.float32:
            (result,) = self.reference(node, inputs, _opset(node))
            np.copyto(y, result)
            return
        axes = self.reduce_axes(node, inputs[1] if len(inputs) > 1 else None, x.ndim, _opset(node))
        if axes == ():
            np.copyto(y, x)
            return
        kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        sums = scratch["sums"].view(np.float64)[: math.prod(kept)].reshape(kept)
        np.sum(x, axis=axes, dtype=np.float64, keepdims=True, out=sums)
        count = math.prod(x.shape[i] for i in axes)
        np.divide(sums, count, out=y.reshape(kept), casting="same_kind")
