"""Arena kernels of the fused squeeze-excitation step (op SqueezeExcite, domain edgerun,
edgerun/ops/squeeze_excite.py): y = x * gate(W2 act(W1 mean(x) + b1) + b2), the gate one value per
channel. Scratch `se`: C + S floats per step (the pooled vector, reused for the gate, and the
squeezed vector); the activations' temporaries reuse whichever of the two is dead."""
from __future__ import annotations

import numpy as np

from edgerun.ir import Node
from edgerun.kernels import native_fused
from edgerun.kernels.activations import Activation, apply_inplace
from edgerun.kernels.numpy_steps import ITEMSIZE, StepKernel


def se_activations(node: Node) -> tuple[Activation, Activation]:
    a = node.attrs
    return (Activation(a.get("activation", ""), tuple(a.get("activation_params", ()))),
            Activation(a.get("gate", ""), tuple(a.get("gate_params", ()))))


def _squeeze(in_shapes) -> int:
    return int(in_shapes[1][0])


class SqueezeExciteKernel(StepKernel):
    """numpy: the mean, two matrix-vector products and the per-channel scale, image by image."""

    def scratch_bytes(self, node, in_shapes, out_shapes):
        return {"se": (int(in_shapes[0][1]) + _squeeze(in_shapes)) * ITEMSIZE}

    def run(self, node, inputs, outputs, scratch):
        x, w1, b1, w2, b2 = inputs[:5]
        y = outputs[0]
        channels, squeeze = x.shape[1], w1.shape[0]
        act1, act2 = se_activations(node)
        gate = scratch["se"][:channels]
        hidden = scratch["se"][channels:channels + squeeze]
        for n in range(x.shape[0]):
            np.mean(x[n].reshape(channels, -1), axis=1, out=gate)
            np.dot(w1.reshape(squeeze, channels), gate, out=hidden)
            np.add(hidden, b1, out=hidden)
            apply_inplace(hidden, act1, gate)     # the pooled values are dead: their room is the temporary
            np.dot(w2.reshape(channels, squeeze), hidden, out=gate)
            np.add(gate, b2, out=gate)
            apply_inplace(gate, act2, hidden)
            np.multiply(x[n], gate.reshape((channels,) + (1,) * (x.ndim - 2)), out=y[n])


class NativeSqueezeExciteKernel(StepKernel):
    """C (native/fused_steps.c): threads take ranges of channels for the mean and the scale; the two small
    products run on one thread, so the bits are the same for any thread count."""

    def __init__(self, fallback: StepKernel | None = None, threads: int = 1):
        self.fallback = fallback or SqueezeExciteKernel()
        self.threads = threads
        self._prepared: tuple | None = None   # (w1 as given, w2 as given, their (S, C) / (C, S) layouts)

    def scratch_bytes(self, node, in_shapes, out_shapes):
        return self.fallback.scratch_bytes(node, in_shapes, out_shapes)

    def prepare(self, node, constants):
        w1, w2 = constants.get(node.inputs[1]), constants.get(node.inputs[3])
        if w1 is None or w2 is None:
            return
        self._prepared = (w1, w2, np.ascontiguousarray(w1.reshape(w1.shape[0], -1), np.float32),
                          np.ascontiguousarray(w2.reshape(w2.shape[0], -1), np.float32))

    def c_arguments(self, node, constants, in_shapes, out_shapes):
        """{"w1": (S, C), "w2": (C, S) layouts, "acts": (activation, gate)}."""
        prepared = self._prepared
        if (prepared is None or prepared[0] is not constants.get(node.inputs[1])
                or prepared[1] is not constants.get(node.inputs[3])):
            return None
        return {"w1": prepared[2], "w2": prepared[3], "acts": se_activations(node)}

    def run(self, node, inputs, outputs, scratch):
        x, w1, b1, w2, b2 = inputs[:5]
        prepared = self._prepared
        if prepared is None or prepared[0] is not w1 or prepared[1] is not w2:
            return self.fallback.run(node, inputs, outputs, scratch)
        act1, act2 = se_activations(node)
        y = outputs[0]
        for n in range(x.shape[0]):
            native_fused.squeeze_excite(x[n], y[n], prepared[2], b1, prepared[3], b2, act1, act2, scratch["se"],
                                        self.threads)
