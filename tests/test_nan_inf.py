"""NaN and +-Inf go through every activation and native kernel as onnxruntime (or, where onnxruntime is
the same, the numpy reference) takes them: NaN stays NaN, infinities map as the formulas say.

Property tests (hypothesis, derandomized) feed arrays mixing NaN, +Inf, -Inf, signed zeros and ordinary
values through: each activation of the table (the ONNX op on onnxruntime vs the reference, the arena
kernel, the in-place application, and the native code in the depthwise, the 1x1 GEMM and the
standalone paths), each native step kernel (FusedConv 1x1 / depthwise / im2col, MaxPool, AveragePool,
GlobalAveragePool, Gemm) vs its numpy reference op, and one fused inverted-residual block (native vs
the numpy oracle).

MaxPool is compared with numpy's rule (a NaN anywhere in a window gives NaN) rather than with
onnxruntime: its MLAS kernel returns NaN only when the NaN is the last value it compares in a window
(`_mm_max_ps` returns its second operand when either is NaN), so its answer depends on the NaN's place.
"""
import functools

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper

from edgerun import ops
from edgerun.ir import Node
from edgerun.kernels import native_available
from edgerun.kernels.activations import TABLE, Activation, apply_inplace
from scheduler.blocks import BlockGeometry, BlockSchedule
from test_kernels_block import BlockCase, random_weights, run_case

