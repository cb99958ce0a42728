"""The fused non-conv steps (issue 12): squeeze-excitation as one SqueezeExcite step, the channel shuffle
as one ChannelShuffle step, Sigmoid*x (SiLU) as a conv activation, and the C kernels of plain steps on
threads (pooling, Add/Sub/Mul/Div, standalone activations).

Each fused graph is checked against onnxruntime running the unfused ONNX graph, on the numpy and the
native kernels, and against the same session with the fusion switched off (EDGERUN_NO_FUSE_*=1); the
native results are the same bits for 1 and 2 threads (every step split, however small); graphs the
passes cannot match are left unchanged."""
from __future__ import annotations

import contextlib

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_close_to_ort, run_ort
from edgerun import InferenceSession, kernels
from edgerun.ir import Node
from edgerun.kernels.activations import KINDS, Activation, apply_inplace

NATIVE = kernels.native_available()
needs_native = pytest.mark.skipif(not NATIVE, reason="the native kernels are not built")
SETTINGS = settings(max_examples=6, deadline=None)


@contextlib.contextmanager
def every_step_split():
    if not NATIVE:
        yield
        return
    from edgerun.kernels import _native
    previous = _native.block_min_part_macs(0)
    try:
        yield
    finally:
        _native.block_min_part_macs(previous)


def make_model(nodes, x_shape, initializers, opset=14, output="y"):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32) if v.dtype.kind == "f" else v, k)
                               for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model


def op_types(sess) -> list[str]:
    return [n.op_type for n in sess.compiled.graph.nodes]


def run(model, x, backend, threads=1):
    sess = InferenceSession(model, kernels_backend=backend, threads=threads)
    return sess.run(None, {"x": x})[0], op_types(sess)


def backends():
    return ["numpy", "native"] if NATIVE else ["numpy"]


def check_fusion(model, x, fused_op, switch, monkeypatch, rel=1e-5):
    """The fused graph holds `fused_op` (or `fused_op(ops)` is true), matches onnxruntime on each backend, gives
    the same bits on 1 and 2 native threads, and agrees with the unfused run (`switch`=1)."""
    is_fused = fused_op if callable(fused_op) else (lambda ops: fused_op in ops)
    expected = run_ort(model, {"x": x})[0]
    for backend in backends():
        with every_step_split():
            y1, ops = run(model, x, backend, 1)
            y2, _ = run(model, x, backend, 2)
        assert is_fused(ops), ops
        assert_close_to_ort(y1, expected, rel=rel)
        np.testing.assert_array_equal(y1, y2)
        monkeypatch.setenv(switch, "1")
        unfused, plain_ops = run(model, x, backend, 1)
        monkeypatch.delenv(switch)
        assert not is_fused(plain_ops), plain_ops
        np.testing.assert_allclose(y1, unfused, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(unfused).max())))


# ---------------------------------------------------------------- squeeze-excitation
ACTS = {"relu": [("Relu", {})], "hardswish": [("HardSwish", {})], "sigmoid": [("Sigmoid", {})]}
GATES = {"hardsigmoid": ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}), "sigmoid": ("Sigmoid", {})}


def se_model(rng, channels, squeeze, size, act="relu", gate="hardsigmoid", gate_first=False, bias=True,
             silu=False):
    w1 = rng.standard_normal((squeeze, channels, 1, 1)) * 0.5
    w2 = rng.standard_normal((channels, squeeze, 1, 1)) * 0.5
    inits = {"w1": w1, "w2": w2}
    if bias:
        inits.update(b1=rng.standard_normal(squeeze), b2=rng.standard_normal(channels))
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
             helper.make_node("Conv", ["p", "w1"] + (["b1"] if bias else []), ["h0"])]
    if silu:
        nodes += [helper.make_node("Sigmoid", ["h0"], ["hs"]), helper.make_node("Mul", ["hs", "h0"], ["h"])]
    else:
        op, attrs = ACTS[act][0]
        nodes.append(helper.make_node(op, ["h0"], ["h"], **attrs))
    nodes.append(helper.make_node("Conv", ["h", "w2"] + (["b2"] if bias else []), ["g0"]))
    op, attrs = GATES[gate]
    nodes.append(helper.make_node(op, ["g0"], ["g"], **attrs))
    nodes.append(helper.make_node("Mul", ["g", "x"] if gate_first else ["x", "g"], ["y"]))
    return make_model(nodes, [1, channels, size, size], inits)


