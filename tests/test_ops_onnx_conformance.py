"""ONNX's own node conformance cases (inputs + expected outputs shipped with the onnx package) run through
edgerun's reference kernels, one test per operator.

Cases outside edgerun's scope may fail cleanly with InvalidModelError (never a crash or a wrong answer):
training-mode Dropout/BatchNormalization and Cast to or from
dtypes edgerun does not carry (bfloat16, float8, 2/4-bit). Where onnx's reference and onnxruntime disagree,
onnxruntime (the project's oracle) decides.
"""
import functools
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgerun.errors import InvalidModelError
from op_harness import assert_close, edgerun_node, op_def, run_ort_feeds

# onnx's reference computes align_corners from the unrounded output length (input * scale);
# onnxruntime uses the integer output length. Compare these against onnxruntime instead.
ONNXRUNTIME_DECIDES = {"test_resize_downsample_scales_linear_align_corners",
                       "test_resize_downsample_scales_cubic_align_corners"}
OUT_OF_SCOPE_MARKERS = ("training", "BFLOAT16", "FLOAT8", "INT4", "UINT4", "INT2", "UINT2",
                        "FLOAT4", "e8m0")


@functools.lru_cache(maxsize=1)
def node_cases():
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [c for c in collect_testcases(None) if len(c.model.graph.node) == 1]


def as_array(value):
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value


def case_opset(model):
    version = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")][0]
    return min(version, 21)


def run_case(case):
    """None when the case passes, else a one-line description of what went wrong."""
    node_proto = case.model.graph.node[0]
    node = edgerun_node(node_proto)
    opset = case_opset(case.model)
    graph_inputs = [i.name for i in case.model.graph.input]
    out_of_scope = any(marker in case.name for marker in OUT_OF_SCOPE_MARKERS)
    for inputs, outputs in case.data_sets:
        feed = dict(zip(graph_inputs, map(as_array, inputs)))
        args = [feed.get(name) if name else None for name in node_proto.input]
        try:
            got = op_def(node.op_type).compute(node, args, opset)
        except InvalidModelError as error:
            if out_of_scope:
                continue
            return f"{case.name}: unexpected InvalidModelError {error}"
        expected = list(map(as_array, outputs))
        if case.name in ONNXRUNTIME_DECIDES:
            expected = run_ort_feeds(case.model, feed)
        try:
            for ours, theirs in zip(got, expected):
                assert_close(np.asarray(ours), np.asarray(theirs), case.name)
        except AssertionError as error:
            return str(error)
    return None


@pytest.mark.parametrize("op_type", ["Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat",
                                     "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Div", "Dropout",
                                     "Flatten", "Gather", "Gemm", "GlobalAveragePool", "HardSigmoid", "HardSwish",
                                     "Identity", "LRN", "LeakyRelu", "MatMul", "MaxPool", "Mul", "Pad", "Pow",
                                     "ReduceMean", "Relu", "Reshape", "Resize", "Shape", "Sigmoid", "Slice",
                                     "Softmax", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Transpose",
                                     "Unsqueeze"])
def test_onnx_node_cases(op_type):
    cases = [c for c in node_cases() if c.model.graph.node[0].op_type == op_type]
    assert cases, f"onnx ships no single-node cases for {op_type}"
    problems = [p for p in map(run_case, cases) if p]
    assert not problems, "\n".join(problems)
