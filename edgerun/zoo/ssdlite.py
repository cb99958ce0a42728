"""SSDLite on MobileNetV2 (Sandler et al. 2018, Section 6.2), raw head outputs, seeded random weights.

As in the paper and TensorFlow's object detection API (ssdlite_mobilenet_v2): the first SSD layer
is attached to the expansion of layer 15 (the first 160-channel block's 576-channel expanded
tensor, output stride 16), the second to the last layer (the 1x1 conv to 1280, output stride 32),
then four extra feature layers of depth 512, 256, 256 and 128, each a 1x1 conv to half the depth
followed by a depthwise-separable stride-2 conv. Every prediction layer is depthwise separable
(SSDLite): a 3x3 depthwise conv + BN + ReLU6 and a 1x1 conv with bias, one pair for box offsets
(4 per anchor) and one for class scores (91 per anchor: 90 COCO classes and background), 3 anchors
on the first map and 6 on the others. Every convolution pads the TensorFlow way ("SAME": the odd
padding row at the bottom/right), as a graph exported from TensorFlow does.

Outputs (no box decoding, no non-maximum suppression): "boxes" [batch, anchors, 4] and "scores"
[batch, anchors, 91], the predictions of each map transposed to NHWC and flattened, concatenated
map after map (2,034 anchors at 320x320).
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from edgerun.zoo.graph import GraphBuilder, RandomParameters, check_batch, check_resolution, tf_same_pads
from edgerun.zoo.mobilenet_v2 import LAST_CHANNELS, STEM_CHANNELS, block_channels

EXTRA_LAYER_DEPTHS = (512, 256, 256, 128)
CLASSES = 91
BOX_CODES = 4
FIRST_MAP_ANCHORS = 3
OTHER_MAP_ANCHORS = 6
FEATURE_BLOCK = 14  # "layer 15" in TensorFlow's numbering: the stem is layer 1, block k is layer k + 1
PAPER = {"parameters": 4.3e6, "macs": 0.8e9}


def _out_size(size, stride):
    return -(-size // stride)


class _Tracker:
    """The builder plus the spatial size of the tensor being built, for TF "SAME" pads."""

    def __init__(self, g):
        self.g = g

    def conv_bn_act(self, x, size, prefix, cin, cout, kernel, stride=1, group=1, activation="relu6"):
        y = self.g.conv(x, f"{prefix}.0", cin, cout, kernel, stride, group,
                        gain=1.0 if activation == "" else 2.0 ** 0.5, pads=tf_same_pads(size, kernel, stride))
        y = self.g.batchnorm(y, f"{prefix}.1", cout)
        return self.g.activation(y, activation, f"{prefix}.2"), _out_size(size, stride)

    def predictor(self, x, size, prefix, cin, cout):
        """SSDLite's depthwise-separable prediction layer: dw 3x3 + BN + ReLU6, 1x1 conv with bias."""
        y, _ = self.conv_bn_act(x, size, f"{prefix}.depthwise", cin, cin, 3, group=cin)
        return self.g.conv(y, f"{prefix}.pointwise", cin, cout, 1, bias=True, gain=1.0, pads=[0, 0, 0, 0])


def _inverted_residual(tr, x, size, prefix, cin, cout, stride, expansion):
    """Returns (output, its size, the expanded tensor or None)."""
    hidden = int(round(cin * expansion))
    y, layer, expanded = x, 0, None
    if expansion != 1:
        y, _ = tr.conv_bn_act(y, size, f"{prefix}.conv.{layer}", cin, hidden, 1)
        expanded = y
        layer += 1
    y, out_size = tr.conv_bn_act(y, size, f"{prefix}.conv.{layer}", hidden, hidden, 3, stride, group=hidden)
    y, _ = tr.conv_bn_act(y, out_size, f"{prefix}.conv.{layer + 1}", hidden, cout, 1, activation="")
    if stride == 1 and cin == cout:
        y = tr.g.add(x, y, prefix)
    return y, out_size, expanded


def _backbone(tr, resolution):
    """MobileNetV2 1.0 up to its last 1x1 conv: [(feature map, channels, size)] for the two SSD maps."""
    x, size = tr.conv_bn_act("input", resolution, "features.0", 3, STEM_CHANNELS, 3, stride=2)
    channels, index, maps = STEM_CHANNELS, 1, []
    for t, c, n, s in block_channels(1.0):
        for i in range(n):
            x, size_out, expanded = _inverted_residual(tr, x, size, f"features.{index}", channels, c,
                                                       s if i == 0 else 1, t)
            if index == FEATURE_BLOCK:
                maps.append((expanded, channels * t, size))
            channels, size = c, size_out
            index += 1
    x, size = tr.conv_bn_act(x, size, f"features.{index}", channels, LAST_CHANNELS, 1)
    maps.append((x, LAST_CHANNELS, size))
    return maps


def _extra_layers(tr, x, channels, size):
    maps = []
    for i, depth in enumerate(EXTRA_LAYER_DEPTHS):
        prefix = f"extras.{i}"
        x, _ = tr.conv_bn_act(x, size, f"{prefix}.0", channels, depth // 2, 1)
        x, size = tr.conv_bn_act(x, size, f"{prefix}.1", depth // 2, depth // 2, 3, 2, group=depth // 2)
        x, _ = tr.conv_bn_act(x, size, f"{prefix}.2", depth // 2, depth, 1)
        channels = depth
        maps.append((x, channels, size))
    return maps


def _flatten_predictions(g, y, scope, per_anchor):
    """[N, anchors * k, H, W] -> [N, H * W * anchors, k] (TensorFlow's NHWC order)."""
    y = g.node("Transpose", [y], f"{scope}.nhwc", perm=[0, 2, 3, 1])
    shape = g.shared_constant(f"reshape_{per_anchor}", np.array([0, -1, per_anchor], dtype=np.int64))
    return g.node("Reshape", [y, shape], f"{scope}.flatten")


def ssdlite_mobilenet_v2(resolution=320, seed=0, batch="batch"):
    """SSDLite-MobileNetV2 at `resolution` x `resolution` (the paper: 320) with seeded random weights."""
    resolution = check_resolution(resolution, smallest=64)
    batch = check_batch(batch)
    g = GraphBuilder(RandomParameters(seed))
    tr = _Tracker(g)
    maps = _backbone(tr, resolution)
    last, last_channels, last_size = maps[-1]
    maps += _extra_layers(tr, last, last_channels, last_size)
    boxes, scores, anchors = [], [], 0
    for i, (x, channels, size) in enumerate(maps):
        per_cell = FIRST_MAP_ANCHORS if i == 0 else OTHER_MAP_ANCHORS
        anchors += size * size * per_cell
        box = tr.predictor(x, size, f"box_predictor.{i}.box", channels, per_cell * BOX_CODES)
        score = tr.predictor(x, size, f"box_predictor.{i}.class", channels, per_cell * CLASSES)
        boxes.append(_flatten_predictions(g, box, f"box_predictor.{i}.box", BOX_CODES))
        scores.append(_flatten_predictions(g, score, f"box_predictor.{i}.class", CLASSES))
    g.nodes.append(_concat(g, boxes, "boxes"))
    g.nodes.append(_concat(g, scores, "scores"))
    outputs = [("boxes", [batch, anchors, BOX_CODES]), ("scores", [batch, anchors, CLASSES])]
    return g.model_with_outputs(f"ssdlite_mobilenet_v2_{resolution}_seed{seed}", 3, resolution, batch, outputs)


def _concat(g, inputs, output):
    return helper.make_node("Concat", inputs, [output], name=f"{output}/Concat", axis=1)
