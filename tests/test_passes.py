"""Graph passes on hand-built ONNX models.

Every test checks the structure the passes produce AND that the optimised graph, evaluated by the
reference ops, gives onnxruntime's outputs on the original model (and so does the unoptimised one).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgerun import limits
from edgerun.errors import EdgerunError, ResourceLimitError
from edgerun.loader import load_model
from edgerun.passes import ENV_VAR, PASS_NAMES, UnknownPassError, disabled_passes, optimize
from edgerun.reference import run_graph
from edgerun.shape_inference import infer_shapes

REL_TOL = 1e-4


@pytest.fixture(autouse=True)
def no_passes_disabled_from_outside(monkeypatch):
    """Structure assertions assume every pass runs unless a test switches some off itself."""
    monkeypatch.delenv(ENV_VAR, raising=False)


# ---------------------------------------------------------------- building models

class ModelBuilder:
    """Accumulates ONNX nodes and seeded random initializers; names are generated."""

    def __init__(self, seed: int = 0, opset: int = 14):
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array, prefix: str = "c") -> str:
        name = self.fresh(prefix)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op_type: str, inputs: list[str], n_outputs: int = 1, **attrs) -> str | list[str]:
        outputs = [self.fresh(op_type.lower()) for _ in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self.fresh(op_type), **attrs))
        return outputs[0] if n_outputs == 1 else outputs

    def conv(self, x: str, cin: int, cout: int, k: int = 1, stride: int = 1, group: int = 1,
             bias: bool = True, bn: bool = True, act: str = "", **attrs) -> str:
        w = self.const((self.rng.normal(size=(cout, cin // group, k, k)) / np.sqrt(cin // group * k * k))
                       .astype(np.float32), "w")
        inputs = [x, w] + ([self.const(self.rng.normal(size=cout).astype(np.float32) * 0.1, "b")] if bias else [])
        if "pads" not in attrs and "auto_pad" not in attrs:
            attrs["pads"] = [k // 2] * 4
        y = self.node("Conv", inputs, strides=[stride, stride], group=group, **attrs)
        if bn:
            y = self.batch_norm(y, cout)
        return self.activation(y, act)

    def batch_norm(self, x: str, channels: int) -> str:
        r = self.rng
        params = [r.uniform(0.5, 1.5, channels), r.normal(size=channels) * 0.1,
                  r.normal(size=channels) * 0.1, r.uniform(0.5, 1.5, channels)]
        return self.node("BatchNormalization", [x] + [self.const(p.astype(np.float32), "bn") for p in params],
                         epsilon=1e-3)

    def activation(self, x: str, kind: str) -> str:
        if kind == "":
            return x
        if kind == "relu6":
            if self.opset < 11:
                return self.node("Clip", [x], min=0.0, max=6.0)
            return self.node("Clip", [x, self.const(np.float32(0.0)), self.const(np.float32(6.0))])
        if kind == "clip_max_only":
            return self.node("Clip", [x, "", self.const(np.float32(0.5))])
        if kind == "leakyrelu":
            return self.node("LeakyRelu", [x], alpha=0.2)
        if kind == "hardsigmoid":
            return self.node("HardSigmoid", [x], alpha=0.3, beta=0.4)
        return self.node({"relu": "Relu", "hardswish": "HardSwish", "sigmoid": "Sigmoid"}[kind], [x])

    def block(self, x: str, cin: int, cout: int, expansion: int, stride: int = 1, k: int = 3,
              act: str = "relu6", residual: bool | None = None) -> str:
        """MobileNetV2 inverted residual: 1x1 expand, kxk depthwise, 1x1 linear project, add."""
        hidden = cin * expansion
        h = self.conv(x, cin, hidden, 1, act=act) if expansion != 1 else x
        h = self.conv(h, hidden, hidden, k, stride=stride, group=hidden, act=act)
        y = self.conv(h, hidden, cout, 1)
        if residual is None:
            residual = stride == 1 and cin == cout
        return self.node("Add", [x, y]) if residual else y

    def model(self, inputs: dict[str, tuple], outputs: dict[str, int]) -> onnx.ModelProto:
        """`outputs`: name -> rank (dims left symbolic; the runtimes work them out)."""
        graph = helper.make_graph(
            self.nodes, "test",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, [f"{n}_{i}" for i in range(rank)])
             for n, rank in outputs.items()],
            self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


# ---------------------------------------------------------------- oracle helpers

def prepared(model: onnx.ModelProto, shapes: dict[str, tuple]):
    return infer_shapes(load_model(model), shapes)


def random_feeds(shapes: dict[str, tuple], seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}


def onnxruntime_outputs(model: onnx.ModelProto, feeds) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def assert_relatively_close(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    assert actual.shape == expected.shape, what
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    error = float(np.max(np.abs(actual.astype(np.float64) - expected)))
    assert error <= REL_TOL * scale, f"{what}: max error {error} vs max |expected| {scale}"


def optimised_and_checked(model: onnx.ModelProto, shapes: dict[str, tuple], disabled=None):
    """Optimise; check the result and the unoptimised graph against onnxruntime; return the result."""
    graph = prepared(model, shapes)
    optimised = optimize(graph, disabled=disabled)
    feeds = random_feeds(shapes)
    expected = onnxruntime_outputs(model, feeds)
    for label, candidate in (("optimised", optimised), ("all passes off", optimize(graph, disabled={"all"}))):
        got = run_graph(candidate, feeds)
        assert set(got) == set(expected)
        for name in expected:
            assert_relatively_close(got[name], expected[name], f"{label} output {name}")
    return optimised


def op_types(graph) -> list[str]:
    return [n.op_type for n in graph.nodes]


def only_node(graph, op_type: str):
    found = [n for n in graph.nodes if n.op_type == op_type]
    assert len(found) == 1, op_types(graph)
    return found[0]


# ---------------------------------------------------------------- models used by several tests

def mobilenet_v2_head(opset: int = 14):
    """Stem 3x3/2 + first block (no expansion) + stride-2 block + residual block + 1x1 conv."""
    b = ModelBuilder(seed=3, opset=opset)
    y = b.conv("x", 3, 16, 3, stride=2, act="relu6")
    y = b.block(y, 16, 8, expansion=1)
    y = b.block(y, 8, 12, expansion=6, stride=2)
    y = b.block(y, 12, 12, expansion=6)
    y = b.conv(y, 12, 40, 1, act="relu6")
    b.nodes[-1].output[0] = "out"
    return b.model({"x": (1, 3, 32, 32)}, {"out": 4}), {"x": (1, 3, 32, 32)}


# ---------------------------------------------------------------- blocks

def test_mobilenet_v2_head_becomes_three_blocks_and_a_conv():
    model, shapes = mobilenet_v2_head()
    graph = optimised_and_checked(model, shapes)
    assert op_types(graph) == ["InvertedResidual"] * 3 + ["FusedConv"]
    first, second, third = graph.nodes[:3]
    assert first.inputs[0] == "x"  # the stem is inside the first block
    assert (first.attrs["expand_kernel"], first.attrs["expand_stride"]) == (3, 2)
    assert first.attrs["expand_pads"] == [1, 1, 1, 1] and first.attrs["expand_activation"] == "clip"
    assert first.attrs["expand_activation_params"] == [0.0, 6.0]
    assert [n.attrs["residual"] for n in (first, second, third)] == [0, 0, 1]
    assert (second.attrs["expand_kernel"], second.attrs["dw_stride"]) == (1, 2)
    assert third.attrs["dw_kernel"] == 3 and third.attrs["dw_pads"] == [1, 1, 1, 1]
    assert not any(n.op_type in ("BatchNormalization", "Clip", "Add", "Conv") for n in graph.nodes)
    assert graph.nodes[-1].outputs == ["out"]


def test_stem_fusion_is_separately_switchable():
    model, shapes = mobilenet_v2_head()
    graph = optimised_and_checked(model, shapes, disabled={"fuse_stem"})
    assert op_types(graph) == ["FusedConv"] + ["InvertedResidual"] * 3 + ["FusedConv"]
    first_block = graph.nodes[1]
    assert first_block.inputs[1:3] == ["", ""] and first_block.attrs["expand_kernel"] == 0
    assert first_block.inputs[0] == graph.nodes[0].outputs[0]


def test_no_blocks_when_block_fusion_is_off():
    model, shapes = mobilenet_v2_head()
    graph = optimised_and_checked(model, shapes, disabled={"fuse_blocks", "fuse_add"})
    assert sorted(set(op_types(graph))) == ["Add", "FusedConv"]
    assert op_types(graph).count("FusedConv") == 1 + 2 + 3 + 3 + 1
    # with fuse_add on, each residual Add goes into the projection that feeds it (its 4th input)
    fused = optimised_and_checked(model, shapes, disabled={"fuse_blocks"})
    assert op_types(fused) == [t for t in op_types(graph) if t != "Add"]
    adds = op_types(graph).count("Add")
    assert adds > 0 and sum(len(n.inputs) == 4 for n in fused.nodes) == adds


def test_block_output_keeps_the_value_info_of_the_replaced_value():
    model, shapes = mobilenet_v2_head()
    graph = optimize(prepared(model, shapes))
    for node in graph.nodes:
        for name in node.inputs + node.outputs:
            if name:
                assert name in graph.value_info, name
    assert graph.value_info["out"].shape == (1, 40, 8, 8)
    assert graph.value_info[graph.nodes[0].outputs[0]].shape == (1, 8, 16, 16)


@pytest.mark.parametrize("act", ["relu", "hardswish", "relu6"])
@pytest.mark.parametrize("stride,cout", [(1, 8), (2, 8), (1, 12)])
def test_single_block_variants(act, stride, cout):
    b = ModelBuilder(seed=stride + cout)
    y = b.block("x", 8, cout, expansion=4, stride=stride, act=act)
    model = b.model({"x": (2, 8, 9, 9)}, {y: 4})
    graph = optimised_and_checked(model, {"x": (2, 8, 9, 9)})
    block = only_node(graph, "InvertedResidual")
    assert len(graph.nodes) == 1
    assert block.attrs["residual"] == int(stride == 1 and cout == 8)
    assert block.attrs["expand_activation"] == block.attrs["dw_activation"] == {"relu6": "clip"}.get(act, act)


def test_residual_add_with_the_block_input_second():
    b = ModelBuilder(seed=25)
    x = b.conv("x", 3, 8, 3, stride=2, act="relu")
    h = b.conv(x, 8, 16, 1, act="relu6")
    h = b.conv(h, 16, 16, 3, group=16, act="relu6")
    y = b.node("Add", [b.conv(h, 16, 8, 1), x])
    graph = optimised_and_checked(b.model({"x": (1, 3, 8, 8)}, {y: 4}), {"x": (1, 3, 8, 8)})
    assert op_types(graph) == ["FusedConv", "InvertedResidual"]
    assert graph.nodes[1].attrs["residual"] == 1 and graph.nodes[1].outputs == [y]


def test_five_by_five_depthwise_without_bias_gets_zero_biases():
    b = ModelBuilder(seed=5)
    h = b.conv("x", 4, 16, 1, bias=False, bn=False, act="relu")
    h = b.conv(h, 16, 16, 5, stride=2, group=16, bias=False, bn=False, act="relu")
    y = b.conv(h, 16, 6, 1, bias=False, bn=False)
    graph = optimised_and_checked(b.model({"x": (1, 4, 11, 11)}, {y: 4}), {"x": (1, 4, 11, 11)})
    block = only_node(graph, "InvertedResidual")
    assert block.attrs["dw_kernel"] == 5 and block.attrs["dw_pads"] == [2, 2, 2, 2]
    for bias_name, channels in ((block.inputs[2], 16), (block.inputs[4], 16), (block.inputs[6], 6)):
        np.testing.assert_array_equal(graph.initializers[bias_name], np.zeros(channels, np.float32))


def test_intermediate_used_twice_is_not_fused():
    b = ModelBuilder(seed=6)
    h = b.conv("x", 8, 32, 1, act="relu6")
    d = b.conv(h, 32, 32, 3, group=32, act="relu6")
    y = b.conv(d, 32, 8, 1)
    model = b.model({"x": (1, 8, 6, 6)}, {y: 4, d: 4})  # the depthwise output is also returned
    graph = optimised_and_checked(model, {"x": (1, 8, 6, 6)})
    assert op_types(graph) == ["FusedConv"] * 3


def test_expansion_with_a_second_consumer_leaves_an_expansion_less_block():
    b = ModelBuilder(seed=7)
    h = b.conv("x", 8, 32, 1, act="relu6")
    d = b.conv(h, 32, 32, 3, group=32, act="relu6")
    y = b.conv(d, 32, 32, 1)
    z = b.node("Add", [h, y])  # h feeds the depthwise and the add: the block starts at h
    graph = optimised_and_checked(b.model({"x": (1, 8, 6, 6)}, {z: 4}), {"x": (1, 8, 6, 6)})
    assert op_types(graph) == ["FusedConv", "InvertedResidual"]
    block = graph.nodes[1]
    assert block.inputs[0] == graph.nodes[0].outputs[0] and block.attrs["residual"] == 1
    assert block.attrs["expand_kernel"] == 0


def test_depthwise_padded_as_wide_as_its_kernel_is_not_a_block():
    b = ModelBuilder(seed=24)
    h = b.conv("x", 4, 8, 1, act="relu6")
    d = b.conv(h, 8, 8, 3, group=8, act="relu6", pads=[3, 1, 1, 1])
    y = b.conv(d, 8, 4, 1)
    graph = optimised_and_checked(b.model({"x": (1, 4, 6, 6)}, {y: 4}), {"x": (1, 4, 6, 6)})
    assert op_types(graph) == ["FusedConv"] * 3


def test_projection_with_activation_is_not_a_block():
    b = ModelBuilder(seed=8)
    d = b.conv("x", 8, 8, 3, group=8, act="relu")
    y = b.conv(d, 8, 16, 1, act="relu")  # MobileNetV1 style: pointwise conv is not linear
    graph = optimised_and_checked(b.model({"x": (1, 8, 6, 6)}, {y: 4}), {"x": (1, 8, 6, 6)})
    assert op_types(graph) == ["FusedConv", "FusedConv"]


@settings(max_examples=12, deadline=None)
@given(cin=st.sampled_from([3, 8]), expansion=st.sampled_from([1, 3]), k=st.sampled_from([3, 5]),
       stride=st.sampled_from([1, 2]), size=st.integers(5, 10), act=st.sampled_from(["relu6", "relu", "hardswish"]))
def test_random_blocks_match_onnxruntime(cin, expansion, k, stride, size, act):
    b = ModelBuilder(seed=cin * 100 + k * 10 + size)
    y = b.block("x", cin, cin, expansion=expansion, stride=stride, k=k, act=act)
    shapes = {"x": (1, cin, size, size)}
    graph = optimised_and_checked(b.model(shapes, {y: 4}), shapes)
    assert op_types(graph) == ["InvertedResidual"]


# ---------------------------------------------------------------- conv + activation

@pytest.mark.parametrize("act,kind,params", [
    ("relu", "relu", []), ("relu6", "clip", [0.0, 6.0]), ("hardswish", "hardswish", []),
    ("hardsigmoid", "hardsigmoid", [0.3, 0.4]), ("leakyrelu", "leakyrelu", [0.2]), ("sigmoid", "sigmoid", []),
    ("clip_max_only", "clip", [float(np.finfo(np.float32).min), 0.5]), ("", "", []),
])
def test_conv_activation_becomes_one_fused_conv(act, kind, params):
    b = ModelBuilder(seed=9)
    y = b.conv("x", 3, 5, 3, stride=2, act=act)
    graph = optimised_and_checked(b.model({"x": (1, 3, 7, 7)}, {y: 4}), {"x": (1, 3, 7, 7)})
    conv = only_node(graph, "FusedConv")
    assert len(graph.nodes) == 1 and conv.domain == "edgerun"
    assert conv.attrs["activation"] == kind
    assert conv.attrs["activation_params"] == pytest.approx(params)
    assert conv.attrs["kernel_shape"] == [3, 3] and conv.attrs["strides"] == [2, 2]


def test_clip_attribute_form_of_old_opsets():
    b = ModelBuilder(seed=10, opset=10)
    y = b.conv("x", 3, 4, 3, act="relu6")
    graph = optimised_and_checked(b.model({"x": (1, 3, 6, 6)}, {y: 4}), {"x": (1, 3, 6, 6)})
    assert only_node(graph, "FusedConv").attrs["activation_params"] == [0.0, 6.0]


@pytest.mark.parametrize("auto_pad,expected", [("SAME_UPPER", [0, 0, 1, 1]), ("SAME_LOWER", [1, 1, 0, 0]),
                                               ("VALID", [0, 0, 0, 0])])
def test_auto_pad_is_resolved_into_explicit_pads(auto_pad, expected):
    b = ModelBuilder(seed=11)
    y = b.conv("x", 2, 3, 2, stride=1, auto_pad=auto_pad, act="relu")
    graph = optimised_and_checked(b.model({"x": (1, 2, 5, 5)}, {y: 4}), {"x": (1, 2, 5, 5)})
    conv = only_node(graph, "FusedConv")
    assert conv.attrs["pads"] == expected and "auto_pad" not in conv.attrs


def test_activation_with_two_consumers_of_the_conv_output_stays_apart():
    b = ModelBuilder(seed=12)
    y = b.conv("x", 3, 4, 3, bn=False)
    r = b.activation(y, "relu")
    z = b.node("Add", [y, r])
    graph = optimised_and_checked(b.model({"x": (1, 3, 5, 5)}, {z: 4}), {"x": (1, 3, 5, 5)})
    assert op_types(graph) == ["FusedConv", "Relu", "Add"]
    assert graph.nodes[0].attrs["activation"] == ""


# ---------------------------------------------------------------- Pad into Conv

def padded_depthwise_block(opset: int, pad_value: float = 0.0, axes: bool = False):
    """Keras-style block: ZeroPadding2D (a Pad node) then a VALID stride-2 depthwise conv."""
    b = ModelBuilder(seed=23, opset=opset)
    h = b.conv("x", 4, 16, 1, act="relu6")
    if opset < 11:
        h = b.node("Pad", [h], pads=[0, 0, 0, 0, 0, 0, 1, 1], value=pad_value)
    elif axes:
        h = b.node("Pad", [h, b.const(np.array([0, 0, 1, 1], np.int64)), b.const(np.float32(pad_value)),
                           b.const(np.array([2, -1], np.int64))])
    else:
        h = b.node("Pad", [h, b.const(np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64)),
                           b.const(np.float32(pad_value))])
    h = b.conv(h, 16, 16, 3, stride=2, group=16, act="relu6", pads=[0, 0, 0, 0])
    y = b.conv(h, 16, 8, 1)
    return b.model({"x": (1, 4, 8, 8)}, {y: 4}), {"x": (1, 4, 8, 8)}


@pytest.mark.parametrize("opset,axes", [(10, False), (14, False), (18, True)])
def test_zero_pad_folds_into_the_depthwise_conv_of_a_block(opset, axes):
    model, shapes = padded_depthwise_block(opset, axes=axes)
    graph = optimised_and_checked(model, shapes)
    block = only_node(graph, "InvertedResidual")
    assert len(graph.nodes) == 1 and block.attrs["dw_pads"] == [0, 0, 1, 1]


def test_nonzero_pad_is_kept_and_pad_fusion_is_switchable():
    model, shapes = padded_depthwise_block(14, pad_value=0.5)
    assert "Pad" in op_types(optimised_and_checked(model, shapes))
    model, shapes = padded_depthwise_block(14)
    graph = optimised_and_checked(model, shapes, disabled={"fuse_pad"})
    assert op_types(graph) == ["FusedConv", "Pad", "InvertedResidual"]  # a block without expansion
    assert graph.nodes[2].attrs["expand_kernel"] == 0 and graph.nodes[2].attrs["dw_pads"] == [0, 0, 0, 0]


# ---------------------------------------------------------------- BatchNormalization folding

def test_batchnorm_folds_into_conv_with_new_arrays():
    b = ModelBuilder(seed=13)
    y = b.conv("x", 3, 4, 3, bias=False)
    model = b.model({"x": (1, 3, 5, 5)}, {y: 4})
    graph = optimised_and_checked(model, {"x": (1, 3, 5, 5)}, disabled={"fuse_activation"})
    conv = only_node(graph, "Conv")
    assert len(graph.nodes) == 1 and conv.outputs == [y]
    original = prepared(model, {"x": (1, 3, 5, 5)})
    assert conv.inputs[1] not in original.initializers and conv.inputs[2] not in original.initializers
    assert not graph.initializers[conv.inputs[1]].flags.writeable


def test_batchnorm_after_a_shared_conv_output_is_kept():
    b = ModelBuilder(seed=14)
    y = b.conv("x", 3, 4, 3, bn=False)
    n = b.batch_norm(y, 4)
    z = b.node("Add", [y, n])
    graph = optimised_and_checked(b.model({"x": (1, 3, 5, 5)}, {z: 4}), {"x": (1, 3, 5, 5)})
    assert op_types(graph) == ["FusedConv", "BatchNormalization", "Add"]


# ---------------------------------------------------------------- declutter

def test_identity_and_dropout_are_removed_and_output_keeps_its_name():
    b = ModelBuilder(seed=15)
    y = b.conv("x", 3, 8, 3, act="relu6")
    y = b.node("Dropout", [y])
    y = b.block(y, 8, 8, expansion=2)
    y = b.node("Identity", [y])
    model = b.model({"x": (1, 3, 6, 6)}, {y: 4})
    graph = optimised_and_checked(model, {"x": (1, 3, 6, 6)})
    assert op_types(graph) == ["FusedConv", "InvertedResidual"]
    assert graph.nodes[-1].outputs == [y] and graph.output_names() == [y]


def test_dropout_with_an_unused_mask_output_and_training_mode_false():
    b = ModelBuilder(seed=16)
    y = b.conv("x", 3, 4, 3, act="relu")
    out, _mask = b.node("Dropout", [y, b.const(np.float32(0.3)), b.const(np.bool_(False))], n_outputs=2)
    graph = optimised_and_checked(b.model({"x": (1, 3, 5, 5)}, {out: 4}), {"x": (1, 3, 5, 5)})
    assert op_types(graph) == ["FusedConv"] and graph.nodes[0].outputs == [out]


def test_chain_of_identities_into_an_output():
    b = ModelBuilder(seed=26)
    y = b.conv("x", 3, 4, 3, act="relu")
    for _ in range(3):
        y = b.node("Identity", [y])
    graph = optimised_and_checked(b.model({"x": (1, 3, 5, 5)}, {y: 4}), {"x": (1, 3, 5, 5)})
    assert op_types(graph) == ["FusedConv"] and graph.nodes[0].outputs == [y]


def test_nodes_whose_results_nobody_uses_are_removed():
    b = ModelBuilder(seed=27)
    y = b.conv("x", 3, 4, 3, act="relu")
    b.node("Sigmoid", [b.node("Tanh", [y])])  # a dead branch
    graph = optimised_and_checked(b.model({"x": (1, 3, 5, 5)}, {y: 4}), {"x": (1, 3, 5, 5)})
    assert op_types(graph) == ["FusedConv"]


@pytest.mark.parametrize("opset", [7, 14])
def test_a_sum_of_two_is_an_add_that_fuses_into_the_conv_and_a_sum_of_one_goes(opset):
    """ResNet50 of the onnx wheel adds its residuals with Sum: as an Add it goes into the conv feeding it."""
    b = ModelBuilder(seed=28, opset=opset)
    y = b.conv("x", 3, 4, 3, act="relu")
    z = b.conv(y, 4, 4, 3)
    out = b.node("Relu", [b.node("Sum", [b.node("Sum", [z]), y])])
    graph = optimised_and_checked(b.model({"x": (1, 3, 6, 6)}, {out: 4}), {"x": (1, 3, 6, 6)})
    assert op_types(graph) == ["FusedConv", "FusedConv"] and len(graph.nodes[1].inputs) == 4


def test_identity_between_graph_input_and_output_is_kept():
    b = ModelBuilder(seed=17)
    y = b.node("Identity", ["x"])
    graph = optimised_and_checked(b.model({"x": (1, 2)}, {y: 2}), {"x": (1, 2)})
    assert op_types(graph) == ["Identity"]


def test_identity_feeding_an_output_and_another_node():
    b = ModelBuilder(seed=18)
    y = b.conv("x", 3, 4, 3, act="relu")
    i = b.node("Identity", [y])
    z = b.node("Relu", [i])
    graph = optimised_and_checked(b.model({"x": (1, 3, 5, 5)}, {i: 4, z: 4}), {"x": (1, 3, 5, 5)})
    assert op_types(graph) == ["FusedConv", "Relu"]
    assert graph.nodes[0].outputs == [i] and graph.nodes[1].inputs == [i]


def test_identity_output_whose_source_has_another_consumer():
    b = ModelBuilder(seed=22)
    y = b.conv("x", 3, 4, 3, act="relu")
    i = b.node("Identity", [y])
    z = b.node("Sigmoid", [y])
    graph = optimised_and_checked(b.model({"x": (1, 3, 5, 5)}, {i: 4, z: 4}), {"x": (1, 3, 5, 5)})
    assert op_types(graph) == ["FusedConv", "Sigmoid"]
    assert graph.nodes[0].outputs == [i] and graph.nodes[1].inputs == [i]
    assert y not in graph.value_info and graph.value_info[i].shape == (1, 4, 5, 5)


# ---------------------------------------------------------------- constant folding

def shape_chain_model():
    """conv -> Shape -> Gather(0) -> Unsqueeze -> Concat([n, -1]) -> Reshape: a flatten."""
    b = ModelBuilder(seed=19)
    y = b.conv("x", 3, 4, 3, act="relu")
    shape = b.node("Shape", [y])
    batch = b.node("Gather", [shape, b.const(np.int64(0))], axis=0)
    batch = b.node("Unsqueeze", [batch, b.const(np.array([0], np.int64))])
    target = b.node("Concat", [batch, b.const(np.array([-1], np.int64))], axis=0)
    flat = b.node("Reshape", [y, target])
    return b.model({"x": (2, 3, 5, 5)}, {flat: 2}), {"x": (2, 3, 5, 5)}


def test_shape_chain_folds_into_a_constant_reshape_target():
    model, shapes = shape_chain_model()
    graph = optimised_and_checked(model, shapes)
    assert op_types(graph) == ["FusedConv", "Reshape"]
    target = graph.initializers[graph.nodes[1].inputs[1]]
    np.testing.assert_array_equal(target, [2, -1])
    assert graph.value_info[graph.nodes[1].inputs[1]].value is target


def test_constant_subgraph_over_initializers_is_evaluated():
    b = ModelBuilder(seed=20)
    scale = b.node("Mul", [b.const(np.full((1, 4, 1, 1), 2.0, np.float32)),
                           b.const(np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1))])
    y = b.node("Mul", [b.conv("x", 3, 4, 3, act="relu"), scale])
    graph = optimised_and_checked(b.model({"x": (1, 3, 5, 5)}, {y: 4}), {"x": (1, 3, 5, 5)})
    assert op_types(graph) == ["FusedConv", "Mul"]
    np.testing.assert_array_equal(graph.initializers[graph.nodes[1].inputs[1]].ravel(), [0, 2, 4, 6])


def test_folding_is_bounded_by_the_memory_ceiling():
    """A constant output is folded into a weight whatever its size, but never past edgerun's ceiling."""
    b = ModelBuilder(seed=21)
    big = b.node("ConstantOfShape", [b.const(np.array([64, 4, 5, 5], np.int64))],
                 value=numpy_helper.from_array(np.array([1.5], np.float32)))
    y = b.node("Add", [b.conv("x", 3, 4, 3, act="relu"), big])
    model = b.model({"x": (1, 3, 5, 5)}, {y: 4})
    graph = optimised_and_checked(model, {"x": (1, 3, 5, 5)})
    assert op_types(graph) == ["FusedConv", "Add"]
    limits.set_max_bytes(10_000)   # the constant takes 64*4*5*5*4 = 25,600 bytes
    try:
        with pytest.raises(ResourceLimitError, match=r"ConstantOfShape.*25,600 bytes"):
            optimised_and_checked(model, {"x": (1, 3, 5, 5)})
    finally:
        limits.set_max_bytes(None)


