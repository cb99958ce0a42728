"""One-node models run through a whole edgerun session (arena kernels, plan, measured peak) and onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from conftest import assert_close_to_ort, run_ort
from edgerun import InferenceSession

MEASURED_SLACK_BYTES = 64 * 1024


def session_model(op_type, feeds: dict, attrs=None, constants=None, opset=13, n_outputs=1):
    """A one-node model: `feeds` (name -> array) are graph inputs, `constants` (name -> array) initializers,
    inputs in the order feeds then constants (a name of None leaves an optional input out)."""
    constants = constants or {}
    names = list(feeds) + list(constants)
    node = helper.make_node(op_type, [n or "" for n in names], [f"y{i}" for i in range(n_outputs)],
                            name=f"{op_type.lower()}_under_test", **(attrs or {}))
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
              for n, a in feeds.items()]
    graph = helper.make_graph([node], "one_node", inputs,
                              [helper.make_empty_tensor_value_info(f"y{i}") for i in range(n_outputs)],
                              initializer=[numpy_helper.from_array(np.asarray(a), n)
                                           for n, a in constants.items() if n])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model


def check_against_onnxruntime(model, feeds: dict, backends=("numpy", "native"), kind="kernel", rel=1e-4,
                              optimize_graph=True):
    """Run on onnxruntime and on every backend; the step must run as `kind`, the outputs match and the
    measured peak stay within MEASURED_SLACK_BYTES of the plan. Returns edgerun's outputs (last backend)."""
    from edgerun import kernels
    expected = run_ort(model, feeds)
    outputs = None
    for backend in backends:
        if backend == "native" and not kernels.native_available():
            continue
        sess = InferenceSession(model, kernels_backend=backend, threads=2, optimize_graph=optimize_graph)
        outputs = sess.run(None, feeds, profile=True)
        kinds = {s.node.op_type: s.kind for s in sess.compiled.steps}
        assert kinds, f"{backend}: the node was folded away, nothing ran"
        assert all(k == kind for k in kinds.values()), f"{backend}: steps ran as {kinds}, expected {kind}"
        stats = sess.last_run
        assert stats.measured_peak_bytes - stats.planned_peak_bytes <= MEASURED_SLACK_BYTES, (
            f"{backend}: measured {stats.measured_peak_bytes:,} B, planned {stats.planned_peak_bytes:,} B")
        for ours, theirs in zip(outputs, expected):
            assert ours.dtype == theirs.dtype
            assert_close_to_ort(ours, theirs, rel=rel)
    return outputs
