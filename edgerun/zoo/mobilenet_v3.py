"""A MobileNetV3-Small-like network (Howard et al. 2019, Table 2): inverted residuals with 3x3/5x5
depthwise kernels, HardSwish, and squeeze-excitation (GlobalAveragePool -> 1x1 conv -> Relu ->
1x1 conv -> HardSigmoid -> Mul). HardSwish is an ONNX operator from opset 14, so this model is
emitted at opset 14 (the other zoo models use 13)."""
from __future__ import annotations

from edgerun.zoo.graph import GraphBuilder, RandomParameters, check_batch, check_resolution, make_divisible

OPSET = 14
STEM_CHANNELS = 16
# (kernel, expanded channels, output channels, squeeze-excitation, activation, stride)
BOTTLENECKS = [
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hardswish", 2),
    (5, 240, 40, True, "hardswish", 1),
    (5, 240, 40, True, "hardswish", 1),
    (5, 120, 48, True, "hardswish", 1),
    (5, 144, 48, True, "hardswish", 1),
    (5, 288, 96, True, "hardswish", 2),
    (5, 576, 96, True, "hardswish", 1),
    (5, 576, 96, True, "hardswish", 1),
]
LAST_CONV_CHANNELS = 576
HEAD_CHANNELS = 1024
DROPOUT_RATIO = 0.2
# Weight gains that keep activations O(1) with random weights (tuned by measuring RMS activations:
# HardSwish passes less energy than ReLU near 0 and squeeze-excitation scales by about 0.5 at
# random init, so the HardSwish layers and the projections get more than He's gain).
PROJECTION_GAIN = 1.5
GAINS = {"relu": 2.0 ** 0.5, "hardswish": 1.5, "": 1.0}


def _conv_bn_act(g, x, prefix, cin, cout, kernel, stride=1, group=1, activation="hardswish", gain=None):
    gain = GAINS[activation] if gain is None else gain
    y = g.conv(x, f"{prefix}.0", cin, cout, kernel, stride, group, gain=gain)
    y = g.batchnorm(y, f"{prefix}.1", cout)
    return g.activation(y, activation, f"{prefix}.2")


def _squeeze_excitation(g, x, prefix, channels):
    squeeze = make_divisible(channels // 4)
    s = g.node("GlobalAveragePool", [x], f"{prefix}.avgpool")
    s = g.conv(s, f"{prefix}.fc1", channels, squeeze, 1, bias=True)
    s = g.relu(s, f"{prefix}.relu")
    s = g.conv(s, f"{prefix}.fc2", squeeze, channels, 1, bias=True, gain=1.0)
    s = g.hardsigmoid(s, f"{prefix}.scale_activation")
    return g.node("Mul", [x, s], prefix)


def _bottleneck(g, x, prefix, cin, kernel, expanded, cout, use_se, activation, stride):
    y, layer = x, 0
    if expanded != cin:
        y = _conv_bn_act(g, y, f"{prefix}.block.{layer}", cin, expanded, 1, activation=activation)
        layer += 1
    y = _conv_bn_act(g, y, f"{prefix}.block.{layer}", expanded, expanded, kernel, stride, group=expanded,
                     activation=activation)
    layer += 1
    if use_se:
        y = _squeeze_excitation(g, y, f"{prefix}.block.{layer}", expanded)
        layer += 1
    projection_gain = PROJECTION_GAIN
    y = _conv_bn_act(g, y, f"{prefix}.block.{layer}", expanded, cout, 1, activation="", gain=projection_gain)
    if stride == 1 and cin == cout:
        y = g.add(x, y, prefix)
    return y


def mobilenet_v3_small_like(resolution=224, seed=0, batch="batch"):
    """MobileNetV3-Small layout at width 1.0 with seeded random weights (opset 14)."""
    resolution = check_resolution(resolution)
    batch = check_batch(batch)
    g = GraphBuilder(RandomParameters(seed))
    x = _conv_bn_act(g, "input", "features.0", 3, STEM_CHANNELS, 3, stride=2)
    channels = STEM_CHANNELS
    for index, (kernel, expanded, cout, use_se, activation, stride) in enumerate(BOTTLENECKS, start=1):
        x = _bottleneck(g, x, f"features.{index}", channels, kernel, expanded, cout, use_se, activation, stride)
        channels = cout
    x = _conv_bn_act(g, x, f"features.{len(BOTTLENECKS) + 1}", channels, LAST_CONV_CHANNELS, 1)
    x = g.global_pool_flatten(x, "pool")
    x = g.linear(x, "classifier.0", LAST_CONV_CHANNELS, HEAD_CHANNELS, gain=GAINS["hardswish"])
    x = g.hardswish(x, "classifier.1")
    x = g.dropout(x, "classifier.2", DROPOUT_RATIO)
    g.linear(x, "classifier.3", HEAD_CHANNELS, 1000, gain=GAINS["hardswish"])
    return g.model(f"mobilenet_v3_small_like_{resolution}_seed{seed}", 3, resolution, batch, opset=OPSET)
