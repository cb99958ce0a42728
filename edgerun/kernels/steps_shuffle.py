"""Arena kernels of the channel shuffle step (op ChannelShuffle, domain edgerun, edgerun/ops/channel_shuffle.py):
output channel j * groups + i is input channel i * (C / groups) + j, whole planes moved by one strided copy.
No scratch."""
from __future__ import annotations

import numpy as np

from edgerun.kernels import native_fused
from edgerun.kernels.numpy_steps import StepKernel


class ChannelShuffleKernel(StepKernel):
    def run(self, node, inputs, outputs, scratch):
        x, y = inputs[0], outputs[0]
        groups = int(node.attrs["groups"])
        n, channels = x.shape[:2]
        source = x.reshape(n, groups, channels // groups, -1).transpose(0, 2, 1, 3)
        np.copyto(y.reshape(n, channels // groups, groups, -1), source)


class NativeChannelShuffleKernel(StepKernel):
    """C (native/fused_steps.c): one plane memcpy per output channel, threads take ranges of channels."""

    def __init__(self, fallback: StepKernel | None = None, threads: int = 1):
        self.fallback = fallback or ChannelShuffleKernel()
        self.threads = threads

    def c_arguments(self, node, constants, in_shapes, out_shapes):
        """{"groups": the shuffle's groups}, for an input of rank 3 or more."""
        return {"groups": int(node.attrs["groups"])} if len(in_shapes[0]) >= 3 else None

    def run(self, node, inputs, outputs, scratch):
        x, y = inputs[0], outputs[0]
        if x.dtype != np.float32 or x.ndim < 3:
            return self.fallback.run(node, inputs, outputs, scratch)
        for n in range(x.shape[0]):
            native_fused.channel_shuffle(x[n], y[n], int(node.attrs["groups"]), self.threads)
