"""One-node ONNX models run by onnxruntime (the oracle) and by edgerun's reference kernels."""
from __future__ import annotations

import importlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

import edgerun.ops as ops
from edgerun.ir import Node, TensorInfo

FAMILIES = ("conv", "norm", "activation", "elementwise", "matmul", "pool", "shape_ops", "resize")


def op_def(op_type: str):
    for family in FAMILIES:
        importlib.import_module(f"edgerun.ops.{family}")
    return ops._REGISTRY[("", op_type)]


def plain_attr(attr: onnx.AttributeProto):
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return value


def edgerun_node(onnx_node: onnx.NodeProto) -> Node:
    return Node(op_type=onnx_node.op_type, inputs=list(onnx_node.input), outputs=list(onnx_node.output),
                attrs={a.name: plain_attr(a) for a in onnx_node.attribute}, name=onnx_node.name)


def one_node_model(op_type, inputs, attrs, opset, n_outputs=1):
    """`inputs`: list of numpy arrays or None (an omitted optional input)."""
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)]
    outputs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outputs, name=f"{op_type.lower()}_under_test", **attrs)
    graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                    for n, a in zip(names, inputs) if a is not None]
    graph_outputs = [helper.make_empty_tensor_value_info(o) for o in outputs]
    graph = helper.make_graph([node], "one_node", graph_inputs, graph_outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8 if opset < 15 else 9)
    return model, node


def run_ort_feeds(model, feeds: dict):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def run_ort(model, inputs):
    """onnxruntime on a one_node_model, inputs positional (None for omitted ones)."""
    return run_ort_feeds(model, {f"in{i}": a for i, a in enumerate(inputs) if a is not None})


def run_onnx_reference(model, inputs):
    """onnx's own Python reference evaluator: the oracle where onnxruntime departs from the spec."""
    from onnx.reference import ReferenceEvaluator
    return ReferenceEvaluator(model).run(None, {f"in{i}": a for i, a in enumerate(inputs) if a is not None})


def tensor_infos(inputs, known_values):
    """TensorInfos for the inputs; `known_values(i, array)` says whose content infer may see."""
    infos = []
    for i, a in enumerate(inputs):
        if a is None:
            infos.append(None)
        else:
            infos.append(TensorInfo(tuple(a.shape), a.dtype, a if known_values(i, a) else None))
    return infos


def integer_inputs_known(i, array):
    return i > 0 and (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_)


def assert_close(ours, theirs, label=""):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{label}: shape {ours.shape} != oracle {theirs.shape}"
    assert ours.dtype == theirs.dtype, f"{label}: dtype {ours.dtype} != oracle {theirs.dtype}"
    if np.issubdtype(theirs.dtype, np.floating):
        assert np.array_equal(np.isnan(ours), np.isnan(theirs)), f"{label}: NaN positions differ"
        infinite = np.isinf(theirs)
        assert np.array_equal(ours[infinite], theirs[infinite]), f"{label}: infinities differ"
        finite = np.isfinite(theirs)
        if theirs[finite].size:
            diff = np.max(np.abs(ours[finite].astype(np.float64) - theirs[finite].astype(np.float64)))
            tolerance = 1e-4 * max(1.0, float(np.max(np.abs(theirs[finite].astype(np.float64)))))
            assert diff <= tolerance, f"{label}: max|diff| {diff} > {tolerance}"
    else:
        assert np.array_equal(ours, theirs), f"{label}: values differ\n{ours}\n{theirs}"


def check_op(op_type, inputs, attrs=None, opset=17, n_outputs=1, known_values=integer_inputs_known,
             oracle=run_ort):
    """Run one node on the oracle (onnxruntime by default) and edgerun; compare values, then infer()'s
    shapes and dtypes."""
    attrs = attrs or {}
    model, onnx_node = one_node_model(op_type, inputs, attrs, opset, n_outputs)
    expected = oracle(model, inputs)
    node = edgerun_node(onnx_node)
    definition = op_def(op_type)
    got = definition.compute(node, list(inputs), opset)
    assert len(got) >= n_outputs, f"compute returned {len(got)} outputs, want {n_outputs}"
    for i, (ours, theirs) in enumerate(zip(got, expected)):
        assert_close(ours, theirs, f"{op_type} output {i}")
    infos = definition.infer(node, tensor_infos(inputs, known_values), opset)
    for i, (info, theirs) in enumerate(zip(infos, expected)):
        assert info.shape == tuple(theirs.shape), f"{op_type} infer output {i}: {info.shape} != {theirs.shape}"
        assert np.dtype(info.dtype) == theirs.dtype, f"{op_type} infer output {i}: {info.dtype} != {theirs.dtype}"
    return got, expected


def compute_only(op_type, inputs, attrs=None, opset=17, name=None, n_outputs=1):
    """Run edgerun's compute on a node built directly (for error cases ORT would reject anyway)."""
    node = Node(op_type, [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)],
                [f"out{i}" for i in range(n_outputs)], dict(attrs or {}), name or f"{op_type.lower()}_bad")
    return op_def(op_type).compute(node, list(inputs), opset)


def infer_only(op_type, infos, attrs=None, opset=17, name=None, n_outputs=1):
    node = Node(op_type, [f"in{i}" if a is not None else "" for i, a in enumerate(infos)],
                [f"out{i}" for i in range(n_outputs)], dict(attrs or {}), name or f"{op_type.lower()}_bad")
    return op_def(op_type).infer(node, list(infos), opset)


def rng(seed=0):
    return np.random.default_rng(seed)


def randn(*shape, seed=0, dtype=np.float32):
    return np.asarray(rng(seed).standard_normal(shape), dtype=dtype)