# ---------------------------------------------------------------- driver

@pytest.mark.parametrize("build", [mobilenet_v2_head, shape_chain_model])
def test_value_info_after_passes_equals_fresh_shape_inference(build):
    model, shapes = build()
    graph = optimize(prepared(model, shapes))
    fresh = infer_shapes(graph, shapes)
    assert set(fresh.value_info) == set(graph.value_info)
    for name, info in fresh.value_info.items():
        kept = graph.value_info[name]
        assert (tuple(kept.shape), np.dtype(kept.dtype)) == (tuple(info.shape), np.dtype(info.dtype)), name


def graph_fingerprint(graph):
    nodes = [(n.op_type, n.domain, n.name, tuple(n.inputs), tuple(n.outputs), repr(sorted(n.attrs.items())))
             for n in graph.nodes]
    arrays = {k: (id(v), v.copy(), v.flags.writeable) for k, v in graph.initializers.items()}
    return nodes, arrays, dict(graph.value_info), list(graph.inputs), list(graph.outputs)


def test_optimize_leaves_the_input_graph_and_its_arrays_unchanged():
    model, shapes = mobilenet_v2_head()
    graph = prepared(model, shapes)
    nodes, arrays, value_info, inputs, outputs = graph_fingerprint(graph)
    optimised = optimize(graph)
    assert op_types(optimised) != [n[0] for n in nodes]
    after_nodes, after_arrays, after_value_info, after_inputs, after_outputs = graph_fingerprint(graph)
    assert after_nodes == nodes and after_inputs == inputs and after_outputs == outputs
    assert after_value_info.keys() == value_info.keys()
    assert all(after_value_info[k] is value_info[k] for k in value_info)
    assert arrays.keys() == after_arrays.keys()
    for name, (identity, copy, writeable) in arrays.items():
        assert after_arrays[name][0] == identity and after_arrays[name][2] == writeable
        np.testing.assert_array_equal(after_arrays[name][1], copy)


