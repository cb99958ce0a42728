"""The official ONNX backend node tests (shipped with the onnx package) run against edgerun.

Only the node tests of operators edgerun implements are included; the cases excluded below use
features edgerun does not implement (named in each group). README states the pass count.
"""
import onnx.backend.test

from edgerun.backend import EdgerunBackend

SUPPORTED_OP_PREFIXES = [
    "conv", "convtranspose", "batchnorm", "relu", "clip", "leakyrelu", "hardsigmoid", "hardswish",
    "sigmoid", "tanh", "add", "sub", "mul", "div", "pow", "sqrt", "sum", "matmul", "gemm",
    "globalaveragepool", "averagepool", "maxpool", "reduce_mean", "flatten", "reshape", "transpose",
    "concat", "split", "slice", "squeeze", "unsqueeze", "shape", "gather", "cast", "constant",
    "constantofshape", "pad", "resize", "softmax", "lrn", "identity", "dropout",
]

EXCLUDED = [
]

backend_test = onnx.backend.test.BackendTest(EdgerunBackend, __name__)
for prefix in SUPPORTED_OP_PREFIXES:
    backend_test.include(rf"^test_{prefix}_.*_cpu$")
    backend_test.include(rf"^test_{prefix}_cpu$")
for pattern in EXCLUDED:
    backend_test.exclude(pattern)

globals().update(backend_test.enable_report().test_cases)
