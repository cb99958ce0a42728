"""Arena kernels of the float32 element-wise ops the base module does not cover: Div, Pow, Sqrt.

Each writes its result straight into the output view (ONNX broadcasting through the ufunc's out=);
invalid-value warnings are silenced as the reference op silences them (NaN is the ONNX result)."""
from __future__ import annotations

import numpy as np

from edgerun.kernels.numpy_steps import StepKernel


class QuietUfuncKernel(StepKernel):
    """out = ufunc(*inputs) for a float32 unary or binary ufunc."""

    def __init__(self, ufunc):
        self.ufunc = ufunc

    def run(self, node, inputs, outputs, scratch):
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            self.ufunc(*inputs[: self.ufunc.nin], out=outputs[0])
