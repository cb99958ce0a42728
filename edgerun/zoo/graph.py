"""A small helper to emit ONNX graphs the way an exporter does before optimisation
(Conv + BatchNormalization + activation, Clip bounds as initializers), plus the sources
of parameters: seeded random (He-style) or a PyTorch state dict."""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgerun.errors import ModelLoadError

DEFAULT_OPSET = 13
BN_EPSILON = 1e-5
NUM_CLASSES = 1000
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class RandomParameters:
    """Seeded random parameters scaled so that activations stay O(1) through a network.

    Convolutions and linear layers use N(0, gain^2 / fan_in) (He init with gain sqrt(2)
    before a ReLU-like activation, 1 before a linear one). Batch norms get scales near 1,
    small shifts and running statistics near (0, 1), so they are close to the identity
    but not exactly (the folding pass must get them right)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def weight(self, name, shape, fan_in, gain):
        std = gain / math.sqrt(fan_in)
        return self.rng.normal(0.0, std, size=shape).astype(np.float32)

    def bias(self, name, shape):
        return self.rng.normal(0.0, 0.02, size=shape).astype(np.float32)

    def batchnorm(self, prefix, channels):
        scale = self.rng.uniform(0.8, 1.2, channels)
        shift = self.rng.normal(0.0, 0.05, channels)
        mean = self.rng.normal(0.0, 0.05, channels)
        var = self.rng.uniform(0.8, 1.25, channels)
        return [a.astype(np.float32) for a in (scale, shift, mean, var)]


class StateDictParameters:
    """Parameters looked up by their PyTorch names in a state dict; shapes are checked."""

    def __init__(self, state_dict, source):
        self.state_dict = state_dict
        self.source = source

    def _get(self, key, shape):
        if key not in self.state_dict:
            raise ModelLoadError(f"{self.source}: missing parameter {key!r}")
        value = self.state_dict[key]
        if tuple(value.shape) != tuple(shape):
            raise ModelLoadError(f"{self.source}: parameter {key!r} has shape {tuple(value.shape)}, "
                                 f"the model needs {tuple(shape)}")
        if value.dtype != np.float32:
            raise ModelLoadError(f"{self.source}: parameter {key!r} is {value.dtype}, expected float32")
        return value

    def weight(self, name, shape, fan_in, gain):
        return self._get(name, shape)

    def bias(self, name, shape):
        return self._get(name, shape)

    def batchnorm(self, prefix, channels):
        return [self._get(f"{prefix}.{field}", (channels,))
                for field in ("weight", "bias", "running_mean", "running_var")]


class GraphBuilder:
    """Accumulates nodes and initializers; each layer method returns its output tensor name."""

    def __init__(self, params):
        self.params = params
        self.nodes = []
        self.initializers = {}
        self._shared = {}

    # ------------------------------------------------------------------ plumbing
    def add_initializer(self, name, array):
        if name in self.initializers:
            raise ValueError(f"duplicate initializer {name!r}")
        self.initializers[name] = numpy_helper.from_array(np.asarray(array), name)
        return name

    def shared_constant(self, name, array):
        """An initializer used by many nodes (Clip bounds, reshape targets)."""
        if name not in self._shared:
            self._shared[name] = self.add_initializer(name, array)
        return name

    def node(self, op_type, inputs, scope, **attrs):
        name = f"{scope}/{op_type}"
        output = f"{name}_output"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output

    # ------------------------------------------------------------------ layers
    def conv(self, x, prefix, cin, cout, kernel, stride=1, group=1, bias=False, gain=math.sqrt(2.0),
             dilation=1, pads=None):
        """`pads` [top, left, bottom, right] defaults to the symmetric dilation * (kernel // 2)."""
        shape = (cout, cin // group, kernel, kernel)
        weight = self.params.weight(f"{prefix}.weight", shape, fan_in=(cin // group) * kernel * kernel,
                                    gain=gain)
        inputs = [x, self.add_initializer(f"{prefix}.weight", weight)]
        if bias:
            inputs.append(self.add_initializer(f"{prefix}.bias", self.params.bias(f"{prefix}.bias", (cout,))))
        if pads is None:
            pads = [dilation * (kernel // 2)] * 4
        return self.node("Conv", inputs, prefix, kernel_shape=[kernel, kernel], strides=[stride, stride],
                         pads=list(pads), dilations=[dilation, dilation], group=group)

    def batchnorm(self, x, prefix, channels):
        names = [self.add_initializer(f"{prefix}.{field}", value) for field, value in
                 zip(("weight", "bias", "running_mean", "running_var"), self.params.batchnorm(prefix, channels))]
        return self.node("BatchNormalization", [x] + names, prefix, epsilon=BN_EPSILON, momentum=0.9)

    def relu(self, x, scope):
        return self.node("Relu", [x], scope)

    def relu6(self, x, scope):
        low = self.shared_constant("clip_min", np.array(0.0, dtype=np.float32))
        high = self.shared_constant("clip_max", np.array(6.0, dtype=np.float32))
        return self.node("Clip", [x, low, high], scope)

    def hardswish(self, x, scope):
        return self.node("HardSwish", [x], scope)

    def hardsigmoid(self, x, scope):
        return self.node("HardSigmoid", [x], scope, alpha=1.0 / 6.0, beta=0.5)

    def activation(self, x, kind, scope):
        if kind == "relu6":
            return self.relu6(x, scope)
        if kind == "relu":
            return self.relu(x, scope)
        if kind == "hardswish":
            return self.hardswish(x, scope)
        if kind == "":
            return x
        raise ValueError(f"unknown activation {kind!r}")

    def add(self, a, b, scope):
        return self.node("Add", [a, b], scope)

    def global_pool_flatten(self, x, scope):
        pooled = self.node("GlobalAveragePool", [x], scope)
        return self.node("Flatten", [pooled], scope, axis=1)

    def dropout(self, x, scope, ratio):
        ratio_name = self.shared_constant(f"{scope}.ratio", np.array(ratio, dtype=np.float32))
        return self.node("Dropout", [x, ratio_name], scope)

    def linear(self, x, prefix, cin, cout, gain=1.0):
        weight = self.params.weight(f"{prefix}.weight", (cout, cin), fan_in=cin, gain=gain)
        bias = self.params.bias(f"{prefix}.bias", (cout,))
        inputs = [x, self.add_initializer(f"{prefix}.weight", weight),
                  self.add_initializer(f"{prefix}.bias", bias)]
        return self.node("Gemm", inputs, prefix, alpha=1.0, beta=1.0, transB=1)

    # ------------------------------------------------------------------ model
    def model(self, name, channels, resolution, batch, opset=DEFAULT_OPSET, num_classes=NUM_CLASSES):
        """Wrap the nodes into a checked ModelProto: graph input INPUT_NAME, and the last node's
        output (nothing else consumes it, the nodes being in topological order) becomes "logits"."""
        self.nodes[-1].output[0] = OUTPUT_NAME
        return self.model_with_outputs(name, channels, resolution, batch, [(OUTPUT_NAME, [batch, num_classes])],
                                       opset)

    def model_with_outputs(self, name, channels, resolution, batch, outputs, opset=DEFAULT_OPSET):
        """Like `model`, with graph outputs [(tensor name, shape)] already produced by the nodes."""
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                           [batch, channels, resolution, resolution])],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, shape) for output, shape in outputs],
            initializer=list(self.initializers.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="edgerun.zoo", producer_version="0.1.0")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def tf_same_pads(size, kernel, stride, dilation=1):
    """[top, left, bottom, right] of TensorFlow's "SAME" padding for a square input of `size`:
    the output has ceil(size / stride) rows and the odd padding row goes at the bottom/right."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return [total // 2, total // 2, total - total // 2, total - total // 2]


def make_divisible(value, divisor=8, min_value=None):
    """Round a channel count to a multiple of `divisor`, never below 90% of `value`
    (the rounding torchvision and the MobileNet reference code use for width multipliers)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def check_width(width, low=0.1, high=2.0):
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not low <= width <= high:
        raise ValueError(f"width must be a number in [{low}, {high}] (the papers use 0.25..1.4), got {width!r}")
    return float(width)


def check_resolution(resolution, smallest=32):
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < smallest:
        raise ValueError(f"resolution must be an int >= {smallest}, got {resolution!r}")
    return resolution


def check_batch(batch):
    if isinstance(batch, bool) or not (isinstance(batch, str) and batch or isinstance(batch, int) and batch > 0):
        raise ValueError(f"batch must be a symbolic dimension name or a positive int, got {batch!r}")
    return batch
