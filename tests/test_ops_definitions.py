"""One definition per op (edgerun.ops.register): what the executor and scheduler learn of an op comes from
its definition: multiply-add count, arena kernel, native variant, dtype rule; and the layering: the
kernel modules never import edgerun.ops."""
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgerun import ops
from edgerun.executor import node_macs
from edgerun.ir import Graph, Node, TensorInfo
from edgerun.kernels import native_steps
from edgerun.kernels.numpy_steps import StepKernel


def all_definitions():
    ops._load_families()
    return list(ops._REGISTRY.values())


def test_every_definition_is_complete():
    for op in all_definitions():
        assert callable(op.infer) and callable(op.compute) and callable(op.macs), op.op_type
        assert op.step is None or isinstance(op.step, StepKernel), op.op_type
        assert op.native is None or op.step is not None, f"{op.op_type}: native variant without a numpy kernel"


def test_native_variants_are_new_instances_with_the_numpy_kernel_as_fallback():
    for op in all_definitions():
        if op.native is None:
            continue
        first, second = (ops.native_kernel(op.op_type, op.step, 3, op.domain) for _ in range(2))
        assert first is not second and first.threads == 3
        assert first.fallback is op.step
    assert ops.native_kernel("Tanh", ops.definition("Tanh").step, 2) is ops.definition("Tanh").step   # no C variant


def test_arena_kernel_follows_the_dtype_rule_and_supports():
    relu = Node("Relu", ["x"], ["y"], {}, "r")
    assert ops.arena_kernel(relu, [np.float32], [np.float32]) is ops.definition("Relu").step
    assert ops.arena_kernel(relu, [np.int64], [np.int64]) is None            # float32 only
    transpose = Node("Transpose", ["x"], ["y"], {"perm": [1, 0]}, "t")
    assert ops.arena_kernel(transpose, [np.int64], [np.int64]) is ops.definition("Transpose").step
    shape = Node("Shape", ["x"], ["y"], {}, "s")
    assert ops.arena_kernel(shape, [np.float32], [np.int64]) is None         # no arena kernel: reference op
    div = Node("Div", ["a", "b"], ["y"], {}, "d")
    assert ops.arena_kernel(div, [np.float32] * 2, [np.float32]) is ops.definition("Div").step
    assert ops.arena_kernel(div, [np.int64] * 2, [np.int64]) is None         # integer Div truncates: reference
    softmax = Node("Softmax", ["x"], ["y"], {"axis": 1}, "s")
    assert ops.arena_kernel(softmax, [np.float32], [np.float32]) is None     # supports() turns it down
    gemm = Node("Gemm", ["a", "b"], ["y"], {}, "g")
    native = ops.arena_kernel(gemm, [np.float32] * 2, [np.float32], backend="native", threads=2)
    assert isinstance(native, native_steps.NativeGemmKernel) and native.threads == 2


def graph_of(nodes, shapes):
    return Graph(nodes, [], [], {}, 13, "g", {name: TensorInfo(shape, np.float32) for name, shape in shapes.items()})


@pytest.mark.parametrize("node, shapes, expected", [
    # a 3x3 convolution: every output element takes Cin/group * 3 * 3 multiply-adds
    (Node("Conv", ["x", "w"], ["y"], {}, "c"), {"x": (1, 3, 8, 8), "w": (4, 3, 3, 3), "y": (1, 4, 8, 8)},
     4 * 64 * 27),
    (Node("FusedConv", ["x", "w", "b"], ["y"], {}, "f", "edgerun"),
     {"x": (1, 6, 5, 5), "w": (6, 1, 3, 3), "b": (6,), "y": (1, 6, 5, 5)}, 6 * 25 * 9),
    (Node("Gemm", ["a", "b"], ["y"], {}, "g"), {"a": (2, 7), "b": (7, 5), "y": (2, 5)}, 10 * 7),
    (Node("Gemm", ["a", "b"], ["y"], {"transA": 1}, "g"), {"a": (7, 2), "b": (7, 5), "y": (2, 5)}, 10 * 7),
    (Node("MatMul", ["a", "b"], ["y"], {}, "m"), {"a": (3, 2, 9), "b": (9, 4), "y": (3, 2, 4)}, 24 * 9),
    (Node("Relu", ["x"], ["y"], {}, "r"), {"x": (2, 3, 4), "y": (2, 3, 4)}, 24),
    (Node("Relu", ["x"], ["y"], {}, "r"), {"x": None, "y": None}, 0),
])
def test_node_macs_is_the_definitions_count(node, shapes, expected):
    assert node_macs(node, graph_of([node], shapes)) == expected


def test_kernel_modules_import_nothing_of_ops():
    code = ("import sys; import edgerun.kernels.numpy_steps, edgerun.kernels.native_steps, "
            "edgerun.kernels.activations, edgerun.kernels.numpy_block; "
            "print(sorted(m for m in sys.modules if m.startswith('edgerun.ops')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_session_runs_each_step_on_its_definitions_kernel():
    from edgerun import InferenceSession
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Div", ["r", "two"], ["d"]),
             helper.make_node("Transpose", ["d"], ["y"], perm=[1, 0]),
             helper.make_node("Softmax", ["d"], ["s"], axis=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3]),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = InferenceSession(model, kernels_backend="numpy", optimize_graph=False)
    x = np.arange(-6, 6, dtype=np.float32).reshape(3, 4)
    y, s = session.run(None, {"x": x})
    d = np.maximum(x, 0) / 2
    np.testing.assert_array_equal(y, d.T)
    np.testing.assert_allclose(s, np.exp(d) / np.exp(d).sum(axis=0), rtol=1e-6)
    steps = {step.node.op_type: step for step in session._last.steps}
    assert steps["Relu"].kernel is ops.definition("Relu").step
    assert steps["Transpose"].kernel is ops.definition("Transpose").step
    assert steps["Div"].kernel is ops.definition("Div").step
    assert steps["Softmax"].kind == "reference"     # axis 0: supports() turns it down
