"""Arena kernels of the normalisation ops: LRN and (unfolded) BatchNormalization, float32.

Both write into their output view and keep every temporary in the scratch the plan declares for them:
LRN squares a bounded strip of pixels at a time (`squares`, at most LRN_STRIP_FLOATS floats); an unfolded
BatchNormalization needs one float per normalised channel for its factor (`factor`).
"""
from __future__ import annotations

import math

import numpy as np

from edgerun.kernels.numpy_steps import ITEMSIZE, StepKernel

# The strip of squared inputs LRN sums over: (channels + size - 1) rows of `strip` pixels. 16 K floats
# (64 KB of arena) keeps the Python loop short without enlarging the plan by an activation.
LRN_STRIP_FLOATS = 16 * 1024


def _lrn_strip_pixels(channels: int, size: int, pixels: int) -> int:
    """Pixels per strip: as many as fit LRN_STRIP_FLOATS, at least one, at most the image's."""
    return max(1, min(pixels, LRN_STRIP_FLOATS // (channels + size - 1)))


class LRNKernel(StepKernel):
    """y = x / (bias + alpha / size * sum of x^2 over the channel window) ** beta.

    The window sums are accumulated straight into the output; the squares of a strip of pixels (with
    size - 1 zero rows around the channels) live in the `squares` scratch. `params(node)` is the reference
    op's (size, alpha, beta, bias), checked."""

    def __init__(self, params):
        self.params = params

    def scratch_bytes(self, node, in_shapes, out_shapes):
        _, channels, *spatial = in_shapes[0]
        size = self.params(node)[0]
        strip = _lrn_strip_pixels(channels, size, math.prod(spatial))
        return {"squares": (channels + size - 1) * strip * ITEMSIZE}

    def run(self, node, inputs, outputs, scratch):
        x, y = inputs[0], outputs[0]
        if x.size == 0:
            return
        size, alpha, beta, bias = self.params(node)
        batch, channels = x.shape[:2]
        pixels = math.prod(x.shape[2:])
        strip = _lrn_strip_pixels(channels, size, pixels)
        x3, y3 = x.reshape(batch, channels, pixels), y.reshape(batch, channels, pixels)
        squares = scratch["squares"][: (channels + size - 1) * strip].reshape(channels + size - 1, strip)
        before = (size - 1) // 2
        squares.fill(0)  # the zero rows above and below the channels stay zero
        for n in range(batch):
            for p0 in range(0, pixels, strip):
                p1 = min(pixels, p0 + strip)
                _lrn_window_sums(x3[n, :, p0:p1], y3[n, :, p0:p1], squares[:, : p1 - p0], before, size)
        # the denominator is (bias + alpha/size * window) ** beta; y = x / that, in place
        np.multiply(y, np.float32(alpha / size), out=y)
        np.add(y, np.float32(bias), out=y)
        np.power(y, np.float32(-beta), out=y)
        np.multiply(y, x, out=y)


def _lrn_window_sums(x, y, squares, before: int, size: int) -> None:
    """y (channels, w) = sum over the channel window of x**2, from the zero-padded squares strip."""
    channels = x.shape[0]
    np.square(x, out=squares[before:before + channels])
    np.copyto(y, squares[0:channels])
    for i in range(1, size):
        np.add(y, squares[i:i + channels], out=y)


class BatchNormalizationKernel(StepKernel):
    """Inference BatchNormalization as the reference computes it: (x - mean) * (scale / sqrt(var + eps)) + B.
    The per-channel factor scale / sqrt(var + eps) lives in the `factor` scratch."""

    def supports(self, node):
        # spatial=0 (per-element statistics, opsets 7-8) runs on the reference op
        return (not node.attrs.get("training_mode", 0) and not any(node.outputs[1:])
                and node.attrs.get("spatial", 1) == 1)

    def scratch_bytes(self, node, in_shapes, out_shapes):
        return {"factor": max(1, in_shapes[0][1]) * ITEMSIZE}

    def run(self, node, inputs, outputs, scratch):
        x, y = inputs[0], outputs[0]
        channels = x.shape[1]
        shape = (1, channels) + (1,) * (x.ndim - 2)
        scale, bias, mean, var = (inputs[i].reshape(shape) for i in (1, 2, 3, 4))
        factor = scratch["factor"][:channels].reshape(shape)
        np.add(var, np.float32(node.attrs.get("epsilon", 1e-5)), out=factor)
        np.sqrt(factor, out=factor)
        np.divide(scale, factor, out=factor)
        np.subtract(x, mean, out=y)
        np.multiply(y, factor, out=y)
        np.add(y, bias, out=y)
