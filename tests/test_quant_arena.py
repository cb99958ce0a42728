"""The quantised ops at activation size (1 x 32 x 64 x 64 int8: 128 KiB; float in or out where the op says so), as
tests/test_arena_bounds.py runs every float op: each is one arena step whose run stays within 64 KiB of its plan,
on both backends. test_arena_bounds counts these cases when it checks that every supported op has one."""
import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from edgerun import InferenceSession, kernels

SLACK = 64 * 1024
ACTIVATION = (1, 32, 64, 64)
BACKENDS = ["numpy"] + (["native"] if kernels.native_available() else [])
_RNG = np.random.default_rng(0)
_W = _RNG.integers(-127, 128, size=(32, 32, 3, 3)).astype(np.int8)
_DW = _RNG.integers(-127, 128, size=(32, 1, 3, 3)).astype(np.int8)
_MAT = _RNG.integers(-127, 128, size=(64, 48)).astype(np.int8)
_Q = {"xs": np.float32(0.05), "xz": np.int8(1), "ws": np.full(32, 0.01, np.float32), "wz": np.zeros(32, np.int8),
      "ys": np.float32(0.2), "yz": np.int8(-2)}

# name: (op, domain, inputs after x, attrs, initializers, x dtype, output dtype, output shape)
QUANT_OP_CASES = {
    "quantizelinear": ("QuantizeLinear", "", ["xs", "xz"], {}, _Q, np.float32, T.INT8, ACTIVATION),
    "dequantizelinear": ("DequantizeLinear", "", ["xs", "xz"], {}, _Q, np.int8, T.FLOAT, ACTIVATION),
    "qlinearconv": ("QLinearConv", "", ["xs", "xz", "w", "ws", "wz", "ys", "yz"], {"pads": [1, 1, 1, 1]},
                    dict(_Q, w=_W), np.int8, T.INT8, ACTIVATION),
    "qlinearconv_depthwise": ("QLinearConv", "", ["xs", "xz", "w", "ws", "wz", "ys", "yz"],
                              {"pads": [1, 1, 1, 1], "group": 32}, dict(_Q, w=_DW), np.int8, T.INT8, ACTIVATION),
    "qlinearmatmul": ("QLinearMatMul", "", ["xs", "xz", "b", "bs", "bz", "ys", "yz"], {},
                      dict(_Q, b=_MAT, bs=np.float32(0.01), bz=np.int8(0)), np.int8, T.INT8, (1, 32, 64, 48)),
    "qlinearadd": ("QLinearAdd", "com.microsoft", ["xs", "xz", "x", "xs", "xz", "ys", "yz"], {}, _Q, np.int8,
                   T.INT8, ACTIVATION),
    "qlinearglobalaveragepool": ("QLinearGlobalAveragePool", "com.microsoft", ["xs", "xz", "ys", "yz"], {}, _Q,
                                 np.int8, T.INT8, (1, 32, 1, 1)),
    "qlinearaveragepool": ("QLinearAveragePool", "com.microsoft", ["xs", "xz", "ys", "yz"],
                           {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, _Q, np.int8, T.INT8,
                           (1, 32, 32, 32)),
    "convinteger": ("ConvInteger", "", ["w", "xz"], {"pads": [1, 1, 1, 1]}, dict(_Q, w=_W), np.int8, T.INT32,
                    ACTIVATION),
    "matmulinteger": ("MatMulInteger", "", ["b", "xz"], {}, dict(_Q, b=_MAT), np.int8, T.INT32, (1, 32, 64, 48)),
}
# Cases on the reference path (their temporaries are measured, not planned), each with its reason.
REFERENCE_PATH_CASES = {
    "convinteger": "ConvInteger (int32 out, no requantisation) has no arena kernel: quantizers emit QLinearConv or QDQ",
    "matmulinteger": "MatMulInteger (int32 out) has no arena kernel, as ConvInteger",
}


def _model(case):
    op, domain, rest, attrs, inits, x_dtype, out_type, out_shape = QUANT_OP_CASES[case]
    x_type = {np.float32: T.FLOAT, np.int8: T.INT8}[x_dtype]
    node = h.make_node(op, ["x"] + rest, ["y"], domain=domain, **attrs)
    used = {name: value for name, value in inits.items() if name in rest}
    graph = h.make_graph([node], case, [h.make_tensor_value_info("x", x_type, list(ACTIVATION))],
                         [h.make_tensor_value_info("y", out_type, list(out_shape))],
                         [nh.from_array(np.asarray(v), k) for k, v in used.items()])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 13), h.make_opsetid("com.microsoft", 1)])


def _input(case):
    if QUANT_OP_CASES[case][5] == np.float32:
        return np.random.default_rng(1).standard_normal(ACTIVATION).astype(np.float32) * 4
    return np.random.default_rng(1).integers(-128, 128, size=ACTIVATION).astype(np.int8)


@pytest.mark.parametrize("case", sorted(QUANT_OP_CASES))
def test_quantised_op_at_activation_size_runs_inside_its_plan(case):
    model = _model(case).SerializeToString()
    x = _input(case)
    for backend in BACKENDS:
        sess = InferenceSession(model, kernels_backend=backend, threads=2)
        sess.run(None, {"x": x}, profile=True)
        kinds = [step.kind for step in sess._last.steps]
        if case in REFERENCE_PATH_CASES:
            assert kinds == ["reference"], f"{case} no longer needs the reference path: update REFERENCE_PATH_CASES"
            continue
        assert kinds == ["kernel"], f"{case} ({backend}) ran as {kinds}"
        stats = sess.last_run
        assert 0 <= stats.measured_peak_bytes - stats.planned_peak_bytes <= SLACK, f"{case} ({backend})"