def test_all_passes_off_returns_the_same_nodes():
    model, shapes = mobilenet_v2_head()
    graph = prepared(model, shapes)
    untouched = optimize(graph, disabled={"all"})
    assert graph_fingerprint(untouched)[0] == graph_fingerprint(graph)[0]


def test_passes_are_switched_off_by_environment(monkeypatch):
    model, shapes = mobilenet_v2_head()
    graph = prepared(model, shapes)
    monkeypatch.setenv(ENV_VAR, "fuse_blocks, fuse_stem")
    assert "InvertedResidual" not in op_types(optimize(graph))
    monkeypatch.setenv(ENV_VAR, "all")
    assert op_types(optimize(graph)) == op_types(graph)
    monkeypatch.setenv(ENV_VAR, "fuse_stem")
    assert op_types(optimize(graph, disabled={"bnfold"})).count("BatchNormalization") == 10


def test_disabled_passes_accepts_a_comma_separated_string(monkeypatch):
    assert disabled_passes("fuse_stem, bnfold") == {"fuse_stem", "bnfold"}
    assert disabled_passes(["declutter"]) == {"declutter"}
    assert disabled_passes("all") == set(PASS_NAMES)
    monkeypatch.setenv(ENV_VAR, "constfold")
    assert disabled_passes({"fuse_pad"}) == {"constfold", "fuse_pad"}