@given(channels=st.integers(1, 40), squeeze=st.integers(1, 12), size=st.integers(1, 9),
       act=st.sampled_from(sorted(ACTS)), gate=st.sampled_from(sorted(GATES)), gate_first=st.booleans(),
       bias=st.booleans(), seed=st.integers(0, 2**16))
@SETTINGS
def test_squeeze_excitation_is_one_step_matching_onnxruntime(channels, squeeze, size, act, gate, gate_first,
                                                              bias, seed):
    rng = np.random.default_rng(seed)
    model = se_model(rng, channels, squeeze, size, act, gate, gate_first, bias)
    x = rng.standard_normal((1, channels, size, size)).astype(np.float32)
    with pytest.MonkeyPatch.context() as monkeypatch:
        check_fusion(model, x, "SqueezeExcite", "EDGERUN_NO_FUSE_SE", monkeypatch)


def test_squeeze_excitation_with_silu_inside_and_a_batch(monkeypatch):
    rng = np.random.default_rng(3)
    model = se_model(rng, 24, 6, 7, gate="sigmoid", silu=True)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "n"
    x = rng.standard_normal((3, 24, 7, 7)).astype(np.float32)
    check_fusion(model, x, "SqueezeExcite", "EDGERUN_NO_FUSE_SE", monkeypatch)
    sess = InferenceSession(model)
    sess.run(None, {"x": x})
    se = next(n for n in sess.compiled.graph.nodes if n.op_type == "SqueezeExcite")
    assert (se.attrs["activation"], se.attrs["gate"]) == ("silu", "sigmoid")


def _unmatched_se_graphs(rng):
    """SE-like graphs the pass must leave alone: Mul by another tensor, a 3x3 conv, a reused gate."""
    base = se_model(rng, 8, 4, 5)
    other_input = onnx.ModelProto()
    other_input.CopyFrom(base)
    mul = other_input.graph.node[-1]
    other_input.graph.node.insert(0, helper.make_node("Relu", ["x"], ["x2"]))
    mul.input[list(mul.input).index("x")] = "x2"
    yield "Mul by another tensor", other_input
    wide = se_model(rng, 8, 4, 5)
    w1 = next(i for i in wide.graph.initializer if i.name == "w1")
    w1.CopyFrom(numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "w1"))
    wide.graph.node[1].attribute.extend([helper.make_attribute("pads", [1, 1, 1, 1])])
    yield "3x3 conv", wide
    reused = se_model(rng, 8, 4, 5)
    reused.graph.node[-1].output[0] = "y0"
    reused.graph.node.append(helper.make_node("Add", ["y0", "g"], ["y"]))
    yield "gate read twice", reused


def test_squeeze_excitation_pass_leaves_other_graphs_unchanged():
    rng = np.random.default_rng(5)
    for label, model in _unmatched_se_graphs(rng):
        x = rng.standard_normal((1, 8, 5, 5)).astype(np.float32)
        expected = run_ort(model, {"x": x})[0]
        for backend in backends():
            y, ops = run(model, x, backend)
            assert "SqueezeExcite" not in ops and "GlobalAveragePool" in ops, (label, ops)
            assert_close_to_ort(y, expected, rel=1e-5)


def test_squeeze_excite_op_names_the_node_on_bad_weights():
    from edgerun import ops
    from edgerun.errors import InvalidModelError
    op = ops.definition("SqueezeExcite", "edgerun")
    node = Node("SqueezeExcite", ["x", "w1", "b1", "w2", "b2"], ["y"], {}, "se_bad", "edgerun")
    x = np.zeros((1, 4, 2, 2), np.float32)
    with pytest.raises(InvalidModelError, match="se_bad.*W2"):
        op.compute(node, [x, np.zeros((2, 4, 1, 1), np.float32), np.zeros(2, np.float32),
                          np.zeros((4, 3, 1, 1), np.float32), np.zeros(4, np.float32)], 14)


