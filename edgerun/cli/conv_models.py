"""Dense and grouped convolution networks for `edgerun calibrate` and tools/conv_bench.py, built the way an
exporter emits them (Conv + BatchNormalization + Relu + Add, seeded He-style random weights, opset 13):
ResNet18-like (torchvision's layout: 7x7/2 stem, 3x3/2 max pool, four stages of two basic blocks) and
RegNetX-400MF-like (grouped 3x3 convolutions of group width 16). Input "input" [1, 3, R, R], output
"logits" [1, 1000].
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    """Conv + BN + Relu graphs with seeded He-style weights."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.count = [], [], 0

    def _name(self, prefix):
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array, prefix="w"):
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def conv_bn(self, x, cin, cout, k, stride=1, group=1, relu=True):
        w = self.rng.normal(0, np.sqrt(2.0 / (cin // group * k * k)), (cout, cin // group, k, k))
        y = self._name("conv")
        self.nodes.append(helper.make_node("Conv", [x, self.const(w)], [y], kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[k // 2] * 4, group=group))
        bn = self._name("bn")
        params = [self.const(self.rng.uniform(0.5, 1.0, cout)), self.const(self.rng.normal(0, 0.05, cout)),
                  self.const(self.rng.normal(0, 0.05, cout)), self.const(self.rng.uniform(0.8, 1.2, cout))]
        self.nodes.append(helper.make_node("BatchNormalization", [y] + params, [bn]))
        return self.relu(bn) if relu else bn

    def relu(self, x):
        y = self._name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [y]))
        return y

    def add(self, a, b):
        y = self._name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [y]))
        return y

    def head(self, x, channels):
        pooled = self._name("gap")
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled]))
        flat = self._name("flat")
        self.nodes.append(helper.make_node("Flatten", [pooled], [flat]))
        w = self.rng.normal(0, np.sqrt(1.0 / channels), (1000, channels))
        self.nodes.append(helper.make_node("Gemm", [flat, self.const(w), self.const(np.zeros(1000))], ["logits"],
                                           transB=1))

    def model(self, name, resolution):
        graph = helper.make_graph(self.nodes, name,
                                  [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                 [1, 3, resolution, resolution])],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
                                  self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def resnet18_like(resolution=224, seed=0):
    """torchvision's ResNet18: 7x7/2 stem, 3x3/2 max pool, four stages of two basic blocks."""
    b = _Builder(seed)
    x = b.conv_bn("input", 3, 64, 7, 2)
    pooled = b._name("pool")
    b.nodes.append(helper.make_node("MaxPool", [x], [pooled], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, cin = pooled, 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            y = b.conv_bn(x, cin, cout, 3, stride)
            y = b.conv_bn(y, cout, cout, 3, 1, relu=False)
            skip = b.conv_bn(x, cin, cout, 1, stride, relu=False) if (stride != 1 or cin != cout) else x
            x, cin = b.relu(b.add(y, skip)), cout
    b.head(x, cin)
    return b.model("resnet18_like", resolution)


def regnetx_400mf_like(resolution=224, seed=0):
    """RegNetX-400MF's shape: 3x3/2 stem to 32, stages (width, depth) (32,1) (64,2) (160,7) (400,12), group
    width 16, bottleneck ratio 1: 1x1 -> grouped 3x3 (stride on the first block) -> 1x1, residual."""
    b = _Builder(seed)
    x, cin = b.conv_bn("input", 3, 32, 3, 2), 32
    for width, depth in ((32, 1), (64, 2), (160, 7), (400, 12)):
        for block in range(depth):
            stride = 2 if block == 0 else 1
            y = b.conv_bn(x, cin, width, 1)
            y = b.conv_bn(y, width, width, 3, stride, group=width // 16)
            y = b.conv_bn(y, width, width, 1, relu=False)
            skip = b.conv_bn(x, cin, width, 1, stride, relu=False) if (stride != 1 or cin != width) else x
            x, cin = b.relu(b.add(y, skip)), width
    b.head(x, cin)
    return b.model("regnetx_400mf_like", resolution)
