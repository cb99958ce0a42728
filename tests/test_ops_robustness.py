"""Malformed nodes never crash a kernel or shape function: any failure is an EdgerunError.

Hypothesis throws random inputs (shapes including empty and rank 0, float and int dtypes, omitted optionals,
known or unknown contents) and random attributes (wrong types included) at every registered op.
"""
import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgerun.ops as ops
from edgerun.errors import EdgerunError
from edgerun.ir import Node, TensorInfo
from op_harness import FAMILIES, op_def

for _family in FAMILIES:
    __import__(f"edgerun.ops.{_family}")
OPS = sorted(op for domain, op in ops._REGISTRY if domain == "" and op_def(op).compute.__module__.split(".")[-1]
             in FAMILIES)
ATTR_NAMES = ["axis", "axes", "perm", "kernel_shape", "strides", "pads", "dilations", "group", "auto_pad", "mode",
              "split", "starts", "ends", "to", "value", "alpha", "beta", "min", "max", "keepdims", "size",
              "ceil_mode", "output_shape", "output_padding", "transA", "num_outputs", "epsilon",
              "coordinate_transformation_mode", "nearest_mode", "allowzero", "count_include_pad"]
ATTR_VALUES = st.one_of(
    st.integers(-3, 5), st.floats(-2, 2, allow_nan=False), st.lists(st.integers(-2, 4), max_size=5),
    st.sampled_from(["NOTSET", "SAME_UPPER", "VALID", "reflect", "edge", "linear", "cubic", "align_corners",
                     "tf_crop_and_resize", "floor", "bogus"]),
    st.just(np.zeros(2, np.float32)),
)


@st.composite
def arrays(draw):
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
    dtype = draw(st.sampled_from([np.float32, np.int64]))
    seed = draw(st.integers(0, 1000))
    values = np.random.default_rng(seed).integers(-4, 5, shape)
    return values.astype(dtype) if dtype == np.int64 else (values * 0.7).astype(np.float32)


@st.composite
def malformed_nodes(draw):
    op = draw(st.sampled_from(OPS))
    inputs = draw(st.lists(st.one_of(st.none(), arrays()), max_size=5))
    attrs = draw(st.dictionaries(st.sampled_from(ATTR_NAMES), ATTR_VALUES, max_size=4))
    n_outputs = draw(st.integers(1, 3))
    opset = draw(st.sampled_from([7, 9, 10, 11, 13, 18, 21]))
    known = draw(st.lists(st.booleans(), min_size=len(inputs), max_size=len(inputs)))
    node = Node(op, [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)],
                [f"out{i}" for i in range(n_outputs)], attrs, "fuzzed")
    return node, inputs, known, opset


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(malformed_nodes())
def test_kernels_and_shape_functions_fail_only_with_edgerun_errors(case):
    node, inputs, known, opset = case
    definition = op_def(node.op_type)
    infos = [None if a is None else TensorInfo(a.shape, a.dtype, a if k else None) for a, k in zip(inputs, known)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for function, arguments in ((definition.compute, inputs), (definition.infer, infos)):
            try:
                function(node, list(arguments), opset)
            except EdgerunError as error:
                assert "fuzzed" in str(error), f"error does not name the node: {error}"