# ---------------------------------------------------------------- channel shuffle
def shuffle_model(channels, groups, size, perm=None, batch=1):
    per_group = channels // groups
    inits = {"split": np.array([batch, groups, per_group, size, size], np.int64),
             "merge": np.array([batch, channels, size, size], np.int64)}
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Reshape", ["r", "split"], ["s"]),
             helper.make_node("Transpose", ["s"], ["t"], perm=perm or [0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t", "merge"], ["y"])]
    return make_model(nodes, [batch, channels, size, size], inits, opset=13)


@given(per_group=st.integers(1, 9), groups=st.integers(1, 5), size=st.integers(1, 8), batch=st.integers(1, 2),
       seed=st.integers(0, 2**16))
@SETTINGS
def test_channel_shuffle_is_one_step_matching_onnxruntime(per_group, groups, size, batch, seed):
    rng = np.random.default_rng(seed)
    model = shuffle_model(per_group * groups, groups, size, batch=batch)
    x = rng.standard_normal((batch, per_group * groups, size, size)).astype(np.float32)
    with pytest.MonkeyPatch.context() as monkeypatch:
        check_fusion(model, x, "ChannelShuffle", "EDGERUN_NO_FUSE_SHUFFLE", monkeypatch, rel=0)


def test_other_transposes_between_reshapes_stay_as_they_are():
    model = shuffle_model(12, 3, 4, perm=[0, 1, 2, 4, 3])
    x = np.random.default_rng(0).standard_normal((1, 12, 4, 4)).astype(np.float32)
    for backend in backends():
        y, ops = run(model, x, backend)
        assert "ChannelShuffle" not in ops and "Transpose" in ops
        np.testing.assert_array_equal(y, run_ort(model, {"x": x})[0])


def test_the_shufflenet_zoo_model_shuffles_in_one_step():
    from edgerun.zoo import shufflenet_v1
    sess = InferenceSession(shufflenet_v1(resolution=64, batch=1))
    sess.run(None, {"input": np.zeros((1, 3, 64, 64), np.float32)})
    ops = op_types(sess)
    assert ops.count("ChannelShuffle") == 16 and "Transpose" not in ops


# ---------------------------------------------------------------- SiLU as a conv activation
def silu_model(rng, cin, cout, size, kernel, mul_first):
    w = rng.standard_normal((cout, cin, kernel, kernel)) * 0.5
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[kernel // 2] * 4),
             helper.make_node("Sigmoid", ["c"], ["s"]),
             helper.make_node("Mul", ["s", "c"] if mul_first else ["c", "s"], ["y"])]
    return make_model(nodes, [1, cin, size, size], {"w": w})


@given(cin=st.integers(1, 12), cout=st.integers(1, 20), size=st.integers(1, 9), kernel=st.sampled_from([1, 3]),
       mul_first=st.booleans(), seed=st.integers(0, 2**16))
@SETTINGS
def test_silu_after_a_conv_is_its_activation(cin, cout, size, kernel, mul_first, seed):
    rng = np.random.default_rng(seed)
    model = silu_model(rng, cin, cout, size, kernel, mul_first)
    x = rng.standard_normal((1, cin, size, size)).astype(np.float32)
    with pytest.MonkeyPatch.context() as monkeypatch:
        check_fusion(model, x, lambda ops: ops == ["FusedConv"], "EDGERUN_NO_FUSE_SILU", monkeypatch)
    sess = InferenceSession(model)
    sess.run(None, {"x": x})
    assert op_types(sess) == ["FusedConv"] and sess.compiled.graph.nodes[0].attrs["activation"] == "silu"


def test_silu_is_not_fused_when_the_conv_output_is_read_elsewhere():
    rng = np.random.default_rng(1)
    model = silu_model(rng, 3, 4, 5, 1, False)
    model.graph.node.append(helper.make_node("Add", ["y", "c"], ["z"]))
    model.graph.output[0].name = "z"
    sess = InferenceSession(model)
    x = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    y = sess.run(None, {"x": x})[0]
    assert "Sigmoid" in op_types(sess)
    assert_close_to_ort(y, run_ort(model, {"x": x})[0], rel=1e-5)


SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 30.0, -30.0, 100.0, -100.0, 1.5], np.float32)