pytestmark = [pytest.mark.skipif(not native_available(), reason="the native kernels are not built"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")]

SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0]
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def with_specials(shape, share=st.floats(0.02, 0.5)):
    """Float32 arrays of `shape`: ordinary values with a drawn share of NaN / +-Inf / signed zeros."""
    ordinary = st.floats(-8, 8, width=32)
    special = st.sampled_from(SPECIALS).map(np.float32)

    @st.composite
    def draw(draw_):
        base = draw_(arrays(np.float32, shape, elements=ordinary))
        mask = draw_(arrays(np.float64, shape, elements=st.floats(0, 1))) < draw_(share)
        values = draw_(arrays(np.float32, shape, elements=special))
        base[mask] = values[mask]
        return base
    return draw()


def assert_same_specials(actual, expected, rtol=1e-5, atol=1e-6):
    """NaN where expected has NaN, the same infinities, ordinary values close."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg="NaN positions differ")
    np.testing.assert_array_equal(np.isposinf(actual), np.isposinf(expected), err_msg="+Inf positions differ")
    np.testing.assert_array_equal(np.isneginf(actual), np.isneginf(expected), err_msg="-Inf positions differ")
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=rtol, atol=atol)


# ---------------------------------------------------------------- activations
KINDS = [kind for kind in TABLE if kind.name and kind.op_type]   # silu (a pattern, no op): tests/test_fused_steps.py
SAMPLE_PARAMS = {"clip": (-0.5, 6.0), "hardsigmoid": (0.3, 0.4), "leakyrelu": (0.2,)}


def params_of(kind):
    return SAMPLE_PARAMS.get(kind.name, tuple(default for _, default in kind.params))


@functools.lru_cache(maxsize=None)
def ort_session(kind_name: str):
    kind = next(k for k in KINDS if k.name == kind_name)
    params = params_of(kind)
    inputs, inits, attrs = ["x"], [], {}
    if kind.params_from_inputs:   # Clip: bounds as inputs
        for name, value in zip(("lo", "hi"), params):
            inputs.append(name)
            inits.append(helper.make_tensor(name, TensorProto.FLOAT, [], [value]))
    else:
        attrs = {name: value for (name, _), value in zip(kind.params, params)}
    node = helper.make_node(kind.op_type, inputs, ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def onnxruntime_activation(kind, x):
    return ort_session(kind.name).run(None, {"x": x.reshape(-1)})[0].reshape(x.shape)


def native_depthwise_activation(kind, x, activation):
    """act(x) through the native depthwise kernel: a 1x1 depthwise conv of weight 1 and bias 0."""
    from edgerun.kernels import native
    c = x.shape[0]
    out = np.empty_like(x)
    native.depthwise_conv(x, np.ones((c, 1, 1), np.float32), np.zeros(c, np.float32), out, 1, (0, 0, 0, 0),
                          activation)
    return out


def native_gemm_activation(kind, x, activation):
    """act(x) through the packed 1x1 GEMM: one input and one output channel, weight 1, bias 0 (relu and
    clip are applied in registers there, the others after the store)."""
    from edgerun.kernels import native
    flat = x.reshape(1, -1)
    _, edge_floats = native.packed_pointwise_sizes(1, flat.shape[1], 1)
    edge = np.empty(edge_floats, np.float32) if edge_floats else None
    out = np.empty_like(flat)
    native.pointwise_conv_packed(flat, native.pack_pointwise_weights(np.ones((1, 1), np.float32)),
                                 np.zeros(1, np.float32), out, edge, activation)
    return out.reshape(x.shape)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
@SETTINGS
@given(x=with_specials((3, 5, 11)))
def test_activation_keeps_nan_and_inf_as_onnxruntime(kind, x):
    params = params_of(kind)
    expected = onnxruntime_activation(kind, x)
    assert_same_specials(kind.reference(x, *params), expected)
    activation = Activation(kind.name, params)

    arena = ops.definition(kind.op_type).step            # the standalone arena kernel
    y = np.full_like(x, 7.0)
    sizes = arena.scratch_bytes(Node(kind.op_type, ["x"], ["y"], {}, "a"), [x.shape], [x.shape])
    node_attrs = {} if kind.params_from_inputs else {name: p for (name, _), p in zip(kind.params, params)}
    inputs = [x] + ([np.float32(p) for p in params] if kind.params_from_inputs else [])
    arena.run(Node(kind.op_type, ["x"] + ["b"] * (len(inputs) - 1), ["y"], node_attrs, "a"), inputs, [y],
              {name: np.empty(size // 4, np.float32) for name, size in sizes.items()})
    assert_same_specials(y, expected)

    flat = x.reshape(-1).copy()                          # in place, as fused numpy kernels apply it
    apply_inplace(flat, activation, np.empty(7, np.float32))
    assert_same_specials(flat.reshape(x.shape), expected)

    assert_same_specials(native_depthwise_activation(kind, x, activation), expected)
    assert_same_specials(native_gemm_activation(kind, x, activation), expected)


def test_native_relu_keeps_nan_hand_case():
    """The bug this file was written for: the native ReLU was v > 0 ? v : 0, which turns NaN into 0."""
    x = np.array([[[np.nan, np.inf, -np.inf, -1.0, 2.0, np.nan, 0.5, -3.0, np.nan]]], np.float32)
    expected = [[[np.nan, np.inf, 0.0, 0.0, 2.0, np.nan, 0.5, 0.0, np.nan]]]
    for run in (native_depthwise_activation, native_gemm_activation):
        np.testing.assert_array_equal(run(None, x, Activation("relu")), expected)


# ---------------------------------------------------------------- native step kernels vs reference ops
def run_native_step(op_type, attrs, inputs, out_shape, domain="", constants=()):
    node = Node(op_type, [f"i{k}" for k in range(len(inputs))], ["y"], attrs, "step", domain)
    kernel = ops.arena_kernel(node, [np.float32] * len(inputs), [np.float32], backend="native", threads=2)
    assert kernel is not ops.definition(op_type, domain).step, f"{op_type} has no native variant"
    kernel.prepare(node, {node.inputs[k]: inputs[k] for k in constants})
    in_shapes = [x.shape for x in inputs]
    scratch = {name: np.empty(size // 4, np.float32)
               for name, size in kernel.scratch_bytes(node, in_shapes, [out_shape]).items()}
    y = np.full(out_shape, 7.0, np.float32)
    kernel.run(node, inputs, [y], scratch)
    expected = ops.definition(op_type, domain).compute(node, inputs, 13)[0]
    return y, expected


CONV_CASES = {
    "pointwise": dict(kernel_shape=[1, 1], pads=[0, 0, 0, 0], group=1, cin=6, cout=5),
    "depthwise": dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=6, cin=6, cout=6),
    "im2col": dict(kernel_shape=[3, 3], pads=[1, 0, 1, 1], group=1, cin=3, cout=4),
}


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("activation", [("relu", []), ("clip", [0.0, 6.0]), ("hardswish", []), ("", [])],
                         ids=lambda a: a[0] or "none")
@SETTINGS
@given(data=st.data())
def test_native_fused_conv_keeps_nan_and_inf(case, activation, data):
    spec = CONV_CASES[case]
    cin, cout, group = spec["cin"], spec["cout"], spec["group"]
    x = data.draw(with_specials((1, cin, 7, 9), share=st.floats(0.0, 0.08)))
    rng = np.random.default_rng(cin * cout)
    w = (rng.standard_normal((cout, cin // group, *spec["kernel_shape"])) + 0.1).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    attrs = dict(kernel_shape=spec["kernel_shape"], strides=[1, 1], pads=spec["pads"], dilations=[1, 1],
                 group=group, activation=activation[0], activation_params=activation[1])
    kh, kw = spec["kernel_shape"]
    p = spec["pads"]
    out_shape = (1, cout, 7 + p[0] + p[2] - kh + 1, 9 + p[1] + p[3] - kw + 1)
    y, expected = run_native_step("FusedConv", attrs, [x, w, b], out_shape, "edgerun", constants=(1,))
    assert_same_specials(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op_type, attrs", [
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("MaxPool", dict(kernel_shape=[2, 2], strides=[1, 1])),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=1)),
], ids=["max3s2", "max2s1", "avg3s2", "avg-with-pads"])
@SETTINGS
@given(x=with_specials((1, 3, 8, 9), share=st.floats(0.0, 0.2)))
def test_native_pools_keep_nan_and_inf(op_type, attrs, x):
    out_shape = ops.definition(op_type).compute(Node(op_type, ["x"], ["y"], attrs, "p"), [x], 13)[0].shape
    y, expected = run_native_step(op_type, attrs, [x], out_shape)
    assert_same_specials(y, expected)


def test_average_pool_specials_match_onnxruntime():
    """AveragePool and GlobalAveragePool sum their windows: onnxruntime's answer does not depend on order."""
    x = np.array([[[[np.nan, 1, 2, 3], [4, 5, np.nan, -np.inf], [np.inf, 0, -1, 2], [1, 1, np.inf, 1]]]],
                 np.float32)
    attrs = dict(kernel_shape=[2, 2], strides=[1, 1])
    node = helper.make_node("AveragePool", ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    expected = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    y, _ = run_native_step("AveragePool", attrs, [x], expected.shape)
    assert_same_specials(y, expected)


@SETTINGS
@given(x=with_specials((2, 5, 6, 7), share=st.floats(0.0, 0.05)))
def test_native_global_average_pool_keeps_nan_and_inf(x):
    y, expected = run_native_step("GlobalAveragePool", {}, [x], (2, 5, 1, 1))
    assert_same_specials(y, expected)


@SETTINGS
@given(data=st.data())
def test_native_gemm_keeps_nan_and_inf_in_input_and_bias(data):
    a = data.draw(with_specials((2, 40), share=st.floats(0.0, 0.05)))
    bias = data.draw(with_specials((9,), share=st.floats(0.0, 0.3)))
    w = (np.random.default_rng(3).standard_normal((9, 40)) + 0.1).astype(np.float32)
    y, expected = run_native_step("Gemm", dict(transB=1), [a, w, bias], (2, 9), constants=(1,))
    assert_same_specials(y, expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- one fused block, native vs numpy
GEOMETRY = BlockGeometry(4, 7, 8, 12, 1, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 4, True)


@SETTINGS
@given(x=with_specials((4, 7, 8), share=st.floats(0.0, 0.03)),
       sched=st.sampled_from([BlockSchedule(1, 7), BlockSchedule(3, 2)]))
def test_native_block_keeps_nan_and_inf_as_numpy(x, sched):
    case = BlockCase(GEOMETRY, sched, random_weights(GEOMETRY, np.random.default_rng(11),
                                                     expand_act=Activation("relu"),
                                                     dw_act=Activation("clip", (0.0, 6.0))), x)
    assert_same_specials(run_case(case, "native"), run_case(case, "numpy"), rtol=1e-4, atol=1e-4)
