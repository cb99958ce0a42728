"""Mobile DeepLabv3 (Sandler et al. 2018, Section 6.3), raw logits, seeded random weights.

The paper's chosen configuration (Table 7, "MNet V2*", OS 16, no ASPP, no multi-scale, no flip):
MobileNetV2 1.0 at output stride 16 (the last stride-2 layer runs at stride 1 and every later
depthwise conv at dilation 2, TensorFlow's atrous rule), the DeepLabv3 head built on the second last
feature map (the 320-channel output of the last block, not the 1280-channel 1x1 conv), and the
reduced head: no atrous spatial pyramid pooling, only a 1x1 conv branch and the image-level branch
(GlobalAveragePool -> 1x1 conv -> upsampled back), concatenated, projected by a 1x1 conv to 256 and
classified by a 1x1 conv to 21 PASCAL VOC classes.

Output: "logits" [batch, 21, S, S] at output stride 16 (S = 33 for 513x513): the raw head output
before the application's bilinear upsampling to the image size and argmax.
"""
from __future__ import annotations

import numpy as np

from edgerun.zoo.graph import GraphBuilder, RandomParameters, check_batch, check_resolution
from edgerun.zoo.mobilenet_v2 import STEM_CHANNELS, block_channels

OUTPUT_STRIDE = 16
HEAD_CHANNELS = 256
CLASSES = 21
PAPER = {"macs": 2.75e9}


def _conv_bn_act(g, x, prefix, cin, cout, kernel, stride=1, group=1, dilation=1, activation="relu6"):
    y = g.conv(x, f"{prefix}.0", cin, cout, kernel, stride, group, dilation=dilation,
               gain=1.0 if activation == "" else 2.0 ** 0.5)
    y = g.batchnorm(y, f"{prefix}.1", cout)
    return g.activation(y, activation, f"{prefix}.2")


def _inverted_residual(g, x, prefix, cin, cout, stride, expansion, dilation):
    hidden = int(round(cin * expansion))
    y, layer = x, 0
    if expansion != 1:
        y = _conv_bn_act(g, y, f"{prefix}.conv.{layer}", cin, hidden, 1)
        layer += 1
    y = _conv_bn_act(g, y, f"{prefix}.conv.{layer}", hidden, hidden, 3, stride, group=hidden, dilation=dilation)
    y = _conv_bn_act(g, y, f"{prefix}.conv.{layer + 1}", hidden, cout, 1, activation="")
    if stride == 1 and cin == cout:
        y = g.add(x, y, prefix)
    return y


def _atrous_backbone(g, resolution):
    """MobileNetV2 1.0 blocks at output stride 16: (320-channel features, their size)."""
    x = _conv_bn_act(g, "input", "features.0", 3, STEM_CHANNELS, 3, stride=2)
    size = (resolution - 1) // 2 + 1
    current_stride, rate, channels, index = 2, 1, STEM_CHANNELS, 1
    for t, c, n, s in block_channels(1.0):
        for i in range(n):
            stride = s if i == 0 else 1
            layer_rate = 1 if current_stride < OUTPUT_STRIDE else rate
            if stride > 1 and current_stride == OUTPUT_STRIDE:
                rate, stride = rate * stride, 1
            elif stride > 1:
                current_stride *= stride
                size = (size - 1) // stride + 1
            x = _inverted_residual(g, x, f"features.{index}", channels, c, stride, t, layer_rate)
            channels = c
            index += 1
    return x, channels, size


def mobile_deeplabv3(resolution=513, seed=0, batch="batch"):
    """Mobile DeepLabv3 at `resolution` x `resolution` (the paper: 513) with seeded random weights."""
    resolution = check_resolution(resolution, smallest=64)
    batch = check_batch(batch)
    g = GraphBuilder(RandomParameters(seed))
    features, channels, size = _atrous_backbone(g, resolution)
    local = _conv_bn_act(g, features, "head.conv1x1", channels, HEAD_CHANNELS, 1, activation="relu")
    pooled = g.node("GlobalAveragePool", [features], "head.image_pool")
    pooled = _conv_bn_act(g, pooled, "head.image_pool.conv", channels, HEAD_CHANNELS, 1, activation="relu")
    scales = g.shared_constant("head.upsample_scales", np.array([1.0, 1.0, size, size], dtype=np.float32))
    roi = g.shared_constant("head.upsample_roi", np.zeros(0, dtype=np.float32))
    pooled = g.node("Resize", [pooled, roi, scales], "head.image_pool.upsample", mode="linear",
                    coordinate_transformation_mode="align_corners")
    joined = g.node("Concat", [local, pooled], "head.concat", axis=1)
    y = _conv_bn_act(g, joined, "head.project", 2 * HEAD_CHANNELS, HEAD_CHANNELS, 1, activation="relu")
    g.conv(y, "head.classifier", HEAD_CHANNELS, CLASSES, 1, bias=True, gain=1.0)
    g.nodes[-1].output[0] = "logits"
    return g.model_with_outputs(f"mobile_deeplabv3_{resolution}_seed{seed}", 3, resolution, batch,
                                [("logits", [batch, CLASSES, size, size])])
