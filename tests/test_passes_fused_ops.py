"""The fused ops the passes create (edgerun.ops.fused), checked against onnxruntime on the
equivalent chains of standard ONNX ops, plus their shape functions and error messages."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerun import ops
from edgerun.errors import InvalidModelError
from edgerun.ir import Node, TensorInfo

OPSET = 14
ONNX_ACTIVATIONS = {
    "relu": lambda p: ("Relu", {}), "hardswish": lambda p: ("HardSwish", {}),
    "sigmoid": lambda p: ("Sigmoid", {}), "leakyrelu": lambda p: ("LeakyRelu", {"alpha": p[0]}),
    "hardsigmoid": lambda p: ("HardSigmoid", {"alpha": p[0], "beta": p[1]}),
    "elu": lambda p: ("Elu", {"alpha": p[0]}),
}


class Chain:
    """An ONNX model made of convs and activations applied one after the other."""

    def __init__(self):
        self.nodes, self.initializers, self.last = [], [], "x"

    def _const(self, array) -> str:
        name = f"k{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def _then(self, op_type, extra_inputs=(), **attrs):
        output = f"v{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, [self.last, *extra_inputs], [output], **attrs))
        self.last = output

    def conv(self, w, b, strides, pads, dilations, group):
        inputs = [self._const(w)] + ([self._const(b)] if b is not None else [])
        self._then("Conv", inputs, strides=strides, pads=pads, dilations=dilations, group=group)

    def activation(self, kind, params):
        if kind == "":
            return
        if kind == "clip":
            self._then("Clip", [self._const(np.float32(params[0])), self._const(np.float32(params[1]))])
            return
        op_type, attrs = ONNX_ACTIVATIONS[kind](params)
        self._then(op_type, **attrs)

    def add_input(self):
        self._then("Add", ["x"])

    def run(self, x):
        graph = helper.make_graph(self.nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                                  [helper.make_tensor_value_info(self.last, TensorProto.FLOAT, None)],
                                  self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]


def assert_relatively_close(actual, expected):
    assert actual.shape == expected.shape
    scale = float(np.max(np.abs(expected)))
    assert float(np.max(np.abs(actual - expected))) <= 1e-4 * scale


def fused_op(op_type):
    return ops.lookup(Node(op_type, [], [], domain="edgerun"), OPSET)


def infer_and_compute(node, arrays):
    op = fused_op(node.op_type)
    infos = [None if a is None else TensorInfo(a.shape, a.dtype) for a in arrays]
    inferred = op.infer(node, infos, OPSET)[0]
    (result,) = op.compute(node, arrays, OPSET)
    assert inferred.shape == result.shape and inferred.dtype == result.dtype
    return result


rng = np.random.default_rng(42)


def normal(*shape, scale=1.0):
    return (rng.normal(size=shape) * scale).astype(np.float32)


# ---------------------------------------------------------------- FusedConv

@pytest.mark.parametrize("kind,params", [("", []), ("relu", []), ("clip", [0.0, 6.0]), ("hardswish", []),
                                         ("hardsigmoid", [0.25, 0.5]), ("leakyrelu", [0.1]), ("sigmoid", []),
                                         ("elu", [0.7])])
@pytest.mark.parametrize("geometry", [
    dict(k=3, strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 1], group=1),
    dict(k=3, strides=[1, 1], pads=[2, 2, 2, 2], dilations=[2, 2], group=2),
    dict(k=3, strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1], group=4),
])
def test_fused_conv_equals_conv_then_activation(kind, params, geometry):
    geometry = dict(geometry)
    cin = 4
    cout = 4 if geometry["group"] == 4 else 6
    k = geometry.pop("k")
    w, b = normal(cout, cin // geometry["group"], k, k, scale=0.4), normal(cout)
    x = normal(2, cin, 9, 8)
    node = Node("FusedConv", ["x", "w", "b"], ["y"], dict(kernel_shape=[k, k], activation=kind,
                                                          activation_params=params, **geometry),
                name="fc", domain="edgerun")
    chain = Chain()
    chain.conv(w, b, **geometry)
    chain.activation(kind, params)
    assert_relatively_close(infer_and_compute(node, [x, w, b]), chain.run(x))


def test_fused_conv_one_dimensional_without_bias():
    w, x = normal(3, 2, 5), normal(1, 2, 12)
    node = Node("FusedConv", ["x", "w"], ["y"], dict(kernel_shape=[5], strides=[2], pads=[2, 1], dilations=[1],
                                                      group=1, activation="relu", activation_params=[]),
                name="fc1d", domain="edgerun")
    chain = Chain()
    chain.conv(w, None, strides=[2], pads=[2, 1], dilations=[1], group=1)
    chain.activation("relu", [])
    assert_relatively_close(infer_and_compute(node, [x, w]), chain.run(x))


@pytest.mark.parametrize("attrs,inputs,message", [
    (dict(group=3), None, "channels"),
    (dict(activation="swish"), None, "swish"),
    (dict(activation="clip", activation_params=[0.0]), None, "clip"),
    (dict(pads=[1, 1]), None, "pads"),
    (dict(strides=[0, 1]), None, "strides"),
    ({}, "short bias", "bias"),
])
def test_fused_conv_errors_name_the_node(attrs, inputs, message):
    w, x = normal(6, 4, 3, 3), normal(1, 4, 5, 5)
    b = normal(5) if inputs == "short bias" else normal(6)
    base = dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1,
                activation="", activation_params=[])
    node = Node("FusedConv", ["x", "w", "b"], ["y"], {**base, **attrs}, name="bad_conv", domain="edgerun")
    op = fused_op("FusedConv")
    with pytest.raises(InvalidModelError, match=rf"bad_conv(.|\n)*{message}"):
        op.compute(node, [x, w, b], OPSET)
    with pytest.raises(InvalidModelError, match="bad_conv"):
        op.infer(node, [TensorInfo(a.shape, a.dtype) for a in (x, w, b)], OPSET)


# ---------------------------------------------------------------- InvertedResidual

def block_node(expand_kernel, expand_stride, expand_pads, dw_kernel, dw_stride, dw_pads, residual,
               expand_act=("clip", [0.0, 6.0]), dw_act=("clip", [0.0, 6.0]), has_expansion=True):
    attrs = dict(expand_kernel=expand_kernel if has_expansion else 0, expand_stride=expand_stride,
                 expand_pads=expand_pads, expand_activation=expand_act[0], expand_activation_params=expand_act[1],
                 dw_kernel=dw_kernel, dw_stride=dw_stride, dw_pads=dw_pads, dw_activation=dw_act[0],
                 dw_activation_params=dw_act[1], residual=int(residual))
    inputs = ["x", "we", "be"] if has_expansion else ["x", "", ""]
    return Node("InvertedResidual", inputs + ["wd", "bd", "wp", "bp"], ["y"], attrs, name="ir", domain="edgerun")


@pytest.mark.parametrize("case", [
    # (Cin, E, Cout, ke, se, pe, kd, sd, pd, residual, has_expansion, acts)
    (8, 24, 8, 1, 1, [0, 0, 0, 0], 3, 1, [1, 1, 1, 1], True, True, ("clip", "clip")),
    (8, 24, 12, 1, 1, [0, 0, 0, 0], 3, 2, [1, 1, 1, 1], False, True, ("relu", "hardswish")),
    (8, 8, 4, 0, 1, [0, 0, 0, 0], 3, 1, [1, 1, 1, 1], False, False, ("", "clip")),
    (3, 16, 8, 3, 2, [1, 1, 1, 1], 3, 1, [1, 1, 1, 1], False, True, ("clip", "clip")),   # stem fused in
    (4, 12, 6, 3, 2, [0, 1, 1, 0], 5, 2, [2, 1, 2, 2], False, True, ("leakyrelu", "")),  # asymmetric pads
    (8, 24, 8, 1, 1, [0, 0, 0, 0], 3, 1, [1, 1, 1, 1], True, True, ("elu", "elu")),
])
def test_inverted_residual_equals_its_unfused_chain(case):
    cin, hidden, cout, ke, se, pe, kd, sd, pd, residual, has_expansion, (act_e, act_d) = case
    params = {"clip": [0.0, 6.0], "leakyrelu": [0.1], "": [], "relu": [], "hardswish": [], "elu": [0.8]}
    x = normal(2, cin, 11, 10)
    we, be = normal(hidden, cin, max(ke, 1), max(ke, 1), scale=0.5), normal(hidden)
    wd, bd = normal(hidden, 1, kd, kd, scale=0.5), normal(hidden)
    wp, bp = normal(cout, hidden, 1, 1, scale=0.3), normal(cout)
    node = block_node(ke, se, pe, kd, sd, pd, residual, (act_e, params[act_e]), (act_d, params[act_d]),
                      has_expansion)
    chain = Chain()
    if has_expansion:
        chain.conv(we, be, strides=[se, se], pads=pe, dilations=[1, 1], group=1)
        chain.activation(act_e, params[act_e])
    chain.conv(wd, bd, strides=[sd, sd], pads=pd, dilations=[1, 1], group=hidden)
    chain.activation(act_d, params[act_d])
    chain.conv(wp, bp, strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1)
    if residual:
        chain.add_input()
    arrays = [x, we, be, wd, bd, wp, bp] if has_expansion else [x, None, None, wd, bd, wp, bp]
    assert_relatively_close(infer_and_compute(node, arrays), chain.run(x))


def valid_block_arrays():
    return [normal(1, 8, 6, 6), normal(16, 8, 1, 1), normal(16), normal(16, 1, 3, 3), normal(16),
            normal(8, 16, 1, 1), normal(8)]


@pytest.mark.parametrize("change,message", [
    (lambda node, a: a.__setitem__(3, normal(16, 2, 3, 3)), "depthwise weight"),
    (lambda node, a: a.__setitem__(5, normal(8, 12, 1, 1)), "projection weight"),
    (lambda node, a: a.__setitem__(1, normal(16, 8, 3, 3)), "expansion weight"),
    (lambda node, a: a.__setitem__(2, None), "both given"),
    (lambda node, a: a.__setitem__(6, normal(7)), "projection bias"),
    (lambda node, a: node.attrs.update(dw_stride=2), "residual"),
    (lambda node, a: node.attrs.update(dw_activation="gelu"), "gelu"),
    (lambda node, a: node.attrs.update(dw_pads=[1, 1]), "dw_pads"),
    (lambda node, a: node.attrs.update(dw_kernel=0), "dw_kernel"),
])
def test_inverted_residual_errors_name_the_node(change, message):
    node = block_node(1, 1, [0, 0, 0, 0], 3, 1, [1, 1, 1, 1], residual=True)
    arrays = valid_block_arrays()
    infer_and_compute(node, arrays)  # valid as built
    change(node, arrays)
    op = fused_op("InvertedResidual")
    with pytest.raises(InvalidModelError, match=rf"'ir'(.|\n)*{message}"):
        op.compute(node, arrays, OPSET)
    infos = [None if a is None else TensorInfo(a.shape, a.dtype) for a in arrays]
    with pytest.raises(InvalidModelError, match="'ir'"):
        op.infer(node, infos, OPSET)
