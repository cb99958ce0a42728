"""MobileNetV1 (Howard et al. 2017, Table 1): depthwise-separable conv-bn-relu layers."""
from __future__ import annotations

from edgerun.zoo.graph import (GraphBuilder, RandomParameters, check_batch, check_resolution, check_width,
                               make_divisible)

STEM_CHANNELS = 32
# (pointwise output channels, depthwise stride) of the 13 depthwise-separable layers. The paper's
# table prints stride 2 for the last depthwise layer, but its input is already 7x7 and the output
# stays 7x7: stride 1, as in every implementation.
SEPARABLE_LAYERS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


def _conv_bn_relu(g, x, prefix, cin, cout, kernel, stride=1, group=1):
    y = g.conv(x, f"{prefix}.conv", cin, cout, kernel, stride, group)
    y = g.batchnorm(y, f"{prefix}.bn", cout)
    return g.relu(y, f"{prefix}.relu")


def mobilenet_v1(width=1.0, resolution=224, seed=0, batch="batch"):
    """MobileNetV1 with width multiplier `width` (channels rounded to multiples of 8), random weights."""
    width = check_width(width)
    resolution = check_resolution(resolution)
    batch = check_batch(batch)
    g = GraphBuilder(RandomParameters(seed))
    channels = make_divisible(STEM_CHANNELS * width)
    x = _conv_bn_relu(g, "input", "features.0", 3, channels, 3, stride=2)
    for index, (cout, stride) in enumerate(SEPARABLE_LAYERS, start=1):
        cout = make_divisible(cout * width)
        x = _conv_bn_relu(g, x, f"features.{index}.dw", channels, channels, 3, stride, group=channels)
        x = _conv_bn_relu(g, x, f"features.{index}.pw", channels, cout, 1)
        channels = cout
    x = g.global_pool_flatten(x, "pool")
    g.linear(x, "classifier", channels, 1000)
    return g.model(f"mobilenet_v1_{width:g}_{resolution}_seed{seed}", 3, resolution, batch)