def test_unknown_pass_name_is_an_edgerun_error(monkeypatch):
    model, shapes = mobilenet_v2_head()
    graph = prepared(model, shapes)
    with pytest.raises(UnknownPassError, match="no_such_pass"):
        optimize(graph, disabled={"no_such_pass"})
    monkeypatch.setenv(ENV_VAR, "typo")
    with pytest.raises(EdgerunError, match="typo"):
        optimize(graph)


@pytest.mark.parametrize("name", PASS_NAMES)
def test_each_pass_off_alone_still_matches_onnxruntime(name):
    model, shapes = mobilenet_v2_head()
    optimised_and_checked(model, shapes, disabled={name})


# ---------------------------------------------------------------- a whole network

def test_zoo_mobilenet_v2_becomes_seventeen_blocks():
    from edgerun.zoo.mobilenet_v2 import mobilenet_v2

    model = mobilenet_v2(width=0.35, resolution=64)
    shapes = {"input": (1, 3, 64, 64)}
    graph = optimised_and_checked(model, shapes)
    blocks = [n for n in graph.nodes if n.op_type == "InvertedResidual"]
    assert len(blocks) == 17  # Table 2: 1 + 2 + 3 + 4 + 3 + 3 + 1
    assert [b.attrs["expand_kernel"] for b in blocks] == [3] + [1] * 16
    assert sum(b.attrs["residual"] for b in blocks) == 10
    assert blocks[0].inputs[0] == "input"
    assert op_types(graph).count("FusedConv") == 1  # the last 1x1 conv to 1280 channels
    assert not any(n.op_type in ("Conv", "BatchNormalization", "Clip", "Dropout") for n in graph.nodes)
