"""Arena kernel of the variadic element-wise Sum (ONNX broadcasting), float32: the first two inputs
are added into the output, every further input is added in place."""
from __future__ import annotations

import numpy as np

from edgerun.kernels.numpy_steps import StepKernel


class SumKernel(StepKernel):
    def run(self, node, inputs, outputs, scratch):
        y = outputs[0]
        if len(inputs) == 1:
            np.copyto(y, inputs[0])
            return
        np.add(inputs[0], inputs[1], out=y)
        for term in inputs[2:]:
            np.add(y, term, out=y)