def test_silu_keeps_nan_and_inf_as_onnxruntime_does():
    """x * Sigmoid(x) on onnxruntime is the oracle of every form: reference, in place, into, and C."""
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    model = make_model(nodes, [SPECIALS.size], {})
    expected = run_ort(model, {"x": SPECIALS})[0]
    kind = KINDS["silu"]

    def same(actual):
        np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
        finite = ~np.isnan(expected)
        np.testing.assert_allclose(actual[finite], expected[finite], rtol=1e-6, atol=1e-7)

    same(kind.reference(SPECIALS))
    flat = SPECIALS.copy()
    apply_inplace(flat, Activation("silu"), np.empty(3, np.float32))
    same(flat)
    into = np.empty_like(SPECIALS)
    kind.into(SPECIALS, into)
    same(into)
    if NATIVE:
        from edgerun.kernels import native_fused
        out = np.empty_like(SPECIALS)
        native_fused.activation(SPECIALS, out, Activation("silu"))
        same(out)


@needs_native
@pytest.mark.parametrize("kind", ["hardswish", "silu", "relu"])
def test_pointwise_gemm_activations_match_the_reference(kind):
    """HardSwish now runs in the GEMM's registers (relu and clip did); silu after the store."""
    from edgerun.kernels import native
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((5, 37)) * 4).astype(np.float32)
    x[0, :3] = [np.nan, np.inf, -np.inf]
    w = rng.standard_normal((7, 5)).astype(np.float32)
    _, edge_floats = native.packed_pointwise_sizes(7, 37, 5)
    out = np.empty((7, 37), np.float32)
    native.pointwise_conv_packed(x, native.pack_pointwise_weights(w), np.zeros(7, np.float32), out,
                                 np.empty(edge_floats, np.float32) if edge_floats else None, Activation(kind))
    expected = KINDS[kind].reference(w.astype(np.float64) @ x.astype(np.float64))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    finite = ~np.isnan(expected)
    np.testing.assert_allclose(out[finite], expected[finite], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- plain steps on threads
def one_node_model(op, shape, inits=None, **attrs):
    inits = inits or {}
    inputs = ["x"] + list(inits)
    return make_model([helper.make_node(op, inputs, ["y"], **attrs)], list(shape), inits, opset=13)


PLAIN_CASES = [
    ("Sum", lambda rng, s: {"b": rng.standard_normal(s)}, {}),
    ("Add", lambda rng, s: {"b": rng.standard_normal(s)}, {}),
    ("Mul", lambda rng, s: {"b": rng.standard_normal(s)}, {}),
    ("Sub", lambda rng, s: {"b": rng.standard_normal(s)}, {}),
    ("Div", lambda rng, s: {"b": rng.standard_normal(s) + 3.0}, {}),
    ("Relu", lambda rng, s: {}, {}),
    ("HardSigmoid", lambda rng, s: {}, {"alpha": 0.3, "beta": 0.4}),
    ("LeakyRelu", lambda rng, s: {}, {"alpha": 0.1}),
    ("MaxPool", lambda rng, s: {}, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("AveragePool", lambda rng, s: {}, {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}),
]


@needs_native
@pytest.mark.parametrize("op, make_inits, attrs", PLAIN_CASES, ids=[c[0] for c in PLAIN_CASES])
def test_plain_steps_on_two_threads_give_the_bits_of_one(op, make_inits, attrs):
    rng = np.random.default_rng(4)
    shape = (1, 13, 11, 9)
    model = one_node_model(op, shape, make_inits(rng, shape), **attrs)
    x = rng.standard_normal(shape).astype(np.float32)
    expected = run_ort(model, {"x": x})[0]
    with every_step_split():
        y1, _ = run(model, x, "native", 1)
        y2, _ = run(model, x, "native", 2)
    np.testing.assert_array_equal(y1, y2)
    assert_close_to_ort(y1, expected, rel=1e-6)
    sess = InferenceSession(model, kernels_backend="native", threads=2)
    sess.run(None, {"x": x})
    kernel = sess.compiled.steps[0].kernel
    assert type(kernel).__name__.startswith("Native"), type(kernel)


# ---------------------------------------------------------------- the zoo's MobileNetV3-like model
def test_mobilenet_v3_zoo_model_runs_its_se_blocks_as_single_steps(monkeypatch):
    from edgerun.zoo import mobilenet_v3_small_like
    model = mobilenet_v3_small_like(resolution=64, batch=1)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    expected = run_ort(model, {"input": x})[0]
    results = []
    for switch in (None, "EDGERUN_NO_FUSE_SE"):
        if switch:
            monkeypatch.setenv(switch, "1")
        sess = InferenceSession(model, kernels_backend=backends()[-1], threads=2)
        results.append(sess.run(None, {"input": x})[0])
        ops = op_types(sess)
        assert ops.count("SqueezeExcite") == (0 if switch else 9), ops
        assert_close_to_ort(results[-1], expected, rel=1e-4)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- per-channel scales folded into convs
def affine_model(rng, channels=6, size=5, with_conv=True, scale_shape=(6, 1, 1)):
    """[conv -> Relu ->] BatchNormalization -> Mul -> Add -> Relu -> conv -> Mul, DenseNet's pre-activation."""
    c = channels
    inits = {"gamma": rng.uniform(0.5, 1.5, c), "beta": rng.standard_normal(c), "mean": rng.standard_normal(c) * 0.1,
             "var": rng.uniform(0.5, 1.5, c), "s": rng.uniform(0.5, 1.5, scale_shape),
             "t": rng.standard_normal((c, 1, 1)), "w1": rng.standard_normal((4, c, 1, 1)) * 0.3,
             "s2": rng.uniform(0.5, 1.5, (4, 1, 1))}
    first = "x"
    nodes = []
    if with_conv:
        inits["w0"] = rng.standard_normal((c, 3, 3, 3)) * 0.3
        nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["c0"], ["r0"])]
        first = "r0"
    nodes += [helper.make_node("BatchNormalization", [first, "gamma", "beta", "mean", "var"], ["bn"]),
              helper.make_node("Mul", ["bn", "s"], ["m"]), helper.make_node("Add", ["t", "m"], ["a"]),
              helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Conv", ["r", "w1"], ["c1"]),
              helper.make_node("Mul", ["c1", "s2"], ["y"])]
    return make_model(nodes, [1, 3 if with_conv else c, size, size], inits, opset=13)


@pytest.mark.parametrize("with_conv", [True, False])
def test_batchnorm_scales_and_shifts_fold_into_convs(with_conv, monkeypatch):
    rng = np.random.default_rng(6)
    model = affine_model(rng, with_conv=with_conv)
    channels = 3 if with_conv else 6
    x = rng.standard_normal((1, channels, 5, 5)).astype(np.float32)
    check_fusion(model, x, lambda ops: not {"Mul", "Add", "BatchNormalization", "Relu"} & set(ops),
                 "EDGERUN_NO_FOLD_AFFINE", monkeypatch)


def test_a_scale_that_is_not_per_channel_is_left_alone():
    rng = np.random.default_rng(7)
    model = affine_model(rng, scale_shape=(1, 5, 5))
    x = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    y, ops = run(model, x, "numpy")
    assert "Mul" in ops
    assert_close_to_ort(y, run_ort(model, {"x": x})[0], rel=1e-5)
